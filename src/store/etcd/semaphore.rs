//! The etcd store's semaphores: a config key holding the limit, and one lease key per held
//! slot, each on an etcd lease of its own.
//!
//! Data model: the key `<KeyPrefix>` + [`semaphore_key`] holds `{"limit": N}` (no etcd lease:
//! the limit stays when no permit is held); slot `i`'s permit is the key `<KeyPrefix>` +
//! [`permit_record`]`(name, i)`, an ordinary lease record (the sample's fields) on an etcd lease
//! of its own, so it is renewed, released, force-released and expired by the lease operations
//! of [`super::lease`] unchanged, and its deletion is a release the watch tells the waiters of
//! [`semaphore_key`] ([`crate::store::release_notice_name`]). The slot keys of one semaphore
//! are one key range that holds nothing else, sorted by slot (10 digits).
//!
//! Acquire, per attempt: ONE read txn of the config key and the slot range (one snapshot, at
//! revision R: as many keys as permits are held, never the limit, so a limit of 2^31 − 1 costs
//! nothing); the limit checked (or stored with the permit, for a semaphore never used); a
//! refusal when `limit` permits are live (slots above a lowered limit count: nobody is admitted
//! until fewer are held), else the first gap in the slots held (below the limit, since fewer
//! are held). Then ONE write txn, on a spare or fresh etcd lease ([`Inner::txn_on_lease`]):
//! "if the slot key is absent (`create_revision == 0`), no key of the slot range was written
//! after R (`mod_revision < R + 1`: no permit taken meanwhile; a release only lowers the count)
//! and the config key is as read (its `mod_revision`, or absent), put the slot's record on the
//! etcd lease (and the config, for a new semaphore); else range the slot key". So the decision
//! of the read holds when the write commits, and never more than `limit` are admitted. A lost
//! race keeps the etcd lease as a spare, waits a few jittered milliseconds and reads again;
//! after [`ATTEMPTS`] lost races the acquire reports the semaphore full with its holders then
//! (a waiter waits for the next release), never an error. Acquires racing for free slots are
//! thus served one per read and write (every permit taken fails the others' compare), about
//! as fast as one client's acquires follow each other.
//!
//! Token = the slot key's `create_revision` (the write txn's revision): etcd's revision is one
//! counter for the whole cluster, so the tokens of one semaphore strictly increase (not
//! consecutively). A resend of a write txn whose first send won (a fail-over) finds the slot key
//! on its own etcd lease and takes it as won, as a lease acquire does.
//!
//! A config or slot key that is not what this store writes is foreign data: every operation on
//! the semaphore fails with `WrongType` naming the key, and nothing is written.

use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;

use super::lease::{info, RecordIn, RecordOut};
use super::{prefix_end, EtcdStore, Inner, Kv, RangeResponse, TxnResponse, B64};
use crate::backoff::Backoff;
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::info::format_timestamp;
use crate::store::{
    common, parse_permit_record, parse_semaphore_key, permit_record, permit_records_range,
    semaphore_key, PermitOutcome, PermitRequest, SemaphoreHolder, SemaphoreInfo,
    MAX_REPORTED_HOLDERS, MAX_SEMAPHORE_LIMIT, SEMAPHORE_MARK,
};

/// How many races an acquire may lose (another permit taken, or the limit changed, between
/// its read and its write) before it reports the semaphore full; how often a limit's store
/// that lost one is tried.
const ATTEMPTS: u32 = 32;

/// The config as stored and read.
#[derive(serde::Serialize, Deserialize)]
struct Config {
    limit: i64,
}

/// A live permit as read: its slot, its key and its record.
struct LivePermit {
    slot: u32,
    kv: Kv,
    record: RecordIn,
}

/// One read of a semaphore: its config and live permits at one revision.
struct Snapshot {
    /// The stored limit and the config key's `mod_revision`.
    config: Option<(u32, i64)>,
    /// The live permits, by slot.
    slots: Vec<LivePermit>,
    /// The revision read at.
    revision: i64,
}

impl Inner {
    /// The semaphore's config key.
    fn config_key(&self, name: &str) -> Vec<u8> {
        self.key(&semaphore_key(name))
    }

    /// The key range `[from, to)` of the semaphore's slot keys, and nothing else.
    fn slot_range(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        let (low, high) = permit_records_range(name);
        (self.key(&low), self.key(&high))
    }

    /// The error for a key of the semaphore that this store never writes: names the key.
    fn foreign(&self, key: &[u8], what: &str) -> LeaseError {
        LeaseError::backend(
            BackendErrorKind::WrongType,
            format!(
                "the etcd key {:?} at {} {what}; it was not written by distributed-leasing and is left alone: use another KeyPrefix, or delete the key (etcdctl del) to start the semaphore again",
                String::from_utf8_lossy(key),
                self.http.display
            ),
        )
    }

    /// The limit the config key holds, checked.
    fn limit_of(&self, kv: &Kv) -> Result<u32> {
        let value = B64.decode(kv.value.as_bytes()).unwrap_or_default();
        serde_json::from_slice::<Config>(&value)
            .ok()
            .and_then(|c| u32::try_from(c.limit).ok())
            .filter(|l| (1..=MAX_SEMAPHORE_LIMIT).contains(l))
            .ok_or_else(|| {
                self.foreign(
                    &B64.decode(kv.key.as_bytes()).unwrap_or_default(),
                    &format!(
                        "holds something that is not a semaphore's config (JSON {{\"limit\": 1..{MAX_SEMAPHORE_LIMIT}}})"
                    ),
                )
            })
    }

    /// The slot of a key of the semaphore's slot range, with its record, checked.
    fn slot_of(&self, name: &str, kv: Kv) -> Result<LivePermit> {
        let key = B64.decode(kv.key.as_bytes()).unwrap_or_default();
        let slot = std::str::from_utf8(&key)
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .and_then(parse_permit_record)
            .filter(|(sem, _)| *sem == name)
            .map(|(_, slot)| slot)
            .ok_or_else(|| {
                self.foreign(
                    &key,
                    "is among the permits of a semaphore but names no slot",
                )
            })?;
        let record = self.record(&permit_record(name, slot), &kv)?;
        Ok(LivePermit { slot, kv, record })
    }

    /// The config and the live permits of `name`, in one read txn.
    async fn snapshot(&self, name: &str) -> Result<Snapshot> {
        let (from, to) = self.slot_range(name);
        let t: TxnResponse = self
            .http
            .call(
                "/v3/kv/txn",
                &json!({ "success": [
                    { "request_range": { "key": B64.encode(self.config_key(name)) } },
                    { "request_range": { "key": B64.encode(&from), "range_end": B64.encode(&to) } },
                ]}),
            )
            .await?;
        let revision = t.header.revision;
        let mut ranges = t
            .responses
            .into_iter()
            .map(|r| r.response_range.map(|r| r.kvs).unwrap_or_default());
        let config = ranges.next().unwrap_or_default().into_iter().next();
        let config = match config {
            Some(kv) => Some((self.limit_of(&kv)?, kv.mod_revision)),
            None => None,
        };
        let slots = ranges
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|kv| self.slot_of(name, kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            config,
            slots,
            revision,
        })
    }

    /// The permits as holders (the semaphore's name, their time left read from etcd, at most 16
    /// at a time).
    async fn holders(&self, name: &str, slots: Vec<LivePermit>) -> Result<Vec<SemaphoreHolder>> {
        let ids: Vec<i64> = slots.iter().map(|s| s.kv.lease).collect();
        let ttls: Vec<Result<Option<Duration>>> = futures_util::stream::iter(ids)
            .map(|id| self.time_left(id))
            .buffered(16)
            .collect()
            .await;
        slots
            .into_iter()
            .zip(ttls)
            .map(|(s, ttl)| {
                Ok(SemaphoreHolder {
                    slot: s.slot,
                    info: info(name, &s.kv, s.record, ttl?),
                })
            })
            .collect()
    }

    /// The compare that the config key is as `config` says (its `mod_revision`, or absent).
    fn config_unchanged(&self, name: &str, config: Option<(u32, i64)>) -> serde_json::Value {
        let key = B64.encode(self.config_key(name));
        match config {
            Some((_, mod_revision)) => json!({
                "key": key, "target": "MOD", "result": "EQUAL",
                "mod_revision": mod_revision.to_string(),
            }),
            None => json!({
                "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0",
            }),
        }
    }

    /// The write txn of a permit acquire (see the module docs).
    async fn permit_txn(
        &self,
        name: &str,
        slot: u32,
        seen: &Snapshot,
        new_limit: Option<u32>,
        value: &[u8],
        lease: i64,
    ) -> Result<TxnResponse> {
        let key = B64.encode(self.key(&permit_record(name, slot)));
        let (from, to) = self.slot_range(name);
        let mut success = vec![json!({ "request_put": {
            "key": key, "value": B64.encode(value), "lease": lease.to_string(),
        }})];
        if let Some(limit) = new_limit {
            success.push(json!({ "request_put": {
                "key": B64.encode(self.config_key(name)),
                "value": B64.encode(config_value(limit)),
            }}));
        }
        self.http
            .call(
                "/v3/kv/txn",
                &json!({
                    "compare": [
                        {
                            "key": key, "target": "CREATE", "result": "EQUAL",
                            "create_revision": "0",
                        },
                        {
                            "key": B64.encode(&from), "range_end": B64.encode(&to),
                            "target": "MOD", "result": "LESS",
                            "mod_revision": (seen.revision + 1).to_string(),
                        },
                        self.config_unchanged(name, seen.config),
                    ],
                    "success": success,
                    "failure": [{ "request_range": { "key": key } }],
                }),
            )
            .await
    }
}

fn config_value(limit: u32) -> Vec<u8> {
    serde_json::to_vec(&Config {
        limit: i64::from(limit),
    })
    .unwrap_or_default()
}

/// The first slot not in `held` (sorted, distinct).
fn first_gap(held: &[LivePermit]) -> u32 {
    let mut slot = 0u32;
    for s in held {
        if s.slot != slot {
            break;
        }
        slot += 1;
    }
    slot
}

impl EtcdStore {
    pub(super) async fn acquire_permit(&self, req: &PermitRequest<'_>) -> Result<PermitOutcome> {
        let inner = self.inner()?;
        let value = RecordOut {
            lease_id: req.lease_id,
            acquired_at: format_timestamp(req.acquired_at),
            metadata: req.metadata,
        }
        .to_vec()?;
        let ttl = common::secs_ceil_i64(req.duration);
        let pause =
            Backoff::doubling(Duration::from_millis(2), Duration::from_millis(64)).with_jitter();
        let mut lost = 0;
        loop {
            let seen = inner.snapshot(req.name).await?;
            let (limit, new_limit) = match (seen.config, req.limit) {
                (Some((stored, _)), Some(asked)) if stored != asked => {
                    return Err(LeaseError::LimitMismatch {
                        name: req.name.to_owned(),
                        stored,
                        asked,
                    })
                }
                (Some((stored, _)), _) => (stored, None),
                (None, Some(asked)) => (asked, Some(asked)),
                (None, None) => {
                    return Err(LeaseError::InvalidArgument(format!(
                        "semaphore {:?} has no stored limit (it was never used): give its limit",
                        req.name
                    )))
                }
            };
            // Full; or lost too many races to others taking permits: reported full, with
            // the holders now (a waiter waits for the next release), never an error.
            if u32::try_from(seen.slots.len()).unwrap_or(u32::MAX) >= limit || lost == ATTEMPTS {
                let mut slots = seen.slots;
                slots.truncate(MAX_REPORTED_HOLDERS);
                let holders = inner.holders(req.name, slots).await?;
                return Ok(PermitOutcome::Full { limit, holders });
            }
            // Fewer than the limit are held: the first gap is below it.
            let slot = first_gap(&seen.slots);
            let (txn, lease, t_sent) = inner
                .txn_on_lease(ttl, |id| {
                    inner.permit_txn(req.name, slot, &seen, new_limit, &value, id)
                })
                .await?;
            let token = if txn.succeeded {
                Some(txn.header.revision)
            } else {
                // A resend whose first send won: the slot key is on our etcd lease.
                txn.ranged()
                    .filter(|kv| kv.lease == lease.id)
                    .map(|kv| kv.create_revision)
            };
            let Some(token) = token else {
                // Lost a race: the etcd lease carries no key; kept for the next attempt, which
                // waits a little first (jittered), so that racers that lost together drift apart.
                if !inner.keep_spare(lease) {
                    inner.revoke(lease.id).await;
                }
                tokio::time::sleep(pause.delay(lost)).await;
                lost += 1;
                continue;
            };
            let record = permit_record(req.name, slot);
            self.hold(&record, req.lease_id, req.duration, lease, token, t_sent);
            return Ok(PermitOutcome::Acquired {
                slot,
                fencing_token: u64::try_from(token).unwrap_or(0),
            });
        }
    }

    pub(super) async fn read_semaphore(&self, name: &str) -> Result<Option<SemaphoreInfo>> {
        let inner = self.inner()?;
        let seen = inner.snapshot(name).await?;
        let Some((limit, _)) = seen.config else {
            return Ok(None);
        };
        Ok(Some(SemaphoreInfo {
            name: name.to_owned(),
            limit,
            holders: inner.holders(name, seen.slots).await?,
        }))
    }

    /// Every semaphore whose name starts with `prefix`: one keys-only range over the records
    /// of all of them finds their config keys, then each is read as [`Self::read_semaphore`]
    /// reads it (one deleted between is left out).
    pub(super) async fn read_semaphores(&self, prefix: &str) -> Result<Vec<SemaphoreInfo>> {
        let inner = self.inner()?;
        let from = inner.key(&format!("{SEMAPHORE_MARK}{{{prefix}"));
        let r: RangeResponse = inner
            .http
            .call(
                "/v3/kv/range",
                &json!({
                    "key": B64.encode(&from),
                    "range_end": B64.encode(prefix_end(&from)),
                    "keys_only": true,
                }),
            )
            .await?;
        let names: Vec<String> = r
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(B64.decode(kv.key.as_bytes()).ok()?).ok()?;
                let record = key.strip_prefix(&inner.prefix)?;
                parse_semaphore_key(record).map(str::to_owned)
            })
            .collect();
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            if let Some(info) = self.read_semaphore(&name).await? {
                listed.push(info);
            }
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }

    pub(super) async fn store_limit(&self, name: &str, limit: u32) -> Result<Option<u32>> {
        let inner = self.inner()?;
        let key = inner.config_key(name);
        for _ in 0..ATTEMPTS {
            let config = match inner.range_key(&key).await? {
                Some(kv) => Some((inner.limit_of(&kv)?, kv.mod_revision)),
                None => None,
            };
            let t: TxnResponse = inner
                .http
                .call(
                    "/v3/kv/txn",
                    &json!({
                        "compare": [inner.config_unchanged(name, config)],
                        "success": [{ "request_put": {
                            "key": B64.encode(&key),
                            "value": B64.encode(config_value(limit)),
                        }}],
                    }),
                )
                .await?;
            if t.succeeded {
                return Ok(config.map(|(limit, _)| limit));
            }
        }
        Err(self.kept_changing(name))
    }

    fn kept_changing(&self, name: &str) -> LeaseError {
        LeaseError::backend(
            BackendErrorKind::Other,
            format!(
                "{}: semaphore {name:?} kept changing while it was written ({ATTEMPTS} attempts, each lost to another permit or limit written meanwhile); retry",
                self.inner.http.display
            ),
        )
    }
}
