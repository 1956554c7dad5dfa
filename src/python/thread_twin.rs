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

use super::errors::to_py;

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
    runtime: Runtime,
    twins: HashMap<u64, Twin>,
}

thread_local! {
    static TWINS: RefCell<Option<ThreadTwins>> = const { RefCell::new(None) };
}

/// A ready twin on this thread.
pub(crate) struct Ready {
    pub(crate) client: LeaseClient,
    pub(crate) store: Arc<dyn LeaseStore>,
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
        match t
            .as_ref()
            .filter(|t| t.pid == pid)
            .and_then(|t| t.twins.get(&id))
        {
            Some(Twin::Ready {
                client,
                store,
                alive,
                ..
            }) if alive.load(SeqCst) => Some(Some(Ready {
                client: client.clone(),
                store: Arc::clone(store),
            })),
            Some(Twin::Closed { retry_at }) if Instant::now() < *retry_at => Some(None),
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
                    runtime,
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

/// Runs `fut` on this thread's runtime (where its twin's connection lives), GIL released,
/// checking for signals every 50 ms as `bridge::block_on` does.
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: std::future::Future<Output = Result<T, CoreError>> + Send,
    T: Send,
{
    super::logging::refresh(py);
    let mut fut = std::pin::pin!(fut);
    loop {
        let step = py.detach(|| {
            TWINS.with_borrow(|t| {
                t.as_ref().map(|t| {
                    t.runtime.block_on(async {
                        tokio::time::timeout(Duration::from_millis(50), &mut fut).await
                    })
                })
            })
        });
        match step {
            Some(Ok(result)) => return result.map_err(|e| to_py(py, e)),
            Some(Err(_elapsed)) => py.check_signals()?,
            None => {
                return Err(to_py(
                    py,
                    CoreError::Config("this thread has no runtime of its own".into()),
                ))
            }
        }
    }
}
