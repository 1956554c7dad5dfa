//! The PostgreSQL store's schema: the tables of schema `distributed_leasing` (version 1) and
//! the one place that checks their version or creates them, under an advisory lock so that
//! processes starting together on an empty database wait for each other; a newer version is
//! refused.

use tokio_postgres::Client;

use super::Endpoint;
use crate::error::{BackendErrorKind, LeaseError, Result};

/// The schema version this code writes and understands.
const SCHEMA_VERSION: i32 = 1;

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

impl Endpoint {
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
                Some(SCHEMA_VERSION)
            };
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(version)
        };
        match check.await.map_err(|e| self.error(&e))? {
            Some(SCHEMA_VERSION) => Ok(()),
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
