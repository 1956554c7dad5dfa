//! The cases of the conformance suite; every store runs each of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use distributed_leasing::lease::LeaseEnd;
use distributed_leasing::store::{
    AcquireOutcome, AcquireRequest, ForceReleased, ReleaseOutcome, RenewOutcome,
};
use distributed_leasing::{LeaseError, LeaseEvent, LeaseOptions, LostReason, TryAcquire};

use crate::{unique, Harness};

// The waiting and events cases live in their own file; the suite calls them through here.
pub use crate::election::*;
pub use crate::semaphore::*;
pub use crate::waiting::*;

fn short(ms: u64) -> LeaseOptions {
    LeaseOptions {
        duration: Some(Duration::from_millis(ms)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    }
}

fn meta(pairs: &[(&str, &str)]) -> LeaseOptions {
    LeaseOptions {
        metadata: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..LeaseOptions::default()
    }
}

const NOW: Option<Duration> = Some(Duration::ZERO);

pub async fn acquire_release_reacquire(h: &Harness) {
    let c = h.client().await;
    let name = unique("arr");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert_eq!(a.name(), name);
    assert!(!a.is_lost());
    assert!(a.expires_in() > Duration::from_secs(25));
    assert!(a.release().await.unwrap());
    assert!(c.inspect(&name).await.unwrap().is_none());
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert_ne!(a.lease_id(), b.lease_id());
    b.release().await.unwrap();
}

pub async fn second_acquirer_is_refused_with_the_holder(h: &Harness) {
    let c = h.client().await;
    let other = h.client().await;
    let name = unique("second");
    let a = c
        .acquire(
            &name,
            &meta(&[("instanceId", "us-east-1"), ("region", "us-east")]),
            NOW,
        )
        .await
        .unwrap();
    match other
        .try_acquire(&name, &LeaseOptions::default())
        .await
        .unwrap()
    {
        TryAcquire::Held(holder) => {
            assert_eq!(holder.lease_id, a.lease_id());
            assert_eq!(holder.fencing_token, Some(a.fencing_token()));
            assert_eq!(holder.metadata["instanceId"], "us-east-1");
            let ttl = holder.ttl.expect("ttl");
            assert!(
                ttl > Duration::from_secs(20) && ttl <= Duration::from_secs(30),
                "{ttl:?}"
            );
        }
        TryAcquire::Acquired(_) => panic!("a held lease was acquired twice"),
    }
    match other.acquire(&name, &LeaseOptions::default(), NOW).await {
        Err(LeaseError::Unavailable {
            holder: Some(h), ..
        }) => assert_eq!(h.metadata["region"], "us-east"),
        other => panic!("expected Unavailable with the holder, got {other:?}"),
    }
    a.release().await.unwrap();
}

pub async fn unusual_names_work_and_bad_names_are_refused(h: &Harness) {
    let c = h.client().await;
    let base = unique("n");
    let long = format!("{base}-{}", "x".repeat(1024 - base.len() - 1));
    assert_eq!(long.len(), 1024);
    for name in [
        format!("{base}:with:colons"),
        format!("{base}{{braces}}"),
        format!("{base} with spaces"),
        format!("{base}-ünïcødé-锁-🔒"),
        format!("{base}}}{{odd"),
        long,
    ] {
        let l = c
            .acquire(&name, &LeaseOptions::default(), NOW)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        let seen = c.inspect(&name).await.unwrap().expect("held");
        assert_eq!(seen.name, name);
        assert_eq!(seen.lease_id, l.lease_id());
        assert!(matches!(
            c.try_acquire(&name, &LeaseOptions::default())
                .await
                .unwrap(),
            TryAcquire::Held(_)
        ));
        assert!(l.release().await.unwrap());
    }
    for (bad, needle) in [
        (String::new(), "empty"),
        ("y".repeat(1025), "1024"),
        (format!("{base}:fence"), ":fence"),
        (format!("{base}\nx"), "control"),
    ] {
        match c.acquire(&bad, &LeaseOptions::default(), NOW).await {
            Err(LeaseError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{bad:?} should be refused, got {other:?}"),
        }
        // Every operation that takes a name checks it before the store sees it (stores do not
        // check again).
        match c.try_acquire(&bad, &LeaseOptions::default()).await {
            Err(LeaseError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{bad:?} should be refused by try_acquire, got {other:?}"),
        }
        match c.inspect(&bad).await {
            Err(LeaseError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{bad:?} should be refused by inspect, got {other:?}"),
        }
        match c.force_release_if(&bad, None).await {
            Err(LeaseError::InvalidArgument(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{bad:?} should be refused by force_release, got {other:?}"),
        }
    }
}

pub async fn metadata_round_trips_exactly(h: &Harness) {
    let c = h.client().await;
    let name = unique("meta");
    let pairs = [
        ("instanceId", "us-east-1"),
        ("empty", ""),
        ("unicode", "ünïcødé 锁 🔒"),
        ("k=v,x", "a=b,c=d"),
        ("multi", "line1\nline2\r\n\ttab"),
        ("spaces in key", "  padded  "),
    ];
    let l = c.acquire(&name, &meta(&pairs), NOW).await.unwrap();
    let seen = c.inspect(&name).await.unwrap().unwrap();
    let expected: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    assert_eq!(seen.metadata, expected);
    let bad = meta(&[("", "x")]);
    assert!(matches!(
        c.acquire(&unique("m"), &bad, NOW).await,
        Err(LeaseError::InvalidArgument(_))
    ));
    l.release().await.unwrap();
}

pub async fn release_is_idempotent(h: &Harness) {
    let c = h.client().await;
    let l = c
        .acquire(&unique("idem"), &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(l.release().await.unwrap());
    assert!(!l.release().await.unwrap());
    assert!(!l.release().await.unwrap());
    assert!(!l.is_lost(), "a released lease is not lost");
}

pub async fn foreign_lease_id_cannot_renew_or_release(h: &Harness) {
    let c = h.client().await;
    let name = unique("foreign");
    let l = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let store = c.store();
    assert_eq!(
        store.release(&name, "not-the-holder").await.unwrap(),
        ReleaseOutcome::Lost(LostReason::HeldByOther)
    );
    assert_eq!(
        store
            .renew(&name, "not-the-holder", Duration::from_secs(60))
            .await
            .unwrap(),
        RenewOutcome::Lost(LostReason::HeldByOther)
    );
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        l.lease_id()
    );
    assert!(c.inspect(&name).await.unwrap().unwrap().ttl.unwrap() <= Duration::from_secs(30));
    l.release().await.unwrap();
}

pub async fn renew_extends_the_ttl(h: &Harness) {
    let c = h.client().await;
    let name = unique("renew");
    let l = c.acquire(&name, &short(3_000), NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let before = c.inspect(&name).await.unwrap().unwrap().ttl.unwrap();
    let expires_before = l.expires_in();
    l.renew().await.unwrap();
    let after = c.inspect(&name).await.unwrap().unwrap().ttl.unwrap();
    assert!(after > before, "ttl {before:?} -> {after:?}");
    assert!(l.expires_in() > expires_before);
    assert_eq!(l.renewals(), 1);
    l.release().await.unwrap();
}

pub async fn renew_after_expiry_reports_lost(h: &Harness) {
    let c = h.client().await;
    let name = unique("expired");
    let l = c.acquire(&name, &short(200), NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(l.is_lost());
    assert!(matches!(l.renew().await, Err(LeaseError::Lost { .. })));
    // The store agrees: the holder's id no longer renews.
    assert_eq!(
        c.store()
            .renew(&name, l.lease_id(), Duration::from_secs(1))
            .await
            .unwrap(),
        RenewOutcome::Lost(LostReason::Missing)
    );
}

pub async fn expiry_allows_takeover(h: &Harness) {
    let c = h.client().await;
    let name = unique("takeover");
    let a = c.acquire(&name, &short(300), NOW).await.unwrap();
    assert!(matches!(
        c.try_acquire(&name, &LeaseOptions::default())
            .await
            .unwrap(),
        TryAcquire::Held(_)
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    assert_eq!(a.end(), Some(LeaseEnd::Lost(LostReason::Expired)));
    // The old holder cannot release its successor.
    assert!(!a.release().await.unwrap());
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        b.lease_id()
    );
    b.release().await.unwrap();
}

pub async fn fencing_token_strictly_increases(h: &Harness) {
    let c = h.client().await;
    let name = unique("fence");
    let mut last = 0;
    for round in 0..9 {
        let l = c.acquire(&name, &short(200), NOW).await.unwrap();
        assert!(
            l.fencing_token() > last,
            "round {round}: {} after {last}",
            l.fencing_token()
        );
        last = l.fencing_token();
        match round % 3 {
            0 => {
                l.release().await.unwrap();
            }
            1 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(l.is_lost());
            }
            _ => {
                assert!(c.force_release(&name).await.unwrap());
            }
        }
    }
}

pub async fn concurrent_acquirers_exactly_one_wins(h: &Harness) {
    let c = h.client().await;
    let c2 = h.client().await;
    let name = Arc::new(unique("race"));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = if i % 2 == 0 { c.clone() } else { c2.clone() };
        let name = Arc::clone(&name);
        tasks.push(tokio::spawn(async move {
            c.try_acquire(&name, &LeaseOptions::default())
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            TryAcquire::Acquired(l) => winners.push(l),
            TryAcquire::Held(_) => refused += 1,
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 50 must win");
    assert_eq!(refused, 49);
    winners.pop().unwrap().release().await.unwrap();
}

pub async fn lost_fires_exactly_once(h: &Harness) {
    let c = h.client().await;
    let name = unique("lost");
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(3)),
        renew_interval: Some(Duration::from_millis(200)),
        ..LeaseOptions::default()
    };
    let l = c.acquire(&name, &opts, NOW).await.unwrap();
    let first = l.ended();
    let second = l.ended();
    assert!(c.force_release(&name).await.unwrap());
    let end = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("lost within the interval");
    assert_eq!(end, LeaseEnd::Lost(LostReason::Missing));
    assert_eq!(second.await, end);
    // Someone else takes it; the old handle stays lost for its first reason and renews no more.
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(l.lost_reason(), Some(LostReason::Missing));
    assert!(matches!(
        l.renew().await,
        Err(LeaseError::Lost {
            reason: LostReason::Missing,
            ..
        })
    ));
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        b.lease_id()
    );
    b.release().await.unwrap();
}

pub async fn dropped_handle_is_released(h: &Harness) {
    let c = h.client().await;
    let name = unique("drop");
    drop(
        c.acquire(&name, &LeaseOptions::default(), NOW)
            .await
            .unwrap(),
    );
    let mut freed = false;
    for _ in 0..100 {
        if c.inspect(&name).await.unwrap().is_none() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a dropped lease must be released in the background");
}

pub async fn inspect_and_list(h: &Harness) {
    let c = h.client().await;
    let prefix = unique("list");
    assert!(c
        .inspect(&format!("{prefix}-none"))
        .await
        .unwrap()
        .is_none());
    let a = c
        .acquire(&format!("{prefix}/a"), &meta(&[("who", "a")]), NOW)
        .await
        .unwrap();
    let b = c
        .acquire(&format!("{prefix}/b"), &meta(&[("who", "b")]), NOW)
        .await
        .unwrap();
    let other = c
        .acquire(&unique("elsewhere"), &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let listed = c.list(&prefix).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [format!("{prefix}/a"), format!("{prefix}/b")]);
    assert_eq!(listed[0].metadata["who"], "a");
    assert_eq!(listed[1].fencing_token, Some(b.fencing_token()));
    let info = c.inspect(&format!("{prefix}/a")).await.unwrap().unwrap();
    assert_eq!(info.lease_id, a.lease_id());
    assert!(info.acquired_at.is_some());
    for l in [a, b, other] {
        l.release().await.unwrap();
    }
    assert!(c.list(&prefix).await.unwrap().is_empty());
}

pub async fn force_release_frees_the_lease(h: &Harness) {
    let c = h.client().await;
    let name = unique("force");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(c.force_release(&name).await.unwrap());
    assert!(!c.force_release(&name).await.unwrap());
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    b.release().await.unwrap();
}

pub async fn auto_renew_keeps_the_lease_past_its_duration(h: &Harness) {
    let c = h.client().await;
    let name = unique("auto");
    let opts = LeaseOptions {
        duration: Some(Duration::from_millis(1_500)),
        renew_interval: Some(Duration::from_millis(300)),
        ..LeaseOptions::default()
    };
    let l = c.acquire(&name, &opts, NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        !l.is_lost(),
        "auto-renewed lease lost: {:?}",
        l.lost_reason()
    );
    assert!(l.renewals() >= 3, "renewals: {}", l.renewals());
    // About 11 in 3.5 s at one per 300 ms: far more would mean renewing in a busy loop.
    assert!(l.renewals() <= 25, "renewals: {}", l.renewals());
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        l.lease_id()
    );
    l.release().await.unwrap();
}

pub async fn acquire_waits_for_release(h: &Harness) {
    let c = h.client().await;
    let name = unique("wait");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let c2 = c.clone();
    let n2 = name.clone();
    let waiter = tokio::spawn(async move {
        c2.acquire(&n2, &LeaseOptions::default(), Some(Duration::from_secs(20)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    a.release().await.unwrap();
    let b = waiter
        .await
        .unwrap()
        .expect("the waiter acquires after the release");
    assert!(b.fencing_token() > a.fencing_token());
    b.release().await.unwrap();
}

pub async fn wait_runs_out_with_the_holder(h: &Harness) {
    let c = h.client().await;
    let name = unique("timeout");
    let a = c
        .acquire(&name, &meta(&[("instanceId", "holder")]), NOW)
        .await
        .unwrap();
    let r = c
        .acquire(
            &name,
            &LeaseOptions::default(),
            Some(Duration::from_millis(400)),
        )
        .await;
    match r {
        Err(LeaseError::Unavailable {
            holder: Some(h), ..
        }) => assert_eq!(h.metadata["instanceId"], "holder"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    a.release().await.unwrap();
}

pub async fn invalid_durations_are_refused(h: &Harness) {
    let c = h.client().await;
    let name = unique("dur");
    for opts in [
        LeaseOptions {
            duration: Some(Duration::ZERO),
            ..LeaseOptions::default()
        },
        LeaseOptions {
            duration: Some(Duration::from_secs(400 * 24 * 3600)),
            ..LeaseOptions::default()
        },
        LeaseOptions {
            duration: Some(Duration::from_secs(10)),
            renew_interval: Some(Duration::from_secs(10)),
            ..LeaseOptions::default()
        },
        LeaseOptions {
            duration: Some(Duration::from_secs(10)),
            renew_interval: Some(Duration::from_nanos(1)),
            ..LeaseOptions::default()
        },
        // Below the duration but leaving no room for a retry (at most 9 s of 10 s): the rule the
        // configuration applies to AutoRenewInterval too (crate::timing).
        LeaseOptions {
            duration: Some(Duration::from_secs(10)),
            renew_interval: Some(Duration::from_millis(9_500)),
            ..LeaseOptions::default()
        },
    ] {
        assert!(
            matches!(
                c.acquire(&name, &opts, NOW).await,
                Err(LeaseError::InvalidArgument(_))
            ),
            "{opts:?}"
        );
    }
    assert!(
        c.inspect(&name).await.unwrap().is_none(),
        "a refused acquire writes nothing"
    );
}

/// Two requests presenting one lease id (forked children whose random generator was copied)
/// must not both be granted the lease: a matching lease id is not a retry.
pub async fn a_repeated_lease_id_is_refused(h: &Harness) {
    let c = h.client().await;
    let name = unique("same-id");
    let meta = BTreeMap::new();
    let req = AcquireRequest {
        name: &name,
        lease_id: "copied-id",
        duration: Duration::from_secs(5),
        acquired_at: chrono::Utc::now(),
        metadata: &meta,
        announce: false,
    };
    let first = c.store().try_acquire(&req).await.unwrap();
    assert!(
        matches!(first, AcquireOutcome::Acquired { .. }),
        "{first:?}"
    );
    match c.store().try_acquire(&req).await.unwrap() {
        AcquireOutcome::Held(holder) => assert_eq!(holder.lease_id, "copied-id"),
        other @ AcquireOutcome::Acquired { .. } => {
            panic!("a second request with the same lease id was granted: {other:?}")
        }
    }
    assert_eq!(
        c.store().release(&name, "copied-id").await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// A release that finds the lease taken over (or gone) ends the handle as lost, never as
/// released: the work done since the loss was not protected.
pub async fn release_after_a_takeover_reports_the_loss(h: &Harness) {
    let c = h.client().await;
    let name = unique("takeover");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(c.force_release(&name).await.unwrap());
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(
        !a.release().await.unwrap(),
        "the release must not report success"
    );
    assert_eq!(a.lost_reason(), Some(LostReason::HeldByOther));
    assert_eq!(a.end(), Some(LeaseEnd::Lost(LostReason::HeldByOther)));
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        b.lease_id(),
        "the successor keeps its lease"
    );
    // Gone altogether: lost as missing.
    assert!(c.force_release(&name).await.unwrap());
    let mut events = b.events();
    assert!(!b.release().await.unwrap());
    assert_eq!(b.lost_reason(), Some(LostReason::Missing));
    assert_eq!(
        events.next().await,
        Some(LeaseEvent::Lost {
            reason: LostReason::Missing
        })
    );
    assert_eq!(events.next().await, None);
}

/// A forced release given the lease id that was shown removes only that holder.
pub async fn force_release_if_removes_only_the_holder_shown(h: &Harness) {
    let c = h.client().await;
    let name = unique("cas");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let shown = a.lease_id().to_owned();
    assert!(c.force_release(&name).await.unwrap());
    let b = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    match c.force_release_if(&name, Some(&shown)).await.unwrap() {
        ForceReleased::HeldByOther(now) => assert_eq!(now.lease_id, b.lease_id()),
        other => panic!("the successor must be kept: {other:?}"),
    }
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        b.lease_id()
    );
    assert_eq!(
        c.force_release_if(&name, Some(b.lease_id())).await.unwrap(),
        ForceReleased::Released
    );
    assert_eq!(
        c.force_release_if(&name, Some(b.lease_id())).await.unwrap(),
        ForceReleased::Absent
    );
    assert!(c.inspect(&name).await.unwrap().is_none());
    drop(a);
}

/// Closing a client releases what it holds, ends the handles as lost (client_closed), and
/// refuses new acquisitions.
pub async fn close_releases_the_leases_and_stops_renewing(h: &Harness) {
    let c = h.client().await;
    let watcher = h.client().await;
    let name = unique("close");
    let opts = LeaseOptions {
        duration: Some(Duration::from_millis(1_500)),
        renew_interval: Some(Duration::from_millis(300)),
        ..LeaseOptions::default()
    };
    let a = c.acquire(&name, &opts, NOW).await.unwrap();
    let ended = a.ended();
    c.close().await;
    assert_eq!(ended.await, LeaseEnd::Lost(LostReason::ClientClosed));
    assert!(watcher.inspect(&name).await.unwrap().is_none(), "released");
    let renewals = a.renewals();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(a.renewals(), renewals, "no renewal after close");
    assert!(c.is_closed());
    assert!(c.acquire(&name, &opts, NOW).await.is_err());
    // Somebody else can take it at once.
    let b = watcher.acquire(&name, &opts, NOW).await.unwrap();
    b.release().await.unwrap();
}

/// A handle dropped just before `close()`: its background release is waited for, so the
/// lease is not left held by nobody (issue 22).
pub async fn close_waits_for_the_release_of_a_dropped_handle(h: &Harness) {
    let watcher = h.client().await;
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(30)),
        ..LeaseOptions::default()
    };
    let mut names = Vec::new();
    for _ in 0..10 {
        let c = h.client().await;
        let name = unique("dropclose");
        drop(c.acquire(&name, &opts, NOW).await.unwrap());
        c.close().await;
        names.push(name);
    }
    for name in &names {
        assert!(
            watcher.inspect(name).await.unwrap().is_none(),
            "{name} left held"
        );
    }
}

pub async fn many_leases_are_renewed_in_batches(h: &Harness) {
    let c = h.client().await;
    let tag = unique("batch");
    // Generous margins: a loaded 2-core machine running every store's cases at once once kept an
    // etcd renewal of a 2 s lease past its 4 s window. The test waits for the renewals (an event)
    // instead of counting them after a fixed sleep, and bounds them by the time it really took.
    let interval = Duration::from_secs(1);
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(8)),
        renew_interval: Some(interval),
        ..LeaseOptions::default()
    };
    let started = tokio::time::Instant::now();
    let mut leases = Vec::new();
    for i in 0..300 {
        leases.push(c.acquire(&format!("{tag}-{i}"), &opts, NOW).await.unwrap());
    }
    let deadline = started + Duration::from_secs(60);
    while leases.iter().any(|l| l.renewals() < 3 && !l.is_lost()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "renewals stalled: {:?}",
            leases
                .iter()
                .filter(|l| l.renewals() < 3)
                .map(|l| (l.name(), l.renewals()))
                .take(5)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not in a loop: at most twice per interval (a batch may renew a lease early to join the
    // others', and a renewal that failed under load is retried sooner), with two spare.
    let most = 2 * u64::try_from(started.elapsed().as_millis() / interval.as_millis()).unwrap() + 2;
    for l in &leases {
        assert!(!l.is_lost(), "{} lost: {:?}", l.name(), l.lost_reason());
        assert!(
            l.renewals() <= most,
            "{}: {} renewals in {:?} (at most {most})",
            l.name(),
            l.renewals(),
            started.elapsed()
        );
    }
    // A batch reports each lease's own outcome.
    let store = c.store();
    let absent = format!("{tag}-absent");
    let items: Vec<_> = leases
        .iter()
        .take(3)
        .map(|l| distributed_leasing::store::RenewItem {
            name: l.name(),
            lease_id: l.lease_id(),
            duration: Duration::from_secs(2),
        })
        .chain(std::iter::once(distributed_leasing::store::RenewItem {
            name: leases[3].name(),
            lease_id: "not-the-holder",
            duration: Duration::from_secs(2),
        }))
        .chain(std::iter::once(distributed_leasing::store::RenewItem {
            name: &absent,
            lease_id: "nobody",
            duration: Duration::from_secs(2),
        }))
        .collect();
    let results = store.renew_many(&items).await;
    assert_eq!(results.len(), 5);
    for r in &results[..3] {
        assert_eq!(*r.as_ref().unwrap(), RenewOutcome::Renewed);
    }
    assert_eq!(
        *results[3].as_ref().unwrap(),
        RenewOutcome::Lost(LostReason::HeldByOther)
    );
    assert_eq!(
        *results[4].as_ref().unwrap(),
        RenewOutcome::Lost(LostReason::Missing)
    );
    for l in leases {
        assert!(l.release().await.unwrap());
    }
}
