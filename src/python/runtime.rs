//! The tokio runtime behind the Python module, and the rules for touching Python from it.
//!
//! All tokio access of the bindings goes through [`get`]. The runtime is created lazily (a
//! process that imports the module and forks before using it, as gunicorn does, is fine) and
//! records the pid that created it: after `fork()` its worker threads do not exist in the child,
//! so the child gets a fresh runtime, and objects made before the fork refuse to work (see
//! [`check_pid`]) instead of hanging on a dead thread.
//!
//! Interpreter shutdown: a tokio thread must never take the GIL once finalization has begun (a
//! prototype crashed in ~25% of short processes that way). Completions do not take it at all
//! (they go through the loop's inbox, see `bridge`); any other tokio-side entry into Python
//! must go through [`with_python`], and the `atexit` hook [`_shutdown`] closes that door and
//! waits, with the GIL released, until no thread is inside. `atexit` hooks run before
//! finalization.
//!
//! The crate's only unsafe code lives here: `pthread_atfork` and the runtime slot published
//! through an `AtomicPtr`, each with a SAFETY comment.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tokio::runtime::Runtime;

use super::errors::BackendError;

struct Slot {
    pid: u32,
    runtime: Runtime,
}

static SLOT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static CLOSING: AtomicBool = AtomicBool::new(false);
static INSIDE: AtomicUsize = AtomicUsize::new(0);

static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid() {
    PID.store(0, SeqCst);
}

/// This process's id, without a `getpid` syscall per call (glibc no longer caches it): cached,
/// and forgotten in a forked child by a `pthread_atfork` handler.
pub(crate) fn pid() -> u32 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    let cached = PID.load(SeqCst);
    if cached != 0 {
        return cached;
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic (async-signal-safe), as
        // the child side of fork() requires.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    let pid = std::process::id();
    PID.store(pid, SeqCst);
    pid
}

/// The runtime of this process, created on first use (again in a forked child).
pub(crate) fn get() -> PyResult<&'static Runtime> {
    let pid = pid();
    let current = SLOT.load(SeqCst);
    // SAFETY: slots are leaked on purpose and never freed, so a loaded pointer stays valid.
    if let Some(slot) = unsafe { current.as_ref() } {
        if slot.pid == pid {
            return Ok(&slot.runtime);
        }
    }
    // One worker: the work here is I/O, and a second worker only adds cross-thread wake-ups
    // (scenario 1 of bench/run.py went from 11.3k to 13.3k cycles/s async and from 12.9k to
    // 17.0k sync, everything on CPU 0). Blocking work (SQLite) has tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("distributed-leasing")
        .enable_all()
        .build()
        .map_err(|e| BackendError::new_err(format!("cannot start the tokio runtime: {e}")))?;
    let fresh = Box::into_raw(Box::new(Slot { pid, runtime }));
    // The old slot (from before a fork) is leaked: dropping a runtime joins its worker threads,
    // which do not exist in a forked child, so dropping would hang.
    match SLOT.compare_exchange(current, fresh, SeqCst, SeqCst) {
        // SAFETY: `fresh` was just leaked and is never freed.
        Ok(_) => Ok(unsafe { &(*fresh).runtime }),
        Err(winner) => {
            // Another thread installed a runtime first; use it. Ours was never shared; drop it.
            // SAFETY: `fresh` came from Box::into_raw above and nobody else saw it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, installed slots are never freed.
            Ok(unsafe { &(*winner).runtime })
        }
    }
}

/// Refuses an object created in another process (before a fork).
pub(crate) fn check_pid(created_by: u32) -> PyResult<()> {
    if created_by == pid() {
        Ok(())
    } else {
        Err(BackendError::new_err(
            "this client was created before fork(); its connections belong to the parent process: create a new LeaseClient in the child after forking",
        ))
    }
}

/// Runs `f` with the GIL unless the interpreter is shutting down (then returns `None`).
#[allow(dead_code)] // the one door for tokio threads into Python; no caller needs it right now
pub(crate) fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    INSIDE.fetch_add(1, SeqCst);
    let result = if CLOSING.load(SeqCst) {
        None
    } else {
        Some(Python::attach(f))
    };
    INSIDE.fetch_sub(1, SeqCst);
    result
}

/// The `atexit` hook: stop tokio threads from entering Python, then wait (GIL released, at
/// most five seconds) for those already inside to leave.
#[pyfunction]
pub(crate) fn _shutdown(py: Python<'_>) {
    // First give back what this process still holds: leases whose handles are still alive
    // (their clients are closed: released, owner-checked) and leases dropped just before the
    // end (their background releases are waited for). Without this, a lease held at exit was
    // left to expire, blocking everyone for its whole duration. Only this process's own
    // runtime is used (never one inherited through fork(), whose threads do not exist here);
    // a process that never used the library has none and skips this.
    let current = SLOT.load(SeqCst);
    // SAFETY: slots are leaked on purpose and never freed.
    if let Some(slot) = unsafe { current.as_ref() } {
        if slot.pid == pid() {
            py.detach(|| {
                // The timer is made inside the runtime (a tokio timer needs one).
                let _ = slot.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(3), crate::renewal::close_all()).await
                });
                let left = crate::lease::wait_for_background_releases(Duration::from_secs(2));
                if left > 0 {
                    tracing::warn!(
                        pending = left,
                        "process exit: some lease releases did not complete; those leases expire by themselves"
                    );
                }
            });
        }
    }
    CLOSING.store(true, SeqCst);
    py.detach(|| {
        let until = Instant::now() + Duration::from_secs(5);
        while INSIDE.load(SeqCst) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
