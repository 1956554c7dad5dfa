//! The Python classes: `_Client` (wrapped by the public `LeaseClient`), `Lease`, `LeaseInfo`,
//! and a lease's events (`LeaseEvent`, and `LeaseEvents`, their async iterator).
//!
//! Each method that talks to the store exists twice: `name(...)` returns an awaitable,
//! `name_blocking(...)` blocks with the GIL released. Argument checks (durations, metadata
//! types, backoff) happen here, before anything is sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::exceptions::{PyOverflowError, PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::IntoPyObjectExt;

use crate::client::{ClientOptions, LeaseClient, LeaseOptions, TryAcquire};
use crate::info::LeaseInfo;
use crate::lease::{Lease, LeaseEnd, LeaseEvent, LeaseEvents};
use crate::store::ForceReleased;
use crate::wait::{Backoff, MIN_POLL};

use super::bridge::{
    abortable_future_into_py, abortable_future_into_py_with, block_on, call_soon_when,
    future_into_py,
};
use super::inline;
use super::runtime;
use super::thread_twin;
use super::twins::Twins;

/// A backoff from Python: `(min, max, max_attempts)` in seconds, as `distributed_leasing.Backoff`
/// passes it; `min == max` is a fixed delay.
pub(crate) type BackoffArg = (f64, f64, Option<u32>);

fn backoff_of(arg: Option<BackoffArg>) -> PyResult<Option<Backoff>> {
    let Some((min, max, attempts)) = arg else {
        return Ok(None);
    };
    let min_d = seconds("backoff min", min)?;
    let max_d = seconds("backoff max", max)?;
    if min_d < MIN_POLL {
        return Err(PyValueError::new_err(format!(
            "backoff delay {min}s is below {}s: a waiter never polls faster than every 0.1 s (it is woken by release notifications anyway)",
            MIN_POLL.as_secs_f64()
        )));
    }
    if max_d < min_d {
        return Err(PyValueError::new_err(format!(
            "backoff max {max}s is below its min {min}s: give max >= min"
        )));
    }
    if attempts == Some(0) {
        return Err(PyValueError::new_err(
            "backoff limit 0 would never try: give at least 1 attempt",
        ));
    }
    let b = if min_d == max_d {
        Backoff::fixed(min_d)
    } else {
        Backoff::exponential(min_d, max_d)
    };
    Ok(Some(match attempts {
        Some(n) => b.limit(n),
        None => b,
    }))
}

/// Converts seconds from Python, refusing NaN, infinities and negatives with the parameter's name.
pub(crate) fn seconds(param: &str, value: f64) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{param}={value} is not a valid number of seconds: give a finite number >= 0"
        )));
    }
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{param}={value} seconds is too large")))
}

fn opt_seconds(param: &str, value: Option<Secs>) -> PyResult<Option<Duration>> {
    value.map(|v| seconds(param, v.0)).transpose()
}

/// A number of seconds as Python passes it: any real number. An `int` too large for a float
/// (`10**400`) becomes an infinity of its sign, which [`seconds`] refuses with the parameter's
/// name, where a plain `f64` parameter would raise `OverflowError` (not a `ValueError`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Secs(f64);

impl<'py> FromPyObject<'_, 'py> for Secs {
    type Error = PyErr;

    fn extract(obj: Borrowed<'_, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<f64>() {
            Ok(v) => Ok(Self(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => {
                let negative = obj.lt(0).unwrap_or(false);
                Ok(Self(if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                }))
            }
            Err(e) => Err(e),
        }
    }
}

fn metadata_of(metadata: Option<&Bound<'_, PyDict>>) -> PyResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some(d) = metadata else { return Ok(out) };
    for (k, v) in d.iter() {
        let key = k.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "metadata keys must be str; got {} ({})",
                k.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                k.get_type()
                    .name()
                    .map_or_else(|_| "?".into(), |n| n.to_string())
            ))
        })?;
        let key = key.to_str()?.to_owned();
        let value =
            v.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                "metadata value for key {key:?} must be str; got {} (convert it with str() first)",
                v.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
            ))
            })?;
        out.insert(key, value.to_str()?.to_owned());
    }
    Ok(out)
}

/// What anyone may see of a lease's holder.
#[pyclass(name = "LeaseInfo", module = "distributed_leasing", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PyLeaseInfo {
    info: LeaseInfo,
}

impl From<LeaseInfo> for PyLeaseInfo {
    fn from(info: LeaseInfo) -> Self {
        Self { info }
    }
}

#[pymethods]
impl PyLeaseInfo {
    #[getter]
    fn name(&self) -> &str {
        &self.info.name
    }
    #[getter]
    fn lease_id(&self) -> &str {
        &self.info.lease_id
    }
    #[getter]
    fn acquired_at(&self) -> Option<DateTime<Utc>> {
        self.info.acquired_at
    }
    #[getter]
    fn fencing_token(&self) -> Option<u64> {
        self.info.fencing_token
    }
    #[getter]
    fn metadata(&self) -> BTreeMap<String, String> {
        self.info.metadata.clone()
    }
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.info.ttl.map(|t| t.as_secs_f64())
    }
    fn __repr__(&self) -> String {
        format!(
            "LeaseInfo(name={:?}, lease_id={:?}, fencing_token={}, metadata={:?}, ttl={})",
            self.info.name,
            self.info.lease_id,
            self.info
                .fencing_token
                .map_or_else(|| "None".into(), |t| t.to_string()),
            self.info.metadata,
            self.info
                .ttl
                .map_or_else(|| "None".into(), |t| format!("{:.3}", t.as_secs_f64())),
        )
    }
}

/// A held lease.
#[pyclass(name = "Lease", module = "distributed_leasing", frozen)]
pub(crate) struct PyLease {
    inner: Arc<Lease>,
    pid: u32,
    /// The client that took it and its twins, if that client can have twins (see `inline`
    /// and `thread_twin`).
    twin: Option<(Arc<Twins>, LeaseClient)>,
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
    #[getter]
    fn expires_in(&self) -> f64 {
        self.inner.expires_in().as_secs_f64()
    }
    #[getter]
    fn is_lost(&self) -> bool {
        self.inner.is_lost()
    }
    #[getter]
    fn lost_reason(&self) -> Option<&'static str> {
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
        future_into_py(py, async move { lease.renew().await })
    }
    fn renew_blocking(&self, py: Python<'_>) -> PyResult<()> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        block_on(py, async move { lease.renew().await })
    }
    fn release<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        if let Some((twins, client)) = &self.twin {
            if let Some(twin) = inline::ready(py, twins, client)? {
                let store = twin.store.clone();
                return twin.future_into_py(py, async move { lease.release_via(&*store).await });
            }
        }
        future_into_py(py, async move { lease.release().await })
    }
    fn release_blocking(&self, py: Python<'_>) -> PyResult<bool> {
        runtime::check_pid(self.pid)?;
        let lease = Arc::clone(&self.inner);
        if let Some((twins, client)) = &self.twin {
            if let Some(ready) = thread_twin::ready(py, twins, client) {
                let store = Arc::clone(&ready.store);
                return ready.block_on(py, async move { lease.release_via(&*store).await });
            }
        }
        block_on(py, async move { lease.release().await })
    }
    /// Resolves when the lease ends: to the loss reason, or None if it was released.
    fn wait_lost<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let ended = self.inner.ended();
        abortable_future_into_py(py, async move { Ok(end_name(ended.await)) })
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
        let ended = self.inner.ended();
        call_soon_when(event_loop.py(), event_loop, callback, async move {
            end_name(ended.await)
        })
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
    fn new(lease: Lease, twin: Option<(Arc<Twins>, LeaseClient)>) -> Self {
        Self {
            inner: Arc::new(lease),
            pid: runtime::pid(),
            twin,
        }
    }
}

/// The native client; `distributed_leasing.LeaseClient` wraps it.
#[pyclass(name = "_Client", module = "distributed_leasing._native", frozen)]
pub(crate) struct PyClient {
    inner: LeaseClient,
    pid: u32,
    /// Set when the store can have twins (see `inline` and `thread_twin`): closed with the
    /// client, and when it is dropped.
    twins: Option<Arc<Twins>>,
}

impl Drop for PyClient {
    fn drop(&mut self) {
        // A dropped client closes the connections its loops and threads drive for it (the
        // shared ones close when the last lease and clone of the client are gone). Never in a
        // forked child: those sockets are the parent's.
        if self.pid == runtime::pid() {
            if let Some(twins) = &self.twins {
                twins.close();
            }
        }
    }
}

impl PyClient {
    fn new(inner: LeaseClient) -> Self {
        let twins = inner
            .store()
            .as_redis()
            .is_some_and(|r| r.supports_inline())
            .then(Twins::new);
        Self {
            inner,
            pid: runtime::pid(),
            twins,
        }
    }

    /// This client's twin on the calling thread (see `thread_twin`).
    fn thread_twin(&self, py: Python<'_>) -> Option<thread_twin::Ready> {
        thread_twin::ready(py, self.twins.as_ref()?, &self.inner)
    }

    /// This client's twin on the running loop, if ready (see `inline`).
    fn ready_twin(&self, py: Python<'_>) -> PyResult<Option<inline::Ready>> {
        match &self.twins {
            Some(twins) => inline::ready(py, twins, &self.inner),
            None => Ok(None),
        }
    }

    /// What a lease of this client needs to release through a twin.
    fn twin(&self) -> Option<(Arc<Twins>, LeaseClient)> {
        self.twins
            .as_ref()
            .map(|t| (Arc::clone(t), self.inner.clone()))
    }

    /// Closes the connections of this client's twins (see `twins`), here and now.
    fn close_twins(&self) {
        if let Some(twins) = &self.twins {
            twins.close();
        }
    }
}

/// Per-call lease arguments, checked before anything is sent.
struct Args {
    name: String,
    options: LeaseOptions,
}

fn args(
    name: String,
    duration: Option<Secs>,
    renew_interval: Option<Secs>,
    auto_renew: Option<bool>,
    metadata: Option<&Bound<'_, PyDict>>,
    backoff: Option<BackoffArg>,
) -> PyResult<Args> {
    Ok(Args {
        name,
        options: LeaseOptions {
            duration: opt_seconds("duration", duration)?,
            renew_interval: opt_seconds("renew_interval", renew_interval)?,
            auto_renew,
            metadata: metadata_of(metadata)?,
            backoff: backoff_of(backoff)?,
        },
    })
}

type TryOut = (Option<PyLease>, Option<PyLeaseInfo>);

fn try_out(r: TryAcquire, twin: Option<(Arc<Twins>, LeaseClient)>) -> TryOut {
    match r {
        TryAcquire::Acquired(l) => (Some(PyLease::new(l, twin)), None),
        TryAcquire::Held(h) => (None, Some(h.into())),
    }
}

#[allow(clippy::too_many_arguments)]
fn client_options(
    duration: Option<Secs>,
    renew_interval: Option<Secs>,
    auto_renew: Option<bool>,
    key_prefix: Option<String>,
    connect_timeout: Option<Secs>,
    operation_timeout: Option<Secs>,
    ca_file: Option<std::path::PathBuf>,
    backoff: Option<BackoffArg>,
) -> PyResult<ClientOptions> {
    let d = ClientOptions::default();
    Ok(ClientOptions {
        default_duration: opt_seconds("duration", duration)?.unwrap_or(d.default_duration),
        renew_interval: opt_seconds("renew_interval", renew_interval)?,
        auto_renew: auto_renew.unwrap_or(d.auto_renew),
        key_prefix: key_prefix.unwrap_or(d.key_prefix),
        connect_timeout: opt_seconds("connect_timeout", connect_timeout)?
            .unwrap_or(d.connect_timeout),
        operation_timeout: opt_seconds("operation_timeout", operation_timeout)?
            .unwrap_or(d.operation_timeout),
        ca_file,
        backoff: backoff_of(backoff)?.unwrap_or(d.backoff),
    })
}

#[pymethods]
impl PyClient {
    #[staticmethod]
    #[pyo3(signature = (url, *, duration=None, renew_interval=None, auto_renew=None, key_prefix=None, connect_timeout=None, operation_timeout=None, ca_file=None, backoff=None))]
    #[allow(clippy::too_many_arguments)]
    fn connect<'py>(
        py: Python<'py>,
        url: String,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        key_prefix: Option<String>,
        connect_timeout: Option<Secs>,
        operation_timeout: Option<Secs>,
        ca_file: Option<std::path::PathBuf>,
        backoff: Option<BackoffArg>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = client_options(
            duration,
            renew_interval,
            auto_renew,
            key_prefix,
            connect_timeout,
            operation_timeout,
            ca_file,
            backoff,
        )?;
        future_into_py(py, async move {
            let inner = LeaseClient::connect(&url, opts).await?;
            Ok(PyClient::new(inner))
        })
    }

    #[staticmethod]
    #[pyo3(signature = (url, *, duration=None, renew_interval=None, auto_renew=None, key_prefix=None, connect_timeout=None, operation_timeout=None, ca_file=None, backoff=None))]
    #[allow(clippy::too_many_arguments)]
    fn connect_blocking(
        py: Python<'_>,
        url: String,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        key_prefix: Option<String>,
        connect_timeout: Option<Secs>,
        operation_timeout: Option<Secs>,
        ca_file: Option<std::path::PathBuf>,
        backoff: Option<BackoffArg>,
    ) -> PyResult<PyClient> {
        let opts = client_options(
            duration,
            renew_interval,
            auto_renew,
            key_prefix,
            connect_timeout,
            operation_timeout,
            ca_file,
            backoff,
        )?;
        block_on(py, async move {
            let inner = LeaseClient::connect(&url, opts).await?;
            Ok(PyClient::new(inner))
        })
    }

    /// Loads the configuration of `dir` and the environment, and connects; returns the client
    /// and the configuration's warnings.
    #[staticmethod]
    fn from_config_blocking(
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
        self.inner.store().kind()
    }

    #[getter]
    fn key_prefix(&self) -> &str {
        &self.inner.options().key_prefix
    }

    #[pyo3(signature = (name, *, duration=None, renew_interval=None, auto_renew=None, metadata=None))]
    fn try_acquire<'py>(
        &self,
        py: Python<'py>,
        name: String,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        metadata: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let a = args(name, duration, renew_interval, auto_renew, metadata, None)?;
        let twin = self.twin();
        let ready = self.ready_twin(py)?;
        let client = ready
            .as_ref()
            .map_or_else(|| self.inner.clone(), |r| r.client.clone());
        let fut = async move {
            let r = client.try_acquire(&a.name, &a.options).await?;
            Ok(try_out(r, twin))
        };
        match ready {
            Some(ready) => ready.future_into_py(py, fut),
            None => future_into_py(py, fut),
        }
    }

    #[pyo3(signature = (name, *, duration=None, renew_interval=None, auto_renew=None, metadata=None))]
    fn try_acquire_blocking(
        &self,
        py: Python<'_>,
        name: String,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TryOut> {
        runtime::check_pid(self.pid)?;
        let a = args(name, duration, renew_interval, auto_renew, metadata, None)?;
        let twin = self.twin();
        // On this thread's own connection when it can have one (see `thread_twin`).
        let ready = self.thread_twin(py);
        let client = ready
            .as_ref()
            .map_or_else(|| self.inner.clone(), |r| r.client.clone());
        let fut = async move {
            let r = client.try_acquire(&a.name, &a.options).await?;
            Ok(try_out(r, twin))
        };
        match ready {
            Some(ready) => ready.block_on(py, fut),
            None => block_on(py, fut),
        }
    }

    #[pyo3(signature = (name, *, wait=Some(Secs(0.0)), duration=None, renew_interval=None, auto_renew=None, metadata=None, backoff=None))]
    #[allow(clippy::too_many_arguments)]
    fn acquire<'py>(
        &self,
        py: Python<'py>,
        name: String,
        wait: Option<Secs>,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        metadata: Option<&Bound<'py, PyDict>>,
        backoff: Option<BackoffArg>,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let wait = opt_seconds("wait", wait)?;
        let a = args(
            name,
            duration,
            renew_interval,
            auto_renew,
            metadata,
            backoff,
        )?;
        let twin = self.twin();
        // One attempt goes over the loop's own connection when it has one (see `inline`).
        let one_attempt = wait == Some(Duration::ZERO);
        let ready = if one_attempt {
            self.ready_twin(py)?
        } else {
            None
        };
        let client = ready
            .as_ref()
            .map_or_else(|| self.inner.clone(), |r| r.client.clone());
        let fut = async move {
            let lease = client.acquire(&a.name, &a.options, wait).await?;
            Ok(PyLease::new(lease, twin))
        };
        match ready {
            Some(ready) => ready.future_into_py(py, fut),
            None if one_attempt => future_into_py(py, fut),
            None => abortable_future_into_py(py, fut),
        }
    }

    #[pyo3(signature = (name, *, wait=Some(Secs(0.0)), duration=None, renew_interval=None, auto_renew=None, metadata=None, backoff=None))]
    #[allow(clippy::too_many_arguments)]
    fn acquire_blocking(
        &self,
        py: Python<'_>,
        name: String,
        wait: Option<Secs>,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        metadata: Option<&Bound<'_, PyDict>>,
        backoff: Option<BackoffArg>,
    ) -> PyResult<PyLease> {
        runtime::check_pid(self.pid)?;
        let wait = opt_seconds("wait", wait)?;
        let a = args(
            name,
            duration,
            renew_interval,
            auto_renew,
            metadata,
            backoff,
        )?;
        let twin = self.twin();
        // One attempt goes over this thread's own connection when it can have one.
        let ready = if wait == Some(Duration::ZERO) {
            self.thread_twin(py)
        } else {
            None
        };
        let client = ready
            .as_ref()
            .map_or_else(|| self.inner.clone(), |r| r.client.clone());
        let fut = async move {
            let lease = client.acquire(&a.name, &a.options, wait).await?;
            Ok(PyLease::new(lease, twin))
        };
        match ready {
            Some(ready) => ready.block_on(py, fut),
            None => block_on(py, fut),
        }
    }

    fn inspect<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        future_into_py(py, async move {
            Ok(client.inspect(&name).await?.map(PyLeaseInfo::from))
        })
    }
    fn inspect_blocking(&self, py: Python<'_>, name: String) -> PyResult<Option<PyLeaseInfo>> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        block_on(py, async move {
            Ok(client.inspect(&name).await?.map(PyLeaseInfo::from))
        })
    }

    #[pyo3(signature = (prefix=String::new()))]
    fn list<'py>(&self, py: Python<'py>, prefix: String) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        future_into_py(py, async move {
            Ok(client
                .list(&prefix)
                .await?
                .into_iter()
                .map(PyLeaseInfo::from)
                .collect::<Vec<_>>())
        })
    }
    #[pyo3(signature = (prefix=String::new()))]
    fn list_blocking(&self, py: Python<'_>, prefix: String) -> PyResult<Vec<PyLeaseInfo>> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        block_on(py, async move {
            Ok(client
                .list(&prefix)
                .await?
                .into_iter()
                .map(PyLeaseInfo::from)
                .collect::<Vec<_>>())
        })
    }

    #[pyo3(signature = (name, *, lease_id=None))]
    fn force_release<'py>(
        &self,
        py: Python<'py>,
        name: String,
        lease_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        future_into_py(py, async move {
            let outcome = client.force_release_if(&name, lease_id.as_deref()).await?;
            forced(&name, lease_id.as_deref(), outcome)
        })
    }
    #[pyo3(signature = (name, *, lease_id=None))]
    fn force_release_blocking(
        &self,
        py: Python<'_>,
        name: String,
        lease_id: Option<String>,
    ) -> PyResult<bool> {
        runtime::check_pid(self.pid)?;
        let client = self.inner.clone();
        block_on(py, async move {
            let outcome = client.force_release_if(&name, lease_id.as_deref()).await?;
            forced(&name, lease_id.as_deref(), outcome)
        })
    }

    /// Stops renewing this client's leases and releases them (their handles end as lost,
    /// `client_closed`), then closes every connection the client opened; afterwards no lease
    /// can be taken through it.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        runtime::check_pid(self.pid)?;
        self.close_twins();
        let client = self.inner.clone();
        future_into_py(py, async move {
            client.close().await;
            Ok(())
        })
    }
    fn close_blocking(&self, py: Python<'_>) -> PyResult<()> {
        runtime::check_pid(self.pid)?;
        self.close_twins();
        let client = self.inner.clone();
        block_on(py, async move {
            client.close().await;
            Ok(())
        })
    }

    fn __repr__(&self) -> String {
        format!("LeaseClient(store={:?})", self.inner.store().kind())
    }
}

/// A forced release's answer for Python: whether a lease was deleted; a lease that changed hands
/// since its lease id was shown is `LeaseUnavailable` naming both holders (nothing deleted).
fn forced(name: &str, shown: Option<&str>, outcome: ForceReleased) -> crate::error::Result<bool> {
    match outcome {
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
