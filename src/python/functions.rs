//! Module functions that are one call into the core: checks Python code asks Rust for instead of
//! restating them (the `Backoff` dataclass of `python/distributed_leasing/_backoff.py`), whether
//! a configuration exists (`is_configured`), and the `os.register_at_fork` hooks of the SQLite
//! store (registered by the module's init).

use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::backoff::Backoff;

use super::errors::to_py;

/// Refuses a backoff (`min`, `max` in seconds, `max_attempts`) that [`Backoff::new`] refuses,
/// with its message, as `ValueError`.
#[pyfunction]
#[pyo3(signature = (min, max, max_attempts))]
pub(crate) fn _check_backoff(
    py: Python<'_>,
    min: f64,
    max: f64,
    max_attempts: Option<i64>,
) -> PyResult<()> {
    let attempts = match max_attempts {
        None => None,
        Some(n) if n < 0 => {
            return Err(PyValueError::new_err(format!(
                "backoff limit {n} is not valid: give at least 1 attempt"
            )))
        }
        // Beyond u32::MAX attempts is no limit in practice.
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let min = Duration::try_from_secs_f64(min).map_err(|_| not_seconds("min", min))?;
    let max = Duration::try_from_secs_f64(max).map_err(|_| not_seconds("max", max))?;
    Backoff::new(min, max, attempts)
        .map(drop)
        .map_err(|e| to_py(py, e))
}

fn not_seconds(param: &str, value: f64) -> PyErr {
    PyValueError::new_err(format!(
        "backoff {param}={value} is not a valid number of seconds: give a finite number >= 0"
    ))
}

/// `os.register_at_fork(before=...)`: waits, with the GIL released (a call in progress may
/// need it) and at most [`crate::store::sqlite::FORK_WAIT_LIMIT`], until no SQLite call of this
/// process is in progress, and holds new ones back until the fork is over. (These three do
/// nothing in a build without the `sqlite` feature.)
#[pyfunction]
pub(crate) fn _before_fork(py: Python<'_>) {
    #[cfg(feature = "sqlite")]
    py.detach(crate::store::sqlite::before_fork);
    #[cfg(not(feature = "sqlite"))]
    let _ = py;
}

/// `os.register_at_fork(after_in_parent=...)`: SQLite calls go on.
#[pyfunction]
pub(crate) fn _after_fork_in_parent() {
    #[cfg(feature = "sqlite")]
    crate::store::sqlite::after_fork_in_parent();
}

/// `os.register_at_fork(after_in_child=...)`: closes the SQLite connections inherited from the
/// parent (the child's copies only), then SQLite calls go on.
#[pyfunction]
pub(crate) fn _after_fork_in_child() {
    #[cfg(feature = "sqlite")]
    crate::store::sqlite::after_fork_in_child();
}

/// Whether `dir` and the environment configure a store; raises `ConfigError` when a
/// configuration exists but is invalid.
#[pyfunction]
pub(crate) fn is_configured(py: Python<'_>, dir: std::path::PathBuf) -> PyResult<bool> {
    crate::config::load_from_process_env(&dir)
        .map(|s| s.is_configured())
        .map_err(|e| to_py(py, e))
}
