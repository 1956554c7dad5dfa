//! Waiting to acquire: how long to sleep between attempts while someone else holds the lease.
//!
//! A [`Backoff`] is a value (bsm/redislock style): fixed, or exponential with jitter, each with an
//! optional cap on attempts. A waiter also never sleeps past the holder's remaining TTL (plus
//! jitter, so that many waiters do not stampede at the same instant), because the lease is free
//! by then if the holder died.

use std::time::Duration;

use rand::Rng;

/// A retry schedule for waiting on a held lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `min`, doubling up to `max`, each delay drawn between half and all of its value.
    Exponential {
        /// First delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Default for Backoff {
    /// Exponential from 100 ms to 1 s: never polls faster than every 100 ms.
    fn default() -> Self {
        Self::Exponential {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay before attempt number `attempt` (0-based), before the TTL cap.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Exponential { min, max } => {
                let d = min
                    .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
                    .unwrap_or(max)
                    .min(max);
                d.mul_f64(rand::rng().random_range(0.5..=1.0))
                    .max(min.min(d))
            }
        }
    }

    /// The delay before the next attempt, given the holder's remaining TTL (if known).
    #[must_use]
    pub fn next_delay(&self, attempt: u32, holder_ttl: Option<Duration>) -> Duration {
        let d = self.delay(attempt);
        match holder_ttl {
            // Wake a little after the holder's expiry, spread over up to 10% (at most 50 ms).
            Some(ttl) if ttl < d => {
                let spread = (ttl / 10).min(Duration::from_millis(50));
                ttl + spread.mul_f64(rand::rng().random_range(0.0..=1.0)) + Duration::from_millis(1)
            }
            _ => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_grows_to_its_cap_and_never_below_min() {
        let b = Backoff::default();
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d >= Duration::from_millis(100), "{d:?}");
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        assert!(b.delay(10) >= Duration::from_millis(500));
    }

    #[test]
    fn waiter_wakes_soon_after_the_holders_ttl() {
        let b = Backoff::Fixed(Duration::from_secs(1));
        let d = b.next_delay(0, Some(Duration::from_millis(200)));
        assert!(
            d > Duration::from_millis(200) && d <= Duration::from_millis(221),
            "{d:?}"
        );
        assert_eq!(
            b.next_delay(0, Some(Duration::from_secs(5))),
            Duration::from_secs(1)
        );
    }
}
