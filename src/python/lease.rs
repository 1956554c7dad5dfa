//! `Lease`, a held lease as a Python class: what it tells (its getters), what it does
//! (`renew`, `proclaim`, `release` and their `_sync` forms, `wait_lost`, `events`), and the two hooks of
//! `LeaseContext` (`_on_end`, `_release_if_loop_closed`). It runs its operations on the
//! executor of the client that took it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefReference};

use crate::lease::{Lease, LeaseEnd};

use super::bridge::inbox_for;
use super::events::PyLeaseEvents;
use super::executor::{Executor, Op};
use super::options::metadata_of;
use super::pairs::{on, pymethods_with_pairs};
use super::runtime;

/// A held lease.
#[pyclass(name = "Lease", module = "distributed_leasing", frozen, subclass)]
pub(crate) struct PyLease {
    inner: Arc<Lease>,
    pid: u32,
    /// The executor of the client that took it: the lease is renewed and released as the
    /// client's other operations run.
    exec: Executor,
}

impl Drop for PyLease {
    fn drop(&mut self) {
        if self.forked() {
            // The lease, its client and its renewal are the parent's: a drop here would end it
            // and queue its release on a runtime whose threads do not exist in this process
            // (taking locks a parent thread may have held at fork). Left alone.
            std::mem::forget(Arc::clone(&self.inner));
        }
    }
}

impl PyLease {
    pub(crate) fn new(lease: Lease, exec: Executor) -> Self {
        Self::shared(Arc::new(lease), exec)
    }

    /// Over a lease that a subclass (a semaphore's `Permit`) shares.
    pub(crate) fn shared(lease: Arc<Lease>, exec: Executor) -> Self {
        Self {
            inner: lease,
            pid: runtime::pid(),
            exec,
        }
    }

    /// Whether this process is a child forked after the lease was taken.
    fn forked(&self) -> bool {
        self.pid != runtime::pid()
    }
}

fn end_name(end: LeaseEnd) -> Option<&'static str> {
    match end {
        LeaseEnd::Lost(r) => Some(r.as_str()),
        LeaseEnd::Released => None,
    }
}

pymethods_with_pairs! {
    impl PyLease {
        #[getter]
        fn name(&self) -> &str {
            self.inner.name()
        }
        #[getter]
        fn lease_id(&self) -> &str {
            self.inner.lease_id()
        }
        #[getter]
        fn fencing_token(&self) -> u64 {
            self.inner.fencing_token()
        }
        #[getter]
        fn acquired_at(&self) -> DateTime<Utc> {
            self.inner.acquired_at()
        }
        #[getter]
        fn duration(&self) -> f64 {
            self.inner.duration().as_secs_f64()
        }
        #[getter]
        fn renewals(&self) -> u64 {
            self.inner.renewals()
        }
        #[getter]
        fn renewal_failures(&self) -> u64 {
            self.inner.renewal_failures()
        }
        // In a process forked from the one that took the lease, the handle reads as lost (its
        // client and the lease are the parent's; the methods refuse, see `check_pid`): a child
        // must never believe it holds its parent's lease.
        #[getter]
        fn expires_in(&self) -> f64 {
            if self.forked() {
                return 0.0;
            }
            self.inner.expires_in().as_secs_f64()
        }
        #[getter]
        fn is_lost(&self) -> bool {
            self.forked() || self.inner.is_lost()
        }
        #[getter]
        fn lost_reason(&self) -> Option<&'static str> {
            if self.forked() {
                return Some(crate::error::LostReason::ClientClosed.as_str());
            }
            self.inner
                .lost_reason()
                .map(crate::error::LostReason::as_str)
        }
        #[getter]
        fn is_released(&self) -> bool {
            self.inner.end() == Some(LeaseEnd::Released)
        }

        /// Resolves when the lease ends: to the loss reason, or None if it was released.
        fn wait_lost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
            runtime::check_pid(self.pid)?;
            let ended = self.inner.ended();
            self.exec
                .spawn(py, Op::Wait, |_| async move { Ok(end_name(ended.await)) })
        }
        /// The lease's events from now on, as an async iterator (ends after the lease ends).
        fn events(&self) -> PyResult<PyLeaseEvents> {
            runtime::check_pid(self.pid)?;
            Ok(PyLeaseEvents::new(self.inner.events(), self.pid))
        }
        /// Calls `callback(reason_or_None)` on `event_loop` once the lease ends.
        fn _on_end(&self, event_loop: &Bound<'_, PyAny>, callback: Py<PyAny>) -> PyResult<()> {
            runtime::check_pid(self.pid)?;
            // Only a loss calls back (on the loop's thread, through its inbox); a release, the
            // usual end, costs nothing: no task waits for it and no loop wake-up follows it.
            let inbox = inbox_for(event_loop.py(), event_loop)?;
            self.inner.on_end(move |end| {
                if let Some(reason) = end_name(end) {
                    inbox.push(Box::new(move |py| {
                        if let Err(e) = callback.call1(py, (reason,)) {
                            e.write_unraisable(py, None);
                        }
                    }));
                }
            });
            Ok(())
        }
        /// Releases the lease instead of renewing it once `event_loop` is closed (or collected):
        /// the `async with` body it ran can never resume, so nobody could use the lease again.
        fn _release_if_loop_closed(&self, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
            runtime::check_pid(self.pid)?;
            // Weakly: the lease must not keep a loop alive.
            let weak = PyWeakrefReference::new(event_loop)?.unbind();
            self.inner.set_holder_check(move || {
                // `None` (the interpreter is shutting down): keep it; process exit releases it.
                runtime::with_python(|py| {
                    let Some(event_loop) = weak.bind(py).upgrade() else {
                        return false;
                    };
                    !event_loop
                        .call_method0(pyo3::intern!(py, "is_closed"))
                        .and_then(|c| c.is_truthy())
                        .unwrap_or(false)
                })
                .unwrap_or(true)
            });
            Ok(())
        }
        fn __repr__(&self) -> String {
            format!(
                "Lease(name={:?}, lease_id={:?}, fencing_token={}, renewals={}, expires_in={:.3}, is_lost={})",
                self.inner.name(),
                self.inner.lease_id(),
                self.inner.fencing_token(),
                self.inner.renewals(),
                self.inner.expires_in().as_secs_f64(),
                if self.inner.is_lost() { "True" } else { "False" },
            )
        }
    }
    pairs {
        fn renew / renew_sync(&self) -> () {
            runtime::check_pid(self.pid)?;
            let lease = Arc::clone(&self.inner);
            on(&self.exec, Op::Request, move |c| async move {
                lease.renew_via(&**c.requests()).await
            })
        }
        /// Replaces the lease's metadata as a whole, without extending it (owner-checked:
        /// `LeaseLost`, nothing changed, when it is no longer held).
        fn proclaim / proclaim_sync(&self, metadata: &Bound<'_, PyDict>) -> () {
            runtime::check_pid(self.pid)?;
            let metadata = metadata_of(Some(metadata))?;
            let lease = Arc::clone(&self.inner);
            on(&self.exec, Op::Request, move |c| async move {
                lease.proclaim_via(&**c.requests(), &metadata).await
            })
        }
        fn release / release_sync(&self) -> bool {
            runtime::check_pid(self.pid)?;
            let lease = Arc::clone(&self.inner);
            on(&self.exec, Op::Request, move |c| async move {
                lease.release_via(&**c.requests()).await
            })
        }
    }
}
