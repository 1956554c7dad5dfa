//! A semaphore's classes: `Permit`, a held permit, which is a `Lease` (a subclass: the lease of
//! its slot's record, so its getters, events, loss hooks and `release` are the lease's) that
//! tells its semaphore's name and its slot; and `SemaphoreInfo`, what `semaphore_info` answers
//! (and `list_semaphores`, one per semaphore).
//! The client's semaphore operations are in `client` (one `#[pymethods]` block per class); the
//! answers they give Python are made here.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::error::Result;
use crate::lease::Lease;
use crate::semaphore::{limit_of, permit_error, Permit, TryPermit};
use crate::store::SemaphoreInfo;

use super::executor::{Executor, Op};
use super::info::PyLeaseInfo;
use super::lease::PyLease;
use super::pairs::{on, pymethods_with_pairs};
use super::runtime;

/// A held permit of a semaphore: a lease of its own over its slot.
#[pyclass(name = "Permit", module = "distributed_leasing", frozen, extends = PyLease)]
pub(crate) struct PyPermit {
    semaphore: String,
    slot: u32,
    /// The lease its base class holds, for the operations that name the semaphore in errors.
    lease: Arc<Lease>,
    pid: u32,
    exec: Executor,
}

/// A permit on its way to Python: the `Lease` base and the `Permit` over it.
pub(crate) struct NewPermit {
    base: PyLease,
    permit: PyPermit,
}

impl NewPermit {
    pub(crate) fn new(permit: Permit, exec: Executor) -> Self {
        let (semaphore, slot, lease) = permit.into_parts();
        let lease = Arc::new(lease);
        Self {
            base: PyLease::shared(Arc::clone(&lease), exec.clone()),
            permit: PyPermit {
                semaphore,
                slot,
                lease,
                pid: runtime::pid(),
                exec,
            },
        }
    }
}

impl<'py> IntoPyObject<'py> for NewPermit {
    type Target = PyPermit;
    type Output = Bound<'py, PyPermit>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyPermit>> {
        Bound::new(
            py,
            PyClassInitializer::from(self.base).add_subclass(self.permit),
        )
    }
}

/// A permit acquire's answer: the permit, or None when the semaphore is full.
pub(crate) fn permit_out(r: TryPermit, exec: Executor) -> Option<NewPermit> {
    match r {
        TryPermit::Acquired(p) => Some(NewPermit::new(p, exec)),
        TryPermit::Full { .. } => None,
    }
}

/// A limit from Python: None (the stored one) or an integer checked by the core.
pub(crate) fn limit_arg(limit: Option<i128>) -> Result<Option<u32>> {
    limit.map(limit_of).transpose()
}

pymethods_with_pairs! {
    impl PyPermit {
        /// The semaphore's name.
        #[getter]
        fn name(&self) -> &str {
            &self.semaphore
        }
        /// The slot this permit occupies (`0..limit`).
        #[getter]
        fn slot(&self) -> u32 {
            self.slot
        }
        fn __repr__(&self) -> String {
            format!(
                "Permit(name={:?}, slot={}, lease_id={:?}, fencing_token={}, renewals={}, expires_in={:.3}, is_lost={})",
                self.semaphore,
                self.slot,
                self.lease.lease_id(),
                self.lease.fencing_token(),
                self.lease.renewals(),
                self.lease.expires_in().as_secs_f64(),
                if self.lease.is_lost() { "True" } else { "False" },
            )
        }
    }
    pairs {
        /// Renews now (`LeaseLost` naming the semaphore and the slot if it is no longer held).
        fn renew / renew_sync(&self) -> () {
            runtime::check_pid(self.pid)?;
            let (lease, semaphore, slot) = (Arc::clone(&self.lease), self.semaphore.clone(), self.slot);
            on(&self.exec, Op::Request, move |c| async move {
                lease
                    .renew_via(&**c.requests())
                    .await
                    .map_err(|e| permit_error(&semaphore, slot, e))
            })
        }
    }
}

/// A semaphore as anyone may see it: its stored limit and its holders.
#[pyclass(name = "SemaphoreInfo", module = "distributed_leasing", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PySemaphoreInfo {
    name: String,
    limit: u32,
    holders: Vec<PyLeaseInfo>,
}

impl From<SemaphoreInfo> for PySemaphoreInfo {
    fn from(info: SemaphoreInfo) -> Self {
        Self {
            name: info.name,
            limit: info.limit,
            holders: info.holders.into_iter().map(PyLeaseInfo::from).collect(),
        }
    }
}

#[pymethods]
impl PySemaphoreInfo {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }
    /// The stored limit.
    #[getter]
    fn limit(&self) -> u32 {
        self.limit
    }
    /// The live permits by slot, each a `LeaseInfo` with its `slot`.
    #[getter]
    fn holders(&self) -> Vec<PyLeaseInfo> {
        self.holders.clone()
    }
    fn __repr__(&self) -> String {
        format!(
            "SemaphoreInfo(name={:?}, limit={}, held={})",
            self.name,
            self.limit,
            self.holders.len()
        )
    }
}
