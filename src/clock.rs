//! Monotonic deadline arithmetic: when a holder must stop trusting its lease.
//!
//! The server's TTL decides who may acquire; the holder's own deadline decides when it must stop
//! working under the lease. The deadline is measured from `t_sent`, taken on the monotonic clock
//! *before* the request left, so however long the request and reply took, the holder's deadline
//! falls no later than the server's expiry. The drift margin (1% of the duration plus a few
//! milliseconds) covers the two clocks running at slightly different rates.

use std::time::Duration;

use tokio::time::Instant;

/// Fixed part of the drift margin.
pub const MIN_DRIFT: Duration = Duration::from_millis(3);

/// The safety margin subtracted from a lease's duration: 1% of it plus [`MIN_DRIFT`].
#[must_use]
pub fn drift(duration: Duration) -> Duration {
    duration / 100 + MIN_DRIFT
}

/// The local deadline of a lease granted or renewed by a request sent at `t_sent`.
#[must_use]
pub fn deadline(t_sent: Instant, duration: Duration) -> Instant {
    t_sent + duration.saturating_sub(drift(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_before_server_expiry_by_the_drift() {
        let t = Instant::now();
        let d = Duration::from_secs(30);
        assert_eq!(deadline(t, d), t + Duration::from_millis(30_000 - 300 - 3));
    }

    #[test]
    fn tiny_durations_never_go_before_t_sent() {
        let t = Instant::now();
        assert_eq!(deadline(t, Duration::from_millis(1)), t);
    }
}
