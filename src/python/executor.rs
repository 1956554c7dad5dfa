//! Where a call from Python runs: the one place that chooses, per call, between the caller's
//! own connection and the process's runtime, and so the one cancellation story.
//!
//! Every store operation of a client and of its leases goes through [`Executor`]. It hands the
//! operation a [`LeaseClient`] to run on: a view of the client whose requests go over the
//! calling event loop's or thread's own connection when one is ready (see `inline` and
//! `thread_twin`; the core sees only "a store to run requests on", [`LeaseClient::via`]), else
//! the client itself, whose requests go through its shared connection on the runtime. Which of
//! the two depends only on what the operation is ([`Op`]) and on where it is called from, never
//! on which operation it is.
//!
//! The routes of one call, and why each exists:
//!
//! | call | runs | connection | a caller that leaves mid-request |
//! | --- | --- | --- | --- |
//! | `await`, one request, loop twin ready (Redis over TCP/TLS) | on the event loop's thread (`inline`) | the loop's own socket | `acquiring::GiveBack` gives back what it may have won |
//! | `await`, one request, otherwise | a tokio task (`bridge::future_into_py`) | the store's shared connection | the task finishes; `acquiring::Delivery` gives back what it won |
//! | `await`, a wait (`Op::Wait`) | a tokio task, aborted on cancel | shared | abort; each attempt is one of the above |
//! | `_sync`, one request or a lease's wait (`Op::LeaseWait`), thread twin ready (Redis) | the calling thread's runtime (`thread_twin`) | the thread's own socket (notices: the shared feed) | `GiveBack` (Ctrl-C drops the future) |
//! | `_sync`, otherwise | blocks on the process runtime | shared | `Delivery` |
//!
//! Why the twins: on a 2-core machine the two cross-thread hops of the tokio route cost more
//! than a loopback Redis round trip; the loop's own connection took one async task's
//! acquire+release from 13.3k to 18.5k cycles/s and the thread's own connection the sync one
//! from 17.0k to 22.0k (`bench/README.md`, "Where the time goes"); a blocking wait for a lease
//! on the thread's own connection saves the same two hops between a release notice and the
//! next attempt (the hand-off). Awaited waits, permit and campaign waits, Entra ID, clusters
//! and the other stores keep the tokio route. Whatever the route, the one mechanism that
//! undoes a cancelled acquire is `crate::acquiring::give_back`; a lease already handed over is
//! given back by dropping its handle.
//!
//! Cancellation: a [`Op::Request`] runs to the end once started, wherever it runs (a cancelled
//! await discards its result, and what it won is given back); a [`Op::Wait`] runs on the
//! runtime and a cancelled await aborts it. A blocking call is interrupted by Ctrl-C in both
//! cases (the operation is dropped, as a cancelled await's would be).

use std::future::Future;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::error::LeaseError as CoreError;
use crate::store::redis::RedisStore;
use crate::LeaseClient;

use super::bridge::{abortable_future_into_py, block_on, future_into_py};
use super::twins::Twins;
use super::{inline, thread_twin};

/// What an operation is, which decides where it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// One request to the store (one acquire attempt, a renewal, a release, inspect, list, a
    /// forced release): over the caller's own connection when it has one ready.
    Request,
    /// An operation that may wait long (an acquire with a wait, a wait for the lease's end):
    /// on the runtime, aborted when its await is cancelled.
    Wait,
    /// A lease's acquire with a wait: as [`Op::Wait`] for an await; a blocking one runs on
    /// the caller's own connection when it has one ready, its attempts written and read by
    /// the waiting thread, the release notices from the store's shared feed (which runs on the
    /// client's runtime). Not for permits and campaigns, whose attempts start tasks of their
    /// own on the current runtime.
    LeaseWait,
}

/// Runs the operations of one client (and of the leases it took). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Executor {
    client: LeaseClient,
    /// Set when the client's store can be driven by the caller (one Redis server over plain
    /// TCP): the connections its loops and threads drive for it, closed with it.
    twins: Option<Arc<Twins>>,
}

impl Executor {
    pub(crate) fn new(client: LeaseClient) -> Self {
        let twins = RedisStore::of(&**client.store())
            .is_some_and(|r| r.supports_inline())
            .then(Twins::new);
        Self { client, twins }
    }

    /// The client itself (its options, its store's kind).
    pub(crate) fn client(&self) -> &LeaseClient {
        &self.client
    }

    /// An asyncio awaitable of `op(client)`, `client` being the view to run on.
    pub(crate) fn spawn<'py, F, Fut, T>(
        &self,
        py: Python<'py>,
        kind: Op,
        op: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce(LeaseClient) -> Fut,
        Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        match kind {
            Op::Request => match self.on_loop(py)? {
                Some(ready) => {
                    let fut = op(ready.client.clone());
                    ready.future_into_py(py, fut)
                }
                None => future_into_py(py, op(self.client.clone())),
            },
            Op::Wait | Op::LeaseWait => abortable_future_into_py(py, op(self.client.clone())),
        }
    }

    /// `op(client)` run to its end with the GIL released, `client` being the view to run on.
    pub(crate) fn block<F, Fut, T>(&self, py: Python<'_>, kind: Op, op: F) -> PyResult<T>
    where
        F: FnOnce(LeaseClient) -> Fut,
        Fut: Future<Output = Result<T, CoreError>> + Send,
        T: Send,
    {
        if matches!(kind, Op::Request | Op::LeaseWait) {
            if let Some(ready) = self.on_thread(py) {
                let fut = op(ready.client.clone());
                return ready.block_on(py, fut);
            }
        }
        block_on(py, op(self.client.clone()))
    }

    /// Closes the connections the client's loops and threads drive for it, here and now; from
    /// then on every operation runs on the runtime (and the closed client refuses them).
    pub(crate) fn close_own_connections(&self) {
        if let Some(twins) = &self.twins {
            twins.close();
        }
    }

    /// The running loop's connection for this client, if one is ready (one starts opening
    /// otherwise, see `inline`).
    fn on_loop(&self, py: Python<'_>) -> PyResult<Option<inline::Ready>> {
        match &self.twins {
            Some(twins) => inline::ready(py, twins, &self.client),
            None => Ok(None),
        }
    }

    /// This thread's connection for this client, opened now if it can be (see `thread_twin`).
    fn on_thread(&self, py: Python<'_>) -> Option<thread_twin::Ready> {
        thread_twin::ready(py, self.twins.as_ref()?, &self.client)
    }
}
