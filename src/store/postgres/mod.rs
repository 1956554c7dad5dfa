//! The PostgreSQL store: leases in two tables of a PostgreSQL database, on the server's clock.
//!
//! [`PostgresStore`] gives the semantics of the Redis store (DESIGN.md §3, §7) to teams whose
//! shared database is PostgreSQL. It owns one connection for statements and, once somebody in this
//! process waits, one more that LISTENs for releases ([`listen`]).
//!
//! Data model (schema `distributed_leasing`, created and versioned on first use):
//! - `leases`: one row per lease, keyed by `(key_prefix, name)`: `lease_id`, `acquired_at` (the
//!   holder's clock, for people), `expires_at` (the SERVER's clock: `now() + duration`) and
//!   `metadata` (jsonb). The client's key prefix is a column rather than part of a table name, so
//!   the tables are fixed (no SQL built from user input) while prefixes still separate namespaces
//!   as they do in Redis.
//! - `fences`: one row per `(key_prefix, name)` ever acquired, never deleted: `last_token`. It
//!   moves only when a lease is taken, in the statement that takes it, so the current holder's
//!   fencing token is always its name's `last_token` (read with a join; not copied into the
//!   lease row, which the same statement could not update twice).
//! - `schema_version`: one row, the version of these tables (1). A newer version is refused.
//!   The DDL runs in a transaction under a transaction-level advisory lock, so processes
//!   starting together on an empty database cannot trip over each other.
//!
//! Invariants:
//! - Every operation is ONE prepared statement (one round trip), in its own implicit
//!   transaction: the acquire inserts the row or takes over an expired one
//!   (`ON CONFLICT ... DO UPDATE ... WHERE expires_at <= now()`, which checks the newest row
//!   version under its row lock, so two acquirers can never both win) and bumps the fence in
//!   the same statement; when it takes nothing, the statement returns the holder.
//! - A row whose `expires_at` is not after `now()` is exactly an absent lease: nobody may renew
//!   or release it, anyone may take it over, `inspect` and `list` do not show it.
//! - `expires_at = 'infinity'` is a lease an administrator pinned: held with no expiry (its TTL
//!   shows as none), kept pinned by its holder's renewals, ended by its holder's release or a
//!   forced release. `'-infinity'` is a released row (below): absent, as any expired one.
//! - The parts of a statement that read (the holder of a refusal, the "held by other" of a lost
//!   renewal) see the snapshot taken when the statement began. If a concurrent change makes that
//!   snapshot disagree with what the writing part found (the holder of a refused acquire is not
//!   in it), the statement is run again, a few times at most; the reported holder is the one of
//!   the statement's start.
//! - A statement whose connection dropped is sent once more on a fresh connection: the acquire
//!   then carries its retry flag (and keeps it for its later runs), which re-admits only the
//!   very request that won (same lease id and `acquired_at`), as the Redis script's ARGV[4];
//!   renew is owner-checked; a release marks the row released (`expires_at = '-infinity'`,
//!   keeping its lease id) rather than deleting it, so its retry recognises its own first
//!   send instead of reporting a loss.
//! - Releases (and forced releases) that end a live lease `pg_notify` the channel
//!   [`listen::CHANNEL`] with `[key_prefix, name]`; the notification is delivered on commit.
//! - Acquires and renewals commit durably (the server's `synchronous_commit`); a release commits
//!   asynchronously (see `RELEASE`): a crash may undo it, never admit a second holder.
//! - The password lives in the `tokio_postgres::Config` only (its `Debug` hides it); messages
//!   name `host:port/database`.

mod listen;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::common::{self, closed_error, error_chain};
use super::{
    validate_metadata, validate_name, AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore,
    ReleaseOutcome, RenewItem, RenewOutcome, TaskSlot,
};
use crate::config::{PgSslMode, PostgresTarget};
use crate::error::{BackendErrorKind, LeaseError, LostReason, Result};
use crate::info::{format_timestamp, parse_timestamp, LeaseInfo};
use crate::wait::{FedBoard, ReleaseWatch};

/// The schema version this code writes and understands.
const SCHEMA_VERSION: i32 = 1;

/// The advisory lock taken around the schema check and DDL: "DLse" in ASCII, as the SQLite
/// store's application id.
const SCHEMA_LOCK: i64 = 0x444C_7365;

/// How often a statement whose reads disagree with its writes (see the module docs) is run.
const ATTEMPTS: usize = 5;

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

/// The columns of a lease as [`StoredLease::from_row`] reads them, from `leases l` joined with
/// `fences f`. The time left is NULL (no expiry) for a row pinned with `expires_at =
/// 'infinity'`; no infinite timestamp is ever subtracted (PostgreSQL refuses: "cannot subtract
/// infinite timestamps").
macro_rules! lease_columns {
    () => {
        r#"l.lease_id,
           to_char(l.acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
           f.last_token,
           l.metadata::text,
           CASE WHEN l.expires_at = 'infinity' THEN NULL
                WHEN l.expires_at > now()
                THEN ceil(extract(epoch FROM l.expires_at - now()) * 1000)::bigint
                ELSE 0 END"#
    };
}

/// `leases l` with its fence, for the lease `($1, $2)` if it is live.
macro_rules! live_lease {
    () => {
        "distributed_leasing.leases l
         LEFT JOIN distributed_leasing.fences f USING (key_prefix, name)
         WHERE l.key_prefix = $1 AND l.name = $2 AND l.expires_at > now()"
    };
}

/// $1 prefix, $2 name, $3 lease id, $4 acquired_at (RFC 3339), $5 duration ms, $6 metadata
/// (JSON text), $7 retry flag. Rows: `(true, token, NULL...)` acquired, or `(false, lease
/// columns)` held; none when the snapshot missed the holder (run again).
const ACQUIRE: &str = concat!(
    "WITH readmit AS (
        UPDATE distributed_leasing.leases
           SET expires_at = now() + $5 * interval '1 millisecond'
         WHERE $7 AND key_prefix = $1 AND name = $2 AND lease_id = $3
           AND acquired_at = $4::timestamptz AND expires_at > now()
        RETURNING 1
    ), readmit_token AS (
        -- A write, so that it reads the newest fence (the won request may have committed
        -- after this statement's snapshot).
        UPDATE distributed_leasing.fences SET last_token = last_token
         WHERE key_prefix = $1 AND name = $2 AND EXISTS (SELECT 1 FROM readmit)
        RETURNING last_token
    ), taken AS (
        INSERT INTO distributed_leasing.leases AS l
               (key_prefix, name, lease_id, acquired_at, expires_at, metadata)
        SELECT $1, $2, $3, $4::timestamptz, now() + $5 * interval '1 millisecond', $6::jsonb
         WHERE NOT EXISTS (SELECT 1 FROM readmit)
        ON CONFLICT (key_prefix, name) DO UPDATE
           SET lease_id = excluded.lease_id, acquired_at = excluded.acquired_at,
               expires_at = excluded.expires_at, metadata = excluded.metadata
         WHERE l.expires_at <= now()
        RETURNING 1
    ), fence AS (
        INSERT INTO distributed_leasing.fences AS f (key_prefix, name, last_token)
        SELECT $1, $2, 1 FROM taken
        ON CONFLICT (key_prefix, name) DO UPDATE SET last_token = f.last_token + 1
        RETURNING last_token
    )
    SELECT true, last_token, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::bigint
      FROM fence
    UNION ALL
    SELECT true, last_token, NULL, NULL, NULL, NULL, NULL FROM readmit_token
    UNION ALL
    SELECT false, NULL, ",
    lease_columns!(),
    " FROM ",
    live_lease!(),
    " AND NOT EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM readmit)"
);

/// $1 prefix, $2 names, $3 lease ids, $4 durations ms. One row per item, in order: renewed,
/// and the live holder's lease id as of the statement's start. A lease pinned by an
/// administrator (`expires_at = 'infinity'`) stays pinned: renewing it sets no expiry.
const RENEW: &str = "WITH items AS (
        SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[])
               WITH ORDINALITY AS i(name, lease_id, ms, ord)
    ), renewed AS (
        UPDATE distributed_leasing.leases l
           SET expires_at = CASE WHEN l.expires_at = 'infinity' THEN l.expires_at
                                 ELSE now() + i.ms * interval '1 millisecond' END
          FROM items i
         WHERE l.key_prefix = $1 AND l.name = i.name AND l.lease_id = i.lease_id
           AND l.expires_at > now()
        RETURNING l.name, l.lease_id
    )
    SELECT EXISTS (SELECT 1 FROM renewed r WHERE r.name = i.name AND r.lease_id = i.lease_id),
           (SELECT c.lease_id FROM distributed_leasing.leases c
             WHERE c.key_prefix = $1 AND c.name = i.name AND c.expires_at > now())
      FROM items i ORDER BY i.ord";

/// $1 prefix, $2 name, $3 lease id, $4 retry flag. Row: released, the live holder's lease id
/// as of the statement's start, notifications.
///
/// A live lease of ours is released by setting its `expires_at` to `-infinity` (absent, as any
/// expired row, to every statement and to older versions of this library), not by deleting
/// it: the row keeps our lease id, so the retry of a release whose reply was lost with a
/// dropped connection (`$4`) recognises its own first send and reports "released" rather than
/// a loss. Nothing else ever writes `-infinity`, and a new holder overwrites the row. That
/// check is a write (a no-op update), so that it reads the newest row version: the first send
/// may commit after this statement's snapshot.
///
/// The release commits asynchronously (`synchronous_commit = off` for its own transaction,
/// set by `set_config(..., true)` in the statement: still one round trip): it does not wait
/// for its write-ahead log to reach the disk, and its waiters are notified that much sooner.
/// A crash can lose such a release: the row is then back as ours, live until its
/// `expires_at`, and the next holder waits out the TTL, as after a holder that died. It can
/// never admit two holders: the handle that released does not renew, and nobody can hold the
/// name on the strength of a lost release, because the write-ahead log is one sequence: a
/// later acquire's durable commit (acquires and renewals stay synchronous) waits until the log
/// is flushed up to its own commit record, which comes after the release's, so once an
/// acquire that took the released row is acknowledged, the release is on disk too. An acquire
/// whose reply a crash lost was never acknowledged: its caller does not hold the lease.
/// The fencing counter is only ever written by acquires, so it never goes back.
const RELEASE: &str = "WITH released AS (
        UPDATE distributed_leasing.leases SET expires_at = '-infinity'
         WHERE key_prefix = $1 AND name = $2 AND lease_id = $3 AND expires_at > now()
        RETURNING 1
    ), released_before AS (
        UPDATE distributed_leasing.leases SET expires_at = expires_at
         WHERE $4 AND key_prefix = $1 AND name = $2 AND lease_id = $3
           AND expires_at = '-infinity' AND NOT EXISTS (SELECT 1 FROM released)
        RETURNING 1
    ), notified AS (
        SELECT pg_notify('distributed_leasing_released', json_build_array($1, $2)::text)
          FROM released
    )
    SELECT EXISTS (SELECT 1 FROM released) OR EXISTS (SELECT 1 FROM released_before),
           (SELECT lease_id FROM distributed_leasing.leases
             WHERE key_prefix = $1 AND name = $2 AND expires_at > now()),
           (SELECT count(*) FROM notified)
      FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit";

/// $1 prefix, $2 name, $3 lease id or NULL (any holder). An expired row goes in any case.
/// Row: released, notifications, then the live lease's columns as of the statement's start.
const FORCE_RELEASE: &str = concat!(
    "WITH current AS (SELECT ",
    lease_columns!(),
    " FROM ",
    live_lease!(),
    "), released AS (
        DELETE FROM distributed_leasing.leases
         WHERE key_prefix = $1 AND name = $2
           AND ($3::text IS NULL OR lease_id = $3 OR expires_at <= now())
        RETURNING expires_at > now() AS live
    ), notified AS (
        SELECT pg_notify('distributed_leasing_released', json_build_array($1, $2)::text)
          FROM released WHERE live
    )
    SELECT COALESCE((SELECT bool_or(live) FROM released), false),
           (SELECT count(*) FROM notified), current.*
      FROM (SELECT 1) AS one LEFT JOIN current ON true"
);

const INSPECT: &str = concat!("SELECT ", lease_columns!(), " FROM ", live_lease!());

/// $1 prefix, $2 name prefix (literal: not LIKE, whose `%` and `_` are wildcards).
const LIST: &str = concat!(
    "SELECT ",
    lease_columns!(),
    ", l.name
       FROM distributed_leasing.leases l
       LEFT JOIN distributed_leasing.fences f USING (key_prefix, name)
      WHERE l.key_prefix = $1 AND l.name >= $2 AND starts_with(l.name, $2)
        AND l.expires_at > now()
      ORDER BY l.name"
);

/// How to open a connection to the server; shared by the statement and listening connections.
#[derive(Clone)]
pub(crate) struct Endpoint {
    config: tokio_postgres::Config,
    /// `None` for `sslmode=disable`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `host:port/database`, for messages.
    addr: String,
    connect_timeout: Duration,
}

/// Where to connect and how the store behaves.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The server, role and database.
    pub target: PostgresTarget,
    /// Namespace of this client's leases (the `key_prefix` column).
    pub key_prefix: String,
    /// Time allowed to connect (TCP, TLS and login).
    pub connect_timeout: Duration,
    /// Time allowed for one operation, the one retry after a dropped connection included.
    pub operation_timeout: Duration,
    /// CA certificate (PEM) for `verify-full`, when not signed by a system root.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Leases in a PostgreSQL database, shared by every process that can reach it.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    prefix: String,
    operation_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    closed: AtomicBool,
    listener: FedBoard,
}

/// The statement connection and its prepared statements.
struct Conn {
    client: Client,
    /// The task that drives the connection; stopped by [`PostgresStore::close`].
    driver: TaskSlot,
    acquire: Statement,
    renew: Statement,
    release: Statement,
    force_release: Statement,
    inspect: Statement,
    list: Statement,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("addr", &self.inner.endpoint.addr)
            .field("key_prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if the database has none, and prepares the statements.
    ///
    /// # Errors
    /// `Backend` naming `host:port/database`: unreachable, authentication or permission refused
    /// (the first use needs the right to create schema `distributed_leasing`), a schema of a
    /// newer version, TLS trust that cannot be built.
    pub async fn connect(options: PostgresOptions) -> Result<Self> {
        let endpoint = Endpoint::new(&options)?;
        let listener = listen::listener(endpoint.clone(), options.key_prefix.clone());
        let store = Self {
            inner: Arc::new(Inner {
                endpoint,
                prefix: options.key_prefix,
                operation_timeout: options.operation_timeout,
                conn: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
                listener,
            }),
        };
        store.inner.conn().await?;
        Ok(store)
    }

    /// Runs `op` on the connection (retrying once, with `retry` true, on a fresh connection if
    /// the connection dropped), within the operation timeout.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Arc<Conn>, bool) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let inner = &self.inner;
        let attempt = async {
            let conn = inner.conn().await?;
            match op(Arc::clone(&conn), false).await {
                Ok(v) => Ok(v),
                Err(e) if dropped(&e, &conn) => {
                    tracing::debug!(addr = %inner.endpoint.addr, "PostgreSQL connection dropped; retrying once");
                    inner.discard(&conn).await;
                    let conn = inner.conn().await?;
                    op(conn, true).await.map_err(|e| inner.endpoint.error(&e))
                }
                Err(e) => Err(inner.endpoint.error(&e)),
            }
        };
        match tokio::time::timeout(inner.operation_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(LeaseError::backend(
                BackendErrorKind::Timeout,
                format!(
                    "PostgreSQL at {} did not answer within {:?}: check the server's load and the network, or raise SyncTimeout",
                    inner.endpoint.addr, inner.operation_timeout
                ),
            )),
        }
    }

    async fn renew_all(&self, items: &[RenewItem<'_>]) -> Result<Vec<RenewOutcome>> {
        let names: Vec<&str> = items.iter().map(|i| i.name).collect();
        let ids: Vec<&str> = items.iter().map(|i| i.lease_id).collect();
        let ms: Vec<i64> = items
            .iter()
            .map(|i| common::millis_i64(i.duration))
            .collect();
        let prefix = self.inner.prefix.as_str();
        let rows = self
            .call(|c, _| {
                let (names, ids, ms) = (&names, &ids, &ms);
                async move { c.client.query(&c.renew, &[&prefix, names, ids, ms]).await }
            })
            .await?;
        if rows.len() != items.len() {
            return Err(LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "PostgreSQL at {}: a batch renewal of {} leases answered {} rows; retry",
                    self.inner.endpoint.addr,
                    items.len(),
                    rows.len()
                ),
            ));
        }
        Ok(items
            .iter()
            .zip(
                rows.iter()
                    .map(|r| (r.get::<_, bool>(0), r.get::<_, Option<String>>(1))),
            )
            .map(|(item, (renewed, holder))| {
                if renewed {
                    RenewOutcome::Renewed
                } else {
                    RenewOutcome::Lost(lost_reason(holder.as_deref(), item.lease_id))
                }
            })
            .collect())
    }
}

/// Why an owner-checked write found nothing of ours: another live holder, or nothing.
fn lost_reason(holder: Option<&str>, ours: &str) -> LostReason {
    match holder {
        Some(h) if h != ours => LostReason::HeldByOther,
        _ => LostReason::Missing,
    }
}

impl Inner {
    /// The statement connection, (re)opened if there is none or it closed.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let conn = Arc::new(self.endpoint.open_statements().await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Forgets `conn` (if it is still the current one), so the next call opens a fresh one.
    async fn discard(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

/// Whether `e` means the connection is gone (so the statement may be sent again elsewhere).
fn dropped(e: &tokio_postgres::Error, conn: &Conn) -> bool {
    if e.is_closed() || conn.client.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // Connection exceptions, and the server shutting down or killing the session.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

impl Endpoint {
    fn new(options: &PostgresOptions) -> Result<Self> {
        let t = &options.target;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&t.host)
            .port(t.port)
            .user(&t.user)
            .application_name("distributed-leasing")
            .connect_timeout(options.connect_timeout);
        if let Some(db) = &t.dbname {
            config.dbname(db);
        }
        if let Some(p) = &t.password {
            config.password(p.expose());
        }
        let addr = t.addr();
        let tls = match t.ssl_mode {
            PgSslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            mode => {
                config.ssl_mode(if mode == PgSslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(tls_connector(mode, options.ca_file.as_deref(), &addr)?)
            }
        };
        Ok(Self {
            config,
            tls,
            addr,
            connect_timeout: options.connect_timeout,
        })
    }

    /// Opens a connection; its messages (notifications) go to `dispatch`, if given, on the task
    /// that drives it.
    async fn open(
        &self,
        dispatch: Option<listen::Dispatch>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>)> {
        let connecting = async {
            match &self.tls {
                None => {
                    let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                    Ok((client, tokio::spawn(listen::drive(conn, dispatch))))
                }
                Some(tls) => {
                    let (client, conn) = self.config.connect(tls.clone()).await?;
                    Ok((client, tokio::spawn(listen::drive(conn, dispatch))))
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(LeaseError::backend(
                BackendErrorKind::Timeout,
                format!(
                    "cannot connect to PostgreSQL at {} within {:?}: check the host, port and network, or raise ConnectTimeout",
                    self.addr, self.connect_timeout
                ),
            )),
        }
    }

    /// A statement connection: opened, schema checked (created on first use), statements
    /// prepared.
    async fn open_statements(&self) -> Result<Conn> {
        let (mut client, driver) = self.open(None).await?;
        self.ensure_schema(&mut client).await?;
        let prepared = async {
            use Type as T;
            Ok::<_, tokio_postgres::Error>((
                client
                    .prepare_typed(
                        ACQUIRE,
                        &[
                            T::TEXT,
                            T::TEXT,
                            T::TEXT,
                            T::TEXT,
                            T::INT8,
                            T::TEXT,
                            T::BOOL,
                        ],
                    )
                    .await?,
                client
                    .prepare_typed(
                        RENEW,
                        &[T::TEXT, T::TEXT_ARRAY, T::TEXT_ARRAY, T::INT8_ARRAY],
                    )
                    .await?,
                client
                    .prepare_typed(RELEASE, &[T::TEXT, T::TEXT, T::TEXT, T::BOOL])
                    .await?,
                client
                    .prepare_typed(FORCE_RELEASE, &[T::TEXT, T::TEXT, T::TEXT])
                    .await?,
                client.prepare_typed(INSPECT, &[T::TEXT, T::TEXT]).await?,
                client.prepare_typed(LIST, &[T::TEXT, T::TEXT]).await?,
            ))
        };
        let (acquire, renew, release, force_release, inspect, list) =
            prepared.await.map_err(|e| self.error(&e))?;
        Ok(Conn {
            client,
            driver: {
                let slot = TaskSlot::default();
                slot.set(driver);
                slot
            },
            acquire,
            renew,
            release,
            force_release,
            inspect,
            list,
        })
    }

    /// Creates the tables if the database has none; refuses a newer schema version. Under an
    /// advisory lock, so concurrent first users wait for each other instead of failing.
    async fn ensure_schema(&self, client: &mut Client) -> Result<()> {
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

    /// A [`LeaseError`] for `e`, naming the server (never the password) and what to do.
    fn error(&self, e: &tokio_postgres::Error) -> LeaseError {
        let addr = &self.addr;
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let (kind, fix) = match code {
                c if c.starts_with("28") => (
                    BackendErrorKind::Auth,
                    "check the user and password in the connection string, and pg_hba.conf",
                ),
                "42501" => (
                    BackendErrorKind::Permission,
                    "the first use needs CREATE on the database (it creates schema distributed_leasing); afterwards the role needs USAGE on that schema and SELECT, INSERT, UPDATE, DELETE on its tables",
                ),
                "57014" => (
                    BackendErrorKind::Timeout,
                    "the statement was cancelled (statement_timeout?): retry, or check the server's load",
                ),
                "3D000" => (
                    BackendErrorKind::Other,
                    "the database does not exist: create it, or fix the database name in the URL",
                ),
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => (
                    BackendErrorKind::Unreachable,
                    "the server closed the connection or is shutting down: retry, and check the server",
                ),
                _ => (BackendErrorKind::Other, "check the server's log"),
            };
            return LeaseError::backend(
                kind,
                format!(
                    "PostgreSQL at {addr}: {} (SQLSTATE {code}): {fix}",
                    db.message()
                ),
            );
        }
        // tokio-postgres' own errors never contain the password (it is only sent, never shown).
        let text = error_chain(e);
        let (kind, fix) = if text.contains("password") || text.starts_with("authentication") {
            (
                BackendErrorKind::Auth,
                "give the password in the URL (postgresql://user:password@host/db)",
            )
        } else if text.contains("timeout") || text.contains("timed out") {
            (
                BackendErrorKind::Timeout,
                "check the host, port and network",
            )
        } else if text.contains("TLS") || text.contains("certificate") || text.contains("tls") {
            (
                BackendErrorKind::Other,
                "check sslmode and, for a private CA, set CaFile to its PEM file",
            )
        } else {
            (
                BackendErrorKind::Unreachable,
                "check that the server is running and the host and port are right",
            )
        };
        LeaseError::backend(kind, format!("PostgreSQL at {addr}: {text}: {fix}"))
    }
}

/// The rustls connector of an `sslmode`: certificates verified for `verify-full` only, as libpq
/// does (`prefer` and `require` encrypt without checking who the server is).
fn tls_connector(
    mode: PgSslMode,
    ca_file: Option<&std::path::Path>,
    addr: &str,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    common::ensure_crypto_provider();
    let config = if mode == PgSslMode::VerifyFull {
        let roots = common::root_store(ca_file).map_err(|e| {
            LeaseError::backend(
                BackendErrorKind::Other,
                format!("TLS to PostgreSQL at {addr}: {e}"),
            )
        })?;
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    } else {
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier))
            .with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `sslmode=prefer|require`: encryption without checking who the server is (libpq's meaning; the
/// handshake signature is still checked, with the process's crypto provider).
#[derive(Debug)]
struct NoVerifier;

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        algorithms().supported_schemes()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::CryptoProvider::get_default().map_or_else(
        || rustls::crypto::ring::default_provider().signature_verification_algorithms,
        |p| p.signature_verification_algorithms,
    )
}

/// A lease row as the statements return it (see `lease_columns!`), from column `at` on.
struct StoredLease {
    lease_id: String,
    acquired_at: Option<String>,
    fencing_token: Option<i64>,
    metadata: String,
    /// `None`: no expiry (pinned with `expires_at = 'infinity'`).
    ttl_ms: Option<i64>,
}

impl StoredLease {
    fn from_row(row: &Row, at: usize) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            lease_id: row.try_get(at)?,
            acquired_at: row.try_get(at + 1)?,
            fencing_token: row.try_get(at + 2)?,
            metadata: row.try_get(at + 3)?,
            ttl_ms: row.try_get(at + 4)?,
        })
    }

    fn into_info(self, name: String) -> Result<LeaseInfo> {
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(&self.metadata).map_err(|e| {
                LeaseError::backend(
                    BackendErrorKind::WrongType,
                    format!(
                        "the PostgreSQL lease row of {name:?} has metadata that is not a JSON object of strings ({e}); it was not written by distributed-leasing: force-release it"
                    ),
                )
            })?;
        Ok(LeaseInfo {
            name,
            lease_id: self.lease_id,
            acquired_at: self.acquired_at.as_deref().and_then(parse_timestamp),
            fencing_token: self.fencing_token.and_then(|t| u64::try_from(t).ok()),
            metadata,
            ttl: self
                .ttl_ms
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            orphan: false,
        })
    }
}

fn inconsistent(addr: &str, what: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::Other,
        format!(
            "PostgreSQL at {addr}: the {what} kept changing hands while it was read ({ATTEMPTS} attempts); retry"
        ),
    )
}

#[async_trait]
impl LeaseStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        validate_name(req.name)?;
        validate_metadata(req.metadata)?;
        if req
            .metadata
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(LeaseError::InvalidArgument(
                "lease metadata contains a NUL character, which PostgreSQL cannot store; remove it"
                    .into(),
            ));
        }
        let metadata = serde_json::to_string(req.metadata).map_err(|e| {
            LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}"))
        })?;
        let acquired_at = format_timestamp(req.acquired_at);
        let ms = common::millis_i64(req.duration);
        let prefix = self.inner.prefix.as_str();
        // Once a send may have reached the server (its connection dropped), every later one
        // carries the retry flag: a run whose snapshot missed that first send's row must not be
        // followed by one that is refused by it (readmission needs this very lease id and
        // acquired_at, so the flag can only ever readmit this request).
        let sent_before = AtomicBool::new(false);
        for _ in 0..ATTEMPTS {
            let rows = self
                .call(|c, retry| {
                    let (acquired_at, metadata) = (&acquired_at, &metadata);
                    if retry {
                        sent_before.store(true, Ordering::Relaxed);
                    }
                    let retry = retry || sent_before.load(Ordering::Relaxed);
                    async move {
                        c.client
                            .query(
                                &c.acquire,
                                &[
                                    &prefix,
                                    &req.name,
                                    &req.lease_id,
                                    acquired_at,
                                    &ms,
                                    metadata,
                                    &retry,
                                ],
                            )
                            .await
                    }
                })
                .await?;
            let Some(row) = rows.first() else { continue };
            let read = || -> std::result::Result<_, tokio_postgres::Error> {
                if row.try_get::<_, bool>(0)? {
                    Ok(Ok(row.try_get::<_, i64>(1)?))
                } else {
                    Ok(Err(StoredLease::from_row(row, 2)?))
                }
            };
            return match read().map_err(|e| self.inner.endpoint.error(&e))? {
                Ok(token) => Ok(AcquireOutcome::Acquired {
                    fencing_token: u64::try_from(token).unwrap_or(0),
                }),
                Err(held) => Ok(AcquireOutcome::Held(held.into_info(req.name.to_owned())?)),
            };
        }
        Err(inconsistent(&self.inner.endpoint.addr, "lease"))
    }

    fn renews_in_one_request(&self) -> bool {
        true
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        let checked = items.iter().try_for_each(|i| validate_name(i.name));
        match async { checked.map(|()| self.renew_all(items))?.await }.await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => super::failed_batch(items.len(), e),
        }
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        validate_name(name)?;
        let prefix = self.inner.prefix.as_str();
        let row = self
            .call(|c, retry| async move {
                c.client
                    .query_one(&c.release, &[&prefix, &name, &lease_id, &retry])
                    .await
            })
            .await?;
        let released: bool = row.get(0);
        let holder: Option<String> = row.get(1);
        Ok(if released {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::Lost(lost_reason(holder.as_deref(), lease_id))
        })
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        validate_name(name)?;
        let prefix = self.inner.prefix.as_str();
        let row = self
            .call(|c, _| async move { c.client.query_opt(&c.inspect, &[&prefix, &name]).await })
            .await?;
        match row {
            None => Ok(None),
            Some(row) => StoredLease::from_row(&row, 0)
                .map_err(|e| self.inner.endpoint.error(&e))?
                .into_info(name.to_owned())
                .map(Some),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let key_prefix = self.inner.prefix.as_str();
        let rows = self
            .call(|c, _| async move { c.client.query(&c.list, &[&key_prefix, &prefix]).await })
            .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.get(5);
                StoredLease::from_row(row, 0)
                    .map_err(|e| self.inner.endpoint.error(&e))?
                    .into_info(name)
            })
            .collect()
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        validate_name(name)?;
        let prefix = self.inner.prefix.as_str();
        for _ in 0..ATTEMPTS {
            let row = self
                .call(|c, _| async move {
                    c.client
                        .query_one(&c.force_release, &[&prefix, &name, &lease_id])
                        .await
                })
                .await?;
            if row.get::<_, bool>(0) {
                return Ok(ForceReleased::Released);
            }
            let current: Option<String> = row.get(2);
            match current {
                None => return Ok(ForceReleased::Absent),
                // A compare-and-delete: not the holder the administrator was shown.
                Some(holder) if lease_id.is_some_and(|id| id != holder) => {
                    let held = StoredLease::from_row(&row, 2)
                        .map_err(|e| self.inner.endpoint.error(&e))?;
                    return Ok(ForceReleased::HeldByOther(held.into_info(name.to_owned())?));
                }
                // The snapshot showed a holder the delete no longer found: look again.
                Some(_) => {}
            }
        }
        Err(inconsistent(&self.inner.endpoint.addr, "lease"))
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        self.inner.listener.board().join(name)
    }

    async fn close(&self) {
        let conn = {
            let mut slot = self.inner.conn.lock().await;
            self.inner.closed.store(true, Ordering::Release);
            slot.take()
        };
        if let Some(conn) = conn {
            conn.driver.stop().await;
        }
        self.inner.listener.close().await;
    }
}
