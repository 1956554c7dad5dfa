//! The bridge from Rust futures to asyncio futures, and from Rust futures to blocking calls.
//!
//! Written here rather than taken from `pyo3-async-runtimes` because its `future_into_py` costs
//! two task spawns, a blocking-thread hop and a GIL hand-off per await (45–145 µs measured on
//! this machine for a no-op), and because it gives no hook to keep tokio threads out of Python
//! during interpreter shutdown. Here one await is: create an asyncio future, spawn one tokio
//! task, and when it finishes take the GIL once on the tokio worker to convert the result and
//! `call_soon_threadsafe` the resolution. `bench/bridge.py` measures both bridges.
//!
//! Cancellation: cancelling the asyncio future aborts the tokio task (a done callback), so a
//! cancelled `acquire(wait=None)` stops trying; a lease acquired at the very moment of the
//! cancel is dropped, which releases it.

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::error::LeaseError as CoreError;

use super::errors::to_py;
use super::runtime;

/// Resolves `fut` unless it is already done (cancelled while the result was on its way).
#[pyfunction]
fn _resolve(fut: &Bound<'_, PyAny>, ok: bool, value: Bound<'_, PyAny>) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        fut.call_method1("set_result", (value,))?;
    } else {
        fut.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

fn resolver(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RESOLVE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(wrap_pyfunction!(_resolve, py)?.into_any().unbind())
        })
        .map(|f| f.bind(py))
}

fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_LOOP.import(py, "asyncio", "get_running_loop")?.call0()
}

/// Runs `fut` on the runtime and returns an asyncio future of its result.
pub(crate) fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    future_into_py_with(py, fut, |py, v| Ok(v.into_bound_py_any(py)?.unbind()))
}

/// [`future_into_py`] with the conversion of the result given: it may also fail with a Python
/// exception of its choice (`StopAsyncIteration` ends an `async for`).
pub(crate) fn future_into_py_with<F, T, C>(
    py: Python<'_>,
    fut: F,
    convert: C,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: Send + 'static,
    C: for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let rt = runtime::get()?;
    super::logging::refresh(py);
    let event_loop = get_running_loop(py)?;
    let py_fut = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let fut_ref = py_fut.clone().unbind();
    let loop_ref = event_loop.unbind();
    let task = rt.spawn(async move {
        let result = fut.await;
        runtime::with_python(|py| {
            let (ok, value) = match result {
                Ok(v) => match convert(py, v) {
                    Ok(obj) => (true, obj),
                    Err(e) => (false, e.into_value(py).into_any()),
                },
                Err(e) => (false, to_py(py, e).into_value(py).into_any()),
            };
            let Ok(resolve) = resolver(py) else { return };
            // Fails only if the loop is closed: nobody is waiting any more.
            let _ = loop_ref.call_method1(
                py,
                pyo3::intern!(py, "call_soon_threadsafe"),
                (resolve, fut_ref, ok, value),
            );
        });
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(py, None, None, move |args: &Bound<'_, PyTuple>, _| {
        if let Ok(f) = args.get_item(0) {
            if f.call_method0("cancelled")
                .and_then(|c| c.is_truthy())
                .unwrap_or(false)
            {
                abort.abort();
            }
        }
    })?;
    py_fut.call_method1(pyo3::intern!(py, "add_done_callback"), (on_done,))?;
    Ok(py_fut)
}

/// Runs `fut` on the runtime and blocks until it is done, with the GIL released. Checks for
/// signals every 50 ms, so Ctrl-C interrupts a long wait (and aborts it).
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime::get()?;
    super::logging::refresh(py);
    let mut task = rt.spawn(fut);
    loop {
        let step = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), &mut task).await })
        });
        match step {
            Ok(Ok(result)) => return result.map_err(|e| to_py(py, e)),
            Ok(Err(join_error)) => {
                return Err(super::errors::BackendError::new_err(format!(
                    "the operation's task failed: {join_error}"
                )))
            }
            Err(_elapsed) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
        }
    }
}

/// An await of a finished Rust future through this bridge (for `bench/bridge.py`).
#[pyfunction]
pub(crate) fn _bench_noop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async { Ok(()) })
}

/// The same through `pyo3-async-runtimes`' stock `future_into_py`: the measured baseline.
#[pyfunction]
pub(crate) fn _bench_noop_stock(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async { Ok(()) })
}
