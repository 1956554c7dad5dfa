//! The storage abstraction: [`LeaseStore`], implemented once per backend.
//!
//! A store performs each operation atomically (one Lua script in Redis, one write transaction in
//! SQLite, one statement in PostgreSQL) and reports "held by someone else" as a normal outcome carrying the holder, so the
//! client can raise `Unavailable { holder }` without a second query. Stores know nothing of
//! renewal cadence, deadlines or retry schedules: that lives in the client, lease, renewal and
//! wait modules. What a store does know is how to tell this process's waiters that a lease was
//! released ([`LeaseStore::watch_releases`]), and its observers that a lease changed
//! ([`LeaseStore::watch_changes`]: releases, proclaims, and acquisitions where the feed carries
//! them: all of them on etcd, those made with [`AcquireRequest::announce`] on Redis and
//! PostgreSQL, in-process ones on SQLite).

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{LostReason, Result};
use crate::info::LeaseInfo;
use crate::wait::{ChangeWatch, ReleaseWatch};

pub(crate) mod common;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(any(feature = "postgres", feature = "etcd"))]
pub(crate) mod feed;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Longest lease name accepted (bytes). Long enough for paths and URLs, short enough to keep
/// keys cheap.
pub const MAX_NAME_LEN: usize = 1024;

/// What an acquire asks the store for.
#[derive(Debug, Clone, Copy)]
pub struct AcquireRequest<'a> {
    /// Lease name (validated by [`validate_name`]).
    pub name: &'a str,
    /// The new holder's id (a fresh UUID).
    pub lease_id: &'a str,
    /// How long the store keeps the lease without a renewal.
    pub duration: Duration,
    /// The holder's wall-clock time of acquisition, stored for people to read.
    pub acquired_at: DateTime<Utc>,
    /// Metadata stored with the lease.
    pub metadata: &'a BTreeMap<String, String>,
    /// Whether the store tells observers of this acquisition (an election's campaign sets it):
    /// on stores whose feed carries only what is announced (Redis, PostgreSQL), a new holder
    /// is then seen by observers without polling ([`ChangeWatch::announced`]). When false, an
    /// acquire does exactly what it did without it: no extra round trip, no publish.
    pub announce: bool,
}

/// The result of an acquire attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// The lease is ours, with this fencing token.
    Acquired {
        /// Strictly greater than every token handed out before for this name in this store.
        fencing_token: u64,
    },
    /// Someone else holds it.
    Held(LeaseInfo),
}

/// The result of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The lease is ours for another `duration`.
    Renewed,
    /// The lease is no longer ours.
    Lost(LostReason),
}

/// The result of a release by the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lease was ours and is deleted.
    Released,
    /// The lease was no longer ours when the release arrived: another lease id holds it, or
    /// the store no longer has it. Nothing was deleted.
    Lost(LostReason),
}

/// The result of a proclaim by the holder ([`LeaseStore::proclaim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProclaimOutcome {
    /// The lease was ours: its metadata is replaced; its lease id, fencing token,
    /// acquisition time and expiry are as they were.
    Proclaimed,
    /// The lease was no longer ours (another lease id holds it, or the store no longer has it,
    /// expired included). Nothing was changed.
    Lost(LostReason),
}

/// The result of an administrator's forced release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceReleased {
    /// A lease was deleted (the one named by its lease id, when one was given).
    Released,
    /// There was no lease to delete.
    Absent,
    /// A lease id was given and another holder has the lease now (it changed hands): nothing
    /// was deleted; this is the current holder.
    HeldByOther(LeaseInfo),
}

/// One lease of a batch renewal.
#[derive(Debug, Clone, Copy)]
pub struct RenewItem<'a> {
    /// Lease name.
    pub name: &'a str,
    /// The holder's lease id.
    pub lease_id: &'a str,
    /// The lease duration to set.
    pub duration: Duration,
}

/// A backend that keeps leases. Every method is one atomic operation on the store.
///
/// **Callers pass validated input**: every name (of a lease, and in a [`RenewItem`]) passes
/// [`validate_name`] and every metadata [`validate_metadata`]. A store does not check them
/// again. [`crate::LeaseClient`] is that edge: it checks each name and metadata it is given
/// before any store sees them, and the renewals and releases of a [`crate::Lease`] reuse the
/// name of its acquire. Code that calls a store directly must check first: on Redis, a name
/// ending in `:fence` would address another name's fencing counter (two holders), and a
/// metadata map past the limits fails inside the acquire script instead of being refused.
///
/// A caller that can use more than this trait of a particular store asks for that store by
/// its type (`Any`: `&dyn LeaseStore` converts to `&dyn Any`), as the Python bindings ask
/// [`redis::RedisStore::of`] whether they may drive a connection of their own.
#[async_trait]
pub trait LeaseStore: Any + Send + Sync + Debug {
    /// A short name for messages and banners: `redis`, `redis-cluster`, `sqlite`, `postgres`,
    /// `etcd`.
    fn kind(&self) -> &'static str;

    /// Takes the lease if nobody holds it; otherwise returns the holder.
    ///
    /// A lease id that already holds the lease is refused like any other holder: lease ids are
    /// unique per acquisition, and only a store's own retry of the very request whose reply it
    /// lost (the Redis store, after a dropped connection) may be re-admitted, never another
    /// process that happens to present the same id.
    ///
    /// # Errors
    /// Backend failures; `WrongType` if the stored record is not a lease.
    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome>;

    /// Extends the lease to `duration` from now if `lease_id` still holds it. The default is a
    /// batch of one ([`Self::renew_many`]); a store whose single renewal is cheaper than a
    /// batch overrides it (Redis: one script).
    ///
    /// # Errors
    /// Backend failures.
    async fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> Result<RenewOutcome> {
        self.renew_many(&[RenewItem {
            name,
            lease_id,
            duration,
        }])
        .await
        .pop()
        .unwrap_or(Ok(RenewOutcome::Lost(LostReason::Missing)))
    }

    /// Renews many leases at once, one result per item in order: each lease is extended to
    /// its `duration` from now if its lease id still holds it. A store that can renew a batch
    /// in fewer round trips does so (and says so in [`Self::renews_in_one_request`]); one that
    /// cannot sends the renewals concurrently ([`renew_each`]).
    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>>;

    /// Whether [`Self::renew_many`] renews a whole batch in one request (so its results
    /// arrive together anyway); otherwise the renewal scheduler sends renewals one by one and
    /// handles each reply as it arrives.
    fn renews_in_one_request(&self) -> bool {
        false
    }

    /// Deletes the lease if `lease_id` still holds it; otherwise says why it was not ours.
    ///
    /// # Errors
    /// Backend failures.
    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome>;

    /// Replaces the metadata of the lease with `metadata`, as a whole (keys not given are
    /// gone), if `lease_id` still holds it and it has not expired; otherwise says why it was
    /// not ours and changes nothing. Atomic and owner-checked (one script, statement, txn or
    /// write transaction); the lease id, fencing token, acquisition time and expiry stay as
    /// they are (a proclaim never extends the lease). Observers of the name are told, as of
    /// an acquisition ([`crate::wait::Change::Acquired`]): no waiter is woken.
    ///
    /// # Errors
    /// Backend failures.
    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome>;

    /// The current holder, if any.
    ///
    /// # Errors
    /// Backend failures.
    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>>;

    /// Closes every connection (and file) this store opened, waiting for what can be waited
    /// for; afterwards its operations fail. Clones of the store share what is closed. The
    /// default does nothing (a store that holds nothing open).
    async fn close(&self) {}

    /// Every held lease whose name starts with `prefix`.
    ///
    /// # Errors
    /// Backend failures.
    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>>;

    /// Deletes the lease whoever holds it (an administrator's tool), or, given `lease_id`, only
    /// if that lease id still holds it (a compare-and-delete: the holder an administrator was
    /// shown, not whoever holds it by the time they confirm). The fencing counter is kept, so
    /// tokens stay increasing. A record that is not a lease (no `leaseId`/`acquiredAt`) is
    /// never deleted.
    ///
    /// # Errors
    /// Backend failures; `WrongType` if the record is not a lease.
    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased>;

    /// Starts watching for releases of `name` by anyone (see [`crate::wait`]): the returned
    /// watch wakes one waiter per release (release and force release). Never fails: a store
    /// that cannot notify (or not right now) says so through [`ReleaseWatch::feed`], and the
    /// waiter polls. Call it *before* the acquire attempt whose refusal makes you wait, or a
    /// release in between goes unseen. Must be called from within a tokio runtime.
    ///
    /// The default never notifies.
    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        let _ = name;
        ReleaseWatch::none()
    }

    /// Starts observing the changes of `name` by anyone (see [`crate::election::Observer`]):
    /// every change the store's feed reports (releases and proclaims; every acquisition where
    /// the watch says [`ChangeWatch::acquisitions`], the announced ones where it says
    /// [`ChangeWatch::announced`]) is told to the watch; the observer re-reads the store
    /// then. Never fails: a feed that is not live says so, and the observer polls. Must be
    /// called from within a tokio runtime.
    ///
    /// The default reports nothing.
    fn watch_changes(&self, name: &str) -> ChangeWatch {
        let _ = name;
        ChangeWatch::none()
    }
}

#[cfg(feature = "network")]
pub(crate) use crate::task_slot::TaskSlot;

/// [`LeaseStore::renew_many`] for a store whose renewals cannot share a request (a Redis
/// Cluster's keys live in different slots): every item renewed on its own, all at once
/// (pipelined on a multiplexed connection).
pub async fn renew_each<S: LeaseStore + ?Sized>(
    store: &S,
    items: &[RenewItem<'_>],
) -> Vec<Result<RenewOutcome>> {
    futures_util::future::join_all(
        items
            .iter()
            .map(|i| store.renew(i.name, i.lease_id, i.duration)),
    )
    .await
}

/// The results of a batch renewal that failed as a whole (the store down): the same error for
/// every item. A batch of one gets the error itself, so that [`LeaseStore::renew`] (a batch of
/// one) fails exactly as the store did.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "etcd"))]
pub(crate) fn failed_batch(items: usize, e: crate::error::LeaseError) -> Vec<Result<RenewOutcome>> {
    use crate::error::{BackendErrorKind, LeaseError};
    if items == 1 {
        return vec![Err(e)];
    }
    (0..items)
        .map(|_| {
            Err(match &e {
                LeaseError::InvalidArgument(m) => LeaseError::InvalidArgument(m.clone()),
                LeaseError::Backend { kind, message } => {
                    LeaseError::backend(*kind, message.clone())
                }
                other => LeaseError::backend(BackendErrorKind::Other, other.to_string()),
            })
        })
        .collect()
}

/// Checks a lease name: not empty, at most [`MAX_NAME_LEN`] bytes, no control characters.
///
/// # Errors
/// `InvalidArgument` naming the problem.
pub fn validate_name(name: &str) -> Result<()> {
    use crate::error::LeaseError;
    if name.is_empty() {
        return Err(LeaseError::InvalidArgument(
            "lease name is empty; give a non-empty name such as 'critical-section-lock'".into(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(LeaseError::InvalidArgument(format!(
            "lease name is {} bytes long; the limit is {MAX_NAME_LEN} bytes: use a shorter name",
            name.len()
        )));
    }
    if name.ends_with(":fence") {
        return Err(LeaseError::InvalidArgument(format!(
            "lease name {name:?} ends with ':fence', which is reserved for fencing counters; choose another name"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(LeaseError::InvalidArgument(format!(
            "lease name {name:?} contains a control character; use printable characters only"
        )));
    }
    Ok(())
}

/// Checks a key prefix (`key_prefix`, `KeyPrefix`): at most [`MAX_NAME_LEN`] bytes, no
/// control characters (empty is allowed: keys are then the bare names) (a NUL or a newline in a key is a mistake, and would be
/// written into every key, row and etcd key of the client).
///
/// # Errors
/// `InvalidArgument` naming the prefix and what to give instead.
pub fn validate_key_prefix(prefix: &str) -> Result<()> {
    use crate::error::LeaseError;
    if prefix.len() > MAX_NAME_LEN {
        return Err(LeaseError::InvalidArgument(format!(
            "key_prefix is {} bytes long; the limit is {MAX_NAME_LEN} bytes: use a shorter prefix such as 'lease:'",
            prefix.len()
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(LeaseError::InvalidArgument(format!(
            "key_prefix {prefix:?} contains a control character; use printable characters only, such as 'lease:'"
        )));
    }
    Ok(())
}

/// Most metadata entries accepted per lease. Metadata describes the holder (instance, region,
/// host, start time); a Redis script also cannot take an unbounded number of fields at once
/// (Lua's `unpack` stops at about 8,000 values).
pub const MAX_METADATA_ENTRIES: usize = 1000;

/// Most metadata accepted per lease, keys and values together, in bytes of UTF-8. Every
/// `inspect`, `list` and refused acquire carries all of it.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Checks metadata: at most [`MAX_METADATA_ENTRIES`] entries and [`MAX_METADATA_BYTES`] bytes
/// of keys and values; keys not empty and without control characters (values may be anything).
/// [`crate::LeaseClient`] checks the metadata of every acquire with it, and [`crate::Lease`]
/// that of every proclaim (see [`LeaseStore`]).
///
/// # Errors
/// `InvalidArgument` naming the limit or the key.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<()> {
    use crate::error::LeaseError;
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(LeaseError::InvalidArgument(format!(
            "metadata has {} entries; the limit is {MAX_METADATA_ENTRIES} entries (and {MAX_METADATA_BYTES} bytes of keys and values): keep a few entries that describe the holder, and store larger data elsewhere with a reference to it in the metadata",
            metadata.len()
        )));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(LeaseError::InvalidArgument(format!(
            "metadata is {bytes} bytes (keys and values, UTF-8); the limit is {MAX_METADATA_BYTES} bytes (64 KiB) and {MAX_METADATA_ENTRIES} entries: store larger data elsewhere, with a reference to it in the metadata"
        )));
    }
    for key in metadata.keys() {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(LeaseError::InvalidArgument(format!(
                "metadata key {key:?} is empty or contains a control character; use a printable name such as 'instanceId'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: usize, value: &str) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("k{i}"), value.to_owned()))
            .collect()
    }

    #[test]
    fn metadata_up_to_the_limits_is_accepted() {
        assert!(validate_metadata(&meta(MAX_METADATA_ENTRIES, "v")).is_ok());
        let one = BTreeMap::from([("k".to_owned(), "v".repeat(MAX_METADATA_BYTES - 1))]);
        assert!(validate_metadata(&one).is_ok());
    }

    #[test]
    fn metadata_above_the_limits_is_refused_naming_the_limit() {
        for (metadata, limit) in [
            (meta(MAX_METADATA_ENTRIES + 1, "v"), "1000 entries"),
            (meta(8000, "v"), "1000 entries"),
            (
                BTreeMap::from([("k".to_owned(), "v".repeat(MAX_METADATA_BYTES))]),
                "65536 bytes",
            ),
        ] {
            match validate_metadata(&metadata) {
                Err(crate::error::LeaseError::InvalidArgument(m)) => {
                    assert!(m.contains(limit), "{m}");
                }
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
    }
}
