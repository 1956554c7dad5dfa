//! Conformance cases for leader election (`distributed_leasing::election`); every store runs
//! each of them.
//!
//! Timing bounds are generous (the machine is shared): each bound is far longer than the fast
//! path needs and, where a case tests a fast path, far shorter than the slow path would take.

use std::collections::BTreeMap;
use std::time::Duration;

use distributed_leasing::election::{Election, LeaderInfo, Observer};
use distributed_leasing::{LeaseError, LeaseOptions};

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
