//! distributed-leasing: leases (locks with a time limit) shared by many processes on many machines.
//!
//! One holder at a time per lease name; the holder keeps the lease alive by renewing it in the
//! background; if the holder dies the lease expires by itself; anyone may look at who holds it.
//! Every acquisition carries a fencing token that strictly increases per name, so a resource can
//! refuse a holder whose lease has silently expired.
//!
//! The core is plain Rust on tokio and usable without Python: [`LeaseClient`] over a
//! [`store::LeaseStore`] (Redis, Redis Cluster, PostgreSQL or etcd for many machines, SQLite
//! for one). The Python module lives under `src/python/` behind the `python` feature and is the
//! only place that touches PyO3.
//!
//! ```no_run
//! # async fn demo() -> Result<(), distributed_leasing::LeaseError> {
//! use distributed_leasing::{LeaseClient, LeaseOptions};
//! let client = LeaseClient::connect("redis://127.0.0.1:6379", Default::default()).await?;
//! let lease = client.acquire("critical-section-lock", &LeaseOptions::default(), Some(std::time::Duration::ZERO)).await?;
//! println!("fencing token {}", lease.fencing_token());
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! Cargo features: one per store, all on by default (`redis`, `sqlite`, `postgres`, `etcd`, and
//! `entra-id` for Microsoft Entra ID sign-in to Redis); `python` builds the extension module.
//! Opening a store whose feature is off is a [`LeaseError::Config`] naming the feature.
//!
//! The API is what this page lists. Hidden modules (`client`, `lease`, `renewal`, `clock`, `wait`,
//! `secret`) are public only for the crate's own tests and bindings: use the names re-exported
//! here instead, and expect their other contents to change.

mod acquiring;
mod backoff;
#[doc(hidden)]
pub mod client;
#[doc(hidden)]
pub mod clock;
pub mod config;
pub mod election;
pub mod error;
mod holding;
pub mod info;
#[doc(hidden)]
pub mod lease;
pub mod metrics;
#[doc(hidden)]
pub mod renewal;
#[doc(hidden)]
pub mod secret;
pub mod semaphore;
pub mod store;
#[cfg(feature = "network")]
mod task_slot;
pub mod timing;
#[doc(hidden)]
pub mod wait;

#[cfg(feature = "python")]
mod python;

pub use backoff::Backoff;
pub use client::{ClientOptions, LeaseClient, LeaseOptions, TryAcquire};
pub use error::{BackendErrorKind, LeaseError, LostReason, Result};
pub use info::LeaseInfo;
pub use lease::{Lease, LeaseEnd, LeaseEvent, LeaseEvents};
pub use secret::Secret;
pub use semaphore::{Permit, TryPermit};
