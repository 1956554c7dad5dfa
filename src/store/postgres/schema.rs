//! The PostgreSQL store's schema: the tables of schema `distributed_leasing` and the one place
//! that checks their version or creates them, under an advisory lock so that processes starting
//! together on an empty database wait for each other; a newer version is refused.
//!
//! Version 1: `leases`, `fences`, `schema_version`. Version 2 adds `semaphores` (one row per
//! semaphore: its limit, `slots` and token counter), on a database's first semaphore write
//! ([`Endpoint::add_semaphores`]), not when a database is created or opened: a database used
//! for leases alone stays at version 1, which older versions of this library still open.

use tokio_postgres::Client;

use super::Endpoint;
use crate::error::{BackendErrorKind, LeaseError, Result};

/// The newest schema version this code understands: a new database is created at version 1
/// and moves to 2 at its first semaphore write ([`Endpoint::add_semaphores`]).
const SCHEMA_VERSION: i32 = 2;

/// The advisory lock taken around the schema check and DDL: "DLse" in ASCII, as the SQLite
/// store's application id.
const SCHEMA_LOCK: i64 = 0x444C_7365;

const SCHEMA_V1: &str = r#"
    CREATE SCHEMA IF NOT EXISTS distributed_leasing;
    CREATE TABLE distributed_leasing.leases (
        key_prefix  text COLLATE "C" NOT NULL,
        name        text COLLATE "C" NOT NULL,
        lease_id    text        NOT NULL,
        acquired_at timestamptz NOT NULL,  -- the holder's clock, for people
        expires_at  timestamptz NOT NULL,  -- the server's clock: now() + duration
        metadata    jsonb       NOT NULL,  -- an object of strings
        PRIMARY KEY (key_prefix, name)
    );
    -- One row per name ever acquired, never deleted: tokens only grow.
    CREATE TABLE distributed_leasing.fences (
        key_prefix text COLLATE "C" NOT NULL,
        name       text COLLATE "C" NOT NULL,
        last_token bigint NOT NULL CHECK (last_token > 0),
        PRIMARY KEY (key_prefix, name)
    );
    CREATE TABLE distributed_leasing.schema_version (version integer NOT NULL);
    INSERT INTO distributed_leasing.schema_version VALUES (1);
"#;

/// What version 2 adds to version 1: one row per semaphore ever used, never deleted by this
/// library (as `fences`). Its permits are rows of `leases` named `\u{1e}{<name>}\u{1e}<slot>`
/// (`crate::store::permit_record`: the primary key forbids two permits in one slot), each with
/// the `fences` row of its record name holding its token. No CHECK constraints: the acquire
/// checks the row and refuses, naming it, one that this library never writes.
const SCHEMA_V2: &str = r#"
    CREATE TABLE IF NOT EXISTS distributed_leasing.semaphores (
        key_prefix text COLLATE "C" NOT NULL,
        name       text COLLATE "C" NOT NULL,
        lim        bigint NOT NULL,  -- the stored limit, 1..=2147483647
        slots      bigint NOT NULL,  -- the highest limit since the last permit above the limit left
        last_token bigint NOT NULL,  -- the semaphore's one token counter
        PRIMARY KEY (key_prefix, name)
    );
    UPDATE distributed_leasing.schema_version SET version = 2 WHERE version < 2;
"#;

/// Whether the semaphores' table exists (version 2).
pub(super) const SEMAPHORES_EXIST: &str =
    "SELECT to_regclass('distributed_leasing.semaphores') IS NOT NULL";

impl Endpoint {
    /// Moves the database to version 2 (the semaphores' table) if it is at 1, on a connection
    /// of its own (the statement connection is shared by concurrent operations), under the
    /// schema's advisory lock.
    pub(super) async fn add_semaphores(&self) -> Result<()> {
        let (mut client, driver) = self.open(None).await?;
        let migrate = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            let version: Option<i32> = tx
                .query_one(
                    "SELECT max(version) FROM distributed_leasing.schema_version",
                    &[],
                )
                .await?
                .get(0);
            if version == Some(1) {
                tx.batch_execute(SCHEMA_V2).await?;
            }
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(())
        };
        let done = migrate.await.map_err(|e| self.error(&e));
        drop(client);
        driver.abort();
        done
    }

    /// Creates the tables if the database has none; refuses a newer schema version. Under an
    /// advisory lock, so concurrent first users wait for each other instead of failing.
    pub(super) async fn ensure_schema(&self, client: &mut Client) -> Result<()> {
        let check = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            let exists: bool = tx
                .query_one(
                    "SELECT to_regclass('distributed_leasing.schema_version') IS NOT NULL",
                    &[],
                )
                .await?
                .get(0);
            let version = if exists {
                tx.query_one(
                    "SELECT max(version) FROM distributed_leasing.schema_version",
                    &[],
                )
                .await?
                .get::<_, Option<i32>>(0)
            } else {
                tx.batch_execute(SCHEMA_V1).await?;
                Some(1)
            };
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(version)
        };
        match check.await.map_err(|e| self.error(&e))? {
            Some(1..=SCHEMA_VERSION) => Ok(()),
            Some(v) if v > SCHEMA_VERSION => Err(LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "PostgreSQL at {}: schema distributed_leasing has version {v}, newer than this version of distributed-leasing understands ({SCHEMA_VERSION}); upgrade distributed-leasing in this program",
                    self.addr
                ),
            )),
            other => Err(LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "PostgreSQL at {}: schema distributed_leasing has an unknown version ({other:?}); it was not written by distributed-leasing: use another database",
                    self.addr
                ),
            )),
        }
    }
}
