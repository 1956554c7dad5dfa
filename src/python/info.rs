//! `LeaseInfo`, what anyone may see of a lease's holder (or of a semaphore's permit, with its
//! slot), as a Python class. A leaf of the
//! bindings: the exceptions (`errors`, for `LeaseUnavailable.holder`) and the classes both use
//! it, and it uses neither.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;

use crate::info::LeaseInfo;
use crate::store::SemaphoreHolder;

/// What anyone may see of a lease's holder.
#[pyclass(name = "LeaseInfo", module = "distributed_leasing", frozen, eq)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PyLeaseInfo {
    info: LeaseInfo,
    /// A semaphore's permit: its slot.
    slot: Option<u32>,
}

impl From<LeaseInfo> for PyLeaseInfo {
    fn from(info: LeaseInfo) -> Self {
        Self { info, slot: None }
    }
}

impl From<SemaphoreHolder> for PyLeaseInfo {
    fn from(h: SemaphoreHolder) -> Self {
        Self {
            info: h.info,
            slot: Some(h.slot),
        }
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
    #[getter]
    fn orphan(&self) -> bool {
        self.info.orphan
    }
    /// The slot of a semaphore's permit (`name` is the semaphore's); None for a lease.
    #[getter]
    fn slot(&self) -> Option<u32> {
        self.slot
    }
    /// The holder for people (`us-east-1 (us-east)`), each part through `escape` when given;
    /// None without an instanceId. See `LeaseInfo::holder_label` in the core.
    #[pyo3(signature = (escape=None))]
    fn holder_label(&self, escape: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
        self.info.holder_label(|part| match escape {
            Some(f) => f.call1((part,))?.extract::<String>(),
            None => Ok(part.to_owned()),
        })
    }
    fn __repr__(&self) -> String {
        format!(
            "LeaseInfo(name={:?}{}, lease_id={:?}, fencing_token={}, metadata={:?}, ttl={}{})",
            self.info.name,
            self.slot
                .map_or_else(String::new, |s| format!(", slot={s}")),
            self.info.lease_id,
            self.info
                .fencing_token
                .map_or_else(|| "None".into(), |t| t.to_string()),
            self.info.metadata,
            self.info
                .ttl
                .map_or_else(|| "None".into(), |t| format!("{:.3}", t.as_secs_f64())),
            if self.info.orphan {
                ", orphan=True"
            } else {
                ""
            },
        )
    }
}
