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
//! a client (within the connect timeout; a failure means the shared path for a second). Only
//! one-attempt acquires and releases use them. The twin's connection is driven only while a
//! call runs on its thread; a server-side close is seen by the next call, whose command is
//! then retried once on the store's own reconnecting connection (by the store), so it costs no
//! operation. Leases taken here belong to the client's runtime for renewal and release, like
//! any other. Twins of clients that were dropped are closed when the thread opens another
//! twin, or ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::error::LeaseError as CoreError;
use crate::store::LeaseStore;
use crate::LeaseClient;

/// How long a thread keeps to the shared path after its twin failed to open or closed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[allow(clippy::large_enum_variant)] // one per client and loop (thread): size is no matter
enum Twin {
    Ready {
        client: LeaseClient,
        store: Arc<dyn LeaseStore>,
        alive: Arc<AtomicBool>,
        owner: Weak<()>,
    },
    Closed {
        retry_at: Instant,
    },
}

struct ThreadTwins {
    pid: u32,
    /// Shared with calls in progress; dropped (closing the twins) when the thread ends.
    runtime: Arc<Runtime>,
    twins: HashMap<u64, Twin>,
}

thread_local! {
    static TWINS: RefCell<Option<ThreadTwins>> = const { RefCell::new(None) };
}

/// A ready twin on this thread.
pub(crate) struct Ready {
    pub(crate) client: LeaseClient,
    pub(crate) store: Arc<dyn LeaseStore>,
    runtime: Arc<Runtime>,
}

/// The twin of client `id` on this thread, opening it (blocking, GIL released) if there is
/// none; `None` when it cannot be had now (then take the shared path).
pub(crate) fn ready(
    py: Python<'_>,
    id: u64,
    owner: &Arc<()>,
    client: &LeaseClient,
) -> Option<Ready> {
    let pid = super::runtime::pid();
    let found = TWINS.with_borrow(|t| {
        let t = t.as_ref().filter(|t| t.pid == pid)?;
        match t.twins.get(&id)? {
            Twin::Ready {
                client,
                store,
                alive,
                ..
            } if alive.load(SeqCst) => Some(Some(Ready {
                client: client.clone(),
                store: Arc::clone(store),
                runtime: Arc::clone(&t.runtime),
            })),
            Twin::Closed { retry_at } if Instant::now() < *retry_at => Some(None),
            _ => None,
        }
    });
    if let Some(found) = found {
        return found;
    }
    let redis = client.store().as_redis()?.clone();
    let opened = py.detach(|| {
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
                    runtime: Arc::new(runtime),
                    twins: HashMap::new(),
                });
            }
            let t = t.as_mut()?;
            // Twins of dropped clients go now.
            t.twins.retain(|_, twin| match twin {
                Twin::Ready { owner, .. } => owner.strong_count() > 0,
                Twin::Closed { .. } => true,
            });
            let alive = Arc::new(AtomicBool::new(true));
            let opened = t.runtime.block_on(async {
                let sock = redis.open_inline_socket().await?;
                let stream = tokio::net::TcpStream::from_std(sock)
                    .map_err(|e| CoreError::Config(format!("cannot use the socket: {e}")))?;
                let (twin, driver) = redis.inline_twin(stream).await?;
                let flag = Arc::clone(&alive);
                tokio::spawn(async move {
                    driver.await;
                    flag.store(false, SeqCst);
                });
                Ok::<_, CoreError>(twin)
            });
            match opened {
                Ok(twin) => {
                    let store: Arc<dyn LeaseStore> = Arc::new(twin);
                    let ready = Ready {
                        client: client.inline_twin(Arc::clone(&store)),
                        store: Arc::clone(&store),
                        runtime: Arc::clone(&t.runtime),
                    };
                    t.twins.insert(
                        id,
                        Twin::Ready {
                            client: ready.client.clone(),
                            store,
                            alive,
                            owner: Arc::downgrade(owner),
                        },
                    );
                    Some(ready)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open this thread's connection; using the shared one");
                    t.twins.insert(
                        id,
                        Twin::Closed {
                            retry_at: Instant::now() + RETRY_AFTER,
                        },
                    );
                    None
                }
            }
        })
    });
    opened
}

impl Ready {
    /// Runs `fut` on this thread's runtime (where the twin's connection lives), as
    /// `bridge::block_on` does on the process's.
    pub(crate) fn block_on<F, T>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: std::future::Future<Output = Result<T, CoreError>> + Send,
        T: Send,
    {
        super::bridge::block_on_in(py, &self.runtime, fut)
    }
}
