//! Waiting to acquire: retry schedules, and wake-ups when a lease is released.
//!
//! A waiter learns of a release by notification, not by polling. Every store owns a
//! [`ReleaseBoard`]: one entry per lease name that somebody in this process waits for, with a
//! reference count, a [`Notify`] and the state of the notification feed for that name. The Redis
//! store feeds it from one pub/sub connection shared by all waiters, PostgreSQL from one
//! listening connection and etcd from one watch stream (each run by a supervisor task that a
//! `FedBoard` starts when the first waiter comes); the SQLite store feeds it from releases
//! made in this process. A waiter holds a [`ReleaseWatch`] (its share of the entry)
//! while it waits; the last watch to go unsubscribes (on Redis after a short linger, so that a
//! lease waited for again soon keeps its subscription).
//!
//! Invariants:
//! - Lost wake-ups cannot happen: the waiter joins the board (and, on Redis, the subscription is
//!   confirmed by the server) *before* the acquire attempt whose refusal makes it wait, and a
//!   notification that arrives while no waiter is parked is kept as a permit by the `Notify`.
//! - One release wakes one waiter of the process (`notify_one`), since only one can win. A woken
//!   waiter that goes away before its attempt passes the wake-up on ([`ReleaseWatch::pass_on`]),
//!   and a parked waiter that is dropped after being picked passes it on too (tokio's `Notified`
//!   does that), so a cancellation never swallows a release.
//! - Notifications only make waiting faster, never correct: a waiter always also wakes when the
//!   holder's TTL (known from the refused attempt) runs out, plus jitter so that a hundred
//!   waiters do not all retry in the same millisecond. Where the feed is not known to cover every
//!   release (SQLite across processes, a dropped pub/sub connection, a server without pub/sub
//!   permission), the waiter also polls on its [`crate::Backoff`] schedule, never more often than
//!   every [`crate::Backoff::MIN_POLL`].
//! - No fairness is promised: whoever's attempt reaches the store first after a release wins.
//!
//! The board is a change feed per name: besides waiters (one woken per release), it has
//! observers ([`ReleaseBoard::observe`]), all of whom are told of every change a store
//! reports for the name ([`ReleaseBoard::changed`]: a release, or an acquisition where the
//! store's feed carries them), under the same feed state and the same supervisor. Observers
//! count as the entry's users, so its subscription lives while they do; like waiters, they must
//! re-read the store when the feed is not live.

use std::collections::HashMap;
#[cfg(any(feature = "postgres", feature = "etcd"))]
use std::future::Future;
#[cfg(any(feature = "postgres", feature = "etcd"))]
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{watch, Notify};

#[cfg(any(feature = "postgres", feature = "etcd"))]
use crate::backoff::Backoff;
#[cfg(any(feature = "postgres", feature = "etcd"))]
use crate::task_slot::TaskSlot;

/// How long after the refusal a waiter retries a holder that does not release: the holder's
/// remaining TTL, plus a millisecond, plus jitter of up to a tenth of the TTL (at least 5 ms, at
/// most 100 ms), so that many waiters of one expiry spread their attempts.
#[must_use]
pub fn expiry_retry(ttl: Duration) -> Duration {
    let spread = (ttl / 10).clamp(Duration::from_millis(5), Duration::from_millis(100));
    ttl + Duration::from_millis(1) + spread.mul_f64(rand::rng().random_range(0.0..=1.0))
}

/// What the notification feed of one lease name covers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Being set up (a subscription is on its way to the server): wait for it before the attempt.
    Pending,
    /// Every release of this lease by this library is notified.
    Live,
    /// Some releases may not be notified (another process on SQLite; a pub/sub connection that
    /// is down or refused): notifications still help, but the waiter must also poll.
    Partial,
}

/// A change of one name that a store's feed reports ([`ReleaseBoard::changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its holder let go (released, or an administrator's forced release): one waiter is woken,
    /// and every observer.
    Released,
    /// Someone acquired it, or its holder proclaimed new metadata: every observer is told; no
    /// waiter is woken (none could win).
    Acquired,
}

/// Why [`ReleaseWatch::next`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A release was notified: try again now.
    Released,
    /// The feed changed (see [`ReleaseWatch::feed`]): recompute when to wake.
    FeedChanged,
}

struct Channel {
    key: String,
    /// Watches sharing this entry; changed only under the board's lock.
    refs: usize,
    notify: Arc<Notify>,
    /// Counts the changes reported for this key, for its observers.
    changes: watch::Sender<u64>,
    feed: watch::Sender<Feed>,
    /// Set when notifications may have been missed (the feed went down): the next time it is
    /// live, one waiter is woken to look.
    stale: bool,
}

type Hook = Box<dyn Fn(&str) + Send + Sync>;

/// The waiters of one store in this process, by key, and their wake-ups.
pub struct ReleaseBoard {
    channels: Mutex<HashMap<String, Channel>>,
    /// The feed of a new entry.
    initial: Feed,
    /// Told (with the key) when an entry gets its first waiter or loses its last one, so a
    /// subscriber can subscribe or unsubscribe; `None` for an in-process board.
    on_change: Option<Hook>,
}

impl std::fmt::Debug for ReleaseBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseBoard")
            .field("keys", &self.lock().len())
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

impl ReleaseBoard {
    /// A board whose notifications come only from this process ([`ReleaseBoard::notify`]):
    /// every entry is [`Feed::Partial`], so waiters also poll.
    #[must_use]
    pub fn in_process() -> Arc<Self> {
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            initial: Feed::Partial,
            on_change: None,
        })
    }

    /// A board fed by a subscriber: new entries start [`Feed::Pending`], and `on_change(key)` is
    /// called (under the board's lock: it must not block) when an entry gains its first waiter
    /// or loses its last.
    #[must_use]
    pub fn subscribed(on_change: impl Fn(&str) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            initial: Feed::Pending,
            on_change: Some(Box::new(on_change)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // Every update under this lock is a few plain field stores: a panic cannot leave an
        // entry half-updated, so a poisoned lock is still good.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching `key`: the returned watch shares the entry with the other waiters.
    #[must_use]
    pub fn join(self: &Arc<Self>, key: &str) -> ReleaseWatch {
        ReleaseWatch {
            joined: Some(self.enter(key)),
        }
    }

    /// Starts observing `key`: the returned watch is told of every change reported for it
    /// from now on (and of changes of its feed), and keeps the key's subscription alive.
    #[must_use]
    pub fn observe(self: &Arc<Self>, key: &str) -> ChangeWatch {
        let joined = self.enter(key);
        let changes = {
            let map = self.lock();
            map.get(key).map(|ch| ch.changes.subscribe())
        };
        ChangeWatch {
            changes: changes.unwrap_or_else(|| watch::Sender::new(0).subscribe()),
            joined: Some(joined),
            acquisitions: false,
            announced: false,
        }
    }

    /// Adds a user (waiter or observer) to the entry of `key`.
    fn enter(self: &Arc<Self>, key: &str) -> Joined {
        let mut map = self.lock();
        let ch = map.entry(key.to_owned()).or_insert_with(|| Channel {
            key: key.to_owned(),
            refs: 0,
            notify: Arc::new(Notify::new()),
            changes: watch::Sender::new(0),
            feed: watch::Sender::new(self.initial),
            stale: false,
        });
        if ch.refs == 0 {
            // A wake-up left for nobody (a release while no one waited) must not wake the
            // newcomer: it attempts right after joining anyway, which covers every earlier
            // release.
            ch.notify = Arc::new(Notify::new());
        }
        ch.refs += 1;
        let first = ch.refs == 1;
        let joined = Joined {
            board: Arc::clone(self),
            key: ch.key.clone(),
            notify: Arc::clone(&ch.notify),
            feed: ch.feed.subscribe(),
        };
        if first {
            if let Some(hook) = &self.on_change {
                hook(key);
            }
        }
        joined
    }

    fn leave(&self, key: &str) {
        let mut map = self.lock();
        let Some(ch) = map.get_mut(key) else { return };
        ch.refs = ch.refs.saturating_sub(1);
        if ch.refs > 0 {
            return;
        }
        match &self.on_change {
            // The subscriber unsubscribes, then removes the entry if still unused.
            Some(hook) => hook(key),
            None => {
                map.remove(key);
            }
        }
    }

    /// A release of `key` happened: wakes one waiter (or leaves a permit for the next one),
    /// and tells every observer. Returns whether anybody here watches `key`.
    pub fn notify(&self, key: &str) -> bool {
        self.changed(key, Change::Released)
    }

    /// `change` happened to `key`: a release wakes one waiter (or leaves a permit for the next
    /// one); every change is told to every observer. Returns whether anybody here watches `key`.
    pub fn changed(&self, key: &str, change: Change) -> bool {
        let map = self.lock();
        match map.get(key) {
            Some(ch) => {
                if change == Change::Released {
                    ch.notify.notify_one();
                }
                ch.changes.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            None => false,
        }
    }

    /// The keys that have waiters or observers.
    #[must_use]
    pub fn wanted(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|c| c.refs > 0)
            .map(|c| c.key.clone())
            .collect()
    }

    /// The number of waiters and observers of `key`.
    #[must_use]
    pub fn waiters(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, |c| c.refs)
    }

    /// Removes the entry of `key` if nobody waits for it; returns whether it is gone.
    pub fn remove_if_unused(&self, key: &str) -> bool {
        let mut map = self.lock();
        match map.get(key) {
            Some(ch) if ch.refs > 0 => false,
            _ => {
                map.remove(key);
                true
            }
        }
    }

    /// Forgets the entries among `keys` that nobody waits for (a subscriber, told of them by
    /// `on_change`, has stopped listening for them) and returns the keys that have waiters.
    #[cfg(any(feature = "postgres", feature = "etcd"))]
    pub(crate) fn tidy(&self, keys: impl IntoIterator<Item = String>) -> Vec<String> {
        for key in keys {
            self.remove_if_unused(&key);
        }
        self.wanted()
    }

    /// [`ReleaseBoard::set_live`] for each of `keys`.
    #[cfg(any(feature = "postgres", feature = "etcd"))]
    pub(crate) fn set_all_live(&self, keys: &[String]) {
        for key in keys {
            self.set_live(key);
        }
    }

    /// The feed of `key` is live: every release will be notified. If notifications may have
    /// been missed since it was last live, one waiter is woken to look.
    pub fn set_live(&self, key: &str) {
        let mut map = self.lock();
        if let Some(ch) = map.get_mut(key) {
            if std::mem::take(&mut ch.stale) {
                ch.notify.notify_one();
                ch.changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            ch.feed
                .send_if_modified(|f| std::mem::replace(f, Feed::Live) != Feed::Live);
        }
    }

    /// The feed of `key` (or of every key, with `None`) may miss releases from now on: waiters
    /// poll until it is live again, and one of them looks as soon as it is.
    pub fn set_partial(&self, key: Option<&str>) {
        let mut map = self.lock();
        for ch in map.values_mut() {
            if key.is_some_and(|k| k != ch.key) {
                continue;
            }
            if *ch.feed.borrow() == Feed::Live {
                ch.stale = true;
            }
            ch.feed
                .send_if_modified(|f| std::mem::replace(f, Feed::Partial) != Feed::Partial);
        }
    }
}

/// The task that feeds a [`FedBoard`], not yet started.
#[cfg(any(feature = "postgres", feature = "etcd"))]
type Supervisor = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store's [`ReleaseBoard`] and the supervisor task that feeds it (a watch stream, a listening
/// connection). The task starts when the board is first asked for, so a store nobody waits on
/// never opens one; [`FedBoard::close`] ends it for good.
#[cfg(any(feature = "postgres", feature = "etcd"))]
pub(crate) struct FedBoard {
    board: Arc<ReleaseBoard>,
    /// The supervisor until it is started (or the board closed first).
    start: Mutex<Option<Supervisor>>,
    /// The runtime the board was made on (the store's), where the supervisor runs.
    home: Option<tokio::runtime::Handle>,
    task: TaskSlot,
}

#[cfg(any(feature = "postgres", feature = "etcd"))]
impl FedBoard {
    /// `board`, to be fed by `supervisor` once the board is first used, on the runtime this
    /// is called on.
    pub(crate) fn new(
        board: Arc<ReleaseBoard>,
        supervisor: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            board,
            start: Mutex::new(Some(Box::pin(supervisor))),
            home: tokio::runtime::Handle::try_current().ok(),
            task: TaskSlot::default(),
        }
    }

    /// The board of this store's waiters; starts the supervisor on first use (needs a runtime).
    pub(crate) fn board(&self) -> &Arc<ReleaseBoard> {
        // Held until the task is recorded, so that `close` cannot miss it.
        let mut start = self.unstarted();
        if let Some(s) = start.take() {
            self.task.start_on(self.home.as_ref(), s);
        }
        drop(start);
        &self.board
    }

    /// Stops the supervisor and what it owns (its stream or connection); never started again.
    pub(crate) async fn close(&self) {
        drop(self.unstarted().take());
        self.task.stop().await;
    }

    fn unstarted(&self) -> MutexGuard<'_, Option<Supervisor>> {
        self.start.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When the supervisor of a [`FedBoard`] may try again to open its stream or connection after
/// failures in a row (250 ms doubling to 5 s), and whether it has said so yet.
#[cfg(any(feature = "postgres", feature = "etcd"))]
#[derive(Debug, Default)]
pub(crate) struct Reconnect {
    at: Option<tokio::time::Instant>,
    /// Consecutive failures: the place in the schedule.
    failures: u32,
    /// A failure was logged since the last success: the next ones are not.
    warned: bool,
}

#[cfg(any(feature = "postgres", feature = "etcd"))]
impl Reconnect {
    const SCHEDULE: Backoff = Backoff::doubling(Duration::from_millis(250), Duration::from_secs(5));

    /// Whether a failure keeps the supervisor from trying now.
    pub(crate) fn waiting(&self) -> bool {
        self.at.is_some()
    }

    /// When to wake: `other`, or the next attempt if sooner.
    pub(crate) fn wake(&self, other: tokio::time::Instant) -> tokio::time::Instant {
        self.at.map_or(other, |r| r.min(other))
    }

    /// Ends the wait once its time has come.
    pub(crate) fn tick(&mut self) {
        if self.at.is_some_and(|r| tokio::time::Instant::now() >= r) {
            self.at = None;
        }
    }

    /// An attempt failed: the next waits one step longer than the last.
    pub(crate) fn failed(&mut self) {
        self.at = Some(tokio::time::Instant::now() + Self::SCHEDULE.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
    }

    /// Whether to log a failure: only the first since the last success.
    pub(crate) fn first_warning(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }

    /// It works: the next failure starts the schedule again, and is logged.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.warned = false;
    }
}

struct Joined {
    board: Arc<ReleaseBoard>,
    key: String,
    notify: Arc<Notify>,
    feed: watch::Receiver<Feed>,
}

/// One waiter's share of a [`ReleaseBoard`] entry. Dropping it leaves the board (the last one
/// out unsubscribes).
pub struct ReleaseWatch {
    joined: Option<Joined>,
}

impl std::fmt::Debug for ReleaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWatch")
            .field("key", &self.joined.as_ref().map(|j| &j.key))
            .field("feed", &self.feed())
            .finish()
    }
}

impl ReleaseWatch {
    /// A watch that is never notified: the waiter polls and retries at the holder's expiry.
    #[must_use]
    pub fn none() -> Self {
        Self { joined: None }
    }

    /// What the feed covers now.
    #[must_use]
    pub fn feed(&self) -> Feed {
        self.joined
            .as_ref()
            .map_or(Feed::Partial, |j| *j.feed.borrow())
    }

    /// Waits, at most `limit`, while the feed is [`Feed::Pending`] (a subscription on its way).
    pub async fn settled(&mut self, limit: Duration) {
        if let Some(j) = self.joined.as_mut() {
            let _ = tokio::time::timeout(limit, j.feed.wait_for(|f| *f != Feed::Pending)).await;
        }
    }

    /// Waits for a release notification or a change of the feed. Never returns for
    /// [`ReleaseWatch::none`].
    pub async fn next(&mut self) -> Wake {
        let Some(j) = self.joined.as_mut() else {
            return std::future::pending().await;
        };
        let notify = Arc::clone(&j.notify);
        tokio::select! {
            // If the feed branch wins after this waiter was picked by `notify_one`, dropping the
            // `Notified` passes the wake-up to another waiter.
            () = notify.notified() => Wake::Released,
            changed = j.feed.changed() => match changed {
                Ok(()) => Wake::FeedChanged,
                // The board dropped the entry's sender: cannot happen while we hold a share.
                Err(_) => std::future::pending().await,
            },
        }
    }

    /// Passes a wake-up this waiter received but will not act on to another waiter.
    pub fn pass_on(&self) {
        if let Some(j) = &self.joined {
            j.notify.notify_one();
        }
    }
}

impl Drop for ReleaseWatch {
    fn drop(&mut self) {
        if let Some(j) = self.joined.take() {
            j.board.leave(&j.key);
        }
    }
}

/// One observer's share of a [`ReleaseBoard`] entry ([`ReleaseBoard::observe`]): told of
/// every change reported for the key. Dropping it leaves the board.
pub struct ChangeWatch {
    /// `None` for [`ChangeWatch::none`].
    joined: Option<Joined>,
    changes: watch::Receiver<u64>,
    /// Whether the feed reports every acquisition too, not only releases.
    acquisitions: bool,
    /// Whether the feed reports announced acquisitions ([`crate::store::AcquireRequest::announce`]).
    announced: bool,
}

impl std::fmt::Debug for ChangeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeWatch")
            .field("key", &self.joined.as_ref().map(|j| &j.key))
            .field("feed", &self.feed())
            .finish_non_exhaustive()
    }
}

/// Why [`ChangeWatch::next`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// One or more changes were reported since the last call (changes are coalesced: an
    /// observer re-reads the store and may skip intermediate values, never miss the last).
    Changed,
    /// The feed changed (see [`ChangeWatch::feed`]): while it is not live, changes may go
    /// unreported and the observer must also re-read on its own schedule.
    FeedChanged,
}

impl ChangeWatch {
    /// A watch told of nothing (a store without a change feed): its observer reads on its
    /// own schedule.
    #[must_use]
    pub fn none() -> Self {
        Self {
            joined: None,
            changes: watch::Sender::new(0).subscribe(),
            acquisitions: false,
            announced: false,
        }
    }

    /// Says that the store's feed reports every acquisition of the key as well as releases
    /// (etcd: every put is in its watch).
    #[must_use]
    pub fn with_acquisitions(mut self) -> Self {
        self.acquisitions = true;
        self.announced = true;
        self
    }

    /// Says that the store's feed reports the announced acquisitions of the key
    /// ([`crate::store::AcquireRequest::announce`], which every campaign sets), but not the
    /// others (Redis, PostgreSQL: a plain acquire publishes nothing, to stay one cheap round
    /// trip).
    #[must_use]
    pub fn with_announced(mut self) -> Self {
        self.announced = true;
        self
    }

    /// Whether the feed reports every acquisition as well as releases: if not, an observer
    /// that knows of no holder must read on its own schedule to see a new one (at a slower
    /// cadence where [`Self::announced`] holds: see [`crate::election`]).
    #[must_use]
    pub fn acquisitions(&self) -> bool {
        self.acquisitions
    }

    /// Whether the feed reports announced acquisitions (true too where it reports every one).
    #[must_use]
    pub fn announced(&self) -> bool {
        self.announced
    }

    /// What the feed covers now.
    #[must_use]
    pub fn feed(&self) -> Feed {
        self.joined
            .as_ref()
            .map_or(Feed::Partial, |j| *j.feed.borrow())
    }

    /// Waits, at most `limit`, while the feed is [`Feed::Pending`] (a subscription on its way).
    pub async fn settled(&mut self, limit: Duration) {
        if let Some(j) = self.joined.as_mut() {
            let _ = tokio::time::timeout(limit, j.feed.wait_for(|f| *f != Feed::Pending)).await;
        }
    }

    /// Waits for the next change reported for the key, or a change of the feed. Never
    /// returns for [`ChangeWatch::none`].
    pub async fn next(&mut self) -> Observed {
        let Some(j) = self.joined.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            biased;
            changed = self.changes.changed() => match changed {
                Ok(()) => Observed::Changed,
                Err(_) => std::future::pending().await,
            },
            changed = j.feed.changed() => match changed {
                Ok(()) => Observed::FeedChanged,
                Err(_) => std::future::pending().await,
            },
        }
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        if let Some(j) = self.joined.take() {
            j.board.leave(&j.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;

    #[test]
    fn exponential_grows_to_its_cap_and_never_below_min() {
        let b = Backoff::default();
        for poll in 0..40 {
            let d = b.poll_delay(poll);
            assert!(d >= Duration::from_millis(100), "{d:?}");
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        assert!(b.poll_delay(10) >= Duration::from_millis(500));
    }

    #[test]
    fn no_schedule_polls_faster_than_every_100_ms() {
        assert_eq!(
            Backoff::fixed(Duration::from_millis(1)).poll_delay(0),
            Backoff::MIN_POLL
        );
        let b = Backoff::exponential(Duration::ZERO, Duration::from_millis(50));
        assert!((0..20).all(|p| b.poll_delay(p) == Backoff::MIN_POLL));
    }

    #[test]
    fn expiry_retry_is_just_after_the_ttl_with_bounded_jitter() {
        for _ in 0..100 {
            let d = expiry_retry(Duration::from_millis(200));
            assert!(
                d > Duration::from_millis(200) && d <= Duration::from_millis(221),
                "{d:?}"
            );
            let d = expiry_retry(Duration::from_secs(30));
            assert!(d <= Duration::from_millis(30_101), "{d:?}");
        }
        let spread: std::collections::BTreeSet<_> = (0..100)
            .map(|_| expiry_retry(Duration::from_secs(30)))
            .collect();
        assert!(
            spread.len() > 50,
            "100 waiters must not all pick one instant"
        );
    }

    #[cfg(any(feature = "postgres", feature = "etcd"))]
    #[tokio::test(start_paused = true)]
    async fn reconnect_waits_longer_after_each_failure_and_warns_once_until_it_works() {
        let mut r = Reconnect::default();
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(!r.waiting());
        assert_eq!(r.wake(far), far);
        for (step, ms) in [250, 500, 1000].into_iter().enumerate() {
            r.failed();
            assert_eq!(
                r.first_warning(),
                step == 0,
                "only the first failure is logged"
            );
            let due = tokio::time::Instant::now() + Duration::from_millis(ms);
            assert_eq!(r.wake(far), due);
            tokio::time::advance(Duration::from_millis(ms - 1)).await;
            r.tick();
            assert!(r.waiting(), "not before its time");
            tokio::time::advance(Duration::from_millis(1)).await;
            r.tick();
            assert!(!r.waiting());
        }
        r.succeeded();
        r.failed();
        assert!(
            r.first_warning(),
            "a failure after a success is logged again"
        );
        assert_eq!(
            r.wake(far),
            tokio::time::Instant::now() + Duration::from_millis(250)
        );
    }

    #[tokio::test]
    async fn one_release_wakes_one_waiter_and_a_permit_is_kept() {
        let board = ReleaseBoard::in_process();
        let mut a = board.join("k");
        let mut b = board.join("k");
        assert_eq!(board.waiters("k"), 2);
        // Released before anyone parks: kept as a permit for the next waiter.
        assert!(board.notify("k"));
        assert_eq!(a.next().await, Wake::Released);
        let woke = tokio::time::timeout(Duration::from_millis(50), b.next()).await;
        assert!(woke.is_err(), "one release wakes one waiter");
        drop(a);
        drop(b);
        assert_eq!(board.waiters("k"), 0);
        assert!(!board.notify("k"), "the last waiter out removes the entry");
    }

    #[tokio::test]
    async fn a_dropped_picked_waiter_passes_the_wake_up_on() {
        let board = ReleaseBoard::in_process();
        let mut a = board.join("k");
        let mut b = board.join("k");
        // `a` is parked first, so notify_one picks it; dropping it before it runs passes the
        // wake-up on to `b`.
        let parked = tokio::spawn(async move { a.next().await });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        board.notify("k");
        parked.abort();
        let woke = tokio::time::timeout(Duration::from_secs(5), b.next()).await;
        assert_eq!(woke.ok(), Some(Wake::Released));
    }

    #[tokio::test]
    async fn a_release_nobody_waited_for_does_not_wake_a_newcomer() {
        let board = ReleaseBoard::subscribed(|_| {});
        drop(board.join("k"));
        // The entry lingers (a subscriber removes it); a release while nobody waits...
        assert!(board.notify("k"));
        // ...is covered by the newcomer's own attempt after joining, not by a wake-up.
        let mut b = board.join("k");
        board.set_live("k");
        assert_eq!(b.next().await, Wake::FeedChanged);
        let woke = tokio::time::timeout(Duration::from_millis(50), b.next()).await;
        assert!(woke.is_err(), "woken by a stale release");
    }

    #[tokio::test]
    async fn subscribed_board_reports_first_and_last_waiter_and_wakes_after_a_gap() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let board = ReleaseBoard::subscribed(move |k| s.lock().unwrap().push(k.to_owned()));
        let mut a = board.join("k");
        let b = board.join("k");
        assert_eq!(a.feed(), Feed::Pending);
        board.set_live("k");
        assert_eq!(a.next().await, Wake::FeedChanged);
        assert_eq!(a.feed(), Feed::Live);
        board.set_partial(None);
        assert_eq!(a.next().await, Wake::FeedChanged);
        assert_eq!(a.feed(), Feed::Partial);
        // Live again after a gap: one waiter is woken to look for a missed release.
        board.set_live("k");
        let mut wakes = vec![a.next().await];
        wakes.push(a.next().await);
        wakes.sort_by_key(|w| *w == Wake::Released);
        assert_eq!(wakes, [Wake::FeedChanged, Wake::Released]);
        drop(a);
        drop(b);
        assert_eq!(*seen.lock().unwrap(), ["k", "k"]);
        assert_eq!(board.wanted(), Vec::<String>::new());
        assert!(board.remove_if_unused("k"));
    }

    #[tokio::test]
    async fn every_observer_is_told_of_every_change_and_only_a_release_wakes_a_waiter() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let board = ReleaseBoard::subscribed(move |k| s.lock().unwrap().push(k.to_owned()));
        let mut o1 = board.observe("k");
        let mut o2 = board.observe("k");
        let mut w = board.join("k");
        // One subscription for the three users of the key.
        assert_eq!(*seen.lock().unwrap(), ["k"]);
        assert_eq!(board.waiters("k"), 3);
        board.set_live("k");
        assert_eq!(o1.next().await, Observed::FeedChanged);
        assert_eq!(o2.next().await, Observed::FeedChanged);
        assert_eq!(w.next().await, Wake::FeedChanged);

        assert!(board.changed("k", Change::Acquired));
        assert_eq!(o1.next().await, Observed::Changed);
        assert_eq!(o2.next().await, Observed::Changed);
        let woke = tokio::time::timeout(Duration::from_millis(50), w.next()).await;
        assert!(
            woke.is_err(),
            "a waiter was woken by an acquisition: {woke:?}"
        );

        assert!(board.notify("k"));
        assert_eq!(w.next().await, Wake::Released);
        assert_eq!(o1.next().await, Observed::Changed);
        // Two changes before o2 looks: coalesced into one, never lost.
        assert!(board.changed("k", Change::Acquired));
        assert_eq!(o2.next().await, Observed::Changed);
        let again = tokio::time::timeout(Duration::from_millis(50), o2.next()).await;
        assert!(again.is_err(), "a change was reported twice: {again:?}");

        assert_eq!(o1.next().await, Observed::Changed);
        // Other keys are other entries: nothing reaches these observers.
        assert!(!board.changed("k2", Change::Released));
        let other = tokio::time::timeout(Duration::from_millis(50), o1.next()).await;
        assert!(other.is_err(), "told of another key's change: {other:?}");

        drop(w);
        drop(o1);
        assert!(
            seen.lock().unwrap().len() == 1,
            "unsubscribed while an observer remains"
        );
        drop(o2);
        assert_eq!(*seen.lock().unwrap(), ["k", "k"]);
        assert!(board.remove_if_unused("k"));
    }
}
