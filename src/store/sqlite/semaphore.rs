//! The SQLite store's semaphores: a permit acquire, a semaphore's info and its limit, each one
//! `BEGIN IMMEDIATE` transaction (so two processes on one file are serialised by its write lock).
//!
//! A semaphore is a row of `semaphores` (its limit, and `slots`: the highest limit a live permit
//! may still sit below), its permits rows of `leases` named [`permit_record`] (lease rows:
//! renewed, released and force-released by the lease operations; the primary key forbids two
//! permits in one slot), and its token counter the `fences` row of [`semaphore_key`]. An acquire
//! reads the live permits of its semaphore in slot order (one range of the primary key: as many
//! rows as permits are held, never the limit), takes the first free slot below the limit if
//! fewer than `limit` are live, and writes the slot's row with its expiry on this machine's
//! clock. Reading the live permits rather than the slots is what keeps an acquire cheap at a
//! limit of 2^31 − 1.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::lease::StoredLease;
use super::schema::ensure_semaphores;
use super::{now_ms, Failure, SqliteStore};
use crate::error::{LeaseError, Result};
use crate::info::format_timestamp;
use crate::store::{
    common, parse_permit_record, permit_record, permit_records_range, semaphore_key, PermitOutcome,
    PermitRequest, SemaphoreHolder, SemaphoreInfo, MAX_REPORTED_HOLDERS, MAX_SEMAPHORE_LIMIT,
};

/// What a permit transaction found, before it becomes a result.
enum Step {
    Done(PermitOutcome),
    Mismatch(u32),
    NoLimit,
}

/// The live permits of `name`, by slot (the rows of one range of the primary key).
fn live_permits(
    conn: &rusqlite::Connection,
    name: &str,
    now: i64,
) -> Result<Vec<SemaphoreHolder>, Failure> {
    // Exactly the records of this semaphore (BINARY collation compares bytes).
    let (low, high) = permit_records_range(name);
    let mut stmt = conn.prepare_cached(
        "SELECT lease_id, acquired_at, fencing_token, metadata, expires_at, name FROM leases
         WHERE name > ?1 AND name < ?2 AND expires_at > ?3 ORDER BY name",
    )?;
    let rows = stmt.query_map(params![low, high, now], |r| {
        Ok((r.get::<_, String>(5)?, StoredLease::from_row(r)?))
    })?;
    let mut holders = Vec::new();
    for row in rows {
        let (record, held) = row?;
        let Some((sem, slot)) = parse_permit_record(&record).filter(|(n, _)| *n == name) else {
            return Err(Failure::bad_record(
                name,
                "a permit row of this semaphore has a malformed slot",
            ));
        };
        holders.push(SemaphoreHolder {
            slot,
            info: held.into_info(sem.to_owned(), now)?,
        });
    }
    Ok(holders)
}

/// The stored `(limit, slots)` of `name`, checked.
fn config(conn: &rusqlite::Connection, name: &str) -> Result<Option<(u32, u32)>, Failure> {
    let exists: bool = conn
        .prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'semaphores'")?
        .exists([])?;
    if !exists {
        return Ok(None);
    }
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT lim, slots FROM semaphores WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((lim, slots)) = row else {
        return Ok(None);
    };
    let valid = |v: i64| {
        u32::try_from(v)
            .ok()
            .filter(|v| (1..=MAX_SEMAPHORE_LIMIT).contains(v))
    };
    match (valid(lim), valid(slots)) {
        (Some(lim), Some(slots)) if slots >= lim => Ok(Some((lim, slots))),
        _ => Err(Failure::bad_record(
            name,
            &format!("its semaphore row has limit {lim} and slots {slots}, which distributed-leasing never writes; delete the row of table semaphores to start it again"),
        )),
    }
}

impl SqliteStore {
    pub(super) async fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let name = req.name.to_owned();
        let lease_id = req.lease_id.to_owned();
        let asked = req.limit;
        let duration_ms = common::millis_ceil_i64(req.duration);
        let acquired_at = format_timestamp(req.acquired_at);
        let metadata = serde_json::to_string(req.metadata).map_err(|e| {
            LeaseError::InvalidArgument(format!("permit metadata cannot be stored: {e}"))
        })?;
        let step = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_ms();
                let (limit, slots) = match (config(&tx, &name)?, asked) {
                    (Some((stored, _)), Some(asked)) if stored != asked => {
                        return Ok(Step::Mismatch(stored))
                    }
                    (Some(config), _) => config,
                    (None, Some(limit)) => {
                        ensure_semaphores(&tx)?;
                        tx.prepare_cached(
                            "INSERT INTO semaphores (name, lim, slots) VALUES (?1, ?2, ?2)",
                        )?
                        .execute(params![name, limit])?;
                        (limit, limit)
                    }
                    (None, None) => return Ok(Step::NoLimit),
                };
                let live = live_permits(&tx, &name, now)?;
                let count = u32::try_from(live.len()).unwrap_or(u32::MAX);
                if count >= limit {
                    let mut holders = live;
                    holders.truncate(MAX_REPORTED_HOLDERS);
                    return Ok(Step::Done(PermitOutcome::Full { limit, holders }));
                }
                // The first gap in the slots held: below the limit, since fewer are held.
                let mut slot = 0u32;
                for h in &live {
                    if h.slot != slot {
                        break;
                    }
                    slot += 1;
                }
                if slots > limit && live.iter().all(|h| h.slot < limit) {
                    // Nobody above a lowered limit any more.
                    tx.prepare_cached("UPDATE semaphores SET slots = lim WHERE name = ?1")?
                        .execute([&name])?;
                }
                let record = permit_record(&name, slot);
                // An expired row of the slot goes (it is absent in all but storage).
                tx.prepare_cached("DELETE FROM leases WHERE name = ?1")?
                    .execute([&record])?;
                let token: i64 = tx
                    .prepare_cached(
                        "INSERT INTO fences (name, last_token) VALUES (?1, 1)
                         ON CONFLICT (name) DO UPDATE SET last_token = last_token + 1
                         RETURNING last_token",
                    )?
                    .query_row([semaphore_key(&name)], |r| r.get(0))?;
                let fencing_token = u64::try_from(token)
                    .map_err(|_| Failure::bad_record(&name, "its fencing counter is negative"))?;
                tx.prepare_cached(
                    "INSERT INTO leases
                     (name, lease_id, acquired_at, fencing_token, metadata, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    record,
                    lease_id,
                    acquired_at,
                    token,
                    metadata,
                    now.saturating_add(duration_ms)
                ])?;
                tx.commit()?;
                Ok(Step::Done(PermitOutcome::Acquired {
                    slot,
                    fencing_token,
                }))
            })
            .await?;
        match step {
            Step::Done(outcome) => Ok(outcome),
            Step::Mismatch(stored) => Err(LeaseError::LimitMismatch {
                name: req.name.to_owned(),
                stored,
                asked: asked.unwrap_or(stored),
            }),
            Step::NoLimit => Err(LeaseError::InvalidArgument(format!(
                "semaphore {:?} has no stored limit (it was never used): give its limit",
                req.name
            ))),
        }
    }

    pub(super) async fn read_semaphore(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        let name = name.to_owned();
        self.run(move |conn| {
            // One read transaction: the limit and the holders of one snapshot.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let now = now_ms();
            let Some((limit, _)) = config(&tx, &name)? else {
                return Ok(None);
            };
            let holders = live_permits(&tx, &name, now)?;
            Ok(Some(SemaphoreInfo {
                name,
                limit,
                holders,
            }))
        })
        .await
    }

    /// Every semaphore whose name starts with `prefix`, by name: one read transaction.
    pub(super) async fn read_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        let prefix = prefix.to_owned();
        // substr() counts characters, not bytes, on text.
        let prefix_chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let exists: bool = tx
                .prepare_cached(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'semaphores'",
                )?
                .exists([])?;
            if !exists {
                return Ok(Vec::new());
            }
            let now = now_ms();
            // Not LIKE (wildcards, ASCII case); `name >= prefix` lets the key skip ahead.
            let names = tx
                .prepare_cached(
                    "SELECT name FROM semaphores WHERE name >= ?1 AND substr(name, 1, ?2) = ?1
                     ORDER BY name",
                )?
                .query_map(params![prefix, prefix_chars], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut listed = Vec::with_capacity(names.len());
            for name in names {
                if let Some((limit, _)) = config(&tx, &name)? {
                    let holders = live_permits(&tx, &name, now)?;
                    listed.push(SemaphoreInfo {
                        name,
                        limit,
                        holders,
                    });
                }
            }
            Ok(listed)
        })
        .await
    }

    pub(super) async fn store_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        let name = name.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before = config(&tx, &name)?;
            ensure_semaphores(&tx)?;
            let slots = before.map_or(limit, |(_, slots)| slots.max(limit));
            tx.prepare_cached(
                "INSERT INTO semaphores (name, lim, slots) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET lim = excluded.lim, slots = excluded.slots",
            )?
            .execute(params![name, limit, slots])?;
            tx.commit()?;
            Ok(before.map(|(limit, _)| limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use rusqlite::Connection;

    use super::super::tests::TempDb;
    use super::*;
    use crate::store::LeaseStore;

    async fn permit(store: &SqliteStore, name: &str, limit: Option<u32>) -> Result<PermitOutcome> {
        store
            .try_acquire_permit(&PermitRequest {
                name,
                limit,
                lease_id: &uuid::Uuid::new_v4().to_string(),
                duration: Duration::from_secs(30),
                acquired_at: Utc::now(),
                metadata: &BTreeMap::new(),
            })
            .await
    }

    fn user_version(db: &TempDb) -> i64 {
        Connection::open(&db.0)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_on_one_file_admit_exactly_the_limit_of_twenty_racers() {
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
                barrier.wait().await;
                permit(&store, "race", Some(3)).await.unwrap()
            }));
        }
        let mut slots = Vec::new();
        let mut tokens = Vec::new();
        for t in tasks {
            if let PermitOutcome::Acquired {
                slot,
                fencing_token,
            } = t.await.unwrap()
            {
                slots.push(slot);
                tokens.push(fencing_token);
            }
        }
        slots.sort_unstable();
        tokens.sort_unstable();
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(tokens, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_file_moves_to_version_2_at_its_first_semaphore_write_only() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        // Leases alone, and reads of semaphores, leave a file older versions can read.
        assert!(store.semaphore_info("s").await.unwrap().is_none());
        assert!(matches!(
            permit(&store, "s", None).await,
            Err(LeaseError::InvalidArgument(_))
        ));
        assert_eq!(user_version(&db), 1);
        assert!(matches!(
            permit(&store, "s", Some(2)).await.unwrap(),
            PermitOutcome::Acquired { slot: 0, .. }
        ));
        assert_eq!(user_version(&db), 2);
        drop(store);
        // Reopened at version 2: the limit is still there.
        let store = SqliteStore::open(&db.0).unwrap();
        assert_eq!(store.semaphore_info("s").await.unwrap().unwrap().limit, 2);
        // set_limit on a v1 file upgrades it too.
        let db1 = TempDb::new();
        let store1 = SqliteStore::open(&db1.0).unwrap();
        assert_eq!(store1.set_semaphore_limit("t", 4).await.unwrap(), None);
        assert_eq!(user_version(&db1), 2);
    }

    #[tokio::test]
    async fn a_corrupt_semaphore_row_is_a_clear_error_and_nothing_is_written() {
        let db = TempDb::new();
        let store = SqliteStore::open(&db.0).unwrap();
        store.set_semaphore_limit("s", 3).await.unwrap();
        Connection::open(&db.0)
            .unwrap()
            .execute("UPDATE semaphores SET lim = 0 WHERE name = 's'", [])
            .unwrap();
        let err = permit(&store, "s", Some(3)).await.unwrap_err();
        assert!(
            matches!(
                &err,
                LeaseError::Backend {
                    kind: crate::error::BackendErrorKind::WrongType,
                    ..
                }
            ),
            "{err:?}"
        );
        let m = err.to_string();
        assert!(m.contains("limit 0") && m.contains("semaphores"), "{m}");
        let rows: i64 = Connection::open(&db.0)
            .unwrap()
            .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "nothing written");
        assert!(store.semaphore_info("s").await.is_err());
    }
}
