//! [`LeaseInfo`]: what anyone may see of a lease's current holder; [`SemaphoreHolder`], of a
//! semaphore's permit (a lease record of its own, with its slot).
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

/// One holder of a semaphore: the permit's record as a lease (its `name` is the semaphore's)
/// and its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreHolder {
    /// The slot it occupies (`0..limit`, or above a limit that was lowered since).
    pub slot: u32,
    /// The permit as anyone may see it.
    pub info: LeaseInfo,
}

impl LeaseInfo {
    /// Who holds the lease, for people: the `instanceId` of its metadata, with its `region` in
    /// brackets when there is one (`us-east-1 (us-east)`), the keys the .NET sample writes; `None`
    /// when the metadata has no `instanceId`. Each part goes through `escape` first, so a caller
    /// can show someone else's text safely in its own way (the error messages quote it Rust's
    /// way, the `leasing` command Python's; `Ok` leaves it as is). The one place the label is
    /// made: error messages, the command and the examples all call it (Python:
    /// `LeaseInfo.holder_label(escape=None)`), each with its own words for `None`.
    ///
    /// # Errors
    /// The first error of `escape`.
    pub fn holder_label<E>(
        &self,
        mut escape: impl FnMut(&str) -> Result<String, E>,
    ) -> Result<Option<String>, E> {
        let Some(instance) = self.metadata.get("instanceId").filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let instance = escape(instance)?;
        Ok(Some(
            match self.metadata.get("region").filter(|r| !r.is_empty()) {
                Some(region) => format!("{instance} ({})", escape(region)?),
                None => instance,
            },
        ))
    }
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
    use std::convert::Infallible;

    fn with_metadata(pairs: &[(&str, &str)]) -> LeaseInfo {
        LeaseInfo {
            name: "job".into(),
            lease_id: "id".into(),
            acquired_at: None,
            fencing_token: Some(1),
            metadata: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ttl: None,
            orphan: false,
        }
    }

    #[test]
    fn the_holder_label_is_instance_and_region() {
        let plain = |s: &str| Ok::<_, Infallible>(s.to_owned());
        let label = |pairs: &[(&str, &str)]| {
            let Ok(l) = with_metadata(pairs).holder_label(plain);
            l
        };
        assert_eq!(
            label(&[("instanceId", "us-east-1"), ("region", "us-east")]).as_deref(),
            Some("us-east-1 (us-east)")
        );
        assert_eq!(label(&[("instanceId", "w")]).as_deref(), Some("w"));
        assert_eq!(
            label(&[("instanceId", "w"), ("region", "")]).as_deref(),
            Some("w")
        );
        assert_eq!(label(&[("region", "us-east")]), None);
        assert_eq!(label(&[("instanceId", "")]), None);
        let quoted = with_metadata(&[("instanceId", "a\nb"), ("region", "r")])
            .holder_label(|s| Ok::<_, Infallible>(format!("<{s}>")));
        assert_eq!(quoted, Ok(Some("<a\nb> (<r>)".to_owned())));
        let failed = with_metadata(&[("instanceId", "a")]).holder_label(|_| Err("no"));
        assert_eq!(failed, Err("no"));
    }

    #[test]
    fn timestamp_has_the_samples_form() {
        let t = Utc.with_ymd_and_hms(2025, 12, 25, 21, 0, 0).unwrap();
        assert_eq!(format_timestamp(t), "2025-12-25T21:00:00.000Z");
        assert_eq!(parse_timestamp("2025-12-25T21:00:00.000Z"), Some(t));
        assert_eq!(parse_timestamp("2025-12-25T21:00:00Z"), Some(t));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
