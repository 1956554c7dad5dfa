//! Leader election over the lease of the same name: campaign, proclaim, leader, observe.
//!
//! An election is the lease of its name: a campaign is a waiting acquire (notified hand-off,
//! no time limit by default), the term is the lease's fencing token, loss of leadership is the
//! lease's loss, and resigning is releasing it. So a holder of the lease, whoever took it (the
//! .NET origin included, with no term), is the name's leader, and `inspect`/`list` show leaders.
//! Each candidate has a readable identity (by default `host:pid`), stored in the record as the
//! sample's `instanceId` metadata.
//!
//! Owns [`LeaderInfo`] (a leader as anyone sees it), [`Election`] and its [`Observer`], whose
//! rules are: the current value first (a leader or none), then every change it sees (a new
//! term, new metadata, no leader); it may skip intermediate values but never yields the same
//! value twice in a row, never a term lower than one it yielded, and re-reads and resumes after
//! a failed read. It re-reads when the store's change feed says the name changed
//! ([`crate::wait::ChangeWatch`]), at the leader's expiry (no keyspace notifications needed),
//! and on a poll schedule while the feed may miss changes.
//!
//! What the feeds carry, and so when an observer polls:
//! - every store's feed reports releases (forced ones included) and proclaims
//!   ([`Election::proclaim`], [`Lease::proclaim`]: new metadata, same term); a leader's end by
//!   expiry is seen by the timer at its expiry;
//! - etcd's watch reports every acquisition ([`ChangeWatch::acquisitions`]): no polling at all
//!   while the watch is live;
//! - Redis and PostgreSQL report the acquisitions that were announced
//!   ([`crate::LeaseOptions::announce`], which every [`Election::campaign`] sets; a plain
//!   acquire stays one round trip that publishes nothing) ([`ChangeWatch::announced`]). With no
//!   leader, an observer there sees a new elected leader from the feed, and re-reads only every
//!   [`UNANNOUNCED_POLL`] for a holder that did not announce itself (a plain lease of the same
//!   name, a .NET-origin holder);
//! - SQLite has no feed across processes (and the in-memory board of one process): its
//!   observers poll on the [`Backoff`] schedule, as every observer does while its feed is not
//!   live (a dropped connection, a server that refuses pub/sub).
//!
//! Proclaim: the leader replaces its metadata without a new term and without extending its
//! lease ([`crate::store::LeaseStore::proclaim`]: owner-checked and atomic on every store);
//! the identity stays in the record. A term that is lost by its own clock is refused before
//! any write, and one the store refuses ends as lost.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::client::{LeaseClient, LeaseOptions};
use crate::error::{LeaseError, Result};
use crate::info::LeaseInfo;
use crate::lease::Lease;
use crate::store::common::closed_error;
use crate::wait::{ChangeWatch, Feed, Observed};

/// The metadata key that holds a candidate's identity (the sample's `meta_instanceId`).
pub const IDENTITY_KEY: &str = "instanceId";

/// How often an observer with no leader re-reads when its feed carries the announced
/// acquisitions only ([`ChangeWatch::announced`]): the delay before it sees a holder that did
/// not announce itself (a plain lease, the .NET origin).
pub const UNANNOUNCED_POLL: Duration = Duration::from_secs(5);

/// How long an observer waits for its change feed to be confirmed before its first read.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(2);

/// The leader of an election as anyone may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's identity (its `instanceId` metadata), if it gave one.
    pub identity: Option<String>,
    /// The term: the lease's fencing token; `None` for a holder of the .NET origin.
    pub term: Option<u64>,
    /// The leader's lease id.
    pub lease_id: String,
    /// When it was elected, by its clock.
    pub acquired_at: Option<DateTime<Utc>>,
    /// Time left before its lease expires unless renewed, when read.
    pub expires_in: Option<Duration>,
    /// Its metadata, without the identity.
    pub metadata: BTreeMap<String, String>,
}

impl LeaderInfo {
    /// The leader a lease's holder is; `None` for an orphan of the .NET origin (nobody holds
    /// it).
    #[must_use]
    pub fn of(info: LeaseInfo) -> Option<Self> {
        if info.orphan {
            return None;
        }
        let mut metadata = info.metadata;
        let identity = metadata.remove(IDENTITY_KEY);
        Some(Self {
            identity,
            term: info.fencing_token,
            lease_id: info.lease_id,
            acquired_at: info.acquired_at,
            expires_in: info.ttl,
            metadata,
        })
    }

    /// What tells one value of the election from another (time left aside).
    fn same_as(&self, other: &Self) -> bool {
        self.lease_id == other.lease_id
            && self.term == other.term
            && self.identity == other.identity
            && self.metadata == other.metadata
    }
}

/// The default identity of a candidate: `host:pid`.
#[must_use]
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Checks a candidate's identity: readable text, not empty, without control characters.
///
/// # Errors
/// `InvalidArgument` naming the identity and what to give instead.
pub fn check_identity(identity: &str) -> Result<()> {
    if identity.is_empty() || identity.chars().any(char::is_control) {
        return Err(LeaseError::InvalidArgument(format!(
            "identity {identity:?} is empty or contains a control character; give a readable name such as 'us-east-1' (or none: the default is host:pid)"
        )));
    }
    Ok(())
}

/// One election: the lease `name` of a client, and this candidate's identity.
#[derive(Debug, Clone)]
pub struct Election {
    client: LeaseClient,
    name: String,
    identity: String,
}

impl Election {
    /// The election `name` on `client`, for a candidate called `identity` (by default
    /// [`default_identity`]).
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name or an empty identity (or one with a control character).
    pub fn new(client: LeaseClient, name: &str, identity: Option<&str>) -> Result<Self> {
        crate::store::validate_name(name)?;
        let identity = identity.map_or_else(default_identity, str::to_owned);
        check_identity(&identity)?;
        Ok(Self {
            client,
            name: name.to_owned(),
            identity,
        })
    }

    /// The election's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This candidate's identity.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns until elected (`wait`: `None` forever, as [`LeaseClient::acquire`]): the
    /// returned lease is the term (its fencing token is the term number); releasing it resigns,
    /// and its loss is the loss of leadership. The identity is stored with `opts.metadata`, and
    /// the acquisition is announced to observers ([`LeaseOptions::announce`]).
    ///
    /// # Errors
    /// `Unavailable` naming the leader when `wait` runs out; as [`LeaseClient::acquire`].
    pub async fn campaign(&self, opts: &LeaseOptions, wait: Option<Duration>) -> Result<Lease> {
        let mut opts = opts.clone();
        opts.metadata = self.with_identity(&opts.metadata)?;
        // Observers see the new leader from the feed, without polling.
        opts.announce = true;
        self.client.acquire(&self.name, &opts, wait).await
    }

    /// Proclaims new metadata for the term `term` (a lease this candidate won by
    /// [`Self::campaign`]): the stored metadata becomes `metadata` as a whole (keys not given
    /// are gone), with this candidate's identity; the term and the lease's expiry stay as they
    /// are, and observers see the change. Refused for a candidate that no longer leads.
    ///
    /// # Errors
    /// `InvalidArgument` when `metadata` holds the identity key (or is past the limits), or
    /// `term` is a lease of another name; `Lost` when `term` no longer leads (nothing was
    /// changed); backend errors.
    pub async fn proclaim(&self, term: &Lease, metadata: &BTreeMap<String, String>) -> Result<()> {
        if term.name() != self.name {
            return Err(LeaseError::InvalidArgument(format!(
                "the term given is a lease of {:?}, not of the election {:?}: proclaim with the term this election's campaign returned",
                term.name(),
                self.name
            )));
        }
        term.proclaim(&self.with_identity(metadata)?).await
    }

    /// `metadata` with this candidate's identity; refused if it names the identity key itself.
    fn with_identity(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        if metadata.contains_key(IDENTITY_KEY) {
            return Err(LeaseError::InvalidArgument(format!(
                "metadata key '{IDENTITY_KEY}' is the candidate's identity; give it as the identity of the election instead"
            )));
        }
        let mut metadata = metadata.clone();
        metadata.insert(IDENTITY_KEY.to_owned(), self.identity.clone());
        Ok(metadata)
    }

    /// The current leader, if any.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        Ok(self
            .client
            .inspect(&self.name)
            .await?
            .and_then(LeaderInfo::of))
    }

    /// Observes the leader: the current value first, then every change (see the module's
    /// rules). Must be called within a tokio runtime.
    #[must_use]
    pub fn observe(&self) -> Observer {
        Observer {
            election: self.clone(),
            watch: None,
            started: false,
            last: None,
            read_at: Instant::now(),
            top_term: None,
            polls: 0,
            backoff: Backoff::default(),
        }
    }
}

/// The leader of one election as it changes ([`Election::observe`]).
#[derive(Debug)]
pub struct Observer {
    election: Election,
    /// The name's change feed, opened at the first read.
    watch: Option<ChangeWatch>,
    /// Whether a value was yielded yet.
    started: bool,
    /// The last value yielded (`None`: no leader).
    last: Option<LeaderInfo>,
    /// When `last` was read.
    read_at: Instant,
    /// The highest term yielded.
    top_term: Option<u64>,
    /// Reads in a row not prompted by the feed: the place in the poll schedule.
    polls: u32,
    backoff: Backoff,
}

impl Observer {
    /// The next value: the current leader (or `None`) at the first call, then the next change.
    ///
    /// # Errors
    /// Only what retrying cannot mend: the client was closed (before or while it waited: the
    /// wait ends then), a bad name; a failed read is retried on the poll schedule.
    pub async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        let closed = self.election.client.closed();
        tokio::select! {
            biased;
            () = closed => Err(closed_error()),
            next = self.next_value() => next,
        }
    }

    /// [`Self::next`] while the client is open.
    async fn next_value(&mut self) -> Result<Option<LeaderInfo>> {
        if self.watch.is_none() {
            // Listen before the first read: a change after it is then seen.
            let mut watch = self
                .election
                .client
                .store()
                .watch_changes(&self.election.name);
            watch.settled(SUBSCRIBE_LIMIT).await;
            self.watch = Some(watch);
        }
        // After a failed read, the next read comes after its poll delay, not after a reason.
        let mut retry = false;
        loop {
            if self.started && !std::mem::take(&mut retry) {
                self.wait_for_a_reason().await;
            }
            let read = match self.election.client.inspect(&self.election.name).await {
                Ok(info) => info.and_then(LeaderInfo::of),
                Err(e) if e.is_transient() || matches!(e, LeaseError::Backend { .. }) => {
                    tracing::debug!(election = %self.election.name, error = %e, "cannot read the leader; trying again");
                    // Re-read on the poll schedule until it works.
                    self.polls = self.polls.saturating_add(1);
                    tokio::time::sleep(self.backoff.poll_delay(self.polls)).await;
                    retry = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.read_at = Instant::now();
            if let (Some(term), Some(top)) = (read.as_ref().and_then(|l| l.term), self.top_term) {
                if term < top {
                    // An older value read late: never yield a lower term.
                    continue;
                }
            }
            let unchanged = self.started
                && match (&self.last, &read) {
                    (Some(a), Some(b)) => a.same_as(b),
                    (None, None) => true,
                    _ => false,
                };
            if unchanged {
                // Refresh what the expiry timer counts from.
                self.last = read;
                continue;
            }
            if let Some(term) = read.as_ref().and_then(|l| l.term) {
                self.top_term = Some(self.top_term.map_or(term, |t| t.max(term)));
            }
            self.started = true;
            self.last.clone_from(&read);
            return Ok(read);
        }
    }

    /// Waits until the leader may have changed: the feed says so, the leader's expiry, or a
    /// poll while the feed may miss a change.
    async fn wait_for_a_reason(&mut self) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        let leader = self.last.as_ref();
        // Never sooner than a poll: a store that counts its time left in whole seconds (etcd)
        // shows a leader with 0 s left for up to a second, and re-reading it every millisecond
        // would hammer the store.
        let expiry = leader
            .and_then(|l| l.expires_in)
            .map(|ttl| self.read_at + (ttl + Duration::from_millis(1)).max(Backoff::MIN_POLL));
        // While the feed is not live, or there is no leader and the feed carries no
        // acquisitions, a new leader is only seen by reading: poll. A feed that carries the
        // announced ones (every campaign's) leaves only unannounced holders (plain leases, the
        // .NET origin) to be found by reading: poll at a slow cadence.
        let delay = if watch.feed() != Feed::Live || (leader.is_none() && !watch.announced()) {
            Some(self.backoff.poll_delay(self.polls))
        } else if leader.is_none() && !watch.acquisitions() {
            Some(UNANNOUNCED_POLL)
        } else {
            None
        };
        let poll = delay.map(|d| self.read_at + d);
        let wake_at = [expiry, poll].into_iter().flatten().min();
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            seen = watch.next() => {
                if seen == Observed::Changed {
                    self.polls = 0;
                }
            }
            () = sleep => {
                if poll.is_some_and(|p| Instant::now() >= p) {
                    self.polls = self.polls.saturating_add(1);
                }
            }
        }
    }
}
