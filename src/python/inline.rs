//! Acquire and release on the asyncio event loop's own thread, over a Redis connection the loop
//! polls (a caller-driven twin of the client's store, see `store::redis::inline`).
//!
//! Why: through the tokio runtime, one await crosses threads twice (the loop hands the request
//! to the tokio worker that owns the socket, the worker hands the reply back through the
//! loop's inbox), and on this 2-core machine those wake-ups cost more than the Redis round trip
//! (`bench/profile.sh`). Here the loop thread writes the request itself, and the loop's
//! selector says when the reply is readable: the same path as redis-py's asyncio client, minus
//! its Python. Written by hand because no crate runs Rust futures on an asyncio loop: the
//! executor is a task per future, woken through the loop's inbox (`bridge::Inbox`); the stream
//! is a non-blocking socket whose readiness comes from `loop.add_reader`/`add_writer`.
//!
//! What it owns: one twin connection per (client, event loop), kept on the loop object and
//! opened on first use, in the background (tokio connects; the handshake runs here). Until it
//! is ready, and for a second after it closes, operations take the tokio path, so nothing waits
//! for it. Every one-request operation runs here (`executor` decides: one acquire attempt, a
//! renewal, a release, inspect, list, a forced release); a command whose connection dropped is
//! retried once by the store on a fresh shared connection, so a dying twin costs no operation,
//! and a twin whose connection failed in any way (dropped, timed out) is never used again: the
//! next operation opens another. These operations run to the end once started (a cancelled
//! await discards their result), as on the tokio path.
//!
//! Closing: the client closes its twins when it is closed or dropped ([`LoopTwin::close`], see
//! `twins`); on the loop's own thread the socket is closed at once, from another thread it is
//! shut down at once and dropped by the loop. A collected loop closes its twins.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyWeakrefReference};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::runtime::Runtime;

use crate::error::LeaseError as CoreError;
use crate::store::redis::RedisStore;
use crate::store::LeaseStore;
use crate::LeaseClient;

use super::bridge::{get_running_loop, inbox_for, settle, Convert, Inbox};
use super::runtime;
use super::twins::{Close, Twins};

/// How long operations keep to the tokio path after a twin failed to open or closed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// -- the executor ----------------------------------------------------------------------------

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A future polled on its loop's thread: waking it queues a poll in the loop's inbox (from any
/// thread; from the loop thread itself, inside a run of the inbox, without a wake-up byte).
struct LocalTask {
    future: Mutex<Option<BoxFuture>>,
    inbox: Arc<Inbox>,
    runtime: &'static Runtime,
    queued: AtomicBool,
}

impl Wake for LocalTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, SeqCst) {
            let task = Arc::clone(self);
            self.inbox.push(Box::new(move |_py| task.poll()));
        }
    }
}

impl LocalTask {
    /// Queues `future` on the loop of `inbox` and runs the inbox here (the caller is on that
    /// loop's thread): the future's first steps (writing its request) happen before returning.
    fn spawn(
        py: Python<'_>,
        inbox: &Arc<Inbox>,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> PyResult<Arc<Self>> {
        let task = Arc::new(Self {
            future: Mutex::new(Some(Box::pin(future))),
            inbox: Arc::clone(inbox),
            runtime: runtime::get()?,
            queued: AtomicBool::new(false),
        });
        inbox.run_after(py, || task.wake_by_ref());
        Ok(task)
    }

    fn poll(self: &Arc<Self>) {
        self.queued.store(false, SeqCst);
        // Timers and spawns inside the future use the process's runtime.
        let _enter = self.runtime.enter();
        let waker = Waker::from(Arc::clone(self));
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.future);
        if let Some(future) = slot.as_mut() {
            if future.as_mut().poll(&mut cx).is_ready() {
                *slot = None;
            }
        }
    }

    /// Drops the future without finishing it.
    fn abort(&self) {
        let dropped = lock(&self.future).take();
        drop(dropped);
    }
}

// -- the stream ------------------------------------------------------------------------------

/// A non-blocking socket whose readiness comes from an asyncio loop's selector.
struct StreamShared {
    sock: TcpStream,
    /// `weakref.ref(loop)`: the connection must not keep its loop alive.
    event_loop: Py<PyWeakrefReference>,
    inbox: Arc<Inbox>,
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
    reading: AtomicBool,
    writing: AtomicBool,
    /// The last read took less than it asked for, so the socket is empty until the selector
    /// says otherwise: the next read waits without trying (saves a syscall per reply).
    drained: AtomicBool,
    /// The process that opened it: a forked child shares the socket and the loop's poller
    /// with it, and must leave both alone.
    pid: u32,
}

impl StreamShared {
    fn event_loop<'py>(&self, py: Python<'py>) -> io::Result<Bound<'py, PyAny>> {
        let lp = self.event_loop.bind(py).upgrade();
        lp.ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the event loop is gone"))
    }

    fn watch(self: &Arc<Self>, py: Python<'_>, write: bool) -> io::Result<()> {
        let flag = if write { &self.writing } else { &self.reading };
        if flag.swap(true, SeqCst) {
            return Ok(());
        }
        let ready = Bound::new(
            py,
            Readiness {
                shared: Arc::clone(self),
            },
        )
        .map_err(io::Error::other)?;
        let (method, callback) = if write {
            ("add_writer", ready.getattr("_writable"))
        } else {
            ("add_reader", ready.getattr("_readable"))
        };
        let callback = callback.map_err(io::Error::other)?;
        let registered = self
            .event_loop(py)?
            .call_method1(method, (self.sock.as_raw_fd(), callback));
        if let Err(e) = registered {
            flag.store(false, SeqCst);
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()));
        }
        Ok(())
    }

    fn unwatch(&self, py: Python<'_>, write: bool) {
        let flag = if write { &self.writing } else { &self.reading };
        if flag.swap(false, SeqCst) {
            if let Ok(lp) = self.event_loop(py) {
                let method = if write {
                    "remove_writer"
                } else {
                    "remove_reader"
                };
                let _ = lp.call_method1(method, (self.sock.as_raw_fd(),));
            }
        }
    }
}

/// The selector's callbacks for one socket.
#[pyclass(frozen, module = "distributed_leasing._native")]
struct Readiness {
    shared: Arc<StreamShared>,
}

#[pymethods]
impl Readiness {
    fn _readable(&self, py: Python<'_>) {
        self.shared.drained.store(false, SeqCst);
        let waker = lock(&self.shared.read_waker).take();
        if waker.is_none() {
            // Nobody is reading: stop watching rather than be called on every loop turn (the
            // next read that finds nothing watches again).
            self.shared.unwatch(py, false);
        }
        self.shared
            .inbox
            .run_after(py, || waker.into_iter().for_each(Waker::wake));
    }

    fn _writable(&self, py: Python<'_>) {
        self.shared.unwatch(py, true);
        let waker = lock(&self.shared.write_waker).take();
        self.shared
            .inbox
            .run_after(py, || waker.into_iter().for_each(Waker::wake));
    }
}

/// The twin's end of the socket. Polled only on the loop thread (where the GIL is held).
struct LoopStream(Arc<StreamShared>);

impl LoopStream {
    fn pending(&self, cx: &Context<'_>, write: bool) -> Poll<io::Result<()>> {
        let slot = if write {
            &self.0.write_waker
        } else {
            &self.0.read_waker
        };
        *lock(slot) = Some(cx.waker().clone());
        match Python::attach(|py| self.0.watch(py, write)) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for LoopStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.0.drained.load(SeqCst) && self.0.reading.load(SeqCst) {
            return self.pending(cx, false);
        }
        loop {
            let room = buf.remaining();
            match (&self.0.sock).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    // Level-triggered selector: if more arrived meanwhile, it calls again.
                    self.0.drained.store(n > 0 && n < room, SeqCst);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.pending(cx, false);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for LoopStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match (&self.0.sock).write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.pending(cx, true).map_ok(|()| 0);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            match (&self.0.sock).write_vectored(bufs) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.pending(cx, true).map_ok(|()| 0);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.sock.shutdown(std::net::Shutdown::Write))
    }
}

impl Drop for LoopStream {
    fn drop(&mut self) {
        let shared = &self.0;
        if shared.pid != runtime::pid() {
            // A forked child (its loop collected at exit, say): the socket and the selector's
            // epoll instance are its parent's too. Taking the fd off the selector would take it
            // off the parent's, and a shutdown would end the parent's connection: the parent's
            // next call would stall for a whole operation timeout. Only the fd closes here.
            return;
        }
        // Off the selector before the socket closes (its fd number may be reused at once).
        runtime::with_python(|py| {
            shared.unwatch(py, false);
            shared.unwatch(py, true);
        });
        let _ = shared.sock.shutdown(std::net::Shutdown::Both);
    }
}

// -- one twin per (client, loop) -------------------------------------------------------------

#[allow(clippy::large_enum_variant)] // one per client and loop: size is no matter
enum State {
    /// Not open; may be opened from `retry_at` on.
    Closed {
        retry_at: Option<Instant>,
    },
    Opening,
    Ready {
        client: LeaseClient,
        store: Arc<dyn LeaseStore>,
        stream: Arc<StreamShared>,
    },
    /// Closed for good: its client was closed or dropped.
    Shut,
}

/// A client's twin on one loop: kept by the loop (in its `_distributed_leasing_inline` dict,
/// see [`Twin`]), closed by its client ([`LoopTwin::close`]) or when the loop is collected.
pub(crate) struct LoopTwin {
    state: Arc<Mutex<State>>,
    inbox: Arc<Inbox>,
    /// The task that drives the connection (handshake, then every reply).
    driver: Arc<Mutex<Option<Arc<LocalTask>>>>,
    /// The loop's thread: the only one that may drop the connection (it unregisters the socket
    /// from the loop's selector first).
    thread: ThreadId,
}

impl Close for LoopTwin {
    /// Closes the twin for good, from any thread. On the loop's thread the socket is closed
    /// before this returns; from another thread it is shut down (the server sees it closed at
    /// once), and the loop drops it when it next runs.
    fn close(&self) {
        let old = std::mem::replace(&mut *lock(&self.state), State::Shut);
        if std::thread::current().id() == self.thread {
            abort(&self.driver);
        } else {
            if let State::Ready { stream, .. } = &old {
                let _ = stream.sock.shutdown(std::net::Shutdown::Both);
            }
            let driver = Arc::clone(&self.driver);
            self.inbox.push(Box::new(move |_py| abort(&driver)));
        }
        drop(old);
    }
}

/// Ends the driver's task (dropping its socket). Its task and its socket's wakers refer to
/// each other, so it is never left to be dropped by reference counting.
fn abort(driver: &Mutex<Option<Arc<LocalTask>>>) {
    let task = lock(driver).take();
    if let Some(task) = task {
        task.abort();
    }
}

/// Sets `state` closed after a failure to open or the end of the connection `stream` (if it is
/// still the current one), unless the twin was closed for good.
fn closed(state: &Mutex<State>, stream: Option<&Arc<StreamShared>>) {
    let mut state = lock(state);
    let current = match &*state {
        State::Shut => return,
        State::Ready { stream: s, .. } => Some(s),
        _ => None,
    };
    if let (Some(ours), Some(current)) = (stream, current) {
        if !Arc::ptr_eq(ours, current) {
            return;
        }
    }
    *state = State::Closed {
        retry_at: Some(Instant::now() + RETRY_AFTER),
    };
}

/// The loop's handle on a [`LoopTwin`]: when the loop is collected, its twins' connections are
/// closed.
#[pyclass(frozen, module = "distributed_leasing._native")]
struct Twin {
    core: Arc<LoopTwin>,
}

impl Drop for Twin {
    fn drop(&mut self) {
        abort(&self.core.driver);
    }
}

/// The twin of `client` on the running loop, if it is ready to use.
pub(crate) struct Ready {
    /// The client's view whose requests go over this connection.
    pub(crate) client: LeaseClient,
    inbox: Arc<Inbox>,
    event_loop: Py<PyAny>,
}

/// The ready twin of the client of `twins` on the running loop; `None` (take the tokio path)
/// while it opens, after it closed, outside a running loop, and always once the client is
/// closed. Starts opening one when there is none, or when the last one failed.
pub(crate) fn ready(
    py: Python<'_>,
    twins: &Arc<Twins>,
    client: &LeaseClient,
) -> PyResult<Option<Ready>> {
    if twins.is_closed() || client.is_closed() {
        return Ok(None);
    }
    let Ok(event_loop) = get_running_loop(py) else {
        return Ok(None);
    };
    let attr = pyo3::intern!(py, "_distributed_leasing_inline");
    let table = match event_loop.getattr(attr) {
        Ok(d) => d.cast_into::<PyDict>()?,
        Err(_) => {
            let d = PyDict::new(py);
            // A loop without attributes gets no twins (none in the standard library).
            if event_loop.setattr(attr, &d).is_err() {
                return Ok(None);
            }
            d
        }
    };
    let twin = match table.get_item(twins.id)? {
        Some(t) => t.cast_into::<Twin>()?,
        None => {
            let core = Arc::new(LoopTwin {
                state: Arc::new(Mutex::new(State::Closed { retry_at: None })),
                inbox: inbox_for(py, &event_loop)?,
                driver: Arc::new(Mutex::new(None)),
                thread: std::thread::current().id(),
            });
            if !twins.add(core.clone()) {
                return Ok(None);
            }
            let t = Bound::new(py, Twin { core })?;
            table.set_item(twins.id, &t)?;
            t
        }
    };
    let twin = &twin.get().core;
    let mut state = lock(&twin.state);
    match &*state {
        State::Ready { client, store, .. }
            if !RedisStore::of(&**store).is_some_and(|r| r.is_broken()) =>
        {
            return Ok(Some(Ready {
                client: client.clone(),
                inbox: Arc::clone(&twin.inbox),
                event_loop: event_loop.unbind(),
            }))
        }
        // Its connection failed: never used again; a new one opens now.
        State::Ready { .. } => {
            let old = std::mem::replace(&mut *state, State::Opening);
            drop(state);
            abort(&twin.driver);
            drop(old);
            open(&event_loop, twin, client)?;
            return Ok(None);
        }
        State::Opening | State::Shut => return Ok(None),
        State::Closed { retry_at: Some(at) } if Instant::now() < *at => return Ok(None),
        State::Closed { .. } => {}
    }
    *state = State::Opening;
    drop(state);
    open(&event_loop, twin, client)?;
    Ok(None)
}

/// Opens the twin: tokio connects the socket, then the loop thread runs the handshake and,
/// for as long as the connection lives, its driver.
fn open(event_loop: &Bound<'_, PyAny>, twin: &LoopTwin, client: &LeaseClient) -> PyResult<()> {
    let Some(redis) = RedisStore::of(&**client.store()) else {
        *lock(&twin.state) = State::Closed { retry_at: None };
        return Ok(());
    };
    let rt = runtime::get()?;
    let store = redis.clone();
    let client = client.clone();
    let state = Arc::clone(&twin.state);
    let inbox = Arc::clone(&twin.inbox);
    let driver = Arc::clone(&twin.driver);
    let weak_loop = PyWeakrefReference::new(event_loop)?.unbind();
    rt.spawn(async move {
        let sock = match store.open_inline_socket().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the event loop's connection; using the shared one");
                closed(&state, None);
                return;
            }
        };
        let loop_inbox = Arc::clone(&inbox);
        loop_inbox.push(Box::new(move |py| {
            if matches!(*lock(&state), State::Shut) {
                return; // closed while connecting: the socket closes here
            }
            let shared = Arc::new(StreamShared {
                sock,
                event_loop: weak_loop,
                inbox: Arc::clone(&inbox),
                read_waker: Mutex::new(None),
                write_waker: Mutex::new(None),
                reading: AtomicBool::new(false),
                writing: AtomicBool::new(false),
                drained: AtomicBool::new(false),
                pid: runtime::pid(),
            });
            let stream = LoopStream(Arc::clone(&shared));
            let task_state = Arc::clone(&state);
            let run = async move {
                match store.inline_twin(stream).await {
                    Ok((twin, connection)) => {
                        let twin: Arc<dyn LeaseStore> = Arc::new(twin);
                        {
                            let mut s = lock(&task_state);
                            if matches!(*s, State::Shut) {
                                return;
                            }
                            *s = State::Ready {
                                client: client.via(Arc::clone(&twin)),
                                store: twin,
                                stream: Arc::clone(&shared),
                            };
                        }
                        tracing::debug!("the event loop's connection is open");
                        connection.await;
                        tracing::debug!("the event loop's connection closed");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot open the event loop's connection; using the shared one");
                    }
                }
                closed(&task_state, Some(&shared));
            };
            match LocalTask::spawn(py, &inbox, run) {
                Ok(task) => {
                    let mut slot = lock(&driver);
                    if let Some(old) = slot.replace(task) {
                        old.abort();
                    }
                }
                Err(_) => closed(&state, None),
            }
        }));
    });
    Ok(())
}

impl Ready {
    /// Runs `fut` on the loop thread and returns an asyncio future of its result.
    pub(crate) fn future_into_py<'py, F, T>(
        &self,
        py: Python<'py>,
        fut: F,
    ) -> PyResult<Bound<'py, PyAny>>
    where
        F: Future<Output = Result<T, CoreError>> + Send + 'static,
        T: for<'a> IntoPyObject<'a> + Send + 'static,
    {
        use pyo3::IntoPyObjectExt;
        let convert: Convert<T> = Box::new(|py, v: T| Ok(v.into_bound_py_any(py)?.unbind()));
        super::logging::refresh(py);
        let py_fut = self
            .event_loop
            .bind(py)
            .call_method0(pyo3::intern!(py, "create_future"))?;
        let fut_ref = py_fut.clone().unbind();
        LocalTask::spawn(py, &self.inbox, async move {
            let result = fut.await;
            // On the loop thread, where the GIL is held: attaching is only a count.
            Python::attach(|py| settle(py, &fut_ref, result, convert));
        })?;
        Ok(py_fut)
    }
}
