//! Renewal: one scheduler per client renews every lease of that client, in batches, and ends a
//! lease at its deadline.
//!
//! Each held lease has a deadline timer and, with auto-renew on, a renewal timer (first at
//! `t_sent + interval`, then `interval` after each successful request was *sent*). One task
//! per client sleeps until the earliest timer; when it wakes it takes every renewal due within
//! [`BATCH_WINDOW`] (renewing a little early is harmless) and hands them to the store as one
//! batch (`LeaseStore::renew_many`: one script per few hundred leases on a Redis server,
//! pipelined requests on a cluster), so 100,000 leases cost a few round trips per second, not
//! 100,000 tasks. A failed renewal is retried with exponential backoff and jitter until the
//! deadline. At the deadline, or as soon as the store answers that another lease id holds the
//! name or that it is gone, the lease is lost, once (`Holding::end`).
//!
//! Registering a lease never wakes the task unless the lease is due before the task's next
//! wake-up, and the task wakes at least every [`MAX_SLEEP`] while it has leases (and lingers
//! for [`IDLE_LINGER`] after the last one), so acquiring a lease costs no thread wake-up.
//! Between wake-ups the task holds its scheduler only weakly: the client and the lease handles
//! keep it alive (a handle keeps renewing after its client was dropped), so a dropped client
//! without leases is freed, and its store's connections closed, at once rather than after the
//! linger. A closed scheduler's task ends.
//!
//! Closing ([`Scheduler::close`]) leaves nothing held by nobody: besides releasing the leases it
//! renews, it waits (up to the client's operation timeout and a second) for the client's work
//! still under way, counted by [`Outstanding`] guards: acquires on the wire (one that wins after
//! the close finds the scheduler closed and gives its lease back) and background releases of
//! handles dropped just before. Only then may the client close its store.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};

use crate::backoff::Backoff;
use crate::error::{LeaseError, LostReason};
use crate::holding::{
    background_release, release_in_background, Holding, LeaseEnd, Registration, Renewer, Work,
};
use crate::store::{LeaseStore, RenewItem, RenewOutcome};

/// Retries of a failed renewal: 50 ms doubling to 2 s, each drawn between half and all of its
/// value so that many leases failing at once spread out.
const RETRY: Backoff =
    Backoff::doubling(Duration::from_millis(50), Duration::from_secs(2)).with_jitter();
/// Renewals due this soon are sent with the batch being sent now (at most a quarter of each
/// lease's own interval early).
const BATCH_WINDOW: Duration = Duration::from_millis(250);
/// The task never sleeps longer than this while it has (or recently had) leases.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long the task stays after its last lease ended, so that the next lease finds it awake.
const IDLE_LINGER: Duration = Duration::from_secs(60);

/// The renewal scheduler of one client. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn LeaseStore>,
    state: Mutex<Timers>,
    /// Holding with the task, which may outlive `Inner` by a wake-up.
    wake: Arc<Notify>,
    next_id: AtomicU64,
    /// Live [`Outstanding`] guards (acquires on the wire and background releases), with
    /// [`CLOSED`] set once the scheduler is closed: one atomic, so that counting an acquire
    /// costs no lock, and refusing one once closed is exact (see [`Scheduler::begin_acquire`]).
    outstanding: AtomicUsize,
    /// Notified when the last [`Outstanding`] guard of a closed scheduler goes (see
    /// [`Scheduler::close`]).
    settled: Notify,
    /// The longest [`Scheduler::close`] waits for outstanding work.
    settle_limit: Duration,
    /// Becomes `true` when the scheduler is closed: waiting acquires give up at once.
    closed_tx: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Timers {
    renew: BTreeSet<(Instant, u64)>,
    deadline: BTreeSet<(Instant, u64)>,
    entries: HashMap<u64, Entry>,
    /// When the task will next wake by itself; `None` while it is not running.
    planned: Option<Instant>,
    idle_since: Option<Instant>,
    /// Set by [`Scheduler::close`]: a lease registered afterwards is released at once.
    closed: bool,
}

/// A piece of the client's work under way that [`Scheduler::close`] waits for before the
/// store closes: an acquire on the wire, or a background release. Counted while it lives.
#[derive(Debug)]
pub(crate) struct Outstanding {
    inner: Arc<Inner>,
}

/// The bit of [`Inner::outstanding`] that says the scheduler is closed.
const CLOSED: usize = 1 << (usize::BITS - 1);

impl Outstanding {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.outstanding.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: Arc::clone(inner),
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        // The last guard of a closed scheduler wakes its close(); before the close, nobody
        // waits (close() reads the count after setting CLOSED, see `Scheduler::settled`).
        if self.inner.outstanding.fetch_sub(1, Ordering::SeqCst) == CLOSED | 1 {
            self.inner.settled.notify_waiters();
        }
    }
}

#[derive(Debug)]
struct Entry {
    holding: Arc<Holding>,
    interval: Option<Duration>,
    /// The key of its renewal timer; `None` while a renewal is in flight (or without renewal).
    renew_at: Option<Instant>,
    deadline_at: Instant,
    /// Consecutive failed renewals: the place in [`RETRY`].
    failures: u32,
}

impl Renewer for Inner {
    fn stop_renewing(&self, id: u64) {
        let mut t = lock(&self.state);
        if let Some(e) = t.entries.get_mut(&id) {
            e.interval = None;
            if let Some(at) = e.renew_at.take() {
                t.renew.remove(&(at, id));
            }
        }
    }

    fn forget(&self, id: u64) {
        let mut t = lock(&self.state);
        if let Some(e) = t.entries.remove(&id) {
            if let Some(at) = e.renew_at {
                t.renew.remove(&(at, id));
            }
            t.deadline.remove(&(e.deadline_at, id));
        }
    }

    fn track(self: Arc<Self>) -> Work {
        Box::new(Outstanding::new(&self))
    }
}

fn lock(m: &Mutex<Timers>) -> MutexGuard<'_, Timers> {
    // Every update is a handful of collection operations that cannot panic half-way.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every scheduler of this process, with the pid that made it, so that [`close_all`] can
/// release what the process still holds when it exits. A forked child inherits the parent's
/// list; the pid keeps it from ever releasing its parent's leases.
static ALL: Mutex<Vec<(u32, Weak<Inner>)>> = Mutex::new(Vec::new());

/// Closes every scheduler this process made (see [`Scheduler::close`]): its leases are
/// released, owner-checked. For process exit: a lease still held then would otherwise be left
/// to expire, blocking everyone else for its whole duration.
pub async fn close_all() {
    let pid = std::process::id();
    let live: Vec<Arc<Inner>> = {
        let mut all = ALL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|(_, w)| w.strong_count() > 0);
        all.iter()
            .filter(|(p, _)| *p == pid)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    };
    futures_util::future::join_all(
        live.into_iter()
            .map(|inner| async move { Scheduler { inner }.close().await }),
    )
    .await;
}

impl Scheduler {
    /// A scheduler renewing leases of `store`; [`Self::close`] waits up to `settle_limit` for
    /// the work still under way (an operation's timeout and a margin is right).
    pub(crate) fn new(store: Arc<dyn LeaseStore>, settle_limit: Duration) -> Self {
        let inner = Arc::new(Inner {
            store,
            state: Mutex::new(Timers::default()),
            wake: Arc::new(Notify::new()),
            next_id: AtomicU64::new(1),
            outstanding: AtomicUsize::new(0),
            settled: Notify::new(),
            settle_limit,
            closed_tx: watch::Sender::new(false),
        });
        let mut all = ALL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() >= 64 && all.len().is_power_of_two() {
            all.retain(|(_, w)| w.strong_count() > 0);
        }
        all.push((std::process::id(), Arc::downgrade(&inner)));
        Self { inner }
    }

    /// A registration slot for a lease about to be built.
    pub(crate) fn reserve(&self) -> Registration {
        let renewer: Arc<dyn Renewer> = self.inner.clone();
        Registration::new(&renewer, self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// What keeps this scheduler alive for as long as a lease handle lives.
    pub(crate) fn renewer(&self) -> Arc<dyn Renewer> {
        self.inner.clone()
    }

    /// Starts watching `holding` (acquired by a request sent at `t_sent`), renewing it every
    /// `interval` if one is given. The scheduler's task, if it has to be started, goes to
    /// `runtime`. Returns false when the scheduler was closed meanwhile: the lease then ended
    /// as lost (`ClientClosed`) and is given back in the background.
    pub(crate) fn register(
        &self,
        holding: &Arc<Holding>,
        interval: Option<Duration>,
        t_sent: Instant,
        runtime: &tokio::runtime::Handle,
    ) -> bool {
        let id = holding.registration.id();
        let deadline_at = holding.lock().deadline;
        let renew_at = interval.map(|i| t_sent + i);
        let first = renew_at.map_or(deadline_at, |r| r.min(deadline_at));
        let mut t = lock(&self.inner.state);
        if holding.lock().end.is_some() {
            return true;
        }
        if t.closed {
            drop(t);
            // The client was closed while this acquire was on the wire: not ours to keep. The
            // acquire is still counted as outstanding, and so is this release from before the
            // acquire's count ends, so `close` waits for it.
            if holding.take_release() {
                let work = holding.registration.track();
                holding.end(LeaseEnd::Lost(LostReason::ClientClosed));
                release_in_background(Arc::clone(holding), runtime, work);
            }
            return false;
        }
        t.entries.insert(
            id,
            Entry {
                holding: Arc::clone(holding),
                interval,
                renew_at,
                deadline_at,
                failures: 0,
            },
        );
        if let Some(at) = renew_at {
            t.renew.insert((at, id));
        }
        t.deadline.insert((deadline_at, id));
        t.idle_since = None;
        match t.planned {
            None => {
                t.planned = Some(first);
                drop(t);
                runtime.spawn(run(Arc::clone(&self.inner)));
            }
            Some(planned) if first < planned => {
                t.planned = Some(first);
                drop(t);
                self.inner.wake.notify_one();
            }
            Some(_) => {}
        }
        true
    }
}

impl Scheduler {
    /// Whether [`Self::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.outstanding.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// Counts an acquire about to be sent as outstanding work; `None` once closed (no acquire
    /// may start then). Checked and counted under one lock, so that [`Self::close`] either
    /// refuses it or waits for it.
    pub(crate) fn begin_acquire(&self) -> Option<Outstanding> {
        // Counted first, then checked: a close() that set CLOSED before this count refuses it
        // (the guard is dropped at once); one that sets it after waits for it.
        let work = Outstanding::new(&self.inner);
        if self.inner.outstanding.load(Ordering::SeqCst) & CLOSED != 0 {
            return None;
        }
        Some(work)
    }

    /// Counts a piece of work (a request on the wire, a release) as outstanding.
    pub(crate) fn track(&self) -> Outstanding {
        Outstanding::new(&self.inner)
    }

    /// Resolves once [`Self::close`] was called.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closed_tx.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }

    /// Stops renewing every lease of this client and releases them (owner-checked), each
    /// handle ending as lost with [`LostReason::ClientClosed`] (its holder no longer holds it:
    /// with `on_lost="cancel"` its body is cancelled). Returns once every release was answered
    /// or failed, and the client's outstanding work (acquires on the wire, background releases
    /// of dropped handles) has ended, or the settle limit passed; a lease registered later is
    /// released at once.
    pub(crate) async fn close(&self) {
        let leases: Vec<Arc<Holding>> = {
            let mut t = lock(&self.inner.state);
            t.closed = true;
            self.inner.outstanding.fetch_or(CLOSED, Ordering::SeqCst);
            t.renew.clear();
            t.deadline.clear();
            t.entries.drain().map(|(_, e)| e.holding).collect()
        };
        self.inner.closed_tx.send_replace(true);
        self.inner.wake.notify_one();
        let releases = leases.into_iter().filter_map(|holding| {
            if !holding.take_release() {
                return None;
            }
            holding.end(LeaseEnd::Lost(LostReason::ClientClosed));
            Some(background_release(holding))
        });
        futures_util::future::join_all(releases).await;
        if tokio::time::timeout(self.inner.settle_limit, self.settled())
            .await
            .is_err()
        {
            tracing::warn!(
                "closing the client: an acquire or a release still had no answer after {:.1}s; a lease it holds on the server expires by itself",
                self.inner.settle_limit.as_secs_f64()
            );
        }
    }

    /// Resolves when no [`Outstanding`] work is left.
    async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the count is read: a last guard dropped in between wakes it.
            notified.as_mut().enable();
            if self.inner.outstanding.load(Ordering::SeqCst) & !CLOSED == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What one wake-up of the task found to do.
#[derive(Default)]
struct Due {
    renew: Vec<(u64, Arc<Holding>)>,
    /// Leases past their deadline, with the number of the renewal attempt that was still in
    /// flight, if one was (it failed: it did not complete in time).
    expired: Vec<(Arc<Holding>, Option<u32>)>,
    /// `None`: the task has nothing left and has been idle long enough: it stops.
    next: Option<Instant>,
}

fn collect(inner: &Inner, now: Instant) -> Due {
    let mut due = Due::default();
    let mut t = lock(&inner.state);
    while let Some(&(at, id)) = t.deadline.first() {
        if at > now {
            break;
        }
        t.deadline.pop_first();
        let Some(entry) = t.entries.get_mut(&id) else {
            continue;
        };
        // A manual renewal may have moved the deadline since the timer was set.
        let actual = entry.holding.lock().deadline;
        if actual > now {
            entry.deadline_at = actual;
            t.deadline.insert((actual, id));
        } else {
            let entry = t.entries.remove(&id).expect("present");
            if let Some(r) = entry.renew_at {
                t.renew.remove(&(r, id));
            }
            let in_flight = (entry.interval.is_some() && entry.renew_at.is_none())
                .then(|| entry.failures.saturating_add(1));
            due.expired.push((entry.holding, in_flight));
        }
    }
    // Renewals due within the window go out with this batch; each lease's own window is at
    // most a quarter of its interval, so a short interval is never renewed early by much.
    let horizon = now + BATCH_WINDOW;
    let candidates: Vec<(Instant, u64)> = t.renew.range(..=(horizon, u64::MAX)).copied().collect();
    for (at, id) in candidates {
        let Some(entry) = t.entries.get_mut(&id) else {
            t.renew.remove(&(at, id));
            continue;
        };
        // A retry after a failure goes at its own time, never early: its delay is the
        // backoff, and whether it comes before the deadline is what `will_retry` promised.
        let window = match entry.interval {
            Some(i) if entry.failures == 0 => (i / 4).min(BATCH_WINDOW),
            _ => Duration::ZERO,
        };
        if at > now + window {
            continue;
        }
        entry.renew_at = None;
        due.renew.push((id, Arc::clone(&entry.holding)));
        t.renew.remove(&(at, id));
    }
    if t.closed {
        // Nothing is renewed any more: the task ends.
        t.planned = None;
        return due;
    }
    if t.entries.is_empty() {
        let idle_since = *t.idle_since.get_or_insert(now);
        if now.duration_since(idle_since) >= IDLE_LINGER {
            t.planned = None;
            return due;
        }
    }
    let next = [t.renew.first(), t.deadline.first()]
        .into_iter()
        .flatten()
        .map(|&(at, _)| at)
        .min()
        .map_or(now + MAX_SLEEP, |at| at.min(now + MAX_SLEEP));
    t.planned = Some(next);
    due.next = Some(next);
    due
}

async fn run(inner: Arc<Inner>) {
    let wake = Arc::clone(&inner.wake);
    let weak = Arc::downgrade(&inner);
    drop(inner);
    loop {
        // Held only while awake (see the module docs).
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let due = collect(&inner, Instant::now());
        for (holding, in_flight) in due.expired {
            if let Some(attempt) = in_flight {
                let e = LeaseError::backend(
                    crate::error::BackendErrorKind::Timeout,
                    "the renewal did not complete before the lease's deadline",
                );
                holding.renewal_failed(attempt, &e, false);
                tracing::warn!(lease = %holding.name, outcome = "failed", attempt, will_retry = false, error = %e, "lease renewal failed at the deadline");
            }
            // Also while a release is on its way: a lease past its deadline may have expired
            // on the server, so a release answered later cannot show it was still ours.
            holding.end(LeaseEnd::Lost(LostReason::Expired));
        }
        check_holders(&due.renew);
        if !due.renew.is_empty() {
            tokio::spawn(renew_batch(Arc::clone(&inner), due.renew));
        }
        let Some(next) = due.next else { return };
        drop(inner);
        tokio::select! {
            () = sleep_until(next) => {}
            () = wake.notified() => {}
        }
    }
}

/// Asks the holder checks of the leases about to be renewed (see
/// [`crate::Lease::set_holder_check`]) and releases those whose holder is gone for good. On a
/// blocking thread, beside the renewals rather than before them: a check may wait (for Python's
/// GIL, say), and a renewal must never wait for it, or a busy holder process could lose its
/// leases. A renewal sent meanwhile is harmless: the release follows, and an owner-checked
/// renewal never brings a released lease back.
fn check_holders(due: &[(u64, Arc<Holding>)]) {
    let checked: Vec<Arc<Holding>> = due
        .iter()
        .filter(|(_, s)| s.has_holder_check())
        .map(|(_, s)| Arc::clone(s))
        .collect();
    if checked.is_empty() {
        return;
    }
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        for holding in checked {
            if !holding.holder_gone() {
                continue;
            }
            // Counted before the release is claimed: a close() that finds the release claimed
            // (and so leaves it to us) must find this work too.
            let work = holding.registration.track();
            if holding.take_release() {
                tracing::warn!(lease = %holding.name, "the lease's holder can no longer use it (its event loop was closed); releasing it instead of renewing it");
                holding.end(LeaseEnd::Released);
                release_in_background(holding, &runtime, work);
            }
        }
    });
}

/// Most renewals one request carries (one Lua script on a Redis server).
const BATCH_CHUNK: usize = 256;

async fn renew_batch(inner: Arc<Inner>, batch: Vec<(u64, Arc<Holding>)>) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let t_sent = Instant::now();
    // Each result is handled as soon as it arrives: a slow reply for one lease must not hold
    // back the credit of the others (their deadlines would pass although the store renewed
    // them). A store that renews a chunk in one request answers the chunk at once; any other
    // store's renewals are sent one by one (pipelined on a multiplexed connection).
    let chunk = if inner.store.renews_in_one_request() {
        BATCH_CHUNK
    } else {
        1
    };
    let mut pending: FuturesUnordered<_> = batch
        .chunks(chunk)
        .map(|part| {
            let inner = &inner;
            async move {
                let items: Vec<RenewItem<'_>> = part
                    .iter()
                    .map(|(_, s)| RenewItem {
                        name: &s.name,
                        lease_id: &s.lease_id,
                        duration: s.duration,
                    })
                    .collect();
                let results = if let [one] = items.as_slice() {
                    vec![
                        inner
                            .store
                            .renew(one.name, one.lease_id, one.duration)
                            .await,
                    ]
                } else {
                    inner.store.renew_many(&items).await
                };
                (part, results)
            }
        })
        .collect();
    while let Some((part, results)) = pending.next().await {
        for ((id, holding), result) in part.iter().zip(results) {
            match result {
                Ok(RenewOutcome::Renewed) => {
                    // Too late (past the deadline) ends the lease, which cancels its timers.
                    if holding.renewed(t_sent) {
                        tracing::debug!(lease = %holding.name, outcome = "renewed", "lease renewed");
                        reschedule(&inner, *id, holding, Ok(t_sent));
                    }
                }
                Ok(RenewOutcome::Lost(reason)) => {
                    holding.renewal_lost(reason);
                }
                Err(e) => reschedule(&inner, *id, holding, Err(e)),
            }
        }
    }
}

/// Sets the next renewal of entry `id` after a success (sent at `t_sent`) or a failure.
fn reschedule(inner: &Inner, id: u64, holding: &Holding, outcome: Result<Instant, LeaseError>) {
    let mut t = lock(&inner.state);
    let Some(entry) = t.entries.get_mut(&id) else {
        return;
    };
    let Some(interval) = entry.interval else {
        return;
    };
    let at = match outcome {
        Ok(t_sent) => {
            entry.failures = 0;
            t_sent + interval
        }
        Err(e) => {
            let delay = RETRY.delay(entry.failures);
            entry.failures = entry.failures.saturating_add(1);
            let at = Instant::now() + delay;
            let will_retry = at < entry.deadline_at.max(holding.lock().deadline);
            let attempt = entry.failures;
            drop(t);
            holding.renewal_failed(attempt, &e, will_retry);
            tracing::warn!(lease = %holding.name, outcome = "failed", attempt, will_retry, error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "lease renewal failed; retrying until the deadline");
            t = lock(&inner.state);
            let Some(entry) = t.entries.get_mut(&id) else {
                return;
            };
            let _ = entry;
            at
        }
    };
    if let Some(entry) = t.entries.get_mut(&id) {
        entry.renew_at = Some(at);
    }
    t.renew.insert((at, id));
    let wake = t.planned.is_some_and(|p| at < p);
    if wake {
        t.planned = Some(at);
        drop(t);
        inner.wake.notify_one();
    }
}
