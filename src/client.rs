//! [`LeaseClient`]: owns a store and hands out leases.
//!
//! Validates arguments, stamps each acquisition with a fresh lease id and the time the request
//! was sent (the start of the lease's local deadline), registers each acquired lease with the
//! client's renewal scheduler, and turns "held by someone else" into
//! [`LeaseError::Unavailable`] with the holder from the same round trip.
//!
//! Waiting (`acquire` with a wait) and cancel-safety are [`crate::acquiring`]'s, shared by
//! every kind of acquire: a loop of attempts woken by release notifications from the store, by
//! the holder's expiry, and (only when notifications may be missed) by polls paced by a
//! [`Backoff`]. Every attempt runs in a task of its own (or, in a [`LeaseClient::via`] view, in
//! the caller's future under a guard), so a caller cancelled while an attempt is on the wire
//! never leaves a lease behind: what the attempt won is given back at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::acquiring::{acquire_with_wait, Attempted, Delivery, GiveBack};
use crate::backoff::Backoff;
use crate::config::{Settings, StoreTarget};
use crate::error::{LeaseError, Result};
use crate::holding::{Holding, Work};
use crate::info::LeaseInfo;
use crate::lease::Lease;
use crate::metrics;
use crate::renewal;
use crate::store::common::closed_error;
#[cfg(feature = "etcd")]
use crate::store::etcd::{EtcdOptions, EtcdStore};
#[cfg(feature = "postgres")]
use crate::store::postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "entra-id")]
use crate::store::redis::entra::EntraCredentials;
#[cfg(feature = "redis")]
use crate::store::redis::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
use crate::store::sqlite::SqliteStore;
use crate::store::{
    validate_metadata, validate_name, AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore,
};
use crate::timing::{self, seconds};

/// Defaults for the leases of one client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Lease duration when a lease does not say (30 s, as the sample).
    pub default_duration: Duration,
    /// Renewal interval when a lease does not say; `None` means two thirds of the duration
    /// (20 s of 30 s, as the sample), or half of it for leases under 3 s
    /// ([`crate::timing::default_renew_interval`]). It must leave room for a retry
    /// ([`crate::timing::max_renew_interval`]: at most 27 s of 30 s) of `default_duration`; a
    /// lease of another duration uses it where it leaves that room too, else that duration's
    /// default.
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
    /// Renewal interval (at most [`crate::timing::max_renew_interval`] of the duration).
    pub renew_interval: Option<Duration>,
    /// Whether to renew in the background.
    pub auto_renew: Option<bool>,
    /// Metadata stored with the lease (the sample writes instanceId, region, hostname, startTime).
    pub metadata: BTreeMap<String, String>,
    /// How a waiting acquire paces its polls and how many attempts it makes.
    pub backoff: Option<Backoff>,
    /// Whether the store tells observers of this acquisition
    /// ([`crate::store::AcquireRequest::announce`]; [`crate::election::Election::campaign`]
    /// sets it): on Redis and PostgreSQL, observers then see the new holder without polling.
    /// Off by default: a plain acquire publishes nothing.
    pub announce: bool,
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
    /// Shared by the clones (one per operation on the Python side): a clone copies no string.
    options: Arc<ClientOptions>,
    pub(crate) renewals: renewal::Scheduler,
    /// Set in a view made by [`Self::via`]: the store its requests go through.
    via: Option<Arc<dyn LeaseStore>>,
    /// The runtime the client was made in: its leases' renewals and background releases run
    /// there, wherever (on whichever runtime) the acquire itself was polled.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}

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
            options: Arc::new(options),
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

    /// The lease's duration and renewal interval (`None`: no auto-renewal), checked by the one
    /// rule the configuration checks too ([`crate::timing`]).
    pub(crate) fn resolve(&self, opts: &LeaseOptions) -> Result<(Duration, Option<Duration>)> {
        let duration = opts.duration.unwrap_or(self.options.default_duration);
        if let Err(refusal) = timing::check_duration(duration) {
            return Err(LeaseError::InvalidArgument(format!(
                "lease duration {} is out of range: {}; give a duration in that range (30 s is usual)",
                seconds(duration),
                refusal.limit(seconds)
            )));
        }
        let auto_renew = opts.auto_renew.unwrap_or(self.options.auto_renew);
        if !auto_renew {
            return Ok((duration, None));
        }
        // The client's interval was chosen (and checked) for its default duration: a lease of
        // its own duration takes it only where it fits, else that duration's default (a client
        // configured to renew every 20 s still gives a 10 s lease, renewed every 6.7 s).
        let interval = match (opts.renew_interval, self.options.renew_interval) {
            (Some(interval), _) => interval,
            (None, Some(interval))
                if opts.duration.is_none()
                    || timing::check_renew_interval(duration, interval).is_ok() =>
            {
                interval
            }
            _ => timing::default_renew_interval(duration),
        };
        if let Err(refusal) = timing::check_renew_interval(duration, interval) {
            return Err(LeaseError::InvalidArgument(format!(
                "renew interval {} is refused for a lease of {}: {}; renew about every {} for \
                 this duration (the default: two thirds of it, at most the limit), or make the \
                 lease longer",
                seconds(interval),
                seconds(duration),
                refusal.limit(seconds),
                seconds(timing::default_renew_interval(duration)),
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
        announce: bool,
    ) -> Result<AcquireOutcome> {
        if let Some(via) = &self.via {
            // Polled in the caller's future: a caller that leaves once the request is out
            // (Ctrl-C in a blocking call drops the future) must not leave a lease it won held
            // by nobody for its whole duration. See [`GiveBack`].
            let track = || Box::new(self.renewals.track()) as Work;
            let guard = GiveBack {
                armed: true,
                runtime: self.runtime.as_ref(),
                store: &self.store,
                track: &track,
                settle: self.options.operation_timeout,
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
                    announce,
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
                        announce,
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
            .store_attempt(
                name,
                &lease_id,
                duration,
                acquired_at,
                &opts.metadata,
                opts.announce,
            )
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
        let holding = Arc::new(Holding::new(
            name,
            lease_id,
            fencing_token,
            acquired_at,
            duration,
            t_sent,
            Arc::clone(&self.store),
            self.renewals.reserve(),
        ));
        let runtime = self
            .runtime
            .clone()
            .unwrap_or_else(tokio::runtime::Handle::current);
        if !self.renewals.register(&holding, interval, t_sent, &runtime) {
            // Closed while the request was on the wire: the lease it won is being given back.
            tracing::debug!(lease = name, outcome = "client_closed", "the client was closed while the acquire was on the wire; the lease it won is given back");
            return Err(LeaseError::Config(
                "this lease client was closed while the acquire was on the wire (the lease it won has been given back); create a new client".into(),
            ));
        }
        Ok(TryAcquire::Acquired(Lease::new(
            holding,
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
        acquire_with_wait(
            name,
            || async {
                Ok(match self.attempt(name, opts, duration, interval).await? {
                    TryAcquire::Acquired(lease) => Attempted::Won(lease),
                    TryAcquire::Held(holder) => Attempted::Held(holder, Vec::new()),
                })
            },
            || self.store.watch_releases(name),
            backoff,
            wait,
            self.renewals.closed(),
            closed_error,
        )
        .instrument(span)
        .await
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

    /// Resolves once [`Self::close`] was called on this client or a clone of it (at once if
    /// it was): what ends the waits of its observers.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.renewals.closed()
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.renewals.is_closed() {
            return Err(closed_error());
        }
        Ok(())
    }
}

/// Opens the store `target` names. `entra` allows Microsoft Entra ID (an `Endpoint` without a
/// password, which only the configuration loader produces). A store this build was compiled
/// without (its Cargo feature off) is a `Config` error naming the feature.
async fn open_store(
    target: &StoreTarget,
    options: &ClientOptions,
    entra: bool,
) -> Result<Arc<dyn LeaseStore>> {
    crate::store::validate_key_prefix(&options.key_prefix)?;
    match target {
        // The wait for another process's lock on the file is what can take long there.
        #[cfg(feature = "sqlite")]
        StoreTarget::Sqlite { path } => Ok(Arc::new(
            SqliteStore::open_async_with_timeout(path, options.operation_timeout).await?,
        )),
        #[cfg(feature = "postgres")]
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
        #[cfg(feature = "etcd")]
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
        #[cfg(feature = "redis")]
        StoreTarget::Redis(target) => open_redis(target, options, entra).await,
        #[cfg(not(all(
            feature = "sqlite",
            feature = "postgres",
            feature = "etcd",
            feature = "redis"
        )))]
        _ => Err(missing_store(target, entra)),
    }
}

#[cfg(feature = "redis")]
async fn open_redis(
    target: &crate::config::RedisTarget,
    options: &ClientOptions,
    entra: bool,
) -> Result<Arc<dyn LeaseStore>> {
    // Endpoint without a password: Microsoft Entra ID (see store::redis::entra).
    let entra = entra && target.entra_id;
    #[cfg(feature = "entra-id")]
    let credentials = if entra {
        let c = EntraCredentials::from_process_env();
        c.ready().await?;
        Some(c)
    } else {
        None
    };
    #[cfg(not(feature = "entra-id"))]
    let credentials = if entra {
        return Err(missing_feature(
            "Microsoft Entra ID sign-in (an Endpoint without a password)",
            "entra-id",
        ));
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
        #[cfg(feature = "entra-id")]
        (Err(e), Some(c)) => Err(c.explain(e)),
        (Err(e), _) => Err(e),
    }
}

/// The error for a store this build lacks: which store, and the Cargo feature that brings it.
#[cfg(not(all(
    feature = "sqlite",
    feature = "postgres",
    feature = "etcd",
    feature = "redis"
)))]
fn missing_store(target: &StoreTarget, entra: bool) -> LeaseError {
    let (what, feature) = match target {
        StoreTarget::Sqlite { .. } => ("the SQLite store (sqlite://)", "sqlite"),
        StoreTarget::Postgres(_) => ("the PostgreSQL store (postgresql://)", "postgres"),
        StoreTarget::Etcd(_) => ("the etcd store (etcd://)", "etcd"),
        StoreTarget::Redis(r) if entra && r.entra_id => (
            "Microsoft Entra ID sign-in to Redis (an Endpoint without a password)",
            "entra-id",
        ),
        StoreTarget::Redis(_) => ("the Redis store (redis://, rediss://, valkey://)", "redis"),
    };
    missing_feature(what, feature)
}

#[cfg(not(all(
    feature = "sqlite",
    feature = "postgres",
    feature = "etcd",
    feature = "entra-id"
)))]
fn missing_feature(what: &str, feature: &str) -> LeaseError {
    LeaseError::Config(format!(
        "this build of distributed-leasing has no {what}: build it with the Cargo feature \
         \"{feature}\" (features = [\"{feature}\"], on by default), or use a store it has"
    ))
}

/// A fresh lease id: a UUID v4 from the OS's random source (getrandom), explicitly, so that no
/// feature of the `uuid` crate turned on elsewhere in a build can swap in a user-space generator
/// whose state a fork() would copy into every child.
pub(crate) fn new_lease_id() -> Result<String> {
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
