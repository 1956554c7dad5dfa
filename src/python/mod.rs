//! The Python module `distributed_leasing._native`: the only place that uses PyO3.
//!
//! `runtime` owns the tokio runtime and the shutdown/fork rules, `bridge` turns Rust futures
//! into asyncio futures or blocking calls, `executor` decides where each operation runs,
//! `inline` and `thread_twin` a client's connections driven by an event loop or a thread,
//! `twins` the record of them that closes them with the client. The Python classes are one
//! module each: `client` (`_Client`), `lease` (`Lease`), `events` (`LeaseEvent`, `LeaseEvents`),
//! `info` (`LeaseInfo`), `election` (`_LeaderInfo`, `_Observer`, the identity functions) and
//! `semaphore` (`Permit`, `SemaphoreInfo`); `pairs` declares each of their operations once, for its awaitable
//! and its blocking form. `options` holds the checked options every entry point takes,
//! `functions` the module functions that are one call into the core (checks, configuration,
//! fork hooks), `errors` the exception hierarchy, and `logging` forwards the core's `tracing`
//! events to Python's `logging`. The public API is `python/distributed_leasing`.

mod bridge;
mod client;
mod election;
mod errors;
mod events;
mod executor;
mod functions;
mod info;
mod inline;
mod lease;
mod logging;
mod options;
mod pairs;
mod runtime;
mod semaphore;
mod thread_twin;
mod twins;

use pyo3::prelude::*;

/// The process-wide counters (`leasing.*`), by name.
#[pyfunction]
fn metrics() -> std::collections::BTreeMap<&'static str, i64> {
    crate::metrics::snapshot().into_iter().collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<client::PyClient>()?;
    m.add_class::<lease::PyLease>()?;
    m.add_class::<info::PyLeaseInfo>()?;
    m.add_class::<events::PyLeaseEvent>()?;
    m.add_class::<events::PyLeaseEvents>()?;
    m.add_class::<election::PyLeaderInfo>()?;
    m.add_class::<election::PyObserver>()?;
    m.add_class::<semaphore::PyPermit>()?;
    m.add_class::<semaphore::PySemaphoreInfo>()?;
    m.add_class::<options::PyOptions>()?;
    m.add_class::<options::PyClientOptions>()?;
    m.add("LeaseError", py.get_type::<errors::LeaseError>())?;
    m.add(
        "LeaseUnavailable",
        py.get_type::<errors::LeaseUnavailable>(),
    )?;
    m.add("LeaseLost", py.get_type::<errors::LeaseLost>())?;
    m.add("LimitMismatch", py.get_type::<errors::LimitMismatch>())?;
    m.add("ConfigError", py.get_type::<errors::ConfigError>())?;
    m.add("BackendError", py.get_type::<errors::BackendError>())?;
    m.add_function(wrap_pyfunction!(runtime::_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(functions::is_configured, m)?)?;
    m.add_function(wrap_pyfunction!(logging::_refresh_logging, m)?)?;
    m.add_function(wrap_pyfunction!(metrics, m)?)?;
    m.add_function(wrap_pyfunction!(election::default_identity, m)?)?;
    m.add_function(wrap_pyfunction!(election::_check_identity, m)?)?;
    m.add_function(wrap_pyfunction!(functions::_check_backoff, m)?)?;
    m.add_function(wrap_pyfunction!(functions::_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(functions::_after_fork_in_parent, m)?)?;
    m.add_function(wrap_pyfunction!(functions::_after_fork_in_child, m)?)?;
    // No SQLite call may be in progress while the process forks (a child would inherit a mutex
    // held by a thread it does not have, or a lock record of a write in progress): around every
    // os.fork() (multiprocessing's "fork" too), wait for the calls in progress and hold new ones
    // back; the child then closes its copies of the parent's SQLite connections before it makes
    // its own. Module init runs once per process.
    let hooks = pyo3::types::PyDict::new(py);
    hooks.set_item("before", m.getattr("_before_fork")?)?;
    hooks.set_item("after_in_parent", m.getattr("_after_fork_in_parent")?)?;
    hooks.set_item("after_in_child", m.getattr("_after_fork_in_child")?)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&hooks))?;
    logging::install(py);
    #[cfg(feature = "bench")]
    {
        m.add_function(wrap_pyfunction!(bridge::_bench_noop, m)?)?;
        m.add_function(wrap_pyfunction!(bridge::_bench_noop_stock, m)?)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
