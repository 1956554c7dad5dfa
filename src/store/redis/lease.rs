//! The Redis store's lease operations: the Lua scripts (one per operation, so one round trip,
//! atomic on the server), [`LeaseStore`] for [`RedisStore`] on them, the acquire's arguments
//! kept for its retry, and the reading of their replies. The rules they keep are the store's
//! (see [`super`]).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, ScriptInvocation, Value};

use super::keys::{self, info_from_hash, META_PREFIX};
use super::shared::Call;
use super::{not_a_lease, Conn, RedisStore};
use crate::error::{BackendErrorKind, LeaseError, LostReason, Result};
use crate::info::{format_timestamp, LeaseInfo};
use crate::store::{
    common, is_semaphore_record, parse_permit_record, release_notice_name, semaphore_key,
    AcquireOutcome, AcquireRequest, ForceReleased, LeaseStore, PermitOutcome, PermitRequest,
    ProclaimOutcome, ReleaseOutcome, RenewItem, RenewOutcome, SemaphoreInfo,
};
use crate::wait::{ChangeWatch, ReleaseWatch};

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/acquire.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/renew.lua")));
static RENEW_MANY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/renew_many.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));
static PROCLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/proclaim.lua")));
static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/inspect.lua")));
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/force_release.lua")));

pub(super) fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        other => keys::as_string(other)?.parse().ok(),
    }
}

pub(super) fn unexpected(what: &str, addr: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::Other,
        format!("Redis at {addr} gave an unexpected reply to {what}: is it a Redis-compatible server of version 6 or later?"),
    )
}

#[async_trait]
impl LeaseStore for RedisStore {
    fn kind(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) | Conn::Inline { .. } => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest<'_>) -> Result<AcquireOutcome> {
        let args = Arc::new(AcquireArgs {
            key: self.keys.lease(req.name),
            fence: self.keys.fence(req.name),
            lease_id: req.lease_id.to_owned(),
            millis: millis(req.duration),
            acquired_at: format_timestamp(req.acquired_at),
            announce: req.announce.then(|| self.publish_command()),
            meta: req
                .metadata
                .iter()
                .map(|(k, v)| (format!("{META_PREFIX}{k}"), v.clone()))
                .collect(),
        });
        let for_retry = Arc::clone(&args);
        let call = Call {
            first: args.invocation(false),
            // Built only if the connection drops and the call is retried.
            retry: Some(Box::new(move || for_retry.invocation(true))),
        };
        let key = &args.key;
        // Granted: the bare fencing token (>= 1); refused: {0, pttl, fields}.
        let items = match self.invoke_call(call, key).await? {
            Value::Int(token) if token >= 1 => {
                return Ok(AcquireOutcome::Acquired {
                    fencing_token: token.unsigned_abs(),
                })
            }
            Value::Array(items) => items,
            _ => return Err(unexpected("acquire", &self.addr)),
        };
        match int(items.first()) {
            Some(0) => {
                let pttl = int(items.get(1)).unwrap_or(-1);
                let fields = match items.get(2) {
                    Some(Value::Array(f)) => f.as_slice(),
                    _ => &[],
                };
                Ok(AcquireOutcome::Held(lease_info(
                    req.name, pttl, fields, key,
                )?))
            }
            // Granted over an orphan of the .NET origin: {token, its fields}.
            Some(token) if token >= 1 => {
                let fields = match items.get(1) {
                    Some(Value::Array(f)) => f.as_slice(),
                    _ => &[],
                };
                let orphan = info_from_hash(req.name, -1, fields);
                tracing::warn!(
                    lease = req.name,
                    "lease '{}' was acquired over an orphan at Redis key '{key}': a hash of metadata only (meta_* fields, no TTL) that the .NET origin leaves when its key expired before it wrote its metadata; nobody held it; its metadata was {:?}",
                    req.name,
                    orphan.metadata
                );
                Ok(AcquireOutcome::Acquired {
                    fencing_token: token.unsigned_abs(),
                })
            }
            _ => Err(unexpected("acquire", &self.addr)),
        }
    }

    /// One renew.lua: cheaper than a batch of one (renew_many.lua), and a cluster's
    /// [`Self::renew_many`] is made of these.
    async fn renew(&self, name: &str, lease_id: &str, duration: Duration) -> Result<RenewOutcome> {
        let key = self.keys.lease(name);
        let mut inv = RENEW.key(&key);
        inv.arg(lease_id).arg(millis(duration));
        self.renewal(int(Some(&self.invoke(inv, &key).await?)), &key)
    }

    fn renews_in_one_request(&self) -> bool {
        // One script per chunk on a standalone server; a cluster's leases live in different
        // slots, so there each renewal is its own request.
        !matches!(self.conn, Conn::Cluster(_))
    }

    async fn renew_many(&self, items: &[RenewItem<'_>]) -> Vec<Result<RenewOutcome>> {
        // One script per chunk on a standalone server; a cluster pipelines single renewals
        // (the leases' keys live in different slots).
        const CHUNK: usize = 256;
        if matches!(self.conn, Conn::Cluster(_)) {
            return crate::store::renew_each(self, items).await;
        }
        let chunks = items.chunks(CHUNK).map(|chunk| async move {
            let keys: Vec<String> = chunk.iter().map(|i| self.keys.lease(i.name)).collect();
            let mut inv = RENEW_MANY.prepare_invoke();
            for (item, key) in chunk.iter().zip(&keys) {
                inv.key(key).arg(item.lease_id).arg(millis(item.duration));
            }
            match self.invoke(inv, &keys[0]).await {
                Ok(Value::Array(codes)) if codes.len() == chunk.len() => codes
                    .iter()
                    .zip(&keys)
                    .map(|(code, key)| self.renewal(int(Some(code)), key))
                    .collect::<Vec<_>>(),
                Ok(_) => chunk
                    .iter()
                    .map(|_| Err(unexpected("renew", &self.addr)))
                    .collect(),
                Err(e) => {
                    let message = e.to_string();
                    let kind = match &e {
                        LeaseError::Backend { kind, .. } => *kind,
                        _ => BackendErrorKind::Other,
                    };
                    chunk
                        .iter()
                        .map(|_| Err(LeaseError::backend(kind, message.clone())))
                        .collect()
                }
            }
        });
        futures_util::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn release(&self, name: &str, lease_id: &str) -> Result<ReleaseOutcome> {
        let key = self.keys.lease(name);
        let mut inv = RELEASE.key(&key);
        inv.arg(lease_id);
        let cluster = matches!(self.conn, Conn::Cluster(_));
        if let Some((semaphore, _)) = parse_permit_record(name) {
            // A permit: its semaphore's waiters are told, on the semaphore's channel.
            inv.arg(if cluster { "S" } else { "P" })
                .arg(self.keys.released(&semaphore_key(semaphore)));
        } else if cluster {
            // SPUBLISH; the script derives the channel from the key (`keys.released`).
            inv.arg("S");
        }
        match int(Some(&self.invoke(inv, &key).await?)) {
            Some(1) => Ok(ReleaseOutcome::Released),
            Some(0) => Ok(ReleaseOutcome::Lost(LostReason::Missing)),
            Some(-1) => Ok(ReleaseOutcome::Lost(LostReason::HeldByOther)),
            _ => Err(unexpected("release", &self.addr)),
        }
    }

    async fn proclaim(
        &self,
        name: &str,
        lease_id: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Result<ProclaimOutcome> {
        let key = self.keys.lease(name);
        let mut inv = PROCLAIM.key(&key);
        inv.arg(lease_id).arg(match self.publish_command() {
            "SPUBLISH" => "S",
            _ => "P",
        });
        for (k, v) in metadata {
            inv.arg(format!("{META_PREFIX}{k}")).arg(v);
        }
        match int(Some(&self.invoke(inv, &key).await?)) {
            Some(1) => Ok(ProclaimOutcome::Proclaimed),
            Some(0) => Ok(ProclaimOutcome::Lost(LostReason::Missing)),
            Some(-1) => Ok(ProclaimOutcome::Lost(LostReason::HeldByOther)),
            Some(-2) => {
                tracing::warn!(
                    "Redis key '{key}' of a held lease now holds something other than a lease (WRONGTYPE): the lease is lost (missing); the key was left untouched"
                );
                Ok(ProclaimOutcome::Lost(LostReason::Missing))
            }
            _ => Err(unexpected("proclaim", &self.addr)),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let key = self.keys.lease(name);
        match self.invoke(INSPECT.key(&key), &key).await? {
            Value::Nil => Ok(None),
            Value::Array(items) => {
                let pttl = int(items.first()).unwrap_or(-1);
                let fields = match items.get(1) {
                    Some(Value::Array(f)) => f.as_slice(),
                    _ => &[],
                };
                Ok(Some(lease_info(name, pttl, fields, &key)?))
            }
            _ => Err(unexpected("inspect", &self.addr)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let mut out = Vec::new();
        for key in self.scan_keys(&self.keys.scan_pattern(prefix)).await? {
            // A semaphore's records are not leases (`semaphore_info` shows them).
            let Some(name) = self.keys.name_of(&key).filter(|n| !is_semaphore_record(n)) else {
                continue;
            };
            match self.inspect(&name).await {
                Ok(Some(info)) => out.push(info),
                // Other data under the prefix is not a lease: skip it rather than fail the list.
                Ok(None)
                | Err(LeaseError::Backend {
                    kind: BackendErrorKind::WrongType,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn force_release(&self, name: &str, lease_id: Option<&str>) -> Result<ForceReleased> {
        let key = self.keys.lease(name);
        let mut inv = FORCE_RELEASE.key(&key);
        inv.arg(self.keys.released(&release_notice_name(name)))
            .arg(self.publish_command())
            .arg(lease_id.unwrap_or(""))
            // Shown, even if empty: an orphan's lease id.
            .arg(if lease_id.is_some() { "1" } else { "" });
        let reply = self.invoke(inv, &key).await?;
        let Value::Array(items) = reply else {
            return Err(unexpected("force release", &self.addr));
        };
        match int(items.first()) {
            Some(1) => Ok(ForceReleased::Released),
            Some(0) => Ok(ForceReleased::Absent),
            Some(-1) => {
                let pttl = int(items.get(1)).unwrap_or(-1);
                let fields = match items.get(2) {
                    Some(Value::Array(f)) => f.as_slice(),
                    _ => &[],
                };
                Ok(ForceReleased::HeldByOther(lease_info(
                    name, pttl, fields, &key,
                )?))
            }
            _ => Err(unexpected("force release", &self.addr)),
        }
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
        self.notifier.board().join(&self.keys.released(name))
    }

    fn watch_changes(&self, name: &str) -> ChangeWatch {
        // Releases, proclaims and announced acquisitions are published; plain acquisitions
        // are not (a plain acquire stays one script that publishes nothing).
        self.notifier
            .board()
            .observe(&self.keys.released(name))
            .with_announced()
    }

    async fn close(&self) {
        RedisStore::close(self).await;
    }
}

impl RedisStore {
    /// The outcome of a renewal script's answer for `key` (renew.lua, or one of renew_many.lua).
    /// A key that other data was written over (a hash without a leaseId: 0; another type: -2)
    /// is a lease that is gone, at once: retrying cannot bring it back.
    fn renewal(&self, code: Option<i64>, key: &str) -> Result<RenewOutcome> {
        match code {
            Some(1) => Ok(RenewOutcome::Renewed),
            Some(0) => Ok(RenewOutcome::Lost(LostReason::Missing)),
            Some(-1) => Ok(RenewOutcome::Lost(LostReason::HeldByOther)),
            Some(-2) => {
                tracing::warn!(
                    "Redis key '{key}' of a held lease now holds something other than a lease (WRONGTYPE): the lease is lost (missing); the key was left untouched"
                );
                Ok(RenewOutcome::Lost(LostReason::Missing))
            }
            _ => Err(unexpected("renew", &self.addr)),
        }
    }

    /// Sharded pub/sub on a cluster (the message stays in the lease's shard), plain elsewhere.
    fn publish_command(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) | Conn::Inline { .. } => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }
}

/// The arguments of one acquire, owned, so that the retry's invocation can be built later.
struct AcquireArgs {
    key: String,
    fence: String,
    lease_id: String,
    millis: u64,
    acquired_at: String,
    /// The command that announces the acquisition to observers, if it is to be announced.
    announce: Option<&'static str>,
    /// `(meta_<key>, value)`
    meta: Vec<(String, String)>,
}

impl AcquireArgs {
    /// The acquire script's invocation; `retry` sets its retry flag (ARGV[4], prefixed with
    /// the announcing command's letter when announced).
    fn invocation(&self, retry: bool) -> ScriptInvocation<'static> {
        let flags = match (self.announce, retry) {
            (None, false) => "0",
            (None, true) => "1",
            (Some("SPUBLISH"), false) => "S0",
            (Some("SPUBLISH"), true) => "S1",
            (Some(_), false) => "P0",
            (Some(_), true) => "P1",
        };
        let mut inv = ACQUIRE.key(&self.key);
        inv.key(&self.fence)
            .arg(&self.lease_id)
            .arg(self.millis)
            .arg(&self.acquired_at)
            .arg(flags);
        for (k, v) in &self.meta {
            inv.arg(k).arg(v);
        }
        inv
    }
}

/// A lease read from its hash, an orphan of the .NET origin (see [`keys::is_orphan`]), or
/// `WrongType` if the hash lacks the lease fields (someone else's data under the prefix: never
/// treated as a lease, never deleted).
pub(super) fn lease_info(name: &str, pttl: i64, fields: &[Value], key: &str) -> Result<LeaseInfo> {
    let has = |field: &str| {
        fields
            .chunks(2)
            .any(|kv| keys::as_string(&kv[0]).as_deref() == Some(field))
    };
    if !has("leaseId") || !has("acquiredAt") {
        if keys::is_orphan(pttl, fields) {
            return Ok(LeaseInfo {
                orphan: true,
                ..info_from_hash(name, pttl, fields)
            });
        }
        return Err(not_a_lease(key));
    }
    Ok(info_from_hash(name, pttl, fields))
}

/// The PEXPIRE time of a lease duration: whole milliseconds, at least 1.
pub(super) fn millis(d: Duration) -> u64 {
    common::millis(d).max(1)
}
