//! The SQLite store's schema: the tables (version 1; version 2 adds the semaphores' table, on a
//! file's first semaphore write, so that a file used for leases alone stays readable by versions
//! that know only version 1), the marks that say a file is ours
//! (`PRAGMA application_id`) and of which version (`PRAGMA user_version`), and the one place
//! that checks them or creates the tables, refusing a file of another application or of a newer
//! schema without altering it.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::Failure;

/// The newest schema this version understands (`PRAGMA user_version`): a new file is created
/// at version 1 and moves to 2 at its first semaphore write ([`ensure_semaphores`]).
pub(super) const SCHEMA_VERSION: i64 = 2;

/// What version 2 adds to version 1: one row per semaphore ever used. Its permits are rows of
/// `leases` named `\u{1e}<name>\u{1e}<slot>` (`crate::store::permit_record`; the primary key
/// forbids two permits in one slot) and its token counter the `fences` row of
/// `\u{1e}<name>`.
const SCHEMA_V2: &str = "
    CREATE TABLE IF NOT EXISTS semaphores (
        name  TEXT    PRIMARY KEY NOT NULL,
        lim   INTEGER NOT NULL,  -- the stored limit, 1..=2147483647
        slots INTEGER NOT NULL   -- the highest limit since the last permit above the limit left
    );
";

/// Moves the file to version 2 if it is at 1: within the caller's write transaction.
pub(super) fn ensure_semaphores(tx: &rusqlite::Transaction<'_>) -> Result<(), Failure> {
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 2 {
        tx.execute_batch(SCHEMA_V2)?;
        tx.pragma_update(None, "user_version", 2)?;
    }
    Ok(())
}

/// `PRAGMA application_id` of our files: "DLse" in ASCII, so `file(1)` and people can tell a
/// leases database from other SQLite files.
const APPLICATION_ID: i64 = 0x444C_7365;

const SCHEMA_V1: &str = "
    CREATE TABLE leases (
        name          TEXT    PRIMARY KEY NOT NULL,
        lease_id      TEXT    NOT NULL,
        acquired_at   TEXT    NOT NULL,  -- 2025-12-25T21:00:00.000Z, holder's clock, for people
        fencing_token INTEGER NOT NULL,
        metadata      TEXT    NOT NULL,  -- JSON object of strings
        expires_at    INTEGER NOT NULL   -- ms since the Unix epoch, this machine's wall clock
    );
    -- Lets an acquire purge expired rows without scanning the table.
    CREATE INDEX leases_expires_at ON leases (expires_at);
    -- One row per name ever acquired, never deleted: tokens only grow.
    CREATE TABLE fences (
        name       TEXT    PRIMARY KEY NOT NULL,
        last_token INTEGER NOT NULL
    );
";

/// Switches to WAL and checks or creates the schema.
pub(super) fn set_up(conn: &mut Connection, path: &Path) -> Result<(), Failure> {
    // WAL: readers (inspect, list) never wait for a writer, and a commit is one append. The mode
    // is stored in the file, so this is a no-op after the first open. It is also the first read
    // of the file, so a file that is not a database fails here.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            "SQLite lease database could not switch to WAL mode; it still works, but readers wait for writers"
        );
    }
    // FULL: a committed fencing token must survive a power cut, or it could be handed out twice.
    conn.pragma_update(None, "synchronous", "FULL")?;

    // Check and create in one write transaction, so two processes opening a new file at once
    // cannot both create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let app_id: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(Failure::Schema(format!(
            "belongs to another application (application_id {app_id:#x}); use a separate file for leases"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Failure::Schema(format!(
            "has schema version {version}, newer than this version of distributed-leasing understands ({SCHEMA_VERSION}); upgrade distributed-leasing in this program, or use another file"
        )));
    }
    if version == 0 {
        let objects: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if objects > 0 {
            return Err(Failure::Schema(
                "is a SQLite database with tables of another application; use a separate file for leases"
                    .to_owned(),
            ));
        }
        tx.execute_batch(SCHEMA_V1)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", 1)?;
    } else if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(Failure::Schema(format!(
            "has unknown schema version {version}; use another file"
        )));
    }
    tx.commit()?;
    Ok(())
}
