//! The etcd store's lease operations: [`LeaseStore`] for [`EtcdStore`] (the acquire txn on a
//! spare or fresh etcd lease, the batch renewal, the owner-checked proclaim and release,
//! inspect, list and the forced release; the semaphore methods are [`super::semaphore`]'s),
//! the lease record as stored and read, and the txns they send. The rules
//! they keep are the store's (see [`super`]).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{prefix_end, EtcdStore, Held, Inner, Kv, RangeResponse, Spare, TxnResponse, B64};
use crate::error::{BackendErrorKind, LeaseError, LostReason, Result};
use crate::info::{format_timestamp, parse_timestamp, LeaseInfo};
use crate::store::{
    common, failed_batch, is_semaphore_record, AcquireOutcome, AcquireRequest, ForceReleased,
    LeaseStore, PermitOutcome, PermitRequest, ProclaimOutcome, ReleaseOutcome, RenewItem,
    RenewOutcome, SemaphoreInfo,
};
use crate::wait::{ChangeWatch, ReleaseBoard, ReleaseWatch};

/// How often a forced release whose holder changed while it was read is tried.
const ATTEMPTS: usize = 5;

/// The record as stored.
#[derive(serde::Serialize)]
pub(super) struct RecordOut<'a> {
    #[serde(rename = "leaseId")]
    pub(super) lease_id: &'a str,
    #[serde(rename = "acquiredAt")]
    pub(super) acquired_at: String,
    pub(super) metadata: &'a BTreeMap<String, String>,
}

impl RecordOut<'_> {
    pub(super) fn to_vec(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| {
            LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}"))
        })
    }
}

/// The record as read: the sample's fields must be there, or it is not a lease.
#[derive(Deserialize)]
pub(super) struct RecordIn {
    #[serde(rename = "leaseId")]
    lease_id: String,
    #[serde(rename = "acquiredAt")]
    acquired_at: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

impl EtcdStore {
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
        self.hold(req.name, req.lease_id, req.duration, lease, token, t_sent);
        Ok(AcquireOutcome::Acquired {
            fencing_token: u64::try_from(token).unwrap_or(0),
        })
    }

    /// Records the acquisition of the key of `name` by `lease_id` on the etcd lease `lease`
    /// (with its create revision `token`, the acquire sent at `t_sent`) in [`Inner::held`], so
    /// that its renewals, its release and the expirer know its etcd lease; grants the next spare.
    pub(super) fn hold(
        &self,
        name: &str,
        lease_id: &str,
        duration: Duration,
        lease: Spare,
        token: i64,
        t_sent: Instant,
    ) {
        self.inner.remember(
            name,
            lease_id,
            Held {
                etcd_lease: lease.id,
                token,
                granted: lease.granted,
                ttl: lease.ttl,
                kept_at: t_sent,
                revoke_at: t_sent + duration,
                revoking: false,
            },
        );
        self.start_expirer();
        self.prefetch_spare(lease.ttl);
    }
}

impl Inner {
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

    /// Sends the txn `txn(L)` that puts a key on an etcd lease L of `ttl` seconds: a spare,
    /// kept alive by a keep-alive sent with the txn, else a fresh grant, then the txn (see the
    /// module docs). Returns the answer, the etcd lease (as a [`Spare`] kept alive when the
    /// txn was sent) and that time. A spare whose keep-alive failed is revoked (with the key,
    /// if the txn put it) and a fresh grant used instead. On an error the etcd lease is
    /// revoked, so none is left carrying a key nobody knows of.
    pub(super) async fn txn_on_lease<F, Fut>(
        &self,
        ttl: i64,
        txn: F,
    ) -> Result<(TxnResponse, Spare, Instant)>
    where
        F: Fn(i64) -> Fut,
        Fut: std::future::Future<Output = Result<TxnResponse>>,
    {
        let t_sent = Instant::now();
        if let Some(spare) = self.take_spare(ttl, t_sent) {
            let ids = [spare.id];
            let (alive, answer) = tokio::join!(self.keep_alive_all(&ids), txn(spare.id));
            let alive = alive
                .ok()
                .and_then(|ttls| ttls.get(&spare.id).copied())
                .is_some_and(|t| t > 0);
            match answer {
                Ok(answer) if alive => {
                    let spare = Spare {
                        granted_at: t_sent,
                        ..spare
                    };
                    return Ok((answer, spare, t_sent));
                }
                // The keep-alive failed, or the spare was gone: its key (if the put was made)
                // cannot be vouched for. Revoking the spare deletes it; then as without one.
                Ok(_) => self.revoke(spare.id).await,
                Err(e) if e.to_string().contains("lease not found") => {}
                Err(e) => {
                    self.revoke(spare.id).await;
                    return Err(e);
                }
            }
        }
        let t_sent = Instant::now();
        let granted = self.grant(ttl).await?;
        let lease = Spare {
            id: granted.id,
            ttl,
            granted: granted.ttl,
            granted_at: t_sent,
        };
        match txn(granted.id).await {
            Ok(answer) => Ok((answer, lease, t_sent)),
            Err(e) => {
                self.revoke(granted.id).await;
                Err(e)
            }
        }
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

    /// "If the key was not written since `mod_revision`, put `value` on etcd lease `lease`
    /// (the one it has: its TTL is not touched)." Nothing is ranged on failure.
    async fn put_if_unchanged(
        &self,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        lease: i64,
    ) -> Result<TxnResponse> {
        let key = B64.encode(key);
        self.http
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [{
                        "key": key, "target": "MOD", "result": "EQUAL",
                        "mod_revision": mod_revision.to_string(),
                    }],
                    "success": [{ "request_put": {
                        "key": key, "value": B64.encode(value), "lease": lease.to_string(),
                    }}],
                }),
            )
            .await
    }

    /// The holder a key shows, its time left read from etcd.
    async fn holder(&self, name: &str, kv: &Kv) -> Result<LeaseInfo> {
        let record = self.record(name, kv)?;
        let ttl = self.time_left(kv.lease).await?;
        Ok(info(name, kv, record, ttl))
    }

    /// The lease record of `kv`, or `WrongType` for foreign data.
    pub(super) fn record(&self, name: &str, kv: &Kv) -> Result<RecordIn> {
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

pub(super) fn info(name: &str, kv: &Kv, record: RecordIn, ttl: Option<Duration>) -> LeaseInfo {
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
        let inner = self.inner()?;
        let value = RecordOut {
            lease_id: req.lease_id,
            acquired_at: format_timestamp(req.acquired_at),
            metadata: req.metadata,
        }
        .to_vec()?;
        let key = inner.key(req.name);
        let ttl = common::secs_ceil_i64(req.duration);
        let (txn, lease, t_sent) = inner
            .txn_on_lease(ttl, |id| inner.put_if_absent(&key, &value, id))
            .await?;
        self.acquired_or_held(req, txn, lease, t_sent).await
    }

    fn renews_in_one_request(&self) -> bool {
        true
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        match self.renew_all(items).await {
            Ok(outcomes) => outcomes,
            Err(e) => failed_batch(items.len(), e),
        }
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
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

    /// The record is read, then rewritten with the new metadata in one txn that compares its
    /// mod revision (so nobody wrote it meanwhile: not a successor, not a release) and puts it
    /// on the etcd lease it has (so its TTL is not extended). The watch reports the put to
    /// observers. A record written between the read and the txn (our own concurrent proclaim)
    /// is read again, a few times at most.
    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        let inner = self.inner()?;
        // One of this store's acquisitions whose duration passed without a renewal: the
        // expirer revokes its etcd lease (if it has not yet): gone, as for a renewal.
        if inner
            .held(name, lease_id)
            .is_some_and(|h| h.revoking || Instant::now() >= h.revoke_at)
        {
            return Ok(ProclaimOutcome::Lost(LostReason::Missing));
        }
        let key = inner.key(name);
        for _ in 0..ATTEMPTS {
            let kv = inner.range_key(&key).await?;
            let record = match kv.as_ref().map(|kv| inner.record(name, kv)) {
                Some(Ok(r)) if r.lease_id == lease_id => r,
                _ => {
                    return Ok(ProclaimOutcome::Lost(inner.lost_reason(
                        name,
                        kv.as_ref(),
                        lease_id,
                    )))
                }
            };
            let Some(kv) = kv else { break };
            let value = RecordOut {
                lease_id,
                acquired_at: record.acquired_at,
                metadata,
            }
            .to_vec()?;
            if inner
                .put_if_unchanged(&key, &value, kv.mod_revision, kv.lease)
                .await?
                .succeeded
            {
                return Ok(ProclaimOutcome::Proclaimed);
            }
        }
        Err(LeaseError::backend(
            BackendErrorKind::Other,
            format!(
                "{}: the lease record kept changing while it was proclaimed ({ATTEMPTS} attempts); retry",
                inner.http.display
            ),
        ))
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
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
                // A semaphore's config and permits are not leases (see `super::semaphore`).
                if is_semaphore_record(&name) {
                    return None;
                }
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

    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        self.acquire_permit(req).await
    }

    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        self.read_semaphore(name).await
    }

    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        self.store_limit(name, limit).await
    }

    async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        self.read_semaphores(prefix).await
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        let board: &Arc<ReleaseBoard> = self.inner.watcher.board();
        board.join(name)
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        self.inner.watcher.board().observe(name).with_acquisitions()
    }

    async fn close(&self) {
        self.close_store().await;
    }
}
