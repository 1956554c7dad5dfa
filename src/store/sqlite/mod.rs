//! The embedded store: leases in a SQLite file shared by the processes of one machine.
//!
//! [`SqliteStore`] gives the same semantics as the Redis store (DESIGN.md §3, §7) without a
//! server: one row per held lease, one fencing counter per name ever used.
//!
//! This module owns the file and its connection (opening, following a replaced file, the
//! blocking pool, fork, closing) and the mapping of SQLite errors; the lease operations live in
//! [`lease`], the tables and their version in [`schema`].
//!
//! Invariants:
//! - Every write is one `BEGIN IMMEDIATE` transaction. The write lock is taken before anything is
//!   read, so two acquirers (threads or processes) can never both see a lease free; the others
//!   wait for it (the busy timeout: the client's `operation_timeout`, 5 s by default) instead
//!   of failing, and past it fail with a `timeout` error naming the file.
//! - A lease row whose `expires_at` is not after now is exactly an absent lease (Redis would
//!   have expired the key): nobody may renew, release or see it, anyone may take it. Such rows
//!   are purged by the next acquire.
//! - `fences` rows are never deleted, so fencing tokens strictly increase per name across
//!   release, expiry and force release. `synchronous=FULL` makes a token durable before it is
//!   handed out, so a power cut cannot hand the same token out twice.
//! - Expiry is by a stored deadline on the machine's wall clock (ms since the Unix epoch): the
//!   only clock every process on the machine shares. A wall-clock jump therefore moves every
//!   lease's expiry: a jump back lengthens leases, a jump forward expires them early and can let
//!   a second holder in before the first holder's own (monotonic) deadline passes. The Redis store
//!   uses the server's clock instead. Where that matters, resources check the fencing token.
//! - The file must be on a local filesystem: WAL mode shares memory between processes
//!   (`<file>-shm`), which network filesystems do not support.
//!
//! - Waiting: SQLite has no way to tell another process that a row went away. Releases made in
//!   this process wake this process's waiters at once (one in-memory [`ReleaseBoard`] per file,
//!   shared by every store open on it here); waiters in other processes find out by polling on
//!   their backoff schedule (never more often than every 100 ms) and at the holder's expiry.
//!   Proclaims and announced acquisitions made in this process tell its observers the same
//!   way; observers elsewhere poll.
//!
//! - Fork: no SQLite call is in progress while the process forks, and a forked child closes the
//!   connections it inherited before opening its own ([`fork`]; the bindings call its hooks
//!   around every `os.fork()`). A connection is only ever used, and closed, by the process that
//!   opened it.
//!
//! Schema: `PRAGMA application_id` marks the file as ours and `PRAGMA user_version` holds the
//! schema version; a file of another application or of a newer schema is refused, never altered.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::wait::ReleaseBoard;

mod fork;
mod lease;
mod schema;

pub use fork::{after_fork_in_child, after_fork_in_parent, before_fork, FORK_WAIT_LIMIT};

/// Every store opened in this process (and, in a forked child, in its parent), so that a child
/// can close the connections it inherited ([`close_inherited`]).
static STORES: LazyLock<Mutex<Vec<Weak<Inner>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// In a forked child, with SQLite idle (see [`fork`]): closes every connection inherited from
/// the parent. SQLite records, per file and per process, the locks it believes the process
/// holds; a child's own connection to the same file would share the inherited connection's
/// records and take none of the locks itself (the child holds none of its parent's), so the
/// parent could, say, delete the write-ahead log under it. Closing in the child touches only
/// the child: its copies of the descriptors and maps, and its own (absent) POSIX locks. Stores
/// inherited this way fail from now on, as [`Failure::Forked`].
fn close_inherited() {
    let mut stores = match STORES.try_lock() {
        Ok(stores) => stores,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        // Held by a thread of the parent: leave everything as it is (leaked on drop).
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for inner in stores.drain(..).filter_map(|s| s.upgrade()) {
        let Ok(mut conn) = inner.conn.try_lock() else {
            continue;
        };
        if let Some(Err((conn, e))) = conn.take().map(Connection::close) {
            // Left open (its drop would only try again): the child's own connections to the
            // file then share its lock records, as they did before this hook existed.
            tracing::warn!(path = %inner.path.display(), "a forked child could not close its copy of the parent's SQLite connection: {e}");
            std::mem::forget(conn);
        }
    }
}

/// The release board of each database file open in this process, by path.
static BOARDS: LazyLock<Mutex<HashMap<PathBuf, Weak<ReleaseBoard>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The board shared by every store of this process open on `path`.
fn board_for(path: &Path) -> Arc<ReleaseBoard> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut boards = BOARDS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(board) = boards.get(&key).and_then(Weak::upgrade) {
        return board;
    }
    boards.retain(|_, b| b.strong_count() > 0);
    let board = ReleaseBoard::in_process();
    boards.insert(key, Arc::downgrade(&board));
    board
}

/// How long an operation waits for another process's write transaction before giving up, unless
/// the store is opened with another bound ([`SqliteStore::open_async_with_timeout`]; a client
/// passes its `operation_timeout`). Lease transactions last microseconds, so 5 s only runs out
/// if something is wrong.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Leases in a SQLite database file, shared safely by the processes of one machine.
///
/// One connection per store, behind a `std::sync::Mutex`, used only from
/// `tokio::task::spawn_blocking`: SQLite lets one writer at a time into a file anyway and every
/// operation but `inspect`/`list` writes, so a pool would only add parallel readers while costing
/// one open file, WAL index mapping and statement cache each. The blocking pool keeps the runtime's
/// workers free while a call waits on the file lock. A cancelled call still runs to completion
/// (like a Redis reply that is lost); acquiring again with the same lease id is idempotent.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The process that opened the connection: the only one that may use or close it.
    pid: u32,
    busy_timeout: Duration,
    /// This process's waiters on this file.
    board: Arc<ReleaseBoard>,
    /// `None` only while `Inner` is dropped.
    conn: Mutex<Option<Connection>>,
    /// The identity of the file the connection has open (see [`FileId`]); checked against
    /// the path before every operation, under the `conn` lock.
    file: Mutex<Option<FileId>>,
}

/// Which file a path names: device and inode. While our connection keeps the file open its
/// inode cannot be reused, so a path that names another (or no) inode means the file was
/// deleted or replaced under us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file `path` names now; `None` if there is none (or on a platform without inodes).
    fn of(path: &Path) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).ok().map(|m| Self {
                dev: m.dev(),
                ino: m.ino(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }
}

impl Inner {
    /// Makes sure `conn` has open the file the path names now. If the file was deleted or
    /// replaced (by a person, a cleanup job, a test), every process that keeps using the old
    /// inode would hold leases nobody else can see, and a new process would start a fresh file
    /// at fencing token 1: two holders. So the store switches to the file at the path (creating
    /// it if needed), and the leases held in the old file, which the new one does not have,
    /// are reported lost (`missing`) at their next renewal or release.
    fn follow_path(&self, conn: &mut Connection) -> Result<(), Failure> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let now = FileId::of(&self.path);
        if file.is_none() || now == *file {
            return Ok(());
        }
        if now.is_none() && leftover_wal(&self.path).is_some() {
            // The file alone was deleted; its write-ahead log (which this connection keeps
            // open) is still there, and a new database beside it would be read through that log:
            // create nothing. Leases held in the deleted file are lost.
            return Err(Failure::Gone);
        }
        tracing::warn!(
            path = %self.path.display(),
            "the SQLite lease database was deleted or replaced while open; switching to the file now at that path: leases held in the old file are lost, and fencing tokens restart in a new file"
        );
        *conn = open_connection(&self.path, self.busy_timeout)?;
        *file = FileId::of(&self.path);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(conn) = conn else { return };
        if self.pid != std::process::id() {
            // Inherited through fork() and not closed by the child's fork hook (SQLite may not
            // have been idle): closing it here could wait forever on a mutex of a thread that
            // does not exist. It belongs to the parent: leave it.
            std::mem::forget(conn);
            return;
        }
        // Closing the last connection checkpoints the WAL into the file (disk writes and fsync):
        // keep that off the runtime's worker threads when there is a runtime.
        let close = move || {
            let _working = fork::enter();
            drop(conn);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the leases database at `path`.
    ///
    /// Blocks the calling thread for as long as another process holds the file's write lock
    /// (at most [`BUSY_TIMEOUT`]); from async code prefer [`SqliteStore::open_async`]. The
    /// directory must exist: it is not created, so a typo in the path fails here rather than
    /// silently giving this process a lock file of its own.
    ///
    /// # Errors
    /// `Backend` naming the file if the directory does not exist, the path is a directory, the
    /// file is not a SQLite database, belongs to another application or has a newer schema,
    /// is read-only, or stays locked by another process for more than [`BUSY_TIMEOUT`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_busy_timeout(path, BUSY_TIMEOUT)
    }

    /// [`SqliteStore::open`] on tokio's blocking pool, so the runtime is never blocked.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_async(path: &Path) -> Result<Self> {
        Self::open_async_with_timeout(path, BUSY_TIMEOUT).await
    }

    /// [`SqliteStore::open_async`], with `timeout` instead of [`BUSY_TIMEOUT`] as the longest the
    /// open and each later operation wait for another process's lock on the file (a client
    /// passes its `operation_timeout`). It bounds that wait only: an operation that has the lock
    /// runs to its end (its disk writes and `fsync` are not interrupted).
    ///
    /// # Errors
    /// As [`SqliteStore::open`]; an operation that waits longer than `timeout` fails with a
    /// `Timeout` backend error naming the file.
    pub async fn open_async_with_timeout(path: &Path, timeout: Duration) -> Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_with_busy_timeout(&path, timeout))
            .await
            .map_err(|e| join_error(&e))?
    }

    /// The absolute path of the database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn open_with_busy_timeout(path: &Path, busy_timeout: Duration) -> Result<Self> {
        // SQLite counts it in milliseconds in a C int (24.8 days): beyond, it is no limit anyway.
        let busy_timeout = busy_timeout.min(Duration::from_millis(i32::MAX.unsigned_abs().into()));
        if path.as_os_str().is_empty() {
            return Err(LeaseError::backend(
                BackendErrorKind::Other,
                "the SQLite lease database path is empty: give a file path such as /var/lib/myapp/leases.db",
            ));
        }
        // Absolute, so messages name the file unambiguously and a relative name beginning with
        // "file:" is not taken for a URI (the bundled SQLite enables URI file names globally).
        let path = std::path::absolute(path).map_err(|e| {
            LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "cannot open SQLite database {}: {e}: give an absolute path",
                    path.display()
                ),
            )
        })?;
        if path.is_dir() {
            return Err(LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "cannot open SQLite database {}: it is a directory; give the path of a file inside it, such as {}",
                    path.display(),
                    path.join("leases.db").display()
                ),
            ));
        }
        if let Some(dir) = path.parent() {
            if !dir.is_dir() {
                return Err(LeaseError::backend(
                    BackendErrorKind::Other,
                    format!(
                        "cannot open SQLite database {}: directory {} does not exist; create it (the store does not create directories) or fix the path",
                        path.display(),
                        dir.display()
                    ),
                ));
            }
        }
        if !path.exists() && leftover_wal(&path).is_some() {
            return Err(Failure::Gone.into_error(&path, busy_timeout));
        }
        let _working = fork::enter();
        let conn =
            open_connection(&path, busy_timeout).map_err(|f| f.into_error(&path, busy_timeout))?;
        let file = FileId::of(&path);
        let inner = Arc::new(Inner {
            board: board_for(&path),
            path,
            pid: std::process::id(),
            busy_timeout,
            conn: Mutex::new(Some(conn)),
            file: Mutex::new(file),
        });
        let mut stores = STORES.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|s| s.strong_count() > 0);
        stores.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// Runs `op` on the connection on tokio's blocking pool.
    async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        self.run_or(op, None).await
    }

    /// [`Self::run`], answering `gone` instead of running `op` when the database file was
    /// deleted under us (see [`Inner::follow_path`]).
    async fn run_or<T, F>(&self, op: F, gone: Option<T>) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            if inner.pid != std::process::id() {
                return Err(Failure::Forked.into_error(&inner.path, inner.busy_timeout));
            }
            let _working = fork::enter();
            // A panic while the lock was held cannot leave a transaction open (a `Transaction`
            // rolls back when dropped), so a poisoned connection is still good to use.
            let mut guard = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(conn) = guard.as_mut() {
                match (inner.follow_path(conn), gone) {
                    (Ok(()), _) => {}
                    (Err(Failure::Gone), Some(gone)) => return Ok(gone),
                    (Err(f), _) => return Err(f.into_error(&inner.path, inner.busy_timeout)),
                }
            }
            let result = match guard.as_mut() {
                Some(conn) => op(conn),
                None => Err(Failure::Closed),
            };
            result.map_err(|f| f.into_error(&inner.path, inner.busy_timeout))
        })
        .await
        .map_err(|e| join_error(&e))?
    }

    /// Closes the connection ([`crate::store::LeaseStore::close`]).
    async fn close_connection(&self) {
        // Closing the connection checkpoints the WAL (disk writes): on the blocking pool. Other
        // clones of this store share the connection and fail as closed from now on.
        let inner = Arc::clone(&self.inner);
        let closed = tokio::task::spawn_blocking(move || {
            if inner.pid != std::process::id() {
                return; // the parent's (see `Drop for Inner`)
            }
            let _working = fork::enter();
            let conn = inner
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(conn);
        });
        let _ = closed.await;
    }
}

/// The `-wal` file of the database at `path`, if one exists.
fn leftover_wal(path: &Path) -> Option<PathBuf> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    wal.exists().then_some(wal)
}

/// Opens the connection, sets it up for several processes, and checks or creates the schema.
fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, Failure> {
    // No SQLITE_OPEN_URI: the path is a file name, never a URI. NO_MUTEX: our Mutex serializes.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    // First, so every later statement (including switching to WAL) waits for other processes.
    conn.busy_timeout(busy_timeout)?;
    if conn.is_readonly("main")? {
        return Err(Failure::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            None,
        )));
    }
    // Two processes opening a new file at once can deadlock on the lock upgrade that switching
    // to WAL needs; SQLite then answers SQLITE_BUSY at once instead of calling the busy handler.
    // Retrying with a little jitter, within the busy timeout, resolves it.
    let started = std::time::Instant::now();
    loop {
        match schema::set_up(&mut conn, path) {
            Err(Failure::Sql(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && started.elapsed() < busy_timeout =>
            {
                let pause = rand::random_range(5..50u64);
                std::thread::sleep(Duration::from_millis(pause));
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(conn),
        }
    }
}

/// What went wrong inside a blocking operation; turned into a [`LeaseError`] naming the file.
#[derive(Debug)]
enum Failure {
    Sql(rusqlite::Error),
    /// The file is a database, but not one this version may use.
    Schema(String),
    /// The database file was deleted while in use, and its `-wal`/`-shm` files were left.
    Gone,
    /// A lease row that this library would not have written.
    BadRecord {
        name: String,
        detail: String,
    },
    Closed,
    /// The store was opened by the parent of this forked process.
    Forked,
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl Failure {
    fn bad_record(name: &str, detail: &str) -> Self {
        Self::BadRecord {
            name: name.to_owned(),
            detail: detail.to_owned(),
        }
    }

    fn into_error(self, path: &Path, busy_timeout: Duration) -> LeaseError {
        let p = path.display();
        let (kind, message) = match self {
            Self::Schema(detail) => (
                BackendErrorKind::Other,
                format!("SQLite database {p} {detail}"),
            ),
            Self::BadRecord { name, detail } => (
                BackendErrorKind::WrongType,
                format!(
                    "SQLite database {p} holds a record for lease '{name}' that is not a lease written by distributed-leasing: {detail}; force-release the lease to clear it"
                ),
            ),
            Self::Forked => (
                BackendErrorKind::Other,
                format!(
                    "SQLite database {p}: this store was opened before fork() and belongs to the parent process; open a new one (a new client) in the child"
                ),
            ),
            Self::Closed => (
                BackendErrorKind::Other,
                format!("SQLite database {p}: the store is closed; open it again"),
            ),
            Self::Gone => (
                BackendErrorKind::Other,
                format!(
                    "SQLite database {p} was deleted while in use, but its {p}-wal and {p}-shm files were left: every lease held in it is lost; stop the processes using it, delete those two files as well, and start again (fencing tokens then restart at 1)"
                ),
            ),
            Self::Sql(e) => sql_error(&e, path, busy_timeout),
        };
        LeaseError::backend(kind, message)
    }
}

/// Names the file and says what to do; rusqlite's messages carry no secrets, but also no path.
fn sql_error(
    e: &rusqlite::Error,
    path: &Path,
    busy_timeout: Duration,
) -> (BackendErrorKind, String) {
    use BackendErrorKind::{Other, Timeout, WrongType};
    let p = path.display();
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => (
                Timeout,
                format!(
                    "SQLite database {p} is locked by another process for more than {}s (operation_timeout); retry, raise operation_timeout, or find the process keeping a write transaction open on it",
                    busy_timeout.as_secs_f64()
                ),
            ),
            ErrorCode::NotADatabase => (
                Other,
                format!(
                    "{p} is not a SQLite database (or it is encrypted or damaged); point the lease store at a new file, or at one created by distributed-leasing"
                ),
            ),
            ErrorCode::CannotOpen => (
                Other,
                format!(
                    "cannot open SQLite database {p}: check the directory exists and is writable by this process"
                ),
            ),
            ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::AuthorizationForStatementDenied => (
                Other,
                format!(
                    "SQLite database {p} is read-only for this process: it needs write access to the file and its directory (SQLite writes {p}-wal and {p}-shm beside it)"
                ),
            ),
            ErrorCode::DiskFull => (
                Other,
                format!("cannot write SQLite database {p}: the disk is full; free some space"),
            ),
            ErrorCode::DatabaseCorrupt => (
                Other,
                format!(
                    "SQLite database {p} is damaged; move it aside and use a new file (fencing tokens then start again from 1, so first make sure no resource relies on them)"
                ),
            ),
            ErrorCode::SystemIoFailure | ErrorCode::FileLockingProtocolFailed => (
                Other,
                format!(
                    "disk I/O error on SQLite database {p} ({e}); check the disk, and keep the file on a local filesystem (network filesystems are not supported)"
                ),
            ),
            _ => (Other, format!("SQLite database {p}: {e}")),
        },
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => (
            WrongType,
            format!(
                "SQLite database {p} holds a lease record that distributed-leasing did not write ({e}); use a separate file for leases"
            ),
        ),
        _ => (Other, format!("SQLite database {p}: {e}")),
    }
}

fn join_error(e: &tokio::task::JoinError) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::Other,
        format!("a SQLite lease operation did not finish ({e}); retry it"),
    )
}

/// Now on the wall clock, in ms since the Unix epoch (see the module docs for why this clock).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use rusqlite::TransactionBehavior;

    use super::schema::SCHEMA_VERSION;
    use super::*;
    use crate::error::LostReason;
    use crate::info::LeaseInfo;
    use crate::store::{
        AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore, ReleaseOutcome, RenewOutcome,
    };

    /// A fresh database path in the temp directory, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("leases-test-{}.db", uuid::Uuid::new_v4())))
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    async fn acquire(
        store: &SqliteStore,
        name: &str,
        lease_id: &str,
        duration: Duration,
        metadata: &BTreeMap<String, String>,
    ) -> AcquireOutcome {
        store
            .try_acquire(&AcquireRequest {
                name,
                lease_id,
                duration,
                acquired_at: Utc::now(),
                metadata,
                announce: false,
            })
            .await
            .unwrap()
    }

    fn token(outcome: &AcquireOutcome) -> u64 {
        match outcome {
            AcquireOutcome::Acquired { fencing_token } => *fencing_token,
            AcquireOutcome::Held(h) => panic!("expected Acquired, got Held({h:?})"),
        }
    }

    const LONG: Duration = Duration::from_secs(30);
    const SHORT: Duration = Duration::from_millis(50);
    const PAST_SHORT: Duration = Duration::from_millis(150);

    #[tokio::test]
    async fn acquire_release_reacquire() {
        let db = TempDb::new();
        let store = SqliteStore::open_async(&db.0).await.unwrap();
        assert_eq!(store.kind(), "sqlite");
        let m = meta(&[]);
        let t1 = token(&acquire(&store, "job", "a", LONG, &m).await);
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_eq!(store.inspect("job").await.unwrap(), None);
        let t2 = token(&acquire(&store, "job", "b", LONG, &m).await);
        assert!(t2 > t1);
        assert_eq!(store.inspect("job").await.unwrap().unwrap().lease_id, "b");
    }

    #[tokio::test]
    async fn second_acquirer_sees_holder_with_metadata_and_ttl() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[("instanceId", "us-east-1"), ("region", "us-east")]);
        let t = token(&acquire(&store, "job", "a", LONG, &m).await);
        match acquire(&store, "job", "b", LONG, &meta(&[])).await {
            AcquireOutcome::Held(h) => {
                assert_eq!(h.name, "job");
                assert_eq!(h.lease_id, "a");
                assert_eq!(h.metadata, m);
                assert_eq!(h.fencing_token, Some(t));
                assert!(h.acquired_at.is_some());
                let ttl = h.ttl.unwrap();
                assert!(ttl > Duration::from_secs(25) && ttl <= LONG, "{ttl:?}");
            }
            other @ AcquireOutcome::Acquired { .. } => panic!("expected Held, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn same_id_reacquire_is_refused_as_held() {
        // Two processes presenting one lease id (forked children with a copied generator) must
        // not both be granted the lease.
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[("k", "v")]);
        token(&acquire(&store, "job", "a", LONG, &m).await);
        match acquire(&store, "job", "a", LONG, &m).await {
            AcquireOutcome::Held(h) => assert_eq!(h.lease_id, "a"),
            other @ AcquireOutcome::Acquired { .. } => {
                panic!("a second request with the same lease id was granted: {other:?}")
            }
        }
    }

    #[tokio::test]
    async fn a_deleted_file_is_followed_and_its_leases_are_lost() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let t1 = token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
        // `rm leases.db*`: the file and its write-ahead log.
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.0.clone().into_os_string();
            p.push(suffix);
            std::fs::remove_file(p).unwrap();
        }
        // Another process creates a fresh file at the same path and takes the lease there.
        let other = SqliteStore::open(&db.0).unwrap();
        let t2 = token(&acquire(&other, "job", "b", LONG, &meta(&[])).await);
        assert_eq!(t2, 1, "a fresh file starts its fencing tokens again at 1");
        assert_eq!(t1, 1);
        // The holder on the deleted file is told at its next renewal.
        assert_eq!(
            store.renew("job", "a", LONG).await.unwrap(),
            RenewOutcome::Lost(LostReason::HeldByOther)
        );
        // And from now on this store sees the file the path names.
        assert_eq!(store.inspect("job").await.unwrap().unwrap().lease_id, "b");
    }

    #[tokio::test]
    async fn a_deleted_file_alone_loses_the_lease() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
        // The file alone: its -wal and -shm stay (this connection keeps them open).
        std::fs::remove_file(&db.0).unwrap();
        assert_eq!(
            store.renew("job", "a", LONG).await.unwrap(),
            RenewOutcome::Lost(LostReason::Missing)
        );
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Lost(LostReason::Missing)
        );
        // Nobody is granted a lease in a file beside the old log; the error says what to do.
        let e = acquire_err(&store, "job").await;
        assert!(
            e.contains("was deleted while in use") && e.contains("-wal"),
            "{e}"
        );
        let e = SqliteStore::open(&db.0).unwrap_err().to_string();
        assert!(
            e.contains("was deleted while in use") && e.contains("-wal"),
            "{e}"
        );
    }

    async fn acquire_err(store: &SqliteStore, name: &str) -> String {
        store
            .try_acquire(&AcquireRequest {
                name,
                lease_id: "z",
                duration: LONG,
                acquired_at: Utc::now(),
                metadata: &meta(&[]),
                announce: false,
            })
            .await
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn renew_extends() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", Duration::from_millis(200), &meta(&[])).await);
        assert_eq!(
            store.renew("job", "a", LONG).await.unwrap(),
            RenewOutcome::Renewed
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let info = store.inspect("job").await.unwrap().expect("still held");
        assert!(info.ttl.unwrap() > Duration::from_secs(25));
    }

    #[tokio::test]
    async fn renew_after_expiry_is_lost_missing() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", SHORT, &meta(&[])).await);
        tokio::time::sleep(PAST_SHORT).await;
        assert_eq!(
            store.renew("job", "a", LONG).await.unwrap(),
            RenewOutcome::Lost(LostReason::Missing)
        );
        assert_eq!(
            store.renew("never-held", "a", LONG).await.unwrap(),
            RenewOutcome::Lost(LostReason::Missing)
        );
        assert_eq!(store.inspect("job").await.unwrap(), None);
    }

    #[tokio::test]
    async fn renew_with_foreign_id_is_lost_held_by_other() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
        assert_eq!(
            store.renew("job", "b", LONG).await.unwrap(),
            RenewOutcome::Lost(LostReason::HeldByOther)
        );
        assert_eq!(store.inspect("job").await.unwrap().unwrap().lease_id, "a");
    }

    #[tokio::test]
    async fn release_with_foreign_id_is_refused() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
        assert_eq!(
            store.release("job", "b").await.unwrap(),
            ReleaseOutcome::Lost(LostReason::HeldByOther)
        );
        assert_eq!(store.inspect("job").await.unwrap().unwrap().lease_id, "a");
    }

    #[tokio::test]
    async fn release_is_idempotent() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Lost(LostReason::Missing)
        );
        assert_eq!(
            store.release("never-held", "a").await.unwrap(),
            ReleaseOutcome::Lost(LostReason::Missing)
        );
    }

    #[tokio::test]
    async fn expiry_allows_takeover() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[]);
        let t1 = token(&acquire(&store, "job", "a", SHORT, &m).await);
        tokio::time::sleep(PAST_SHORT).await;
        let t2 = token(&acquire(&store, "job", "b", LONG, &m).await);
        assert!(t2 > t1);
        // The old holder's expired lease is gone for it in every way: another holder has it.
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Lost(LostReason::HeldByOther)
        );
        assert_eq!(store.inspect("job").await.unwrap().unwrap().lease_id, "b");
    }

    #[tokio::test]
    async fn fencing_token_strictly_increases_across_release_expiry_and_force_release() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[]);
        let mut tokens = vec![token(&acquire(&store, "job", "a", LONG, &m).await)];
        assert_eq!(
            store.release("job", "a").await.unwrap(),
            ReleaseOutcome::Released
        );
        tokens.push(token(&acquire(&store, "job", "b", SHORT, &m).await));
        tokio::time::sleep(PAST_SHORT).await;
        tokens.push(token(&acquire(&store, "job", "c", LONG, &m).await));
        assert_eq!(
            store.force_release("job", None).await.unwrap(),
            ForceReleased::Released
        );
        assert_eq!(
            store.force_release("job", None).await.unwrap(),
            ForceReleased::Absent
        );
        tokens.push(token(&acquire(&store, "job", "d", LONG, &m).await));
        // And across reopening the file.
        drop(store);
        let store = SqliteStore::open(&db.0).unwrap();
        assert_eq!(
            store.force_release("job", None).await.unwrap(),
            ForceReleased::Released
        );
        tokens.push(token(&acquire(&store, "job", "e", LONG, &m).await));
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
        // Counters are per name.
        assert_eq!(token(&acquire(&store, "other", "a", LONG, &m).await), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_on_one_file_admit_exactly_one_of_twenty_racers() {
        let db = TempDb::new();
        let stores = [
            SqliteStore::open_async(&db.0).await.unwrap(),
            SqliteStore::open_async(&db.0).await.unwrap(),
        ];
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = stores[i % 2].clone();
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let m = meta(&[("instanceId", &format!("racer-{i}"))]);
                barrier.wait().await;
                acquire(&store, "race", &format!("id-{i}"), LONG, &m).await
            }));
        }
        let mut acquired = 0;
        for t in tasks {
            if let AcquireOutcome::Acquired { fencing_token } = t.await.unwrap() {
                assert_eq!(fencing_token, 1);
                acquired += 1;
            }
        }
        assert_eq!(acquired, 1);
    }

    #[tokio::test]
    async fn names_with_colons_braces_unicode_and_1_kib_round_trip() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        // 512 two-byte characters: exactly the 1 KiB limit, but half as many characters.
        let long = "é".repeat(crate::store::MAX_NAME_LEN / 2);
        assert_eq!(long.len(), crate::store::MAX_NAME_LEN);
        let names = [
            "lease:{critical-section-lock}:fenced",
            "with space and 'quote' \"double\"",
            "日本語/ключ/🔒",
            "100%_done\\",
            long.as_str(),
        ];
        let m = meta(&[]);
        for name in names {
            token(&acquire(&store, name, "a", LONG, &m).await);
            assert_eq!(store.inspect(name).await.unwrap().unwrap().name, name);
        }
        let listed: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        let mut expected: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        assert_eq!(listed, expected);
        for name in names {
            assert_eq!(
                store.release(name, "a").await.unwrap(),
                ReleaseOutcome::Released
            );
        }
    }

    #[tokio::test]
    async fn metadata_round_trips_exactly() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[
            ("a=b", "c=d,e=f"),
            ("comma,key", ""),
            ("multi", "line one\nline two\r\n\ttabbed"),
            ("unicode ключ", "值 🔒 \u{0} nul"),
            ("json", "{\"x\": [1, 2]}"),
            ("quote'\"", "\\backslash\\"),
        ]);
        token(&acquire(&store, "job", "a", LONG, &m).await);
        assert_eq!(store.inspect("job").await.unwrap().unwrap().metadata, m);
        match acquire(&store, "job", "b", LONG, &meta(&[])).await {
            AcquireOutcome::Held(h) => assert_eq!(h.metadata, m),
            other @ AcquireOutcome::Acquired { .. } => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(store.list("job").await.unwrap()[0].metadata, m);
    }

    #[tokio::test]
    async fn list_matches_prefix_literally_and_skips_expired() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        let m = meta(&[]);
        for name in [
            "50%_a", "50%_b", "50%xa", "50X_a", "50%", "5", "60%_a", "Ab",
        ] {
            token(&acquire(&store, name, "a", LONG, &m).await);
        }
        token(&acquire(&store, "50%_expired", "a", SHORT, &m).await);
        tokio::time::sleep(PAST_SHORT).await;
        let names = |v: Vec<LeaseInfo>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
        assert_eq!(names(store.list("50%_").await.unwrap()), ["50%_a", "50%_b"]);
        assert_eq!(
            names(store.list("50%").await.unwrap()),
            ["50%", "50%_a", "50%_b", "50%xa"]
        );
        // Case-sensitive, unlike LIKE.
        assert_eq!(names(store.list("a").await.unwrap()), Vec::<String>::new());
        assert_eq!(store.list("").await.unwrap().len(), 8);
        assert!(store
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|i| i.ttl.unwrap() > Duration::from_secs(25)));
    }

    #[test]
    fn many_openers_of_a_new_file_at_once_all_succeed() {
        // As separate processes starting together would (the demo's simultaneous start).
        for _ in 0..5 {
            let db = TempDb::new();
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            SqliteStore::open(&db.0).map(|_| ())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap().expect("every opener succeeds");
                }
            });
        }
    }

    #[tokio::test]
    async fn non_sqlite_file_is_refused_naming_the_path() {
        let db = TempDb::new();
        std::fs::write(&db.0, "this is not a database\n".repeat(100)).unwrap();
        let err = SqliteStore::open_async(&db.0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&db.0.display().to_string()), "{err}");
        assert!(err.contains("not a SQLite database"), "{err}");
        // Left untouched.
        assert_eq!(
            std::fs::read_to_string(&db.0).unwrap(),
            "this is not a database\n".repeat(100)
        );
    }

    #[tokio::test]
    async fn newer_schema_version_is_refused() {
        let db = TempDb::new();
        drop(SqliteStore::open(&db.0).unwrap());
        Connection::open(&db.0)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = SqliteStore::open(&db.0).unwrap_err().to_string();
        assert!(err.contains(&db.0.display().to_string()), "{err}");
        assert!(err.contains("newer"), "{err}");
    }

    #[tokio::test]
    async fn database_of_another_application_is_refused() {
        let db = TempDb::new();
        Connection::open(&db.0)
            .unwrap()
            .execute_batch("CREATE TABLE leases (x)")
            .unwrap();
        let err = SqliteStore::open(&db.0).unwrap_err().to_string();
        assert!(err.contains("another application"), "{err}");
    }

    #[tokio::test]
    async fn missing_directory_is_refused_not_created() {
        let dir = std::env::temp_dir().join(format!("leases-missing-{}", uuid::Uuid::new_v4()));
        let err = SqliteStore::open(&dir.join("leases.db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn long_write_lock_by_another_process_is_a_clear_timeout() {
        let db = TempDb::new();
        // A client's operation_timeout.
        let store = SqliteStore::open_async_with_timeout(&db.0, Duration::from_millis(100))
            .await
            .unwrap();
        let mut other = Connection::open(&db.0).unwrap();
        let tx = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let err = store
            .try_acquire(&AcquireRequest {
                name: "job",
                lease_id: "a",
                duration: LONG,
                acquired_at: Utc::now(),
                metadata: &meta(&[]),
                announce: false,
            })
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("is locked by another process"), "{msg}");
        assert!(
            msg.contains("for more than 0.1s (operation_timeout)"),
            "{msg}"
        );
        assert!(msg.contains(&db.0.display().to_string()), "{msg}");
        drop(tx);
        token(&acquire(&store, "job", "a", LONG, &meta(&[])).await);
    }
}
