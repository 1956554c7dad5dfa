//! Leader election's native side (the public `Election` of
//! `python/distributed_leasing/_election.py` is built on it): `_LeaderInfo` (a leader as anyone
//! sees it, which the package turns into its `LeaderInfo` dataclass), `_Observer` (the core's
//! [`Observer`], its `next` declared once for its awaitable and blocking forms), and the module
//! functions `default_identity` and `_check_identity`. A campaign is an acquire of the lease of
//! the election's name (`_Client.acquire`, with the identity in its metadata), so it has no
//! native class of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;

use crate::election::{LeaderInfo, Observer};

use super::executor::{Executor, Op};
use super::pairs::{on, pymethods_with_pairs};
use super::runtime;

/// The leader of an election as anyone may see it.
#[pyclass(name = "_LeaderInfo", module = "distributed_leasing._native", frozen)]
#[derive(Debug, Clone)]
pub(crate) struct PyLeaderInfo {
    info: LeaderInfo,
}

impl From<LeaderInfo> for PyLeaderInfo {
    fn from(info: LeaderInfo) -> Self {
        Self { info }
    }
}

#[pymethods]
impl PyLeaderInfo {
    #[getter]
    fn identity(&self) -> Option<&str> {
        self.info.identity.as_deref()
    }
    #[getter]
    fn term(&self) -> Option<u64> {
        self.info.term
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
    fn expires_in(&self) -> Option<f64> {
        self.info.expires_in.map(|t| t.as_secs_f64())
    }
    #[getter]
    fn metadata(&self) -> BTreeMap<String, String> {
        self.info.metadata.clone()
    }
}

/// The leader of one election as it changes (`_Client.observe`).
#[pyclass(name = "_Observer", module = "distributed_leasing._native", frozen)]
pub(crate) struct PyObserver {
    inner: Arc<tokio::sync::Mutex<Observer>>,
    exec: Executor,
    pid: u32,
}

impl PyObserver {
    pub(crate) fn new(observer: Observer, exec: Executor) -> Self {
        Self {
            inner: Arc::new(tokio::sync::Mutex::new(observer)),
            exec,
            pid: runtime::pid(),
        }
    }
}

/// What `_Observer.next` answers: `(True, leader or None)`, or `(False, None)` once the client
/// was closed (the iteration ends).
type Next = (bool, Option<PyLeaderInfo>);

pymethods_with_pairs! {
    impl PyObserver {}
    pairs {
        /// The current leader (or None) at the first call, then the next change.
        fn next / next_sync(&self) -> Next {
            runtime::check_pid(self.pid)?;
            let inner = Arc::clone(&self.inner);
            on(&self.exec, Op::Wait, move |c| async move {
                match inner.lock().await.next().await {
                    Ok(leader) => Ok((true, leader.map(PyLeaderInfo::from))),
                    Err(_) if c.is_closed() => Ok((false, None)),
                    Err(e) => Err(e),
                }
            })
        }
    }
}

/// The default identity of a candidate: `host:pid` (the core's `default_identity`).
#[pyfunction]
pub(crate) fn default_identity() -> String {
    crate::election::default_identity()
}

/// Raises `ValueError` when the core refuses `identity` (empty, or a control character in it).
#[pyfunction]
pub(crate) fn _check_identity(py: Python<'_>, identity: &str) -> PyResult<()> {
    crate::election::check_identity(identity).map_err(|e| super::errors::to_py(py, e))
}
