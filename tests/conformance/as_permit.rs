//! DistributedLock's trick: the lease cases run again on semaphores. [`PermitAsLease`] is a
//! test-only [`LeaseStore`] over a real store that serves every lease operation on a name `X`
//! from the semaphore `X` of limit `L`: an acquire takes a permit (and must get the one free
//! slot, `L - 1`), a refusal names the holder of that slot, and renew, release, forced release,
//! proclaim and inspect of `X` are the same operations on that slot's record
//! ([`permit_record`]), with the names of what comes back rewritten to `X`. At `L > 1` the
//! other `L - 1` slots of each name are taken (slots `0..L-1`, auto-renewed, through a client
//! of their own) before its first acquire, so exactly one permit is free: the last free permit
//! of a semaphore must behave as a mutex. `Harness::semaphore1` / `Harness::semaphore5` in
//! `main.rs` make the harnesses.
//!
//! `list` cannot be served by the store (its listings leave semaphore records out, and
//! permits cannot be listed by a prefix of their semaphores' names): it is served from the
//! names this harness has acquired, each read through the store (`inspect` of its slot).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use distributed_leasing::store::{
    permit_record, semaphore_key, AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore,
    PermitOutcome, PermitRequest, ProclaimOutcome, ReleaseOutcome, RenewItem, RenewOutcome,
    SemaphoreInfo,
};
use distributed_leasing::wait::{ChangeWatch, ReleaseWatch};
use distributed_leasing::{LeaseClient, LeaseInfo, LeaseOptions, Permit, Result, TryPermit};

/// What the adapters of one harness (one test) share.
#[derive(Debug)]
pub struct Shared {
    /// The semaphores' limit.
    pub limit: u32,
    /// The client that holds the other `limit - 1` permits of each name (made by the harness
    /// before its first adapter).
    pub holder: tokio::sync::OnceCell<LeaseClient>,
    /// The permits taken so that one is free, by name (held until the harness is dropped).
    held: tokio::sync::Mutex<HashMap<String, Vec<Permit>>>,
    /// Every name acquired through an adapter of this harness (for `list`).
    names: Mutex<BTreeSet<String>>,
}

impl Shared {
    #[must_use]
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            holder: tokio::sync::OnceCell::new(),
            held: tokio::sync::Mutex::new(HashMap::new()),
            names: Mutex::new(BTreeSet::new()),
        })
    }

    /// The one slot left free: the one every lease of the adapter is.
    fn slot(&self) -> u32 {
        self.limit - 1
    }

    /// Takes slots `0..limit-1` of `name` once, held for the whole test.
    async fn hold_the_others(&self, name: &str) {
        if self.limit == 1 {
            return;
        }
        let mut held = self.held.lock().await;
        if held.contains_key(name) {
            return;
        }
        let holder = self
            .holder
            .get()
            .expect("the harness makes the holder first");
        let opts = LeaseOptions {
            duration: Some(Duration::from_secs(60)),
            auto_renew: Some(true),
            ..LeaseOptions::default()
        };
        let mut permits = Vec::new();
        for slot in 0..self.slot() {
            match holder
                .try_acquire_permit(name, Some(self.limit), &opts)
                .await
                .expect("a pre-held permit")
            {
                TryPermit::Acquired(p) => {
                    assert_eq!(
                        p.slot(),
                        slot,
                        "pre-held permits take slots 0..{}",
                        self.slot()
                    );
                    permits.push(p);
                }
                TryPermit::Full { holders, .. } => {
                    panic!("{name}: no slot {slot} to pre-hold: {holders:?}")
                }
            }
        }
        held.insert(name.to_owned(), permits);
    }
}

/// A lease store made of the last free permit of each semaphore (see the module docs).
#[derive(Debug)]
pub struct PermitAsLease {
    inner: Arc<dyn LeaseStore>,
    shared: Arc<Shared>,
}

impl PermitAsLease {
    #[must_use]
    pub fn over(inner: Arc<dyn LeaseStore>, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self { inner, shared })
    }

    fn record(&self, name: &str) -> String {
        permit_record(name, self.shared.slot())
    }
}

/// `info` (of a permit's record) as the lease `name`.
fn renamed(mut info: LeaseInfo, name: &str) -> LeaseInfo {
    name.clone_into(&mut info.name);
    info
}

#[async_trait]
impl LeaseStore for PermitAsLease {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        self.shared.hold_the_others(req.name).await;
        self.shared
            .names
            .lock()
            .unwrap()
            .insert(req.name.to_owned());
        let out = self
            .inner
            .try_acquire_permit(&PermitRequest {
                name: req.name,
                limit: Some(self.shared.limit),
                lease_id: req.lease_id,
                duration: req.duration,
                acquired_at: req.acquired_at,
                metadata: req.metadata,
            })
            .await?;
        Ok(match out {
            PermitOutcome::Acquired {
                slot,
                fencing_token,
            } => {
                assert_eq!(
                    slot,
                    self.shared.slot(),
                    "{}: the permit must take the one free slot",
                    req.name
                );
                AcquireOutcome::Acquired { fencing_token }
            }
            PermitOutcome::Full { limit, holders } => {
                let holder = holders
                    .into_iter()
                    .find(|h| h.slot == self.shared.slot())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: full at limit {limit} without a holder of slot {}",
                            req.name,
                            self.shared.slot()
                        )
                    });
                AcquireOutcome::Held(renamed(holder.info, req.name))
            }
        })
    }

    async fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> Result<RenewOutcome> {
        self.inner
            .renew(&self.record(name), lease_id, duration)
            .await
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        let records: Vec<String> = items.iter().map(|i| self.record(i.name)).collect();
        let items: Vec<RenewItem<'_>> = items
            .iter()
            .zip(&records)
            .map(|(i, record)| RenewItem {
                name: record,
                lease_id: i.lease_id,
                duration: i.duration,
            })
            .collect();
        self.inner.renew_many(&items).await
    }

    fn renews_in_one_request(&self) -> bool {
        self.inner.renews_in_one_request()
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        self.inner.release(&self.record(name), lease_id).await
    }

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        self.inner
            .proclaim(&self.record(name), lease_id, metadata)
            .await
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        Ok(self
            .inner
            .inspect(&self.record(name))
            .await?
            .map(|i| renamed(i, name)))
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let names: Vec<String> = self
            .shared
            .names
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for name in names {
            if let Some(info) = self.inspect(&name).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        Ok(
            match self
                .inner
                .force_release(&self.record(name), lease_id)
                .await?
            {
                ForceReleased::HeldByOther(info) => ForceReleased::HeldByOther(renamed(info, name)),
                other => other,
            },
        )
    }

    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        self.inner.try_acquire_permit(req).await
    }

    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        self.inner.semaphore_info(name).await
    }

    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        self.inner.set_semaphore_limit(name, limit).await
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        self.inner.watch_releases(&semaphore_key(name))
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        self.inner.watch_changes(&semaphore_key(name))
    }
}
