//! [`LeaseClient`]: owns a store and hands out leases.
//!
//! Validates arguments, stamps each acquisition with a fresh lease id and the time the request
//! was sent (the start of the lease's local deadline), registers each acquired lease with the
//! client's renewal scheduler, and turns "held by someone else" into
//! [`LeaseError::Unavailable`] with the holder from the same round trip.
//!
//! Waiting (`acquire` with a wait) is a loop of attempts woken by release notifications from the
//! store, by the holder's expiry, and (only when notifications may be missed) by polls paced by a
//! [`Backoff`]; see [`crate::wait`] for the rules. Every attempt runs in a task of its own, so a
//! caller cancelled while an attempt is on the wire never leaves a lease behind: if the attempt
//! wins after its caller left, the task releases the lease at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::clock;
use crate::config::{Settings, StoreTarget};
use crate::error::{LeaseError, Result};
use crate::info::LeaseInfo;
use crate::lease::{Lease, Shared, State};
use crate::metrics;
use crate::renewal;
use crate::store::common::closed_error;
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::redis::entra::EntraCredentials;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{
    validate_metadata, validate_name, AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore,
    ReleaseOutcome,
};
use crate::wait::{self, Backoff, Feed, ReleaseWatch, Wake};

/// The longest a waiter waits for its release subscription to be confirmed before it goes on
/// without (polling) until the subscription is live.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(2);

/// Defaults for the leases of one client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Lease duration when a lease does not say (30 s, as the sample).
    pub default_duration: Duration,
    /// Renewal interval when a lease does not say; `None` means two thirds of the duration
    /// (20 s of 30 s, as the sample).
    pub renew_interval: Option<Duration>,
    /// Whether leases renew themselves by default.
    pub auto_renew: bool,
    /// How waiting acquirers pace their attempts.
    pub backoff: Backoff,
    /// The namespace of the client's leases (`lease:`): the prefix of every key on Redis and
    /// etcd, a column of the leases table on PostgreSQL; SQLite ignores it (a file is one
    /// namespace).
    pub key_prefix: String,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for one operation's reply (SQLite: for the wait for another process's lock
    /// on the file).
    pub operation_timeout: Duration,
    /// CA certificate (PEM) for TLS to Redis, when not signed by a system root.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            default_duration: Duration::from_secs(30),
            renew_interval: None,
            auto_renew: true,
            backoff: Backoff::default(),
            key_prefix: "lease:".into(),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }
}

/// Per-lease settings; `None` falls back to the client's [`ClientOptions`].
#[derive(Debug, Clone, Default)]
pub struct LeaseOptions {
    /// Lease duration.
    pub duration: Option<Duration>,
    /// Renewal interval.
    pub renew_interval: Option<Duration>,
    /// Whether to renew in the background.
    pub auto_renew: Option<bool>,
    /// Metadata stored with the lease (the sample writes instanceId, region, hostname, startTime).
    pub metadata: BTreeMap<String, String>,
    /// How a waiting acquire paces its polls and how many attempts it makes.
    pub backoff: Option<Backoff>,
}

/// The result of [`LeaseClient::try_acquire`].
#[derive(Debug)]
pub enum TryAcquire {
    /// We hold the lease.
    Acquired(Lease),
    /// Someone else does.
    Held(LeaseInfo),
}

/// A connection to a lease store. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct LeaseClient {
    store: Arc<dyn LeaseStore>,
    options: ClientOptions,
    renewals: renewal::Scheduler,
    /// Set in a view made by [`Self::via`]: the store its requests go through.
    via: Option<Arc<dyn LeaseStore>>,
    /// The runtime the client was made in: its leases' renewals and background releases run
    /// there, wherever (on whichever runtime) the acquire itself was polled.
    runtime: Option<tokio::runtime::Handle>,
}

/// Shortest renewal interval accepted: shorter would renew in a busy loop.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(5);

/// Longest lease duration accepted: a year. Longer is almost surely a unit mistake.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl LeaseClient {
    /// Connects to `url`, read by the same parser as the configuration's ConnectionString:
    /// `redis://`, `rediss://` (TLS), `valkey://`, the StackExchange.Redis form
    /// (`host:6380,password=KEY,ssl=True`), `sqlite:///path/leases.db` (a relative path is
    /// relative to the current directory), or `postgresql://user:password@host:5432/database`
    /// (`postgres://` too; `?sslmode=disable|prefer|require|verify-full`), or
    /// `etcd://[user:password@]host1:2379,host2:2379` (`etcds://` for TLS).
    ///
    /// # Errors
    /// `Config` for a value the parser refuses (it says why; the value itself is not repeated,
    /// it may hold a password); backend errors from connecting.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Self> {
        let (target, warnings) = crate::config::parse_connection_string(url)
            .map_err(|e| LeaseError::Config(format!("the store URL is not valid: {e}")))?;
        for w in warnings {
            tracing::warn!("store URL: {w}");
        }
        let store = open_store(&target, &options, false).await?;
        Ok(Self::with_store(store, options))
    }

    /// Connects as `settings` say (see [`crate::config::load`]).
    ///
    /// # Errors
    /// `Config` when nothing is configured or the mode is not supported; backend errors.
    pub async fn from_settings(settings: &Settings, dir: &std::path::Path) -> Result<Self> {
        let options = ClientOptions {
            default_duration: settings.default_lease_duration,
            renew_interval: Some(settings.auto_renew_interval),
            auto_renew: settings.auto_renew,
            key_prefix: settings.key_prefix.clone(),
            connect_timeout: settings.connect_timeout,
            operation_timeout: settings.sync_timeout,
            ca_file: settings.ca_file.clone(),
            ..ClientOptions::default()
        };
        let Some(target) = &settings.target else {
            return Err(crate::config::not_configured_error(dir));
        };
        let store = open_store(target, &options, true).await?;
        Ok(Self::with_store(store, options))
    }

    /// A client over a store built by the caller.
    #[must_use]
    pub fn with_store(store: Arc<dyn LeaseStore>, options: ClientOptions) -> Self {
        // Closing waits this long for acquires on the wire and releases under way.
        let settle = options.operation_timeout + Duration::from_secs(1);
        let renewals = renewal::Scheduler::new(Arc::clone(&store), settle);
        Self {
            store,
            options,
            renewals,
            via: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// A view of this client whose requests (acquire attempts, inspect, list, forced
    /// releases) go through `store`: a caller-driven twin of this client's store (see
    /// [`crate::store::redis::inline`]), polled inside the caller's future. No task is spawned,
    /// so the view's futures must be polled where `store`'s connection is driven, and one
    /// dropped while its attempt is on the wire leaves a lease it won to expire. Everything
    /// else is this client's: options, the renewal of the leases it takes, and their store
    /// (they can be released and renewed from anywhere, see [`Lease::release_via`]).
    #[must_use]
    pub fn via(&self, store: Arc<dyn LeaseStore>) -> Self {
        Self {
            via: Some(store),
            ..self.clone()
        }
    }

    /// The store this client's requests go through: its own, or the one given to [`Self::via`].
    #[must_use]
    pub fn requests(&self) -> &Arc<dyn LeaseStore> {
        self.via.as_ref().unwrap_or(&self.store)
    }

    /// The store behind this client.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn LeaseStore> {
        &self.store
    }

    /// The client's defaults.
    #[must_use]
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    fn resolve(&self, opts: &LeaseOptions) -> Result<(Duration, Option<Duration>)> {
        let duration = opts.duration.unwrap_or(self.options.default_duration);
        if duration < Duration::from_millis(10) || duration > MAX_DURATION {
            return Err(LeaseError::InvalidArgument(format!(
                "lease duration {:.3}s is out of range: give between 0.01 s and one year (30 s is usual)",
                duration.as_secs_f64()
            )));
        }
        let auto_renew = opts.auto_renew.unwrap_or(self.options.auto_renew);
        if !auto_renew {
            return Ok((duration, None));
        }
        let interval = opts
            .renew_interval
            .or(self.options.renew_interval)
            .unwrap_or(duration * 2 / 3);
        if interval < MIN_RENEW_INTERVAL || interval >= duration {
            return Err(LeaseError::InvalidArgument(format!(
                "renew interval {:.3}s must be at least 0.005 s and below the lease duration {:.3}s (two thirds of it is usual), so that a failed renewal can be retried before the lease expires",
                interval.as_secs_f64(),
                duration.as_secs_f64()
            )));
        }
        Ok((duration, Some(interval)))
    }

    /// One attempt to take the lease.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name, metadata or durations; backend errors.
    pub async fn try_acquire(&self, name: &str, opts: &LeaseOptions) -> Result<TryAcquire> {
        self.check_open()?;
        validate_name(name)?;
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        self.attempt(name, opts, duration, interval)
            .instrument(tracing::debug_span!("try_acquire", lease = %name))
            .await
    }

    /// One acquire round trip in a task of its own (in the caller's future in a [`Self::via`] view),
    /// so that it completes even if the caller is cancelled meanwhile; a lease won for a caller that left is released at once (also when
    /// the caller leaves between the reply and reading it: see [`Delivery`]).
    async fn store_attempt(
        &self,
        name: &str,
        lease_id: &str,
        duration: Duration,
        acquired_at: DateTime<Utc>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<AcquireOutcome> {
        if let Some(via) = &self.via {
            // Polled in the caller's future: a caller that leaves once the request is out
            // (Ctrl-C in a blocking call drops the future) must not leave a lease it won held
            // by nobody for its whole duration. See [`GiveBack`].
            let guard = GiveBack {
                armed: true,
                client: self,
                name,
                lease_id,
            };
            let outcome = via
                .try_acquire(&AcquireRequest {
                    name,
                    lease_id,
                    duration,
                    acquired_at,
                    metadata,
                })
                .await;
            guard.disarm();
            return outcome;
        }
        let store = Arc::clone(&self.store);
        let (name, lease_id, metadata) = (name.to_owned(), lease_id.to_owned(), metadata.clone());
        let (tx, rx) = oneshot::channel();
        // The task may outlive its caller: closing the client waits for it (and for the release
        // of what it won for a caller that left).
        let work = self.renewals.track();
        tokio::spawn(
            async move {
                let outcome = store
                    .try_acquire(&AcquireRequest {
                        name: &name,
                        lease_id: &lease_id,
                        duration,
                        acquired_at,
                        metadata: &metadata,
                    })
                    .await;
                // If the caller is gone, the delivery comes back and its drop gives the lease back.
                let _ = tx.send(Delivery {
                    outcome: Some(outcome),
                    store,
                    name,
                    lease_id,
                    work: Some(work),
                });
            }
            .in_current_span(),
        );
        match rx.await {
            Ok(mut delivery) => delivery.outcome.take().unwrap_or_else(|| {
                Err(LeaseError::backend(
                    crate::error::BackendErrorKind::Other,
                    "the acquire lost its reply; retry it",
                ))
            }),
            Err(_) => Err(LeaseError::backend(
                crate::error::BackendErrorKind::Other,
                "the acquire did not complete (the runtime is shutting down?); retry it",
            )),
        }
    }

    async fn attempt(
        &self,
        name: &str,
        opts: &LeaseOptions,
        duration: Duration,
        interval: Option<Duration>,
    ) -> Result<TryAcquire> {
        // Counted until the lease is registered (or the attempt failed), so that a close() meanwhile
        // waits for it, and refused once the client is closed.
        let Some(_work) = self.renewals.begin_acquire() else {
            return Err(closed_error());
        };
        // From the OS's random source (getrandom), never a user-space generator: a generator's
        // state is copied by fork(), and forked children would then draw the same ids.
        let lease_id = new_lease_id()?;
        // Stored with millisecond precision (the sample's format): keep the handle's copy equal.
        let acquired_at = Utc::now().trunc_subsecs(3);
        let t_sent = Instant::now();
        let outcome = self
            .store_attempt(name, &lease_id, duration, acquired_at, &opts.metadata)
            .await
            .inspect_err(|e| {
                tracing::debug!(lease = name, outcome = "error", error = %e, "acquire failed");
            })?;
        let fencing_token = match outcome {
            AcquireOutcome::Held(holder) => {
                metrics::ACQUIRE_REFUSALS.add(1);
                tracing::debug!(lease = name, outcome = "held", holder = %holder.lease_id, holder_ttl_ms = holder.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)), "lease held by another");
                return Ok(TryAcquire::Held(holder));
            }
            AcquireOutcome::Acquired { fencing_token } => fencing_token,
        };
        metrics::ACQUISITIONS.add(1);
        metrics::ACTIVE_LEASES.add(1);
        tracing::debug!(
            lease = name,
            outcome = "acquired",
            fencing_token,
            "lease acquired"
        );
        let (ended, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            lease_id,
            fencing_token,
            acquired_at,
            duration,
            store: Arc::clone(&self.store),
            state: Mutex::new(State {
                deadline: clock::deadline(t_sent, duration),
                renewals: 0,
                renewal_failures: 0,
                end: None,
                release_sent: false,
            }),
            ended,
            events: std::sync::OnceLock::new(),
            registration: self.renewals.reserve(),
            end_hooks: crate::lease::EndHooks::default(),
            holder_check: crate::lease::HolderCheckSlot::default(),
        });
        let runtime = self
            .runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        if !self.renewals.register(&shared, interval, t_sent, &runtime) {
            // Closed while the request was on the wire: the lease it won is being given back.
            tracing::debug!(lease = name, outcome = "client_closed", "the client was closed while the acquire was on the wire; the lease it won is given back");
            return Err(LeaseError::Config(
                "this lease client was closed while the acquire was on the wire (the lease it won has been given back); create a new client".into(),
            ));
        }
        Ok(TryAcquire::Acquired(Lease::new(
            shared,
            runtime,
            self.renewals.renewer(),
        )))
    }

    /// Takes the lease, waiting up to `wait` for it (`None`: forever; zero: one attempt).
    ///
    /// A waiter is woken by the release of the lease (notified by the store), at the holder's
    /// expiry, and, when notifications may be missed, by polls on the backoff schedule
    /// (`opts.backoff`, else the client's), never faster than every 100 ms; the backoff's limit
    /// caps the attempts. Not fair: whoever reaches the store first after a release wins.
    /// Cancelling the returned future (dropping it) leaves nothing behind: no subscription and
    /// no lease.
    ///
    /// # Errors
    /// `Unavailable` with the holder when the wait or the attempts run out; as
    /// [`Self::try_acquire`].
    pub async fn acquire(
        &self,
        name: &str,
        opts: &LeaseOptions,
        wait: Option<Duration>,
    ) -> Result<Lease> {
        self.check_open()?;
        validate_name(name)?;
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        let backoff = opts.backoff.unwrap_or(self.options.backoff);
        let span = tracing::debug_span!(
            "acquire",
            lease = %name,
            wait_ms = wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX))
        );
        self.wait_loop(name, opts, duration, interval, wait, backoff)
            .instrument(span)
            .await
    }

    async fn wait_loop(
        &self,
        name: &str,
        opts: &LeaseOptions,
        duration: Duration,
        interval: Option<Duration>,
        wait: Option<Duration>,
        backoff: Backoff,
    ) -> Result<Lease> {
        let started = Instant::now();
        // A wait too long to represent is a wait forever.
        let give_up = wait.and_then(|w| started.checked_add(w));
        let mut waiting = Waiting {
            watch: None,
            owes_wake: false,
        };
        let mut attempts = 0u32;
        let mut polls = 0u32;
        let closed = self.renewals.closed();
        let mut closed = std::pin::pin!(closed);
        loop {
            attempts = attempts.saturating_add(1);
            let outcome = self.attempt(name, opts, duration, interval).await?;
            // The attempt answered: a release that woke us has been acted on.
            waiting.owes_wake = false;
            let holder = match outcome {
                TryAcquire::Acquired(lease) => {
                    if attempts > 1 {
                        tracing::debug!(
                            lease = name,
                            outcome = "acquired",
                            attempts,
                            waited_ms =
                                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                            "acquired after waiting"
                        );
                    }
                    return Ok(lease);
                }
                TryAcquire::Held(holder) => holder,
            };
            let now = Instant::now();
            if give_up.is_some_and(|g| now >= g) || !backoff.allows_another(attempts) {
                if attempts > 1 {
                    tracing::debug!(
                        lease = name,
                        outcome = "unavailable",
                        attempts,
                        waited_ms =
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "gave up waiting"
                    );
                }
                return Err(LeaseError::Unavailable {
                    name: name.to_owned(),
                    holder: Some(Box::new(holder)),
                    waited: if attempts > 1 || wait.is_some_and(|w| !w.is_zero()) {
                        started.elapsed()
                    } else {
                        Duration::ZERO
                    },
                });
            }
            let Some(watch) = waiting.watch.as_mut() else {
                // Start listening, then try again at once: a release that happened before the
                // subscription was in place is seen by that attempt, and every later one wakes us.
                let watch = waiting.watch.insert(self.store.watch_releases(name));
                let limit = give_up.map_or(SUBSCRIBE_LIMIT, |g| {
                    g.saturating_duration_since(now).min(SUBSCRIBE_LIMIT)
                });
                watch.settled(limit).await;
                tracing::debug!(lease = name, holder = %holder.lease_id, notified = watch.feed() == Feed::Live, "waiting for the lease");
                continue;
            };
            let expiry = holder.ttl.map(|ttl| now + wait::expiry_retry(ttl));
            loop {
                let poll = (watch.feed() != Feed::Live).then(|| now + backoff.poll_delay(polls));
                let wake_at = [expiry, poll, give_up].into_iter().flatten().min();
                let sleep = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // A client closed meanwhile ends the wait at once (its next attempt is refused).
                let woke = tokio::select! {
                    w = watch.next() => Some(w),
                    () = sleep => None,
                    () = &mut closed => return Err(closed_error()),
                };
                match woke {
                    Some(Wake::FeedChanged) => {}
                    Some(Wake::Released) => {
                        tracing::trace!(lease = name, "woken by a release");
                        waiting.owes_wake = true;
                        break;
                    }
                    None => {
                        let at = Instant::now();
                        if poll.is_some_and(|p| at >= p) && expiry.is_none_or(|e| at < e) {
                            polls = polls.saturating_add(1);
                            tracing::trace!(lease = name, "polling");
                        } else {
                            tracing::trace!(lease = name, "retrying at the holder's expiry");
                        }
                        break;
                    }
                }
            }
        }
    }

    /// The current holder of `name`, if any.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name; backend errors.
    pub async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        validate_name(name)?;
        self.requests().inspect(name).await
    }

    /// All held leases whose name starts with `prefix`, sorted by name.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        self.requests().list(prefix).await
    }

    /// Deletes a lease whoever holds it (administrators only; its holder finds out at its next
    /// renewal or at its release). Returns whether one existed. Prefer
    /// [`Self::force_release_if`] after showing the holder to a person.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name; `WrongType` for a record that is not a lease (never
    /// deleted); backend errors.
    pub async fn force_release(&self, name: &str) -> Result<bool> {
        Ok(self.force_release_if(name, None).await? == ForceReleased::Released)
    }

    /// Deletes the lease of `name` if `lease_id` still holds it (whoever holds it, given
    /// `None`): a compare-and-delete, so the holder an administrator confirmed is the one
    /// removed, never a successor that took the lease meanwhile.
    ///
    /// # Errors
    /// As [`Self::force_release`].
    pub async fn force_release_if(
        &self,
        name: &str,
        lease_id: Option<&str>,
    ) -> Result<ForceReleased> {
        validate_name(name)?;
        let outcome = self.requests().force_release(name, lease_id).await?;
        tracing::info!(
            lease = name,
            outcome = match &outcome {
                ForceReleased::Released => "released",
                ForceReleased::Absent => "not_held",
                ForceReleased::HeldByOther(_) => "changed_hands",
            },
            "lease force-released"
        );
        Ok(outcome)
    }

    /// Closes the client: stops renewing its leases and releases them (best effort, owner
    /// checked), each handle ending as lost with reason `ClientClosed`; then no new lease can
    /// be taken through it (or any clone of it). Returns once every release was answered and
    /// the store's connections (or file) were closed.
    pub async fn close(&self) {
        self.renewals.close().await;
        self.store.close().await;
    }

    /// Whether [`Self::close`] was called on this client or a clone of it.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.renewals.is_closed()
    }

    fn check_open(&self) -> Result<()> {
        if self.renewals.is_closed() {
            return Err(closed_error());
        }
        Ok(())
    }
}

/// Opens the store `target` names. `entra` allows Microsoft Entra ID (an `Endpoint` without a
/// password, which only the configuration loader produces).
async fn open_store(
    target: &StoreTarget,
    options: &ClientOptions,
    entra: bool,
) -> Result<Arc<dyn LeaseStore>> {
    crate::store::validate_key_prefix(&options.key_prefix)?;
    match target {
        // The wait for another process's lock on the file is what can take long there.
        StoreTarget::Sqlite { path } => Ok(Arc::new(
            SqliteStore::open_async_with_timeout(path, options.operation_timeout).await?,
        )),
        StoreTarget::Postgres(target) => Ok(Arc::new(
            PostgresStore::connect(PostgresOptions {
                target: target.clone(),
                key_prefix: options.key_prefix.clone(),
                connect_timeout: options.connect_timeout,
                operation_timeout: options.operation_timeout,
                ca_file: options.ca_file.clone(),
            })
            .await?,
        )),
        StoreTarget::Etcd(target) => Ok(Arc::new(
            EtcdStore::connect(EtcdOptions {
                target: target.clone(),
                key_prefix: options.key_prefix.clone(),
                connect_timeout: options.connect_timeout,
                operation_timeout: options.operation_timeout,
                ca_file: options.ca_file.clone(),
            })
            .await?,
        )),
        StoreTarget::Redis(target) => {
            // Endpoint without a password: Microsoft Entra ID (see store::redis::entra).
            let credentials = if entra && target.entra_id {
                let c = EntraCredentials::from_process_env();
                c.ready().await?;
                Some(c)
            } else {
                None
            };
            let connected = RedisStore::connect(RedisOptions {
                urls: target.node_urls(),
                key_prefix: options.key_prefix.clone(),
                connect_timeout: target.connect_timeout.unwrap_or(options.connect_timeout),
                response_timeout: target.sync_timeout.unwrap_or(options.operation_timeout),
                ca_file: options.ca_file.clone(),
                credentials: credentials.clone(),
            })
            .await;
            match (connected, &credentials) {
                (Ok(store), _) => Ok(Arc::new(store)),
                (Err(e), Some(c)) => Err(c.explain(e)),
                (Err(e), None) => Err(e),
            }
        }
    }
}

/// A fresh lease id: a UUID v4 from the OS's random source (getrandom), explicitly, so that no
/// feature of the `uuid` crate turned on elsewhere in a build can swap in a user-space generator
/// whose state a fork() would copy into every child.
fn new_lease_id() -> Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        LeaseError::backend(
            crate::error::BackendErrorKind::Other,
            format!("the operating system's random source failed ({e}); retry"),
        )
    })?;
    Ok(uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string())
}

/// The reply of an acquire attempt on its way to the caller. If it is dropped unread (the caller
/// was cancelled after the store answered), a lease it carries is released in the background.
struct Delivery {
    outcome: Option<Result<AcquireOutcome>>,
    store: Arc<dyn LeaseStore>,
    name: String,
    lease_id: String,
    /// The acquire's place in its client's outstanding work, handed on to the release.
    work: Option<renewal::Outstanding>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !matches!(self.outcome, Some(Ok(AcquireOutcome::Acquired { .. }))) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(lease = %self.name, "a cancelled acquire won the lease outside a runtime; it expires by itself");
            return;
        };
        let (store, name, lease_id, work) = (
            Arc::clone(&self.store),
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.lease_id),
            self.work.take(),
        );
        tracing::debug!(lease = %name, outcome = "cancelled", "acquire cancelled while on the wire; releasing the lease it won");
        let pending = crate::lease::PendingRelease::new();
        rt.spawn(async move {
            if let Err(e) = store.release(&name, &lease_id).await {
                tracing::warn!(lease = %name, error = %e, "cannot release a lease won by a cancelled acquire; it expires by itself");
            }
            drop((work, pending));
        });
    }
}

/// An acquire attempt polled in its caller's future (a [`LeaseClient::via`] view): if the future
/// is dropped before the reply was read, the request may still be granted on the server, so the
/// lease id (fresh for this attempt, so only a lease this very attempt won can match) is
/// released on the client's runtime, owner-checked, at once and again once an operation's
/// timeout has passed (the request went over another connection, so it may be applied after the
/// first release). A release that finds nothing of ours is a no-op.
struct GiveBack<'a> {
    armed: bool,
    client: &'a LeaseClient,
    name: &'a str,
    lease_id: &'a str,
}

impl GiveBack<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Only here, on the rare drop mid-request, is anything copied: the guard costs the
        // acquire itself nothing but a few references.
        let Some(rt) = self.client.runtime.clone() else {
            tracing::warn!(lease = %self.name, "an acquire left while on the wire outside a runtime; a lease it won expires by itself");
            return;
        };
        let store = Arc::clone(&self.client.store);
        let settle = self.client.options.operation_timeout;
        let (name, lease_id) = (self.name.to_owned(), self.lease_id.to_owned());
        tracing::debug!(lease = %name, outcome = "cancelled", "acquire left while on the wire; giving back a lease it may have won");
        // The first release is outstanding work of the client (its close waits for it); the
        // second, an operation's timeout later, is best effort.
        let mut work = Some((
            self.client.renewals.track(),
            crate::lease::PendingRelease::new(),
        ));
        rt.spawn(async move {
            for wait in [Duration::ZERO, settle] {
                tokio::time::sleep(wait).await;
                let released = store.release(&name, &lease_id).await;
                drop(work.take());
                if let Ok(ReleaseOutcome::Released) = released {
                    return;
                }
            }
        });
    }
}

/// A waiter's subscription, and whether it owes the other waiters a wake-up: one it received
/// but has not acted on yet, passed on if it is dropped (cancelled or failed) before acting.
struct Waiting {
    watch: Option<ReleaseWatch>,
    owes_wake: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.owes_wake {
            if let Some(w) = &self.watch {
                w.pass_on();
            }
        }
    }
}
