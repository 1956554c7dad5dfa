//! The SQLite store's lease operations: [`LeaseStore`] for [`SqliteStore`] (acquire, renew,
//! proclaim, release, inspect, list, forced release; the semaphores' are in `semaphore.rs`), each write one `BEGIN IMMEDIATE` transaction on the
//! `leases` and `fences` tables, and the lease row as stored ([`StoredLease`]). The rules they
//! keep are the store's (see [`super`]).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{now_ms, Failure, SqliteStore};
use crate::error::{LeaseError, LostReason, Result};
use crate::info::{format_timestamp, parse_timestamp, LeaseInfo};
use crate::store::{
    common, is_semaphore_record, release_notice_name, AcquireOutcome, AcquireRequest,
    ForceReleased, LeaseStore, PermitOutcome, PermitRequest, ProclaimOutcome, ReleaseOutcome,
    RenewItem, RenewOutcome, SemaphoreInfo,
};
use crate::wait::{Change, ChangeWatch, ReleaseWatch};

pub(super) const SELECT_LEASE: &str =
    "SELECT lease_id, acquired_at, fencing_token, metadata, expires_at FROM leases WHERE name = ?1";

impl SqliteStore {
    /// Renews each `(name, lease id, duration ms)` owned by its lease id, all in one write
    /// transaction (one commit and one fsync for a whole batch of the renewal scheduler).
    async fn renew_all(&self, items: Vec<(String, String, i64)>) -> Result<Vec<RenewOutcome>> {
        let gone = vec![RenewOutcome::Lost(LostReason::Missing); items.len()];
        self.run_or(
            move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_ms();
                let mut outcomes = Vec::with_capacity(items.len());
                for (name, lease_id, duration_ms) in &items {
                    let current: Option<(String, i64)> = tx
                        .prepare_cached("SELECT lease_id, expires_at FROM leases WHERE name = ?1")?
                        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    outcomes.push(match current {
                        None => RenewOutcome::Lost(LostReason::Missing),
                        Some((_, expires_at)) if expires_at <= now => {
                            RenewOutcome::Lost(LostReason::Missing)
                        }
                        Some((holder, _)) if holder != *lease_id => {
                            RenewOutcome::Lost(LostReason::HeldByOther)
                        }
                        Some(_) => {
                            tx.prepare_cached("UPDATE leases SET expires_at = ?2 WHERE name = ?1")?
                                .execute(params![name, now.saturating_add(*duration_ms)])?;
                            RenewOutcome::Renewed
                        }
                    });
                }
                tx.commit()?;
                Ok(outcomes)
            },
            Some(gone),
        )
        .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        let name = req.name.to_owned();
        let lease_id = req.lease_id.to_owned();
        let duration_ms = common::millis_ceil_i64(req.duration);
        let acquired_at = format_timestamp(req.acquired_at);
        let metadata = serde_json::to_string(req.metadata).map_err(|e| {
            LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}"))
        })?;
        let outcome = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // Read the clock only once the write lock is ours: the wait for it may be long.
                let now = now_ms();
                tx.prepare_cached("DELETE FROM leases WHERE expires_at <= ?1")?
                    .execute([now])?;
                let held = tx
                    .prepare_cached(SELECT_LEASE)?
                    .query_row([&name], StoredLease::from_row)
                    .optional()?;
                // A live row is a holder, even one presenting our lease id: lease ids are unique
                // per acquisition, and a request to this store is never retried, so a matching id
                // can only be another process's (a forked child with a copied generator, say).
                let outcome = match held {
                    Some(held) => AcquireOutcome::Held(held.into_info(name.clone(), now)?),
                    None => {
                        let token: i64 = tx
                            .prepare_cached(
                                "INSERT INTO fences (name, last_token) VALUES (?1, 1)
                             ON CONFLICT (name) DO UPDATE SET last_token = last_token + 1
                             RETURNING last_token",
                            )?
                            .query_row([&name], |r| r.get(0))?;
                        let fencing_token = u64::try_from(token).map_err(|_| {
                            Failure::bad_record(&name, "its fencing counter is negative")
                        })?;
                        tx.prepare_cached(
                            "INSERT INTO leases
                             (name, lease_id, acquired_at, fencing_token, metadata, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            name,
                            lease_id,
                            acquired_at,
                            token,
                            metadata,
                            now.saturating_add(duration_ms)
                        ])?;
                        AcquireOutcome::Acquired { fencing_token }
                    }
                };
                tx.commit()?;
                Ok(outcome)
            })
            .await?;
        if req.announce && matches!(outcome, AcquireOutcome::Acquired { .. }) {
            // This process's observers only: other processes' observers poll.
            self.inner.board.changed(req.name, Change::Acquired);
        }
        Ok(outcome)
    }

    fn renews_in_one_request(&self) -> bool {
        true
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        let owned = items
            .iter()
            .map(|i| {
                (
                    i.name.to_owned(),
                    i.lease_id.to_owned(),
                    common::millis_ceil_i64(i.duration),
                )
            })
            .collect();
        match self.renew_all(owned).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => crate::store::failed_batch(items.len(), e),
        }
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        let notified = name.to_owned();
        let name = name.to_owned();
        let lease_id = lease_id.to_owned();
        let outcome = self
            .run_or(
                move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let now = now_ms();
                    // Our own expired row goes too (it is absent in all but storage), but only a
                    // live one counts as released.
                    let expires_at: Option<i64> = tx
                    .prepare_cached(
                        "DELETE FROM leases WHERE name = ?1 AND lease_id = ?2 RETURNING expires_at",
                    )?
                    .query_row([&name, &lease_id], |r| r.get(0))
                    .optional()?;
                    let outcome = if expires_at.is_some_and(|e| e > now) {
                        ReleaseOutcome::Released
                    } else {
                        let other: Option<i64> = tx
                            .prepare_cached("SELECT expires_at FROM leases WHERE name = ?1")?
                            .query_row([&name], |r| r.get(0))
                            .optional()?;
                        if other.is_some_and(|e| e > now) {
                            ReleaseOutcome::Lost(LostReason::HeldByOther)
                        } else {
                            ReleaseOutcome::Lost(LostReason::Missing)
                        }
                    };
                    tx.commit()?;
                    Ok(outcome)
                },
                Some(ReleaseOutcome::Lost(LostReason::Missing)),
            )
            .await?;
        if outcome == ReleaseOutcome::Released {
            self.inner.board.notify(&release_notice_name(&notified));
        }
        Ok(outcome)
    }

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        let notified = name.to_owned();
        let name = name.to_owned();
        let lease_id = lease_id.to_owned();
        let metadata = serde_json::to_string(metadata).map_err(|e| {
            LeaseError::InvalidArgument(format!("lease metadata cannot be stored: {e}"))
        })?;
        let outcome = self
            .run_or(
                move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let now = now_ms();
                    let changed = tx
                        .prepare_cached(
                            "UPDATE leases SET metadata = ?3
                         WHERE name = ?1 AND lease_id = ?2 AND expires_at > ?4",
                        )?
                        .execute(params![name, lease_id, metadata, now])?;
                    let outcome = if changed == 1 {
                        ProclaimOutcome::Proclaimed
                    } else {
                        let other: Option<i64> = tx
                            .prepare_cached("SELECT expires_at FROM leases WHERE name = ?1")?
                            .query_row([&name], |r| r.get(0))
                            .optional()?;
                        if other.is_some_and(|e| e > now) {
                            ProclaimOutcome::Lost(LostReason::HeldByOther)
                        } else {
                            ProclaimOutcome::Lost(LostReason::Missing)
                        }
                    };
                    tx.commit()?;
                    Ok(outcome)
                },
                // The database file was deleted under us: the lease is gone.
                Some(ProclaimOutcome::Lost(LostReason::Missing)),
            )
            .await?;
        if outcome == ProclaimOutcome::Proclaimed {
            self.inner.board.changed(&notified, Change::Acquired);
        }
        Ok(outcome)
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let name = name.to_owned();
        // One statement reads one consistent snapshot: no transaction needed.
        self.run(move |conn| {
            let now = now_ms();
            let held = conn
                .prepare_cached(SELECT_LEASE)?
                .query_row([&name], StoredLease::from_row)
                .optional()?;
            match held {
                Some(held) if held.expires_at > now => Ok(Some(held.into_info(name, now)?)),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let prefix = prefix.to_owned();
        // substr() counts characters, not bytes, on text.
        let prefix_chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let now = now_ms();
            // Not LIKE: it treats `%` and `_` in names as wildcards and ignores ASCII case.
            // `name >= prefix` lets the primary key index skip every name sorting before it.
            let mut stmt = conn.prepare_cached(
                "SELECT lease_id, acquired_at, fencing_token, metadata, expires_at, name
                 FROM leases
                 WHERE name >= ?1 AND substr(name, 1, ?2) = ?1 AND expires_at > ?3
                 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![prefix, prefix_chars, now], |r| {
                Ok((r.get::<_, String>(5)?, StoredLease::from_row(r)?))
            })?;
            let mut leases = Vec::new();
            for row in rows {
                let (name, held) = row?;
                // A semaphore's permits are not leases (`semaphore_info` shows them).
                if !is_semaphore_record(&name) {
                    leases.push(held.into_info(name, now)?);
                }
            }
            Ok(leases)
        })
        .await
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        let notified = name.to_owned();
        let name = name.to_owned();
        let lease_id = lease_id.map(str::to_owned);
        let outcome = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_ms();
                let held = tx
                    .prepare_cached(SELECT_LEASE)?
                    .query_row([&name], StoredLease::from_row)
                    .optional()?
                    .filter(|h| h.expires_at > now);
                let outcome = match held {
                    None => ForceReleased::Absent,
                    // A compare-and-delete: not the holder the administrator was shown.
                    Some(h) if lease_id.as_ref().is_some_and(|id| *id != h.lease_id) => {
                        ForceReleased::HeldByOther(h.into_info(name.clone(), now)?)
                    }
                    Some(_) => ForceReleased::Released,
                };
                // The fence row stays: the next holder's token must still be greater. An
                // expired row goes in any case (it is absent in all but storage).
                if !matches!(outcome, ForceReleased::HeldByOther(_)) {
                    tx.prepare_cached("DELETE FROM leases WHERE name = ?1")?
                        .execute([&name])?;
                }
                tx.commit()?;
                Ok(outcome)
            })
            .await?;
        if outcome == ForceReleased::Released {
            self.inner.board.notify(&release_notice_name(&notified));
        }
        Ok(outcome)
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
        self.inner.board.join(name)
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        self.inner.board.observe(name)
    }

    async fn close(&self) {
        self.close_connection().await;
    }
}

/// A lease row as stored.
pub(super) struct StoredLease {
    lease_id: String,
    acquired_at: String,
    /// `None` if the stored value is negative (never written by us).
    fencing_token: Option<u64>,
    metadata: String,
    expires_at: i64,
}

impl StoredLease {
    /// Reads columns 0..=4 in the order of [`SELECT_LEASE`].
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            lease_id: row.get(0)?,
            acquired_at: row.get(1)?,
            fencing_token: row
                .get::<_, Option<i64>>(2)?
                .and_then(|t| u64::try_from(t).ok()),
            metadata: row.get(3)?,
            expires_at: row.get(4)?,
        })
    }

    pub(super) fn into_info(self, name: String, now: i64) -> Result<LeaseInfo, Failure> {
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(&self.metadata).map_err(|e| {
                Failure::bad_record(
                    &name,
                    &format!("its metadata is not a JSON object of strings ({e})"),
                )
            })?;
        let left = u64::try_from(self.expires_at.saturating_sub(now)).unwrap_or(0);
        Ok(LeaseInfo {
            name,
            lease_id: self.lease_id,
            acquired_at: parse_timestamp(&self.acquired_at),
            fencing_token: self.fencing_token,
            metadata,
            ttl: Some(Duration::from_millis(left)),
            orphan: false,
        })
    }
}
