//! The lease / renewal / client state machine under paused tokio time, on an in-memory store
//! with injected faults (`common/fault_store.rs`): renewal retries and expiry, the deadline
//! arithmetic, loss reported exactly once, release at exit and on drop, late replies, cancelled
//! acquires, proclaims, waiting and observing.
//!
//! Every test runs on a current-thread runtime whose clock is paused: time moves only when every
//! task is idle, straight to the next timer, so the instants asserted below are exact (up to the
//! timer's millisecond) and independent of the machine's load. One test (a proclaim by a
//! process that was stopped past its deadline) blocks its runtime's thread on real time
//! instead, since on paused time the deadline timer would always run first.

#[path = "common/fault_store.rs"]
mod fault_store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use distributed_leasing::clock;
use distributed_leasing::lease::LeaseEnd;
use distributed_leasing::{
    BackendErrorKind, ClientOptions, Lease, LeaseClient, LeaseError, LeaseEvent, LeaseEvents,
    LeaseOptions, LostReason, TryAcquire,
};
use fault_store::{Fault, FaultStore, Op};
use tokio::time::{sleep, sleep_until, Instant};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client over `store` whose leases last `duration` and renew every `interval` (`None`: no
/// auto-renewal).
fn client(store: &Arc<FaultStore>, duration: Duration, interval: Option<Duration>) -> LeaseClient {
    LeaseClient::with_store(
        store.dyn_store(),
        ClientOptions {
            default_duration: duration,
            renew_interval: interval,
            auto_renew: interval.is_some(),
            ..ClientOptions::default()
        },
    )
}

async fn take(client: &LeaseClient, name: &str) -> Lease {
    match client.try_acquire(name, &LeaseOptions::default()).await {
        Ok(TryAcquire::Acquired(lease)) => lease,
        other => panic!("expected to acquire {name}, got {other:?}"),
    }
}

/// Awaits `fut`, failing the test if it takes more than `limit` of (paused) time.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// Every event until the stream ends (it ends after the lease's end).
async fn drain(mut events: LeaseEvents) -> Vec<LeaseEvent> {
    within(Duration::from_secs(3600), async {
        let mut all = Vec::new();
        while let Some(e) = events.next().await {
            all.push(e);
        }
        all
    })
    .await
}

/// The events already delivered, without waiting for more.
fn drain_now(mut events: LeaseEvents) -> Vec<LeaseEvent> {
    let mut all = Vec::new();
    while let Some(Some(e)) = futures_util::FutureExt::now_or_never(events.next()) {
        all.push(e);
    }
    all
}

fn lost(reason: LostReason) -> LeaseEvent {
    LeaseEvent::Lost { reason }
}

fn assert_near(at: Instant, expected: Instant, what: &str) {
    // The timer wheel has a resolution of one millisecond.
    assert!(
        at >= expected && at <= expected + ms(1),
        "{what}: at {:?} after the expected instant (negative: before)",
        at.checked_duration_since(expected)
            .map_or_else(|| format!("-{:?}", expected - at), |d| format!("{d:?}"))
    );
}

// ---------------------------------------------------------------------------------------------
// Renewal

#[tokio::test(start_paused = true)]
async fn renewals_follow_the_interval_from_when_each_renewal_was_sent() {
    let store = FaultStore::new();
    // Every renewal reply takes 300 ms: the next one must still be due `interval` after the
    // previous one was *sent*, not after its reply came back.
    store.set_standing(Op::Renew, Some(Fault::slow_reply(ms(300))));
    let c = client(&store, ms(3000), Some(ms(1000)));
    let t0 = Instant::now();
    let lease = take(&c, "cadence").await;
    let events = lease.events();

    sleep_until(t0 + ms(5500)).await;

    let sent = store.call_times(Op::Renew);
    assert_eq!(sent.len(), 5, "one renewal per second: {sent:?}");
    assert_eq!(
        sent[0],
        t0 + ms(1000),
        "the first renewal is due t_sent + interval"
    );
    for pair in sent.windows(2) {
        let gap = pair[1] - pair[0];
        // At most a quarter of the interval early (batching), never late by the reply's 300 ms.
        assert!(gap >= ms(750) && gap <= ms(1000), "renewal gap {gap:?}");
    }
    assert_eq!(lease.renewals(), 5);
    assert!(!lease.is_lost());
    // The deadline runs from the last renewal's sending, not from its reply.
    let last = *sent.last().unwrap();
    assert_eq!(
        lease.expires_in(),
        clock::deadline(last, ms(3000)) - Instant::now()
    );
    // ... and falls before the store's expiry of the same renewal.
    let ttl = store.mem().holder("cadence").unwrap().ttl.unwrap();
    assert!(
        lease.expires_in() < ttl,
        "{:?} vs {ttl:?}",
        lease.expires_in()
    );

    assert!(lease.release().await.unwrap());
    let got = drain(events).await;
    let want: Vec<LeaseEvent> = (1..=5)
        .map(|renewals| LeaseEvent::Renewed { renewals })
        .chain([LeaseEvent::Released])
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn failed_renewals_are_retried_until_the_deadline_then_the_lease_expires() {
    let store = FaultStore::new();
    store.set_standing(Op::Renew, Some(Fault::error(BackendErrorKind::Unreachable)));
    let duration = ms(3000);
    let c = client(&store, duration, Some(ms(1000)));
    let t0 = Instant::now();
    let lease = take(&c, "flaky").await;
    let events = lease.events();

    let end = within(Duration::from_secs(60), lease.ended()).await;
    let lost_at = Instant::now();
    assert_eq!(end, LeaseEnd::Lost(LostReason::Expired));
    assert_near(
        lost_at,
        clock::deadline(t0, duration),
        "loss at the deadline",
    );
    // The local deadline comes before the store's expiry: the store still has the lease.
    assert!(store.mem().holder("flaky").is_some());

    let got = drain(events).await;
    let (last, failures) = got.split_last().unwrap();
    assert_eq!(*last, lost(LostReason::Expired));
    let n = failures.len();
    assert!(
        n >= 2,
        "retried, not given up at the first failure: {got:?}"
    );
    let mut retries = Vec::new();
    for (i, e) in failures.iter().enumerate() {
        let LeaseEvent::RenewalFailed {
            attempt,
            will_retry,
            error,
        } = e
        else {
            panic!("expected RenewalFailed, got {e:?}");
        };
        assert_eq!(*attempt as usize, i + 1, "attempts count up: {got:?}");
        assert!(error.contains("Unreachable"), "{error}");
        retries.push(*will_retry);
    }
    // `will_retry` is true until the retries run into the deadline, then false. (Exactly one
    // false, the last, is what it should be: see
    // `will_retry_false_is_the_last_attempt_before_the_deadline`.)
    assert!(retries[0], "{got:?}");
    assert!(!retries[n - 1], "{got:?}");
    assert!(retries.windows(2).all(|w| w[0] || !w[1]), "{got:?}");
    assert_eq!(store.calls(Op::Renew), n, "one event per attempt");
    assert_eq!(lease.renewal_failures(), n as u64);
    assert_eq!(lease.renewals(), 0);
    let sent = store.call_times(Op::Renew);
    assert_eq!(sent[0], t0 + ms(1000));
    assert!(*sent.last().unwrap() < lost_at);

    // Nothing more is sent for a lost lease.
    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Renew), n);
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    assert_eq!(lease.expires_in(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_fails_then_succeeds_keeps_the_lease() {
    let store = FaultStore::new();
    store.push(Op::Renew, Fault::error(BackendErrorKind::Unreachable));
    // Applied by the store, but the reply is lost: it must not count as a renewal.
    store.push(Op::Renew, Fault::lost_reply(BackendErrorKind::Timeout));
    let duration = ms(3000);
    let c = client(&store, duration, Some(ms(1000)));
    let t0 = Instant::now();
    let lease = take(&c, "recovers").await;
    let mut events = lease.events();

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            within(Duration::from_secs(10), events.next())
                .await
                .unwrap(),
        );
    }
    let sent = store.call_times(Op::Renew);
    assert_eq!(sent.len(), 3);
    assert!(
        matches!(
            got[..],
            [
                LeaseEvent::RenewalFailed {
                    attempt: 1,
                    will_retry: true,
                    ..
                },
                LeaseEvent::RenewalFailed {
                    attempt: 2,
                    will_retry: true,
                    ..
                },
                LeaseEvent::Renewed { renewals: 1 },
            ]
        ),
        "{got:?}"
    );
    assert_eq!(lease.renewals(), 1);
    assert_eq!(lease.renewal_failures(), 2);
    // The deadline moved to the successful renewal's t_sent + duration - drift ...
    assert_eq!(
        lease.expires_in(),
        clock::deadline(sent[2], duration) - Instant::now()
    );
    // The next renewal is due `interval` after the success was sent, at most a quarter early.
    sleep_until(sent[2] + ms(749)).await;
    assert_eq!(store.calls(Op::Renew), 3);
    sleep_until(sent[2] + ms(1001)).await;
    assert_eq!(store.calls(Op::Renew), 4);
    assert_eq!(lease.renewals(), 2);
    // The first deadline passes without loss.
    sleep_until(clock::deadline(t0, duration) + ms(10)).await;
    assert!(!lease.is_lost());
}

/// Instant failures (a refused connection) must not turn into a burst of retries: each retry
/// waits its backoff (the first 25-50 ms, then doubling, with jitter, up to 2 s).
#[tokio::test(start_paused = true)]
async fn renewal_retries_back_off() {
    let store = FaultStore::new();
    store.set_standing(Op::Renew, Some(Fault::error(BackendErrorKind::Unreachable)));
    let c = client(&store, ms(3000), Some(ms(1000)));
    let lease = take(&c, "backoff").await;
    let _ = within(Duration::from_secs(60), lease.ended()).await;
    let sent = store.call_times(Op::Renew);
    let gaps: Vec<Duration> = sent.windows(2).map(|p| p[1] - p[0]).collect();
    assert!(
        gaps[0] >= ms(25) && gaps[0] <= ms(51),
        "first retry: {gaps:?}"
    );
    for g in gaps.windows(2) {
        // Each delay is drawn from [d/2, d] with d doubling: never shorter than the one before.
        assert!(g[1] + ms(1) >= g[0] && g[1] <= ms(2001), "{gaps:?}");
    }
}

/// A `RenewalFailed { will_retry: false }` promises that no other attempt is made before the
/// deadline: consumers may start shutting down on it.
#[tokio::test(start_paused = true)]
async fn will_retry_false_is_the_last_attempt_before_the_deadline() {
    let store = FaultStore::new();
    let c = client(&store, ms(1000), Some(ms(500)));
    let t0 = Instant::now();
    let lease = take(&c, "last-try").await;
    let events = lease.events();
    // Another lease of the same client, not renewed, whose deadline (977 ms) wakes the
    // scheduler between the failure and the deadline of "last-try".
    let waker = c
        .try_acquire(
            "waker",
            &LeaseOptions {
                duration: Some(ms(990)),
                auto_renew: Some(false),
                ..LeaseOptions::default()
            },
        )
        .await
        .unwrap();
    // The first renewal of "last-try" (sent at 500 ms) fails at 965 ms: its retry (25-50 ms
    // later) would fall after the deadline (987 ms), so the failure says will_retry false.
    store.push_for(
        Op::Renew,
        "last-try",
        Fault::error(BackendErrorKind::Unreachable).replying_at(t0 + ms(965)),
    );
    sleep_until(t0 + ms(1100)).await;
    drop(waker);
    let got = drain_now(events);
    assert!(
        matches!(
            got[..],
            [
                LeaseEvent::RenewalFailed {
                    attempt: 1,
                    will_retry: false,
                    ..
                },
                LeaseEvent::Lost {
                    reason: LostReason::Expired
                },
            ]
        ),
        "{got:?}"
    );
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    assert_eq!(store.calls_for(Op::Renew, "last-try"), 1);
}

/// Leases renewed in one batch: a slow reply for one of them must not keep the others' successful
/// renewals from counting until their own deadlines pass.
#[tokio::test(start_paused = true)]
async fn a_slow_renewal_does_not_hold_up_the_others_in_its_batch() {
    let store = FaultStore::new();
    let c = client(&store, ms(1000), Some(ms(500)));
    // Both due at 500 ms, so renewed in one batch; the one of "slow" answers after 2 s.
    let slow = c
        .try_acquire(
            "slow",
            &LeaseOptions {
                duration: Some(ms(10_000)),
                ..LeaseOptions::default()
            },
        )
        .await
        .unwrap();
    let quick = take(&c, "quick").await;
    store.push_for(Op::Renew, "slow", Fault::slow_reply(ms(2000)));
    let events = quick.events();

    // Past the deadline of the acquisition (987 ms), before that of the renewal (1487 ms).
    sleep(ms(1200)).await;
    assert!(
        store.calls_for(Op::Renew, "quick") >= 1,
        "renewed at 500 ms (and on schedule after)"
    );
    assert!(
        store.mem().holder("quick").is_some(),
        "the store renewed it"
    );
    let got = drain_now(events);
    assert_eq!(quick.lost_reason(), None, "events: {got:?}");
    assert!(quick.renewals() >= 1, "events: {got:?}");
    drop(slow);
}

// ---------------------------------------------------------------------------------------------
// Deadline arithmetic

#[tokio::test(start_paused = true)]
async fn a_slow_acquire_reply_shortens_the_local_validity() {
    let store = FaultStore::new();
    store.push(Op::Acquire, Fault::slow_reply(ms(2000)));
    let duration = ms(10_000);
    let c = client(&store, duration, None);
    let t_sent = Instant::now();
    let lease = take(&c, "slow-acquire").await;
    assert_eq!(Instant::now(), t_sent + ms(2000), "the reply took 2 s");

    // deadline = t_sent + duration - drift, drift = 1% + 3 ms: 10 s - 103 ms, of which 2 s
    // were spent waiting for the reply.
    let deadline = t_sent + ms(10_000 - 103);
    assert_eq!(clock::deadline(t_sent, duration), deadline);
    assert_eq!(lease.expires_in(), ms(7897));

    sleep_until(deadline - ms(1)).await;
    assert!(!lease.is_lost(), "still valid 1 ms before the deadline");
    assert_eq!(lease.expires_in(), ms(1));

    let end = within(Duration::from_secs(1), lease.ended()).await;
    assert_eq!(end, LeaseEnd::Lost(LostReason::Expired));
    assert_near(Instant::now(), deadline, "loss");
    // The store (which started its TTL when it applied the acquire) still has it.
    let ttl = store.mem().holder("slow-acquire").unwrap().ttl.unwrap();
    assert_eq!(Some(ttl), ms(103).checked_sub(Instant::now() - deadline));
}

#[tokio::test(start_paused = true)]
async fn a_late_acquire_request_still_counts_from_when_it_was_sent() {
    let store = FaultStore::new();
    // The request reaches the store after 1.5 s: the store's TTL runs from then, the holder's
    // deadline from before the request left.
    store.push(Op::Acquire, Fault::late(ms(1500)));
    let duration = ms(10_000);
    let c = client(&store, duration, None);
    let t_sent = Instant::now();
    let lease = take(&c, "late-acquire").await;
    assert_eq!(lease.expires_in(), ms(10_000 - 103 - 1500));
    assert_eq!(
        store.mem().holder("late-acquire").unwrap().ttl,
        Some(duration)
    );
    let end = within(Duration::from_secs(20), lease.ended()).await;
    assert_eq!(end, LeaseEnd::Lost(LostReason::Expired));
    assert_near(Instant::now(), clock::deadline(t_sent, duration), "loss");
}

#[tokio::test(start_paused = true)]
async fn a_slow_renewal_reply_moves_the_deadline_from_when_the_renewal_was_sent() {
    let store = FaultStore::new();
    store.push(Op::Renew, Fault::slow_reply(ms(1000)));
    let duration = ms(10_000);
    let c = client(&store, duration, Some(ms(5000)));
    let t0 = Instant::now();
    let lease = take(&c, "slow-renew").await;
    let mut events = lease.events();
    assert_eq!(
        within(Duration::from_secs(10), events.next()).await,
        Some(LeaseEvent::Renewed { renewals: 1 })
    );
    assert_eq!(
        Instant::now(),
        t0 + ms(6000),
        "sent at 5 s, answered at 6 s"
    );
    assert_eq!(lease.expires_in(), ms(5000 + 10_000 - 103 - 6000));
}

/// A renewal sent before the deadline whose answer comes after it: the lease was already lost
/// (and may have been seen lost: `is_lost` is read against the deadline), so the late success
/// does not bring it back; the lease ends as expired and `renew()` says so.
#[tokio::test(start_paused = true)]
async fn a_renewal_answered_after_the_deadline_never_brings_the_lease_back() {
    let store = FaultStore::new();
    let duration = ms(1000);
    let c = client(&store, duration, None);
    let lease = take(&c, "late-renew").await;
    sleep(ms(500)).await;
    store.push(Op::Renew, Fault::slow_reply(ms(800)));
    let renew = lease.renew();
    tokio::pin!(renew);
    // The deadline (about 987 ms after the acquire) passes while the renewal is on its way.
    tokio::select! {
        _ = &mut renew => panic!("answered before the deadline"),
        () = sleep(ms(600)) => {}
    }
    assert!(lease.is_lost(), "past the deadline");
    let answer = within(Duration::from_secs(5), renew).await;
    assert!(
        matches!(
            answer,
            Err(LeaseError::Lost {
                reason: LostReason::Expired,
                ..
            })
        ),
        "{answer:?}"
    );
    assert!(lease.is_lost());
    assert_eq!(lease.end(), Some(LeaseEnd::Lost(LostReason::Expired)));
    assert_eq!(lease.expires_in(), Duration::ZERO);
}

// ---------------------------------------------------------------------------------------------
// Loss, exactly once

#[tokio::test(start_paused = true)]
async fn a_renewal_finding_another_holder_loses_the_lease_once_as_held_by_other() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));
    let lease = take(&c, "stolen").await;
    let early = lease.events();
    let ended = lease.ended();

    // The store loses the record and another process takes the name.
    sleep(ms(500)).await;
    assert!(store.mem().wipe("stolen"));
    assert!(matches!(
        store
            .mem()
            .take_as("stolen", "intruder", Duration::from_secs(60)),
        distributed_leasing::store::AcquireOutcome::Acquired { fencing_token: 2 }
    ));

    let end = within(Duration::from_secs(5), ended).await;
    assert_eq!(end, LeaseEnd::Lost(LostReason::HeldByOther));
    assert_eq!(store.calls(Op::Renew), 1, "found out at the first renewal");
    assert_eq!(
        within(ms(1), lease.ended()).await,
        end,
        "ended() resolves again, the same"
    );
    assert_eq!(drain(early).await, [lost(LostReason::HeldByOther)]);
    assert_eq!(drain(lease.events()).await, [lost(LostReason::HeldByOther)]);
    assert_eq!(lease.lost_reason(), Some(LostReason::HeldByOther));
    assert!(matches!(
        lease.renew().await,
        Err(LeaseError::Lost {
            reason: LostReason::HeldByOther,
            ..
        })
    ));

    // Nothing more is sent for it, and releasing or dropping it leaves the new holder alone.
    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Renew), 1);
    let _ = lease.release().await;
    drop(lease);
    sleep(ms(10)).await;
    assert_eq!(store.mem().holder("stolen").unwrap().lease_id, "intruder");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_finding_no_key_loses_the_lease_once_as_missing() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));
    let lease = take(&c, "wiped").await;
    let events = lease.events();
    assert!(store.mem().wipe("wiped"));

    let end = within(Duration::from_secs(5), lease.ended()).await;
    assert_eq!(end, LeaseEnd::Lost(LostReason::Missing));
    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Renew), 1);
    assert_eq!(drain(events).await, [lost(LostReason::Missing)]);
    assert_eq!(lease.end(), Some(LeaseEnd::Lost(LostReason::Missing)));
    // Not resurrected by anything that follows, not even a fresh holder under another id.
    let other = take(&client(&store, ms(3000), None), "wiped").await;
    assert_eq!(other.fencing_token(), 2);
    assert_eq!(lease.lost_reason(), Some(LostReason::Missing));
}

#[tokio::test(start_paused = true)]
async fn a_renewal_still_on_the_wire_at_the_deadline_fails_it_and_its_late_success_is_ignored() {
    let store = FaultStore::new();
    // Sent at 500 ms; reaches the store at 995 ms, after the local deadline (987 ms) but before
    // the store's expiry (1000 ms): the store renews, the holder has already given up.
    store.push(Op::Renew, Fault::late(ms(495)));
    let duration = ms(1000);
    let c = client(&store, duration, Some(ms(500)));
    let t0 = Instant::now();
    let lease = take(&c, "late-renewal").await;
    let events = lease.events();

    let end = within(Duration::from_secs(5), lease.ended()).await;
    assert_eq!(end, LeaseEnd::Lost(LostReason::Expired));
    assert_near(Instant::now(), t0 + ms(987), "loss at the deadline");

    sleep_until(t0 + ms(1100)).await;
    assert_eq!(store.calls(Op::Renew), 1);
    assert!(
        store.mem().holder("late-renewal").is_some(),
        "the store did apply the renewal"
    );
    assert_eq!(
        lease.renewals(),
        0,
        "a renewal after the loss does not count"
    );
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    assert_eq!(lease.expires_in(), Duration::ZERO);
    let got = drain(events).await;
    assert!(
        matches!(
            got[..],
            [
                LeaseEvent::RenewalFailed {
                    attempt: 1,
                    will_retry: false,
                    ..
                },
                LeaseEvent::Lost {
                    reason: LostReason::Expired
                },
            ]
        ),
        "{got:?}"
    );
    sleep(Duration::from_secs(10)).await;
    assert_eq!(store.calls(Op::Renew), 1, "no renewal after the loss");
}

#[tokio::test(start_paused = true)]
async fn a_late_held_by_other_reply_after_the_deadline_does_not_report_a_second_loss() {
    let store = FaultStore::new();
    store.push(Op::Renew, Fault::late(ms(600)));
    let c = client(&store, ms(1000), Some(ms(500)));
    let t0 = Instant::now();
    let lease = take(&c, "late-other").await;
    let events = lease.events();

    sleep_until(t0 + ms(990)).await;
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    store.mem().wipe("late-other");
    store
        .mem()
        .take_as("late-other", "intruder", Duration::from_secs(60));
    // The renewal lands at 1100 ms and finds the intruder.
    sleep_until(t0 + ms(1200)).await;
    assert_eq!(store.calls(Op::Renew), 1);
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    let got = drain(events).await;
    assert_eq!(
        got.iter().filter(|e| e.is_final()).count(),
        1,
        "one end only: {got:?}"
    );
    assert_eq!(got.last(), Some(&lost(LostReason::Expired)));
    assert_eq!(
        store.mem().holder("late-other").unwrap().lease_id,
        "intruder"
    );
}

/// DESIGN.md §4: a release that finds another holder (or no key) ends the lease as lost, and a
/// handle never reports `released` for a lease that was not ours when we released it.
#[tokio::test(start_paused = true)]
async fn a_release_finding_another_holder_or_no_key_reports_the_lease_lost() {
    let store = FaultStore::new();
    let c = client(&store, ms(30_000), None);
    for (name, reason) in [
        ("taken-over", LostReason::HeldByOther),
        ("vanished", LostReason::Missing),
    ] {
        let lease = take(&c, name).await;
        let events = lease.events();
        store.mem().wipe(name);
        if reason == LostReason::HeldByOther {
            store
                .mem()
                .take_as(name, "intruder", Duration::from_secs(60));
        }
        assert!(!lease.release().await.unwrap(), "{name}: not ours any more");
        assert_eq!(
            within(ms(1), lease.ended()).await,
            LeaseEnd::Lost(reason),
            "{name}"
        );
        assert_eq!(lease.lost_reason(), Some(reason), "{name}");
        assert_eq!(drain(events).await, [lost(reason)], "{name}");
        assert!(!lease.release().await.unwrap(), "{name}: once");
        assert_eq!(store.calls_for(Op::Release, name), 1, "{name}");
    }
    assert_eq!(
        store.mem().holder("taken-over").unwrap().lease_id,
        "intruder",
        "the other holder's lease is left alone"
    );
}

/// While a release is on its way, the renewal's findings do not end the lease: the release's
/// own answer does.
#[tokio::test(start_paused = true)]
async fn while_releasing_the_release_answer_decides_how_the_lease_ended() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));
    let t0 = Instant::now();
    let lease = take(&c, "letting-go").await;
    let events = lease.events();
    // The renewal sent at 1 s reaches the store at 2 s; the release sent at 1.5 s at 2.5 s.
    store.push(Op::Renew, Fault::late(ms(1000)));
    store.push(Op::Release, Fault::late(ms(1000)));
    sleep_until(t0 + ms(1500)).await;
    let release = {
        let lease = Arc::new(lease);
        let l = Arc::clone(&lease);
        (tokio::spawn(async move { l.release().await }), lease)
    };
    // Meanwhile another holder takes the name (the renewal will find it) and lets it go again
    // (the release will find no key).
    sleep_until(t0 + ms(1600)).await;
    store.mem().wipe("letting-go");
    store
        .mem()
        .take_as("letting-go", "intruder", Duration::from_secs(60));
    sleep_until(t0 + ms(2200)).await;
    assert_eq!(store.calls(Op::Renew), 1);
    assert_eq!(release.1.end(), None, "not ended by the renewal's answer");
    store.mem().release("letting-go", "intruder");

    assert!(!within(Duration::from_secs(2), release.0)
        .await
        .unwrap()
        .unwrap());
    assert_eq!(release.1.end(), Some(LeaseEnd::Lost(LostReason::Missing)));
    assert_eq!(drain(events).await, [lost(LostReason::Missing)]);
}

/// `close()` stops renewing and releases what the client holds, each handle ending as lost with
/// `ClientClosed`; it returns once the releases were answered and the acquire that was on the
/// wire has landed and been given back (so that nothing is left held by nobody when the store
/// closes), and the client takes no more leases.
#[tokio::test(start_paused = true)]
async fn close_releases_every_lease_and_ends_them_as_client_closed() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));
    let a = take(&c, "a").await;
    let b = take(&c, "b").await;
    let (ea, eb) = (a.events(), b.events());
    store.push_for(Op::Acquire, "on-the-wire", Fault::late(ms(1000)));
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.try_acquire("on-the-wire", &LeaseOptions::default()).await })
    };
    sleep(ms(100)).await;
    store.push_for(Op::Release, "a", Fault::late(ms(500)));

    let t = Instant::now();
    c.close().await;
    // The acquire sent at 0 lands at 1 s (900 ms after the close began), after the releases
    // (500 ms); its lease is given back before close returns.
    assert_eq!(
        Instant::now(),
        t + ms(900),
        "close waits for the releases and for the acquire on the wire"
    );
    assert!(store.mem().holder("on-the-wire").is_none());
    assert!(c.is_closed());
    for (lease, events) in [(&a, ea), (&b, eb)] {
        assert_eq!(lease.lost_reason(), Some(LostReason::ClientClosed));
        assert_eq!(drain(events).await, [lost(LostReason::ClientClosed)]);
        assert!(store.mem().holder(lease.name()).is_none());
    }
    assert!(matches!(
        c.try_acquire("d", &LeaseOptions::default()).await,
        Err(LeaseError::Config(_))
    ));
    assert!(matches!(
        c.acquire("d", &LeaseOptions::default(), None).await,
        Err(LeaseError::Config(_))
    ));
    assert_eq!(store.calls_for(Op::Acquire, "d"), 0);

    // The acquire that was on the wire won after the close began: its caller is told the
    // client was closed (the lease it won was given back), never handed a lease.
    let late = within(Duration::from_secs(2), pending).await.unwrap();
    let Err(LeaseError::Config(message)) = late else {
        panic!("expected the acquire on the wire to report the close, got {late:?}");
    };
    assert!(
        message.contains("closed while the acquire was on the wire"),
        "{message}"
    );
    assert_eq!(store.calls(Op::Release), 3);
    // Dropping the handles afterwards sends nothing more; nothing is ever renewed.
    drop((a, b));
    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Release), 3);
    assert_eq!(store.calls(Op::Renew), 0);
}

// ---------------------------------------------------------------------------------------------
// Release

#[tokio::test(start_paused = true)]
async fn release_deletes_the_lease_once_and_stops_renewal() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));
    let lease = take(&c, "released").await;
    let events = lease.events();
    sleep(ms(1500)).await;
    assert_eq!(lease.renewals(), 1);

    assert!(lease.release().await.unwrap(), "the store had it");
    assert!(store.mem().holder("released").is_none());
    assert_eq!(within(ms(1), lease.ended()).await, LeaseEnd::Released);
    assert!(
        !lease.release().await.unwrap(),
        "a second release is a no-op"
    );
    assert_eq!(store.calls(Op::Release), 1);
    assert_eq!(
        drain(events).await,
        [LeaseEvent::Renewed { renewals: 1 }, LeaseEvent::Released]
    );
    assert!(!lease.is_lost());
    assert_eq!(lease.lost_reason(), None);

    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Renew), 1, "no renewal after the release");
    // The next holder gets the next token at once.
    let next = take(&c, "released").await;
    assert_eq!(next.fencing_token(), lease.fencing_token() + 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_lease_releases_it_in_the_background() {
    let store = FaultStore::new();
    let c = client(&store, ms(3000), Some(ms(1000)));

    // Plain drop: released as soon as the runtime gets to it.
    let lease = take(&c, "dropped").await;
    let ended = lease.ended();
    drop(lease);
    assert_eq!(within(ms(1), ended).await, LeaseEnd::Released);
    sleep(ms(1)).await;
    assert!(store.mem().holder("dropped").is_none());
    assert_eq!(store.calls(Op::Release), 1);

    // A release that takes 2 s to reach the store: dropping does not wait for it.
    store.push(Op::Release, Fault::late(ms(2000)));
    let lease = take(&c, "dropped-slowly").await;
    let before = Instant::now();
    drop(lease);
    assert_eq!(Instant::now(), before, "drop does not block");
    sleep(ms(1000)).await;
    assert!(store.mem().holder("dropped-slowly").is_some());
    sleep(ms(1001)).await;
    assert!(store.mem().holder("dropped-slowly").is_none());
    assert_eq!(store.calls(Op::Release), 2);

    sleep(Duration::from_secs(30)).await;
    assert_eq!(store.calls(Op::Renew), 0, "a dropped lease is not renewed");
}

#[tokio::test(start_paused = true)]
async fn a_failed_release_ends_the_lease_locally_and_the_store_expires_it() {
    let store = FaultStore::new();
    store.push(Op::Release, Fault::error(BackendErrorKind::Unreachable));
    let duration = ms(3000);
    let c = client(&store, duration, Some(ms(1000)));
    let t0 = Instant::now();
    let lease = take(&c, "unreleased").await;
    assert!(matches!(
        lease.release().await,
        Err(LeaseError::Backend {
            kind: BackendErrorKind::Unreachable,
            ..
        })
    ));
    // Unknown whether the release reached the store: the handle never says "released"; it
    // stays held, unrenewed, until its local deadline, and then it is lost (expired).
    assert_eq!(lease.end(), None);
    // Not renewed any more; the store drops it at its TTL, and then it is free.
    sleep_until(t0 + duration - ms(1)).await;
    assert!(store.mem().holder("unreleased").is_some());
    assert_eq!(store.calls(Op::Renew), 0);
    sleep_until(t0 + duration).await;
    assert!(store.mem().holder("unreleased").is_none());
    assert_eq!(lease.lost_reason(), Some(LostReason::Expired));
    assert_eq!(lease.end(), Some(LeaseEnd::Lost(LostReason::Expired)));
    // Dropping it may try once more (owner-checked, harmless); never more.
    drop(lease);
    sleep(ms(1)).await;
    assert!(
        store.calls(Op::Release) <= 2,
        "{}",
        store.calls(Op::Release)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_release_can_be_retried() {
    let store = FaultStore::new();
    store.push(Op::Release, Fault::error(BackendErrorKind::Unreachable));
    let c = client(&store, ms(3000), Some(ms(1000)));
    let lease = take(&c, "retried").await;
    assert!(lease.release().await.is_err());
    assert_eq!(lease.end(), None, "not released, not lost: unknown");
    assert!(lease.release().await.unwrap(), "the second try releases it");
    assert_eq!(lease.end(), Some(LeaseEnd::Released));
    assert!(store.mem().holder("retried").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_renewal_reply_arriving_after_the_release_does_not_revive_the_lease() {
    let store = FaultStore::new();
    // "slow": renewed in the store at once, the reply comes back after the release.
    // "late": reaches the store after the release, which it must not undo.
    for (name, fault) in [
        ("slow", Fault::slow_reply(ms(1000))),
        ("late", Fault::late(ms(1000))),
    ] {
        store.push(Op::Renew, fault);
        let c = client(&store, ms(3000), Some(ms(1000)));
        let t0 = Instant::now();
        let lease = take(&c, name).await;
        let events = lease.events();
        sleep_until(t0 + ms(1500)).await;
        assert!(lease.release().await.unwrap(), "{name}");
        sleep_until(t0 + ms(2500)).await;

        assert_eq!(lease.end(), Some(LeaseEnd::Released), "{name}");
        assert_eq!(lease.renewals(), 0, "{name}");
        assert!(store.mem().holder(name).is_none(), "{name}");
        assert_eq!(drain(events).await, [LeaseEvent::Released], "{name}");
        sleep(Duration::from_secs(10)).await;
        assert!(store.mem().holder(name).is_none(), "{name}");
    }
    assert_eq!(
        store.calls(Op::Renew),
        2,
        "one renewal each, none after release"
    );
}

// ---------------------------------------------------------------------------------------------
// Acquire: cancellation, lost replies, waiting

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_leaves_no_lease_behind() {
    let store = FaultStore::new();
    let c = client(&store, ms(30_000), Some(ms(10_000)));
    // "late": the store takes the lease after the caller left; "slow": before, but the caller
    // leaves before the reply.
    for (name, fault) in [
        ("late", Fault::late(ms(1000))),
        ("slow", Fault::slow_reply(ms(1000))),
    ] {
        store.push(Op::Acquire, fault);
        let releases = store.calls(Op::Release);
        let cancelled =
            tokio::time::timeout(ms(100), c.try_acquire(name, &LeaseOptions::default())).await;
        assert!(cancelled.is_err(), "{name}: the caller gave up");
        sleep(ms(1500)).await;
        assert_eq!(store.mem().fence(name), 1, "{name}: the store did grant it");
        assert!(
            store.mem().holder(name).is_none(),
            "{name}: and got it back"
        );
        assert_eq!(store.calls(Op::Release), releases + 1, "{name}");
        let lease = take(&c, name).await;
        assert_eq!(lease.fencing_token(), 2, "{name}");
        assert!(lease.release().await.unwrap());
    }

    // Cancelled while waiting (no attempt on the wire): no subscription is left either.
    store
        .mem()
        .take_as("waited", "holder", Duration::from_secs(60));
    let cancelled = tokio::time::timeout(
        Duration::from_secs(5),
        c.acquire("waited", &LeaseOptions::default(), None),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(store.mem().waiters("waited"), 0);
    assert_eq!(store.mem().holder("waited").unwrap().lease_id, "holder");
}

#[tokio::test(start_paused = true)]
async fn a_lost_acquire_reply_never_makes_two_holders_and_expires_by_itself() {
    let store = FaultStore::new();
    store.push(
        Op::Acquire,
        Fault::lost_reply(BackendErrorKind::Unreachable),
    );
    let duration = ms(3000);
    let c = client(&store, duration, Some(ms(1000)));
    let t0 = Instant::now();
    assert!(matches!(
        c.try_acquire("orphan", &LeaseOptions::default()).await,
        Err(LeaseError::Backend {
            kind: BackendErrorKind::Unreachable,
            ..
        })
    ));
    let orphan = store.mem().holder("orphan").expect("the store granted it");
    // Nobody renews the orphan; until it expires, every other attempt is refused.
    match c.try_acquire("orphan", &LeaseOptions::default()).await {
        Ok(TryAcquire::Held(h)) => assert_eq!(h.lease_id, orphan.lease_id),
        other => panic!("expected Held, got {other:?}"),
    }
    let lease = within(
        Duration::from_secs(10),
        c.acquire("orphan", &LeaseOptions::default(), None),
    )
    .await
    .unwrap();
    assert!(Instant::now() >= t0 + duration);
    assert_eq!(lease.fencing_token(), 2);
    assert_eq!(store.calls(Op::Renew), 0, "nobody renewed the orphan");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_acquire_is_woken_at_the_holders_expiry() {
    let store = FaultStore::new();
    // A holder that crashed: nobody releases it, it expires after 10 s.
    store
        .mem()
        .take_as("crashed", "dead-holder", Duration::from_secs(10));
    let c = client(&store, ms(30_000), None);
    let t0 = Instant::now();
    let lease = within(
        Duration::from_secs(60),
        c.acquire(
            "crashed",
            &LeaseOptions::default(),
            Some(Duration::from_secs(60)),
        ),
    )
    .await
    .unwrap();
    let waited = Instant::now() - t0;
    // The holder's TTL, plus 1 ms, plus at most 100 ms of jitter.
    assert!(
        waited > Duration::from_secs(10) && waited <= ms(10_102),
        "waited {waited:?}"
    );
    // First attempt, the attempt right after subscribing, the one at the expiry: no polls
    // (the store's notifications are live).
    assert_eq!(store.calls(Op::Acquire), 3);
    assert_eq!(lease.fencing_token(), 2);
    assert_eq!(store.mem().waiters("crashed"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_acquire_is_woken_by_the_release() {
    let store = FaultStore::new();
    let c = client(&store, ms(30_000), Some(ms(10_000)));
    let held = take(&c, "handed-over").await;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let lease = c
                .acquire("handed-over", &LeaseOptions::default(), None)
                .await;
            (lease, Instant::now())
        })
    };
    sleep(Duration::from_secs(2)).await;
    assert_eq!(store.mem().waiters("handed-over"), 1);
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let (lease, at) = within(ms(1), waiter).await.unwrap();
    let lease = lease.unwrap();
    assert_eq!(
        at, released_at,
        "woken by the release, not by a poll or the expiry"
    );
    assert_eq!(lease.fencing_token(), 2);
    assert_eq!(store.calls(Op::Acquire), 1 + 3);
}

/// An observer whose read of the store fails re-reads on the poll schedule and resumes: it does
/// not wait for the next change or the old leader's expiry (30 s here) before it tries again.
#[tokio::test(start_paused = true)]
async fn an_observer_rereads_soon_after_a_failed_read() {
    use distributed_leasing::election::Election;
    let store = FaultStore::new();
    let c = client(&store, Duration::from_secs(30), None);
    let e = Election::new(c.clone(), "observed", Some("a")).unwrap();
    let term = e
        .campaign(&LeaseOptions::default(), Some(Duration::ZERO))
        .await
        .unwrap();
    let mut o = e.observe();
    let first = within(ms(500), o.next()).await.unwrap().expect("a leader");
    assert_eq!(first.term, Some(term.fencing_token()));
    // The next two reads fail; the release is notified on the (live) change feed.
    store.push(Op::Inspect, Fault::error(BackendErrorKind::Unreachable));
    store.push(Op::Inspect, Fault::error(BackendErrorKind::Unreachable));
    let before = store.calls(Op::Inspect);
    let t = Instant::now();
    assert!(term.release().await.unwrap());
    let next = within(Duration::from_secs(60), o.next()).await.unwrap();
    assert_eq!(next, None, "no leader after the release");
    assert_eq!(
        store.calls(Op::Inspect) - before,
        3,
        "two failed reads, then one that worked"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "re-read after {:?}: it waited for a reason instead of retrying",
        t.elapsed()
    );
}

/// Closing the client ends an observer's wait for the next change (an error, not a hang), and
/// an observer of a closed client ends at once.
#[tokio::test(start_paused = true)]
async fn closing_the_client_ends_an_observers_wait() {
    use distributed_leasing::election::Election;
    let store = FaultStore::new();
    let c = client(&store, Duration::from_secs(30), None);
    let e = Election::new(c.clone(), "observed-closed", Some("a")).unwrap();
    let _term = e
        .campaign(&LeaseOptions::default(), Some(Duration::ZERO))
        .await
        .unwrap();
    let mut o = e.observe();
    assert!(within(ms(500), o.next()).await.unwrap().is_some());
    let waiting = tokio::spawn(async move {
        let r = o.next().await;
        (r, o)
    });
    sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "no change yet: it waits");
    c.close().await;
    let (r, mut o) = within(ms(100), waiting).await.unwrap();
    assert!(r.unwrap_err().to_string().contains("closed"));
    let again = within(ms(100), o.next()).await;
    assert!(again.is_err(), "closed: it ends at once");
}

/// Not on paused time: the point is a process that was not running (SIGSTOP, a long pause)
/// past its deadline, so that nothing (not the renewal scheduler's deadline timer either) has
/// ended the lease when its holder calls proclaim. The one thread of the runtime is blocked
/// instead.
#[tokio::test]
async fn a_proclaim_past_the_deadline_by_its_own_clock_is_refused_without_a_write() {
    let store = FaultStore::new();
    let c = client(&store, ms(300), None);
    let lease = take(&c, "proclaim-late").await;
    let events = lease.events();
    // The process stops past the lease's deadline: no task of this runtime runs meanwhile.
    std::thread::sleep(ms(600));
    let r = lease.proclaim(&one("k", "v")).await;
    assert!(
        matches!(
            r,
            Err(LeaseError::Lost {
                reason: LostReason::Expired,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(store.calls(Op::Proclaim), 0, "no write was sent");
    assert_eq!(drain_now(events), [lost(LostReason::Expired)]);
}

#[tokio::test(start_paused = true)]
async fn a_proclaim_the_store_refuses_ends_the_lease_once_with_one_loss_event() {
    let store = FaultStore::new();
    let c = client(
        &store,
        Duration::from_secs(30),
        Some(Duration::from_secs(10)),
    );
    let lease = take(&c, "proclaim-gone").await;
    let events = lease.events();
    let meta = one("k", "v");
    lease.proclaim(&meta).await.unwrap();
    assert_eq!(store.mem().holder("proclaim-gone").unwrap().metadata, meta);
    // An administrator takes it away, and another holder takes it: the store refuses.
    store.mem().force_release("proclaim-gone", None);
    let _other = store
        .mem()
        .take_as("proclaim-gone", "other", Duration::from_secs(30));
    let r = lease.proclaim(&one("k", "w")).await;
    assert!(
        matches!(
            r,
            Err(LeaseError::Lost {
                reason: LostReason::HeldByOther,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(lease.end(), Some(LeaseEnd::Lost(LostReason::HeldByOther)));
    // Refused again by its own state, without a write; the loss is not reported twice.
    let again = lease.proclaim(&meta).await;
    assert!(matches!(again, Err(LeaseError::Lost { .. })), "{again:?}");
    assert_eq!(
        store.calls(Op::Proclaim),
        2,
        "one that worked, one refused by the store"
    );
    assert_eq!(
        store.mem().holder("proclaim-gone").unwrap().metadata["instanceId"],
        "other",
        "the successor's record is untouched"
    );
    sleep(Duration::from_secs(60)).await;
    assert_eq!(store.calls(Op::Renew), 0, "no renewal after the loss");
    assert_eq!(drain(events).await, [lost(LostReason::HeldByOther)]);
}

/// A one-entry metadata map.
fn one(k: &str, v: &str) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([(k.to_owned(), v.to_owned())])
}

#[tokio::test(start_paused = true)]
async fn an_observer_sees_an_announced_leader_and_a_proclaim_without_polling() {
    use distributed_leasing::election::Election;
    let store = FaultStore::new();
    let c = client(&store, Duration::from_secs(30), None);
    let e = Election::new(c.clone(), "announced", Some("a")).unwrap();
    // Driven all along by a task of its own, as a real observer is: it may poll meanwhile.
    let mut observer = e.observe();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let driver =
        tokio::spawn(async move { while tx.send(observer.next().await.unwrap()).is_ok() {} });
    let mut o = Seen(&mut seen);
    assert_eq!(within(ms(500), o.next()).await, None);
    let reads = store.calls(Op::Inspect);
    // Well within the slow poll for unannounced holders: only the feed can tell it.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.calls(Op::Inspect),
        reads,
        "no polls while nobody leads"
    );
    let t = Instant::now();
    let term = e
        .campaign(&LeaseOptions::default(), Some(Duration::ZERO))
        .await
        .unwrap();
    let leader = within(Duration::from_secs(60), o.next())
        .await
        .expect("a leader");
    assert_eq!(leader.term, Some(term.fencing_token()));
    assert_eq!(t.elapsed(), Duration::ZERO, "seen at once, not at a poll");
    assert_eq!(
        store.calls(Op::Inspect),
        reads + 1,
        "one read, prompted by the feed"
    );
    // A proclaim: the same term with the new metadata, seen at once.
    e.proclaim(&term, &one("endpoint", "10.0.0.1:80"))
        .await
        .unwrap();
    let proclaimed = within(ms(1), o.next()).await.expect("a leader");
    assert_eq!(proclaimed.term, leader.term);
    assert_eq!(proclaimed.identity.as_deref(), Some("a"));
    assert_eq!(proclaimed.metadata, one("endpoint", "10.0.0.1:80"));
    // A plain (unannounced) holder after a release is still seen, by the slow poll.
    assert!(term.release().await.unwrap());
    assert_eq!(within(ms(1), o.next()).await, None);
    let _plain = take(&c, "announced").await;
    let t = Instant::now();
    let plain = within(Duration::from_secs(60), o.next())
        .await
        .expect("the plain holder");
    assert_eq!(plain.identity, None);
    assert_eq!(
        t.elapsed(),
        distributed_leasing::election::UNANNOUNCED_POLL,
        "found by the slow poll"
    );
    driver.abort();
}

/// The values an observer driven by a task of its own sent.
struct Seen<'a>(
    &'a mut tokio::sync::mpsc::UnboundedReceiver<Option<distributed_leasing::election::LeaderInfo>>,
);

impl Seen<'_> {
    async fn next(&mut self) -> Option<distributed_leasing::election::LeaderInfo> {
        self.0.recv().await.expect("the observer runs")
    }
}
