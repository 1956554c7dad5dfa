//! The etcd v3 store: one key per lease, attached to an etcd lease that expires it.
//!
//! [`EtcdStore`] gives the semantics of the Redis store (DESIGN.md §3, §7) on a consensus-backed
//! cluster. It talks to etcd's JSON gateway ([`http`]) and owns, once somebody in this process
//! waits, one watch stream for releases ([`watch`]).
//!
//! This module owns the client side of etcd (the gateway's JSON, the etcd leases this store
//! holds, its spares and the expirer that revokes them, closing); the lease operations live in
//! [`lease`], the semaphores in [`semaphore`] (a config key with the limit, and one lease key
//! per held slot on an etcd lease of its own: renewed, released and expired as a lease).
//!
//! Data model: the key `<KeyPrefix><name>` holds a JSON record
//! `{"leaseId": "...", "acquiredAt": "2025-12-25T21:00:00.000Z", "metadata": {...}}` (the
//! sample's hash fields; the fencing token is not stored, it is the key's `create_revision`),
//! attached to an etcd lease granted for the lease duration. A value under the prefix that is
//! not such a record is foreign data: reported as `WrongType`, never deleted.
//!
//! Invariants:
//! - Fencing token = the key's `create_revision`: etcd's revision counter only grows (across
//!   names, compactions and restarts of the whole cluster), and a key deleted and created again
//!   gets a new one. No counter key is needed.
//! - Acquire: ONE txn "if `create_revision(key) == 0` put the record on etcd lease L, else
//!   range the key", so a refusal carries the holder (whose remaining TTL is then read with
//!   `timetolive`). A grant cannot be part of a txn, and both are consensus writes, so the
//!   store keeps spare etcd leases (per TTL, at most [`MAX_SPARES`]): an unused grant of a
//!   refused attempt is kept rather than revoked, and a new spare is granted in the background
//!   after each acquire. An acquire that has a spare sends its txn and a keep-alive of the
//!   spare at the same time: the keep-alive restarts the spare's full TTL after the acquire
//!   was sent, so the key lives the whole duration (a spare whose TTL may already have run
//!   down is never used, and one whose keep-alive fails is revoked, with the key put on it).
//!   Without a spare: grant, then txn. So an acquire is usually one consensus round, and a
//!   waiter's refused attempts grant nothing.
//! - An etcd lease carries at most one key at a time (a spare carries none: a lease becomes a
//!   spare only once its key is gone, and only by whoever took it out of [`Inner::held`]), so
//!   it identifies one acquisition: it is what a lost-reply resend recognises (the txn's range
//!   shows the key on OUR lease: the first send won), and revoking it can only ever delete
//!   the acquisition it was put to.
//! - etcd TTLs are whole seconds, at least the cluster's minimum (1.5 × election timeout,
//!   rounded up: 2 s with etcd's defaults). A lease of `d` gets an etcd lease of `ceil(d)`
//!   seconds, so the server never expires it before `d`. So that a live holder's lease still
//!   ends after `d` (not after the rounded TTL), the store revokes the etcd leases it holds
//!   when `d` has passed since the last acquire or renewal was sent without another renewal
//!   ([`Inner::held`]): only a holder that died or froze leaves the rounding to etcd.
//! - Renew: a keep-alive of the etcd lease, then a range that checks the key still has our
//!   `create_revision` (so it was never deleted since we acquired it, and is on our lease). A
//!   key deleted by hand while our etcd lease lives is thereby seen as lost. A batch is two
//!   requests whatever its size: one streamed keep-alive carrying every etcd lease, and one
//!   txn of ranges (per 128 keys).
//! - Release: ONE txn "if `create_revision == ours` delete, else range"; our etcd lease, which
//!   then carries no key, is kept as a spare (not revoked), so a release is one request.
//! - Proclaim: a range of the record, then ONE txn "if `mod_revision` is unchanged, put the
//!   record with the new metadata on the etcd lease it has" (so its TTL is not extended, and
//!   nobody's write in between is overwritten); the watch reports the put to observers.
//! - Close: waits for spare grants still in flight, then revokes every spare.
//! - Force release: a range (to show the holder and to refuse foreign data), then a txn
//!   deleting only that `create_revision`. The holder's etcd lease is left alone: only its
//!   owner may revoke it or reuse it as a spare (it does so only after its own delete
//!   succeeded), so no revoke can ever hit a later key on a reused etcd lease.
//! - Expiry of a live holder's etcd lease (`revoke_at`): the entry is marked while the revoke
//!   is on its way, and a renewal that sees the mark before or after its requests reports the
//!   lease lost, so no renewal says "renewed" for a key that its own store is deleting.
//! - Permit acquire ([`semaphore`]): a read txn of the semaphore's config and slot keys, then
//!   ONE txn on a spare or fresh etcd lease (as an acquire's) that puts the first free slot's
//!   record if that slot is absent, no slot key was written since the read and the config is
//!   unchanged; token = the slot key's `create_revision`.
//! - Every request may fail over to another member after a transport error ([`http`]) and so
//!   be applied twice: acquire recognises its own lease; renew is idempotent; a release whose
//!   first send was applied finds the key gone and reports the lease as missing (lost), never
//!   as released while another holder has it.
//! - Passwords and tokens live in [`crate::secret::Secret`]s; messages name the members.

mod http;
mod lease;
mod semaphore;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::common;
use super::TaskSlot;
use crate::config::EtcdTarget;
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::wait::FedBoard;

/// The base64 of etcd's JSON gateway (keys and values are `bytes`).
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Most operations etcd accepts in one txn (its `--max-txn-ops` default).
const MAX_TXN_OPS: usize = 128;

/// Most unused etcd leases kept per TTL.
const MAX_SPARES: usize = 4;

/// Where to connect and how the store behaves.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The members, TLS and credentials.
    pub target: EtcdTarget,
    /// Namespace of this client's leases: keys are `<key_prefix><name>`.
    pub key_prefix: String,
    /// Time allowed to connect to a member.
    pub connect_timeout: Duration,
    /// Time allowed for one operation, failing over between members included.
    pub operation_timeout: Duration,
    /// CA certificate (PEM) for `etcds://`, when not signed by a system root.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Leases in an etcd v3 cluster, shared by every process that can reach it.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// An acquisition made through this store and not yet released.
#[derive(Debug, Clone, Copy)]
struct Held {
    etcd_lease: i64,
    /// The key's `create_revision`: the fencing token.
    token: i64,
    /// The TTL etcd granted (seconds): a keep-alive restores it.
    granted: i64,
    /// The TTL asked for (seconds).
    ttl: i64,
    /// When the last grant or keep-alive of the etcd lease was sent.
    kept_at: Instant,
    /// When the lease duration has passed since the last acquire or renewal was sent: the
    /// store revokes the etcd lease then.
    revoke_at: Instant,
    /// Set by the expirer while its revoke is on its way (the entry is removed once it has
    /// been sent): a renewal that sees it, before or after its own requests, reports the lease
    /// lost, and nobody else takes the entry (so the etcd lease never becomes a spare).
    revoking: bool,
}

struct Inner {
    http: Arc<http::Transport>,
    prefix: String,
    /// By `(name, lease id)`.
    held: Mutex<HashMap<(String, String), Held>>,
    /// Told when an earlier `revoke_at` appears.
    held_changed: Arc<Notify>,
    expirer: TaskSlot,
    expirer_started: AtomicBool,
    closed: AtomicBool,
    watcher: FedBoard,
    /// Unused etcd leases by requested TTL (see the module docs).
    spares: Mutex<HashMap<i64, Vec<Spare>>>,
    /// Background grants of spares still running: `close` waits for them, so that no grant
    /// lands after it and no spare outlives the client.
    prefetching: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// An etcd lease granted and not (yet) used by a key.
#[derive(Debug, Clone, Copy)]
struct Spare {
    id: i64,
    /// The TTL asked for (the key of [`Inner::spares`]).
    ttl: i64,
    /// The TTL etcd granted (at least its minimum).
    granted: i64,
    /// When it was last granted or kept alive (sent).
    granted_at: Instant,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("members", &self.inner.http.display)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

// ---- the gateway's JSON (proto3 mapping: int64 as strings, bytes as base64, zero values
// omitted) ----

fn int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize, Default, Clone)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    /// The revision of the key's last write (its acquire, or its holder's last proclaim).
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

#[derive(Deserialize, Default)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize, Default)]
struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

#[derive(Deserialize, Default)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// The key the failure branch's range found.
    fn ranged(self) -> Option<Kv> {
        self.responses
            .into_iter()
            .find_map(|r| r.response_range)
            .and_then(|r| r.kvs.into_iter().next())
    }
}

#[derive(Deserialize)]
struct Granted {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
}

#[derive(Deserialize, Default)]
struct KeptAlive {
    #[serde(default)]
    result: Option<KeptAliveResult>,
}

#[derive(Deserialize, Default)]
struct KeptAliveResult {
    #[serde(rename = "ID", default, deserialize_with = "int")]
    id: i64,
    /// 0 (omitted) when the lease no longer exists.
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
}

#[derive(Deserialize, Default)]
struct TimeToLive {
    /// Seconds left, rounded down; -1 when the lease no longer exists.
    #[serde(rename = "TTL", default, deserialize_with = "int")]
    ttl: i64,
    #[serde(rename = "grantedTTL", default, deserialize_with = "int")]
    granted: i64,
}

/// The key after `key`'s prefix: the first key not starting with it (etcd's `range_end`).
/// An empty prefix means every key (`"\0"`).
pub(crate) fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Prepares the client and checks that a member answers (authenticating, when the URL
    /// has a user).
    ///
    /// # Errors
    /// `Backend` naming the members: none answers, authentication refused, TLS trust that
    /// cannot be built.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        let http = Arc::new(http::Transport::new(
            &options.target,
            options.connect_timeout,
            options.operation_timeout,
            options.ca_file.as_deref(),
        )?);
        let watcher = watch::watcher(Arc::clone(&http), options.key_prefix.clone());
        let store = Self {
            inner: Arc::new(Inner {
                http,
                prefix: options.key_prefix,
                held: Mutex::new(HashMap::new()),
                held_changed: Arc::new(Notify::new()),
                expirer: TaskSlot::default(),
                expirer_started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                watcher,
                spares: Mutex::new(HashMap::new()),
                prefetching: Mutex::new(Vec::new()),
            }),
        };
        // A read that needs the leader: a member cut off from the quorum does not pass.
        store.inner.range_key(b"\0").await?;
        Ok(store)
    }

    fn inner(&self) -> Result<&Inner> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(common::closed_error());
        }
        Ok(&self.inner)
    }

    /// Closes the store: revokes the spares, stops the expirer and the watch, drops the HTTP
    /// client ([`crate::store::LeaseStore::close`]).
    async fn close_store(&self) {
        {
            // Under the spares' lock, so that no spare is kept after the ones revoked below.
            let _spares = self
                .inner
                .spares
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.inner.closed.store(true, Ordering::Release);
        }
        self.inner.revoke_spares().await;
        self.inner.expirer.stop().await;
        self.inner.watcher.close().await;
        self.inner.http.close();
    }

    /// Grants a spare etcd lease of `ttl` seconds in the background, unless one is kept.
    fn prefetch_spare(&self, ttl: i64) {
        let inner = Arc::clone(&self.inner);
        if inner.has_spare(ttl) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let task = tokio::spawn({
            let inner = Arc::clone(&inner);
            async move {
                let t_sent = Instant::now();
                if let Ok(g) = inner.grant(ttl).await {
                    let spare = Spare {
                        id: g.id,
                        ttl,
                        granted: g.ttl,
                        granted_at: t_sent,
                    };
                    if !inner.keep_spare(spare) {
                        inner.revoke(g.id).await;
                    }
                }
            }
        });
        let mut tasks = inner
            .prefetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Starts the task that revokes etcd leases whose duration passed (needs a runtime).
    fn start_expirer(&self) {
        if !self.inner.expirer_started.swap(true, Ordering::AcqRel) {
            self.inner
                .expirer
                .set(tokio::spawn(expire(Arc::downgrade(&self.inner))));
        }
    }
}

/// Revokes the etcd leases of [`Inner::held`] whose `revoke_at` passed (see the module docs).
async fn expire(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let now = Instant::now();
        // Due entries stay in `held`, marked, until their revoke has been sent: a renewal
        // racing it sees the mark and reports the lease lost (see `renew_all`).
        let (due, next) = {
            let mut held = inner.held.lock().unwrap_or_else(PoisonError::into_inner);
            let mut due = Vec::new();
            for (k, h) in held.iter_mut() {
                if !h.revoking && h.revoke_at <= now {
                    h.revoking = true;
                    due.push((k.clone(), *h));
                }
            }
            let next = held
                .values()
                .filter(|h| !h.revoking)
                .map(|h| h.revoke_at)
                .min();
            (due, next)
        };
        for ((name, _), _) in &due {
            tracing::debug!(lease = %name, "lease duration passed without a renewal; revoking its etcd lease");
        }
        futures_util::future::join_all(due.iter().map(|(_, h)| inner.revoke(h.etcd_lease))).await;
        {
            let mut held = inner.held.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, _) in &due {
                held.remove(k);
            }
        }
        let notify = Arc::clone(&inner.held_changed);
        let changed = notify.notified();
        drop(inner);
        let until = next.unwrap_or_else(|| now + Duration::from_secs(3600));
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = changed => {}
        }
    }
}

impl Inner {
    fn key(&self, name: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + name.len());
        key.extend_from_slice(self.prefix.as_bytes());
        key.extend_from_slice(name.as_bytes());
        key
    }

    fn remember(&self, name: &str, lease_id: &str, held: Held) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name.to_owned(), lease_id.to_owned()), held);
        self.held_changed.notify_one();
    }

    fn held(&self, name: &str, lease_id: &str) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_owned(), lease_id.to_owned()))
            .copied()
    }

    /// Takes the entry out of [`Inner::held`], and with it the etcd lease (to revoke, or to
    /// keep as a spare); `None` when there is none, or the expirer is revoking it (it owns the
    /// etcd lease then, and removes the entry itself).
    fn forget(&self, name: &str, lease_id: &str) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (name.to_owned(), lease_id.to_owned());
        if held.get(&key)?.revoking {
            return None;
        }
        held.remove(&key)
    }

    /// A spare etcd lease of `ttl` seconds that is alive for at least another second (its
    /// keep-alive is sent with the txn that uses it); older ones are dropped (etcd expires
    /// them: they carry no key).
    fn take_spare(&self, ttl: i64, now: Instant) -> Option<Spare> {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        let list = spares.get_mut(&ttl)?;
        while let Some(spare) = list.pop() {
            let lives = Duration::from_secs(u64::try_from(spare.granted - 1).unwrap_or(0));
            if now.saturating_duration_since(spare.granted_at) < lives {
                return Some(spare);
            }
        }
        None
    }

    fn has_spare(&self, ttl: i64) -> bool {
        self.spares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ttl)
            .is_some_and(|l| !l.is_empty())
    }

    /// Keeps an unused etcd lease (carrying no key) for a later acquire: at most
    /// [`MAX_SPARES`] per TTL, and none once the store is closed. Returns whether it was kept
    /// (one that is not is left to expire, or revoked by the caller).
    fn keep_spare(&self, spare: Spare) -> bool {
        let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let list = spares.entry(spare.ttl).or_default();
        if list.len() < MAX_SPARES {
            list.push(spare);
            return true;
        }
        false
    }

    /// Revokes every spare (at close): they carry no key, so this only spares etcd the
    /// bookkeeping until their TTLs run out. Runs after `closed` is set, so none is added
    /// meanwhile; grants still in flight are awaited first and revoke their own.
    async fn revoke_spares(&self) {
        let tasks = std::mem::take(
            &mut *self
                .prefetching
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
        let ids: Vec<i64> = {
            let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
            spares.drain().flat_map(|(_, l)| l).map(|s| s.id).collect()
        };
        futures_util::future::join_all(ids.into_iter().map(|id| self.revoke(id))).await;
    }

    async fn range_key(&self, key: &[u8]) -> Result<Option<Kv>> {
        let r: RangeResponse = self
            .http
            .call("/v3/kv/range", &json!({ "key": B64.encode(key) }))
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    async fn grant(&self, ttl: i64) -> Result<Granted> {
        self.http
            .call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))
            .await
    }

    /// Revokes an etcd lease (deleting the key attached to it, if any), best effort: a lease
    /// that is gone already is fine, and a failure only leaves it to expire.
    async fn revoke(&self, id: i64) {
        if id == 0 {
            return;
        }
        let r: Result<serde_json::Value> = self
            .http
            .call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .await;
        if let Err(e) = r {
            if !e.to_string().contains("lease not found") {
                tracing::debug!(error = %e, "cannot revoke an etcd lease; it expires by itself");
            }
        }
    }

    /// Keeps etcd leases alive, all in one streamed request (one JSON request per line, one
    /// answer per line); the TTL of each after that (0: it no longer exists).
    ///
    /// The gateway may end the answer before every request was answered (seen with a
    /// follower, which forwards keep-alives to the leader, once the request body has ended):
    /// the unanswered ones are sent again; a lease without an answer is never taken for gone.
    async fn keep_alive_all(&self, ids: &[i64]) -> Result<HashMap<i64, i64>> {
        let path = "/v3/lease/keepalive";
        let mut ttls = HashMap::with_capacity(ids.len());
        let mut missing: Vec<i64> = ids.to_vec();
        while !missing.is_empty() {
            let mut body = Vec::new();
            for id in &missing {
                body.extend_from_slice(format!("{{\"ID\":\"{id}\"}}\n").as_bytes());
            }
            let answer = self.http.call_raw(path, &body).await?;
            let before = ttls.len();
            for line in answer.split(|b| *b == b'\n') {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                let r: KeptAlive = self.http.parse(path, line)?;
                if let Some(r) = r.result {
                    ttls.insert(r.id, r.ttl);
                }
            }
            if ttls.len() == before {
                return Err(LeaseError::backend(
                    BackendErrorKind::Other,
                    format!(
                        "{}: a keep-alive of {} leases was not answered; retry",
                        self.http.display,
                        missing.len()
                    ),
                ));
            }
            missing.retain(|id| !ttls.contains_key(id));
        }
        Ok(ttls)
    }

    /// The keys `keys` (in order; `None` where absent), in txns of at most [`MAX_TXN_OPS`]
    /// ranges, sent at once.
    async fn range_keys(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Kv>>> {
        let chunks = futures_util::future::try_join_all(keys.chunks(MAX_TXN_OPS).map(|chunk| {
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|k| json!({ "request_range": { "key": B64.encode(k) } }))
                .collect();
            async move {
                let t: TxnResponse = self
                    .http
                    .call("/v3/kv/txn", &json!({ "success": ops }))
                    .await?;
                let mut kvs: Vec<Option<Kv>> = t
                    .responses
                    .into_iter()
                    .map(|r| r.response_range.and_then(|r| r.kvs.into_iter().next()))
                    .collect();
                kvs.resize(chunk.len(), None);
                Ok::<_, LeaseError>(kvs)
            }
        }))
        .await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// The time left on a holder's etcd lease: at most the granted TTL, else etcd's whole
    /// seconds left plus one (etcd rounds down); `None` for a key without a lease.
    async fn time_left(&self, id: i64) -> Result<Option<Duration>> {
        if id == 0 {
            return Ok(None);
        }
        let t: TimeToLive = self
            .http
            .call("/v3/lease/timetolive", &json!({ "ID": id.to_string() }))
            .await?;
        let secs = if t.ttl < 0 {
            0
        } else {
            (t.ttl + 1).min(t.granted.max(t.ttl))
        };
        Ok(Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"lease:"), b"lease;");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn gateway_integers_read_as_strings_or_numbers() {
        let kv: Kv =
            serde_json::from_str(r#"{"key":"eA==","create_revision":"42","lease":7}"#).unwrap();
        assert_eq!((kv.create_revision, kv.lease), (42, 7));
        let t: TimeToLive = serde_json::from_str(r#"{"ID":"1","TTL":"-1"}"#).unwrap();
        assert_eq!(t.ttl, -1);
        let k: KeptAlive = serde_json::from_str(r#"{"result":{"ID":"1"}}"#).unwrap();
        assert_eq!(k.result.unwrap().ttl, 0);
    }
}
