//! The twins of one client (its connections driven by an event loop or by a thread, see
//! `inline` and `thread_twin`), so that closing or dropping the client closes them.
//!
//! A twin is kept by the loop or thread that drives it; the client keeps weak references here.
//! [`Twins::close`] closes every twin still open, from any thread, and from then on no twin of
//! the client opens: it runs when the client is closed and when it is dropped. The client's
//! leases share it (a lease releases through a twin of its client while the client is open).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The twins of one client.
pub(crate) struct Twins {
    /// The client's key in each loop's and thread's table of twins.
    pub(crate) id: u64,
    inner: Mutex<Inner>,
}

/// A connection a loop or a thread drives for a client (`inline::LoopTwin`,
/// `thread_twin::ThreadTwin`), closed with the client. A trait, so that this record does not
/// import the modules that use it.
pub(crate) trait Close: Send + Sync {
    /// Closes the connection for good, from any thread.
    fn close(&self);
}

#[derive(Default)]
struct Inner {
    closed: bool,
    twins: Vec<Weak<dyn Close>>,
}

impl Twins {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, SeqCst),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the client was closed or dropped: no twin may open.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Records a twin opened on a loop or a thread; `false` (the caller closes it) if the
    /// client closed meanwhile.
    pub(crate) fn add(&self, twin: Arc<dyn Close>) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        inner.twins.retain(|w| w.strong_count() > 0);
        inner.twins.push(Arc::downgrade(&twin));
        true
    }

    /// Closes every twin of the client, wherever it is, and keeps new ones from opening.
    pub(crate) fn close(&self) {
        let twins = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.twins)
        };
        for twin in twins.iter().filter_map(Weak::upgrade) {
            twin.close();
        }
    }
}
