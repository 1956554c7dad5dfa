//! Process-wide counters of lease activity, named as the .NET origin's metrics (`leasing.*`).
//!
//! Plain atomics, so counting costs a relaxed add and works without any metrics library; read
//! them all with [`snapshot`] (the Python module exposes it as `distributed_leasing.metrics()`).
//! The origin's `leasing.acquisitions.total` counts attempts with a `result` tag; having no tags
//! here, attempts are split into [`ACQUISITIONS`] (won) and [`ACQUIRE_REFUSALS`] (held by another).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: AtomicU64::new(0),
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
    }

    /// The current count.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }

    /// The metric's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge {
    name: &'static str,
    value: AtomicI64,
}

impl Gauge {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            value: AtomicI64::new(0),
        }
    }

    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Relaxed);
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> i64 {
        self.value.load(Relaxed)
    }
}

/// Leases acquired.
pub static ACQUISITIONS: Counter = Counter::new("leasing.acquisitions.total");
/// Acquire attempts refused because another holder had the lease.
pub static ACQUIRE_REFUSALS: Counter = Counter::new("leasing.acquisitions.refused.total");
/// Successful renewals (background and explicit).
pub static RENEWALS: Counter = Counter::new("leasing.renewals.total");
/// Failed renewal attempts of the background renewal (each retried until the deadline).
pub static RENEWAL_FAILURES: Counter = Counter::new("leasing.renewal.failures.total");
/// Leases lost while held.
pub static LEASES_LOST: Counter = Counter::new("leasing.leases_lost.total");
/// Leases released by their holder (explicitly or by dropping the handle).
pub static RELEASES: Counter = Counter::new("leasing.releases.total");
/// Release notifications received from the store (Redis pub/sub messages).
pub static RELEASE_NOTIFICATIONS: Counter = Counter::new("leasing.wait.notifications.total");
/// Leases held by this process now.
pub static ACTIVE_LEASES: Gauge = Gauge::new("leasing.active_leases.current");

/// Every metric and its value, by name.
#[must_use]
pub fn snapshot() -> Vec<(&'static str, i64)> {
    let counters = [
        &ACQUISITIONS,
        &ACQUIRE_REFUSALS,
        &RENEWALS,
        &RENEWAL_FAILURES,
        &LEASES_LOST,
        &RELEASES,
        &RELEASE_NOTIFICATIONS,
    ];
    let mut out: Vec<(&'static str, i64)> = counters
        .iter()
        .map(|c| (c.name(), i64::try_from(c.get()).unwrap_or(i64::MAX)))
        .collect();
    out.push((ACTIVE_LEASES.name, ACTIVE_LEASES.get()));
    out
}
