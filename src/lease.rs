//! [`Lease`]: the handle of a held lease, a thin handle over its [`Holding`] (the state machine
//! in [`crate::holding`]: deadline, lost exactly once, events, release on drop).
//!
//! Owns what a holder sees and calls: the lease's identity (name, lease id, fencing token), its
//! counters and end, renew, proclaim (new metadata) and release, and what dropping the handle
//! does (stops renewal and releases the lease in the background; `Drop` never blocks).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{LostReason, Result};
pub use crate::holding::{EndHook, HolderCheck, LeaseEnd, LeaseEvent, LeaseEvents};
use crate::holding::{Holding, Renewer};
use crate::store::LeaseStore;

/// A held lease. Renewed in the background (unless auto-renew is off) until released, dropped
/// or lost.
#[derive(Debug)]
pub struct Lease {
    holding: Arc<Holding>,
    runtime: tokio::runtime::Handle,
    /// Keeps the client's renewal scheduler (which renews this lease) alive for as long as the
    /// handle, even if the client itself is dropped.
    _renewals: Arc<dyn Renewer>,
}

impl Lease {
    pub(crate) fn new(
        holding: Arc<Holding>,
        runtime: tokio::runtime::Handle,
        renewals: Arc<dyn Renewer>,
    ) -> Self {
        Self {
            holding,
            runtime,
            _renewals: renewals,
        }
    }

    /// The lease name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.holding.name
    }

    /// This holder's lease id (a UUID v4).
    #[must_use]
    pub fn lease_id(&self) -> &str {
        &self.holding.lease_id
    }

    /// The fencing token: strictly greater than that of every earlier holder of this name.
    #[must_use]
    pub fn fencing_token(&self) -> u64 {
        self.holding.fencing_token
    }

    /// Wall-clock time of acquisition (UTC), as stored.
    #[must_use]
    pub fn acquired_at(&self) -> DateTime<Utc> {
        self.holding.acquired_at
    }

    /// The lease duration (the server-side TTL set at each renewal).
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.holding.duration
    }

    /// Successful renewals so far.
    #[must_use]
    pub fn renewals(&self) -> u64 {
        self.holding.lock().renewals
    }

    /// Failed renewal attempts so far (each was retried until the deadline).
    #[must_use]
    pub fn renewal_failures(&self) -> u64 {
        self.holding.lock().renewal_failures
    }

    /// Local validity left: time until the deadline, zero once lost or released.
    #[must_use]
    pub fn expires_in(&self) -> Duration {
        self.holding.expires_in()
    }

    /// True once the lease is lost. A lease past its deadline counts as lost even if the
    /// renewal scheduler has not run yet (for example while the process was paused).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// Why the lease was lost, if it was.
    #[must_use]
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.holding.lost_reason()
    }

    /// How the lease ended, if it has.
    #[must_use]
    pub fn end(&self) -> Option<LeaseEnd> {
        let _ = self.holding.lost_reason();
        self.holding.lock().end
    }

    /// A future that resolves when the lease ends (lost or released). It does not borrow the
    /// handle, so it can be awaited elsewhere.
    pub fn ended(&self) -> impl Future<Output = LeaseEnd> + Send + 'static {
        self.holding.ended()
    }

    /// Calls `hook` once when the lease ends (lost or released), on the thread that ends it
    /// (a renewal's, or the releasing caller's), so it must be quick and must not block; at once
    /// if it has ended already. Cheaper than a task awaiting [`Self::ended`] for each lease.
    /// A lease dropped without ending (released in the background) never calls it.
    pub fn on_end(&self, hook: impl FnOnce(LeaseEnd) + Send + 'static) {
        self.holding.on_end(hook);
    }

    /// Sets the question asked at each renewal of this lease: can its holder
    /// still use it? Once `check` answers false (the holder is gone for good: say, the event
    /// loop that ran the holder's code was closed with that code still waiting), the lease is
    /// released instead of renewed and ends as released, rather than renewed for as long as
    /// the process lives. `check` runs on a blocking thread beside the renewals (never delaying
    /// one), once per renewal; only the first check set counts.
    pub fn set_holder_check(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.holding.set_holder_check(Box::new(check));
    }

    /// The lease's events from now on: renewals, renewal failures, and its end (lost or
    /// released), after which the stream ends. Opened after the end, it yields just the end.
    #[must_use]
    pub fn events(&self) -> LeaseEvents {
        self.holding.events()
    }

    /// Renews now, whatever the schedule.
    ///
    /// # Errors
    /// `Lost` if the lease is no longer held; backend errors (the lease stays held until its
    /// deadline and the background renewal keeps trying).
    pub async fn renew(&self) -> Result<()> {
        self.holding.renew_via(&*self.holding.store).await
    }

    /// [`Self::renew`] through `store`, which must reach the same leases as the one the lease
    /// was taken from (a caller-driven twin of it, see [`crate::LeaseClient::via`]).
    ///
    /// # Errors
    /// As [`Self::renew`].
    pub async fn renew_via(&self, store: &dyn LeaseStore) -> Result<()> {
        self.holding.renew_via(store).await
    }

    /// Replaces the lease's metadata in the store with `metadata`, as a whole (keys not given
    /// are gone), keeping its lease id, fencing token, acquisition time and expiry (it does not
    /// extend the lease); observers of the name are told. Owner-checked: a lease that is lost
    /// by its own clock (or past its deadline) is refused without any write, and one the store
    /// no longer has for this holder ends as lost (one loss event) and is refused too.
    ///
    /// # Errors
    /// `InvalidArgument` for metadata past the limits ([`crate::store::validate_metadata`]);
    /// `Lost` if the lease is no longer held (nothing was changed); backend errors (the stored
    /// metadata is then unknown: the old or the new).
    pub async fn proclaim(&self, metadata: &BTreeMap<String, String>) -> Result<()> {
        self.proclaim_via(&*self.holding.store, metadata).await
    }

    /// [`Self::proclaim`] through `store`, which must reach the same leases as the one the
    /// lease was taken from (a caller-driven twin of it, see [`crate::LeaseClient::via`]).
    ///
    /// # Errors
    /// As [`Self::proclaim`].
    pub async fn proclaim_via(
        &self,
        store: &dyn LeaseStore,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        crate::store::validate_metadata(metadata)?;
        self.holding.proclaim_via(store, metadata).await
    }

    /// Releases the lease: stops renewal and deletes it in the store if this holder still has it.
    /// Returns whether the store still had it. Calling it again returns `Ok(false)` at once.
    ///
    /// # Errors
    /// Backend errors (the lease then expires by itself after its duration).
    pub async fn release(&self) -> Result<bool> {
        self.holding.release_via(&*self.holding.store).await
    }

    /// [`Self::release`] through `store`, which must reach the same leases as the one the lease
    /// was taken from (a caller-driven twin of it, see [`crate::LeaseClient::via`]).
    ///
    /// # Errors
    /// As [`Self::release`].
    pub async fn release_via(&self, store: &dyn LeaseStore) -> Result<bool> {
        self.holding.release_via(store).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.holding.drop_handle(&self.runtime);
    }
}

/// Blocks the calling thread (not a runtime worker) until every background release of this
/// process was answered, or `limit` passed; returns how many were still pending. Process exit
/// calls it, so that a lease dropped just before the end is released rather than left to expire.
#[must_use]
pub fn wait_for_background_releases(limit: Duration) -> usize {
    crate::holding::wait_for_background_releases(limit)
}
