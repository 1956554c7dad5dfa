//! Semaphores: up to `limit` holders of one name at once, each holding a [`Permit`] that is a
//! lease of its own.
//!
//! A permit occupies a slot (`0..limit`) of its semaphore; its record in the store is an
//! ordinary lease record named [`crate::store::permit_record`] (a name no lease can take), with
//! its own random lease id, its own expiry on the store's clock and a fencing token from the
//! semaphore's one counter. So everything a lease has, a permit has through the same code: the
//! `Holding` state machine (`src/holding.rs`) (its deadline, lost exactly once, events, release
//! on drop), renewal by the client's scheduler in its batches (`renew_many` on the slot's
//! record), owner-checked renew and release that never re-create an expired permit, and the
//! give-back of what a cancelled acquire won (`src/acquiring.rs`).
//!
//! Owns: [`Permit`] (the handle: its semaphore's name and its slot over a [`Lease`] of the
//! slot's record), [`TryPermit`], the checks of a semaphore's name and limit at the client's
//! edge, and the permit operations of [`LeaseClient`] (`try_acquire_permit`, `acquire_permit`
//! with a wait, `semaphore_info`, `list_semaphores`, `set_semaphore_limit`, `force_release_permit`). The store's side (the stored limit,
//! the first free slot, the counter) is [`LeaseStore::try_acquire_permit`].
//!
//! The limit is stored with the semaphore: an acquire with another limit is refused with
//! [`LeaseError::LimitMismatch`] naming both; `limit: None` uses the stored one. Lowering it
//! ([`LeaseClient::set_semaphore_limit`]) evicts nobody and admits nobody until fewer permits
//! than the new limit are held.
//!
//! Waiting for a permit is the lease's wait loop (`acquiring::acquire_with_wait`): woken by the release of any
//! permit of the semaphore (the store tells it under [`crate::store::semaphore_key`]), at the
//! expiry of the permit that expires first, and by polls while the store's feed is not live.
//! A permit acquire always runs on the client's own store (never through a
//! [`LeaseClient::via`] view's), in a task of its own, so a caller that leaves while it is on
//! the wire leaves nothing: what it won is given back (`acquiring::Delivery`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::acquiring::{acquire_with_wait, Attempted, Delivery};
use crate::client::{new_lease_id, LeaseClient, LeaseOptions};
use crate::error::{LeaseError, LostReason, Result};
use crate::holding::Holding;
use crate::info::LeaseInfo;
use crate::lease::{Lease, LeaseEnd, LeaseEvents};
use crate::metrics;
use crate::store::common::closed_error;
use crate::store::{
    permit_record, semaphore_key, validate_metadata, validate_name, AcquireOutcome, ForceReleased,
    LeaseStore, PermitOutcome, PermitRequest, SemaphoreHolder, SemaphoreInfo, MAX_SEMAPHORE_LIMIT,
};

/// A held permit of a semaphore: a lease of its own over its slot. Renewed in the background
/// (unless auto-renew is off) until released, dropped or lost; dropping it releases it in the
/// background.
#[derive(Debug)]
pub struct Permit {
    semaphore: String,
    slot: u32,
    lease: Lease,
}

impl Permit {
    /// The semaphore's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.semaphore
    }

    /// The slot this permit occupies (`0..limit`).
    #[must_use]
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// This permit's lease id (a UUID v4 of its own).
    #[must_use]
    pub fn lease_id(&self) -> &str {
        self.lease.lease_id()
    }

    /// The fencing token: strictly greater than that of every permit of this semaphore taken
    /// before it, so a resource that keeps the last token it saw per slot refuses a holder
    /// whose permit has silently expired.
    #[must_use]
    pub fn fencing_token(&self) -> u64 {
        self.lease.fencing_token()
    }

    /// Wall-clock time of acquisition (UTC), as stored.
    #[must_use]
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.lease.acquired_at()
    }

    /// The permit's duration (the server-side TTL set at each renewal).
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.lease.duration()
    }

    /// Successful renewals so far.
    #[must_use]
    pub fn renewals(&self) -> u64 {
        self.lease.renewals()
    }

    /// Local validity left: time until the deadline, zero once lost or released.
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.lease.expires_in()
    }

    /// True once the permit is lost (past its deadline counts).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Why the permit was lost, if it was.
    #[must_use]
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.lease.lost_reason()
    }

    /// How the permit ended, if it has.
    #[must_use]
    pub fn end(&self) -> Option<LeaseEnd> {
        self.lease.end()
    }

    /// A future that resolves when the permit ends (lost or released).
    pub fn ended(&self) -> impl std::future::Future<Output = LeaseEnd> + Send + 'static {
        self.lease.ended()
    }

    /// Calls `hook` once when the permit ends (see [`Lease::on_end`]).
    pub fn on_end(&self, hook: impl FnOnce(LeaseEnd) + Send + 'static) {
        self.lease.on_end(hook);
    }

    /// The permit's events from now on (see [`Lease::events`]).
    #[must_use]
    pub fn events(&self) -> LeaseEvents {
        self.lease.events()
    }

    /// Renews now, whatever the schedule.
    ///
    /// # Errors
    /// `Lost` (naming the semaphore and the slot) if the permit is no longer held; backend
    /// errors.
    pub async fn renew(&self) -> Result<()> {
        self.lease.renew().await.map_err(|e| self.named(e))
    }

    /// Releases the permit: stops renewal and deletes its slot's record if this holder still
    /// has it (a waiter of the semaphore is woken). Returns whether the store still had it;
    /// again, `Ok(false)` at once (a second release adds no permit).
    ///
    /// # Errors
    /// Backend errors (the permit then expires by itself after its duration).
    pub async fn release(&self) -> Result<bool> {
        self.lease.release().await.map_err(|e| self.named(e))
    }

    fn named(&self, e: LeaseError) -> LeaseError {
        permit_error(&self.semaphore, self.slot, e)
    }

    /// Its semaphore's name, its slot and the lease of its slot's record, for the Python
    /// binding, which shows a permit as the lease it is (`src/python/semaphore.rs`).
    #[cfg(feature = "python")]
    pub(crate) fn into_parts(self) -> (String, u32, Lease) {
        (self.semaphore, self.slot, self.lease)
    }
}

/// An error of a permit's lease, told with the semaphore's name and the slot instead of the
/// record's name.
pub(crate) fn permit_error(semaphore: &str, slot: u32, e: LeaseError) -> LeaseError {
    match e {
        LeaseError::Lost { reason, .. } => LeaseError::Lost {
            name: format!("{semaphore} (semaphore permit, slot {slot})"),
            reason,
        },
        other => other,
    }
}

/// The result of [`LeaseClient::try_acquire_permit`].
#[derive(Debug)]
pub enum TryPermit {
    /// We hold a permit.
    Acquired(Permit),
    /// The semaphore is full.
    Full {
        /// Its stored limit.
        limit: u32,
        /// Its holders, by slot.
        holders: Vec<SemaphoreHolder>,
    },
}

/// Checks a semaphore's limit: 1..=[`MAX_SEMAPHORE_LIMIT`].
///
/// # Errors
/// `InvalidArgument` naming the limit and the range.
pub fn validate_limit(limit: u32) -> Result<()> {
    limit_of(i128::from(limit)).map(drop)
}

/// A semaphore's limit from any integer a caller may give (a binding's `-1` or `2**31`):
/// 1..=[`MAX_SEMAPHORE_LIMIT`].
///
/// # Errors
/// `InvalidArgument` naming the limit and the range.
pub fn limit_of(limit: i128) -> Result<u32> {
    u32::try_from(limit)
        .ok()
        .filter(|l| (1..=MAX_SEMAPHORE_LIMIT).contains(l))
        .ok_or_else(|| {
            LeaseError::InvalidArgument(format!(
                "semaphore limit {limit} is out of range: give a limit from 1 to {MAX_SEMAPHORE_LIMIT} (the number of permits held at once)"
            ))
        })
}

/// The holder a waiter waits for: the one that expires first (a retry is due at its expiry).
fn first_to_expire(name: &str, holders: &[SemaphoreHolder]) -> LeaseInfo {
    holders
        .iter()
        .map(|h| &h.info)
        .min_by_key(|i| i.ttl.unwrap_or(Duration::MAX))
        .cloned()
        .unwrap_or_else(|| LeaseInfo {
            name: name.to_owned(),
            lease_id: String::new(),
            acquired_at: None,
            fencing_token: None,
            metadata: std::collections::BTreeMap::new(),
            ttl: None,
            orphan: false,
        })
}

impl LeaseClient {
    /// One attempt to take a permit of the semaphore `name` whose limit is `limit` (`None`:
    /// the stored one). Returns [`TryPermit::Full`] with the holders when it is full.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name, limit, metadata or durations, and for `limit: None`
    /// on a semaphore never used; `LimitMismatch` when `limit` differs from the stored one;
    /// backend errors.
    pub async fn try_acquire_permit(
        &self,
        name: &str,
        limit: Option<u32>,
        opts: &LeaseOptions,
    ) -> Result<TryPermit> {
        self.check_open()?;
        validate_name(name)?;
        if let Some(limit) = limit {
            validate_limit(limit)?;
        }
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        self.permit_attempt(name, limit, opts, duration, interval)
            .instrument(tracing::debug_span!("try_acquire_permit", semaphore = %name))
            .await
    }

    /// Takes a permit of the semaphore `name`, waiting up to `wait` for one (`None`: forever;
    /// zero: one attempt), as [`Self::acquire`] waits for a lease: woken by the release of any
    /// of its permits, at the expiry of the permit that expires first, and by polls while the
    /// store's feed may miss a release. Cancelling the returned future leaves nothing behind.
    ///
    /// # Errors
    /// `Unavailable` (with every holder the last attempt saw, `holder` the one that expires
    /// first) when the wait or the attempts run out; as [`Self::try_acquire_permit`].
    pub async fn acquire_permit(
        &self,
        name: &str,
        limit: Option<u32>,
        opts: &LeaseOptions,
        wait: Option<Duration>,
    ) -> Result<Permit> {
        self.check_open()?;
        validate_name(name)?;
        if let Some(limit) = limit {
            validate_limit(limit)?;
        }
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        let backoff = opts.backoff.unwrap_or(self.options().backoff);
        let store = Arc::clone(self.store());
        let span = tracing::debug_span!(
            "acquire_permit",
            semaphore = %name,
            wait_ms = wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
        );
        acquire_with_wait(
            name,
            || async {
                Ok(
                    match self
                        .permit_attempt(name, limit, opts, duration, interval)
                        .await?
                    {
                        TryPermit::Acquired(permit) => Attempted::Won(permit),
                        TryPermit::Full { holders, .. } => {
                            Attempted::Held(first_to_expire(name, &holders), holders)
                        }
                    },
                )
            },
            || store.watch_releases(&semaphore_key(name)),
            backoff,
            wait,
            self.closed(),
            closed_error,
        )
        .instrument(span)
        .await
    }

    /// The semaphore `name`: its stored limit and live permits; `None` for a name never used.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name; backend errors.
    pub async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        validate_name(name)?;
        self.store().semaphore_info(name).await
    }

    /// Every semaphore whose name starts with `prefix` (`""`: all), sorted by name: its stored
    /// limit and live permits (none, once all are released: the limit stays). Leases are never
    /// listed ([`Self::list`] lists them).
    ///
    /// # Errors
    /// `InvalidArgument` for a prefix with a control character (no name has one); backend
    /// errors.
    pub async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        if prefix.chars().any(char::is_control) {
            return Err(LeaseError::InvalidArgument(format!(
                "semaphore prefix {prefix:?} contains a control character, which no name has; use printable characters only"
            )));
        }
        self.store().list_semaphores(prefix).await
    }

    /// Stores `limit` as the limit of the semaphore `name` (an administrator's act); returns
    /// the limit it had (`None`: never used). Lowering it evicts nobody and admits nobody
    /// until fewer than `limit` permits are held.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or limit; backend errors.
    pub async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        validate_name(name)?;
        validate_limit(limit)?;
        let before = self.store().set_semaphore_limit(name, limit).await?;
        tracing::info!(semaphore = name, limit, before, "semaphore limit set");
        Ok(before)
    }

    /// Deletes the permit in `slot` of the semaphore `name` if `lease_id` still holds it
    /// (whoever holds it, given `None`): the compare-and-delete of
    /// [`Self::force_release_if`] on the slot's record, so the holder an administrator was
    /// shown is the one removed, never a successor in the same slot. Its holder learns the
    /// loss at its next renewal; a waiter of the semaphore is woken.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or a slot out of range; `WrongType` for a record that
    /// is not a lease (never deleted); backend errors.
    pub async fn force_release_permit(
        &self,
        name: &str,
        slot: u32,
        lease_id: Option<&str>,
    ) -> Result<ForceReleased> {
        validate_name(name)?;
        if slot >= MAX_SEMAPHORE_LIMIT {
            return Err(LeaseError::InvalidArgument(format!(
                "slot {slot} is out of range: a semaphore's slots are 0 to {} (see semaphore_info for the held ones)",
                MAX_SEMAPHORE_LIMIT - 1
            )));
        }
        let outcome = self
            .requests()
            .force_release(&permit_record(name, slot), lease_id)
            .await?;
        tracing::info!(
            semaphore = name,
            slot,
            outcome = match &outcome {
                ForceReleased::Released => "released",
                ForceReleased::Absent => "not_held",
                ForceReleased::HeldByOther(_) => "changed_hands",
            },
            "permit force-released"
        );
        Ok(match outcome {
            ForceReleased::HeldByOther(mut holder) => {
                name.clone_into(&mut holder.name);
                ForceReleased::HeldByOther(holder)
            }
            other => other,
        })
    }

    async fn permit_attempt(
        &self,
        name: &str,
        limit: Option<u32>,
        opts: &LeaseOptions,
        duration: Duration,
        interval: Option<Duration>,
    ) -> Result<TryPermit> {
        // Counted until the permit is registered (or the attempt failed), as a lease's.
        let Some(_work) = self.renewals.begin_acquire() else {
            return Err(closed_error());
        };
        let lease_id = new_lease_id()?;
        let acquired_at = Utc::now().trunc_subsecs(3);
        let t_sent = Instant::now();
        let outcome = self
            .store_permit_attempt(name, limit, &lease_id, duration, acquired_at, opts)
            .await
            .inspect_err(|e| {
                tracing::debug!(semaphore = name, outcome = "error", error = %e, "permit acquire failed");
            })?;
        let (slot, fencing_token) = match outcome {
            PermitOutcome::Full { limit, holders } => {
                metrics::ACQUIRE_REFUSALS.add(1);
                tracing::debug!(semaphore = name, outcome = "full", limit, "semaphore full");
                return Ok(TryPermit::Full { limit, holders });
            }
            PermitOutcome::Acquired {
                slot,
                fencing_token,
            } => (slot, fencing_token),
        };
        metrics::ACQUISITIONS.add(1);
        metrics::ACTIVE_LEASES.add(1);
        tracing::debug!(
            semaphore = name,
            slot,
            fencing_token,
            outcome = "acquired",
            "permit acquired"
        );
        let holding = Arc::new(Holding::new(
            &permit_record(name, slot),
            lease_id,
            fencing_token,
            acquired_at,
            duration,
            t_sent,
            Arc::clone(self.store()),
            self.renewals.reserve(),
        ));
        let runtime = self
            .runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        if !self.renewals.register(&holding, interval, t_sent, &runtime) {
            return Err(LeaseError::Config(
                "this lease client was closed while the permit acquire was on the wire (the permit it won has been given back); create a new client".into(),
            ));
        }
        Ok(TryPermit::Acquired(Permit {
            semaphore: name.to_owned(),
            slot,
            lease: Lease::new(holding, runtime, self.renewals.renewer()),
        }))
    }

    /// One permit acquire in a task of its own, so that it completes even if the caller is
    /// cancelled meanwhile; a permit won for a caller that left is released at once
    /// ([`Delivery`], over the slot's record).
    async fn store_permit_attempt(
        &self,
        name: &str,
        limit: Option<u32>,
        lease_id: &str,
        duration: Duration,
        acquired_at: DateTime<Utc>,
        opts: &LeaseOptions,
    ) -> Result<PermitOutcome> {
        let store: Arc<dyn LeaseStore> = Arc::clone(self.store());
        let (name, lease_id, metadata) =
            (name.to_owned(), lease_id.to_owned(), opts.metadata.clone());
        let (tx, rx) = oneshot::channel();
        let work = self.renewals.track();
        tokio::spawn(
            async move {
                let outcome = store
                    .try_acquire_permit(&PermitRequest {
                        name: &name,
                        limit,
                        lease_id: &lease_id,
                        duration,
                        acquired_at,
                        metadata: &metadata,
                    })
                    .await;
                // What a caller that left won is given back by the delivery's drop.
                let (record, won) = match &outcome {
                    Ok(PermitOutcome::Acquired {
                        slot,
                        fencing_token,
                    }) => (
                        permit_record(&name, *slot),
                        Some(Ok(AcquireOutcome::Acquired {
                            fencing_token: *fencing_token,
                        })),
                    ),
                    _ => (name, None),
                };
                let _ = tx.send((
                    Delivery {
                        outcome: won,
                        store,
                        name: record,
                        lease_id,
                        work: Some(work),
                    },
                    outcome,
                ));
            }
            .in_current_span(),
        );
        match rx.await {
            Ok((mut delivery, outcome)) => {
                // Read: nothing to give back.
                delivery.outcome = None;
                outcome
            }
            Err(_) => Err(LeaseError::backend(
                crate::error::BackendErrorKind::Other,
                "the permit acquire did not complete (the runtime is shutting down?); retry it",
            )),
        }
    }
}
