//! Redis key names and the hash fields of a lease record.
//!
//! Standalone keys are exactly the sample's: `<prefix><name>` (`lease:critical-section-lock`)
//! and `<prefix><name>:fence`. On a cluster the name is wrapped in a hash tag
//! (`lease:{critical-section-lock}`) so the lease and its counter live in one slot and each
//! script touches one slot. Names ending in `:fence` are refused by `store::validate_name`
//! (which `LeaseClient` applies before any name reaches a store: see `store::LeaseStore`)
//! because their key would collide with another name's counter.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;

use crate::info::{parse_timestamp, LeaseInfo};

/// Hash field of the holder's lease id.
pub const LEASE_ID: &str = "leaseId";
/// Hash field of the acquisition time.
pub const ACQUIRED_AT: &str = "acquiredAt";
/// Hash field of the fencing token (absent in records of the .NET origin).
pub const FENCING_TOKEN: &str = "fencingToken";
/// Prefix of metadata fields.
pub const META_PREFIX: &str = "meta_";

/// Builds key names for one prefix and topology.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    /// Keys under `prefix`, hash-tagged when `cluster`.
    #[must_use]
    pub fn new(prefix: impl Into<String>, cluster: bool) -> Self {
        Self {
            prefix: prefix.into(),
            cluster,
        }
    }

    /// The lease hash's key.
    #[must_use]
    pub fn lease(&self, name: &str) -> String {
        if self.cluster {
            format!("{}{{{name}}}", self.prefix)
        } else {
            format!("{}{name}", self.prefix)
        }
    }

    /// The fencing counter's key.
    #[must_use]
    pub fn fence(&self, name: &str) -> String {
        let mut k = self.lease(name);
        k.push_str(":fence");
        k
    }

    /// The pub/sub channel on which releases of `name` are announced: `<lease key>:released`,
    /// so on a cluster it carries the key's hash tag and lives in the key's shard.
    #[must_use]
    pub fn released(&self, name: &str) -> String {
        let mut k = self.lease(name);
        k.push_str(super::notify::RELEASED_SUFFIX);
        k
    }

    /// The key of slot `i` of the semaphore `name` is `base + <i in 10 digits> + suffix`
    /// (the key of [`crate::store::permit_record`]): `(base, suffix)`, for the acquire script,
    /// which builds the keys of the slots it reads.
    #[must_use]
    pub fn permit_parts(&self, name: &str) -> (String, &'static str) {
        let mut base = self.lease(&crate::store::permit_record(name, 0));
        let suffix = if self.cluster { "}" } else { "" };
        base.truncate(base.len() - 10 - suffix.len());
        (base, suffix)
    }

    /// A SCAN pattern matching the keys of the permits of the semaphore `name`.
    #[must_use]
    pub fn permit_scan_pattern(&self, name: &str) -> String {
        let (base, _) = self.permit_parts(name);
        let mut p = glob_escape(&base);
        p.push('*');
        p
    }

    /// A SCAN pattern matching lease keys whose name starts with `name_prefix`.
    #[must_use]
    pub fn scan_pattern(&self, name_prefix: &str) -> String {
        let mut p = glob_escape(&self.prefix);
        if self.cluster {
            p.push_str("\\{");
        }
        p.push_str(&glob_escape(name_prefix));
        p.push('*');
        p
    }

    /// The lease name of a lease key, or `None` for keys that are not lease keys (counters,
    /// other data under the prefix).
    #[must_use]
    pub fn name_of(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.prefix)?;
        if rest.ends_with(":fence") {
            return None;
        }
        if self.cluster {
            rest.strip_prefix('{')?.strip_suffix('}').map(str::to_owned)
        } else {
            Some(rest.to_owned())
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Builds a [`LeaseInfo`] from a flat `HGETALL` reply and a `PTTL` in milliseconds.
#[must_use]
pub fn info_from_hash(name: &str, pttl: i64, fields: &[Value]) -> LeaseInfo {
    let mut info = LeaseInfo {
        name: name.to_owned(),
        lease_id: String::new(),
        acquired_at: None,
        fencing_token: None,
        metadata: BTreeMap::new(),
        ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
        orphan: false,
    };
    for pair in fields.chunks_exact(2) {
        let (Some(field), Some(value)) = (as_string(&pair[0]), as_string(&pair[1])) else {
            continue;
        };
        match field.as_str() {
            LEASE_ID => info.lease_id = value,
            ACQUIRED_AT => info.acquired_at = parse_timestamp(&value),
            FENCING_TOKEN => info.fencing_token = value.parse().ok(),
            f => {
                if let Some(key) = f.strip_prefix(META_PREFIX) {
                    info.metadata.insert(key.to_owned(), value);
                }
            }
        }
    }
    info
}

/// Whether a hash (its flat `HGETALL` reply, its `PTTL`) is an orphan of the .NET origin: every
/// field `meta_*` and no TTL. The origin writes its `meta_*` fields in a second round trip; if
/// its key expired in between, that write leaves such a hash, held by nobody and never expiring.
/// An acquire takes it over, a forced release deletes it (the scripts check the same).
#[must_use]
pub fn is_orphan(pttl: i64, fields: &[Value]) -> bool {
    pttl == -1
        && !fields.is_empty()
        && fields
            .chunks(2)
            .all(|kv| as_string(&kv[0]).is_some_and(|f| f.starts_with(META_PREFIX)))
}

/// A reply value as a UTF-8 string (lossy), for fields and values of a hash.
#[must_use]
pub fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_keys_are_the_samples() {
        let k = Keys::new("lease:", false);
        assert_eq!(
            k.lease("critical-section-lock"),
            "lease:critical-section-lock"
        );
        assert_eq!(
            k.fence("critical-section-lock"),
            "lease:critical-section-lock:fence"
        );
        assert_eq!(k.name_of("lease:a:b"), Some("a:b".into()));
        assert_eq!(k.name_of("lease:a:fence"), None);
        assert_eq!(k.name_of("other:a"), None);
    }

    #[test]
    fn cluster_keys_share_one_slot() {
        let k = Keys::new("lease:", true);
        assert_eq!(k.lease("x"), "lease:{x}");
        assert_eq!(k.fence("x"), "lease:{x}:fence");
        // Redis hashes the text between the first `{` and the next `}`: the same for both keys.
        assert!(k.fence("a}b").starts_with(&k.lease("a}b")));
        assert_eq!(k.released("x"), "lease:{x}:released");
        assert_eq!(Keys::new("lease:", false).released("x"), "lease:x:released");
        assert_eq!(k.name_of("lease:{x}"), Some("x".into()));
    }

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        let k = Keys::new("lease:", false);
        assert_eq!(k.scan_pattern("a*[b]"), "lease:a\\*\\[b\\]*");
    }

    #[test]
    fn an_orphan_is_metadata_only_without_a_ttl() {
        let f = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let meta = [
            f("meta_instanceId"),
            f("dotnet-1"),
            f("meta_region"),
            f("eu"),
        ];
        assert!(is_orphan(-1, &meta));
        assert!(!is_orphan(1500, &meta), "a TTL: not an orphan");
        assert!(!is_orphan(-1, &[]), "no hash");
        let mixed = [f("meta_instanceId"), f("dotnet-1"), f("owner"), f("app")];
        assert!(!is_orphan(-1, &mixed), "another field: someone else's data");
        let lease = [f("leaseId"), f("abc"), f("meta_region"), f("eu")];
        assert!(!is_orphan(-1, &lease));
    }

    #[test]
    fn dotnet_records_parse_without_a_token() {
        let f = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let info = info_from_hash(
            "n",
            1500,
            &[
                f("leaseId"),
                f("abc"),
                f("acquiredAt"),
                f("2025-12-25T21:00:00.000Z"),
                f("meta_region"),
                f("us-east"),
            ],
        );
        assert_eq!(info.lease_id, "abc");
        assert_eq!(info.fencing_token, None);
        assert_eq!(info.metadata["region"], "us-east");
        assert_eq!(info.ttl, Some(Duration::from_millis(1500)));
    }
}
