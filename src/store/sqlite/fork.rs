//! Fork safety of the embedded store: no SQLite call is in progress while the process forks.
//!
//! SQLite keeps per-process state about the files it has open: global mutexes, and per file the
//! POSIX locks it believes this process holds (`fcntl` locks belong to a process, and a child
//! holds none of its parent's). A child forked while one of its parent's threads was inside
//! SQLite (a renewal, say) inherited a mutex held by a thread that does not exist in the child,
//! or a lock record showing a write in progress; its own new connection to the same file then
//! hung, or failed as "locked by another process" (issue 22: 5 of 30 children hung and 1 failed
//! under a parent renewing 50 leases every 10 ms; 0 of 40 under an idle parent). And even with
//! SQLite idle, the child's own connection shared the lock records of the connection it
//! inherited and so took no lock of its own: when the parent then closed its last connection,
//! SQLite found the file unused and deleted the write-ahead log under the child, and a third
//! process was granted the lease the child held.
//!
//! So every SQLite call of this process runs inside [`enter`] (a count of calls in progress);
//! [`before_fork`] stops new calls and waits, bounded, for those in progress to finish, so the
//! child starts with SQLite idle; [`after_fork_in_parent`] lets calls go on again; and
//! [`after_fork_in_child`] also closes, in the child, the connections inherited from the parent
//! (see `close_inherited` in the parent module), so that the child's own connections do not
//! share their lock records. The bindings call the three around every `os.fork()`
//! (`os.register_at_fork`); the core alone cannot know of a fork.
//!
//! The wait is bounded ([`FORK_WAIT_LIMIT`]): a fork is never held up for longer, even by a call
//! that waits for another process's lock; past the bound the fork goes ahead with a warning, the
//! child leaves the inherited connections alone (never closed: `Drop` leaks a connection opened by
//! another process), and its own connections may then meet the old trouble.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// The longest a fork waits for SQLite calls in progress, and the longest a call waits for a
/// fork to pass before it goes ahead anyway.
pub const FORK_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// SQLite calls in progress in this process.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Forks being prepared (one per thread between [`before_fork`] and the end of its fork): while
/// any is, new calls wait.
static FORKING: AtomicUsize = AtomicUsize::new(0);
/// Whether the last [`before_fork`] saw every call finish (the child may then use SQLite).
static QUIET: AtomicBool = AtomicBool::new(false);

/// A SQLite call in progress; ends when dropped.
pub(super) struct Working(());

/// Marks a SQLite call in progress until the returned guard is dropped; waits first while a
/// fork is being prepared (at most [`FORK_WAIT_LIMIT`], in case the forking thread waits for
/// something this thread holds, such as the GIL).
pub(super) fn enter() -> Working {
    // Counted first, checked second (and the fork side the other way round), so a call and a
    // fork never both go ahead.
    ACTIVE.fetch_add(1, SeqCst);
    if FORKING.load(SeqCst) == 0 {
        return Working(());
    }
    ACTIVE.fetch_sub(1, SeqCst);
    let since = Instant::now();
    loop {
        while FORKING.load(SeqCst) > 0 && since.elapsed() < FORK_WAIT_LIMIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        ACTIVE.fetch_add(1, SeqCst);
        if FORKING.load(SeqCst) == 0 || since.elapsed() >= FORK_WAIT_LIMIT {
            return Working(());
        }
        ACTIVE.fetch_sub(1, SeqCst);
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, SeqCst);
    }
}

/// Call just before `fork()`: stops new SQLite calls of this process and waits (at most
/// [`FORK_WAIT_LIMIT`]) until the calls in progress have finished. Returns whether they did;
/// if not, it logs a warning and the fork should go ahead anyway. Must be followed by
/// [`after_fork_in_parent`] in the parent and [`after_fork_in_child`] in the child. Call it with
/// no lock held that a SQLite call in progress might need (in Python: with the GIL released).
pub fn before_fork() -> bool {
    FORKING.fetch_add(1, SeqCst);
    let until = Instant::now() + FORK_WAIT_LIMIT;
    let mut pause = Duration::from_micros(20);
    while ACTIVE.load(SeqCst) > 0 {
        if Instant::now() >= until {
            QUIET.store(false, SeqCst);
            tracing::warn!(
                in_progress = ACTIVE.load(SeqCst),
                "fork(): SQLite lease operations still in progress after {}s; forking anyway: the child's SQLite lease stores may hang or fail (fork while no lease operation runs, or make clients in a child started before any)",
                FORK_WAIT_LIMIT.as_secs()
            );
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
    QUIET.store(true, SeqCst);
    true
}

/// Call in the parent after `fork()`: SQLite calls go on.
pub fn after_fork_in_parent() {
    // Never below zero, even if called without `before_fork`.
    let _ = FORKING.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
}

/// Call in the child after `fork()`: closes the connections inherited from the parent (only if
/// [`before_fork`] saw SQLite idle; closing in the child drops only the child's copies: POSIX
/// locks belong to a process, so the parent's stay), then lets SQLite calls go on.
pub fn after_fork_in_child() {
    // The threads counted in the parent do not exist here.
    ACTIVE.store(0, SeqCst);
    if QUIET.load(SeqCst) {
        super::close_inherited();
    }
    // Only the forking thread exists here.
    FORKING.store(0, SeqCst);
}
