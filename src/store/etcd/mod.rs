//! The etcd v3 store: one key per lease, attached to an etcd lease that expires it.
//!
//! [`EtcdStore`] gives the semantics of the Redis store (DESIGN.md §3, §7) on a consensus-backed
//! cluster. It talks to etcd's JSON gateway ([`http`]) and owns, once somebody in this process
//! waits, one watch stream for releases ([`watch`]).
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
//! - Close: waits for spare grants still in flight, then revokes every spare.
//! - Force release: a range (to show the holder and to refuse foreign data), then a txn
//!   deleting only that `create_revision`. The holder's etcd lease is left alone: only its
//!   owner may revoke it or reuse it as a spare (it does so only after its own delete
//!   succeeded), so no revoke can ever hit a later key on a reused etcd lease.
//! - Expiry of a live holder's etcd lease (`revoke_at`): the entry is marked while the revoke
//!   is on its way, and a renewal that sees the mark before or after its requests reports the
//!   lease lost, so no renewal says "renewed" for a key that its own store is deleting.
//! - Every request may fail over to another member after a transport error ([`http`]) and so
//!   be applied twice: acquire recognises its own lease; renew is idempotent; a release whose
//!   first send was applied finds the key gone and reports the lease as missing (lost), never
//!   as released while another holder has it.
//! - Passwords and tokens live in [`crate::secret::Secret`]s; messages name the members.

mod http;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::common;
use super::{
    validate_metadata, validate_name, AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore,
    ReleaseOutcome, RenewItem, RenewOutcome, TaskSlot,
};
use crate::config::EtcdTarget;
use crate::error::{BackendErrorKind, LeaseError, LostReason, Result};
use crate::info::{format_timestamp, parse_timestamp, LeaseInfo};
use crate::wait::ReleaseWatch;
use crate::wait::{FedBoard, ReleaseBoard};

/// The base64 of etcd's JSON gateway (keys and values are `bytes`).
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Most operations etcd accepts in one txn (its `--max-txn-ops` default).
const MAX_TXN_OPS: usize = 128;

/// Most unused etcd leases kept per TTL.
const MAX_SPARES: usize = 4;

/// How often a forced release whose holder changed while it was read is tried.
const ATTEMPTS: usize = 5;

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

/// The record as stored.
#[derive(serde::Serialize)]
struct RecordOut<'a> {
    #[serde(rename = "leaseId")]
    lease_id: &'a str,
    #[serde(rename = "acquiredAt")]
    acquired_at: String,
    metadata: &'a BTreeMap<String, String>,
}

/// The record as read: the sample's fields must be there, or it is not a lease.
#[derive(Deserialize)]
struct RecordIn {
    #[serde(rename = "leaseId")]
    lease_id: String,
    #[serde(rename = "acquiredAt")]
    acquired_at: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
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

    /// Renews a batch: ONE streamed keep-alive request for all their etcd leases, then one
    /// txn of ranges per [`MAX_TXN_OPS`] keys checking each key still has our
    /// `create_revision` and lease. A lease id this store did not acquire (another client of
    /// the same process) is first looked up through its key.
    async fn renew_all(&self, items: &[RenewItem<'_>]) -> Result<Vec<Result<RenewOutcome>>> {
        let inner = self.inner()?;
        let t_sent = Instant::now();
        let mut out: Vec<Option<Result<RenewOutcome>>> = Vec::with_capacity(items.len());
        let mut held = Vec::with_capacity(items.len());
        // Whether the item is one of this store's acquisitions ([`Inner::held`]).
        let mut mine = Vec::with_capacity(items.len());
        for item in items {
            let h = inner.held(item.name, item.lease_id);
            mine.push(h.is_some());
            let answer = h.and_then(|h| Inner::answered_unsent(item, &h));
            held.push(if answer.is_some() { None } else { h });
            out.push(answer);
        }
        // Lease ids this store did not acquire: found through the key (one range each).
        for (i, item) in items.iter().enumerate() {
            if out[i].is_some() || held[i].is_some() {
                continue;
            }
            let kv = inner.range_key(&inner.key(item.name)).await?;
            match kv {
                Some(kv)
                    if kv.lease != 0
                        && inner
                            .record(item.name, &kv)
                            .is_ok_and(|r| r.lease_id == item.lease_id) =>
                {
                    held[i] = Some(Held {
                        etcd_lease: kv.lease,
                        token: kv.create_revision,
                        granted: 0,
                        ttl: 0,
                        kept_at: t_sent,
                        revoke_at: t_sent + item.duration,
                        revoking: false,
                    });
                }
                other => {
                    out[i] = Some(Ok(RenewOutcome::Lost(inner.lost_reason(
                        item.name,
                        other.as_ref(),
                        item.lease_id,
                    ))));
                }
            }
        }
        let todo: Vec<usize> = (0..items.len()).filter(|i| out[*i].is_none()).collect();
        if !todo.is_empty() {
            let leases: Vec<i64> = todo
                .iter()
                .filter_map(|i| held[*i].map(|h| h.etcd_lease))
                .collect();
            let ttls = inner.keep_alive_all(&leases).await?;
            let keys: Vec<Vec<u8>> = todo.iter().map(|i| inner.key(items[*i].name)).collect();
            let kvs = inner.range_keys(&keys).await?;
            for ((i, kv), lease) in todo.iter().zip(kvs).zip(leases) {
                let (item, h) = (
                    &items[*i],
                    held[*i].unwrap_or(Held {
                        etcd_lease: lease,
                        token: -1,
                        granted: 0,
                        ttl: 0,
                        kept_at: t_sent,
                        revoke_at: t_sent,
                        revoking: false,
                    }),
                );
                let alive = ttls.get(&lease).is_some_and(|t| *t > 0);
                let ours = alive
                    && kv
                        .as_ref()
                        .is_some_and(|kv| kv.create_revision == h.token && kv.lease == lease);
                let kept = ours && inner.extend(item, mine[*i], t_sent);
                out[*i] = Some(Ok(if kept {
                    RenewOutcome::Renewed
                } else if ours {
                    // Taken by the expirer or a release, which own its etcd lease.
                    RenewOutcome::Lost(LostReason::Missing)
                } else {
                    if inner.forget(item.name, item.lease_id).is_some() {
                        inner.revoke(lease).await;
                    }
                    RenewOutcome::Lost(inner.lost_reason(item.name, kv.as_ref(), item.lease_id))
                }));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or(Ok(RenewOutcome::Lost(LostReason::Missing))))
            .collect())
    }

    /// The outcome of the acquire txn `txn`, sent with the etcd lease `lease` at `t_sent`.
    async fn acquired_or_held(
        &self,
        req: &AcquireRequest<'_>,
        txn: TxnResponse,
        lease: Spare,
        t_sent: Instant,
    ) -> Result<AcquireOutcome> {
        let inner = &*self.inner;
        let token = if txn.succeeded {
            txn.header.revision
        } else {
            match txn.ranged() {
                // A resend whose first send won (see the module docs).
                Some(kv) if kv.lease == lease.id => kv.create_revision,
                Some(kv) => {
                    let holder = inner.holder(req.name, &kv).await;
                    // Unused: kept for the next attempt (a waiter's), instead of revoked.
                    inner.keep_spare(lease);
                    return Ok(AcquireOutcome::Held(holder?));
                }
                None => {
                    inner.revoke(lease.id).await;
                    return Err(LeaseError::backend(
                        BackendErrorKind::Other,
                        format!(
                            "{}: the acquire's txn neither wrote nor found the key; retry",
                            inner.http.display
                        ),
                    ));
                }
            }
        };
        inner.remember(
            req.name,
            req.lease_id,
            Held {
                etcd_lease: lease.id,
                token,
                granted: lease.granted,
                ttl: lease.ttl,
                kept_at: t_sent,
                revoke_at: t_sent + req.duration,
                revoking: false,
            },
        );
        self.start_expirer();
        self.prefetch_spare(lease.ttl);
        Ok(AcquireOutcome::Acquired {
            fencing_token: u64::try_from(token).unwrap_or(0),
        })
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

    /// The outcome of renewing `item`, one of this store's acquisitions, that is known without
    /// asking etcd: lost when the expirer is revoking it (its duration passed without a
    /// renewal), an error when it asks for a longer TTL than etcd's.
    fn answered_unsent(item: &RenewItem<'_>, h: &Held) -> Option<Result<RenewOutcome>> {
        if h.revoking {
            return Some(Ok(RenewOutcome::Lost(LostReason::Missing)));
        }
        (common::secs_ceil_i64(item.duration) > h.granted).then(|| {
            Err(LeaseError::InvalidArgument(format!(
                "etcd cannot lengthen a lease's TTL: lease {:?} was taken for {}s, and a renewal asked for {:?}; renew with the duration it was acquired with",
                item.name, h.granted, item.duration
            )))
        })
    }

    /// After a renewal sent at `t_sent` found the key ours: whether it is still ours, and if
    /// so its `revoke_at` moved to `t_sent + duration`. One of this store's acquisitions
    /// (`mine`) must still be in [`Inner::held`] and not being revoked: if the expirer took it
    /// (its duration passed while the renewal was on its way) or a release did, its etcd lease
    /// is being revoked or reused, and the key will not outlive the request that saw it.
    /// Checked and extended under one lock, so the expirer either sees the new `revoke_at` or
    /// has made this renewal a loss.
    fn extend(&self, item: &RenewItem<'_>, mine: bool, t_sent: Instant) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get_mut(&(item.name.to_owned(), item.lease_id.to_owned())) {
            Some(h) if !h.revoking => {
                h.revoke_at = h.revoke_at.max(t_sent + item.duration);
                h.kept_at = h.kept_at.max(t_sent);
                true
            }
            Some(_) => false,
            None => !mine,
        }
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

    /// "If the key does not exist, put `value` on etcd lease `lease`; else range it."
    async fn put_if_absent(&self, key: &[u8], value: &[u8], lease: i64) -> Result<TxnResponse> {
        let key = B64.encode(key);
        self.http
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{
                        "key": key, "target": "CREATE", "result": "EQUAL",
                        "create_revision": "0",
                    }],
                    "success": [{ "request_put": {
                        "key": key, "value": B64.encode(value), "lease": lease.to_string(),
                    }}],
                    "failure": [{ "request_range": { "key": key } }],
                }),
            )
            .await
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

    /// The holder a key shows, its time left read from etcd.
    async fn holder(&self, name: &str, kv: &Kv) -> Result<LeaseInfo> {
        let record = self.record(name, kv)?;
        let ttl = self.time_left(kv.lease).await?;
        Ok(info(name, kv, record, ttl))
    }

    /// The lease record of `kv`, or `WrongType` for foreign data.
    fn record(&self, name: &str, kv: &Kv) -> Result<RecordIn> {
        B64.decode(kv.value.as_bytes())
            .ok()
            .and_then(|v| serde_json::from_slice::<RecordIn>(&v).ok())
            .ok_or_else(|| {
                LeaseError::backend(
                    BackendErrorKind::WrongType,
                    format!(
                        "the etcd key {:?} at {} holds something that is not a lease record (no JSON with leaseId and acquiredAt); it was not written by distributed-leasing and is left alone: use another KeyPrefix, or remove it yourself",
                        format!("{}{name}", self.prefix),
                        self.http.display
                    ),
                )
            })
    }

    /// Why an owner-checked operation found nothing of ours, from what the key holds now.
    fn lost_reason(&self, name: &str, kv: Option<&Kv>, ours: &str) -> LostReason {
        match kv.map(|kv| self.record(name, kv)) {
            Some(Ok(r)) if r.lease_id == ours => LostReason::Missing,
            Some(_) => LostReason::HeldByOther,
            None => LostReason::Missing,
        }
    }

    /// "If the key's `create_revision` is `token`, delete it; else range it."
    async fn delete_if(&self, key: &[u8], token: i64) -> Result<TxnResponse> {
        let key = B64.encode(key);
        self.http
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{
                        "key": key, "target": "CREATE", "result": "EQUAL",
                        "create_revision": token.to_string(),
                    }],
                    "success": [{ "request_delete_range": { "key": key } }],
                    "failure": [{ "request_range": { "key": key } }],
                }),
            )
            .await
    }
}

fn info(name: &str, kv: &Kv, record: RecordIn, ttl: Option<Duration>) -> LeaseInfo {
    LeaseInfo {
        name: name.to_owned(),
        lease_id: record.lease_id,
        acquired_at: parse_timestamp(&record.acquired_at),
        fencing_token: u64::try_from(kv.create_revision).ok(),
        metadata: record.metadata,
        ttl,
        orphan: false,
    }
}

#[async_trait]
impl LeaseStore for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        validate_name(req.name)?;
        validate_metadata(req.metadata)?;
        let inner = self.inner()?;
        let value = serde_json::to_vec(&RecordOut {
            lease_id: req.lease_id,
            acquired_at: format_timestamp(req.acquired_at),
            metadata: req.metadata,
        })
        .map_err(|e| {
            LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}"))
        })?;
        let key = inner.key(req.name);
        let ttl = common::secs_ceil_i64(req.duration);
        let t_sent = Instant::now();
        // A spare etcd lease: kept alive and used at once (see the module docs).
        if let Some(spare) = inner.take_spare(ttl, t_sent) {
            let ids = [spare.id];
            let (alive, txn) = tokio::join!(
                inner.keep_alive_all(&ids),
                inner.put_if_absent(&key, &value, spare.id)
            );
            let alive = alive
                .ok()
                .and_then(|ttls| ttls.get(&spare.id).copied())
                .is_some_and(|t| t > 0);
            match txn {
                Ok(txn) if alive => {
                    let spare = Spare {
                        granted_at: t_sent,
                        ..spare
                    };
                    return self.acquired_or_held(req, txn, spare, t_sent).await;
                }
                // The keep-alive failed, or the spare was gone: its key (if the put was made)
                // cannot be vouched for. Revoking the spare deletes it; then as without one.
                Ok(_) => inner.revoke(spare.id).await,
                Err(e) if e.to_string().contains("lease not found") => {}
                Err(e) => {
                    inner.revoke(spare.id).await;
                    return Err(e);
                }
            }
        }
        let t_sent = Instant::now();
        let granted = inner.grant(ttl).await?;
        let spare = Spare {
            id: granted.id,
            ttl,
            granted: granted.ttl,
            granted_at: t_sent,
        };
        match inner.put_if_absent(&key, &value, granted.id).await {
            Ok(txn) => self.acquired_or_held(req, txn, spare, t_sent).await,
            Err(e) => {
                inner.revoke(granted.id).await;
                Err(e)
            }
        }
    }

    fn renews_in_one_request(&self) -> bool {
        true
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        let checked = items.iter().try_for_each(|i| validate_name(i.name));
        match async { checked.map(|()| self.renew_all(items))?.await }.await {
            Ok(outcomes) => outcomes,
            Err(e) => super::failed_batch(items.len(), e),
        }
    }
    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        validate_name(name)?;
        let inner = self.inner()?;
        let key = inner.key(name);
        let (etcd_lease, token, held) = match inner.held(name, lease_id) {
            Some(h) => (h.etcd_lease, h.token, Some(h)),
            None => match inner.range_key(&key).await? {
                Some(kv)
                    if inner
                        .record(name, &kv)
                        .is_ok_and(|r| r.lease_id == lease_id) =>
                {
                    (kv.lease, kv.create_revision, None)
                }
                other => {
                    return Ok(ReleaseOutcome::Lost(inner.lost_reason(
                        name,
                        other.as_ref(),
                        lease_id,
                    )))
                }
            },
        };
        let txn = inner.delete_if(&key, token).await?;
        // Whoever takes the entry out of `held` owns the etcd lease: here, or the expirer (or
        // a renewal that found the lease lost), which revokes it.
        let owned = inner.forget(name, lease_id);
        let released = txn.succeeded;
        let kv = if released { None } else { txn.ranged() };
        match (held, owned) {
            // Our etcd lease now carries no key: kept as a spare for the next acquire (no
            // revoke, so the release is one request). Only when our own delete removed the key:
            // a key removed by someone else (a forced release) means they saw our etcd lease,
            // and whoever saw it may revoke it, which must never hit a key we put on it later.
            (Some(_), Some(h)) if released => {
                inner.keep_spare(Spare {
                    id: etcd_lease,
                    ttl: h.ttl,
                    granted: h.granted,
                    granted_at: h.kept_at,
                });
            }
            (Some(_), None) => {}
            _ => inner.revoke(etcd_lease).await,
        }
        if released {
            return Ok(ReleaseOutcome::Released);
        }
        Ok(ReleaseOutcome::Lost(inner.lost_reason(
            name,
            kv.as_ref(),
            lease_id,
        )))
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        validate_name(name)?;
        let inner = self.inner()?;
        match inner.range_key(&inner.key(name)).await? {
            None => Ok(None),
            Some(kv) => inner.holder(name, &kv).await.map(Some),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let inner = self.inner()?;
        let from = inner.key(prefix);
        let r: RangeResponse = inner
            .http
            .call(
                "/v3/kv/range",
                &json!({
                    "key": B64.encode(&from),
                    "range_end": B64.encode(prefix_end(&from)),
                }),
            )
            .await?;
        let leases: Vec<(String, Kv, RecordIn)> = r
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(B64.decode(kv.key.as_bytes()).ok()?).ok()?;
                let name = key.strip_prefix(&inner.prefix)?.to_owned();
                // Other data under the prefix is not a lease: skipped, as the other stores do.
                let record = inner.record(&name, &kv).ok()?;
                Some((name, kv, record))
            })
            .collect();
        // The holders' time left: one request per lease, at most 16 at a time.
        let ids: Vec<i64> = leases.iter().map(|(_, kv, _)| kv.lease).collect();
        let ttls: Vec<Result<Option<Duration>>> = futures_util::stream::iter(ids)
            .map(|id| inner.time_left(id))
            .buffered(16)
            .collect()
            .await;
        let mut out = Vec::with_capacity(leases.len());
        for ((name, kv, record), ttl) in leases.into_iter().zip(ttls) {
            out.push(info(&name, &kv, record, ttl?));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        validate_name(name)?;
        let inner = self.inner()?;
        let key = inner.key(name);
        for _ in 0..ATTEMPTS {
            let Some(kv) = inner.range_key(&key).await? else {
                return Ok(ForceReleased::Absent);
            };
            let record = inner.record(name, &kv)?;
            if lease_id.is_some_and(|id| id != record.lease_id) {
                let ttl = inner.time_left(kv.lease).await?;
                return Ok(ForceReleased::HeldByOther(info(name, &kv, record, ttl)));
            }
            // The holder's etcd lease is not revoked: the holder may already have made it a
            // spare and put another key on it (its renewal finds the loss by the key's
            // create_revision, and a lease without a key expires by itself).
            if inner.delete_if(&key, kv.create_revision).await?.succeeded {
                return Ok(ForceReleased::Released);
            }
            // It changed hands between the range and the delete: look again.
        }
        Err(LeaseError::backend(
            BackendErrorKind::Other,
            format!(
                "{}: the lease kept changing hands while it was read ({ATTEMPTS} attempts); retry",
                self.inner.http.display
            ),
        ))
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        let board: &Arc<ReleaseBoard> = self.inner.watcher.board();
        board.join(name)
    }

    async fn close(&self) {
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
