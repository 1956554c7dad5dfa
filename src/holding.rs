//! The holding state machine beneath every kind of holding (a lease today; a permit or an
//! election term are leases or holdings of the same shape): its identity (name, holder id,
//! fencing token), its local deadline and counters, its events, and its end.
//!
//! Owns: [`Holding`] (what a handle, the renewal scheduler and pending futures share), its one
//! renewal and its release through a store, lost exactly once ([`Holding::end`] is the one
//! place a holding ends), the hooks and event streams told of that end, the [`Renewer`] trait a
//! scheduler implements (so that this module never imports the scheduler), and the background
//! release of a holding nobody has a handle to any more.
//!
//! Invariants: the state moves `Held → Lost` or `Held → Released` once, under one mutex, and the
//! watch channel publishes that move to every waiter; a lost holding is never renewed again,
//! and a renewal answered after the deadline never brings it back.
//!
//! Events ([`LeaseEvent`]: renewed, renewal failed, lost, released) are broadcast to every
//! [`LeaseEvents`] stream, sent under the same mutex as the state change they report, so a
//! stream opened after the end still sees the end and a stream never misses it. The counters
//! and the process-wide [`crate::metrics`] move with them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::clock;
use crate::error::{LeaseError, LostReason, Result};
use crate::metrics;
use crate::store::{LeaseStore, ProclaimOutcome, ReleaseOutcome, RenewOutcome};

/// Events kept for a stream that has not read them yet; an older unread event is dropped.
const EVENT_BACKLOG: usize = 64;

/// Something that happened to a held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A renewal succeeded (background or explicit); `renewals` counts them so far.
    Renewed {
        /// Successful renewals so far, this one included.
        renewals: u64,
    },
    /// A background renewal failed.
    RenewalFailed {
        /// Failures in a row since the last success (1 for the first).
        attempt: u32,
        /// What went wrong (a message without secrets).
        error: String,
        /// Whether another attempt will be made before the lease's deadline.
        will_retry: bool,
    },
    /// The lease was lost (the last event of the stream).
    Lost {
        /// Why.
        reason: LostReason,
    },
    /// The lease was released by its holder (the last event of the stream).
    Released,
}

impl LeaseEvent {
    fn of_end(end: LeaseEnd) -> Self {
        match end {
            LeaseEnd::Lost(reason) => Self::Lost { reason },
            LeaseEnd::Released => Self::Released,
        }
    }

    /// Whether this event ends the lease (and its event stream).
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Lost { .. } | Self::Released)
    }
}

/// The events of one lease from the moment it was opened ([`Lease::events`]); ends after the
/// lease ends.
#[derive(Debug)]
pub struct LeaseEvents {
    rx: broadcast::Receiver<LeaseEvent>,
    /// The end, when the lease had ended before the stream was opened.
    ended: Option<LeaseEvent>,
    done: bool,
}

impl LeaseEvents {
    /// The next event, or `None` once the lease's end was delivered. A reader that falls more
    /// than 64 events behind skips the oldest ones (the end is always delivered).
    pub async fn next(&mut self) -> Option<LeaseEvent> {
        if self.done {
            return None;
        }
        if let Some(end) = self.ended.take() {
            self.done = true;
            return Some(end);
        }
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    self.done = event.is_final();
                    return Some(event);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Lost while held, for this reason.
    Lost(LostReason),
    /// Released by its holder (explicitly or by dropping the handle).
    Released,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) deadline: Instant,
    pub(crate) renewals: u64,
    pub(crate) renewal_failures: u64,
    pub(crate) end: Option<LeaseEnd>,
    /// Whether a release was already sent to the store (explicitly or on drop).
    pub(crate) release_sent: bool,
}

/// One holding: what its handle, the renewal scheduler and pending futures share.
#[derive(Debug)]
pub(crate) struct Holding {
    pub(crate) name: String,
    pub(crate) lease_id: String,
    pub(crate) fencing_token: u64,
    pub(crate) acquired_at: DateTime<Utc>,
    pub(crate) duration: Duration,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) state: Mutex<State>,
    pub(crate) ended: watch::Sender<Option<LeaseEnd>>,
    /// Created by the first [`Lease::events`] call: most leases are never watched, and a
    /// channel per lease would cost every acquisition an allocation of the whole backlog.
    pub(crate) events: OnceLock<broadcast::Sender<LeaseEvent>>,
    /// Its place in the client's renewal scheduler.
    pub(crate) registration: Registration,
    /// Called once when the lease ends (see [`Lease::on_end`]).
    pub(crate) end_hooks: EndHooks,
    /// Asked at each renewal whether the holder can still use the lease (see
    /// [`Lease::set_holder_check`]).
    pub(crate) holder_check: HolderCheckSlot,
}

/// Whether a lease's holder can still use it (see [`Lease::set_holder_check`]).
pub type HolderCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The [`HolderCheck`] of one lease, if one was set.
#[derive(Default)]
pub(crate) struct HolderCheckSlot(OnceLock<HolderCheck>);

impl std::fmt::Debug for HolderCheckSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HolderCheckSlot")
    }
}

/// A function called once with the end of a lease.
pub type EndHook = Box<dyn FnOnce(LeaseEnd) + Send>;

/// The [`EndHook`]s of one lease, registered under its state lock (so that none is missed by an
/// end happening meanwhile) and called outside it.
#[derive(Default)]
pub(crate) struct EndHooks(Mutex<Vec<EndHook>>);

impl std::fmt::Debug for EndHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndHooks")
    }
}

impl EndHooks {
    fn lock(&self) -> MutexGuard<'_, Vec<EndHook>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Holding {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (every update is a
        // plain field store), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the lease if it is still held; returns whether this call ended it. This is the one
    /// place a lease ends, which is what makes "lost exactly once" hold.
    pub(crate) fn end(&self, end: LeaseEnd) -> bool {
        {
            let mut st = self.lock();
            if st.end.is_some() {
                return false;
            }
            st.end = Some(end);
            // Under the lock: a stream opened later sees `st.end` instead (see `events`).
            self.emit(LeaseEvent::of_end(end));
        }
        // Outside the state lock: the scheduler takes its own lock.
        self.registration.cancel();
        metrics::ACTIVE_LEASES.add(-1);
        match end {
            LeaseEnd::Lost(reason) => {
                metrics::LEASES_LOST.add(1);
                tracing::warn!(lease = %self.name, fencing_token = self.fencing_token, reason = reason.as_str(), outcome = "lost", "lease lost: {reason}");
            }
            LeaseEnd::Released => metrics::RELEASES.add(1),
        }
        self.ended.send_replace(Some(end));
        let hooks = std::mem::take(&mut *self.end_hooks.lock());
        for hook in hooks {
            hook(end);
        }
        true
    }

    /// Sends an event to the lease's streams, if anyone ever opened one. Call with the state
    /// lock held, so that events and state changes are seen in the same order.
    fn emit(&self, event: LeaseEvent) {
        if let Some(tx) = self.events.get() {
            let _ = tx.send(event);
        }
    }

    /// Ends the lease as lost because a renewal (or its deadline) said so, unless the holder is
    /// letting go of it: then the release's own answer decides how it ended.
    pub(crate) fn renewal_lost(&self, reason: LostReason) -> bool {
        if self.lock().release_sent {
            return false;
        }
        self.end(LeaseEnd::Lost(reason))
    }

    /// Whether a [`HolderCheck`] was set.
    pub(crate) fn has_holder_check(&self) -> bool {
        self.holder_check.0.get().is_some()
    }

    /// Whether the holder can no longer use the lease, as its [`HolderCheck`] says.
    pub(crate) fn holder_gone(&self) -> bool {
        self.holder_check.0.get().is_some_and(|check| !check())
    }

    /// Marks the release as sent; returns false if it already was (release runs once).
    pub(crate) fn take_release(&self) -> bool {
        let mut st = self.lock();
        !std::mem::replace(&mut st.release_sent, true)
    }

    /// Records a renewal that was sent at `t_sent` and succeeded.
    /// Records a successful renewal sent at `t_sent`; returns false when it came too late: the
    /// lease has ended meanwhile, or its deadline passed before the answer came, so it was lost
    /// (and may have been seen as lost) and stays so, ended now as expired. A loss is never
    /// taken back.
    pub(crate) fn renewed(&self, t_sent: Instant) -> bool {
        let mut st = self.lock();
        if st.end.is_some() {
            return false;
        }
        if Instant::now() >= st.deadline {
            drop(st);
            self.end(LeaseEnd::Lost(LostReason::Expired));
            return false;
        }
        // Not once the holder is letting go: the lease is no longer relied on.
        if !st.release_sent {
            st.deadline = st.deadline.max(clock::deadline(t_sent, self.duration));
            st.renewals += 1;
            metrics::RENEWALS.add(1);
            self.emit(LeaseEvent::Renewed {
                renewals: st.renewals,
            });
        }
        true
    }

    /// Records a failed background renewal: the `attempt`-th in a row.
    pub(crate) fn renewal_failed(&self, attempt: u32, error: &LeaseError, will_retry: bool) {
        let mut st = self.lock();
        st.renewal_failures += 1;
        metrics::RENEWAL_FAILURES.add(1);
        if st.end.is_none() {
            self.emit(LeaseEvent::RenewalFailed {
                attempt,
                error: error.to_string(),
                will_retry,
            });
        }
    }

    /// One renewal round trip; moves the deadline on success, ends the lease when the store says
    /// it is gone.
    pub(crate) async fn renew_once(&self, store: &dyn LeaseStore) -> Result<()> {
        let end = self.lock().end;
        if end.is_some() {
            return Err(self.ended_error(reason_of(end)));
        }
        let t_sent = Instant::now();
        match store
            .renew(&self.name, &self.lease_id, self.duration)
            .await?
        {
            RenewOutcome::Renewed if self.renewed(t_sent) => Ok(()),
            RenewOutcome::Renewed => Err(self.ended_error(reason_of(self.lock().end))),
            RenewOutcome::Lost(reason) => {
                self.renewal_lost(reason);
                Err(self.ended_error(reason))
            }
        }
    }

    /// A new holding, just acquired: `t_sent` is when its acquire was sent (the start of its
    /// local deadline), `registration` its place in the scheduler that will renew it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: &str,
        lease_id: String,
        fencing_token: u64,
        acquired_at: DateTime<Utc>,
        duration: Duration,
        t_sent: Instant,
        store: Arc<dyn LeaseStore>,
        registration: Registration,
    ) -> Self {
        let (ended, _) = watch::channel(None);
        Self {
            name: name.to_owned(),
            lease_id,
            fencing_token,
            acquired_at,
            duration,
            store,
            state: Mutex::new(State {
                deadline: clock::deadline(t_sent, duration),
                renewals: 0,
                renewal_failures: 0,
                end: None,
                release_sent: false,
            }),
            ended,
            events: OnceLock::new(),
            registration,
            end_hooks: EndHooks::default(),
            holder_check: HolderCheckSlot::default(),
        }
    }

    /// Local validity left: time until the deadline, zero once ended.
    pub(crate) fn expires_in(&self) -> Duration {
        let st = self.lock();
        if st.end.is_some() {
            return Duration::ZERO;
        }
        st.deadline.saturating_duration_since(Instant::now())
    }

    /// Why the holding was lost, if it was. One past its deadline is lost (expired) even if
    /// the renewal scheduler has not run yet (for example while the process was paused): it
    /// ends so here.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        let passed = {
            let st = self.lock();
            match st.end {
                Some(LeaseEnd::Lost(r)) => return Some(r),
                Some(LeaseEnd::Released) => return None,
                None => Instant::now() >= st.deadline,
            }
        };
        if passed {
            self.end(LeaseEnd::Lost(LostReason::Expired));
            if let Some(LeaseEnd::Lost(r)) = self.lock().end {
                return Some(r);
            }
        }
        None
    }

    /// A future that resolves when the holding ends; it keeps nothing alive.
    pub(crate) fn ended(&self) -> impl Future<Output = LeaseEnd> + Send + 'static {
        let mut rx = self.ended.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(v) => v.unwrap_or(LeaseEnd::Released),
                // The sender lives in `Holding`, which this future does not keep alive; if it
                // is gone the handle was dropped, which releases it.
                Err(_) => LeaseEnd::Released,
            }
        }
    }

    /// Calls `hook` once at the end (at once if it has ended already).
    pub(crate) fn on_end(&self, hook: impl FnOnce(LeaseEnd) + Send + 'static) {
        let st = self.lock();
        match st.end {
            Some(end) => {
                drop(st);
                hook(end);
            }
            // Pushed while the state lock is held: `Holding::end` sets the end under that lock
            // before taking the hooks, so this one is either seen there or sees the end here.
            None => self.end_hooks.lock().push(Box::new(hook)),
        }
    }

    /// Sets the holder check (only the first one counts).
    pub(crate) fn set_holder_check(&self, check: HolderCheck) {
        let _ = self.holder_check.0.set(check);
    }

    /// A stream of the events from now on (just the end, once ended).
    pub(crate) fn events(&self) -> LeaseEvents {
        let st = self.lock();
        LeaseEvents {
            rx: self
                .events
                .get_or_init(|| broadcast::Sender::new(EVENT_BACKLOG))
                .subscribe(),
            ended: st.end.map(LeaseEvent::of_end),
            done: false,
        }
    }

    /// One renewal by the holder through `store` (the one it was taken from, or a twin).
    pub(crate) async fn renew_via(&self, store: &dyn LeaseStore) -> Result<()> {
        if let Some(reason) = self.lost_reason() {
            return Err(self.ended_error(reason));
        }
        self.renew_once(store).await
    }

    /// The holder's proclaim through `store`: replaces the lease's metadata as a whole. A lease
    /// that is lost by its own clock (ended, or past its deadline) is refused here, with no
    /// write; a proclaim the store refuses ends the holding as lost (once, as a renewal that
    /// finds the lease gone does).
    pub(crate) async fn proclaim_via(
        &self,
        store: &dyn LeaseStore,
        metadata: &BTreeMap<String, String>,
    ) -> Result<()> {
        if let Some(reason) = self.lost_reason() {
            return Err(self.ended_error(reason));
        }
        let end = self.lock().end;
        if end.is_some() {
            // Released (or being let go): not ours to proclaim with.
            return Err(self.ended_error(reason_of(end)));
        }
        match store.proclaim(&self.name, &self.lease_id, metadata).await? {
            ProclaimOutcome::Proclaimed => {
                tracing::debug!(lease = %self.name, fencing_token = self.fencing_token, outcome = "proclaimed", "lease metadata proclaimed");
                Ok(())
            }
            ProclaimOutcome::Lost(reason) => {
                self.renewal_lost(reason);
                Err(self.ended_error(reason))
            }
        }
    }

    /// The holder's release through `store`: stops the renewals, then the owner-checked delete,
    /// once; returns whether the store still had it.
    pub(crate) async fn release_via(&self, store: &dyn LeaseStore) -> Result<bool> {
        // Stops the renewals first, so that none can be sent after the delete (and a reply of
        // one already on its way cannot end the holding as lost while we let go of it).
        if !self.take_release() {
            return Ok(false);
        }
        self.registration.stop_renewing();
        // A lost lease may still be ours on the server (its deadline passed during a
        // partition): the owner-checked delete is sent once all the same, and is harmless.
        let outcome = store
            .release(&self.name, &self.lease_id)
            .await
            .inspect_err(|e| {
                // Unknown whether it was still ours: the handle does not say "released". It
                // stays held (not renewed) until its deadline, when it ends as lost (expired),
                // and release() may be called again meanwhile.
                self.lock().release_sent = false;
                tracing::warn!(lease = %self.name, outcome = "error", error = %e, "lease release failed; it will expire by itself");
            })?;
        match outcome {
            ReleaseOutcome::Released => {
                self.end(LeaseEnd::Released);
                tracing::debug!(lease = %self.name, fencing_token = self.fencing_token, outcome = "released", "lease released");
                Ok(true)
            }
            ReleaseOutcome::Lost(reason) => {
                // Not ours when we let go: whatever ran under it since the loss was not
                // protected. The handle says so (lost, with the reason), never "released".
                self.end(LeaseEnd::Lost(reason));
                tracing::debug!(lease = %self.name, fencing_token = self.fencing_token, outcome = "not_held", reason = reason.as_str(), "lease was no longer held at release");
                Ok(false)
            }
        }
    }

    /// What dropping the handle does: counted as its client's outstanding work before it leaves
    /// the client's scheduler (`end`), so that a close() at this very moment, which finds it
    /// neither among its holdings nor released, still waits for the release; then ends it
    /// (released) and releases it in the background on `runtime`.
    pub(crate) fn drop_handle(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let work = self.registration.track();
        self.end(LeaseEnd::Released);
        if self.take_release() {
            release_in_background(Arc::clone(self), runtime, work);
        }
    }

    fn ended_error(&self, reason: LostReason) -> LeaseError {
        LeaseError::Lost {
            name: self.name.clone(),
            reason,
        }
    }
}

fn reason_of(end: Option<LeaseEnd>) -> LostReason {
    match end {
        Some(LeaseEnd::Lost(r)) => r,
        // A released lease is gone from the store as far as its holder is concerned.
        _ => LostReason::Missing,
    }
}

/// What a lease needs of the scheduler that renews it (`crate::renewal`, which implements it):
/// a trait, so that the holding state here does not import the scheduler that imports it.
pub(crate) trait Renewer: Send + Sync + std::fmt::Debug {
    /// Stops renewing lease `id` but keeps its deadline timer (a release is on its way).
    fn stop_renewing(&self, id: u64);
    /// Forgets lease `id` (it ended): its timers are dropped.
    fn forget(&self, id: u64);
    /// Counts a piece of work as outstanding work of the scheduler's client, until the guard
    /// returned is dropped (its `close()` waits for it).
    fn track(self: Arc<Self>) -> Work;
}

/// A guard of outstanding work (see [`Renewer::track`]).
pub(crate) type Work = Box<dyn Send>;

/// A lease's place in its scheduler, kept by the lease so that its end removes it.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    renewer: Option<Weak<dyn Renewer>>,
    id: u64,
}

impl Registration {
    pub(crate) fn new(renewer: &Arc<dyn Renewer>, id: u64) -> Self {
        Self {
            renewer: Some(Arc::downgrade(renewer)),
            id,
        }
    }

    /// The lease's key in its scheduler.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn renewer(&self) -> Option<Arc<dyn Renewer>> {
        self.renewer.as_ref()?.upgrade()
    }

    /// Stops renewing the lease but keeps its deadline timer: a release is on its way, and if
    /// it fails, the lease still ends (lost, expired) at its deadline.
    pub(crate) fn stop_renewing(&self) {
        if let Some(r) = self.renewer() {
            r.stop_renewing(self.id);
        }
    }

    /// Counts work done for this lease (its background release) as outstanding work of its
    /// client, if the client's scheduler still exists.
    pub(crate) fn track(&self) -> Option<Work> {
        Some(self.renewer()?.track())
    }

    /// Forgets the lease (it ended): its timers are dropped, nothing more is sent for it.
    pub(crate) fn cancel(&self) {
        if let Some(r) = self.renewer() {
            r.forget(self.id);
        }
    }
}

/// Releases `holding` on `runtime` without blocking (its handle is gone, or its client closed),
/// counted as outstanding work of its client by `work` (so that closing the client waits for
/// it) and in the process-wide count that process exit waits for. Take `work`
/// ([`Registration::track`]) before the lease leaves its scheduler (before `Holding::end`): a
/// close in between would find neither the lease nor the work, and close the store under the
/// release.
pub(crate) fn release_in_background(
    holding: Arc<Holding>,
    runtime: &tokio::runtime::Handle,
    work: Option<Work>,
) {
    // Counted from now, not from the task's first poll: process exit must not miss it.
    let pending = PendingRelease::new();
    // Spawning never blocks; if the runtime is shutting down the task is dropped and the
    // lease expires by itself.
    runtime.spawn(async move {
        background_release(holding).await;
        drop((work, pending));
    });
}

/// Releases a lease nobody holds a handle to any more (dropped, or its client closed), counted
/// in [`PENDING_RELEASES`] until the store answered, so that process exit can wait for it.
pub(crate) async fn background_release(holding: Arc<Holding>) {
    let _pending = PendingRelease::new();
    match holding
        .store
        .release(&holding.name, &holding.lease_id)
        .await
    {
        Ok(ReleaseOutcome::Released) => {}
        Ok(ReleaseOutcome::Lost(reason)) => {
            tracing::warn!(lease = %holding.name, reason = reason.as_str(), "a lease released in the background was no longer held: {reason}");
        }
        Err(e) => {
            tracing::warn!(lease = %holding.name, error = %e, "background release of a lease failed; it will expire by itself");
        }
    }
}

/// Background releases not yet answered, process-wide (see [`wait_for_background_releases`]).
static PENDING_RELEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) struct PendingRelease;

impl PendingRelease {
    pub(crate) fn new() -> Self {
        PENDING_RELEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self
    }
}

impl Drop for PendingRelease {
    fn drop(&mut self) {
        PENDING_RELEASES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Blocks the calling thread (not a runtime worker) until every background release of this
/// process was answered, or `limit` passed; returns how many were still pending. Process exit
/// calls it, so that a lease dropped just before the end is released rather than left to expire.
#[must_use]
pub(crate) fn wait_for_background_releases(limit: Duration) -> usize {
    let until = std::time::Instant::now() + limit;
    loop {
        let pending = PENDING_RELEASES.load(std::sync::atomic::Ordering::SeqCst);
        if pending == 0 || std::time::Instant::now() >= until {
            return pending;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
