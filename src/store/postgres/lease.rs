//! The PostgreSQL store's lease operations: the statements (one per operation, each one round
//! trip), [`LeaseStore`] for [`PostgresStore`] on them, and the lease row as they return it
//! ([`StoredLease`]). The rules they keep are the store's (see [`super`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::Row;

use super::PostgresStore;
use crate::error::{BackendErrorKind, LeaseError, LostReason, Result};
use crate::info::{format_timestamp, parse_timestamp, LeaseInfo};
use crate::store::{
    common, failed_batch, is_semaphore_record, AcquireOutcome, AcquireRequest, ForceReleased,
    LeaseStore, PermitOutcome, PermitRequest, ProclaimOutcome, ReleaseOutcome, RenewItem,
    RenewOutcome, SemaphoreInfo,
};
use crate::wait::{ChangeWatch, ReleaseWatch};

/// How often a statement whose reads disagree with its writes (see the module docs) is run.
const ATTEMPTS: usize = 5;

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

/// The acquire statement, with `$notify` (a CTE after `fence`, or nothing) and `$join` (what
/// the granted row joins so that the CTE runs, or nothing).
macro_rules! acquire_statement {
    ($notify:literal, $join:literal) => {
        concat!(
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
    )",
            $notify,
            "
    SELECT true, last_token, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::bigint
      FROM fence",
            $join,
            "
    UNION ALL
    SELECT true, last_token, NULL, NULL, NULL, NULL, NULL FROM readmit_token
    UNION ALL
    SELECT false, NULL, ",
            lease_columns!(),
            " FROM ",
            live_lease!(),
            " AND NOT EXISTS (SELECT 1 FROM taken) AND NOT EXISTS (SELECT 1 FROM readmit)"
        )
    };
}

/// $1 prefix, $2 name, $3 lease id, $4 acquired_at (RFC 3339), $5 duration ms, $6 metadata
/// (JSON text), $7 retry flag. Rows: `(true, token, NULL...)` acquired, or `(false, lease
/// columns)` held; none when the snapshot missed the holder (run again).
pub(super) const ACQUIRE: &str = acquire_statement!("", "");

/// [`ACQUIRE`] that also announces the acquisition to observers (an election's campaign):
/// `pg_notify` of `[key_prefix, name, "acquired"]` when it takes the lease (not when it
/// re-admits its own retry), delivered on commit. A separate statement, so that a plain
/// acquire stays as it is.
pub(super) const ACQUIRE_ANNOUNCED: &str = acquire_statement!(
    ", notified AS (
        SELECT pg_notify('distributed_leasing_released', json_build_array($1, $2, 'acquired')::text)
          FROM fence
    )",
    " CROSS JOIN (SELECT count(*) FROM notified) AS announced"
);

/// $1 prefix, $2 name, $3 lease id, $4 metadata (JSON text). Row: proclaimed, the live
/// holder's lease id as of the statement's start, notifications.
///
/// Only the live lease of `$3` has its metadata replaced (as a whole); its lease id,
/// `acquired_at`, `expires_at` and fence stay. The notification `[key_prefix, name,
/// "proclaimed"]` tells observers (no waiter: older versions ignore a payload of three).
/// Idempotent, so the one resend after a dropped connection is harmless.
pub(super) const PROCLAIM: &str = "WITH proclaimed AS (
        UPDATE distributed_leasing.leases SET metadata = $4::jsonb
         WHERE key_prefix = $1 AND name = $2 AND lease_id = $3 AND expires_at > now()
        RETURNING 1
    ), notified AS (
        SELECT pg_notify('distributed_leasing_released',
                         json_build_array($1, $2, 'proclaimed')::text)
          FROM proclaimed
    )
    SELECT EXISTS (SELECT 1 FROM proclaimed),
           (SELECT lease_id FROM distributed_leasing.leases
             WHERE key_prefix = $1 AND name = $2 AND expires_at > now()),
           (SELECT count(*) FROM notified)";

/// $1 prefix, $2 names, $3 lease ids, $4 durations ms. One row per item, in order: renewed,
/// and the live holder's lease id as of the statement's start. A lease pinned by an
/// administrator (`expires_at = 'infinity'`) stays pinned: renewing it sets no expiry.
pub(super) const RENEW: &str = "WITH items AS (
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
pub(super) const RELEASE: &str = "WITH released AS (
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
pub(super) const FORCE_RELEASE: &str = concat!(
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

pub(super) const INSPECT: &str = concat!("SELECT ", lease_columns!(), " FROM ", live_lease!());

/// $1 prefix, $2 name prefix (literal: not LIKE, whose `%` and `_` are wildcards).
pub(super) const LIST: &str = concat!(
    "SELECT ",
    lease_columns!(),
    ", l.name
       FROM distributed_leasing.leases l
       LEFT JOIN distributed_leasing.fences f USING (key_prefix, name)
      WHERE l.key_prefix = $1 AND l.name >= $2 AND starts_with(l.name, $2)
        AND l.expires_at > now()
      ORDER BY l.name"
);

impl PostgresStore {
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

/// `metadata` as the JSON text the statements store; refused if PostgreSQL cannot store it.
pub(super) fn metadata_json(metadata: &BTreeMap<String, String>) -> Result<String> {
    if metadata
        .iter()
        .any(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(LeaseError::InvalidArgument(
            "lease metadata contains a NUL character, which PostgreSQL cannot store; remove it"
                .into(),
        ));
    }
    serde_json::to_string(metadata)
        .map_err(|e| LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}")))
}

/// Why an owner-checked write found nothing of ours: another live holder, or nothing.
fn lost_reason(holder: Option<&str>, ours: &str) -> LostReason {
    match holder {
        Some(h) if h != ours => LostReason::HeldByOther,
        _ => LostReason::Missing,
    }
}

/// A lease row as the statements return it (see `lease_columns!`), from column `at` on.
pub(super) struct StoredLease {
    lease_id: String,
    acquired_at: Option<String>,
    fencing_token: Option<i64>,
    metadata: String,
    /// `None`: no expiry (pinned with `expires_at = 'infinity'`).
    ttl_ms: Option<i64>,
}

impl StoredLease {
    pub(super) fn from_row(
        row: &Row,
        at: usize,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            lease_id: row.try_get(at)?,
            acquired_at: row.try_get(at + 1)?,
            fencing_token: row.try_get(at + 2)?,
            metadata: row.try_get(at + 3)?,
            ttl_ms: row.try_get(at + 4)?,
        })
    }

    pub(super) fn into_info(self, name: String) -> Result<LeaseInfo> {
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
        let metadata = metadata_json(req.metadata)?;
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
                    let announce = req.announce;
                    async move {
                        // A statement of its own, so that a plain acquire stays as it was.
                        let statement = if announce {
                            &c.acquire_announced
                        } else {
                            &c.acquire
                        };
                        c.client
                            .query(
                                statement,
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
        match self.renew_all(items).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => failed_batch(items.len(), e),
        }
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
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

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        let metadata = metadata_json(metadata)?;
        let prefix = self.inner.prefix.as_str();
        let row = self
            .call(|c, _| {
                let metadata = &metadata;
                async move {
                    c.client
                        .query_one(&c.proclaim, &[&prefix, &name, &lease_id, metadata])
                        .await
                }
            })
            .await?;
        let proclaimed: bool = row.get(0);
        let holder: Option<String> = row.get(1);
        Ok(if proclaimed {
            ProclaimOutcome::Proclaimed
        } else {
            ProclaimOutcome::Lost(lost_reason(holder.as_deref(), lease_id))
        })
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
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
            .filter_map(|row| {
                let name: String = row.get(5);
                // A semaphore's permits are not leases (`semaphore_info` shows them).
                (!is_semaphore_record(&name)).then_some((row, name))
            })
            .map(|(row, name)| {
                StoredLease::from_row(row, 0)
                    .map_err(|e| self.inner.endpoint.error(&e))?
                    .into_info(name)
            })
            .collect()
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
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

    async fn try_acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        self.acquire_permit(req).await
    }

    async fn semaphore_info(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        self.read_semaphore(name).await
    }

    async fn set_semaphore_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        self.store_limit(name, limit).await
    }

    async fn list_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        self.read_semaphores(prefix).await
    }

    fn watch_releases(&self, name: &str) -> ReleaseWatch {
        self.inner.listener.board().join(name)
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        // Releases, proclaims and announced acquisitions are notified; plain acquisitions are
        // not (a plain acquire stays the statement it was).
        self.inner.listener.board().observe(name).with_announced()
    }

    async fn close(&self) {
        self.close_connections().await;
    }
}
