//! The semaphore cases: at most `limit` permits at once, the stored limit, per-permit leases
//! (their own expiry, owner-checked renew and release that never re-create), tokens from one
//! counter, slots reused, waiting and cancellation. Run on every store that has semaphores
//! (`semaphore_stores!` in `main.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distributed_leasing::store::{
    permit_record, ReleaseOutcome, RenewOutcome, SemaphoreInfo, MAX_SEMAPHORE_LIMIT,
};
use distributed_leasing::{LeaseError, LeaseOptions, LostReason, Permit, TryPermit};

use crate::{unique, Harness};

const NOW: Option<Duration> = Some(Duration::ZERO);

fn short(ms: u64) -> LeaseOptions {
    LeaseOptions {
        duration: Some(Duration::from_millis(ms)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    }
}

fn won(t: TryPermit) -> Permit {
    match t {
        TryPermit::Acquired(p) => p,
        TryPermit::Full { limit, holders } => {
            panic!("expected a permit, the semaphore is full (limit {limit}, {holders:?})")
        }
    }
}

fn full(t: &TryPermit) -> bool {
    matches!(t, TryPermit::Full { .. })
}

/// Holds on until `limit` permits have been inside at once (at most 10 s), so that whether
/// the peak reaches the limit does not hang on how fast a loaded store admits the next one:
/// a store that never admits `limit` at once still fails the peak assertion, after the wait.
async fn until_peak(peak: &AtomicU32, limit: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while peak.load(Ordering::SeqCst) < limit && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn semaphore_never_admits_more_than_its_limit(h: &Harness) {
    let name = unique("sem-peak");
    let inside = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = h.client().await;
        for _ in 0..4 {
            let (c, name, inside, peak) = (c.clone(), name.clone(), inside.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    let p = c
                        .acquire_permit(
                            &name,
                            Some(3),
                            &LeaseOptions::default(),
                            Some(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap();
                    assert!(p.slot() < 3, "slot {} of a semaphore of 3", p.slot());
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    until_peak(&peak, 3).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(p.release().await.unwrap());
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "the peak must be exactly the limit"
    );
    let info = h
        .client()
        .await
        .semaphore_info(&name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((info.limit, info.holders.len()), (3, 0));
}

pub async fn permits_take_distinct_slots_up_to_the_limit(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-slots");
    let opts = LeaseOptions::default();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(won(c
            .try_acquire_permit(&name, Some(3), &opts)
            .await
            .unwrap()));
    }
    let slots: BTreeSet<u32> = held.iter().map(Permit::slot).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]));
    let ids: BTreeSet<&str> = held.iter().map(Permit::lease_id).collect();
    assert_eq!(ids.len(), 3, "each permit has its own lease id");
    match c.try_acquire_permit(&name, Some(3), &opts).await.unwrap() {
        TryPermit::Full { limit, holders } => {
            assert_eq!(limit, 3);
            let mut seen: Vec<(u32, String)> = holders
                .iter()
                .map(|h| (h.slot, h.info.lease_id.clone()))
                .collect();
            seen.sort();
            let mut expected: Vec<(u32, String)> = held
                .iter()
                .map(|p| (p.slot(), p.lease_id().to_owned()))
                .collect();
            expected.sort();
            assert_eq!(seen, expected);
            assert!(holders.iter().all(|h| h.info.name == name));
        }
        TryPermit::Acquired(p) => panic!("a fourth permit at limit 3: slot {}", p.slot()),
    }
    // The waiter gives up naming a holder.
    match c.acquire_permit(&name, Some(3), &opts, NOW).await {
        Err(LeaseError::Unavailable {
            name: n, holder, ..
        }) => {
            assert_eq!(n, name);
            assert!(holder.is_some());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    for p in held {
        assert!(p.release().await.unwrap());
    }
}

pub async fn a_different_limit_is_refused_naming_both(h: &Harness) {
    let a = h.client().await;
    let b = h.client().await;
    let name = unique("sem-mismatch");
    let opts = LeaseOptions::default();
    // limit=None on a semaphore never used: nothing to use.
    match b.try_acquire_permit(&name, None, &opts).await {
        Err(LeaseError::InvalidArgument(m)) => assert!(m.contains("limit"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(a.semaphore_info(&name).await.unwrap().is_none());
    let p = won(a.try_acquire_permit(&name, Some(3), &opts).await.unwrap());
    match b.try_acquire_permit(&name, Some(5), &opts).await {
        Err(e @ LeaseError::LimitMismatch { .. }) => {
            let LeaseError::LimitMismatch { stored, asked, .. } = &e else {
                unreachable!()
            };
            assert_eq!((*stored, *asked), (3, 5));
            let m = e.to_string();
            assert!(
                m.contains('3') && m.contains('5') && m.contains("limit=None"),
                "{m}"
            );
        }
        other => panic!("expected LimitMismatch, got {other:?}"),
    }
    // limit=None uses the stored one.
    let q = won(b.try_acquire_permit(&name, None, &opts).await.unwrap());
    assert_eq!(q.slot(), 1);
    p.release().await.unwrap();
    q.release().await.unwrap();
    // The limit stays stored when nobody holds a permit.
    let info = a.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!((info.limit, info.holders.len()), (3, 0));
    assert!(matches!(
        b.try_acquire_permit(&name, Some(4), &opts).await,
        Err(LeaseError::LimitMismatch {
            stored: 3,
            asked: 4,
            ..
        })
    ));
}

pub async fn bad_limits_are_refused(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-bad");
    for limit in [0, MAX_SEMAPHORE_LIMIT + 1, u32::MAX] {
        match c
            .try_acquire_permit(&name, Some(limit), &LeaseOptions::default())
            .await
        {
            Err(LeaseError::InvalidArgument(m)) => {
                assert!(
                    m.contains(&limit.to_string()) && m.contains("2147483647"),
                    "{m}"
                );
            }
            other => panic!("expected InvalidArgument for {limit}, got {other:?}"),
        }
        assert!(matches!(
            c.set_semaphore_limit(&name, limit).await,
            Err(LeaseError::InvalidArgument(_))
        ));
    }
    assert!(
        c.semaphore_info(&name).await.unwrap().is_none(),
        "nothing written"
    );
}

pub async fn lowering_the_limit_evicts_nobody_and_admits_nobody_until_below(h: &Harness) {
    let c = h.client().await;
    let admin = h.client().await;
    let name = unique("sem-lower");
    let opts = LeaseOptions::default();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(won(c
            .try_acquire_permit(&name, Some(5), &opts)
            .await
            .unwrap()));
    }
    assert_eq!(admin.set_semaphore_limit(&name, 3).await.unwrap(), Some(5));
    // Nobody evicted.
    let info = admin.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!((info.limit, info.holders.len()), (3, 5));
    for p in &held {
        p.renew().await.unwrap();
    }
    // The old limit is refused now, the new one admits nobody until fewer than 3 are held.
    assert!(matches!(
        c.try_acquire_permit(&name, Some(5), &opts).await,
        Err(LeaseError::LimitMismatch {
            stored: 3,
            asked: 5,
            ..
        })
    ));
    // Release the holders of slots 0 and 1 first: free slots below the limit, still 3 held.
    held.sort_by_key(Permit::slot);
    let mut rest = held.split_off(2);
    for p in held {
        assert!(p.release().await.unwrap());
        assert!(full(
            &c.try_acquire_permit(&name, Some(3), &opts).await.unwrap()
        ));
    }
    // Slots 2, 3, 4 held: release slot 4, and 2 are left: one is admitted, below the limit.
    let last = rest.pop().unwrap();
    assert_eq!(last.slot(), 4);
    assert!(last.release().await.unwrap());
    let p = won(c.try_acquire_permit(&name, None, &opts).await.unwrap());
    assert!(p.slot() < 3);
    assert!(full(
        &c.try_acquire_permit(&name, None, &opts).await.unwrap()
    ));
    // Raised again: room for two more.
    assert_eq!(admin.set_semaphore_limit(&name, 5).await.unwrap(), Some(3));
    let q = won(c.try_acquire_permit(&name, Some(5), &opts).await.unwrap());
    let r = won(c.try_acquire_permit(&name, Some(5), &opts).await.unwrap());
    assert!(full(
        &c.try_acquire_permit(&name, Some(5), &opts).await.unwrap()
    ));
    let slots: BTreeSet<u32> = rest.iter().chain([&p, &q, &r]).map(Permit::slot).collect();
    assert_eq!(slots.len(), 5);
    for x in rest.into_iter().chain([p, q, r]) {
        assert!(x.release().await.unwrap());
    }
}

pub async fn tokens_strictly_increase_and_freed_slots_are_reused(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-tokens");
    let a = won(c
        .try_acquire_permit(&name, Some(2), &short(300))
        .await
        .unwrap());
    let b = won(c
        .try_acquire_permit(&name, Some(2), &LeaseOptions::default())
        .await
        .unwrap());
    assert!(b.fencing_token() > a.fencing_token());
    assert_eq!((a.slot(), b.slot()), (0, 1));
    // b's slot released, a's expired: both are taken again, with higher tokens.
    assert!(b.release().await.unwrap());
    let b2 = won(c
        .try_acquire_permit(&name, Some(2), &LeaseOptions::default())
        .await
        .unwrap());
    assert_eq!(b2.slot(), 1, "the released slot is reused");
    assert!(b2.fencing_token() > b.fencing_token());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a2 = won(c
        .try_acquire_permit(&name, Some(2), &LeaseOptions::default())
        .await
        .unwrap());
    assert_eq!(a2.slot(), 0, "the expired permit's slot is reused");
    assert!(a2.fencing_token() > b2.fencing_token());
    assert_eq!(
        a.end(),
        Some(distributed_leasing::LeaseEnd::Lost(LostReason::Expired))
    );
    a2.release().await.unwrap();
    b2.release().await.unwrap();
}

pub async fn a_permit_release_is_owner_checked_and_adds_no_permit(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-release");
    let opts = LeaseOptions::default();
    let p = won(c.try_acquire_permit(&name, Some(1), &opts).await.unwrap());
    let record = permit_record(&name, p.slot());
    // Another id cannot release or renew it.
    let stranger = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        c.store().release(&record, &stranger).await.unwrap(),
        ReleaseOutcome::Lost(LostReason::HeldByOther)
    );
    assert_eq!(
        c.store()
            .renew(&record, &stranger, Duration::from_secs(30))
            .await
            .unwrap(),
        RenewOutcome::Lost(LostReason::HeldByOther)
    );
    // Releasing an unknown id of a free slot finds nothing.
    assert_eq!(
        c.store()
            .release(&permit_record(&name, 7), &stranger)
            .await
            .unwrap(),
        ReleaseOutcome::Lost(LostReason::Missing)
    );
    assert!(p.release().await.unwrap());
    assert!(!p.release().await.unwrap(), "a second release");
    // The holder's id again, past its release: nothing.
    assert_eq!(
        c.store().release(&record, p.lease_id()).await.unwrap(),
        ReleaseOutcome::Lost(LostReason::Missing)
    );
    // Still one permit: one taken, the next refused.
    let q = won(c.try_acquire_permit(&name, Some(1), &opts).await.unwrap());
    assert!(full(
        &c.try_acquire_permit(&name, Some(1), &opts).await.unwrap()
    ));
    assert!(!p.release().await.unwrap());
    assert!(full(
        &c.try_acquire_permit(&name, Some(1), &opts).await.unwrap()
    ));
    q.release().await.unwrap();
}

pub async fn an_expired_permit_is_never_renewed_or_re_created(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-expired");
    let p = won(c
        .try_acquire_permit(&name, Some(1), &short(200))
        .await
        .unwrap());
    let record = permit_record(&name, p.slot());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(p.is_lost());
    // The store agrees, and its late renew re-creates nothing.
    assert_eq!(
        c.store()
            .renew(&record, p.lease_id(), Duration::from_secs(30))
            .await
            .unwrap(),
        RenewOutcome::Lost(LostReason::Missing)
    );
    assert!(matches!(p.renew().await, Err(LeaseError::Lost { .. })));
    assert!(c
        .semaphore_info(&name)
        .await
        .unwrap()
        .unwrap()
        .holders
        .is_empty());
    let q = won(c
        .try_acquire_permit(&name, Some(1), &LeaseOptions::default())
        .await
        .unwrap());
    assert_eq!(q.slot(), p.slot());
    // The late holder can neither renew nor release its successor.
    assert_eq!(
        c.store()
            .renew(&record, p.lease_id(), Duration::from_secs(30))
            .await
            .unwrap(),
        RenewOutcome::Lost(LostReason::HeldByOther)
    );
    assert!(!p.release().await.unwrap());
    let info = c.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].info.lease_id, q.lease_id());
    q.release().await.unwrap();
}

pub async fn a_semaphore_and_a_lease_of_one_name_are_separate(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-and-lease");
    let lease = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let p = won(c
        .try_acquire_permit(&name, Some(1), &LeaseOptions::default())
        .await
        .unwrap());
    assert_eq!(p.name(), name);
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().lease_id,
        lease.lease_id()
    );
    let listed = c.list("").await.unwrap();
    assert!(
        listed.iter().all(|l| l.lease_id != p.lease_id()),
        "{listed:?}"
    );
    assert!(listed.iter().any(|l| l.lease_id == lease.lease_id()));
    let info = c.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].info.lease_id, p.lease_id());
    assert!(lease.release().await.unwrap());
    assert_eq!(
        c.semaphore_info(&name)
            .await
            .unwrap()
            .unwrap()
            .holders
            .len(),
        1
    );
    assert!(p.release().await.unwrap());
    // A lease name that looks like a slot's is just a lease.
    let other = format!("{name}:0");
    let l = c
        .acquire(&other, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(c.semaphore_info(&other).await.unwrap().is_none());
    l.release().await.unwrap();
}

pub async fn semaphores_are_listed_by_prefix_with_their_limits(h: &Harness) {
    let c = h.client().await;
    let base = unique("sem-list");
    let (a, b, braced) = (
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/{{c}}"),
    );
    let opts = LeaseOptions::default();
    let held: Vec<Permit> = vec![
        won(c.try_acquire_permit(&a, Some(3), &opts).await.unwrap()),
        won(c.try_acquire_permit(&a, Some(3), &opts).await.unwrap()),
    ];
    // No permit held: the stored limit is listed all the same.
    let gone = won(c.try_acquire_permit(&b, Some(5), &opts).await.unwrap());
    assert!(gone.release().await.unwrap());
    assert_eq!(c.set_semaphore_limit(&braced, 2).await.unwrap(), None);
    // Sharing the prefix as text but not the `/`, a semaphore named the bare prefix, and a
    // lease under the prefix: none listed under `{base}/`.
    let sibling = format!("{base}x/a");
    let p_sibling = won(c
        .try_acquire_permit(&sibling, Some(1), &opts)
        .await
        .unwrap());
    let p_bare = won(c.try_acquire_permit(&base, Some(4), &opts).await.unwrap());
    let lease_name = format!("{base}/lease");
    let lease = c.acquire(&lease_name, &opts, NOW).await.unwrap();

    let listed = c.list_semaphores(&format!("{base}/")).await.unwrap();
    let seen: Vec<(&str, u32, Vec<u32>)> = listed
        .iter()
        .map(|s| {
            let slots = s.holders.iter().map(|h| h.slot).collect();
            (s.name.as_str(), s.limit, slots)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (a.as_str(), 3, vec![0, 1]),
            (b.as_str(), 5, vec![]),
            (braced.as_str(), 2, vec![]),
        ],
        "{listed:?}"
    );
    let ids: Vec<&str> = listed[0]
        .holders
        .iter()
        .map(|h| h.info.lease_id.as_str())
        .collect();
    assert_eq!(ids, [held[0].lease_id(), held[1].lease_id()]);
    assert!(listed[0].holders.iter().all(|h| h.info.name == a));
    // The bare prefix takes the sibling and the bare name too; "" takes them all.
    let names = |l: Vec<SemaphoreInfo>| l.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(
        names(c.list_semaphores(&base).await.unwrap()),
        [
            base.clone(),
            a.clone(),
            b.clone(),
            braced.clone(),
            sibling.clone()
        ]
    );
    let all = names(c.list_semaphores("").await.unwrap());
    for name in [&base, &a, &b, &braced, &sibling] {
        assert!(all.contains(name), "{name} not in {all:?}");
    }
    assert!(!all.contains(&lease_name), "{all:?}");
    assert!(c
        .list_semaphores(&format!("{base}/none"))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        c.list_semaphores("bad\u{1e}").await,
        Err(LeaseError::InvalidArgument(_))
    ));
    for p in held.into_iter().chain([p_sibling, p_bare]) {
        assert!(p.release().await.unwrap());
    }
    assert!(lease.release().await.unwrap());
}

pub async fn a_huge_limit_with_a_long_name_stays_cheap(h: &Harness) {
    let c = h.client().await;
    let name = format!("{}-{}", "s".repeat(963), uuid::Uuid::new_v4());
    assert_eq!(name.len(), 1000);
    let opts = LeaseOptions::default();
    let before = h.slot_probes().await;
    let mut held = Vec::new();
    for i in 0..100 {
        let p = won(c
            .try_acquire_permit(&name, Some(MAX_SEMAPHORE_LIMIT), &opts)
            .await
            .unwrap());
        assert_eq!(p.slot(), i);
        held.push(p);
    }
    // The k-th acquire looks at the k slots held and the first free one, never at the limit.
    if let (Some(before), Some(after)) = (before, h.slot_probes().await) {
        assert!(
            after - before <= 100 * 101 / 2,
            "{} slots probed",
            after - before
        );
    }
    let info = c.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!((info.limit, info.holders.len()), (MAX_SEMAPHORE_LIMIT, 100));
    for p in held {
        assert!(p.release().await.unwrap());
    }
}

pub async fn a_release_wakes_a_permit_waiter(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-wake");
    let p = won(c
        .try_acquire_permit(&name, Some(1), &LeaseOptions::default())
        .await
        .unwrap());
    let waiter = {
        let (c, name) = (c.clone(), name.clone());
        tokio::spawn(async move {
            c.acquire_permit(
                &name,
                None,
                &LeaseOptions::default(),
                Some(Duration::from_secs(60)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    assert!(p.release().await.unwrap());
    // Woken by the release, not at the released permit's expiry (30 s away).
    let q = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken by the release")
        .unwrap()
        .unwrap();
    assert_eq!(q.slot(), 0);
    assert!(q.fencing_token() > p.fencing_token());
    q.release().await.unwrap();
}

pub async fn a_cancelled_permit_wait_leaves_nothing(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-cancel");
    let p = won(c
        .try_acquire_permit(&name, Some(1), &LeaseOptions::default())
        .await
        .unwrap());
    let waiter = {
        let (c, name) = (c.clone(), name.clone());
        tokio::spawn(async move {
            c.acquire_permit(&name, None, &LeaseOptions::default(), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert!(p.release().await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = c.semaphore_info(&name).await.unwrap().unwrap();
    assert!(info.holders.is_empty(), "{:?}", info.holders);
    let q = won(c
        .try_acquire_permit(&name, None, &LeaseOptions::default())
        .await
        .unwrap());
    q.release().await.unwrap();
}

pub async fn a_dropped_permit_is_released(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-drop");
    let p = won(c
        .try_acquire_permit(&name, Some(1), &LeaseOptions::default())
        .await
        .unwrap());
    drop(p);
    let q = c
        .acquire_permit(
            &name,
            Some(1),
            &LeaseOptions::default(),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(q.slot(), 0);
    q.release().await.unwrap();
}

pub async fn permits_are_renewed_in_the_background(h: &Harness) {
    let c = h.client().await;
    let name = unique("sem-renew");
    let opts = LeaseOptions {
        duration: Some(Duration::from_millis(600)),
        ..LeaseOptions::default()
    };
    let p = won(c.try_acquire_permit(&name, Some(2), &opts).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!p.is_lost());
    assert!(p.renewals() >= 1);
    let info = c.semaphore_info(&name).await.unwrap().unwrap();
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].info.lease_id, p.lease_id());
    assert!(p.release().await.unwrap());
}

/// The mutex cases on what is left of a semaphore (DistributedLock's trick): at limit 1, and at
/// limit 5 with 4 permits held, one free permit behaves as a lease: of many concurrent
/// acquirers exactly one wins, the others are refused naming the holders; its expiry lets the
/// next one in with a higher token; a waiter gets it on its release.
pub async fn the_last_free_permit_behaves_as_a_mutex(h: &Harness) {
    for (limit, held) in [(1u32, 0usize), (5, 4)] {
        let c = h.client().await;
        let name = unique("sem-mutex");
        let mut others = Vec::new();
        for _ in 0..held {
            others.push(won(c
                .try_acquire_permit(&name, Some(limit), &LeaseOptions::default())
                .await
                .unwrap()));
        }
        // Every racer's client first, so that the racers overlap within the 400 ms of a
        // permit (connecting a client may take longer than that on a loaded machine).
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(h.client().await);
        }
        let mut racers = Vec::new();
        for c in clients {
            let name = name.clone();
            racers.push(tokio::spawn(async move {
                c.try_acquire_permit(&name, Some(limit), &short(400))
                    .await
                    .unwrap()
            }));
        }
        let mut winners = Vec::new();
        for r in racers {
            match r.await.unwrap() {
                TryPermit::Acquired(p) => winners.push(p),
                TryPermit::Full { holders, .. } => assert_eq!(holders.len(), held + 1),
            }
        }
        assert_eq!(winners.len(), 1, "limit {limit} with {held} held");
        let first = winners.pop().unwrap();
        // Its expiry lets the next one in, with a higher token, in the same slot.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let next = won(c
            .try_acquire_permit(&name, None, &LeaseOptions::default())
            .await
            .unwrap());
        assert_eq!(next.slot(), first.slot());
        assert!(next.fencing_token() > first.fencing_token());
        assert!(
            !first.release().await.unwrap(),
            "the expired holder releases nothing"
        );
        // A waiter gets it on its release.
        let waiter = {
            let (c, name) = (c.clone(), name.clone());
            tokio::spawn(async move {
                c.acquire_permit(
                    &name,
                    None,
                    &LeaseOptions::default(),
                    Some(Duration::from_secs(30)),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(next.release().await.unwrap());
        let last = waiter.await.unwrap().unwrap();
        assert_eq!(last.slot(), next.slot());
        last.release().await.unwrap();
        for p in others {
            p.release().await.unwrap();
        }
    }
}

/// A permit acquire whose reply is lost with its connection is sent once more, saying it is a
/// retry. If the first send won, the retry keeps that slot: no second slot is taken, and none
/// is left held by nobody until it expires (the semaphore one permit short meanwhile). Stores
/// without one socket to cut skip this (see `Harness::cut_client`).
pub async fn a_permit_whose_reply_was_lost_takes_one_slot(h: &Harness) {
    let Some((c, mode)) = h.cut_client().await else {
        return;
    };
    let name = unique("permit-cut");
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(30)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    // Connected, with the scripts loaded: the next reply on the wire is the acquire's.
    let warm = won(c.try_acquire_permit(&name, Some(3), &opts).await.unwrap());
    assert!(warm.release().await.unwrap());
    mode.store(crate::common::cut_proxy::CUT_REPLY, Ordering::SeqCst);
    let p = won(c.try_acquire_permit(&name, Some(3), &opts).await.unwrap());
    assert_eq!(
        mode.load(Ordering::SeqCst),
        crate::common::cut_proxy::PASS,
        "the reply was cut"
    );
    let info = c.semaphore_info(&name).await.unwrap().expect("used");
    let held: Vec<_> = info
        .holders
        .iter()
        .map(|h| (h.slot, h.info.lease_id.clone(), h.info.fencing_token))
        .collect();
    assert_eq!(
        held,
        vec![(p.slot(), p.lease_id().to_owned(), Some(p.fencing_token()))],
        "the retry took a second slot: the first send's is held by nobody"
    );
    assert!(p.release().await.unwrap());
    assert!(c
        .semaphore_info(&name)
        .await
        .unwrap()
        .unwrap()
        .holders
        .is_empty());
    c.close().await;
}
