//! The Python exception hierarchy and the one place a core `LeaseError` becomes a Python exception.
//!
//! `LeaseError` > `LeaseUnavailable` (`.holder`), `LeaseLost` (`.name`, `.reason`),
//! `ConfigError`, `BackendError` (`.kind`). Invalid arguments become `ValueError`. Messages come
//! from the core, which never puts a secret in one.

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
    "The lease is held by someone else; `.holder` is a LeaseInfo or None."
);
create_exception!(
    distributed_leasing,
    LeaseLost,
    LeaseError,
    "The lease was lost while held; `.reason` says why."
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
        CoreError::Unavailable { name, holder, .. } => {
            let err = LeaseUnavailable::new_err(message);
            let value = err.value(py);
            let holder = holder.and_then(|h| Py::new(py, PyLeaseInfo::from(*h)).ok());
            let _ = value.setattr("holder", holder);
            let _ = value.setattr("name", name);
            err
        }
        CoreError::ChangedHands { name, holder, .. } => {
            let err = LeaseUnavailable::new_err(message);
            let value = err.value(py);
            let holder = Py::new(py, PyLeaseInfo::from(*holder)).ok();
            let _ = value.setattr("holder", holder);
            let _ = value.setattr("name", name);
            err
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
            let err = LeaseError::new_err(message);
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
