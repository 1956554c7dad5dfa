//! The bridge from the core's `tracing` spans and events to Python's `logging` (logger
//! `distributed_leasing`).
//!
//! A `tracing` subscriber, installed as the process's global default when the module is
//! imported, takes only this crate's events (never another crate's: the `redis` crate's could
//! quote a connection string). Whether a level is wanted is one atomic load: the threshold is
//! the Python logger's effective level, re-read (GIL held anyway) at every call into the module
//! (`refresh`) and by `distributed_leasing.refresh_logging()`. An event below it costs no GIL, no
//! allocation, no formatting.
//!
//! A wanted event is formatted on the thread that emits it, without the GIL, and queued (bounded;
//! overflow is counted and dropped). One thread, `dl-log`, takes records from
//! the queue and hands them to `logging` through [`runtime::with_python`], the only door from a
//! Rust thread into Python, so records stop at interpreter shutdown like everything else. The
//! emitting thread therefore never waits for the GIL: a renewal is never delayed by logging, and
//! an event emitted while a lock is held cannot deadlock against a Python thread that holds the
//! GIL and waits for that lock. Each record keeps the time of the event (`record.created`), its
//! fields as `record.leasing` (a dict) and the lease name as `record.lease`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict as _, PyDict};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Level, Metadata, Subscriber};

use super::runtime;

/// Python's level numbers.
const TRACE: u32 = 5;
const DEBUG: u32 = 10;
const INFO: u32 = 20;
const WARNING: u32 = 30;
const ERROR: u32 = 40;

/// Records waiting for the log thread; beyond this, new ones are dropped and counted.
const QUEUE: usize = 10_000;

/// The lowest Python level the logger wants (Python's default until the first refresh).
static THRESHOLD: AtomicU32 = AtomicU32::new(WARNING);
/// Records dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn py_level(level: Level) -> u32 {
    match level {
        Level::TRACE => TRACE,
        Level::DEBUG => DEBUG,
        Level::INFO => INFO,
        Level::WARN => WARNING,
        Level::ERROR => ERROR,
    }
}

fn ours(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("distributed_leasing")
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || -> PyResult<_> {
            let logging = py.import("logging")?;
            Ok(logging
                .call_method1("getLogger", ("distributed_leasing",))?
                .unbind())
        })
        .map(|l| l.bind(py))
}

/// Re-reads the Python logger's effective level (and `logging.disable`). Cheap: two attribute
/// reads and a call that `logging` caches.
pub(crate) fn refresh(py: Python<'_>) {
    let read = || -> PyResult<u32> {
        let logger = logger(py)?;
        let level: u32 = logger.call_method0("getEffectiveLevel")?.extract()?;
        let disabled: u32 = logger.getattr("manager")?.getattr("disable")?.extract()?;
        Ok(level.max(disabled.saturating_add(1)).max(1))
    };
    if let Ok(level) = read() {
        THRESHOLD.store(level, Relaxed);
    }
}

/// `distributed_leasing.refresh_logging()`: re-reads the logger's level now (the library also
/// does at every call); returns the number of records dropped so far because the queue was full.
#[pyfunction]
pub(crate) fn _refresh_logging(py: Python<'_>) -> u64 {
    refresh(py);
    DROPPED.load(Relaxed)
}

/// Installs the bridge as the global `tracing` subscriber (once per process; if the embedding
/// program installed its own, that one stays).
pub(crate) fn install(py: Python<'_>) {
    refresh(py);
    let _ = tracing::subscriber::set_global_default(Bridge::default());
}

#[derive(Debug, Clone)]
enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => f.write_str(s),
            Self::I64(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::Bool(v) => f.write_str(if *v { "true" } else { "false" }),
        }
    }
}

/// Fields of an event or span, in order.
#[derive(Default, Debug, Clone)]
struct Fields {
    message: Option<String>,
    values: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.values.push((field.name(), Value::Str(text)));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.values
                .push((field.name(), Value::Str(value.to_owned())));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.values.push((field.name(), Value::I64(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.values.push((field.name(), Value::U64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.values.push((field.name(), Value::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.values.push((field.name(), Value::Bool(value)));
    }
}

struct SpanData {
    meta: &'static Metadata<'static>,
    fields: Fields,
    refs: usize,
}

/// One log record on its way to Python.
struct Record {
    level: u32,
    message: String,
    fields: Vec<(&'static str, Value)>,
    lease: Option<String>,
    created: f64,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static STACK: RefCell<Vec<Id>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Bridge {
    spans: Mutex<HashMap<u64, SpanData>>,
    next_id: AtomicU64,
}

impl Bridge {
    fn spans(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SpanData>> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Subscriber for Bridge {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // "Sometimes": the answer depends on the Python level, which changes at run time.
        if ours(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        ours(meta) && py_level(*meta.level()) >= THRESHOLD.load(Relaxed)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Relaxed).saturating_add(1);
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.spans().insert(
            id,
            SpanData {
                meta: attrs.metadata(),
                fields,
                refs: 1,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &SpanRecord<'_>) {
        if let Some(data) = self.spans().get_mut(&span.into_u64()) {
            values.record(&mut data.fields);
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        if !self.enabled(meta) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = String::new();
        let mut lease = None;
        // The spans' names and fields, outermost first: "acquire{lease=x}: ".
        STACK.with(|stack| {
            let spans = self.spans();
            for id in stack.borrow().iter() {
                if let Some(span) = spans.get(&id.into_u64()) {
                    let _ = write!(message, "{}", span.meta.name());
                    if !span.fields.values.is_empty() {
                        message.push('{');
                        for (i, (k, v)) in span.fields.values.iter().enumerate() {
                            if i > 0 {
                                message.push(' ');
                            }
                            let _ = write!(message, "{k}={v}");
                            if *k == "lease" {
                                lease = Some(v.to_string());
                            }
                        }
                        message.push('}');
                    }
                    message.push_str(": ");
                }
            }
        });
        message.push_str(fields.message.as_deref().unwrap_or(""));
        for (k, v) in &fields.values {
            let _ = write!(message, " {k}={v}");
            if *k == "lease" {
                lease = Some(v.to_string());
            }
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        send(Record {
            level: py_level(*meta.level()),
            message,
            fields: fields.values,
            lease,
            created,
        });
    }

    fn enter(&self, span: &Id) {
        STACK.with(|s| s.borrow_mut().push(span.clone()));
    }

    fn exit(&self, span: &Id) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(pos) = s.iter().rposition(|i| i == span) {
                s.remove(pos);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        if let Some(data) = self.spans().get_mut(&span.into_u64()) {
            data.refs += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans();
        let key = span.into_u64();
        let Some(data) = spans.get_mut(&key) else {
            return false;
        };
        data.refs = data.refs.saturating_sub(1);
        if data.refs == 0 {
            spans.remove(&key);
            true
        } else {
            false
        }
    }
}

/// The queue of this process (a forked child gets its own thread and queue).
static SENDER: Mutex<Option<(u32, SyncSender<Record>)>> = Mutex::new(None);

fn send(record: Record) {
    let pid = super::runtime::pid();
    let mut slot = SENDER.lock().unwrap_or_else(PoisonError::into_inner);
    if slot.as_ref().is_none_or(|(p, _)| *p != pid) {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("dl-log".into())
            .spawn(move || drain(&rx));
        if spawned.is_err() {
            DROPPED.fetch_add(1, Relaxed);
            return;
        }
        *slot = Some((pid, tx));
    }
    if let Some((_, tx)) = slot.as_ref() {
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Relaxed);
            }
        }
    }
}

fn drain(rx: &Receiver<Record>) {
    while let Ok(first) = rx.recv() {
        // Hand over everything queued under one GIL acquisition.
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(1_000));
        if runtime::with_python(|py| {
            for record in batch {
                let _ = emit(py, record);
            }
        })
        .is_none()
        {
            // The interpreter is shutting down: nobody will read these.
            return;
        }
    }
}

fn emit(py: Python<'_>, record: Record) -> PyResult<()> {
    let logger = logger(py)?;
    if !logger
        .call_method1("isEnabledFor", (record.level,))?
        .is_truthy()?
    {
        return Ok(());
    }
    let fields = PyDict::new(py);
    for (k, v) in &record.fields {
        match v {
            Value::Str(s) => fields.set_item(k, s)?,
            Value::I64(x) => fields.set_item(k, x)?,
            Value::U64(x) => fields.set_item(k, x)?,
            Value::F64(x) => fields.set_item(k, x)?,
            Value::Bool(x) => fields.set_item(k, x)?,
        }
    }
    let extra = PyDict::new(py);
    extra.set_item("leasing", fields)?;
    extra.set_item("lease", record.lease)?;
    let name = logger.getattr("name")?;
    let rec = logger.call_method(
        "makeRecord",
        (
            name,
            record.level,
            "<distributed_leasing>",
            0,
            record.message,
            py.None(),
            py.None(),
        ),
        Some(&[("extra", extra)].into_py_dict(py)?),
    )?;
    // The time of the event, not of its hand-over.
    let start: f64 = py.import("logging")?.getattr("_startTime")?.extract()?;
    rec.setattr("created", record.created)?;
    rec.setattr("msecs", (record.created.fract() * 1000.0).floor())?;
    rec.setattr("relativeCreated", (record.created - start) * 1000.0)?;
    logger.call_method1("handle", (rec,))?;
    Ok(())
}
