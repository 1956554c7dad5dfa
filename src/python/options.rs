//! The options of every entry point, declared once: `_Options` (a lease's: those of `lease()`,
//! `acquire`, `try_acquire`, and of a `LeaseContext`) and `_ClientOptions` (a client's, given to
//! `connect`). `distributed_leasing` builds one from its keyword arguments, and every native
//! method takes it; the conversions and range checks (seconds, metadata, backoff) happen once,
//! here, before anything is sent. The Python side's `TypedDict`s (`_options.py`) mirror these
//! signatures for type checkers; a test holds them equal.

use std::collections::BTreeMap;
use std::time::Duration;

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::backoff::Backoff;
use crate::client::{ClientOptions, LeaseOptions};

/// A backoff from Python: `(min, max, max_attempts)` in seconds, as `distributed_leasing.Backoff`
/// passes it; `min == max` is a fixed delay.
pub(crate) type BackoffArg = (f64, f64, Option<u32>);

fn backoff_of(arg: Option<BackoffArg>) -> PyResult<Option<Backoff>> {
    let Some((min, max, attempts)) = arg else {
        return Ok(None);
    };
    let (min, max) = (seconds("backoff min", min)?, seconds("backoff max", max)?);
    // The core's checks and messages (`Backoff::new`), as `_native._check_backoff` gives them.
    Backoff::new(min, max, attempts)
        .map(Some)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Converts seconds from Python, refusing NaN, infinities and negatives with the parameter's name.
fn seconds(param: &str, value: f64) -> PyResult<Duration> {
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
pub(crate) struct Secs(pub(crate) f64);

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

pub(crate) fn metadata_of(
    metadata: Option<&Bound<'_, PyDict>>,
) -> PyResult<BTreeMap<String, String>> {
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

/// A lease's options, checked: built by `distributed_leasing` from the keywords of `lease()`,
/// `acquire`, `try_acquire` (which ignores `wait`) and their `_sync` variants.
#[pyclass(name = "_Options", module = "distributed_leasing._native", frozen)]
pub(crate) struct PyOptions {
    /// `None`: wait forever; zero: one attempt.
    pub(crate) wait: Option<Duration>,
    pub(crate) options: LeaseOptions,
}

#[pymethods]
impl PyOptions {
    #[new]
    #[pyo3(signature = (*, wait=Some(Secs(0.0)), duration=None, renew_interval=None, auto_renew=None, metadata=None, backoff=None, announce=false))]
    fn new(
        wait: Option<Secs>,
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        metadata: Option<&Bound<'_, PyDict>>,
        backoff: Option<BackoffArg>,
        announce: bool,
    ) -> PyResult<Self> {
        Ok(Self {
            wait: opt_seconds("wait", wait)?,
            options: LeaseOptions {
                duration: opt_seconds("duration", duration)?,
                renew_interval: opt_seconds("renew_interval", renew_interval)?,
                auto_renew,
                metadata: metadata_of(metadata)?,
                backoff: backoff_of(backoff)?,
                announce,
            },
        })
    }
}

impl PyOptions {
    /// Whether an acquire with these options makes one attempt (`wait=0`).
    pub(crate) fn one_attempt(&self) -> bool {
        self.wait == Some(Duration::ZERO)
    }
}

/// A client's options, checked: built by `distributed_leasing` from the keywords of `connect`
/// and `connect_sync`.
#[pyclass(
    name = "_ClientOptions",
    module = "distributed_leasing._native",
    frozen
)]
pub(crate) struct PyClientOptions {
    pub(crate) options: ClientOptions,
}

#[pymethods]
impl PyClientOptions {
    #[new]
    #[pyo3(signature = (*, duration=None, renew_interval=None, auto_renew=None, key_prefix=None, connect_timeout=None, operation_timeout=None, ca_file=None, backoff=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        duration: Option<Secs>,
        renew_interval: Option<Secs>,
        auto_renew: Option<bool>,
        key_prefix: Option<String>,
        connect_timeout: Option<Secs>,
        operation_timeout: Option<Secs>,
        ca_file: Option<std::path::PathBuf>,
        backoff: Option<BackoffArg>,
    ) -> PyResult<Self> {
        let d = ClientOptions::default();
        Ok(Self {
            options: ClientOptions {
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
            },
        })
    }
}
