//! The Redis store's semaphores: a config hash `{limit, slots, top}` at the key of
//! [`semaphore_key`], its fencing counter beside it, and one lease hash per held slot at the
//! key of [`crate::store::permit_record`] (the sample's fields: each permit reads like a lease,
//! and is renewed, released and force-released by the lease scripts). On a cluster, every key
//! of one semaphore shares one hash tag, so one script reaches them all.
//!
//! An acquire is one script (`lua/permit.lua`): check or store the limit, find the first free
//! slot (stopping there while the limit was never lowered: O(held), never O(limit)), take the
//! token, write and expire the slot's hash on the server's clock; a refusal returns the
//! holders, at most [`MAX_REPORTED_HOLDERS`]. A permit's release is told on the semaphore's
//! channel (`release.lua` with the channel given), which its waiters subscribe to.
//! [`LeaseStore::semaphore_info`](crate::store::LeaseStore::semaphore_info) reads the config,
//! then SCANs for the slot keys (an administrator's read: its cost is the keyspace's);
//! [`LeaseStore::list_semaphores`](crate::store::LeaseStore::list_semaphores) finds the config
//! hashes and slot keys of every semaphore under a prefix in one SCAN, then reads them.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use redis::{Script, ScriptInvocation, Value};

use super::lease::{int, lease_info, millis, unexpected};
use super::shared::Call;
use super::RedisStore;
use crate::error::{LeaseError, Result};
use crate::info::format_timestamp;
use crate::store::{
    parse_permit_record, parse_semaphore_key, permit_record, semaphore_key, LeaseStore,
    PermitOutcome, PermitRequest, SemaphoreHolder, SemaphoreInfo, MAX_REPORTED_HOLDERS,
    SEMAPHORE_MARK,
};

static PERMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/permit.lua")));
static LIMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/semaphore_limit.lua")));

fn array(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

impl RedisStore {
    pub(super) async fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let config = self.keys.lease(&semaphore_key(req.name));
        let (base, suffix) = self.keys.permit_parts(req.name);
        let args = Arc::new(PermitArgs {
            config: config.clone(),
            fence: self.keys.fence(&semaphore_key(req.name)),
            base,
            suffix,
            limit: req.limit.map_or_else(String::new, |l| l.to_string()),
            lease_id: req.lease_id.to_owned(),
            millis: millis(req.duration),
            acquired_at: format_timestamp(req.acquired_at),
            meta: req
                .metadata
                .iter()
                .map(|(k, v)| (format!("{}{k}", super::keys::META_PREFIX), v.clone()))
                .collect(),
        });
        let for_retry = Arc::clone(&args);
        // A retry after a dropped connection says so: if the first send won (its reply lost),
        // the script finds that slot and keeps it, rather than taking a second one and leaving
        // the first held by nobody until it expires.
        let call = Call {
            first: args.invocation(false),
            retry: Some(Box::new(move || for_retry.invocation(true))),
        };
        let reply = self.invoke_call(call, &config).await?;
        let items = array(Some(&reply));
        let bad = || unexpected("permit acquire", &self.addr);
        let number = |i: usize| int(items.get(i)).ok_or_else(bad);
        let limit_at = |i: usize| -> Result<u32> { u32::try_from(number(i)?).map_err(|_| bad()) };
        match number(0)? {
            1 => Ok(PermitOutcome::Acquired {
                slot: limit_at(1)?,
                fencing_token: u64::try_from(number(2)?).map_err(|_| bad())?,
            }),
            0 => {
                let limit = limit_at(1)?;
                let mut holders = Vec::new();
                for h in array(items.get(2)) {
                    let h = array(Some(h));
                    let slot = int(h.first())
                        .and_then(|s| u32::try_from(s).ok())
                        .ok_or_else(bad)?;
                    let pttl = int(h.get(1)).unwrap_or(-1);
                    let key = self.keys.lease(&permit_record(req.name, slot));
                    let info = lease_info(req.name, pttl, array(h.get(2)), &key)?;
                    holders.push(SemaphoreHolder { slot, info });
                }
                Ok(PermitOutcome::Full { limit, holders })
            }
            -1 => Err(LeaseError::LimitMismatch {
                name: req.name.to_owned(),
                stored: limit_at(1)?,
                asked: req.limit.unwrap_or_default(),
            }),
            -2 => Err(LeaseError::InvalidArgument(format!(
                "semaphore {:?} has no stored limit (it was never used): give its limit",
                req.name
            ))),
            _ => Err(bad()),
        }
    }

    /// The stored `(limit, slots)` of `name`, after storing `set` as its limit if given.
    async fn semaphore_config(&self, name: &str, set: Option<u32>) -> Result<Option<u32>> {
        let config = self.keys.lease(&semaphore_key(name));
        let mut inv = LIMIT.key(&config);
        inv.arg(set.map_or_else(String::new, |l| l.to_string()));
        let reply = self.invoke(inv, &config).await?;
        let items = array(Some(&reply));
        if items.is_empty() {
            return Ok(None);
        }
        int(items.first())
            .and_then(|l| u32::try_from(l).ok())
            .map(Some)
            .ok_or_else(|| unexpected("semaphore limit", &self.addr))
    }

    pub(super) async fn read_semaphore(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        let Some(limit) = self.semaphore_config(name, None).await? else {
            return Ok(None);
        };
        let (base, _) = self.keys.permit_parts(name);
        let slots = self
            .scan_keys(&self.keys.permit_scan_pattern(name))
            .await?
            .into_iter()
            .filter_map(|key| {
                key.strip_prefix(&base)
                    .and_then(|rest| rest.get(..10))
                    .and_then(|digits| digits.parse::<u32>().ok())
            })
            .collect();
        self.semaphore_of(name, limit, slots).await.map(Some)
    }

    /// The semaphore `name` with its stored `limit` and the live permits among `slots`.
    async fn semaphore_of(&self, name: &str, limit: u32, slots: Vec<u32>) -> Result<SemaphoreInfo> {
        let mut holders = Vec::new();
        for slot in slots {
            if let Some(mut info) = self.inspect(&permit_record(name, slot)).await? {
                name.clone_into(&mut info.name);
                holders.push(SemaphoreHolder { slot, info });
            }
        }
        holders.sort_by_key(|h| h.slot);
        Ok(SemaphoreInfo {
            name: name.to_owned(),
            limit,
            holders,
        })
    }

    /// Every semaphore whose name starts with `prefix`: one SCAN finds the config hashes and
    /// the permits' keys of them all, then each config and permit is read.
    pub(super) async fn read_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        let mut found: BTreeMap<String, (bool, Vec<u32>)> = BTreeMap::new();
        let pattern = self
            .keys
            .scan_pattern(&format!("{SEMAPHORE_MARK}{{{prefix}"));
        for key in self.scan_keys(&pattern).await? {
            let Some(record) = self.keys.name_of(&key) else {
                continue;
            };
            if let Some(name) = parse_semaphore_key(&record) {
                found.entry(name.to_owned()).or_default().0 = true;
            } else if let Some((name, slot)) = parse_permit_record(&record) {
                found.entry(name.to_owned()).or_default().1.push(slot);
            }
        }
        let mut listed = Vec::with_capacity(found.len());
        for (name, (configured, slots)) in found {
            if !configured || !name.starts_with(prefix) {
                continue;
            }
            // Gone since the SCAN: left out.
            if let Some(limit) = self.semaphore_config(&name, None).await? {
                listed.push(self.semaphore_of(&name, limit, slots).await?);
            }
        }
        Ok(listed)
    }

    pub(super) async fn store_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        self.semaphore_config(name, Some(limit)).await
    }
}

/// The arguments of one permit acquire, owned, so that the retry's invocation can be built
/// later (as the lease acquire's `AcquireArgs`).
struct PermitArgs {
    config: String,
    fence: String,
    base: String,
    suffix: &'static str,
    /// The limit asked for, or empty for the stored one.
    limit: String,
    lease_id: String,
    millis: u64,
    acquired_at: String,
    /// `(meta_<key>, value)`
    meta: Vec<(String, String)>,
}

impl PermitArgs {
    /// `permit.lua`'s invocation; `retry` sets its retry flag (ARGV[8]).
    fn invocation(&self, retry: bool) -> ScriptInvocation<'static> {
        let mut inv = PERMIT.key(&self.config);
        inv.key(&self.fence)
            .arg(&self.base)
            .arg(self.suffix)
            .arg(&self.limit)
            .arg(&self.lease_id)
            .arg(self.millis)
            .arg(&self.acquired_at)
            .arg(MAX_REPORTED_HOLDERS)
            .arg(if retry { "1" } else { "0" });
        for (k, v) in &self.meta {
            inv.arg(k).arg(v);
        }
        inv
    }
}
