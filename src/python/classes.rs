//! The Python classes: `_Client` (wrapped by the public `LeaseClient`), `Lease` and a lease's
//! events (`LeaseEvent`, and `LeaseEvents`, their async iterator).
//!
//! Each method that talks to the store exists twice: `name(...)` returns an awaitable,
//! `name_sync(...)` blocks with the GIL released. Both hand the operation to the client's
//! [`Executor`], which decides where it runs; their options come checked (`options`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use pyo3::IntoPyObjectExt;

use crate::client::{LeaseClient, TryAcquire};
use crate::lease::{Lease, LeaseEnd, LeaseEvent, LeaseEvents};
use crate::store::ForceReleased;

use super::bridge::{abortable_future_into_py_with, block_on, future_into_py, inbox_for};
use super::executor::{Executor, Op};
use super::info::PyLeaseInfo;
use super::options::{PyClientOptions, PyOptions};
use super::runtime;

/// A held lease.
#[pyclass(name = "Lease", module = "distributed_leasing", frozen)]
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

#[pymethods]
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

    fn renew<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        self.exec.spawn(py, Op::Request, |c| async move {
            lease.renew_via(&**c.requests()).await
        })
    }
    fn renew_sync(&self, py: Python<'_>) -> PyResult<()> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        self.exec.block(py, Op::Request, |c| async move {
            lease.renew_via(&**c.requests()).await
        })
    }
    fn release<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        self.exec.spawn(py, Op::Request, |c| async move {
            lease.release_via(&**c.requests()).await
        })
    }
    fn release_sync(&self, py: Python<'_>) -> PyResult<bool> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        self.exec.block(py, Op::Request, |c| async move {
            lease.release_via(&**c.requests()).await
        })
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
        Ok(PyLeaseEvents {
            inner: Arc::new(tokio::sync::Mutex::new(self.inner.events())),
            pid: self.pid,
        })
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
        match self.event {
            LeaseEvent::RenewalFailed { attempt, .. } => Some(attempt),
            _ => None,
        }
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        match &self.event {
            LeaseEvent::RenewalFailed { error, .. } => Some(error),
            _ => None,
        }
    }
    #[getter]
    fn will_retry(&self) -> Option<bool> {
        match self.event {
            LeaseEvent::RenewalFailed { will_retry, .. } => Some(will_retry),
            _ => None,
        }
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

impl PyLease {
    fn new(lease: Lease, exec: Executor) -> Self {
        Self {
            inner: Arc::new(lease),
            pid: runtime::pid(),
            exec,
        }
    }
}

/// The native client; `distributed_leasing.LeaseClient` wraps it.
#[pyclass(name = "_Client", module = "distributed_leasing._native", frozen)]
pub(crate) struct PyClient {
    exec: Executor,
    pid: u32,
}

impl Drop for PyClient {
    fn drop(&mut self) {
        // A dropped client closes the connections its loops and threads drive for it (the
        // shared ones close when the last lease and clone of the client are gone). Never in a
        // forked child: those sockets, files and pollers are the parent's, so nothing of the
        // client is dropped there (leaked, as the parent's runtime is).
        if self.pid == runtime::pid() {
            self.exec.close_own_connections();
        } else {
            std::mem::forget(self.exec.clone());
        }
    }
}

impl PyClient {
    fn new(inner: LeaseClient) -> Self {
        Self {
            exec: Executor::new(inner),
            pid: runtime::pid(),
        }
    }

    fn client(&self) -> &LeaseClient {
        self.exec.client()
    }
}

type TryOut = (Option<PyLease>, Option<PyLeaseInfo>);

fn try_out(r: TryAcquire, exec: Executor) -> TryOut {
    match r {
        TryAcquire::Acquired(l) => (Some(PyLease::new(l, exec)), None),
        TryAcquire::Held(h) => (None, Some(h.into())),
    }
}

/// Where an acquire with `options` runs: one attempt is one request, a wait may be long.
fn acquire_op(options: &PyOptions) -> Op {
    if options.one_attempt() {
        Op::Request
    } else {
        Op::Wait
    }
}

#[pymethods]
impl PyClient {
    #[staticmethod]
    fn connect<'py>(
        py: Python<'py>,
        url: String,
        options: &PyClientOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = options.options.clone();
        future_into_py(py, async move {
            Ok(PyClient::new(LeaseClient::connect(&url, opts).await?))
        })
    }

    #[staticmethod]
    fn connect_sync(py: Python<'_>, url: String, options: &PyClientOptions) -> PyResult<PyClient> {
        let opts = options.options.clone();
        block_on(py, async move {
            Ok(PyClient::new(LeaseClient::connect(&url, opts).await?))
        })
    }

    /// Loads the configuration of `dir` and the environment, and connects; returns the client
    /// and the configuration's warnings.
    #[staticmethod]
    fn from_config_sync(
        py: Python<'_>,
        dir: std::path::PathBuf,
    ) -> PyResult<(PyClient, Vec<String>)> {
        block_on(py, async move {
            let settings = crate::config::load_from_process_env(&dir)?;
            let inner = LeaseClient::from_settings(&settings, &dir).await?;
            Ok((PyClient::new(inner), settings.warnings))
        })
    }

    /// The store kind: `redis`, `redis-cluster` or `sqlite`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.client().store().kind()
    }

    #[getter]
    fn key_prefix(&self) -> &str {
        &self.client().options().key_prefix
    }

    fn try_acquire<'py>(
        &self,
        py: Python<'py>,
        name: String,
        options: &PyOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let (opts, exec) = (options.options.clone(), self.exec.clone());
        self.exec.spawn(py, Op::Request, |c| async move {
            Ok(try_out(c.try_acquire(&name, &opts).await?, exec))
        })
    }

    fn try_acquire_sync(
        &self,
        py: Python<'_>,
        name: String,
        options: &PyOptions,
    ) -> PyResult<TryOut> {
        runtime::check_pid(self.pid)?;
        let (opts, exec) = (options.options.clone(), self.exec.clone());
        self.exec.block(py, Op::Request, |c| async move {
            Ok(try_out(c.try_acquire(&name, &opts).await?, exec))
        })
    }

    fn acquire<'py>(
        &self,
        py: Python<'py>,
        name: String,
        options: &PyOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let (opts, wait, exec) = (options.options.clone(), options.wait, self.exec.clone());
        self.exec.spawn(py, acquire_op(options), |c| async move {
            Ok(PyLease::new(c.acquire(&name, &opts, wait).await?, exec))
        })
    }

    fn acquire_sync(&self, py: Python<'_>, name: String, options: &PyOptions) -> PyResult<PyLease> {
        runtime::check_pid(self.pid)?;
        let (opts, wait, exec) = (options.options.clone(), options.wait, self.exec.clone());
        self.exec.block(py, acquire_op(options), |c| async move {
            Ok(PyLease::new(c.acquire(&name, &opts, wait).await?, exec))
        })
    }

    fn inspect<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        self.exec.spawn(py, Op::Request, |c| async move {
            Ok(c.inspect(&name).await?.map(PyLeaseInfo::from))
        })
    }
    fn inspect_sync(&self, py: Python<'_>, name: String) -> PyResult<Option<PyLeaseInfo>> {
        runtime::check_pid(self.pid)?;
        self.exec.block(py, Op::Request, |c| async move {
            Ok(c.inspect(&name).await?.map(PyLeaseInfo::from))
        })
    }

    #[pyo3(signature = (prefix=String::new()))]
    fn list<'py>(&self, py: Python<'py>, prefix: String) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        self.exec.spawn(
            py,
            Op::Request,
            |c| async move { listed(&c, &prefix).await },
        )
    }
    #[pyo3(signature = (prefix=String::new()))]
    fn list_sync(&self, py: Python<'_>, prefix: String) -> PyResult<Vec<PyLeaseInfo>> {
        runtime::check_pid(self.pid)?;
        self.exec.block(
            py,
            Op::Request,
            |c| async move { listed(&c, &prefix).await },
        )
    }

    #[pyo3(signature = (name, *, lease_id=None))]
    fn force_release<'py>(
        &self,
        py: Python<'py>,
        name: String,
        lease_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        self.exec.spawn(py, Op::Request, |c| async move {
            forced(&c, &name, lease_id.as_deref()).await
        })
    }
    #[pyo3(signature = (name, *, lease_id=None))]
    fn force_release_sync(
        &self,
        py: Python<'_>,
        name: String,
        lease_id: Option<String>,
    ) -> PyResult<bool> {
        runtime::check_pid(self.pid)?;
        self.exec.block(py, Op::Request, |c| async move {
            forced(&c, &name, lease_id.as_deref()).await
        })
    }

    /// Stops renewing this client's leases and releases them (their handles end as lost,
    /// `client_closed`), then closes every connection the client opened; afterwards no lease
    /// can be taken through it.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        self.exec.close_own_connections();
        let client = self.client().clone();
        future_into_py(py, async move {
            client.close().await;
            Ok(())
        })
    }
    fn close_sync(&self, py: Python<'_>) -> PyResult<()> {
        runtime::check_pid(self.pid)?;
        self.exec.close_own_connections();
        let client = self.client().clone();
        block_on(py, async move {
            client.close().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("LeaseClient(store={:?})", self.client().store().kind())
    }
}

async fn listed(client: &LeaseClient, prefix: &str) -> crate::error::Result<Vec<PyLeaseInfo>> {
    Ok(client
        .list(prefix)
        .await?
        .into_iter()
        .map(PyLeaseInfo::from)
        .collect())
}

/// A forced release, answered for Python: whether a lease was deleted; a lease that changed
/// hands since its lease id was shown is `LeaseUnavailable` naming both holders (nothing
/// deleted).
async fn forced(
    client: &LeaseClient,
    name: &str,
    shown: Option<&str>,
) -> crate::error::Result<bool> {
    match client.force_release_if(name, shown).await? {
        ForceReleased::Released => Ok(true),
        ForceReleased::Absent => Ok(false),
        ForceReleased::HeldByOther(holder) => Err(crate::error::LeaseError::ChangedHands {
            name: name.to_owned(),
            shown: shown.unwrap_or("?").to_owned(),
            holder: Box::new(holder),
        }),
    }
}

/// Whether `dir` and the environment configure a store; raises `ConfigError` when a
/// configuration exists but is invalid.
#[pyfunction]
pub(crate) fn is_configured(py: Python<'_>, dir: std::path::PathBuf) -> PyResult<bool> {
    crate::config::load_from_process_env(&dir)
        .map(|s| s.is_configured())
        .map_err(|e| super::errors::to_py(py, e))
}
