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
//!
//! Semaphores ([`LeaseStore::try_acquire_permit`], [`LeaseStore::semaphore_info`],
//! [`LeaseStore::list_semaphores`], [`LeaseStore::set_semaphore_limit`]): a permit is a lease record named [`permit_record`] (a
//! name no lease can take), so renewing, releasing and force-releasing it are the lease
//! operations; a store keeps beside it the semaphore's limit and token counter. The in-memory
//! test store and every store (SQLite, Redis, Redis Cluster, PostgreSQL, etcd) have them;
//! the trait's default refuses them with a `Config` error ([`semaphores_unsupported`]).

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

/// The largest semaphore limit accepted (2^31 − 1): slots are `0..limit`.
pub const MAX_SEMAPHORE_LIMIT: u32 = i32::MAX as u32;

/// Most holders a refused permit acquire reports ([`PermitOutcome::Full`]).
pub const MAX_REPORTED_HOLDERS: usize = 100;

/// What marks a record of a semaphore among the leases of a store: the name of a permit's
/// record (a lease record, renewed and released by the lease operations) is
/// `\u{1e}{<semaphore>}\u{1e}<slot>` ([`permit_record`]; the slot in 10 digits, so that the
/// records of one semaphore sort by slot; the braces make every key of one semaphore share a
/// Redis Cluster hash tag, whatever braces the name holds: the tag ends at the first `}`, at
/// the same place in each). [`validate_name`] refuses control
/// characters, so no lease name can take this form, and a semaphore and a lease of the same name
/// never see each other's records; stores leave these records out of [`LeaseStore::list`].
pub const SEMAPHORE_MARK: char = '\u{1e}';

/// The name of the lease record that holds `slot` of the semaphore `name`.
#[must_use]
pub fn permit_record(name: &str, slot: u32) -> String {
    format!("{SEMAPHORE_MARK}{{{name}}}{SEMAPHORE_MARK}{slot:010}")
}

/// The semaphore and slot of a permit's record name ([`permit_record`]); `None` for a lease's.
#[must_use]
pub fn parse_permit_record(record: &str) -> Option<(&str, u32)> {
    let rest = record.strip_prefix(SEMAPHORE_MARK)?.strip_prefix('{')?;
    let (name, slot) = rest.rsplit_once(SEMAPHORE_MARK)?;
    let name = name.strip_suffix('}')?;
    (slot.len() == 10 && slot.bytes().all(|b| b.is_ascii_digit()))
        .then(|| slot.parse().ok())
        .flatten()
        .map(|slot| (name, slot))
}

/// The key of a semaphore's own state in a store (its limit, its token counter) and the name
/// its waiters watch ([`LeaseStore::watch_releases`]): a release of any of its permits is
/// told under this name ([`release_notice_name`]).
#[must_use]
pub fn semaphore_key(name: &str) -> String {
    format!("{SEMAPHORE_MARK}{{{name}}}")
}

/// The semaphore whose own key ([`semaphore_key`]) is `record`; `None` for any other record
/// (a lease's, a permit's).
#[must_use]
pub fn parse_semaphore_key(record: &str) -> Option<&str> {
    let name = record
        .strip_prefix(SEMAPHORE_MARK)?
        .strip_prefix('{')?
        .strip_suffix('}')?;
    (!name.contains(SEMAPHORE_MARK)).then_some(name)
}

/// The bounds (exclusive) between which the record names of the permits of `name` sort, and
/// nothing else: names hold no control character.
#[must_use]
pub fn permit_records_range(name: &str) -> (String, String) {
    (
        format!("{SEMAPHORE_MARK}{{{name}}}{SEMAPHORE_MARK}"),
        format!("{SEMAPHORE_MARK}{{{name}}}\u{1f}"),
    )
}

/// The name under which a store tells waiters of the release of `record`: the semaphore's
/// ([`semaphore_key`]) for a permit's record, else the lease's own.
#[must_use]
pub fn release_notice_name(record: &str) -> std::borrow::Cow<'_, str> {
    match parse_permit_record(record) {
        Some((name, _)) => std::borrow::Cow::Owned(semaphore_key(name)),
        None => std::borrow::Cow::Borrowed(record),
    }
}

/// Whether `name` is a record of a semaphore ([`SEMAPHORE_MARK`]), which lease listings leave
/// out.
#[must_use]
pub fn is_semaphore_record(name: &str) -> bool {
    name.starts_with(SEMAPHORE_MARK)
}

/// What a permit acquire asks the store for ([`LeaseStore::try_acquire_permit`]).
#[derive(Debug, Clone, Copy)]
pub struct PermitRequest<'a> {
    /// The semaphore's name (validated by [`validate_name`]).
    pub name: &'a str,
    /// The limit the caller expects (1..=[`MAX_SEMAPHORE_LIMIT`]): stored if the semaphore has
    /// none, else it must equal the stored one (`LimitMismatch`); `None` uses the stored one.
    pub limit: Option<u32>,
    /// The new permit's lease id (a fresh UUID).
    pub lease_id: &'a str,
    /// How long the store keeps the permit without a renewal (on the server's clock).
    pub duration: Duration,
    /// The holder's wall-clock time of acquisition, stored for people to read.
    pub acquired_at: DateTime<Utc>,
    /// Metadata stored with the permit.
    pub metadata: &'a BTreeMap<String, String>,
}

pub use crate::info::SemaphoreHolder;

/// The result of a permit acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermitOutcome {
    /// A permit is ours: its slot and its fencing token (strictly greater than every token
    /// handed out before by this semaphore).
    Acquired {
        /// The slot taken (the lowest free one).
        slot: u32,
        /// From the semaphore's one counter.
        fencing_token: u64,
    },
    /// The semaphore is full.
    Full {
        /// The stored limit.
        limit: u32,
        /// The holders (at most a bounded number of them), by slot.
        holders: Vec<SemaphoreHolder>,
    },
}

/// A semaphore as anyone may see it ([`LeaseStore::semaphore_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreInfo {
    /// The semaphore's name.
    pub name: String,
    /// The stored limit.
    pub limit: u32,
    /// The live permits, by slot.
    pub holders: Vec<SemaphoreHolder>,
}

/// The error of a semaphore operation on a store that does not have semaphores (yet).
#[must_use]
pub fn semaphores_unsupported(kind: &str) -> crate::error::LeaseError {
    crate::error::LeaseError::Config(format!(
        "the {kind} store does not support semaphores in this version; use the SQLite store, or a lease"
    ))
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

    /// Takes a permit of the semaphore `req.name` if it has a free slot; otherwise returns its
    /// limit and holders. One atomic operation: checks the stored limit (or stores
    /// `req.limit` for a semaphore that has none), takes the lowest free slot below the limit
    /// unless `limit` permits are live (lowering a limit evicts nobody: slots above it count
    /// until they are released), draws the token from the semaphore's counter, and writes the
    /// slot's record, a lease record named [`permit_record`] with its own expiry on the
    /// store's clock. That record is renewed, released and force-released by the lease
    /// operations; its release is told to the waiters of [`semaphore_key`]. A store whose
    /// limit was never lowered stops at the first free slot (no scan of the limit).
    ///
    /// # Errors
    /// `LimitMismatch` when `req.limit` differs from the stored limit; `InvalidArgument` for
    /// `limit: None` on a semaphore with no stored limit; backend failures. The default: a
    /// store without semaphores.
    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let _ = req;
        Err(semaphores_unsupported(self.kind()))
    }

    /// The semaphore `name`: its stored limit and live permits; `None` for a name never used
    /// (the limit stays stored when no permit is held).
    ///
    /// # Errors
    /// Backend failures.
    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        let _ = name;
        Err(semaphores_unsupported(self.kind()))
    }

    /// Every semaphore whose name starts with `prefix` (literally; `""` for all), by name: its
    /// stored limit and live permits, as [`Self::semaphore_info`] tells them (a semaphore whose
    /// permits are all released or expired is listed with its limit and no holder). Leases are
    /// never listed.
    ///
    /// # Errors
    /// Backend failures; a malformed semaphore record. The default: a store without
    /// semaphores.
    async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        let _ = prefix;
        Err(semaphores_unsupported(self.kind()))
    }

    /// Stores `limit` (1..=[`MAX_SEMAPHORE_LIMIT`]) as the limit of the semaphore `name`
    /// (an administrator's act), creating it if it was never used; returns the limit it had.
    /// Nobody is evicted: after a lowering, nobody is admitted until fewer than `limit`
    /// permits are live.
    ///
    /// # Errors
    /// Backend failures.
    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        let _ = (name, limit);
        Err(semaphores_unsupported(self.kind()))
    }

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
    fn permit_records_round_trip_and_no_lease_name_can_take_their_form() {
        let name = "a:b\u{e9}:0";
        let record = permit_record(name, 42);
        assert_eq!(parse_permit_record(&record), Some((name, 42)));
        assert!(is_semaphore_record(&record));
        assert!(validate_name(&record).is_err());
        assert!(validate_name(&semaphore_key(name)).is_err());
        assert_eq!(parse_permit_record(name), None);
        // Sorted by slot within a semaphore.
        assert!(permit_record(name, 9) < permit_record(name, 10));
        assert_eq!(release_notice_name(&record), semaphore_key(name));
        assert_eq!(parse_semaphore_key(&semaphore_key(name)), Some(name));
        assert_eq!(parse_semaphore_key(&record), None);
        assert_eq!(parse_semaphore_key(name), None);
        assert_eq!(release_notice_name(name), name);
        let (low, high) = permit_records_range(name);
        assert!(low < record && record < high);
        for other in ["a:b\u{e9}:0}x", "a:b\u{e9}", "a:b\u{e9}:00"] {
            let r = permit_record(other, 1);
            assert!(r < low || r > high, "{other}");
        }
        assert_eq!(parse_permit_record("\u{1e}{a}\u{1e}12"), None);
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
