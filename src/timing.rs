//! The one rule for a lease's timing: how long a lease may last and how often it must renew.
//!
//! Both ways of setting them ask this module: the API ([`crate::LeaseOptions`] and
//! [`crate::ClientOptions`], checked when a lease is acquired, so Python's keyword arguments
//! too) and the configuration (`DefaultLeaseDuration` and `AutoRenewInterval` in
//! `appsettings.json`, checked when it is loaded). Each phrases a refusal in its own words (an
//! argument, or a key with the file it came from); the limits are the same.
//!
//! The renewal interval must leave room for a retry: a renewal that fails (a dropped packet, a
//! failover) is retried until the lease's deadline, so the first attempt has to go out at least
//! `max(10 % of the duration, min(1 s, half of it))` before that deadline
//! ([`max_renew_interval`]). An interval shorter than [`MIN_RENEW_INTERVAL`] would renew in a
//! busy loop.

use std::time::Duration;

/// Shortest lease duration accepted: 10 ms.
pub const MIN_DURATION: Duration = Duration::from_millis(10);

/// Longest lease duration accepted: a year. Longer is almost surely a unit mistake.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Shortest renewal interval accepted: 5 ms; shorter would renew in a busy loop. It equals
/// [`max_renew_interval`] of [`MIN_DURATION`], so every accepted duration has an interval.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(5);

/// Why a duration or a renewal interval is refused. The caller names the value (an argument or
/// a configuration key) and the fix in its own words ([`default_renew_interval`] is the interval
/// to suggest); [`Refusal::limit`] says which limit the value breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The lease duration is outside [`MIN_DURATION`]..=[`MAX_DURATION`].
    DurationOutOfRange,
    /// The interval is below [`MIN_RENEW_INTERVAL`].
    IntervalTooShort,
    /// The interval leaves no room for a retry: it is above this maximum
    /// ([`max_renew_interval`] of the duration).
    IntervalTooLong {
        /// The longest interval accepted for this duration.
        max: Duration,
    },
}

impl Refusal {
    /// The limit broken, in words (`at most 27.000 s (...)`), with durations formatted by
    /// `fmt` (seconds for the API, TimeSpan for the configuration).
    #[must_use]
    pub fn limit(self, fmt: impl Fn(Duration) -> String) -> String {
        match self {
            Self::DurationOutOfRange => format!(
                "a lease lasts between {} and {} (one year)",
                fmt(MIN_DURATION),
                fmt(MAX_DURATION)
            ),
            Self::IntervalTooShort => format!(
                "the renewal interval must be at least {} (shorter renews in a busy loop)",
                fmt(MIN_RENEW_INTERVAL)
            ),
            Self::IntervalTooLong { max } => format!(
                "it leaves no room for a retry before the lease expires: the interval must be at \
                 most {} (the duration minus 10 %, and minus at least 1 s or half of it)",
                fmt(max)
            ),
        }
    }
}

/// The longest renewal interval that still leaves room for a retry before a lease of `duration`
/// expires: `duration − max(10 % of duration, min(1 s, duration / 2))`.
///
/// 30 s → 27 s, 60 s → 54 s, 5 s → 4 s, 1 s → 500 ms, 10 ms → 5 ms.
#[must_use]
pub fn max_renew_interval(duration: Duration) -> Duration {
    let room = (duration / 10).max(Duration::from_secs(1).min(duration / 2));
    duration.saturating_sub(room)
}

/// The renewal interval used when none is given: two thirds of the duration (20 s of 30 s),
/// or [`max_renew_interval`] where that is shorter (leases under 3 s: half of the duration).
#[must_use]
pub fn default_renew_interval(duration: Duration) -> Duration {
    (duration * 2 / 3).min(max_renew_interval(duration))
}

/// A duration in seconds for a message, to the microsecond, without trailing zeros: `27 s`,
/// `0.5 s`, `0.01 s`.
#[must_use]
pub fn seconds(d: Duration) -> String {
    let micros = d.as_micros();
    let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        format!("{whole} s")
    } else {
        let frac = format!("{frac:06}");
        format!("{whole}.{} s", frac.trim_end_matches('0'))
    }
}

/// Whether a lease may last `duration`.
///
/// # Errors
/// [`Refusal::DurationOutOfRange`].
pub fn check_duration(duration: Duration) -> Result<(), Refusal> {
    if (MIN_DURATION..=MAX_DURATION).contains(&duration) {
        Ok(())
    } else {
        Err(Refusal::DurationOutOfRange)
    }
}

/// Whether a lease of `duration` may renew every `interval`.
///
/// # Errors
/// [`Refusal::IntervalTooShort`] or [`Refusal::IntervalTooLong`].
pub fn check_renew_interval(duration: Duration, interval: Duration) -> Result<(), Refusal> {
    let max = max_renew_interval(duration);
    if interval < MIN_RENEW_INTERVAL {
        Err(Refusal::IntervalTooShort)
    } else if interval > max {
        Err(Refusal::IntervalTooLong { max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_maximum_leaves_room_for_a_retry() {
        for (duration, max) in [
            (30_000, 27_000),
            (60_000, 54_000),
            (5_000, 4_000),
            (3_000, 2_000),
            (1_000, 500),
            (200, 100),
            (10, 5),
            (3_600_000, 3_240_000),
        ] {
            assert_eq!(max_renew_interval(ms(duration)), ms(max), "{duration} ms");
        }
    }

    #[test]
    fn accepted_and_refused_pairs() {
        let accepted = [
            (30_000, 20_000),
            (30_000, 27_000),
            (5_000, 4_000),
            (3_000, 500),
            (1_000, 500),
            (1_000, 200),
            (10, 5),
        ];
        for (d, i) in accepted {
            assert_eq!(
                check_renew_interval(ms(d), ms(i)),
                Ok(()),
                "{d} ms / {i} ms"
            );
        }
        let too_long = [
            (30_000, 29_500),
            (30_000, 27_001),
            (1_000, 900),
            (1_000, 501),
            (10_000, 10_000),
            (5_000, 6_000),
        ];
        for (d, i) in too_long {
            assert_eq!(
                check_renew_interval(ms(d), ms(i)),
                Err(Refusal::IntervalTooLong {
                    max: max_renew_interval(ms(d))
                }),
                "{d} ms / {i} ms"
            );
        }
        for (d, i) in [(30_000, 4), (1_000, 0)] {
            assert_eq!(
                check_renew_interval(ms(d), ms(i)),
                Err(Refusal::IntervalTooShort),
                "{d} ms / {i} ms"
            );
        }
    }

    #[test]
    fn the_default_interval_is_always_accepted() {
        assert_eq!(default_renew_interval(ms(30_000)), ms(20_000));
        assert_eq!(default_renew_interval(ms(3_000)), ms(2_000));
        assert_eq!(default_renew_interval(ms(1_000)), ms(500));
        assert_eq!(default_renew_interval(MIN_DURATION), MIN_RENEW_INTERVAL);
        for d in (10..5_000)
            .step_by(7)
            .chain([MAX_DURATION.as_secs() * 1000])
        {
            assert_eq!(
                check_renew_interval(ms(d), default_renew_interval(ms(d))),
                Ok(()),
                "{d} ms"
            );
        }
    }

    #[test]
    fn durations_between_10_ms_and_a_year() {
        assert_eq!(check_duration(MIN_DURATION), Ok(()));
        assert_eq!(check_duration(MAX_DURATION), Ok(()));
        assert_eq!(check_duration(ms(9)), Err(Refusal::DurationOutOfRange));
        assert_eq!(
            check_duration(MAX_DURATION + ms(1)),
            Err(Refusal::DurationOutOfRange)
        );
    }

    #[test]
    fn seconds_are_written_without_trailing_zeros() {
        assert_eq!(seconds(ms(27_000)), "27 s");
        assert_eq!(seconds(ms(500)), "0.5 s");
        assert_eq!(seconds(ms(10)), "0.01 s");
        assert_eq!(seconds(Duration::from_micros(1_000_001)), "1.000001 s");
        assert_eq!(seconds(MAX_DURATION), "31536000 s");
    }

    #[test]
    fn messages_name_the_limit() {
        let secs = seconds;
        let r = check_renew_interval(ms(30_000), ms(29_500)).unwrap_err();
        assert!(r.limit(secs).contains("at most 27 s"), "{}", r.limit(secs));
        let r = check_renew_interval(ms(1_000), ms(900)).unwrap_err();
        assert!(r.limit(secs).contains("at most 0.5 s"));
        let r = check_renew_interval(ms(1_000), ms(1)).unwrap_err();
        assert!(r.limit(secs).contains("at least 0.005 s"));
        let r = check_duration(ms(1)).unwrap_err();
        assert!(r.limit(secs).contains("between 0.01 s and"));
    }
}
