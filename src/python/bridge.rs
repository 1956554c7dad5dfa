//! The bridge from Rust futures to asyncio futures, and from Rust futures to blocking calls.
//!
//! Written here rather than taken from `pyo3-async-runtimes`, whose `future_into_py` costs two
//! task spawns, a blocking-thread hop, a GIL hand-off and a `call_soon_threadsafe` per await
//! (`bench/bridge.py` measures both in a build with the `bench` feature, the only one that links
//! `pyo3-async-runtimes`). Here one await is: create an asyncio future, spawn one tokio task,
//! and when it finishes push a completion into the event loop's [`Inbox`] and, if the inbox was
//! idle, write one byte to a socket the loop watches (`loop.add_reader`). The loop thread,
//! which holds the GIL anyway, drains every queued completion in one callback.
//!
//! So a tokio thread never takes the GIL to complete an operation: completions cost no GIL
//! hand-off, a burst of them costs one loop wake-up, and interpreter shutdown cannot be entered
//! by a tokio thread through this path (see `runtime` for the rule this keeps).
//!
//! Cancellation: for operations that may wait long (`acquire` with a wait, `wait_lost`), a
//! cancelled asyncio future aborts the tokio task, so a cancelled `acquire(wait=None)` stops
//! trying; a lease acquired at the very moment of the cancel is dropped, which releases it.
//! Short operations are left to finish, and their result is dropped on the runtime (a lease
//! released), never queued for a loop that may be closing.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::error::LeaseError as CoreError;

use super::errors::to_py;
use super::runtime;

/// Work for the loop thread: runs there, with the GIL.
pub(crate) type Completion = Box<dyn FnOnce(Python<'_>) + Send>;

/// The completions waiting for one event loop, and the socket that wakes it.
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    wake: UnixStream,
}

#[derive(Default)]
struct Queue {
    work: Vec<Completion>,
    /// A wake-up byte has been written since the loop last took the queue: later producers
    /// only queue. Kept under the same lock as `work`, so a wake-up is never lost.
    woken: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs queued work here, on the loop thread, until the queue stays empty (or for at most
    /// `MAX_ROUNDS` batches, leaving a wake-up byte so that the loop comes back for the rest).
    /// Work queued meanwhile, from this thread or another, joins the run without a wake-up
    /// byte: `woken` stays set until the queue is seen empty, under the lock.
    pub(crate) fn run_pending(&self, py: Python<'_>) {
        self.run_after(py, || {});
    }

    /// [`Self::run_pending`], with `first` called once the run has begun: what it queues (by
    /// waking a task on this loop, say) costs no wake-up byte.
    pub(crate) fn run_after(&self, py: Python<'_>, first: impl FnOnce()) {
        const MAX_ROUNDS: usize = 64;
        self.lock().woken = true;
        first();
        for _ in 0..MAX_ROUNDS {
            let batch = {
                let mut q = self.lock();
                if q.work.is_empty() {
                    q.woken = false;
                    return;
                }
                std::mem::take(&mut q.work)
            };
            for work in batch {
                work(py);
            }
        }
        // `woken` is still set, so nobody else writes the byte.
        let _ = (&self.wake).write(&[1]);
    }

    /// Queues `work` for the loop thread. Never takes the GIL; one syscall at most.
    pub(crate) fn push(&self, work: Completion) {
        let wake = {
            let mut q = self.lock();
            q.work.push(work);
            !std::mem::replace(&mut q.woken, true)
        };
        if wake {
            // A full socket buffer means wake-ups are already queued: nothing is lost.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// The reader side of one event loop's inbox, registered with `loop.add_reader`.
#[pyclass(frozen, module = "distributed_leasing._native")]
pub(crate) struct Completer {
    inbox: Arc<Inbox>,
    readable: UnixStream,
}

#[pymethods]
impl Completer {
    /// Runs every queued completion (called by the event loop when the socket is readable).
    fn _drain(&self, py: Python<'_>) {
        // Read the wake-up bytes first, then run the queue until it is empty, clearing `woken`
        // in the same critical section that finds it empty: a push after that writes a new
        // byte (so its work is not left waiting), and a byte read here whose work is run here
        // only makes one later drain find nothing.
        let mut sink = [0u8; 256];
        while matches!((&self.readable).read(&mut sink), Ok(n) if n > 0) {}
        self.inbox.run_pending(py);
    }
}

/// The inbox of `event_loop`, created and registered on first use.
pub(crate) fn inbox_for(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Inbox>> {
    let attr = pyo3::intern!(py, "_distributed_leasing_completer");
    if let Ok(existing) = event_loop.getattr(attr) {
        if let Ok(c) = existing.cast::<Completer>() {
            return Ok(Arc::clone(&c.get().inbox));
        }
    }
    let (readable, wake) = UnixStream::pair()?;
    readable.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let fd = readable.as_raw_fd();
    let inbox = Arc::new(Inbox {
        queue: Mutex::new(Queue::default()),
        wake,
    });
    let completer = Bound::new(
        py,
        Completer {
            inbox: Arc::clone(&inbox),
            readable,
        },
    )?;
    event_loop.call_method1("add_reader", (fd, completer.getattr("_drain")?))?;
    // The loop keeps its completer (and so the socket) for its whole life. Loops without
    // attributes (none in the standard library) get a fresh inbox per operation, which works,
    // only slower.
    let _ = event_loop.setattr(attr, completer);
    Ok(inbox)
}

pub(crate) fn get_running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static GET_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GET_LOOP.import(py, "asyncio", "get_running_loop")?.call0()
}

/// A conversion of a Rust result into its Python value, run on the loop thread.
pub(crate) type Convert<T> = Box<dyn for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send>;

/// Sets `fut`'s result from `result` unless it is already done (cancelled while on its way).
pub(crate) fn settle<T>(
    py: Python<'_>,
    fut: &Py<PyAny>,
    result: Result<T, CoreError>,
    convert: Convert<T>,
) {
    let fut = fut.bind(py);
    if fut
        .call_method0(pyo3::intern!(py, "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true)
    {
        return;
    }
    let outcome = match result {
        Ok(v) => convert(py, v),
        Err(e) => Err(to_py(py, e)),
    };
    let _ = match outcome {
        Ok(value) => fut.call_method1(pyo3::intern!(py, "set_result"), (value,)),
        Err(err) => fut.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),)),
    };
}

fn spawn_into_py<F, T>(py: Python<'_>, fut: F, abortable: bool) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    spawn_into_py_with(
        py,
        fut,
        abortable,
        Box::new(|py, v: T| Ok(v.into_bound_py_any(py)?.unbind())),
    )
}

fn spawn_into_py_with<F, T>(
    py: Python<'_>,
    fut: F,
    abortable: bool,
    convert: Convert<T>,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: Send + 'static,
{
    let rt = runtime::get()?;
    super::logging::refresh(py);
    let event_loop = get_running_loop(py)?;
    let inbox = inbox_for(py, &event_loop)?;
    let py_fut = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
    let fut_ref = py_fut.clone().unbind();
    // Set when the asyncio future is cancelled. A result that comes after is dropped here, on
    // the runtime, rather than queued for the loop: the loop may be closing (`asyncio.run`
    // cancels what is left, then closes the loop), and a result queued in the inbox of a closed
    // loop is never run nor dropped, so a lease it carries would be renewed for as long as the
    // process lives. Dropped here, a lease is released in the background.
    let cancelled = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&cancelled);
    let task = rt.spawn(async move {
        let result = fut.await;
        if seen.load(Ordering::Acquire) {
            return;
        }
        inbox.push(Box::new(move |py| settle(py, &fut_ref, result, convert)));
    });
    let abort = abortable.then(|| task.abort_handle());
    let on_done = PyCFunction::new_closure(py, None, None, move |args: &Bound<'_, PyTuple>, _| {
        if let Ok(f) = args.get_item(0) {
            if f.call_method0("cancelled")
                .and_then(|c| c.is_truthy())
                .unwrap_or(false)
            {
                cancelled.store(true, Ordering::Release);
                if let Some(abort) = &abort {
                    abort.abort();
                }
            }
        }
    })?;
    py_fut.call_method1(pyo3::intern!(py, "add_done_callback"), (on_done,))?;
    Ok(py_fut)
}

/// Runs `fut` on the runtime and returns an asyncio future of its result. For operations that
/// finish on their own in one or two round trips (a cancel lets them finish).
pub(crate) fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    spawn_into_py(py, fut, false)
}

/// As [`future_into_py`], for operations that may wait long: cancelling the asyncio future
/// aborts them.
pub(crate) fn abortable_future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    spawn_into_py(py, fut, true)
}

/// As [`abortable_future_into_py`], with the conversion of the result given: it may also fail
/// with a Python exception of its choice (`StopAsyncIteration` ends an `async for`).
pub(crate) fn abortable_future_into_py_with<F, T, C>(
    py: Python<'_>,
    fut: F,
    convert: C,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: Send + 'static,
    C: for<'py> FnOnce(Python<'py>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    spawn_into_py_with(py, fut, true, Box::new(convert))
}

/// Runs `fut` to completion on the calling thread with the GIL released (its I/O is driven by
/// the runtime's workers). Checks for signals every 50 ms, so Ctrl-C interrupts a long wait
/// (dropping the future, which cancels it).
pub(crate) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, CoreError>> + Send,
    T: Send,
{
    block_on_in(py, runtime::get()?, fut)
}

/// [`block_on`] on a given runtime (a thread's own, see `thread_twin`).
pub(crate) fn block_on_in<F, T>(py: Python<'_>, rt: &tokio::runtime::Runtime, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, CoreError>> + Send,
    T: Send,
{
    super::logging::refresh(py);
    let mut fut = std::pin::pin!(fut);
    loop {
        let step = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), &mut fut).await })
        });
        match step {
            Ok(result) => return result.map_err(|e| to_py(py, e)),
            Err(_elapsed) => py.check_signals()?,
        }
    }
}

/// An await of a finished Rust future through this bridge (for `bench/bridge.py`).
#[cfg(feature = "bench")]
#[pyfunction]
pub(crate) fn _bench_noop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async { Ok(()) })
}

/// The same through `pyo3-async-runtimes`' stock `future_into_py`: the measured baseline.
#[cfg(feature = "bench")]
#[pyfunction]
pub(crate) fn _bench_noop_stock(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async { Ok(()) })
}
