//! The Redis store: leases as hashes with a TTL, one Lua script per operation.
//!
//! Owns the connection (a reconnecting multiplexed connection to one server, see [`shared`],
//! or the `redis` crate's cluster client when the server says it is a cluster node) and the
//! mapping of Redis errors to [`LeaseError`]s without secrets; the scripts (sent with EVALSHA
//! and reloaded on NOSCRIPT by `redis::Script`) and the lease operations on them live in
//! [`lease`]. Every operation is one script, so one round trip and atomic on the server; every
//! operation is idempotent, so one retry after a dropped connection is safe, and it is sent on
//! a fresh connection. [`RedisStore::close`] closes every connection the store opened.
//!
//! Release and force release announce themselves on `<lease key>:released` (PUBLISH, or sharded
//! SPUBLISH on a cluster; so do a proclaim and an announced acquire, for observers); waiters
//! and observers of this process listen through one shared connection (see [`notify`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, ScriptInvocation, Value};

use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::secret::Secret;
use crate::store::common::{self, closed_error};
use crate::store::LeaseStore;

#[doc(hidden)]
pub mod acl;
#[cfg(feature = "entra-id")]
pub mod entra;
#[cfg(not(feature = "entra-id"))]
#[path = "entra_off.rs"]
pub mod entra;
#[doc(hidden)]
pub mod inline;
#[doc(hidden)]
pub mod keys;
mod lease;
pub(crate) mod notify;
mod shared;

use keys::Keys;
use notify::{Connector, Notifier, PushConn};
use shared::{breaks_connection, retryable, Call, Failure, SharedConn};

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` URLs with credentials and database (one per cluster seed node).
    pub urls: Vec<Secret>,
    /// Key prefix, `lease:` by default.
    pub key_prefix: String,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one command's reply.
    pub response_timeout: Duration,
    /// PEM file of the CA that signed the server certificate (TLS only); the system's roots
    /// otherwise.
    pub ca_file: Option<PathBuf>,
    /// Microsoft Entra ID credentials (user = object id, password = token, re-AUTH on refresh);
    /// `None`: the user and password of the URL.
    pub credentials: Option<entra::EntraCredentials>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            key_prefix: "lease:".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            ca_file: None,
            credentials: None,
        }
    }
}

#[derive(Clone)]
enum Conn {
    Single(Arc<SharedConn>),
    /// `None` once closed.
    Cluster(Arc<Mutex<Option<ClusterConnection>>>),
    /// A connection driven by its owner (see [`inline`]), the shared connection of the store it
    /// was made from, which takes the one retry after a dropped connection, and whether the
    /// owner's connection failed (then it is never used again: see [`RedisStore::is_broken`]).
    Inline {
        conn: MultiplexedConnection,
        shared: Arc<SharedConn>,
        broken: Arc<AtomicBool>,
    },
}

/// Leases in Redis (standalone, TLS, ACL users, or Redis Cluster).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    /// `host:port` of the first node, for messages.
    addr: String,
    /// Release notifications for this store's waiters (one connection, opened on first wait).
    notifier: Arc<Notifier>,
    /// Where a caller-driven connection may go (single server over plain TCP, password or no
    /// authentication); `None` otherwise. See [`inline`].
    inline: Option<Arc<inline::InlineTarget>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .field("kind", &self.kind())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, and switches to the cluster client if the server is a cluster node.
    ///
    /// # Errors
    /// `Config` for an unusable URL or CA file; `Backend` (unreachable, auth, timeout).
    pub async fn connect(options: RedisOptions) -> Result<Self> {
        let first = options.urls.first().ok_or_else(|| {
            LeaseError::Config(
                "no Redis URL given: pass redis://host:port or rediss://host:port".into(),
            )
        })?;
        common::ensure_crypto_provider();
        let client = open_client(first, options.ca_file.as_ref())?;
        let info = client.get_connection_info();
        let addr = info.addr().to_string();
        let mut cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        if let Some(credentials) = &options.credentials {
            cfg = cfg.set_credentials_provider(credentials.clone());
        }
        // The connect timeout bounds the whole connection: the manager retries a failed
        // attempt twice, each with the full timeout plus a backoff, so a server that accepts
        // and never answers would otherwise take about 3.5 times as long to report.
        let mut single = tokio::time::timeout(
            options.connect_timeout,
            client.get_connection_manager_with_config(cfg.clone()),
        )
        .await
        .map_err(|_| timed_out(&addr))?
        .map_err(|e| map_error(&e, &addr, None))?;
        let cluster = is_cluster(&mut single)
            .await
            .map_err(|e| map_error(&e, &addr, None))?;
        warn_if_evicting(&mut single, &addr).await;
        let (conn, connector, inline) = if cluster {
            // The probe connection is not needed any more: close it now, not with the store.
            drop(single);
            (
                Conn::Cluster(Arc::new(Mutex::new(Some(connect_cluster(&options).await?)))),
                cluster_push_connector(&options),
                None,
            )
        } else {
            (
                Conn::Single(Arc::new(SharedConn::new(client.clone(), cfg, single))),
                single_push_connector(&client, &options),
                inline::InlineTarget::for_client(&client, &options).map(Arc::new),
            )
        };
        tracing::debug!(%addr, cluster, "connected to Redis");
        Ok(Self {
            conn,
            keys: Keys::new(options.key_prefix, cluster),
            notifier: Arc::new(Notifier::new(connector, addr.clone())),
            addr,
            inline,
        })
    }

    /// The Redis store behind `store`, if it is one (a caller-driven twin included): what a
    /// caller asks before it drives connections of its own to the server (see [`inline`]).
    #[must_use]
    pub fn of(store: &dyn LeaseStore) -> Option<&RedisStore> {
        let any: &dyn std::any::Any = store;
        any.downcast_ref()
    }

    /// The key names this store uses.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn invoke(&self, inv: ScriptInvocation<'static>, key: &str) -> Result<Value> {
        self.invoke_call(Call::once(inv), key).await
    }

    /// Runs `call`, retrying it once on a fresh connection if its connection dropped. Every
    /// script is idempotent, and the acquire script re-admits a lease id only when told (by
    /// `call.retry`) that this is the retry of its own request. A connection that failed is
    /// never used again (see [`shared`]).
    async fn invoke_call(&self, call: Call, key: &str) -> Result<Value> {
        let result = match &self.conn {
            Conn::Single(shared) => shared.invoke(Arc::new(call), None).await,
            Conn::Cluster(cluster) => {
                let Some(mut c) = lock(cluster).clone() else {
                    return Err(closed_error());
                };
                let mut result = call.first.invoke_async(&mut c).await;
                // The cluster client reconnects to the node by itself after a failed command.
                if result.as_ref().is_err_and(retryable) {
                    tracing::debug!(addr = %self.addr, "connection dropped; retrying once");
                    result = call.invoke_async(&mut c, true).await;
                }
                result.map_err(Failure::Redis)
            }
            // A twin whose connection failed sends the rest of what it was doing (the
            // inspects of a list, say) on the shared connection; its owner opens another.
            Conn::Inline { shared, broken, .. } if broken.load(SeqCst) => {
                shared.invoke(Arc::new(call), None).await
            }
            Conn::Inline {
                conn,
                shared,
                broken,
            } => {
                let started = Instant::now();
                match call.first.invoke_async(&mut conn.clone()).await {
                    Ok(v) => Ok(v),
                    Err(e) if breaks_connection(&e) => {
                        // The owner opens another connection for its next call.
                        broken.store(true, SeqCst);
                        if retryable(&e) {
                            tracing::debug!(addr = %self.addr, "caller-driven connection dropped; retrying once on a fresh shared connection");
                            shared.invoke(Arc::new(call), Some(started)).await
                        } else {
                            Err(Failure::Redis(e))
                        }
                    }
                    Err(e) => Err(Failure::Redis(e)),
                }
            }
        };
        result.map_err(|f| self.failure(f, Some(key)))
    }

    fn failure(&self, f: Failure, key: Option<&str>) -> LeaseError {
        match f {
            Failure::Redis(e) => map_error(&e, &self.addr, key),
            Failure::Closed => closed_error(),
            Failure::Interrupted => LeaseError::backend(
                BackendErrorKind::Other,
                "the Redis command was dropped by its runtime (shutting down?): retry it",
            ),
        }
    }

    /// Whether this is a caller-driven twin whose connection failed: its owner must not use it
    /// again (see [`inline`]).
    #[must_use]
    pub fn is_broken(&self) -> bool {
        matches!(&self.conn, Conn::Inline { broken, .. } if broken.load(SeqCst))
    }

    /// The keys matching `pattern` (SCAN, on every master of a cluster). Read-only, so a scan
    /// whose connection dropped is started again, once, on a fresh connection, as every other
    /// operation is retried.
    async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>> {
        match &self.conn {
            Conn::Single(shared) | Conn::Inline { shared, .. } => {
                let pattern = pattern.to_owned();
                shared
                    .with_manager(move |mut c| {
                        let pattern = pattern.clone();
                        async move {
                            let mut out = Vec::new();
                            scan_node(&mut c, &pattern, &mut out).await.map(|()| out)
                        }
                    })
                    .await
                    .map_err(|f| self.failure(f, None))
            }
            Conn::Cluster(cluster) => {
                let Some(c) = lock(cluster).clone() else {
                    return Err(closed_error());
                };
                let mut result = scan_cluster(c.clone(), pattern).await;
                // The cluster client reconnects to the node by itself after a failed command.
                if result.as_ref().is_err_and(retryable) {
                    tracing::debug!(addr = %self.addr, "connection dropped during SCAN; scanning again once");
                    result = scan_cluster(c, pattern).await;
                }
                result.map_err(|e| map_error(&e, &self.addr, None))
            }
        }
    }

    /// Closes every connection of this store: the shared (or cluster) connection and the
    /// release-notification subscription. Afterwards every operation fails as closed. A
    /// caller-driven twin only stops using its connection (its owner closes it).
    pub async fn close(&self) {
        match &self.conn {
            Conn::Single(shared) => shared.close(),
            Conn::Cluster(cluster) => drop(lock(cluster).take()),
            Conn::Inline { broken, .. } => {
                broken.store(true, SeqCst);
                return;
            }
        }
        self.notifier.close().await;
        tracing::debug!(addr = %self.addr, "Redis connections closed");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open_client(url: &Secret, ca_file: Option<&PathBuf>) -> Result<redis::Client> {
    let bad_url = |e: &RedisError| {
        LeaseError::Config(format!(
            "the Redis URL is not valid ({}): use redis://[user:password@]host:port[/db] or rediss://... for TLS",
            e.kind_description()
        ))
    };
    match ca_file {
        None => redis::Client::open(url.expose()).map_err(|e| bad_url(&e)),
        Some(path) => {
            let root_cert = std::fs::read(path).map_err(|e| {
                LeaseError::Config(format!(
                    "cannot read the CA file {}: {e}; give the path of a PEM certificate",
                    path.display()
                ))
            })?;
            redis::Client::build_with_tls(
                url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| bad_url(&e))
        }
    }
}

/// How the notifier opens its subscription connection to a single server: the same server,
/// credentials and TLS as `client`, in RESP3 (subscriptions and commands share one connection,
/// and re-authentication works while subscribed).
fn single_push_connector(client: &redis::Client, options: &RedisOptions) -> Connector {
    let info = client.get_connection_info().clone();
    let redis_settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(redis_settings);
    let connect_timeout = options.connect_timeout;
    let response_timeout = options.response_timeout;
    let credentials = options.credentials.clone();
    Arc::new(move |pushes| {
        let info = info.clone();
        let credentials = credentials.clone();
        Box::pin(async move {
            let client = redis::Client::open(info)?;
            let mut cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
                .set_push_sender(pushes);
            // Entra ID: the same token provider, so this connection re-AUTHs with every token.
            if let Some(credentials) = credentials {
                cfg = cfg.set_credentials_provider(credentials);
            }
            Ok(PushConn::Single(
                ConnectionManager::new_with_config(client, cfg).await?,
            ))
        })
    })
}

/// How the notifier opens its subscription connection to a cluster: RESP3, for sharded
/// subscriptions, which the `redis` crate keeps on the node that owns each channel's slot.
fn cluster_push_connector(options: &RedisOptions) -> Connector {
    let options = options.clone();
    Arc::new(move |pushes| {
        let options = options.clone();
        Box::pin(async move {
            let client = cluster_builder(&options)
                .map_err(|_| {
                    RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cannot configure the cluster client",
                    ))
                })?
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?;
            Ok(PushConn::Cluster(client.get_async_connection().await?))
        })
    })
}

/// Whether the server is a cluster node. `INFO` is in the `@dangerous` category, which Azure's
/// "Data Contributor" access policy denies; `CLUSTER INFO` is allowed there and fails on a
/// server without cluster support.
async fn is_cluster(c: &mut ConnectionManager) -> redis::RedisResult<bool> {
    match redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(c)
        .await
    {
        Ok(info) => Ok(info.contains("cluster_enabled:1")),
        Err(e) if e.code() == Some("NOPERM") => {
            let cluster: redis::RedisResult<String> =
                redis::cmd("CLUSTER").arg("INFO").query_async(c).await;
            match cluster {
                Ok(info) => Ok(info.contains("cluster_state:")),
                Err(e) if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() => Err(e),
                Err(_) => Ok(false),
            }
        }
        Err(e) => Err(e),
    }
}

/// Logs a warning when the server may evict lease keys: a memory limit with a policy other than
/// `noeviction`. A lease key has a TTL, so `volatile-*` policies (Azure Cache for Redis defaults
/// to `volatile-lru`) may evict a live lease when memory is full, and the next acquirer gets it
/// while its holder trusts it until the next renewal; `allkeys-*` may evict the fencing counter
/// too. Nothing else can be done about it from here (docs/safety.md). Best effort: a server that
/// refuses `INFO` (Azure's "Data Contributor" policy denies it) is not checked.
async fn warn_if_evicting(c: &mut ConnectionManager, addr: &str) {
    let Ok(info) = redis::cmd("INFO")
        .arg("memory")
        .query_async::<String>(c)
        .await
    else {
        return;
    };
    if let Some(policy) = evicting_policy(&info) {
        tracing::warn!(
            %addr,
            policy,
            "the Redis server at {addr} may evict lease keys (maxmemory is set and maxmemory-policy is {policy}): an evicted lease can be acquired by another holder while its holder still trusts it; set maxmemory-policy noeviction on a server that holds leases (see docs/safety.md)"
        );
    }
}

/// The eviction policy of an `INFO memory` answer when it may evict keys (a memory limit is
/// set and the policy is not `noeviction`).
fn evicting_policy(info: &str) -> Option<&str> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
    };
    let limited = field("maxmemory").is_some_and(|m| m.parse::<u64>().is_ok_and(|m| m > 0));
    let policy = field("maxmemory_policy")?;
    (limited && policy != "noeviction").then_some(policy)
}

async fn connect_cluster(options: &RedisOptions) -> Result<ClusterConnection> {
    let client = cluster_builder(options)?.build().map_err(|e| {
        LeaseError::Config(format!(
            "cannot configure the Redis Cluster client ({})",
            e.kind_description()
        ))
    })?;
    client
        .get_async_connection()
        .await
        .map_err(|e| map_error(&e, "the cluster", None))
}

fn cluster_builder(options: &RedisOptions) -> Result<redis::cluster::ClusterClientBuilder> {
    let mut builder = redis::cluster::ClusterClient::builder(
        options
            .urls
            .iter()
            .map(|u| u.expose().to_owned())
            .collect::<Vec<_>>(),
    )
    .connection_timeout(options.connect_timeout)
    .response_timeout(options.response_timeout);
    if let Some(path) = &options.ca_file {
        let root_cert = std::fs::read(path).map_err(|e| {
            LeaseError::Config(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    if let Some(credentials) = &options.credentials {
        builder = builder.set_credentials_provider(credentials.clone());
    }
    Ok(builder)
}

/// One cluster node, addressed by host and port, seen as a plain connection (for SCAN, which
/// is per node).
struct ByNode {
    conn: ClusterConnection,
    host: String,
    port: u16,
}

impl ConnectionLike for ByNode {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        let routing = redis::cluster_routing::RoutingInfo::SingleNode(
            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                host: self.host.clone(),
                port: self.port,
            },
        );
        Box::pin(self.conn.route_command(cmd.clone(), routing))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

async fn cluster_masters(c: &mut ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut masters = Vec::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            if let Value::Array(parts) = range {
                if let Some(Value::Array(master)) = parts.get(2) {
                    if let (Some(host), Some(Value::Int(port))) =
                        (master.first().and_then(keys::as_string), master.get(1))
                    {
                        if let Ok(port) = u16::try_from(*port) {
                            if !masters.contains(&(host.clone(), port)) {
                                masters.push((host, port));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(masters)
}

/// The keys matching `pattern` on every master of the cluster.
async fn scan_cluster(mut c: ClusterConnection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut out = Vec::new();
    for (host, port) in cluster_masters(&mut c).await? {
        let mut node = ByNode {
            conn: c.clone(),
            host,
            port,
        };
        scan_node(&mut node, pattern, &mut out).await?;
    }
    Ok(out)
}

async fn scan_node<C: ConnectionLike + Send>(
    c: &mut C,
    pattern: &str,
    out: &mut Vec<String>,
) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        // A key that is not UTF-8 cannot be a lease of ours (names are text): skip it rather
        // than fail the whole listing.
        out.extend(batch.into_iter().filter_map(|k| String::from_utf8(k).ok()));
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// The error for a key that holds something other than a lease.
fn wrong_type(key: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::WrongType,
        format!("Redis key '{key}' holds something other than a lease (WRONGTYPE); it was left untouched: choose another lease name or KeyPrefix, or delete that key if it is stale"),
    )
}

/// The error for a hash that lacks the lease fields (application data under the prefix).
pub(crate) fn not_a_lease(key: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::WrongType,
        format!("Redis key '{key}' is a hash without the lease fields (leaseId, acquiredAt): it is not a lease, and it was left untouched; choose another lease name or KeyPrefix (an empty KeyPrefix makes every hash look like a lease)"),
    )
}

/// Reduces a Redis error to a message without secrets that says what to do next. Redis error
/// texts carry no credentials (the URL is never part of them), but only the kind, the server's
/// code and its detail are used, to be sure.
fn map_error(e: &RedisError, addr: &str, key: Option<&str>) -> LeaseError {
    let code = e.code().unwrap_or("");
    if code == "BADFENCE" {
        let key = key.unwrap_or("?");
        return LeaseError::backend(
            BackendErrorKind::WrongType,
            format!("Redis key '{key}:fence', the fencing counter of lease key '{key}', holds something other than an integer counter; it was left untouched: choose another lease name or KeyPrefix, or delete that key if it is stray data (the fencing tokens of this name then start again at 1)"),
        );
    }
    if code == "BADLEASE" {
        return not_a_lease(key.unwrap_or("?"));
    }
    if code == "WRONGTYPE" || e.detail().is_some_and(|d| d.contains("WRONGTYPE")) {
        return wrong_type(key.unwrap_or("?"));
    }
    if let Some(detail) = e.detail().filter(|d| d.starts_with(entra::MESSAGE_PREFIX)) {
        // Our own Entra ID failure (no token): it says what failed and what to do, no secret.
        return LeaseError::backend(BackendErrorKind::Auth, detail.to_owned());
    }
    // Before the authentication check: a user that lacks a command, key or channel logged in
    // fine, and must be told which rule is missing, not to check its password.
    if let Some(refused) = acl::permission_error(e, addr, key) {
        return refused;
    }
    if code == "CROSSSLOT" {
        return acl::cross_slot_error(addr);
    }
    if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(code, "NOAUTH" | "WRONGPASS")
    {
        return LeaseError::backend(
            BackendErrorKind::Auth,
            format!("authentication to Redis at {addr} failed ({}): check the user and password (or access key) in the connection string, or the Entra ID identity's access to the cache", if code.is_empty() { "rejected" } else { code }),
        );
    }
    if e.is_timeout() {
        return timed_out(addr);
    }
    let reason = io_reason(e);
    if e.is_io_error() && reason.contains("certificate") {
        return LeaseError::backend(
            BackendErrorKind::Unreachable,
            format!("the TLS certificate of Redis at {addr} was not accepted ({reason}): check that the host name is the one in the certificate, and for a private CA set CaFile (RedisLeasing:CaFile, or ca_file=) to its PEM file"),
        );
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        return LeaseError::backend(
            BackendErrorKind::Unreachable,
            format!("cannot reach Redis at {addr} ({reason}): check the host, the port, TLS (rediss:// or ssl=True needs a TLS port) and firewall rules"),
        );
    }
    let detail = e.detail().unwrap_or("");
    LeaseError::backend(
        BackendErrorKind::Other,
        format!(
            "Redis at {addr} failed: {} {code} {detail}",
            e.kind_description()
        )
        .trim_end()
        .to_owned(),
    )
}

fn timed_out(addr: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::Timeout,
        format!("Redis at {addr} did not answer in time: check the server's load and the network, or raise ConnectTimeout/SyncTimeout"),
    )
}

fn io_reason(e: &RedisError) -> String {
    let text = e.to_string();
    // The driver's IO error text is the OS error ("Connection refused (os error 111)"); keep it
    // short and never longer than one line.
    text.lines()
        .next()
        .unwrap_or("connection failed")
        .chars()
        .take(160)
        .collect()
}

trait KindDescription {
    fn kind_description(&self) -> &'static str;
}

impl KindDescription for RedisError {
    fn kind_description(&self) -> &'static str {
        match self.kind() {
            redis::ErrorKind::Parse => "parse error",
            redis::ErrorKind::AuthenticationFailed => "authentication failed",
            redis::ErrorKind::UnexpectedReturnType => "unexpected reply",
            redis::ErrorKind::InvalidClientConfig => "invalid client configuration",
            redis::ErrorKind::Io => "I/O error",
            redis::ErrorKind::Client => "client error",
            redis::ErrorKind::Server(_) => "server error",
            _ => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::notify::RELEASED_SUFFIX;

    #[test]
    fn release_script_announces_on_the_channel_waiters_subscribe_to() {
        // The script derives the channel from the key (one argument less per release); the
        // waiters subscribe to `Keys::released`, which is the key plus this suffix.
        let script = include_str!("lua/release.lua");
        for publish in ["'PUBLISH'", "'SPUBLISH'"] {
            assert!(
                script.contains(&format!("{publish}, KEYS[1] .. '{RELEASED_SUFFIX}'")),
                "{publish}"
            );
        }
    }

    #[test]
    fn a_memory_limit_with_an_evicting_policy_is_reported() {
        let info = |max: &str, policy: &str| {
            format!("# Memory\r\nused_memory:1000\r\nmaxmemory:{max}\r\nmaxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n")
        };
        assert_eq!(
            super::evicting_policy(&info("104857600", "volatile-lru")),
            Some("volatile-lru")
        );
        assert_eq!(
            super::evicting_policy(&info("104857600", "allkeys-lfu")),
            Some("allkeys-lfu")
        );
        assert_eq!(
            super::evicting_policy(&info("104857600", "noeviction")),
            None
        );
        // No limit: nothing is ever evicted, whatever the policy.
        assert_eq!(super::evicting_policy(&info("0", "volatile-lru")), None);
        assert_eq!(super::evicting_policy("# Memory\r\n"), None);
    }
}
