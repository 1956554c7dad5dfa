//! The PostgreSQL store: leases in two tables of a PostgreSQL database, on the server's clock.
//!
//! [`PostgresStore`] gives the semantics of the Redis store (DESIGN.md §3, §7) to teams whose
//! shared database is PostgreSQL. It owns one connection for statements and, once somebody in this
//! process waits, one more that LISTENs for releases ([`listen`]).
//!
//! This module owns the connections (opening, TLS, the one retry after a drop, the operation
//! timeout, closing) and the mapping of PostgreSQL errors; the statements and the lease
//! operations live in [`lease`], the semaphores' in [`semaphore`], the tables and their version
//! in [`schema`].
//!
//! Data model (schema `distributed_leasing`, created and versioned on first use):
//! - `leases`: one row per lease, keyed by `(key_prefix, name)`: `lease_id`, `acquired_at` (the
//!   holder's clock, for people), `expires_at` (the SERVER's clock: `now() + duration`) and
//!   `metadata` (jsonb). The client's key prefix is a column rather than part of a table name, so
//!   the tables are fixed (no SQL built from user input) while prefixes still separate namespaces
//!   as they do in Redis.
//! - `fences`: one row per `(key_prefix, name)` ever acquired, never deleted: `last_token`. It
//!   moves only when a lease is taken, in the statement that takes it, so the current holder's
//!   fencing token is always its name's `last_token` (read with a join; not copied into the
//!   lease row, which the same statement could not update twice).
//! - `semaphores` (schema version 2): one row per `(key_prefix, name)` of a semaphore ever
//!   used, never deleted: its limit, `slots` and token counter. A semaphore's permits are rows
//!   of `leases` named [`crate::store::permit_record`] (so renew, release and forced release
//!   are the lease statements, unchanged, and the primary key forbids two permits in a slot),
//!   each with the `fences` row of its record name holding its token; `list` leaves them out.
//! - `schema_version`: one row, the version of these tables: 1 (leases), or 2 once a semaphore
//!   was written (the table is added then, not before, so a database used for leases alone stays
//!   readable by versions that know only 1). A newer version is refused. The DDL runs in a
//!   transaction under a transaction-level advisory lock, so processes starting together on an
//!   empty database (or writing their first semaphore) cannot trip over each other.
//!
//! Invariants:
//! - Every operation is ONE prepared statement (one round trip), in its own implicit
//!   transaction: the acquire inserts the row or takes over an expired one
//!   (`ON CONFLICT ... DO UPDATE ... WHERE expires_at <= now()`, which checks the newest row
//!   version under its row lock, so two acquirers can never both win) and bumps the fence in
//!   the same statement; when it takes nothing, the statement returns the holder.
//! - A row whose `expires_at` is not after `now()` is exactly an absent lease: nobody may renew
//!   or release it, anyone may take it over, `inspect` and `list` do not show it.
//! - `expires_at = 'infinity'` is a lease an administrator pinned: held with no expiry (its TTL
//!   shows as none), kept pinned by its holder's renewals, ended by its holder's release or a
//!   forced release. `'-infinity'` is a released row (below): absent, as any expired one.
//! - The parts of a statement that read (the holder of a refusal, the "held by other" of a lost
//!   renewal) see the snapshot taken when the statement began. If a concurrent change makes that
//!   snapshot disagree with what the writing part found (the holder of a refused acquire is not
//!   in it), the statement is run again, a few times at most; the reported holder is the one of
//!   the statement's start.
//! - A statement whose connection dropped is sent once more on a fresh connection: the acquire
//!   then carries its retry flag (and keeps it for its later runs), which re-admits only the
//!   very request that won (same lease id and `acquired_at`), as the Redis script's ARGV[4];
//!   renew is owner-checked; a release marks the row released (`expires_at = '-infinity'`,
//!   keeping its lease id) rather than deleting it, so its retry recognises its own first
//!   send instead of reporting a loss.
//! - A permit acquire is one statement too ([`semaphore`]), run again when its snapshot was
//!   overtaken (the slot it chose taken meanwhile, or a stale count after a lowering) and once
//!   at a semaphore's first use (its row created).
//! - Releases (and forced releases) that end a live lease `pg_notify` the channel
//!   [`listen::CHANNEL`] with `[key_prefix, name]`; the notification is delivered on commit. A
//!   permit's release names its record; the listener tells it to the waiters of its semaphore.
//!   A proclaim (`PROCLAIM`: the holder's new metadata, owner-checked, its expiry untouched)
//!   notifies `[key_prefix, name, "proclaimed"]`, an announced acquire (`ACQUIRE_ANNOUNCED`, a
//!   statement of its own so that a plain acquire is unchanged) `[key_prefix, name,
//!   "acquired"]`: observers re-read, no waiter is woken.
//! - Acquires and renewals commit durably (the server's `synchronous_commit`); a release commits
//!   asynchronously (see `RELEASE`): a crash may undo it, never admit a second holder.
//! - The password lives in the `tokio_postgres::Config` only (its `Debug` hides it); messages
//!   name `host:port/database`.

#[macro_use]
mod lease;
mod listen;
mod schema;
mod semaphore;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::common::{self, closed_error, error_chain};
use super::TaskSlot;
use crate::config::{PgSslMode, PostgresTarget};
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::wait::FedBoard;
use lease::{ACQUIRE, ACQUIRE_ANNOUNCED, FORCE_RELEASE, INSPECT, LIST, PROCLAIM, RELEASE, RENEW};

/// How to open a connection to the server; shared by the statement and listening connections.
#[derive(Clone)]
pub(crate) struct Endpoint {
    config: tokio_postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `host:port/database`, for messages.
    addr: String,
    connect_timeout: Duration,
}

/// Where to connect and how the store behaves.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The server, role and database.
    pub target: PostgresTarget,
    /// Namespace of this client's leases (the `key_prefix` column).
    pub key_prefix: String,
    /// Time allowed to connect (TCP, TLS and login).
    pub connect_timeout: Duration,
    /// Time allowed for one operation, the one retry after a dropped connection included.
    pub operation_timeout: Duration,
    /// CA certificate (PEM) for `verify-full`, when not signed by a system root.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Leases in a PostgreSQL database, shared by every process that can reach it.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    prefix: String,
    operation_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    closed: AtomicBool,
    listener: FedBoard,
    /// The semaphores' table is known to exist (schema version 2).
    semaphores: AtomicBool,
}

/// The statement connection and its prepared statements.
struct Conn {
    client: Client,
    /// The task that drives the connection; stopped by [`PostgresStore::close`].
    driver: TaskSlot,
    acquire: Statement,
    acquire_announced: Statement,
    proclaim: Statement,
    renew: Statement,
    release: Statement,
    force_release: Statement,
    inspect: Statement,
    list: Statement,
    /// The semaphore statements, prepared at the first semaphore operation on this connection.
    permits: tokio::sync::OnceCell<semaphore::PermitStatements>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("addr", &self.inner.endpoint.addr)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if the database has none, and prepares the statements.
    ///
    /// # Errors
    /// `Backend` naming `host:port/database`: unreachable, authentication or permission refused
    /// (the first use needs the right to create schema `distributed_leasing`), a schema of a
    /// newer version, TLS trust that cannot be built.
    pub async fn connect(options: PostgresOptions) -> Result<Self> {
        let endpoint = Endpoint::new(&options)?;
        let listener = listen::listener(endpoint.clone(), options.key_prefix.clone());
        let store = Self {
            inner: Arc::new(Inner {
                endpoint,
                prefix: options.key_prefix,
                operation_timeout: options.operation_timeout,
                conn: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
                listener,
                semaphores: AtomicBool::new(false),
            }),
        };
        store.inner.conn().await?;
        Ok(store)
    }

    /// Closes the statement connection and the listening one ([`crate::store::LeaseStore::close`]).
    async fn close_connections(&self) {
        let conn = {
            let mut slot = self.inner.conn.lock().await;
            self.inner.closed.store(true, Ordering::Release);
            slot.take()
        };
        if let Some(conn) = conn {
            conn.driver.stop().await;
        }
        self.inner.listener.close().await;
    }

    /// Runs `op` on the connection (retrying once, with `retry` true, on a fresh connection if
    /// the connection dropped), within the operation timeout.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Arc<Conn>, bool) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let inner = &self.inner;
        let attempt = async {
            let conn = inner.conn().await?;
            match op(Arc::clone(&conn), false).await {
                Ok(v) => Ok(v),
                Err(e) if dropped(&e, &conn) => {
                    tracing::debug!(addr = %inner.endpoint.addr, "PostgreSQL connection dropped; retrying once");
                    inner.discard(&conn).await;
                    let conn = inner.conn().await?;
                    op(conn, true).await.map_err(|e| inner.endpoint.error(&e))
                }
                Err(e) => Err(inner.endpoint.error(&e)),
            }
        };
        match tokio::time::timeout(inner.operation_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::backend(
                BackendErrorKind::Timeout,
                format!(
                    "PostgreSQL at {} did not answer within {:?}: check the server's load and the network, or raise SyncTimeout",
                    inner.endpoint.addr, inner.operation_timeout
                ),
            )),
        }
    }
}

impl Inner {
    /// The statement connection, (re)opened if there is none or it closed.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let conn = Arc::new(self.endpoint.open_statements().await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Forgets `conn` (if it is still the current one), so the next call opens a fresh one.
    async fn discard(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

/// Whether `e` means the connection is gone (so the statement may be sent again elsewhere).
fn dropped(e: &tokio_postgres::Error, conn: &Conn) -> bool {
    if e.is_closed() || conn.client.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // Connection exceptions, and the server shutting down or killing the session.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

impl Endpoint {
    fn new(options: &PostgresOptions) -> Result<Self> {
        let t = &options.target;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&t.host)
            .port(t.port)
            .user(&t.user)
            .application_name("distributed-leasing")
            .connect_timeout(options.connect_timeout);
        if let Some(db) = &t.dbname {
            config.dbname(db);
        }
        if let Some(p) = &t.password {
            config.password(p.expose());
        }
        let addr = t.addr();
        let tls = match t.ssl_mode {
            PgSslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            mode => {
                config.ssl_mode(if mode == PgSslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(tls_connector(mode, options.ca_file.as_deref(), &addr)?)
            }
        };
        Ok(Self {
            config,
            tls,
            addr,
            connect_timeout: options.connect_timeout,
        })
    }

    /// Opens a connection; its messages (notifications) go to `dispatch`, if given, on the task
    /// that drives it.
    async fn open(
        &self,
        dispatch: Option<listen::Dispatch>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>)> {
        let connecting = async {
            match &self.tls {
                None => {
                    let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                    Ok((client, tokio::spawn(listen::drive(conn, dispatch))))
                }
                Some(tls) => {
                    let (client, conn) = self.config.connect(tls.clone()).await?;
                    Ok((client, tokio::spawn(listen::drive(conn, dispatch))))
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(LeaseError::backend(
                BackendErrorKind::Timeout,
                format!(
                    "cannot connect to PostgreSQL at {} within {:?}: check the host, port and network, or raise ConnectTimeout",
                    self.addr, self.connect_timeout
                ),
            )),
        }
    }

    /// A statement connection: opened, schema checked (created on first use), statements
    /// prepared.
    async fn open_statements(&self) -> Result<Conn> {
        let (mut client, driver) = self.open(None).await?;
        self.ensure_schema(&mut client).await?;
        let prepared = async {
            use Type as T;
            let acquire_types = [
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::INT8,
                T::TEXT,
                T::BOOL,
            ];
            // Sent together (the client pipelines them): one round trip more at most.
            let (acquire, acquire_announced, proclaim) = futures_util::future::try_join3(
                client.prepare_typed(ACQUIRE, &acquire_types),
                client.prepare_typed(ACQUIRE_ANNOUNCED, &acquire_types),
                client.prepare_typed(PROCLAIM, &[T::TEXT, T::TEXT, T::TEXT, T::TEXT]),
            )
            .await?;
            Ok::<_, tokio_postgres::Error>((
                (acquire, acquire_announced, proclaim),
                client
                    .prepare_typed(
                        RENEW,
                        &[T::TEXT, T::TEXT_ARRAY, T::TEXT_ARRAY, T::INT8_ARRAY],
                    )
                    .await?,
                client
                    .prepare_typed(RELEASE, &[T::TEXT, T::TEXT, T::TEXT, T::BOOL])
                    .await?,
                client
                    .prepare_typed(FORCE_RELEASE, &[T::TEXT, T::TEXT, T::TEXT])
                    .await?,
                client.prepare_typed(INSPECT, &[T::TEXT, T::TEXT]).await?,
                client.prepare_typed(LIST, &[T::TEXT, T::TEXT]).await?,
            ))
        };
        let ((acquire, acquire_announced, proclaim), renew, release, force_release, inspect, list) =
            prepared.await.map_err(|e| self.error(&e))?;
        Ok(Conn {
            client,
            driver: {
                let slot = TaskSlot::default();
                slot.set(driver);
                slot
            },
            acquire,
            acquire_announced,
            proclaim,
            renew,
            release,
            force_release,
            inspect,
            list,
            permits: tokio::sync::OnceCell::new(),
        })
    }

    /// A [`LeaseError`] for `e`, naming the server (never the password) and what to do.
    fn error(&self, e: &tokio_postgres::Error) -> LeaseError {
        let addr = &self.addr;
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let (kind, fix) = match code {
                c if c.starts_with("28") => (
                    BackendErrorKind::Auth,
                    "check the user and password in the connection string, and pg_hba.conf",
                ),
                "42501" => (
                    BackendErrorKind::Permission,
                    "the first use needs CREATE on the database (it creates schema distributed_leasing); afterwards the role needs USAGE on that schema and SELECT, INSERT, UPDATE, DELETE on its tables",
                ),
                "57014" => (
                    BackendErrorKind::Timeout,
                    "the statement was cancelled (statement_timeout?): retry, or check the server's load",
                ),
                "3D000" => (
                    BackendErrorKind::Other,
                    "the database does not exist: create it, or fix the database name in the URL",
                ),
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => (
                    BackendErrorKind::Unreachable,
                    "the server closed the connection or is shutting down: retry, and check the server",
                ),
                _ => (BackendErrorKind::Other, "check the server's log"),
            };
            return LeaseError::backend(
                kind,
                format!(
                    "PostgreSQL at {addr}: {} (SQLSTATE {code}): {fix}",
                    db.message()
                ),
            );
        }
        // tokio-postgres' own errors never contain the password (it is only sent, never shown).
        let text = error_chain(e);
        let (kind, fix) = if text.contains("password") || text.starts_with("authentication") {
            (
                BackendErrorKind::Auth,
                "give the password in the URL (postgresql://user:password@host/db)",
            )
        } else if text.contains("timeout") || text.contains("timed out") {
            (
                BackendErrorKind::Timeout,
                "check the host, port and network",
            )
        } else if text.contains("TLS") || text.contains("certificate") || text.contains("tls") {
            (
                BackendErrorKind::Other,
                "check sslmode and, for a private CA, set CaFile to its PEM file",
            )
        } else {
            (
                BackendErrorKind::Unreachable,
                "check that the server is running and the host and port are right",
            )
        };
        LeaseError::backend(kind, format!("PostgreSQL at {addr}: {text}: {fix}"))
    }
}

/// The rustls connector of an `sslmode`: certificates verified for `verify-full` only, as libpq
/// does (`prefer` and `require` encrypt without checking who the server is).
fn tls_connector(
    mode: PgSslMode,
    ca_file: Option<&std::path::Path>,
    addr: &str,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    common::ensure_crypto_provider();
    let config = if mode == PgSslMode::VerifyFull {
        let roots = common::root_store(ca_file).map_err(|e| {
            LeaseError::backend(
                BackendErrorKind::Other,
                format!("TLS to PostgreSQL at {addr}: {e}"),
            )
        })?;
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    } else {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=prefer|require`: encryption without checking who the server is (libpq's meaning; the
/// handshake signature is still checked, with the process's crypto provider).
#[derive(Debug)]
struct NoVerifier;

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::CryptoProvider::get_default().map_or_else(
        || rustls::crypto::ring::default_provider().signature_verification_algorithms,
        |p| p.signature_verification_algorithms,
    )
}
