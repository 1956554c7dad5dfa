//! The store's shared connection to a single server: the `redis` crate's [`ConnectionManager`]
//! (a multiplexed connection that reconnects after a dropped connection), kept in a slot that
//! can be replaced and closed, and only ever polled on the store's home runtime.
//!
//! Three rules live here, each for a reason the `redis` crate does not cover by itself:
//! - **Home runtime.** A `ConnectionManager` opens its connections, and spawns their driver
//!   tasks, on whichever runtime polls it when it (re)connects. A caller on a runtime that only
//!   runs during its own calls (a thread's current-thread runtime, see the Python bindings'
//!   `thread_twin`) would strand the shared connection's driver there: every later command on
//!   it would time out for as long as the process lives. So a command issued off the home
//!   runtime (the one the store was connected on) is spawned onto it.
//! - **Discard, never reuse.** The manager reconnects by itself after a dropped connection,
//!   but keeps a connection whose command timed out (or failed with another I/O error); such a
//!   connection is discarded here: the slot gets a new manager (connecting on first use) and the
//!   old one closes once its last in-flight command ends.
//! - **Close.** [`SharedConn::close`] empties the slot, so the connection closes even while
//!   clones of the store (leases, twins) still exist; every later command fails as closed.
//! - **Bounded.** A command, waiting for its connection included, takes at most the connect
//!   timeout plus the response timeout ([`SharedConn::limit`]).
//!
//! A retry is sent on a fresh connection: after a drop the manager's own reconnection, after any
//! other failure a new manager, and for a caller-driven twin's failure one opened after the
//! failed attempt began ([`SharedConn::invoke`] with `fresh_since`).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, ScriptInvocation, Value};
use tokio::runtime::Handle;

/// Builds the invocation a retry sends.
pub(super) type Rebuild = Box<dyn Fn() -> ScriptInvocation<'static> + Send + Sync>;

/// A script call, owned (so that it can move to the home runtime). `retry` builds what a retry
/// sends, when it differs from `first` (the acquire script's retry flag); it runs only when a
/// retry happens, so the common call builds one invocation.
pub(super) struct Call {
    pub(super) first: ScriptInvocation<'static>,
    pub(super) retry: Option<Rebuild>,
}

impl Call {
    pub(super) fn once(inv: ScriptInvocation<'static>) -> Self {
        Self {
            first: inv,
            retry: None,
        }
    }

    /// Sends the call (or, with `retry`, what its retry sends) on `con`.
    pub(super) async fn invoke_async(
        &self,
        con: &mut impl ConnectionLike,
        retry: bool,
    ) -> RedisResult<Value> {
        match (&self.retry, retry) {
            (Some(build), true) => build().invoke_async(con).await,
            _ => self.first.invoke_async(con).await,
        }
    }
}

/// Why a command on the shared connection did not answer.
#[derive(Debug)]
pub(super) enum Failure {
    Redis(RedisError),
    /// The store was closed.
    Closed,
    /// The home runtime dropped the command (it is shutting down).
    Interrupted,
}

/// Whether `e` leaves the connection it happened on untrustworthy (no reply, or a reply that
/// may belong to another request): anything but an error reply of the server.
pub(super) fn breaks_connection(e: &RedisError) -> bool {
    e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Whether a command that failed with `e` is sent again (once): the connection dropped. Every
/// script is idempotent (see the store), so this is safe. A timeout is not retried: the retry
/// would double the configured operation timeout.
pub(super) fn retryable(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error())
}

/// One manager in the slot.
#[derive(Clone)]
struct Current {
    manager: ConnectionManager,
    generation: u64,
    opened_at: Instant,
}

enum Slot {
    Open(Current),
    Closed,
}

/// The shared connection (see the module docs).
pub(super) struct SharedConn {
    client: redis::Client,
    config: ConnectionManagerConfig,
    home: Handle,
    slot: Mutex<Slot>,
}

impl SharedConn {
    /// The slot for `manager`, made by `client` with `config` on the current runtime (its home).
    pub(super) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
        manager: ConnectionManager,
    ) -> Self {
        Self {
            client,
            config,
            home: Handle::current(),
            slot: Mutex::new(Slot::Open(Current {
                manager,
                generation: 0,
                opened_at: Instant::now(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn current(&self) -> Result<Current, Failure> {
        match &*self.lock() {
            Slot::Open(c) => Ok(c.clone()),
            Slot::Closed => Err(Failure::Closed),
        }
    }

    /// A new manager in place of the current one, if that is still `generation` (several
    /// commands failing on one connection replace it once). It connects on first use.
    fn discard(&self, generation: u64) {
        self.replace_if(|c| c.generation == generation);
    }

    /// The current manager if it was opened at or after `t`; otherwise a new one.
    fn fresh_since(&self, t: Instant) -> Result<Current, Failure> {
        self.replace_if(|c| c.opened_at < t);
        self.current()
    }

    fn replace_if(&self, stale: impl FnOnce(&Current) -> bool) {
        let mut slot = self.lock();
        let Slot::Open(current) = &*slot else { return };
        if !stale(current) {
            return;
        }
        // The manager spawns a helper task where it is made: make it at home.
        let _home = self.home.enter();
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                let generation = current.generation + 1;
                tracing::debug!(
                    generation,
                    "shared Redis connection discarded; a new one connects on first use"
                );
                *slot = Slot::Open(Current {
                    manager,
                    generation,
                    opened_at: Instant::now(),
                });
            }
            // Only an invalid configuration fails here, and this one made the first manager.
            Err(e) => tracing::warn!(error = %e, "cannot replace the shared Redis connection"),
        }
    }

    /// Closes the connection (it closes once its in-flight commands end); later commands fail.
    pub(super) fn close(&self) {
        let old = std::mem::replace(&mut *self.lock(), Slot::Closed);
        drop(old);
    }

    /// Runs `f` on the home runtime: here if this is it, else in a task there.
    async fn at_home<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let here = Handle::try_current().is_ok_and(|h| h.id() == self.home.id());
        let fut = f(Arc::clone(self));
        if here {
            return fut.await;
        }
        self.home
            .spawn(fut)
            .await
            .unwrap_or(Err(Failure::Interrupted))
    }

    /// Runs `call`, and once more on a fresh connection if its connection dropped. With
    /// `fresh_since` (the start of an attempt that failed elsewhere), this is that retry: it
    /// goes on a connection opened since then.
    pub(super) async fn invoke(
        self: &Arc<Self>,
        call: Arc<Call>,
        fresh_since: Option<Instant>,
    ) -> Result<Value, Failure> {
        self.at_home(move |me| async move { me.invoke_here(&call, fresh_since).await })
            .await
    }

    async fn invoke_here(
        &self,
        call: &Call,
        fresh_since: Option<Instant>,
    ) -> Result<Value, Failure> {
        self.retrying_here(fresh_since, |mut manager, retry| async move {
            call.invoke_async(&mut manager, retry).await
        })
        .await
    }

    /// Runs `f` with the current manager, and once more (told so) with a fresh one if its
    /// connection dropped; with `fresh_since`, only that retry, on a connection opened since.
    async fn retrying_here<T, F, Fut>(
        &self,
        fresh_since: Option<Instant>,
        f: F,
    ) -> Result<T, Failure>
    where
        F: Fn(ConnectionManager, bool) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let (mut current, mut retry) = match fresh_since {
            Some(t) => (self.fresh_since(t)?, true),
            None => (self.current()?, false),
        };
        loop {
            let command = f(current.manager.clone(), retry);
            let result = match tokio::time::timeout(self.limit(), command).await {
                Ok(result) => result,
                Err(_) => Err(elapsed()),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.failed(&current, &e);
                    if retry || !retryable(&e) {
                        return Err(Failure::Redis(e));
                    }
                    tracing::debug!("connection dropped; retrying once on a fresh connection");
                    retry = true;
                    // After a drop the manager is reconnecting (the retry waits for the new
                    // connection); after another I/O error `failed` replaced it.
                    current = self.current()?;
                }
            }
        }
    }

    /// The longest one command may take: connecting once, then the reply. The manager's own
    /// timeouts apply to each connection attempt and each reply, but a command waiting for a
    /// manager that keeps failing to connect (a paused or black-holed server after a discard)
    /// would otherwise wait through all its attempts and their backoff.
    fn limit(&self) -> Duration {
        let connect = self
            .config
            .connection_timeout()
            .unwrap_or(Duration::from_secs(5));
        let reply = self
            .config
            .response_timeout()
            .unwrap_or(Duration::from_secs(5));
        connect + reply
    }

    /// After a failed command: a connection the manager would keep is discarded.
    fn failed(&self, current: &Current, e: &RedisError) {
        if breaks_connection(e) && !e.is_unrecoverable_error() {
            self.discard(current.generation);
        }
    }

    /// Runs `f` with the current manager, at home, and once more from the start on a fresh
    /// connection if its connection dropped (for multi-step reads such as SCAN, each of whose
    /// steps may be repeated); a failure that breaks the connection discards it.
    pub(super) async fn with_manager<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Fn(ConnectionManager) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        self.at_home(move |me| async move { me.retrying_here(None, |m, _| f(m)).await })
            .await
    }
}

/// The error of a command that ran out of [`SharedConn::limit`]: a timeout, as the manager's own.
fn elapsed() -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no connection and reply in time",
    )
    .into()
}
