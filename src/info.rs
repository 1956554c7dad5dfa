//! [`LeaseInfo`]: what anyone may see of a lease's current holder.
//!
//! Built from the stored record (a Redis hash or a SQLite row). Records written by the .NET
//! origin of this project have no `fencingToken`; they are shown with `fencing_token: None`
//! rather than refused, so both can share one store; an orphan that origin can leave behind (its
//! metadata without a lease) is shown as one (`orphan`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// The holder of a lease as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease name (without the store's key prefix).
    pub name: String,
    /// The holder's lease id (a UUID for leases taken by this library).
    pub lease_id: String,
    /// When the holder acquired the lease, by the holder's clock; `None` if the record lacks it
    /// or it does not parse.
    pub acquired_at: Option<DateTime<Utc>>,
    /// The holder's fencing token; `None` for records written by the .NET origin.
    pub fencing_token: Option<u64>,
    /// The holder's metadata (`meta_<key>` fields in Redis).
    pub metadata: BTreeMap<String, String>,
    /// Time left before the store expires the lease; `None` if it has no expiry.
    pub ttl: Option<Duration>,
    /// An orphan of the .NET origin (Redis): a hash of `meta_*` fields only, with no TTL, left
    /// when its key expired before the origin wrote its metadata. Nobody holds it (`lease_id`
    /// is empty; `metadata` says who left it); the next acquire takes it over and a forced
    /// release deletes it. `false` for every lease.
    pub orphan: bool,
}

/// Formats a time as the sample's hash does: `2025-12-25T21:00:00.000Z`.
#[must_use]
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a stored `acquiredAt` (RFC 3339, as written by this library or the .NET origin).
#[must_use]
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamp_has_the_samples_form() {
        let t = Utc.with_ymd_and_hms(2025, 12, 25, 21, 0, 0).unwrap();
        assert_eq!(format_timestamp(t), "2025-12-25T21:00:00.000Z");
        assert_eq!(parse_timestamp("2025-12-25T21:00:00.000Z"), Some(t));
        assert_eq!(parse_timestamp("2025-12-25T21:00:00Z"), Some(t));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
