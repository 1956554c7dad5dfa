//! A lease's events as Python classes: `LeaseEvent` (one thing that happened to a held lease)
//! and `LeaseEvents` (the async iterator `Lease.events()` returns).

use std::sync::Arc;

use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::lease::{LeaseEvent, LeaseEvents};

use super::bridge::abortable_future_into_py_with;
use super::runtime;

/// Something that happened to a held lease.
#[pyclass(name = "LeaseEvent", module = "distributed_leasing", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PyLeaseEvent {
    event: LeaseEvent,
}

#[pymethods]
impl PyLeaseEvent {
    /// `renewed`, `renewal_failed`, `lost` or `released`.
    #[getter]
    fn kind(&self) -> &'static str {
        match self.event {
            LeaseEvent::Renewed { .. } => "renewed",
            LeaseEvent::RenewalFailed { .. } => "renewal_failed",
            LeaseEvent::Lost { .. } => "lost",
            LeaseEvent::Released => "released",
        }
    }
    #[getter]
    fn renewals(&self) -> Option<u64> {
        match self.event {
            LeaseEvent::Renewed { renewals } => Some(renewals),
            _ => None,
        }
    }
    #[getter]
    fn attempt(&self) -> Option<u32> {
        self.failure().map(|(attempt, _, _)| attempt)
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        self.failure().map(|(_, error, _)| error)
    }
    #[getter]
    fn will_retry(&self) -> Option<bool> {
        self.failure().map(|(_, _, will_retry)| will_retry)
    }
    #[getter]
    fn reason(&self) -> Option<&'static str> {
        match self.event {
            LeaseEvent::Lost { reason } => Some(reason.as_str()),
            _ => None,
        }
    }
    fn __repr__(&self) -> String {
        match &self.event {
            LeaseEvent::Renewed { renewals } => {
                format!("LeaseEvent(kind='renewed', renewals={renewals})")
            }
            LeaseEvent::RenewalFailed {
                attempt,
                error,
                will_retry,
            } => format!(
                "LeaseEvent(kind='renewal_failed', attempt={attempt}, will_retry={}, error={error:?})",
                if *will_retry { "True" } else { "False" }
            ),
            LeaseEvent::Lost { reason } => {
                format!("LeaseEvent(kind='lost', reason={:?})", reason.as_str())
            }
            LeaseEvent::Released => "LeaseEvent(kind='released')".to_owned(),
        }
    }
}

impl PyLeaseEvent {
    /// A `renewal_failed` event's `attempt`, `error` and `will_retry`.
    fn failure(&self) -> Option<(u32, &str, bool)> {
        match &self.event {
            LeaseEvent::RenewalFailed {
                attempt,
                error,
                will_retry,
            } => Some((*attempt, error, *will_retry)),
            _ => None,
        }
    }
}

/// `async for event in lease.events()`: the events of one lease; stops after its end.
#[pyclass(name = "LeaseEvents", module = "distributed_leasing", frozen)]
pub(crate) struct PyLeaseEvents {
    inner: Arc<tokio::sync::Mutex<LeaseEvents>>,
    pid: u32,
}

#[pymethods]
impl PyLeaseEvents {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let inner = Arc::clone(&self.inner);
        abortable_future_into_py_with(
            py,
            async move { Ok(inner.lock().await.next().await) },
            |py, event: Option<LeaseEvent>| match event {
                Some(event) => Ok(PyLeaseEvent { event }.into_py_any(py)?),
                None => Err(PyStopAsyncIteration::new_err(())),
            },
        )
    }
}

impl PyLeaseEvents {
    /// The events of a lease taken in process `pid`, from now on.
    pub(crate) fn new(events: LeaseEvents, pid: u32) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(events)),
            pid,
        }
    }
}
