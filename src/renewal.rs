//! The renewal task of one lease: cadence, retries with backoff, the deadline timer, and loss.
//!
//! One task per lease runs until the lease ends. With auto-renew on it renews every interval
//! (measured from when the previous successful request was *sent*); a failed renewal is retried
//! with exponential backoff and jitter, never past the deadline. With auto-renew off it only
//! watches the deadline (a manual `renew` moves it). At the deadline, or as soon as the store
//! answers that another lease id holds the name or that it is gone, the lease is lost, once.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::error::{LeaseError, LostReason};
use crate::lease::{LeaseEnd, Shared};

/// First retry delay after a failed renewal.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest delay between two renewal retries.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Starts the task and registers its abort handle with the lease.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    renew_interval: Option<Duration>,
    acquired_sent: Instant,
) {
    let task = tokio::spawn(run(Arc::clone(shared), renew_interval, acquired_sent));
    let mut st = shared.lock();
    if st.end.is_some() {
        task.abort();
    } else {
        st.renewal_task = Some(task.abort_handle());
    }
}

fn deadline_of(shared: &Shared) -> Option<Instant> {
    let st = shared.lock();
    st.end.is_none().then_some(st.deadline)
}

async fn run(shared: Arc<Shared>, renew_interval: Option<Duration>, acquired_sent: Instant) {
    let mut next = renew_interval.map(|i| acquired_sent + i);
    let mut retry = RETRY_MIN;
    let mut failures_in_row = 0u32;
    loop {
        let Some(deadline) = deadline_of(&shared) else {
            return;
        };
        let wake = next.map_or(deadline, |n| n.min(deadline));
        sleep_until(wake).await;
        let Some(deadline) = deadline_of(&shared) else {
            return;
        };
        let now = Instant::now();
        if now >= deadline {
            shared.end(LeaseEnd::Lost(LostReason::Expired));
            return;
        }
        let Some(interval) = renew_interval else {
            // No auto-renew: a manual renewal moved the deadline; wait for the new one.
            continue;
        };
        if next.is_some_and(|n| now < n) {
            continue;
        }
        let t_sent = Instant::now();
        let outcome = timeout_at(deadline, shared.renew_once()).await;
        match outcome {
            Ok(Ok(())) => {
                tracing::debug!(lease = %shared.name, outcome = "renewed", "lease renewed");
                retry = RETRY_MIN;
                failures_in_row = 0;
                next = Some(t_sent + interval);
            }
            Ok(Err(LeaseError::Lost { .. })) => return,
            Ok(Err(e)) => {
                failures_in_row = failures_in_row.saturating_add(1);
                let delay = jitter(retry);
                let retry_at = Instant::now() + delay;
                let will_retry = retry_at < deadline;
                shared.renewal_failed(failures_in_row, &e, will_retry);
                tracing::warn!(lease = %shared.name, outcome = "failed", attempt = failures_in_row, will_retry, error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "lease renewal failed; retrying until the deadline");
                retry = (retry * 2).min(RETRY_MAX);
                next = Some(retry_at);
            }
            Err(_elapsed) => {
                failures_in_row = failures_in_row.saturating_add(1);
                let e = LeaseError::backend(
                    crate::error::BackendErrorKind::Timeout,
                    "the renewal did not complete before the lease's deadline",
                );
                shared.renewal_failed(failures_in_row, &e, false);
                tracing::warn!(lease = %shared.name, outcome = "failed", attempt = failures_in_row, will_retry = false, error = %e, "lease renewal failed at the deadline");
                shared.end(LeaseEnd::Lost(LostReason::Expired));
                return;
            }
        }
    }
}

/// Full jitter between half and all of `d`, so that many leases retrying at once spread out.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.5..=1.0);
    d.mul_f64(f)
}
