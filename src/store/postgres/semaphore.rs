//! The PostgreSQL store's semaphores: a permit acquire, a semaphore's info and its limit, each
//! one statement (one round trip, its own implicit transaction).
//!
//! A semaphore is a row of `semaphores` (schema version 2, see [`super::schema`]): its limit,
//! `slots` (the highest limit a live permit may still sit below) and its one token counter
//! `last_token`. Its permits are rows of `leases` named [`permit_record`] (lease rows: renewed,
//! released and force-released by the lease statements; the primary key `(key_prefix, name)`
//! forbids two permits in one slot), each with the `fences` row of its record name set to the
//! token it was granted with (so the lease statements, which read a lease's token from its
//! fence, show a permit's). A permit's release is notified as a lease's, under its record's
//! name; the listener tells it to the waiters of the semaphore ([`semaphore_key`], see
//! [`super::listen`]).
//!
//! The acquire ([`ACQUIRE_PERMIT`]) locks the semaphore's row (`FOR UPDATE`: the newest
//! version, and no other acquire or limit change of this semaphore until it commits), checks
//! or uses its limit, reads the live permits of the semaphore in slot order (one range of the
//! primary key: as many rows as permits are held, never the limit), takes the first gap below
//! the limit if fewer than `limit` are live, bumps the counter and writes the slot's row, its
//! expiry on the server's clock. The reads of a statement see the snapshot of its start, which
//! may miss a permit granted while it waited for the lock; so:
//! - while the limit was never lowered (`slots = lim`), every live permit is below the limit,
//!   and the primary key alone keeps them at most `limit`: a slot granted meanwhile makes the
//!   insert conflict (it takes over only an expired row), nothing is taken, and the statement
//!   is run again with a fresh snapshot;
//! - after a lowering (`slots > lim`), the count decides, so a grant needs the snapshot to be
//!   current: its view of the semaphore's row (limit, slots, counter: every grant and limit
//!   change writes it) must equal the locked one, else nothing is taken and the statement is
//!   run again. A release missed by the snapshot only makes a refusal that was true when the
//!   statement began.
//!
//! An acquire sent again after its connection dropped ([`OWN_PERMIT`]) first looks for the
//! permit its lost send may have won (its lease id and acquired_at) and keeps it.
//!
//! A semaphore's first acquire creates its row and is run again (two round trips, once per
//! semaphore). A row of another shape (limits out of range, `slots` below the limit, a
//! negative counter) is refused naming it, and nothing is written.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::lease::StoredLease;
use super::schema::SEMAPHORES_EXIST;
use super::PostgresStore;
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::info::format_timestamp;
use crate::store::{
    common, permit_records_range, PermitOutcome, PermitRequest, SemaphoreHolder, SemaphoreInfo,
    MAX_REPORTED_HOLDERS,
};

/// How often a permit acquire whose snapshot was overtaken (a slot taken meanwhile, a stale
/// count after a lowering, the semaphore's row just created) is run again. Each such run means
/// another acquire of the semaphore succeeded (or its row was created), so the loop only ends
/// here under a storm of acquires; a full semaphore answers at once.
const PERMIT_ATTEMPTS: usize = 32;

/// The live permits of the semaphore `$1`, `$8` (the lowest record name, `\u{1e}{name}\u{1e}`),
/// `$9` (above the highest): their records, slots (NULL for a malformed record name) and lease
/// columns, from the statement's snapshot.
macro_rules! live_permits {
    () => {
        concat!(
            "live AS MATERIALIZED (
        SELECT substr(l.name, length($8) + 1) AS suffix, h.*
          FROM distributed_leasing.leases l
          LEFT JOIN distributed_leasing.fences f USING (key_prefix, name)
         CROSS JOIN LATERAL (SELECT ",
            lease_columns!(),
            ") AS h(lease_id, acquired_at, token, metadata, ttl_ms)
         WHERE l.key_prefix = $1 AND l.name > $8 AND l.name < $9 AND l.expires_at > now()
    ), slotted AS MATERIALIZED (
        SELECT CASE WHEN suffix ~ '^[0-9]{10}$' THEN suffix::bigint END AS slot, *
          FROM live
    )"
        )
    };
}

/// Whether the semaphore row `c` is one this library writes.
macro_rules! valid_row {
    ($c:literal) => {
        concat!(
            "(",
            $c,
            ".lim BETWEEN 1 AND 2147483647 AND ",
            $c,
            ".slots BETWEEN ",
            $c,
            ".lim AND 2147483647 AND ",
            $c,
            ".last_token >= 0)"
        )
    };
}

/// The counter a new semaphore row starts from: the highest token of its slots' fences (0 for a
/// semaphore never used), so that tokens keep increasing if its row was deleted.
macro_rules! first_counter {
    () => {
        "COALESCE((SELECT max(last_token) FROM distributed_leasing.fences
                    WHERE key_prefix = $1 AND name > $8 AND name < $9), 0)"
    };
}

/// $1 prefix, $2 semaphore, $3 limit asked (NULL: the stored one), $4 lease id, $5 acquired_at
/// (RFC 3339), $6 duration ms, $7 metadata (JSON text), $8 and $9 the record names' bounds
/// ([`permit_records_range`]), $10 most holders to return.
///
/// Rows `(kind, a, b, c, lease columns)`: one status row, `acquired` (slot, token), `full`
/// (limit) followed by `holder` rows (slot, lease columns) in slot order, `mismatch` (stored
/// limit), `nolimit`, `retry` (run again: nothing taken), `bad` (limit, slots, counter of a
/// row this library never writes: nothing written), `malformed` (a record of the semaphore
/// whose slot is not 10 digits).
pub(super) const ACQUIRE_PERMIT: &str = concat!(
    "WITH conf AS MATERIALIZED (
        SELECT lim, slots, last_token FROM distributed_leasing.semaphores
         WHERE key_prefix = $1 AND name = $2
           FOR UPDATE
    ), snap AS MATERIALIZED (
        -- The same row as the statement's snapshot has it (conf: the newest, locked).
        SELECT lim, slots, last_token FROM distributed_leasing.semaphores
         WHERE key_prefix = $1 AND name = $2
    ), ",
    live_permits!(),
    ", decision AS MATERIALIZED (
        SELECT c.lim, c.slots, c.last_token,
               CASE WHEN NOT ",
    valid_row!("c"),
    " THEN 'bad'
                    WHEN EXISTS (SELECT 1 FROM slotted WHERE slot IS NULL) THEN 'malformed'
                    WHEN $3::bigint IS NOT NULL AND $3::bigint <> c.lim THEN 'mismatch'
                    WHEN (SELECT count(*) FROM slotted) >= c.lim THEN 'full'
                    WHEN c.slots > c.lim AND NOT EXISTS (
                        SELECT 1 FROM snap s
                         WHERE (s.lim, s.slots, s.last_token) = (c.lim, c.slots, c.last_token))
                    THEN 'retry'
                    ELSE 'take' END AS verdict,
               NOT EXISTS (SELECT 1 FROM slotted WHERE slot >= c.lim) AS none_above
          FROM conf c
    ), choice AS MATERIALIZED (
        -- The first gap of the slots held, in slot order (distinct: the primary key); below
        -- the limit, since fewer than the limit are held.
        SELECT COALESCE(
                 (SELECT min(i) FROM (SELECT slot, row_number() OVER (ORDER BY slot) - 1 AS i
                                        FROM slotted) r
                   WHERE r.slot <> r.i),
                 (SELECT count(*) FROM slotted)) AS slot
          FROM decision WHERE verdict = 'take'
    ), created AS (
        INSERT INTO distributed_leasing.semaphores (key_prefix, name, lim, slots, last_token)
        SELECT $1, $2, $3::bigint, $3::bigint, ",
    first_counter!(),
    "
         WHERE $3::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM conf)
        ON CONFLICT (key_prefix, name) DO NOTHING
        RETURNING 1
    ), taken AS (
        INSERT INTO distributed_leasing.leases AS l
               (key_prefix, name, lease_id, acquired_at, expires_at, metadata)
        SELECT $1, $8 || lpad(slot::text, 10, '0'), $4, $5::timestamptz,
               now() + $6 * interval '1 millisecond', $7::jsonb
          FROM choice
        ON CONFLICT (key_prefix, name) DO UPDATE
           SET lease_id = excluded.lease_id, acquired_at = excluded.acquired_at,
               expires_at = excluded.expires_at, metadata = excluded.metadata
         WHERE l.expires_at <= now()
        RETURNING 1
    ), bump AS (
        -- The row locked above: this updates its newest version.
        UPDATE distributed_leasing.semaphores s
           SET last_token = s.last_token + 1,
               slots = CASE WHEN d.none_above THEN s.lim ELSE s.slots END
          FROM decision d
         WHERE s.key_prefix = $1 AND s.name = $2 AND EXISTS (SELECT 1 FROM taken)
        RETURNING s.last_token
    ), slot_fence AS (
        INSERT INTO distributed_leasing.fences AS f (key_prefix, name, last_token)
        SELECT $1, $8 || lpad(c.slot::text, 10, '0'), b.last_token FROM bump b, choice c
        ON CONFLICT (key_prefix, name) DO UPDATE SET last_token = excluded.last_token
        RETURNING 1
    )
    SELECT CASE WHEN EXISTS (SELECT 1 FROM bump) THEN 'acquired'
                WHEN d.verdict IS NULL AND $3::bigint IS NULL THEN 'nolimit'
                WHEN d.verdict IS NULL OR d.verdict = 'take' THEN 'retry'
                ELSE d.verdict END,
           CASE WHEN EXISTS (SELECT 1 FROM bump) THEN (SELECT slot FROM choice)
                ELSE d.lim END,
           COALESCE((SELECT last_token FROM bump), d.slots),
           d.last_token,
           NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::bigint
      FROM (SELECT 1) AS one LEFT JOIN decision d ON true
    UNION ALL
    (SELECT 'holder', slot, NULL, NULL, lease_id, acquired_at, token, metadata, ttl_ms
       FROM slotted WHERE EXISTS (SELECT 1 FROM decision WHERE verdict = 'full')
      ORDER BY slot LIMIT $10)"
);

/// A resent acquire's own first send (the numbering of [`ACQUIRE_PERMIT`]; $2, $3, $7, $10
/// unused): the live permit of the semaphore with this very request's lease id ($4) AND
/// acquired_at ($5), its expiry re-armed ($6). Row: `acquired` (slot, token), or none.
pub(super) const OWN_PERMIT: &str = "WITH mine AS (
        UPDATE distributed_leasing.leases l
           SET expires_at = now() + $6 * interval '1 millisecond'
         WHERE l.key_prefix = $1 AND l.name > $8 AND l.name < $9 AND l.expires_at > now()
           AND l.lease_id = $4 AND l.acquired_at = $5::timestamptz
        RETURNING l.name
    )
    SELECT 'acquired', substr(m.name, length($8) + 1)::bigint, f.last_token, NULL::bigint
      FROM mine m JOIN distributed_leasing.fences f ON f.key_prefix = $1 AND f.name = m.name";

/// $1 prefix, $2 semaphore, $8, $9 the record names' bounds (the numbering of
/// [`ACQUIRE_PERMIT`]; $3..$7 unused). Rows: `conf` (limit, slots, counter) if the semaphore
/// exists, then a `holder` row per live permit, in slot order.
pub(super) const SEMAPHORE_INFO: &str = concat!(
    "WITH conf AS (
        SELECT lim, slots, last_token FROM distributed_leasing.semaphores
         WHERE key_prefix = $1 AND name = $2
    ), ",
    live_permits!(),
    "
    SELECT 'conf', lim, slots, last_token,
           NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::bigint
      FROM conf
    UNION ALL
    (SELECT 'holder', slot, NULL, NULL, lease_id, acquired_at, token, metadata, ttl_ms
       FROM slotted WHERE EXISTS (SELECT 1 FROM conf) ORDER BY slot)"
);

/// $1 prefix, $2 semaphore, $3 limit, $8, $9 the record names' bounds. Row: the limit, slots
/// and counter before (NULLs if the statement's snapshot has no row), and whether the row was
/// inserted (NULL: nothing written, the newest row is one this library never writes).
pub(super) const SET_LIMIT: &str = concat!(
    "WITH before AS MATERIALIZED (
        SELECT lim, slots, last_token FROM distributed_leasing.semaphores
         WHERE key_prefix = $1 AND name = $2
           FOR UPDATE
    ), up AS (
        INSERT INTO distributed_leasing.semaphores AS s (key_prefix, name, lim, slots, last_token)
        SELECT $1, $2, $3::bigint, $3::bigint, ",
    first_counter!(),
    "
        ON CONFLICT (key_prefix, name) DO UPDATE
           SET lim = excluded.lim, slots = greatest(s.slots, excluded.lim)
         WHERE ",
    valid_row!("s"),
    "
        RETURNING (xmax = 0) AS inserted
    )
    SELECT b.lim, b.slots, b.last_token, (SELECT inserted FROM up)
      FROM (SELECT 1) AS one LEFT JOIN before b ON true"
);

/// The prepared semaphore statements of a connection, prepared at its first semaphore
/// operation (their table exists from version 2 on).
pub(super) struct PermitStatements {
    acquire: Statement,
    own: Statement,
    info: Statement,
    set_limit: Statement,
}

impl PermitStatements {
    pub(super) async fn prepare(
        client: &Client,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        use Type as T;
        let params = [
            T::TEXT,
            T::TEXT,
            T::INT8,
            T::TEXT,
            T::TEXT,
            T::INT8,
            T::TEXT,
            T::TEXT,
            T::TEXT,
            T::INT8,
        ];
        let (acquire, own, info, set_limit) = futures_util::future::try_join4(
            client.prepare_typed(ACQUIRE_PERMIT, &params),
            client.prepare_typed(OWN_PERMIT, &params),
            client.prepare_typed(SEMAPHORE_INFO, &params),
            client.prepare_typed(SET_LIMIT, &params),
        )
        .await?;
        Ok(Self {
            acquire,
            own,
            info,
            set_limit,
        })
    }
}

/// The status row's numbers and the holders of a result.
struct Answer {
    kind: String,
    numbers: [Option<i64>; 3],
    holders: Vec<(Option<i64>, StoredLease)>,
}

fn read_rows(rows: &[Row]) -> std::result::Result<Option<Answer>, tokio_postgres::Error> {
    let mut answer: Option<Answer> = None;
    let mut holders = Vec::new();
    for row in rows {
        let kind: String = row.try_get(0)?;
        if kind == "holder" {
            holders.push((row.try_get(1)?, StoredLease::from_row(row, 4)?));
        } else {
            answer = Some(Answer {
                kind,
                numbers: [row.try_get(1)?, row.try_get(2)?, row.try_get(3)?],
                holders: Vec::new(),
            });
        }
    }
    Ok(answer.map(|a| Answer { holders, ..a }))
}

impl PostgresStore {
    /// Whether the semaphores' table exists; created (the database moved to version 2) when
    /// `create` and it does not. Once seen, it is not looked for again.
    async fn semaphores_table(&self, create: bool) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.inner.semaphores.load(Ordering::Acquire) {
            return Ok(true);
        }
        let exists: bool = self
            .call(|c, _| async move { c.client.query_one(SEMAPHORES_EXIST, &[]).await })
            .await?
            .get(0);
        if !exists {
            if !create {
                return Ok(false);
            }
            self.inner.endpoint.add_semaphores().await?;
        }
        self.inner.semaphores.store(true, Ordering::Release);
        Ok(true)
    }

    /// Runs one of the semaphore statements with the parameters of [`ACQUIRE_PERMIT`].
    async fn run_permit_statement(
        &self,
        which: fn(&PermitStatements) -> &Statement,
        name: &str,
        limit: Option<i64>,
        acquire: Option<(&PermitRequest<'_>, &str, &str)>,
        resent: Option<&AtomicBool>,
    ) -> Result<Vec<Row>> {
        let prefix = self.inner.prefix.as_str();
        let (low, high) = permit_records_range(name);
        let (lease_id, acquired_at, ms, metadata) = match acquire {
            Some((req, acquired_at, metadata)) => (
                req.lease_id,
                acquired_at,
                common::millis_i64(req.duration),
                metadata,
            ),
            None => ("", "", 0, "{}"),
        };
        let most = i64::try_from(MAX_REPORTED_HOLDERS).unwrap_or(i64::MAX);
        self.call(|c, retry| {
            let (low, high) = (&low, &high);
            async move {
                let st = c
                    .permits
                    .get_or_try_init(|| PermitStatements::prepare(&c.client))
                    .await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
                    &prefix,
                    &name,
                    &limit,
                    &lease_id,
                    &acquired_at,
                    &ms,
                    &metadata,
                    low,
                    high,
                    &most,
                ];
                // An acquire sent again after its connection dropped (and every later run of
                // it) first looks for what its lost send may have won, and keeps it: else it
                // would take a second slot and leave the first held by nobody until it expired.
                if let Some(resent) = resent {
                    if retry {
                        resent.store(true, Ordering::Relaxed);
                    }
                    if resent.load(Ordering::Relaxed) {
                        let own = c.client.query(&st.own, &params).await?;
                        if !own.is_empty() {
                            return Ok(own);
                        }
                    }
                }
                c.client.query(which(st), &params).await
            }
        })
        .await
    }

    /// The error of a semaphore row this library never writes, naming it.
    fn bad_semaphore(&self, name: &str, numbers: [Option<i64>; 3]) -> LeaseError {
        let [lim, slots, counter] = numbers.map(|n| n.map_or("NULL".to_owned(), |n| n.to_string()));
        LeaseError::backend(
            BackendErrorKind::WrongType,
            format!(
                "PostgreSQL at {}: the row of semaphore {name:?} (table distributed_leasing.semaphores, key_prefix {:?}) has limit {lim}, slots {slots} and counter {counter}, which distributed-leasing never writes; nothing was written: delete that row to start the semaphore again (its tokens keep increasing)",
                self.inner.endpoint.addr, self.inner.prefix
            ),
        )
    }

    fn malformed_permit(&self, name: &str) -> LeaseError {
        LeaseError::backend(
            BackendErrorKind::WrongType,
            format!(
                "PostgreSQL at {}: a permit row of semaphore {name:?} (table distributed_leasing.leases, key_prefix {:?}) has a malformed slot, which distributed-leasing never writes; delete it",
                self.inner.endpoint.addr, self.inner.prefix
            ),
        )
    }

    fn holders(
        &self,
        name: &str,
        rows: Vec<(Option<i64>, StoredLease)>,
    ) -> Result<Vec<SemaphoreHolder>> {
        rows.into_iter()
            .map(|(slot, held)| {
                let slot = slot
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| self.malformed_permit(name))?;
                Ok(SemaphoreHolder {
                    slot,
                    info: held.into_info(name.to_owned())?,
                })
            })
            .collect()
    }

    /// The error of an operation whose snapshot was overtaken [`PERMIT_ATTEMPTS`] times.
    fn overtaken(&self) -> LeaseError {
        LeaseError::backend(
            BackendErrorKind::Other,
            format!(
                "PostgreSQL at {}: the semaphore kept changing while it was read ({PERMIT_ATTEMPTS} attempts, each overtaken by another acquire or a limit change); retry",
                self.inner.endpoint.addr
            ),
        )
    }

    fn unexpected(&self, what: &str) -> LeaseError {
        LeaseError::backend(
            BackendErrorKind::Other,
            format!(
                "PostgreSQL at {}: the {what} statement answered rows of an unexpected shape; retry, and check the server's log",
                self.inner.endpoint.addr
            ),
        )
    }

    pub(super) async fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let metadata = super::lease::metadata_json(req.metadata)?;
        let acquired_at = format_timestamp(req.acquired_at);
        if !self.semaphores_table(req.limit.is_some()).await? {
            return Err(no_limit(req.name));
        }
        let limit = req.limit.map(i64::from);
        let number = |n: Option<i64>| -> Result<u32> {
            n.and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.unexpected("permit acquire"))
        };
        // Set once a send's reply was lost with its connection (see `run_permit_statement`).
        let resent = AtomicBool::new(false);
        for _ in 0..PERMIT_ATTEMPTS {
            let rows = self
                .run_permit_statement(
                    |s| &s.acquire,
                    req.name,
                    limit,
                    Some((req, &acquired_at, &metadata)),
                    Some(&resent),
                )
                .await?;
            let answer = read_rows(&rows)
                .map_err(|e| self.inner.endpoint.error(&e))?
                .ok_or_else(|| self.unexpected("permit acquire"))?;
            let [a, b, _] = answer.numbers;
            return match answer.kind.as_str() {
                "acquired" => Ok(PermitOutcome::Acquired {
                    slot: number(a)?,
                    fencing_token: b
                        .and_then(|t| u64::try_from(t).ok())
                        .ok_or_else(|| self.unexpected("permit acquire"))?,
                }),
                "full" => Ok(PermitOutcome::Full {
                    limit: number(a)?,
                    holders: self.holders(req.name, answer.holders)?,
                }),
                "mismatch" => Err(LeaseError::LimitMismatch {
                    name: req.name.to_owned(),
                    stored: number(a)?,
                    asked: req.limit.unwrap_or_default(),
                }),
                "nolimit" => Err(no_limit(req.name)),
                "bad" => Err(self.bad_semaphore(req.name, answer.numbers)),
                "malformed" => Err(self.malformed_permit(req.name)),
                "retry" => continue,
                _ => Err(self.unexpected("permit acquire")),
            };
        }
        Err(self.overtaken())
    }

    pub(super) async fn read_semaphore(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        if !self.semaphores_table(false).await? {
            return Ok(None);
        }
        let rows = self
            .run_permit_statement(|s| &s.info, name, None, None, None)
            .await?;
        let Some(answer) = read_rows(&rows).map_err(|e| self.inner.endpoint.error(&e))? else {
            return Ok(None);
        };
        let limit =
            valid_limit(answer.numbers).ok_or_else(|| self.bad_semaphore(name, answer.numbers))?;
        Ok(Some(SemaphoreInfo {
            name: name.to_owned(),
            limit,
            holders: self.holders(name, answer.holders)?,
        }))
    }

    /// Every semaphore whose name starts with `prefix`, by name: its names in one query, then
    /// each one as [`Self::read_semaphore`] reads it (one named between is left out).
    pub(super) async fn read_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        if !self.semaphores_table(false).await? {
            return Ok(Vec::new());
        }
        let key_prefix = self.inner.prefix.as_str();
        let rows = self
            .call(|c, _| async move {
                c.client
                    .query(
                        "SELECT name FROM distributed_leasing.semaphores
                          WHERE key_prefix = $1 AND name >= $2 AND starts_with(name, $2)
                          ORDER BY name",
                        &[&key_prefix, &prefix],
                    )
                    .await
            })
            .await?;
        let mut listed = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(0).map_err(|e| self.inner.endpoint.error(&e))?;
            if let Some(info) = self.read_semaphore(&name).await? {
                listed.push(info);
            }
        }
        Ok(listed)
    }

    pub(super) async fn store_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        self.semaphores_table(true).await?;
        for _ in 0..PERMIT_ATTEMPTS {
            let rows = self
                .run_permit_statement(|s| &s.set_limit, name, Some(i64::from(limit)), None, None)
                .await?;
            let row = rows.first().ok_or_else(|| self.unexpected("set limit"))?;
            let read = || -> std::result::Result<_, tokio_postgres::Error> {
                Ok((
                    [row.try_get(0)?, row.try_get(1)?, row.try_get(2)?],
                    row.try_get::<_, Option<bool>>(3)?,
                ))
            };
            let (before, inserted) = read().map_err(|e| self.inner.endpoint.error(&e))?;
            return match (before, inserted) {
                // No row in the snapshot and we inserted it: a semaphore never used.
                ([None, ..], Some(true)) => Ok(None),
                ([Some(_), ..], _) => match valid_limit(before) {
                    Some(old) if inserted == Some(false) => Ok(Some(old)),
                    _ => Err(self.bad_semaphore(name, before)),
                },
                // The row appeared after the snapshot (or is not ours): look again.
                _ => continue,
            };
        }
        Err(self.overtaken())
    }
}

/// The limit of a semaphore row `(limit, slots, counter)` this library writes.
fn valid_limit(numbers: [Option<i64>; 3]) -> Option<u32> {
    let [Some(lim), Some(slots), Some(counter)] = numbers else {
        return None;
    };
    let max = i64::from(crate::store::MAX_SEMAPHORE_LIMIT);
    ((1..=max).contains(&lim) && (lim..=max).contains(&slots) && counter >= 0)
        .then(|| u32::try_from(lim).ok())
        .flatten()
}

fn no_limit(name: &str) -> LeaseError {
    LeaseError::InvalidArgument(format!(
        "semaphore {name:?} has no stored limit (it was never used): give its limit"
    ))
}
