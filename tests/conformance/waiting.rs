//! Conformance cases for waiting (release notification, expiry, timeout, cancellation, fairness
//! of progress) and for lease events; every store runs each of them.
//!
//! Timing bounds are generous: each test makes the slow path (polling, or the holder's TTL)
//! take far longer than its bound, so it fails if the fast path is broken, and passes on a
//! loaded machine when it is not.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distributed_leasing::store::{AcquireOutcome, AcquireRequest};
use distributed_leasing::{Backoff, LeaseError, LeaseEvent, LeaseOptions, LostReason, TryAcquire};
use tokio::time::Instant;

use crate::{unique, Harness};

const NOW: Option<Duration> = Some(Duration::ZERO);

/// A waiter that could only succeed in time by being notified: it polls once a minute.
fn slow_polling() -> LeaseOptions {
    LeaseOptions {
        backoff: Some(Backoff::fixed(Duration::from_secs(60))),
        ..LeaseOptions::default()
    }
}

/// A lease held by nobody in this process (as if its holder had crashed): it goes away only by
/// expiring after `ttl`.
async fn orphan(h: &Harness, name: &str, ttl: Duration) {
    let c = h.client().await;
    let meta = std::collections::BTreeMap::new();
    let out = c
        .store()
        .try_acquire(&AcquireRequest {
            name,
            lease_id: "crashed-holder",
            duration: ttl,
            acquired_at: chrono::Utc::now(),
            metadata: &meta,
            announce: false,
        })
        .await
        .unwrap();
    assert!(matches!(out, AcquireOutcome::Acquired { .. }));
}

pub async fn release_wakes_a_waiter(h: &Harness) {
    let holder_client = h.client().await;
    let waiter_client = h.client().await;
    let name = unique("wake");
    let a = holder_client
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let n = name.clone();
    let waiter = tokio::spawn(async move {
        let l = waiter_client
            .acquire(&n, &slow_polling(), Some(Duration::from_secs(50)))
            .await;
        (l, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the lease is held: the waiter waits");
    a.release().await.unwrap();
    let released = Instant::now();
    let (b, acquired) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter finishes")
        .unwrap();
    let b = b.expect("the waiter acquires after the release");
    // It polls once a minute and the holder had 30 s left: only a notification is this fast.
    let took = acquired - released;
    assert!(took < Duration::from_secs(10), "woken after {took:?}");
    assert!(b.fencing_token() > a.fencing_token());
    b.release().await.unwrap();
}

pub async fn force_release_wakes_a_waiter(h: &Harness) {
    let admin = h.client().await;
    let waiter_client = h.client().await;
    let name = unique("force-wake");
    orphan(h, &name, Duration::from_secs(40)).await;
    let n = name.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .acquire(&n, &slow_polling(), Some(Duration::from_secs(50)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished());
    let t = Instant::now();
    assert!(admin.force_release(&name).await.unwrap());
    let b = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter finishes")
        .unwrap()
        .expect("the waiter acquires after the force release");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    b.release().await.unwrap();
}

pub async fn only_one_waiter_wins_each_release(h: &Harness) {
    let holder_client = h.client().await;
    let name = Arc::new(unique("one-wins"));
    let a = holder_client
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    // Five waiters on three clients; each holds for a while, then releases.
    let clients = [h.client().await, h.client().await, h.client().await];
    let held: Arc<Mutex<Vec<(u64, Instant, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let c = clients[i % 3].clone();
        let (name, held) = (Arc::clone(&name), Arc::clone(&held));
        tasks.push(tokio::spawn(async move {
            let l = c
                .acquire(&name, &slow_polling(), Some(Duration::from_secs(100)))
                .await
                .unwrap();
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let token = l.fencing_token();
            let end = Instant::now();
            assert!(l.release().await.unwrap(), "still held when releasing");
            held.lock().unwrap().push((token, start, end));
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.release().await.unwrap();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(100), t)
            .await
            .expect("every waiter gets its turn")
            .unwrap();
    }
    let mut held = held.lock().unwrap().clone();
    assert_eq!(held.len(), 5);
    held.sort_by_key(|(token, ..)| *token);
    let tokens: BTreeSet<u64> = held.iter().map(|(t, ..)| *t).collect();
    assert_eq!(tokens.len(), 5, "five distinct holders");
    for w in held.windows(2) {
        assert!(
            w[0].2 <= w[1].1,
            "holders overlapped: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

pub async fn expiry_wakes_a_waiter(h: &Harness) {
    let c = h.client().await;
    let name = unique("expiry-wake");
    let ttl = Duration::from_millis(1_500);
    orphan(h, &name, ttl).await;
    let t = Instant::now();
    // Polls once a minute, and nobody releases: it must come back at the holder's expiry.
    let b = c
        .acquire(&name, &slow_polling(), Some(Duration::from_secs(50)))
        .await
        .expect("acquired once the holder's TTL ran out");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1_200), "too early: {took:?}");
    assert!(took < Duration::from_secs(20), "too late: {took:?}");
    b.release().await.unwrap();
}

pub async fn wait_times_out_after_the_wait(h: &Harness) {
    let c = h.client().await;
    let name = unique("wait-timeout");
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let t = Instant::now();
    let r = c
        .acquire(
            &name,
            &LeaseOptions::default(),
            Some(Duration::from_millis(1_200)),
        )
        .await;
    let took = t.elapsed();
    match r {
        Err(LeaseError::Unavailable {
            holder: Some(holder),
            ..
        }) => assert_eq!(holder.lease_id, a.lease_id()),
        other => panic!("expected Unavailable with the holder, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(1_100),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "gave up late: {took:?}");
    a.release().await.unwrap();
}

pub async fn backoff_limit_caps_the_attempts(h: &Harness) {
    let c = h.client().await;
    let name = unique("limit");
    // A holder that renews but has at most a second left at any time: a waiter retries at
    // each refusal's TTL, so without a limit it would wait the full minute.
    let holder_opts = LeaseOptions {
        duration: Some(Duration::from_secs(1)),
        renew_interval: Some(Duration::from_millis(250)),
        ..LeaseOptions::default()
    };
    let a = c.acquire(&name, &holder_opts, NOW).await.unwrap();
    let limited = LeaseOptions {
        backoff: Some(Backoff::fixed(Duration::from_millis(100)).limit(3)),
        ..LeaseOptions::default()
    };
    let t = Instant::now();
    let r = c
        .acquire(&name, &limited, Some(Duration::from_secs(60)))
        .await;
    assert!(
        matches!(r, Err(LeaseError::Unavailable { .. })),
        "expected Unavailable, got {r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    a.release().await.unwrap();
}

pub async fn cancelled_waiter_leaves_nothing_behind(h: &Harness) {
    let c = h.client().await;
    let other = h.client().await;
    let name = unique("cancel");
    // A parked waiter, cancelled: the release that follows is not taken by it.
    let a = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let (o, n) = (other.clone(), name.clone());
    let waiter = tokio::spawn(async move { o.acquire(&n, &slow_polling(), None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    a.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        c.inspect(&name).await.unwrap().is_none(),
        "a cancelled waiter took the lease"
    );
    // Waiters cancelled at every moment around a release, attempts on the wire included: an
    // attempt already sent may still win after the cancel, and the lease it won is given back at
    // once (so the next round gets it within its wait, not after the 30 s TTL).
    for round in 0..20u64 {
        let a = c
            .acquire(
                &name,
                &LeaseOptions::default(),
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let (o, n) = (other.clone(), name.clone());
        let waiter = tokio::spawn(async move { o.acquire(&n, &slow_polling(), None).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.release().await.unwrap();
        tokio::time::sleep(Duration::from_micros(round * 150)).await;
        waiter.abort();
        if let Ok(Ok(l)) = waiter.await {
            // It finished before the abort: a normal winner, which releases.
            l.release().await.unwrap();
        }
        let until = Instant::now() + Duration::from_secs(10);
        while c.inspect(&name).await.unwrap().is_some() {
            assert!(
                Instant::now() < until,
                "round {round}: a cancelled waiter kept the lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // And a waiter that still wants it gets it: no wake-up was swallowed by the cancelled ones.
    let a = c
        .acquire(
            &name,
            &LeaseOptions::default(),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let (o, n) = (other.clone(), name.clone());
    let keen = tokio::spawn(async move {
        o.acquire(&n, &slow_polling(), Some(Duration::from_secs(50)))
            .await
    });
    let (o, n) = (other.clone(), name.clone());
    let quitter = tokio::spawn(async move { o.acquire(&n, &slow_polling(), None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.release().await.unwrap();
    quitter.abort();
    // A quitter that won before its abort finished with the lease: its task's output (kept
    // until the handle is read or dropped) is dropped here, which releases it and wakes the
    // keen one. (Kept unread, it held the lease for its whole duration: on the in-memory
    // store the quitter's attempt can win between the release and the abort.)
    drop(quitter.await);
    let t = Instant::now();
    // Only a swallowed wake-up makes this wait for a minute.
    let l = tokio::time::timeout(Duration::from_secs(30), keen)
        .await
        .expect("the remaining waiter finishes")
        .unwrap()
        .expect("the remaining waiter gets the lease");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    l.release().await.unwrap();
}

pub async fn hundred_waiters_each_acquire_once(h: &Harness) {
    let holder_client = h.client().await;
    let name = Arc::new(unique("hundred"));
    let first = holder_client
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let clients = [
        h.client().await,
        h.client().await,
        h.client().await,
        h.client().await,
    ];
    let start = Instant::now();
    let tokens: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = clients[i % clients.len()].clone();
        let (name, tokens) = (Arc::clone(&name), Arc::clone(&tokens));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let l = c
                .acquire(
                    &name,
                    &LeaseOptions::default(),
                    Some(Duration::from_secs(240)),
                )
                .await
                .unwrap_or_else(|e| panic!("waiter {i} starved: {e}"));
            tokens.lock().unwrap().push(l.fencing_token());
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert!(l.release().await.unwrap());
            t.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.release().await.unwrap();
    let mut longest = Duration::ZERO;
    for t in tasks {
        longest = longest.max(
            tokio::time::timeout(Duration::from_secs(250), t)
                .await
                .expect("all hundred finish")
                .unwrap(),
        );
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 100, "every waiter acquired exactly once");
    let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), 100);
    assert!(distinct.iter().all(|t| *t > first.fencing_token()));
    eprintln!(
        "100 waiters served in {:?}; the longest wait {longest:?}",
        start.elapsed()
    );
}

pub async fn events_report_renewals_and_the_loss(h: &Harness) {
    let c = h.client().await;
    let name = unique("events");
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(5)),
        renew_interval: Some(Duration::from_millis(200)),
        ..LeaseOptions::default()
    };
    let l = c.acquire(&name, &opts, NOW).await.unwrap();
    let mut events = l.events();
    let mut renewed = Vec::new();
    while renewed.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("renewal events")
        {
            Some(LeaseEvent::Renewed { renewals }) => renewed.push(renewals),
            other => panic!("expected Renewed, got {other:?}"),
        }
    }
    assert!(renewed[1] > renewed[0], "{renewed:?}");
    assert!(c.force_release(&name).await.unwrap());
    let mut last = None;
    while let Some(e) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("the loss is reported")
    {
        last = Some(e);
    }
    assert_eq!(
        last,
        Some(LeaseEvent::Lost {
            reason: LostReason::Missing
        })
    );
    assert!(l.renewals() >= 2);
    // A stream opened after the end yields the end, then stops.
    let mut late = l.events();
    assert_eq!(
        late.next().await,
        Some(LeaseEvent::Lost {
            reason: LostReason::Missing
        })
    );
    assert_eq!(late.next().await, None);
    // A released lease's stream ends with Released.
    let m = c
        .acquire(&unique("events-rel"), &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let mut ev = m.events();
    m.release().await.unwrap();
    assert_eq!(ev.next().await, Some(LeaseEvent::Released));
    assert_eq!(ev.next().await, None);
    // try_acquire of a held name reports the holder without waiting.
    let held = c
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert!(matches!(
        c.try_acquire(&name, &LeaseOptions::default())
            .await
            .unwrap(),
        TryAcquire::Held(_)
    ));
    held.release().await.unwrap();
}

/// A store that counts acquire attempts and reads (and otherwise is the real one).
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn distributed_leasing::store::LeaseStore>,
    attempts: std::sync::atomic::AtomicUsize,
    inspects: std::sync::atomic::AtomicUsize,
}

impl CountingStore {
    /// Over `inner`, counting from zero.
    pub fn over(inner: Arc<dyn distributed_leasing::store::LeaseStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            attempts: std::sync::atomic::AtomicUsize::new(0),
            inspects: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Inspects (reads of one lease) so far.
    pub fn inspects(&self) -> usize {
        self.inspects.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl distributed_leasing::store::LeaseStore for CountingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn try_acquire(
        &self,
        req: &AcquireRequest<'_>,
    ) -> distributed_leasing::Result<AcquireOutcome> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.try_acquire(req).await
    }
    async fn renew(
        &self,
        name: &str,
        lease_id: &str,
        duration: Duration,
    ) -> distributed_leasing::Result<distributed_leasing::store::RenewOutcome> {
        self.inner.renew(name, lease_id, duration).await
    }
    async fn renew_many(
        &self,
        items: &[distributed_leasing::store::RenewItem<'_>],
    ) -> Vec<distributed_leasing::Result<distributed_leasing::store::RenewOutcome>> {
        distributed_leasing::store::renew_each(self, items).await
    }
    async fn release(
        &self,
        name: &str,
        lease_id: &str,
    ) -> distributed_leasing::Result<distributed_leasing::store::ReleaseOutcome> {
        self.inner.release(name, lease_id).await
    }
    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> distributed_leasing::Result<distributed_leasing::store::ProclaimOutcome> {
        self.inner.proclaim(name, lease_id, metadata).await
    }
    async fn inspect(
        &self,
        name: &str,
    ) -> distributed_leasing::Result<Option<distributed_leasing::LeaseInfo>> {
        self.inspects
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.inspect(name).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> distributed_leasing::Result<Vec<distributed_leasing::LeaseInfo>> {
        self.inner.list(prefix).await
    }
    async fn force_release(
        &self,
        name: &str,
        lease_id: Option<&str>,
    ) -> distributed_leasing::Result<distributed_leasing::store::ForceReleased> {
        self.inner.force_release(name, lease_id).await
    }
    fn watch_releases(&self, name: &str) -> distributed_leasing::wait::ReleaseWatch {
        self.inner.watch_releases(name)
    }
    fn watch_changes(&self, name: &str) -> distributed_leasing::wait::ChangeWatch {
        self.inner.watch_changes(name)
    }
}

pub async fn waiter_never_polls_faster_than_every_100_ms(h: &Harness) {
    let holder_client = h.client().await;
    let real = h.client().await;
    let counting = CountingStore::over(Arc::clone(real.store()));
    let c = distributed_leasing::LeaseClient::with_store(counting.clone(), crate::options());
    let name = unique("no-busy-poll");
    let a = holder_client
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    // Asks for 1 ms between polls: raised to 100 ms. The holder has 30 s left, so only polls
    // (where the store cannot notify) make attempts in these 2 s.
    let eager = LeaseOptions {
        backoff: Some(Backoff::fixed(Duration::from_millis(1))),
        ..LeaseOptions::default()
    };
    let r = c.acquire(&name, &eager, Some(Duration::from_secs(2))).await;
    assert!(matches!(r, Err(LeaseError::Unavailable { .. })), "{r:?}");
    let attempts = counting.attempts.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{}: {attempts} attempts in 2 s", c.store().kind());
    // First attempt, the one after subscribing, one at the end, and at most one per 100 ms.
    assert!(
        attempts <= 3 + 20,
        "{attempts} attempts in 2 s: polling too fast"
    );
    a.release().await.unwrap();
}
