//! An in-memory [`LeaseStore`] on tokio's clock ([`MemStore`]) and a fault layer over it
//! ([`FaultStore`]) for tests of the client's state machine under paused time.
//!
//! `MemStore` keeps leases in a `Mutex<HashMap>` with their expiry on `tokio::time::Instant`
//! (so paused time drives it) and a per-name fencing counter that is never reset. It notifies
//! this process's waiters of releases through a [`ReleaseBoard`] whose feed is live (waiters do
//! not poll), or not at all ([`MemStore::without_notifications`]).
//!
//! `FaultStore` programs each operation ([`Op`]) with [`Fault`]s, consumed one per call in the
//! order pushed, then a standing fault if set, else none: a delay before the request reaches the
//! store (it is then applied by a task of its own, as a request on the wire is, even if the caller
//! gives up meanwhile), a delay of the reply, an error instead of the operation, or an error
//! after the operation was applied (a lost reply). Every call is counted, with its time.
//!
//! Its semantics are those of the real stores (DESIGN.md §3-4, `store/mod.rs`): owner-checked
//! renew, proclaim and release (a proclaim and an announced acquire tell observers), a lease id that already holds the lease refused like any other holder, a
//! release that finds another holder or no key answering `Lost(HeldByOther | Missing)`, a forced
//! release that compares lease ids when given one.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use distributed_leasing::error::{BackendErrorKind, LeaseError, LostReason, Result};
use distributed_leasing::info::LeaseInfo;
use distributed_leasing::store::{
    is_semaphore_record, permit_record, release_notice_name, renew_each, semaphore_key,
    AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore, PermitOutcome, PermitRequest,
    ProclaimOutcome, ReleaseOutcome, RenewItem, RenewOutcome, SemaphoreHolder, SemaphoreInfo,
    MAX_REPORTED_HOLDERS,
};
use distributed_leasing::wait::{Change, ChangeWatch, ReleaseBoard, ReleaseWatch};
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone)]
struct Record {
    lease_id: String,
    fencing_token: u64,
    acquired_at: DateTime<Utc>,
    metadata: BTreeMap<String, String>,
    expires_at: Instant,
}

impl Record {
    fn info(&self, name: &str, now: Instant) -> LeaseInfo {
        LeaseInfo {
            name: name.to_owned(),
            lease_id: self.lease_id.clone(),
            acquired_at: Some(self.acquired_at),
            fencing_token: Some(self.fencing_token),
            metadata: self.metadata.clone(),
            ttl: Some(self.expires_at.saturating_duration_since(now)),
            orphan: false,
        }
    }
}

#[derive(Debug, Default)]
struct Leases {
    records: HashMap<String, Record>,
    fences: HashMap<String, u64>,
    /// Semaphores: name → (limit, slots: the highest limit it ever had).
    semaphores: HashMap<String, (u32, u32)>,
    /// Slot records looked at by permit acquires (what an acquire costs).
    probes: u64,
}

impl Leases {
    /// The live record of `name`; an expired one is dropped on the way.
    fn live(&mut self, name: &str, now: Instant) -> Option<&mut Record> {
        if self.records.get(name).is_some_and(|r| r.expires_at <= now) {
            self.records.remove(name);
        }
        self.records.get_mut(name)
    }
}

/// Leases in memory, on tokio's clock.
#[derive(Debug)]
pub struct MemStore {
    leases: Mutex<Leases>,
    board: Option<Arc<ReleaseBoard>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A store whose releases are notified to waiters (a live feed: waiters do not poll).
    #[must_use]
    pub fn new() -> Self {
        Self {
            leases: Mutex::default(),
            board: Some(ReleaseBoard::subscribed(|_| {})),
        }
    }

    /// A store that never notifies: waiters poll and retry at the holder's expiry.
    #[must_use]
    pub fn without_notifications() -> Self {
        Self {
            leases: Mutex::default(),
            board: None,
        }
    }

    /// Takes `name` if free; otherwise returns the holder (whatever its lease id: the same id
    /// presented again is refused too).
    pub fn acquire(
        &self,
        name: &str,
        lease_id: &str,
        duration: Duration,
        acquired_at: DateTime<Utc>,
        metadata: &BTreeMap<String, String>,
    ) -> AcquireOutcome {
        let now = Instant::now();
        let mut l = lock(&self.leases);
        if let Some(r) = l.live(name, now) {
            return AcquireOutcome::Held(r.info(name, now));
        }
        let fence = l.fences.entry(name.to_owned()).or_insert(0);
        *fence += 1;
        let fencing_token = *fence;
        l.records.insert(
            name.to_owned(),
            Record {
                lease_id: lease_id.to_owned(),
                fencing_token,
                acquired_at,
                metadata: metadata.clone(),
                expires_at: now + duration,
            },
        );
        AcquireOutcome::Acquired { fencing_token }
    }

    /// Takes `name` as [`Self::acquire`] does and, when `announce`, tells its observers.
    pub fn acquire_announcing(&self, req: &AcquireRequest<'_>) -> AcquireOutcome {
        let outcome = self.acquire(
            req.name,
            req.lease_id,
            req.duration,
            req.acquired_at,
            req.metadata,
        );
        if req.announce && matches!(outcome, AcquireOutcome::Acquired { .. }) {
            self.changed(req.name);
        }
        outcome
    }

    /// Replaces the metadata of `name` as a whole if `lease_id` holds it (its expiry and
    /// token untouched), and tells its observers.
    pub fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> ProclaimOutcome {
        let now = Instant::now();
        let outcome = match lock(&self.leases).live(name, now) {
            Some(r) if r.lease_id == lease_id => {
                r.metadata = metadata.clone();
                ProclaimOutcome::Proclaimed
            }
            Some(_) => ProclaimOutcome::Lost(LostReason::HeldByOther),
            None => ProclaimOutcome::Lost(LostReason::Missing),
        };
        if outcome == ProclaimOutcome::Proclaimed {
            self.changed(name);
        }
        outcome
    }

    /// Extends `name` to `duration` from now if `lease_id` holds it.
    pub fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> RenewOutcome {
        let now = Instant::now();
        match lock(&self.leases).live(name, now) {
            Some(r) if r.lease_id == lease_id => {
                r.expires_at = now + duration;
                RenewOutcome::Renewed
            }
            Some(_) => RenewOutcome::Lost(LostReason::HeldByOther),
            None => RenewOutcome::Lost(LostReason::Missing),
        }
    }

    /// Deletes `name` if `lease_id` holds it, and tells a waiter.
    pub fn release(&self, name: &str, lease_id: &str) -> ReleaseOutcome {
        let now = Instant::now();
        let outcome = {
            let mut l = lock(&self.leases);
            match l.live(name, now) {
                Some(r) if r.lease_id == lease_id => {
                    l.records.remove(name);
                    ReleaseOutcome::Released
                }
                Some(_) => ReleaseOutcome::Lost(LostReason::HeldByOther),
                None => ReleaseOutcome::Lost(LostReason::Missing),
            }
        };
        if outcome == ReleaseOutcome::Released {
            self.notify(name);
        }
        outcome
    }

    /// Deletes `name` if held (by `lease_id`, when given), and tells a waiter.
    pub fn force_release(&self, name: &str, lease_id: Option<&str>) -> ForceReleased {
        let now = Instant::now();
        let outcome = {
            let mut l = lock(&self.leases);
            match l.live(name, now) {
                None => ForceReleased::Absent,
                Some(r) if lease_id.is_some_and(|id| id != r.lease_id) => {
                    ForceReleased::HeldByOther(r.info(name, now))
                }
                Some(_) => {
                    l.records.remove(name);
                    ForceReleased::Released
                }
            }
        };
        if outcome == ForceReleased::Released {
            self.notify(name);
        }
        outcome
    }

    fn notify(&self, name: &str) {
        if let Some(board) = &self.board {
            board.notify(&release_notice_name(name));
        }
    }

    /// Takes a permit as the stores do ([`LeaseStore::try_acquire_permit`]): the stored limit
    /// checked or set, the lowest free slot (stopping at the first free one while the limit
    /// was never lowered, else counting every slot below the highest limit), the token from
    /// the semaphore's counter, the slot's record a lease record.
    ///
    /// # Errors
    /// `LimitMismatch`; `InvalidArgument` for `limit: None` on a semaphore never used.
    pub fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let now = Instant::now();
        let mut l = lock(&self.leases);
        let (limit, slots) = match (l.semaphores.get(req.name).copied(), req.limit) {
            (Some((stored, _)), Some(asked)) if stored != asked => {
                return Err(LeaseError::LimitMismatch {
                    name: req.name.to_owned(),
                    stored,
                    asked,
                })
            }
            (Some(config), _) => config,
            (None, Some(limit)) => {
                l.semaphores.insert(req.name.to_owned(), (limit, limit));
                (limit, limit)
            }
            (None, None) => return Err(no_stored_limit(req.name)),
        };
        let mut holders = Vec::new();
        let mut live = 0u32;
        let mut free = None;
        let mut above = false;
        for slot in 0..slots {
            l.probes += 1;
            let record = permit_record(req.name, slot);
            match l.live(&record, now) {
                Some(r) => {
                    live += 1;
                    above |= slot >= limit;
                    if holders.len() < MAX_REPORTED_HOLDERS {
                        let info = r.info(req.name, now);
                        holders.push(SemaphoreHolder { slot, info });
                    }
                }
                None if slot < limit && free.is_none() => {
                    free = Some(slot);
                    // Never lowered: a free slot below the limit proves room.
                    if slots == limit {
                        break;
                    }
                }
                None => {}
            }
        }
        let Some(slot) = free.filter(|_| live < limit) else {
            return Ok(PermitOutcome::Full { limit, holders });
        };
        if slots > limit && !above {
            // Nobody above the lowered limit any more: acquires stop at the first free slot again.
            l.semaphores.insert(req.name.to_owned(), (limit, limit));
        }
        let fence = l.fences.entry(semaphore_key(req.name)).or_insert(0);
        *fence += 1;
        let fencing_token = *fence;
        l.records.insert(
            permit_record(req.name, slot),
            Record {
                lease_id: req.lease_id.to_owned(),
                fencing_token,
                acquired_at: req.acquired_at,
                metadata: req.metadata.clone(),
                expires_at: now + req.duration,
            },
        );
        Ok(PermitOutcome::Acquired {
            slot,
            fencing_token,
        })
    }

    /// The semaphore `name`: its limit and live permits; `None` if never used.
    #[must_use]
    pub fn semaphore(&self, name: &str) -> Option<SemaphoreInfo> {
        let now = Instant::now();
        let mut l = lock(&self.leases);
        let (limit, _) = l.semaphores.get(name).copied()?;
        l.records.retain(|_, r| r.expires_at > now);
        let mut holders: Vec<SemaphoreHolder> = l
            .records
            .iter()
            .filter_map(|(n, r)| {
                let (sem, slot) = distributed_leasing::store::parse_permit_record(n)?;
                (sem == name).then(|| SemaphoreHolder {
                    slot,
                    info: r.info(name, now),
                })
            })
            .collect();
        holders.sort_by_key(|h| h.slot);
        Some(SemaphoreInfo {
            name: name.to_owned(),
            limit,
            holders,
        })
    }

    /// Every semaphore whose name starts with `prefix`, by name.
    #[must_use]
    pub fn semaphores(&self, prefix: &str) -> Vec<SemaphoreInfo> {
        let mut names: Vec<String> = lock(&self.leases)
            .semaphores
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.semaphore(n)).collect()
    }

    /// Stores `limit` for `name`; returns the limit it had.
    pub fn set_limit(&self, name: &str, limit: u32) -> Option<u32> {
        let mut l = lock(&self.leases);
        let before = l.semaphores.get(name).copied();
        let slots = before.map_or(limit, |(_, slots)| slots.max(limit));
        l.semaphores.insert(name.to_owned(), (limit, slots));
        before.map(|(limit, _)| limit)
    }

    /// Slot records looked at by permit acquires so far.
    #[must_use]
    pub fn slot_probes(&self) -> u64 {
        lock(&self.leases).probes
    }

    /// Tells the observers of `name` of a change that is not a release.
    fn changed(&self, name: &str) {
        if let Some(board) = &self.board {
            board.changed(name, Change::Acquired);
        }
    }

    /// The current holder of `name`, if any.
    #[must_use]
    pub fn holder(&self, name: &str) -> Option<LeaseInfo> {
        let now = Instant::now();
        lock(&self.leases)
            .live(name, now)
            .map(|r| r.info(name, now))
    }

    /// Every held lease whose name starts with `prefix`, by name.
    #[must_use]
    pub fn list_prefix(&self, prefix: &str) -> Vec<LeaseInfo> {
        let now = Instant::now();
        let mut l = lock(&self.leases);
        l.records.retain(|_, r| r.expires_at > now);
        let mut out: Vec<LeaseInfo> = l
            .records
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && !is_semaphore_record(n))
            .map(|(n, r)| r.info(n, now))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Another process takes `name` (if free) for `ttl` under `lease_id`; returns its outcome.
    pub fn take_as(&self, name: &str, lease_id: &str, ttl: Duration) -> AcquireOutcome {
        self.acquire(
            name,
            lease_id,
            ttl,
            Utc::now(),
            &BTreeMap::from([("instanceId".to_owned(), lease_id.to_owned())]),
        )
    }

    /// The record of `name` vanishes (the server lost its data): no notification.
    pub fn wipe(&self, name: &str) -> bool {
        lock(&self.leases).records.remove(name).is_some()
    }

    /// The last fencing token handed out for `name` (0 if none).
    #[must_use]
    pub fn fence(&self, name: &str) -> u64 {
        lock(&self.leases).fences.get(name).copied().unwrap_or(0)
    }

    /// The number of waiters of this process watching `name`.
    #[must_use]
    pub fn waiters(&self, name: &str) -> usize {
        self.board.as_ref().map_or(0, |b| b.waiters(name))
    }

    fn watch(&self, name: &str) -> ReleaseWatch {
        match &self.board {
            Some(board) => {
                let watch = board.join(name);
                board.set_live(name);
                watch
            }
            None => ReleaseWatch::none(),
        }
    }

    /// An observer of `name`'s changes: releases, proclaims and announced acquisitions (as
    /// on Redis and PostgreSQL; plain acquisitions are not reported).
    fn observe(&self, name: &str) -> ChangeWatch {
        match &self.board {
            Some(board) => {
                let watch = board.observe(name).with_announced();
                board.set_live(name);
                watch
            }
            None => ChangeWatch::none(),
        }
    }
}

#[async_trait]
impl LeaseStore for MemStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        Ok(self.acquire_announcing(req))
    }

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        Ok(MemStore::proclaim(self, name, lease_id, metadata))
    }

    async fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> Result<RenewOutcome> {
        Ok(MemStore::renew(self, name, lease_id, duration))
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        renew_each(self, items).await
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        Ok(MemStore::release(self, name, lease_id))
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        Ok(self.holder(name))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        Ok(self.list_prefix(prefix))
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        Ok(MemStore::force_release(self, name, lease_id))
    }

    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        self.acquire_permit(req)
    }

    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        Ok(self.semaphore(name))
    }

    async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        Ok(self.semaphores(prefix))
    }

    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        Ok(self.set_limit(name, limit))
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        self.watch(name)
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        self.observe(name)
    }
}

/// The refusal of `limit: None` for a semaphore that has no stored limit.
fn no_stored_limit(name: &str) -> LeaseError {
    LeaseError::InvalidArgument(format!(
        "semaphore {name:?} has no stored limit (it was never used): give its limit"
    ))
}

/// One operation of the store, as the fault layer programs and counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Acquire,
    Renew,
    Proclaim,
    Release,
    Inspect,
    List,
    ForceRelease,
    AcquirePermit,
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fault {
    /// Before the request reaches the store. The request is then applied by a task of its own,
    /// whether or not its caller still waits (a request already on the wire).
    pub before: Duration,
    /// Whether the operation is applied at all.
    pub skip: bool,
    /// Between the store's answer and the caller's receiving it.
    pub after: Duration,
    /// The reply (or error) reaches the caller no sooner than this.
    pub reply_at: Option<Instant>,
    /// The caller gets this error instead of the store's answer.
    pub error: Option<BackendErrorKind>,
}

impl Fault {
    /// Applied at once; the reply takes `d`.
    #[must_use]
    pub fn slow_reply(d: Duration) -> Self {
        Self {
            after: d,
            ..Self::default()
        }
    }

    /// The request takes `d` to reach the store, then is applied and answered (a reply that
    /// arrives after its caller may have given up).
    #[must_use]
    pub fn late(d: Duration) -> Self {
        Self {
            before: d,
            ..Self::default()
        }
    }

    /// Not applied; the caller gets an error of `kind`.
    #[must_use]
    pub fn error(kind: BackendErrorKind) -> Self {
        Self {
            skip: true,
            error: Some(kind),
            ..Self::default()
        }
    }

    /// Applied; the reply is lost and the caller gets an error of `kind`.
    #[must_use]
    pub fn lost_reply(kind: BackendErrorKind) -> Self {
        Self {
            error: Some(kind),
            ..Self::default()
        }
    }

    /// The same fault, its reply (or error) arriving no sooner than `at`.
    #[must_use]
    pub fn replying_at(self, at: Instant) -> Self {
        Self {
            reply_at: Some(at),
            ..self
        }
    }
}

#[derive(Debug, Default)]
struct Program {
    queue: VecDeque<Fault>,
    standing: Option<Fault>,
}

#[derive(Debug, Default)]
struct Programs {
    /// By operation, and by lease name (`None`: any name without a program of its own).
    faults: HashMap<(Op, Option<String>), Program>,
    /// Every call: operation, name (the prefix for `List`), time.
    calls: Vec<(Op, String, Instant)>,
}

/// A [`MemStore`] behind programmable faults, with per-operation call counts.
#[derive(Debug)]
pub struct FaultStore {
    mem: Arc<MemStore>,
    programs: Mutex<Programs>,
}

impl FaultStore {
    /// Over a notifying [`MemStore`].
    #[must_use]
    pub fn new() -> Arc<Self> {
        Self::over(MemStore::new())
    }

    /// Over `mem`.
    #[must_use]
    pub fn over(mem: MemStore) -> Arc<Self> {
        Arc::new(Self {
            mem: Arc::new(mem),
            programs: Mutex::default(),
        })
    }

    /// The store itself, without faults or counting: what "the server" holds.
    #[must_use]
    pub fn mem(&self) -> &MemStore {
        &self.mem
    }

    /// This store as the client takes it.
    #[must_use]
    pub fn dyn_store(self: &Arc<Self>) -> Arc<dyn LeaseStore> {
        Arc::clone(self) as Arc<dyn LeaseStore>
    }

    fn program(&self, op: Op, name: Option<&str>, f: impl FnOnce(&mut Program)) {
        f(lock(&self.programs)
            .faults
            .entry((op, name.map(str::to_owned)))
            .or_default());
    }

    /// The next call of `op` not yet programmed gets `fault`.
    pub fn push(&self, op: Op, fault: Fault) {
        self.program(op, None, |p| p.queue.push_back(fault));
    }

    /// Every call of `op` past the pushed ones gets `fault` (`None`: no fault).
    pub fn set_standing(&self, op: Op, fault: Option<Fault>) {
        self.program(op, None, |p| p.standing = fault);
    }

    /// As [`Self::push`], for the calls on lease `name` only (which then ignore the others).
    pub fn push_for(&self, op: Op, name: &str, fault: Fault) {
        self.program(op, Some(name), |p| p.queue.push_back(fault));
    }

    /// As [`Self::set_standing`], for the calls on lease `name` only.
    pub fn set_standing_for(&self, op: Op, name: &str, fault: Option<Fault>) {
        self.program(op, Some(name), |p| p.standing = fault);
    }

    /// Calls of `op` so far.
    #[must_use]
    pub fn calls(&self, op: Op) -> usize {
        self.call_times(op).len()
    }

    /// Calls of `op` on lease `name` so far.
    #[must_use]
    pub fn calls_for(&self, op: Op, name: &str) -> usize {
        self.call_times_for(op, name).len()
    }

    /// When each call of `op` was made.
    #[must_use]
    pub fn call_times(&self, op: Op) -> Vec<Instant> {
        let p = lock(&self.programs);
        p.calls.iter().filter(|c| c.0 == op).map(|c| c.2).collect()
    }

    /// When each call of `op` on lease `name` was made.
    #[must_use]
    pub fn call_times_for(&self, op: Op, name: &str) -> Vec<Instant> {
        let p = lock(&self.programs);
        p.calls
            .iter()
            .filter(|c| c.0 == op && c.1 == name)
            .map(|c| c.2)
            .collect()
    }

    fn next_fault(&self, op: Op, name: &str) -> Fault {
        let mut p = lock(&self.programs);
        p.calls.push((op, name.to_owned(), Instant::now()));
        let own = (op, Some(name.to_owned()));
        let key = if p.faults.contains_key(&own) {
            own
        } else {
            (op, None)
        };
        p.faults.get_mut(&key).map_or_else(Fault::default, |f| {
            f.queue.pop_front().or(f.standing).unwrap_or_default()
        })
    }

    /// Runs one call of `op` on `name` through its fault: `apply` is the store's side of it.
    async fn call<T: Send + 'static>(
        &self,
        op: Op,
        name: &str,
        apply: impl FnOnce(&MemStore) -> T + Send + 'static,
    ) -> Result<T> {
        let fault = self.next_fault(op, name);
        let answer = if fault.skip {
            tokio::time::sleep(fault.before).await;
            None
        } else if fault.before.is_zero() {
            Some(apply(&self.mem))
        } else {
            let mem = Arc::clone(&self.mem);
            let on_the_wire = tokio::spawn(async move {
                tokio::time::sleep(fault.before).await;
                apply(&mem)
            });
            Some(on_the_wire.await.expect("store task"))
        };
        tokio::time::sleep(fault.after).await;
        if let Some(at) = fault.reply_at {
            tokio::time::sleep_until(at).await;
        }
        match (fault.error, answer) {
            (Some(kind), _) => Err(LeaseError::backend(
                kind,
                format!("injected {kind:?} on {op:?}"),
            )),
            (None, Some(answer)) => Ok(answer),
            (None, None) => panic!("a fault that skips the operation must give an error"),
        }
    }
}

#[async_trait]
impl LeaseStore for FaultStore {
    fn kind(&self) -> &'static str {
        "memory-faults"
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        let (name, lease_id, metadata) = (
            req.name.to_owned(),
            req.lease_id.to_owned(),
            req.metadata.clone(),
        );
        let (duration, acquired_at, announce) = (req.duration, req.acquired_at, req.announce);
        self.call(Op::Acquire, req.name, move |m| {
            m.acquire_announcing(&AcquireRequest {
                name: &name,
                lease_id: &lease_id,
                duration,
                acquired_at,
                metadata: &metadata,
                announce,
            })
        })
        .await
    }

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        let (n, lease_id, metadata) = (name.to_owned(), lease_id.to_owned(), metadata.clone());
        self.call(Op::Proclaim, name, move |m| {
            m.proclaim(&n, &lease_id, &metadata)
        })
        .await
    }

    async fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> Result<RenewOutcome> {
        let (n, lease_id) = (name.to_owned(), lease_id.to_owned());
        self.call(Op::Renew, name, move |m| m.renew(&n, &lease_id, duration))
            .await
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        renew_each(self, items).await
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        let (n, lease_id) = (name.to_owned(), lease_id.to_owned());
        self.call(Op::Release, name, move |m| m.release(&n, &lease_id))
            .await
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let n = name.to_owned();
        self.call(Op::Inspect, name, move |m| m.holder(&n)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let p = prefix.to_owned();
        self.call(Op::List, prefix, move |m| m.list_prefix(&p))
            .await
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        let (n, id) = (name.to_owned(), lease_id.map(str::to_owned));
        self.call(Op::ForceRelease, name, move |m| {
            m.force_release(&n, id.as_deref())
        })
        .await
    }

    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let (name, lease_id, metadata) = (
            req.name.to_owned(),
            req.lease_id.to_owned(),
            req.metadata.clone(),
        );
        let (limit, duration, acquired_at) = (req.limit, req.duration, req.acquired_at);
        self.call(Op::AcquirePermit, req.name, move |m| {
            m.acquire_permit(&PermitRequest {
                name: &name,
                limit,
                lease_id: &lease_id,
                duration,
                acquired_at,
                metadata: &metadata,
            })
        })
        .await?
    }

    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        Ok(self.mem.semaphore(name))
    }

    async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        Ok(self.mem.semaphores(prefix))
    }

    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        Ok(self.mem.set_limit(name, limit))
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        self.mem.watch(name)
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        self.mem.observe(name)
    }
}
