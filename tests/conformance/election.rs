//! Conformance cases for leader election (`distributed_leasing::election`); every store runs
//! each of them.
//!
//! Timing bounds are generous (the machine is shared): each bound is far longer than the fast
//! path needs and, where a case tests a fast path, far shorter than the slow path would take.

use std::collections::BTreeMap;
use std::time::Duration;

use distributed_leasing::election::{Election, LeaderInfo, Observer};
use distributed_leasing::store::ProclaimOutcome;
use distributed_leasing::wait::Feed;
use distributed_leasing::{LeaseError, LeaseOptions, LostReason};
use tokio::time::Instant;

use crate::waiting::CountingStore;
use crate::{unique, Harness};

const NOW: Option<Duration> = Some(Duration::ZERO);
/// Far longer than any change takes to be seen, so that only a broken observer fails.
const SEEN_WITHIN: Duration = Duration::from_secs(15);

async fn next(o: &mut Observer) -> Option<LeaderInfo> {
    tokio::time::timeout(SEEN_WITHIN, o.next())
        .await
        .expect("the observer saw the change in time")
        .expect("the observer reads")
}

fn with_meta(pairs: &[(&str, &str)]) -> LeaseOptions {
    LeaseOptions {
        metadata: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..LeaseOptions::default()
    }
}

pub async fn leader_is_none_before_anyone_campaigns(h: &Harness) {
    let c = h.client().await;
    let e = Election::new(c, &unique("elect-none"), Some("a")).unwrap();
    assert_eq!(e.leader().await.unwrap(), None);
    let mut o = e.observe();
    assert_eq!(
        next(&mut o).await,
        None,
        "the first value is the current one"
    );
}

pub async fn observers_see_successive_leaders_in_order(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-order");
    let a = Election::new(c.clone(), &name, Some("a")).unwrap();
    let b = Election::new(c.clone(), &name, Some("b")).unwrap();
    let d = Election::new(c.clone(), &name, Some("d")).unwrap();
    let mut o = a.observe();
    assert_eq!(next(&mut o).await, None);
    let mut seen = Vec::new();
    let mut terms = Vec::new();
    for (candidate, region) in [(&a, "us"), (&b, "eu"), (&d, "ap")] {
        let term = candidate
            .campaign(&with_meta(&[("region", region)]), NOW)
            .await
            .unwrap();
        // Wait for the observer to see this leader (it may see no leader first).
        let leader = loop {
            if let Some(l) = next(&mut o).await {
                break l;
            }
        };
        assert_eq!(leader.identity.as_deref(), Some(candidate.identity()));
        assert_eq!(leader.term, Some(term.fencing_token()));
        assert_eq!(
            leader.metadata.get("region").map(String::as_str),
            Some(region)
        );
        assert!(
            !leader.metadata.contains_key("instanceId"),
            "the identity is not metadata"
        );
        seen.push(leader.identity.clone().unwrap());
        terms.push(term.fencing_token());
        assert!(term.release().await.unwrap(), "resign");
    }
    assert_eq!(seen, ["a", "b", "d"]);
    assert!(
        terms.windows(2).all(|w| w[0] < w[1]),
        "terms increase: {terms:?}"
    );
    // After the last resignation: no leader.
    assert_eq!(next(&mut o).await, None);
}

pub async fn an_observer_sees_a_leader_expire_without_a_release(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-expire");
    let e = Election::new(c.clone(), &name, Some("mortal")).unwrap();
    let opts = LeaseOptions {
        duration: Some(Duration::from_millis(1500)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let term = e.campaign(&opts, NOW).await.unwrap();
    let mut o = e.observe();
    let first = next(&mut o).await.expect("a leader");
    assert_eq!(first.term, Some(term.fencing_token()));
    // Nobody releases: the lease expires, and the observer's timer at its expiry sees it.
    assert_eq!(next(&mut o).await, None, "no leader after the expiry");
    std::mem::forget(term); // dropping it would release it: the point is that nobody does
}

pub async fn a_failed_over_election_has_a_higher_term(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-failover");
    let a = Election::new(c.clone(), &name, Some("a")).unwrap();
    let b = Election::new(c.clone(), &name, Some("b")).unwrap();
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(1)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let t1 = a.campaign(&opts, NOW).await.unwrap();
    // b campaigns while a leads; a stops renewing (as if its process stopped): b takes over.
    let t2 = tokio::time::timeout(SEEN_WITHIN, b.campaign(&LeaseOptions::default(), None))
        .await
        .expect("b is elected after a's term expires")
        .unwrap();
    assert!(t2.fencing_token() > t1.fencing_token());
    assert!(t1.is_lost(), "a knows by its own clock that it lost");
    assert!(
        matches!(t1.release().await, Ok(false) | Err(_)),
        "a cannot resign b's term"
    );
    assert_eq!(
        b.leader().await.unwrap().unwrap().identity.as_deref(),
        Some("b")
    );
    t2.release().await.unwrap();
}

pub async fn names_that_are_prefixes_of_others_are_separate_elections(h: &Harness) {
    let c = h.client().await;
    let base = unique("elect-prefix");
    let names = [
        base.clone(),
        format!("{base}/b"),
        format!("{base}:b"),
        format!("{{{base}}}"),
    ];
    let mut terms = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let e = Election::new(c.clone(), n, Some(&format!("c{i}"))).unwrap();
        terms.push(e.campaign(&LeaseOptions::default(), NOW).await.unwrap());
    }
    for (i, n) in names.iter().enumerate() {
        let e = Election::new(c.clone(), n, Some("reader")).unwrap();
        let l = e.leader().await.unwrap().expect("a leader");
        assert_eq!(l.identity, Some(format!("c{i}")), "election {n}");
    }
    for t in terms {
        t.release().await.unwrap();
    }
}

pub async fn a_campaign_that_runs_out_names_the_leader(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-busy");
    let a = Election::new(c.clone(), &name, Some("incumbent")).unwrap();
    let b = Election::new(c.clone(), &name, Some("challenger")).unwrap();
    let t = a.campaign(&LeaseOptions::default(), NOW).await.unwrap();
    match b
        .campaign(&LeaseOptions::default(), Some(Duration::from_millis(300)))
        .await
    {
        Err(LeaseError::Unavailable { holder, .. }) => {
            let holder = holder.expect("the holder");
            assert_eq!(
                holder.metadata.get("instanceId").map(String::as_str),
                Some("incumbent")
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The leader campaigning again does not deadlock: it is refused at once (it leads already).
    let again = a.campaign(&LeaseOptions::default(), NOW).await;
    assert!(
        matches!(again, Err(LeaseError::Unavailable { .. })),
        "{again:?}"
    );
    t.release().await.unwrap();
}

pub async fn bad_identities_are_refused(h: &Harness) {
    let c = h.client().await;
    for bad in ["", "a\nb"] {
        let e = Election::new(c.clone(), &unique("elect-bad"), Some(bad));
        assert!(matches!(e, Err(LeaseError::InvalidArgument(_))), "{bad:?}");
    }
    let e = Election::new(c.clone(), &unique("elect-bad"), Some("ok")).unwrap();
    let clash = e
        .campaign(&with_meta(&[("instanceId", "someone else")]), NOW)
        .await;
    assert!(
        matches!(clash, Err(LeaseError::InvalidArgument(_))),
        "{clash:?}"
    );
    assert!(Election::new(c, "", None).is_err(), "a bad name is refused");
}

/// The next value an observer driven by a task of its own sent.
async fn recv(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Option<LeaderInfo>>,
) -> Option<LeaderInfo> {
    tokio::time::timeout(SEEN_WITHIN, seen.recv())
        .await
        .expect("the observer saw the change in time")
        .expect("the observer runs")
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    with_meta(pairs).metadata
}

pub async fn proclaim_replaces_the_metadata_and_keeps_identity_and_term(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-proclaim");
    let e = Election::new(c.clone(), &name, Some("leader")).unwrap();
    let term = e
        .campaign(&with_meta(&[("region", "us"), ("endpoint", "a:1")]), NOW)
        .await
        .unwrap();
    let before = c.inspect(&name).await.unwrap().expect("held");
    e.proclaim(&term, &meta(&[("endpoint", "b:2"), ("progress", "10%")]))
        .await
        .unwrap();
    let after = c.inspect(&name).await.unwrap().expect("still held");
    assert_eq!(
        after.metadata,
        meta(&[
            ("endpoint", "b:2"),
            ("progress", "10%"),
            ("instanceId", "leader")
        ]),
        "replaced as a whole ('region' is gone), the identity kept"
    );
    assert_eq!(after.lease_id, before.lease_id);
    assert_eq!(after.fencing_token, Some(term.fencing_token()));
    assert_eq!(after.acquired_at, before.acquired_at);
    let leader = e.leader().await.unwrap().expect("a leader");
    assert_eq!(leader.identity.as_deref(), Some("leader"));
    assert_eq!(leader.term, Some(term.fencing_token()));
    // Empty metadata: only the identity is left.
    e.proclaim(&term, &BTreeMap::new()).await.unwrap();
    let bare = c.inspect(&name).await.unwrap().expect("still held");
    assert_eq!(bare.metadata, meta(&[("instanceId", "leader")]));
    // The identity cannot be proclaimed away, and a bad key is refused before any write.
    for bad in [meta(&[("instanceId", "x")]), meta(&[("", "x")])] {
        let r = e.proclaim(&term, &bad).await;
        assert!(matches!(r, Err(LeaseError::InvalidArgument(_))), "{r:?}");
    }
    assert_eq!(
        c.inspect(&name).await.unwrap().unwrap().metadata,
        bare.metadata
    );
    assert!(!term.is_lost());
    assert!(term.release().await.unwrap(), "resign after proclaiming");
    assert_eq!(e.leader().await.unwrap(), None);
}

pub async fn proclaim_does_not_extend_the_expiry(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-proclaim-ttl");
    let e = Election::new(c.clone(), &name, Some("leader")).unwrap();
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(8)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let term = e.campaign(&opts, NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = e
        .leader()
        .await
        .unwrap()
        .unwrap()
        .expires_in
        .expect("a ttl");
    e.proclaim(&term, &meta(&[("step", "2")])).await.unwrap();
    let after = e.leader().await.unwrap().unwrap();
    assert_eq!(after.metadata, meta(&[("step", "2")]));
    let after = after
        .expires_in
        .expect("still a ttl: the proclaim kept the expiry");
    // Extended, it would show about 8 s again; kept, about 5.5 s (etcd counts whole seconds).
    assert!(
        after <= before + Duration::from_secs(1) && after <= Duration::from_millis(6600),
        "the ttl went from {before:?} to {after:?}: the proclaim extended the lease"
    );
    assert!(term.release().await.unwrap());
}

pub async fn proclaim_and_resign_by_a_non_leader_are_refused(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-not-leader");
    let a = Election::new(c.clone(), &name, Some("a")).unwrap();
    let b = Election::new(c.clone(), &name, Some("b")).unwrap();

    // Another lease id leads: a's term was force-released and b was elected.
    let ta = a.campaign(&with_meta(&[("v", "a")]), NOW).await.unwrap();
    c.force_release(&name).await.unwrap();
    let tb = b.campaign(&with_meta(&[("v", "b")]), NOW).await.unwrap();
    let r = a.proclaim(&ta, &meta(&[("v", "a2")])).await;
    assert!(matches!(r, Err(LeaseError::Lost { .. })), "{r:?}");
    assert!(ta.is_lost(), "a knows it lost");
    assert!(
        matches!(ta.release().await, Ok(false) | Err(LeaseError::Lost { .. })),
        "a cannot resign b's term"
    );
    let leader = b.leader().await.unwrap().expect("b leads");
    assert_eq!(leader.identity.as_deref(), Some("b"));
    assert_eq!(leader.term, Some(tb.fencing_token()));
    assert_eq!(leader.metadata, meta(&[("v", "b")]), "unchanged");
    // Straight to the store, as a stale process would: refused, nothing changed.
    let store = c.store();
    let mut stale = meta(&[("v", "stale")]);
    stale.insert("instanceId".into(), "a".into());
    assert!(matches!(
        store.proclaim(&name, ta.lease_id(), &stale).await.unwrap(),
        ProclaimOutcome::Lost(LostReason::HeldByOther)
    ));
    assert_eq!(
        b.leader().await.unwrap().unwrap().metadata,
        meta(&[("v", "b")])
    );

    // After a forced release with no successor: refused, and nothing is written back.
    c.force_release(&name).await.unwrap();
    let r = b.proclaim(&tb, &meta(&[("v", "b2")])).await;
    assert!(matches!(r, Err(LeaseError::Lost { .. })), "{r:?}");
    assert!(matches!(
        tb.release().await,
        Ok(false) | Err(LeaseError::Lost { .. })
    ));
    assert_eq!(b.leader().await.unwrap(), None, "no record was made");

    // After expiry: the handle refuses by its own clock; the store refuses a late write too.
    let short = LeaseOptions {
        duration: Some(Duration::from_secs(1)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let tc = a.campaign(&short, NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = a.proclaim(&tc, &meta(&[("v", "late")])).await;
    assert!(matches!(r, Err(LeaseError::Lost { .. })), "{r:?}");
    let mut late = meta(&[("v", "late")]);
    late.insert("instanceId".into(), "a".into());
    assert!(matches!(
        store.proclaim(&name, tc.lease_id(), &late).await.unwrap(),
        ProclaimOutcome::Lost(LostReason::Missing)
    ));
    assert!(matches!(
        tc.release().await,
        Ok(false) | Err(LeaseError::Lost { .. })
    ));
    assert_eq!(
        a.leader().await.unwrap(),
        None,
        "the expired term stays gone"
    );
}

pub async fn an_observer_sees_a_proclaim_once(h: &Harness) {
    let c = h.client().await;
    let name = unique("elect-observe-proclaim");
    let e = Election::new(c.clone(), &name, Some("leader")).unwrap();
    let term = e.campaign(&with_meta(&[("step", "1")]), NOW).await.unwrap();
    let mut o = e.observe();
    let first = next(&mut o).await.expect("a leader");
    assert_eq!(first.metadata, meta(&[("step", "1")]));
    e.proclaim(&term, &meta(&[("step", "2")])).await.unwrap();
    let second = next(&mut o).await.expect("the same leader");
    assert_eq!(second.term, first.term, "same term");
    assert_eq!(second.identity.as_deref(), Some("leader"));
    assert_eq!(second.metadata, meta(&[("step", "2")]));
    // The same metadata again is no change: the next value is the one after it, never a
    // repeat of step 2.
    e.proclaim(&term, &meta(&[("step", "2")])).await.unwrap();
    e.proclaim(&term, &meta(&[("step", "3")])).await.unwrap();
    let third = next(&mut o).await.expect("the same leader");
    assert_eq!(third.term, first.term);
    assert_eq!(third.metadata, meta(&[("step", "3")]), "not a repeat");
    assert!(term.release().await.unwrap());
    assert_eq!(next(&mut o).await, None);
}

pub async fn an_observer_sees_a_new_leader_from_the_feed(h: &Harness) {
    let plain = h.client().await;
    let counting = CountingStore::over(std::sync::Arc::clone(plain.store()));
    let c = distributed_leasing::LeaseClient::with_store(counting.clone(), crate::options());
    let name = unique("elect-announced");
    let watcher = Election::new(c, &name, Some("watcher")).unwrap();
    let candidate = Election::new(plain.clone(), &name, Some("candidate")).unwrap();
    // Driven all along by a task of its own, as a real observer is: it may poll meanwhile.
    let mut o = watcher.observe();
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while tx.send(o.next().await.expect("the observer reads")).is_ok() {}
    });
    assert_eq!(recv(&mut seen).await, None);
    let (announced, live) = {
        let w = plain.store().watch_changes(&name);
        (w.announced(), w.feed() == Feed::Live)
    };
    let reads = counting.inspects();
    // Nobody leads for a while: a feed that carries announced acquisitions needs no reads.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let term = candidate
        .campaign(&LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let leader = recv(&mut seen).await.expect("the new leader");
    let seen_after = t.elapsed();
    driver.abort();
    assert_eq!(leader.term, Some(term.fencing_token()));
    assert_eq!(leader.identity.as_deref(), Some("candidate"));
    let polls = counting.inspects() - reads;
    eprintln!(
        "{}: the new leader seen {seen_after:?} after its election, {polls} reads (announced: {announced}, live: {live})",
        plain.store().kind()
    );
    // Promptly: well under the slow poll for unannounced holders (5 s), on any store.
    assert!(
        seen_after < Duration::from_millis(2500),
        "the new leader was seen only after {seen_after:?}"
    );
    if announced && live {
        // One read prompted by the feed (and one spare for a stray wake-up): no polls.
        assert!(
            polls <= 2,
            "{polls} reads while nobody led for 1.5 s: the observer polled"
        );
    }
    assert!(term.release().await.unwrap());
}
