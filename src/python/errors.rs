//! The Python exception hierarchy and the one place a core `LeaseError` becomes a Python exception.
//!
//! `LeaseError` > `LeaseUnavailable` (`.holder`, `.holders`), `LeaseLost` (`.name`, `.reason`),
//! `LimitMismatch` (`.name`, `.stored`, `.asked`), `ConfigError`, `BackendError` (`.kind`).
//! Invalid arguments become `ValueError`. Messages come from the core, which never puts a
//! secret in one.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

use crate::error::{BackendErrorKind, LeaseError as CoreError};

use super::info::PyLeaseInfo;

create_exception!(
    distributed_leasing,
    LeaseError,
    PyException,
    "Base class of every error of distributed_leasing."
);
create_exception!(
    distributed_leasing,
    LeaseUnavailable,
    LeaseError,
    "The lease (or every permit of the semaphore) is held by someone else; `.holder` is a LeaseInfo or None, `.holders` a list of LeaseInfo."
);
create_exception!(
    distributed_leasing,
    LeaseLost,
    LeaseError,
    "The lease was lost while held; `.reason` says why."
);
create_exception!(
    distributed_leasing,
    LimitMismatch,
    LeaseError,
    "A semaphore was asked for with a limit other than its stored one; `.name`, `.stored`, `.asked`."
);
create_exception!(
    distributed_leasing,
    ConfigError,
    LeaseError,
    "Configuration is missing or invalid."
);
create_exception!(
    distributed_leasing,
    BackendError,
    LeaseError,
    "The store failed: unreachable, authentication, permission (ACL), timeout, WRONGTYPE..."
);

fn kind_name(kind: BackendErrorKind) -> &'static str {
    match kind {
        BackendErrorKind::Unreachable => "unreachable",
        BackendErrorKind::Auth => "auth",
        BackendErrorKind::Permission => "permission",
        BackendErrorKind::Timeout => "timeout",
        BackendErrorKind::WrongType => "wrong_type",
        BackendErrorKind::Other => "other",
    }
}

/// Converts a core error, with its structured fields as attributes.
pub(crate) fn to_py(py: Python<'_>, e: CoreError) -> PyErr {
    let message = e.to_string();
    match e {
        CoreError::Unavailable {
            name,
            holder,
            holders,
            ..
        } => {
            // A lease's one holder; of a semaphore, every permit's, and the holder with its slot.
            let shown = holder.map(|h| {
                holders
                    .iter()
                    .find(|s| s.info == *h)
                    .map_or_else(|| PyLeaseInfo::from(*h), |s| PyLeaseInfo::from(s.clone()))
            });
            let holders: Vec<PyLeaseInfo> = if holders.is_empty() {
                shown.iter().cloned().collect()
            } else {
                holders.into_iter().map(PyLeaseInfo::from).collect()
            };
            unavailable(py, message, name, shown, holders)
        }
        CoreError::ChangedHands { name, holder, .. } => {
            let holder = PyLeaseInfo::from(*holder);
            unavailable(py, message, name, Some(holder.clone()), vec![holder])
        }
        CoreError::Lost { name, reason } => {
            let err = LeaseLost::new_err(message);
            let _ = err.value(py).setattr("name", name);
            let _ = err.value(py).setattr("reason", reason.as_str());
            err
        }
        CoreError::LimitMismatch {
            name,
            stored,
            asked,
        } => {
            let err = LimitMismatch::new_err(message);
            let value = err.value(py);
            let _ = value.setattr("name", name);
            let _ = value.setattr("stored", stored);
            let _ = value.setattr("asked", asked);
            err
        }
        CoreError::Config(_) => ConfigError::new_err(message),
        CoreError::InvalidArgument(_) => PyValueError::new_err(message),
        CoreError::Backend { kind, .. } => {
            let err = BackendError::new_err(message);
            let _ = err.value(py).setattr("kind", kind_name(kind));
            err
        }
    }
}

/// `LeaseUnavailable` with its `.name`, `.holder` and `.holders`.
fn unavailable(
    py: Python<'_>,
    message: String,
    name: String,
    holder: Option<PyLeaseInfo>,
    holders: Vec<PyLeaseInfo>,
) -> PyErr {
    let err = LeaseUnavailable::new_err(message);
    let value = err.value(py);
    let holder = holder.and_then(|h| Py::new(py, h).ok());
    let _ = value.setattr("holder", holder);
    let _ = value.setattr("holders", holders);
    let _ = value.setattr("name", name);
    err
}
