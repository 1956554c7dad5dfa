//! Taking a holding: the waiting and cancel-safety every kind of acquire shares (a lease today;
//! an election's campaign and a semaphore's permit are acquires of the same shape).
//!
//! Owns:
//! - [`acquire_with_wait`]: the loop of attempts woken by release notifications, by the
//!   holder's expiry, and (only when notifications may be missed) by polls paced by a
//!   [`Backoff`]; it gives up with `Unavailable` naming the holder. What one attempt is, and
//!   which watch wakes it, are the caller's ([`crate::client`] passes its lease attempt and
//!   its store's release watch). The rules of the wake-ups are [`crate::wait`]'s.
//! - The one cancellation mechanism of an acquire: [`give_back`], which releases, owner-checked,
//!   a fresh holder id that a cancelled attempt may have won. Its two triggers are the two ways
//!   an attempt can run: [`Delivery`] (the attempt ran in a task of its own and its reply was
//!   dropped unread) and [`GiveBack`] (the attempt was polled in its caller's future, which was
//!   dropped while the request was on the wire). A holding won and registered is given back by
//!   dropping its handle ([`crate::holding::Holding::drop_handle`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{LeaseError, Result};
use crate::holding::{PendingRelease, Work};
use crate::info::LeaseInfo;
use crate::renewal::Outstanding;
use crate::store::{AcquireOutcome, LeaseStore, ReleaseOutcome, SemaphoreHolder};
use crate::wait::{self, Feed, ReleaseWatch, Wake};

/// The longest a waiter waits for its release subscription to be confirmed before it goes on
/// without (polling) until the subscription is live.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(2);

/// What one attempt gave.
#[derive(Debug)]
pub(crate) enum Attempted<T> {
    /// Won.
    Won(T),
    /// Someone else holds it (with its time to live, when known: a retry is due at its expiry);
    /// of a semaphore, with every holder seen (for `Unavailable`'s `holders`).
    Held(LeaseInfo, Vec<SemaphoreHolder>),
}

/// Takes what `attempt` takes, waiting up to `wait` for it (`None`: forever; zero: one
/// attempt), as [`crate::LeaseClient::acquire`] describes: woken by `watch` (opened, by calling
/// it, after the first refusal and before the next attempt, so that no release in between goes
/// unseen), at the holder's expiry, and by polls on `backoff` while the watch is not live; the
/// backoff's limit caps the attempts. `closed` ending ends the wait with `closed_error()`.
/// Cancelling the returned future leaves nothing behind: the watch is dropped (a wake-up it owed
/// other waiters passed on), and an attempt is cancel-safe by its own guards.
///
/// # Errors
/// `Unavailable` with the holder when the wait or the attempts run out; what an attempt returns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn acquire_with_wait<T, A, Fut>(
    name: &str,
    mut attempt: A,
    watch: impl FnOnce() -> ReleaseWatch,
    backoff: Backoff,
    wait: Option<Duration>,
    closed: impl std::future::Future<Output = ()>,
    closed_error: fn() -> LeaseError,
) -> Result<T>
where
    A: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Attempted<T>>>,
{
    let started = Instant::now();
    // A wait too long to represent is a wait forever.
    let give_up = wait.and_then(|w| started.checked_add(w));
    let mut waiting = Waiting {
        watch: None,
        owes_wake: false,
    };
    let mut open_watch = Some(watch);
    let mut attempts = 0u32;
    let mut polls = 0u32;
    let mut closed = std::pin::pin!(closed);
    loop {
        attempts = attempts.saturating_add(1);
        let outcome = attempt().await?;
        // The attempt answered: a release that woke us has been acted on.
        waiting.owes_wake = false;
        let (holder, holders) = match outcome {
            Attempted::Won(won) => {
                if attempts > 1 {
                    tracing::debug!(
                        lease = name,
                        outcome = "acquired",
                        attempts,
                        waited_ms =
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "acquired after waiting"
                    );
                }
                return Ok(won);
            }
            Attempted::Held(holder, holders) => (holder, holders),
        };
        let now = Instant::now();
        if give_up.is_some_and(|g| now >= g) || !backoff.allows_another(attempts) {
            if attempts > 1 {
                tracing::debug!(
                    lease = name,
                    outcome = "unavailable",
                    attempts,
                    waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "gave up waiting"
                );
            }
            return Err(LeaseError::Unavailable {
                name: name.to_owned(),
                holder: Some(Box::new(holder)),
                holders,
                waited: waited(started, attempts, wait),
            });
        }
        let Some(watch) = waiting.watch.as_mut() else {
            // Start listening, then try again at once: a release that happened before the
            // subscription was in place is seen by that attempt, and every later one wakes us.
            let open = open_watch
                .take()
                .map_or_else(ReleaseWatch::none, |open| open());
            let watch = waiting.watch.insert(open);
            let limit = give_up.map_or(SUBSCRIBE_LIMIT, |g| {
                g.saturating_duration_since(now).min(SUBSCRIBE_LIMIT)
            });
            watch.settled(limit).await;
            tracing::debug!(lease = name, holder = %holder.lease_id, notified = watch.feed() == Feed::Live, "waiting for the lease");
            continue;
        };
        let expiry = holder.ttl.map(|ttl| now + wait::expiry_retry(ttl));
        loop {
            let poll = (watch.feed() != Feed::Live).then(|| now + backoff.poll_delay(polls));
            let wake_at = [expiry, poll, give_up].into_iter().flatten().min();
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // A client closed meanwhile ends the wait at once (its next attempt is refused).
            let woke = tokio::select! {
                w = watch.next() => Some(w),
                () = sleep => None,
                () = &mut closed => return Err(closed_error()),
            };
            match woke {
                Some(Wake::FeedChanged) => {}
                Some(Wake::Released) => {
                    tracing::trace!(lease = name, "woken by a release");
                    waiting.owes_wake = true;
                    break;
                }
                None => {
                    let at = Instant::now();
                    if poll.is_some_and(|p| at >= p) && expiry.is_none_or(|e| at < e) {
                        polls = polls.saturating_add(1);
                        tracing::trace!(lease = name, "polling");
                    } else {
                        tracing::trace!(lease = name, "retrying at the holder's expiry");
                    }
                    break;
                }
            }
        }
    }
}

/// How long a refused acquire waited: zero for one attempt that was asked not to wait.
fn waited(started: Instant, attempts: u32, wait: Option<Duration>) -> Duration {
    if attempts > 1 || wait.is_some_and(|w| !w.is_zero()) {
        started.elapsed()
    } else {
        Duration::ZERO
    }
}

/// A waiter's subscription, and whether it owes the other waiters a wake-up: one it received
/// but has not acted on yet, passed on if it is dropped (cancelled or failed) before acting.
struct Waiting {
    watch: Option<ReleaseWatch>,
    owes_wake: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.owes_wake {
            if let Some(w) = &self.watch {
                w.pass_on();
            }
        }
    }
}

/// Gives back what a cancelled acquire may have won: releases `lease_id` of `name`, owner
/// checked, on `runtime`, at once and, with `again_after`, once more that long after (for a
/// request that went over another connection and may be applied after the first release). A
/// release that finds nothing of ours is a no-op, and the lease id is fresh for the attempt, so
/// only what that very attempt won can match. The first release is outstanding work of the
/// client (`work`: its close waits for it) and counted for process exit; the second is best
/// effort.
pub(crate) fn give_back(
    runtime: &tokio::runtime::Handle,
    store: Arc<dyn LeaseStore>,
    name: String,
    lease_id: String,
    work: Option<Work>,
    again_after: Option<Duration>,
) {
    let mut guards = Some((work, PendingRelease::new()));
    runtime.spawn(async move {
        for wait in std::iter::once(Duration::ZERO).chain(again_after) {
            tokio::time::sleep(wait).await;
            let released = store.release(&name, &lease_id).await;
            drop(guards.take());
            match released {
                Ok(ReleaseOutcome::Released) => return,
                Err(e) if again_after.is_none() => {
                    tracing::warn!(lease = %name, error = %e, "cannot release a lease won by a cancelled acquire; it expires by itself");
                }
                _ => {}
            }
        }
    });
}

/// The reply of an acquire attempt run in a task of its own, on its way to the caller. If it is
/// dropped unread (the caller was cancelled after the store answered), a lease it carries is
/// given back ([`give_back`]).
pub(crate) struct Delivery {
    pub(crate) outcome: Option<Result<AcquireOutcome>>,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) name: String,
    pub(crate) lease_id: String,
    /// The acquire's place in its client's outstanding work, handed on to the release.
    pub(crate) work: Option<Outstanding>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !matches!(self.outcome, Some(Ok(AcquireOutcome::Acquired { .. }))) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lease = %self.name, "a cancelled acquire won the lease outside a runtime; it expires by itself");
            return;
        };
        tracing::debug!(lease = %self.name, outcome = "cancelled", "acquire cancelled while on the wire; releasing the lease it won");
        give_back(
            &rt,
            Arc::clone(&self.store),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.lease_id),
            self.work.take().map(|w| Box::new(w) as Work),
            None,
        );
    }
}

/// An acquire attempt polled in its caller's future (a [`crate::LeaseClient::via`] view): if
/// the future is dropped before the reply was read, the request may still be granted on the
/// server, so the attempt's lease id is given back ([`give_back`]) at once and again once an
/// operation's timeout (`settle`) has passed (the request went over another connection, so it
/// may be applied after the first release). Only on that rare drop is anything copied: the
/// guard costs the acquire itself nothing but a few references.
pub(crate) struct GiveBack<'a> {
    pub(crate) armed: bool,
    pub(crate) runtime: Option<&'a tokio::runtime::Handle>,
    pub(crate) store: &'a Arc<dyn LeaseStore>,
    pub(crate) track: &'a (dyn Fn() -> Work + Sync),
    pub(crate) settle: Duration,
    pub(crate) name: &'a str,
    pub(crate) lease_id: &'a str,
}

impl GiveBack<'_> {
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(rt) = self.runtime else {
            tracing::warn!(lease = %self.name, "an acquire left while on the wire outside a runtime; a lease it won expires by itself");
            return;
        };
        tracing::debug!(lease = %self.name, outcome = "cancelled", "acquire left while on the wire; giving back a lease it may have won");
        give_back(
            rt,
            Arc::clone(self.store),
            self.name.to_owned(),
            self.lease_id.to_owned(),
            Some((self.track)()),
            Some(self.settle),
        );
    }
}
