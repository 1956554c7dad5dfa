//! Retry schedules: the one implementation of "how long until the next try" in the crate.
//!
//! A [`Backoff`] is a value: a first delay doubling up to a cap, optionally jittered and held
//! above a floor, optionally with a cap on attempts. [`Backoff::delay`] gives the delay before
//! retry number `n` (0-based) as a pure function of `n`, so a loop keeps only a count of its
//! failures and a schedule is tested by iterating it ([`Backoff::delays`]), never by the clock.
//!
//! Users of it: a waiting acquire's polls (`crate::wait`, the public schedule), renewal retries
//! (`crate::renewal`), the pub/sub subscriber's reconnects (`store::redis::notify`), those of
//! the etcd watch and the PostgreSQL listening connection (`crate::wait::Reconnect`) and the
//! Microsoft Entra ID token refresh (`store::redis::entra`).

use std::time::Duration;

use rand::Rng;

use crate::error::{LeaseError, Result};

/// Doubling stops after this many steps; a cap reached later is reached anyway.
const MAX_DOUBLINGS: u32 = 20;

/// A retry schedule: a value, composable (bsm/redislock style).
///
/// For waiting on a held lease, `Backoff::exponential(min, max)` (the default: 100 ms to 1 s,
/// with jitter) or `Backoff::fixed(delay)`, optionally `.limit(attempts)`. The delays pace
/// *polling*, which a waiter only does when release notifications may be missed (see
/// [`crate::wait`]); delays below [`Backoff::MIN_POLL`] are raised to it. The limit caps the number of
/// acquire attempts of one `acquire` call, notified ones included, the first one too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    first: Duration,
    /// Never below `first`.
    cap: Duration,
    /// Each delay is drawn between half and all of its value.
    jitter: bool,
    /// No delay (jittered or not) is shorter.
    floor: Duration,
    max_attempts: Option<u32>,
}

impl Default for Backoff {
    /// Exponential from 100 ms to 1 s, no limit on attempts.
    fn default() -> Self {
        Self::exponential(Self::MIN_POLL, Duration::from_secs(1))
    }
}

impl Backoff {
    /// The shortest time between two polls of a waiter, 100 ms (notified wake-ups are not polls;
    /// see `crate::wait`).
    pub const MIN_POLL: Duration = Duration::from_millis(100);

    /// The delay before poll number `poll` (0-based) of a waiter: never below [`Self::MIN_POLL`].
    #[must_use]
    pub fn poll_delay(&self, poll: u32) -> Duration {
        self.delay(poll).max(Self::MIN_POLL)
    }

    /// `first`, doubling up to `cap` (taken as `first` if smaller), without jitter, floor or
    /// limit: the building block of every schedule.
    #[must_use]
    pub const fn doubling(first: Duration, cap: Duration) -> Self {
        let cap = if cap.as_nanos() < first.as_nanos() {
            first
        } else {
            cap
        };
        Self {
            first,
            cap,
            jitter: false,
            floor: Duration::ZERO,
            max_attempts: None,
        }
    }

    /// The same delay between polls every time.
    #[must_use]
    pub const fn fixed(delay: Duration) -> Self {
        Self::doubling(delay, delay)
    }

    /// `min`, doubling up to `max`; each delay is drawn between half and all of its value (but
    /// never below `min`), so that waiters that started together drift apart.
    #[must_use]
    pub const fn exponential(min: Duration, max: Duration) -> Self {
        Self::doubling(min, max).with_jitter().at_least(min)
    }

    /// A waiting schedule from a user's numbers, refused (not corrected) when out of range:
    /// `min == max` is a fixed delay, otherwise exponential from `min` to `max`, limited to
    /// `attempts` acquire attempts if given.
    ///
    /// # Errors
    /// `InvalidArgument` when `min` is below [`Self::MIN_POLL`], `max` is below `min`, or `attempts`
    /// is 0; the message says what to give instead.
    pub fn new(min: Duration, max: Duration, attempts: Option<u32>) -> Result<Self> {
        let secs = |d: Duration| d.as_secs_f64();
        if min < Self::MIN_POLL {
            return Err(LeaseError::InvalidArgument(format!(
                "backoff delay {}s is below {}s: a waiter never polls faster than every 0.1 s (it is woken by release notifications anyway)",
                secs(min),
                secs(Self::MIN_POLL)
            )));
        }
        if max < min {
            return Err(LeaseError::InvalidArgument(format!(
                "backoff max {}s is below its min {}s: give max >= min",
                secs(max),
                secs(min)
            )));
        }
        if attempts == Some(0) {
            return Err(LeaseError::InvalidArgument(
                "backoff limit 0 would never try: give at least 1 attempt".to_owned(),
            ));
        }
        let b = if min == max {
            Self::fixed(min)
        } else {
            Self::exponential(min, max)
        };
        Ok(match attempts {
            Some(n) => b.limit(n),
            None => b,
        })
    }

    /// The same schedule with each delay drawn between half and all of its value, so that
    /// many loops failing together retry apart.
    #[must_use]
    pub const fn with_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The same schedule, never waiting less than `floor` (after jitter).
    #[must_use]
    pub const fn at_least(self, floor: Duration) -> Self {
        Self { floor, ..self }
    }

    /// The same schedule, giving up after `attempts` acquire attempts (at least one is made).
    #[must_use]
    pub fn limit(self, attempts: u32) -> Self {
        Self {
            max_attempts: Some(attempts.max(1)),
            ..self
        }
    }

    /// The cap on attempts, if any.
    #[must_use]
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// Whether another attempt is allowed after `made` attempts.
    #[must_use]
    pub fn allows_another(&self, made: u32) -> bool {
        self.max_attempts.is_none_or(|max| made < max)
    }

    /// The delay before retry number `n` (0-based: the first retry after one failure is 0).
    #[must_use]
    pub fn delay(&self, n: u32) -> Duration {
        let d = self
            .first
            .saturating_mul(1 << n.min(MAX_DOUBLINGS))
            .min(self.cap);
        let d = if self.jitter {
            d.mul_f64(rand::rng().random_range(0.5..=1.0))
        } else {
            d
        };
        d.max(self.floor)
    }

    /// The successive delays of the schedule (endless; the attempt limit is the caller's).
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (0..).map(move |n| self.delay(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubling_without_jitter_is_exact_and_stops_at_its_cap() {
        let b = Backoff::doubling(250 * MS, Duration::from_secs(5));
        let got: Vec<_> = b.delays().take(8).collect();
        let want: Vec<_> = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]
            .map(|ms| ms * MS)
            .to_vec();
        assert_eq!(got, want);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn a_cap_below_the_first_delay_is_a_fixed_delay() {
        let b = Backoff::doubling(Duration::from_secs(2), MS);
        assert!(b.delays().take(5).all(|d| d == Duration::from_secs(2)));
        assert_eq!(b, Backoff::fixed(Duration::from_secs(2)));
    }

    #[test]
    fn jitter_draws_between_half_and_all_of_each_delay() {
        let b = Backoff::doubling(50 * MS, Duration::from_secs(2)).with_jitter();
        for _ in 0..50 {
            for (n, d) in b.delays().take(10).enumerate() {
                let full = (50 * MS * (1 << n)).min(Duration::from_secs(2));
                assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} of {full:?}");
            }
        }
        let spread: std::collections::BTreeSet<_> = (0..100).map(|_| b.delay(6)).collect();
        assert!(spread.len() > 50, "jittered delays must differ");
    }

    #[test]
    fn the_floor_holds_after_jitter() {
        let b = Backoff::exponential(200 * MS, Duration::from_secs(1));
        for _ in 0..50 {
            for (n, d) in b.delays().take(6).enumerate() {
                assert!(d >= 200 * MS && d <= Duration::from_secs(1), "{n}: {d:?}");
            }
        }
        assert_eq!(
            Backoff::fixed(MS).at_least(Backoff::MIN_POLL).delay(3),
            Backoff::MIN_POLL,
            "a floor above the schedule wins"
        );
    }

    #[test]
    fn limit_counts_attempts_including_the_first() {
        let b = Backoff::fixed(Duration::from_secs(1)).limit(3);
        assert_eq!(b.max_attempts(), Some(3));
        assert!(b.allows_another(2));
        assert!(!b.allows_another(3));
        assert!(Backoff::default().allows_another(u32::MAX - 1));
        assert_eq!(Backoff::default().limit(0).max_attempts(), Some(1));
    }

    #[test]
    fn new_builds_fixed_or_exponential_and_refuses_out_of_range_values() {
        let s = Duration::from_secs;
        assert_eq!(
            Backoff::new(s(1), s(1), None).unwrap(),
            Backoff::fixed(s(1))
        );
        assert_eq!(
            Backoff::new(Backoff::MIN_POLL, s(2), Some(4)).unwrap(),
            Backoff::exponential(Backoff::MIN_POLL, s(2)).limit(4)
        );
        let message = |r: Result<Backoff>| match r {
            Err(LeaseError::InvalidArgument(m)) => m,
            other => panic!("not refused as an invalid argument: {other:?}"),
        };
        assert_eq!(
            message(Backoff::new(50 * MS, s(1), None)),
            "backoff delay 0.05s is below 0.1s: a waiter never polls faster than every 0.1 s (it is woken by release notifications anyway)"
        );
        assert_eq!(
            message(Backoff::new(s(2), s(1), None)),
            "backoff max 1s is below its min 2s: give max >= min"
        );
        assert_eq!(
            message(Backoff::new(s(1), s(2), Some(0))),
            "backoff limit 0 would never try: give at least 1 attempt"
        );
    }
}
