//! [`LeaseClient`]: owns a store and hands out leases.
//!
//! Validates arguments, stamps each acquisition with a fresh lease id and the time the request
//! was sent (the start of the lease's local deadline), starts the renewal task of each acquired
//! lease, and turns "held by someone else" into [`LeaseError::Unavailable`] with the holder
//! from the same round trip. Waiting is a loop of attempts paced by a [`Backoff`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock;
use crate::config::{Settings, StoreTarget};
use crate::error::{LeaseError, Result};
use crate::info::LeaseInfo;
use crate::lease::{Lease, Shared, State};
use crate::renewal;
use crate::secret::Secret;
use crate::store::redis::entra::EntraCredentials;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{validate_metadata, validate_name, AcquireOutcome, AcquireRequest, LeaseStore};
use crate::wait::Backoff;

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
    /// Redis key prefix (`lease:`).
    pub key_prefix: String,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for one operation's reply.
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
}

/// Longest lease duration accepted: a year. Longer is almost surely a unit mistake.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl LeaseClient {
    /// Connects to `url`: `redis://`, `rediss://` (Redis, TLS) or `sqlite:///path/leases.db`.
    ///
    /// # Errors
    /// `Config` for an unknown scheme; backend errors from connecting.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Self> {
        let store: Arc<dyn LeaseStore> = if url.starts_with("redis://")
            || url.starts_with("rediss://")
        {
            Arc::new(
                RedisStore::connect(RedisOptions {
                    urls: vec![Secret::new(url)],
                    key_prefix: options.key_prefix.clone(),
                    connect_timeout: options.connect_timeout,
                    response_timeout: options.operation_timeout,
                    ca_file: options.ca_file.clone(),
                    credentials: None,
                })
                .await?,
            )
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Arc::new(SqliteStore::open_async(std::path::Path::new(path)).await?)
        } else {
            return Err(LeaseError::Config(
                "unknown store URL scheme: use redis://host:port, rediss://host:port (TLS) or sqlite:///path/leases.db".into(),
            ));
        };
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
        let store: Arc<dyn LeaseStore> = match &settings.target {
            None => return Err(crate::config::not_configured_error(dir)),
            Some(StoreTarget::Sqlite { path }) => Arc::new(SqliteStore::open_async(path).await?),
            Some(StoreTarget::Redis(target)) => {
                // Endpoint without a password: Microsoft Entra ID (see store::redis::entra).
                let credentials = if target.entra_id {
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
                    ca_file: settings.ca_file.clone(),
                    credentials: credentials.clone(),
                })
                .await;
                match (connected, &credentials) {
                    (Ok(store), _) => Arc::new(store),
                    (Err(e), Some(c)) => return Err(c.explain(e)),
                    (Err(e), None) => return Err(e),
                }
            }
        };
        Ok(Self::with_store(store, options))
    }

    /// A client over a store built by the caller.
    #[must_use]
    pub fn with_store(store: Arc<dyn LeaseStore>, options: ClientOptions) -> Self {
        Self { store, options }
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
        if interval.is_zero() || interval >= duration {
            return Err(LeaseError::InvalidArgument(format!(
                "renew interval {:.3}s must be above zero and below the lease duration {:.3}s (two thirds of it is usual), so that a failed renewal can be retried before the lease expires",
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
        validate_name(name)?;
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        self.attempt(name, opts, duration, interval).await
    }

    async fn attempt(
        &self,
        name: &str,
        opts: &LeaseOptions,
        duration: Duration,
        interval: Option<Duration>,
    ) -> Result<TryAcquire> {
        let lease_id = uuid::Uuid::new_v4().to_string();
        // Stored with millisecond precision (the sample's format): keep the handle's copy equal.
        let acquired_at = Utc::now().trunc_subsecs(3);
        let t_sent = Instant::now();
        let outcome = self
            .store
            .try_acquire(&AcquireRequest {
                name,
                lease_id: &lease_id,
                duration,
                acquired_at,
                metadata: &opts.metadata,
            })
            .await?;
        let fencing_token = match outcome {
            AcquireOutcome::Held(holder) => {
                tracing::debug!(lease = name, holder = %holder.lease_id, "lease held by another");
                return Ok(TryAcquire::Held(holder));
            }
            AcquireOutcome::Acquired { fencing_token } => fencing_token,
        };
        tracing::debug!(lease = name, fencing_token, "lease acquired");
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
                renewal_task: None,
                release_sent: false,
            }),
            ended,
        });
        renewal::spawn(&shared, interval, t_sent);
        Ok(TryAcquire::Acquired(Lease::new(
            shared,
            tokio::runtime::Handle::current(),
        )))
    }

    /// Takes the lease, waiting up to `wait` for it (`None`: forever; zero: one attempt).
    ///
    /// # Errors
    /// `Unavailable` with the holder when the wait runs out; as [`Self::try_acquire`].
    pub async fn acquire(
        &self,
        name: &str,
        opts: &LeaseOptions,
        wait: Option<Duration>,
    ) -> Result<Lease> {
        validate_name(name)?;
        validate_metadata(&opts.metadata)?;
        let (duration, interval) = self.resolve(opts)?;
        let give_up = wait.map(|w| Instant::now() + w);
        let mut attempt = 0u32;
        loop {
            let holder = match self.attempt(name, opts, duration, interval).await? {
                TryAcquire::Acquired(lease) => return Ok(lease),
                TryAcquire::Held(holder) => holder,
            };
            let delay = self.options.backoff.next_delay(attempt, holder.ttl);
            let now = Instant::now();
            if give_up.is_some_and(|g| now >= g) {
                return Err(LeaseError::Unavailable {
                    name: name.to_owned(),
                    holder: Some(Box::new(holder)),
                });
            }
            let wake = give_up.map_or(now + delay, |g| (now + delay).min(g));
            tokio::time::sleep_until(wake).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The current holder of `name`, if any.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name; backend errors.
    pub async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        validate_name(name)?;
        self.store.inspect(name).await
    }

    /// All held leases whose name starts with `prefix`, sorted by name.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        self.store.list(prefix).await
    }

    /// Deletes a lease whoever holds it (administrators only; its holder finds out at its next
    /// renewal). Returns whether one existed.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name; backend errors.
    pub async fn force_release(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        self.store.force_release(name).await
    }
}
