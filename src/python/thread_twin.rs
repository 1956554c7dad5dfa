//! Blocking acquire and release on the calling thread's own Redis connection.
//!
//! Why: a blocking call through the process's runtime waits on the calling thread while a tokio
//! worker does the socket I/O, so each call costs two cross-thread wake-ups, which on this
//! 2-core machine cost more than the Redis round trip (`bench/profile.sh`). Here each thread
//! that makes blocking calls gets a current-thread tokio runtime and, per client, a
//! caller-driven twin of the client's store on it (see `store::redis::inline`): the calling
//! thread writes the request and reads the reply itself, as redis-py does.
//!
//! What it owns: the thread's runtime and twins, opened on the thread's first blocking call of
//! a client (within the connect timeout; a failure means the shared path for a second). Every
//! one-request operation uses them (`executor` decides). A twin's connection is driven by the calls made
//! on it (its driver is polled beside the call's future, see [`Ready::block_on`]), so it does
//! nothing between calls: a server-side close is seen by the next call, whose command is then
//! retried once by the store on a fresh shared connection (on the process's runtime, never on
//! this thread's, which runs only during calls), and the twin is replaced. A twin whose
//! connection failed in any way is never used again. Leases taken here belong to the client's
//! runtime for renewal and release, like any other.
//!
//! Closing: a twin can be closed from any thread ([`ThreadTwin::close`], called when its client
//! is closed or dropped, see `twins`): that drops its connection at once. Twins also close when
//! their thread ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::error::LeaseError as CoreError;
use crate::store::redis::inline::Driver;
use crate::store::redis::RedisStore;
use crate::store::LeaseStore;
use crate::LeaseClient;

use super::twins::{Close, Twins};

/// How long a thread keeps to the shared path after its twin failed to open.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One client's twin on one thread. Kept by the thread; its client closes it from anywhere.
pub(crate) struct ThreadTwin {
    /// `None` once closed.
    live: Mutex<Option<Live>>,
}

struct Live {
    client: LeaseClient,
    store: Arc<dyn LeaseStore>,
    /// Drives the connection; `None` once the connection ended.
    driver: Option<Driver>,
}

impl Close for ThreadTwin {
    /// Closes the connection (from any thread): its socket is closed before this returns.
    fn close(&self) {
        let live = self.lock().take();
        drop(live);
    }
}

impl ThreadTwin {
    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the twin can take another call: open, its connection alive and never failed.
    fn usable(&self) -> bool {
        self.lock().as_ref().is_some_and(|l| {
            l.driver.is_some() && !RedisStore::of(&*l.store).is_some_and(|r| r.is_broken())
        })
    }
}

enum Slot {
    Open(Arc<ThreadTwin>),
    Failed { retry_at: Instant },
}

struct ThreadTwins {
    pid: u32,
    /// Dropped before the runtime (fields drop in order): their sockets close first.
    twins: HashMap<u64, Slot>,
    /// Shared with calls in progress.
    runtime: Arc<Runtime>,
}

impl Drop for ThreadTwins {
    fn drop(&mut self) {
        if self.pid != super::runtime::pid() {
            // A forked child, whose main thread's locals are dropped when it exits (sys.exit,
            // the end of its script): the sockets and this runtime's epoll instance are shared
            // with the parent, and dropping a registered socket takes it off that instance, so
            // the parent's next call on the twin would wait for a reply it is never told of
            // (a whole operation timeout). Leaked instead: the child is exiting or has started
            // afresh (see `ready`).
            std::mem::forget(std::mem::take(&mut self.twins));
            std::mem::forget(Arc::clone(&self.runtime));
        }
    }
}

thread_local! {
    static TWINS: RefCell<Option<ThreadTwins>> = const { RefCell::new(None) };
}

/// A ready twin on this thread.
pub(crate) struct Ready {
    /// The client's view whose requests go over this thread's connection.
    pub(crate) client: LeaseClient,
    twin: Arc<ThreadTwin>,
    runtime: Arc<Runtime>,
}

impl Ready {
    fn of(twin: &Arc<ThreadTwin>, runtime: &Arc<Runtime>) -> Option<Self> {
        let live = twin.lock();
        let live = live.as_ref()?;
        Some(Self {
            client: live.client.clone(),
            twin: Arc::clone(twin),
            runtime: Arc::clone(runtime),
        })
    }
}

/// The twin of the client of `twins` on this thread, opening it (blocking, GIL released) if
/// there is none or the last one failed; `None` when it cannot be had now (then take the
/// shared path), and always once the client is closed.
pub(crate) fn ready(py: Python<'_>, twins: &Arc<Twins>, client: &LeaseClient) -> Option<Ready> {
    if twins.is_closed() || client.is_closed() {
        return None;
    }
    let id = twins.id;
    let pid = super::runtime::pid();
    let found = TWINS.with_borrow(|t| {
        let t = t.as_ref().filter(|t| t.pid == pid)?;
        match t.twins.get(&id)? {
            Slot::Open(twin) if twin.usable() => Some(Ready::of(twin, &t.runtime)),
            Slot::Failed { retry_at } if Instant::now() < *retry_at => Some(None),
            _ => None,
        }
    });
    if let Some(found) = found {
        return found;
    }
    let redis = RedisStore::of(&**client.store())?.clone();
    py.detach(|| {
        TWINS.with_borrow_mut(|t| {
            // After fork() the parent's runtime and sockets are shared with it: start afresh
            // (leaking the old ones; dropping them could touch the parent's state).
            if t.as_ref().is_some_and(|t| t.pid != super::runtime::pid()) {
                std::mem::forget(t.take());
            }
            if t.is_none() {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                *t = Some(ThreadTwins {
                    pid: super::runtime::pid(),
                    twins: HashMap::new(),
                    runtime: Arc::new(runtime),
                });
            }
            let t = t.as_mut()?;
            // Closed twins (their client closed or dropped) and failed ones go now.
            t.twins.retain(|_, slot| match slot {
                Slot::Open(twin) => twin.usable(),
                Slot::Failed { .. } => true,
            });
            let opened = t.runtime.block_on(async {
                let sock = redis.open_inline_socket().await?;
                let stream = tokio::net::TcpStream::from_std(sock)
                    .map_err(|e| CoreError::Config(format!("cannot use the socket: {e}")))?;
                redis.inline_twin(stream).await
            });
            match opened {
                Ok((store, driver)) => {
                    let store: Arc<dyn LeaseStore> = Arc::new(store);
                    let twin = Arc::new(ThreadTwin {
                        live: Mutex::new(Some(Live {
                            client: client.via(Arc::clone(&store)),
                            store,
                            driver: Some(driver),
                        })),
                    });
                    if !twins.add(twin.clone()) {
                        // The client was closed meanwhile.
                        twin.close();
                        return None;
                    }
                    t.twins.insert(id, Slot::Open(Arc::clone(&twin)));
                    Ready::of(&twin, &t.runtime)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open this thread's connection; using the shared one");
                    t.twins.insert(
                        id,
                        Slot::Failed {
                            retry_at: Instant::now() + RETRY_AFTER,
                        },
                    );
                    None
                }
            }
        })
    })
}

impl Ready {
    /// Runs `fut` on this thread's runtime, driving the twin's connection meanwhile, as
    /// `bridge::block_on` does on the process's.
    pub(crate) fn block_on<F, T>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = Result<T, CoreError>> + Send,
        T: Send,
    {
        let twin = &self.twin;
        let mut fut = std::pin::pin!(fut);
        // Hand-written rather than a `select!`: the driver lives in the twin (so that its
        // client can close it from any thread), and is polled under the twin's lock, which is
        // never held across a suspension.
        let driven = std::future::poll_fn(move |cx| {
            {
                let mut live = twin.lock();
                if let Some(live) = live.as_mut() {
                    if let Some(driver) = live.driver.as_mut() {
                        if driver.as_mut().poll(cx).is_ready() {
                            // The connection ended; the call fails over to the shared one.
                            live.driver = None;
                        }
                    }
                }
            }
            fut.as_mut().poll(cx)
        });
        super::bridge::block_on_in(py, &self.runtime, driven)
    }
}
