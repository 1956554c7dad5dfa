//! The one error type of the library, [`LeaseError`]; every message says what to do next.
//!
//! Messages never contain a secret: passwords and tokens live in [`crate::Secret`], and errors
//! from the Redis driver are reduced to their kind and server code before they get here
//! (see `store::redis::map_error`).

use std::convert::Infallible;
use std::fmt;

use crate::info::{LeaseInfo, SemaphoreHolder};

/// Result alias for the library.
pub type Result<T, E = LeaseError> = std::result::Result<T, E>;

/// Why a held lease stopped being held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The local deadline passed before a renewal succeeded (the server may have expired it).
    Expired,
    /// The store no longer has the lease (deleted, expired, or the server lost its data).
    Missing,
    /// Another holder has the lease now.
    HeldByOther,
    /// Its client was closed while it was held (the client released it).
    ClientClosed,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Expired => "its deadline passed before a renewal succeeded",
            Self::Missing => {
                "the store no longer has it (deleted, expired or the server lost its data)"
            }
            Self::HeldByOther => "another holder has it now",
            Self::ClientClosed => "its client was closed, which released it",
        })
    }
}

impl LostReason {
    /// A short machine-readable name: `expired`, `missing`, `held_by_other`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Missing => "missing",
            Self::HeldByOther => "held_by_other",
            Self::ClientClosed => "client_closed",
        }
    }
}

/// What kind of backend failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// The server could not be reached or the connection broke.
    Unreachable,
    /// Authentication failed: a wrong user, password, access key or token.
    Auth,
    /// The server knows who we are but refuses a command, key or channel to this user (a Redis
    /// ACL rule, `NOPERM`): the message names what was refused and the rule to add.
    Permission,
    /// The operation did not finish within the configured timeout.
    Timeout,
    /// The key at the lease name holds something other than a lease.
    WrongType,
    /// Anything else the store reported.
    Other,
}

/// Every error of the library.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease is held by someone else, or every permit of the semaphore is (after waiting,
    /// if a wait was asked for).
    #[error("{}; {}", describe_refusal(name, holder.as_deref(), holders), advice(*waited))]
    Unavailable {
        /// The lease's (or the semaphore's) name.
        name: String,
        /// The current holder, from the same round trip as the refused acquire (of a
        /// semaphore: the permit that expires first).
        holder: Option<Box<LeaseInfo>>,
        /// Of a semaphore: every holder the last refusal saw, by slot (at most
        /// [`crate::store::MAX_REPORTED_HOLDERS`]); empty for a lease (its holder is `holder`).
        holders: Vec<SemaphoreHolder>,
        /// How long the acquire waited before giving up (zero: one attempt).
        waited: std::time::Duration,
    },
    /// The lease was lost while held.
    #[error(
        "lease '{name}' was lost: {reason}; stop work that relies on it, and acquire it again"
    )]
    Lost {
        /// The lease name.
        name: String,
        /// Why it was lost.
        reason: LostReason,
    },
    /// Configuration is missing or invalid.
    /// A forced release for a lease id that no longer holds the lease: nothing was deleted.
    #[error("lease '{name}' changed hands: it is now {}, not by {} that was shown; nothing was released (look again, and confirm the current holder if it is the one to remove)", describe_holder(Some(holder)), describe_shown(shown))]
    ChangedHands {
        /// The lease name.
        name: String,
        /// The lease id an administrator was shown and asked to remove (empty: an orphan, see
        /// [`LeaseInfo::orphan`]).
        shown: String,
        /// The holder now.
        holder: Box<LeaseInfo>,
    },
    /// A semaphore was asked for with a limit other than the one stored with it.
    #[error("semaphore '{name}' has the limit {stored} stored, not {asked} as asked: pass limit={stored}, or limit=None to use the stored one; change it with set_semaphore_limit (an administrator's act)")]
    LimitMismatch {
        /// The semaphore's name.
        name: String,
        /// The limit stored with the semaphore.
        stored: u32,
        /// The limit the caller asked for.
        asked: u32,
    },
    /// The configuration (appsettings.json, environment, arguments) is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// An argument is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The store failed.
    #[error("{message}")]
    Backend {
        /// What kind of failure.
        kind: BackendErrorKind,
        /// A message without secrets that says what to do next.
        message: String,
    },
}

impl LeaseError {
    /// Shorthand for a backend error.
    #[must_use]
    pub fn backend(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self::Backend {
            kind,
            message: message.into(),
        }
    }

    /// True for failures worth retrying (unreachable, timeout).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Backend {
                kind: BackendErrorKind::Unreachable | BackendErrorKind::Timeout,
                ..
            }
        )
    }
}

/// Someone else's text (the holder's metadata, its lease id) for a message: as is when it has
/// no control, format (bidi, zero-width) or separator characters, else quoted with escapes, so
/// that it cannot forge lines or hide text in a log or terminal.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{FEFF}'
                | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
                | '\u{FFF9}'..='\u{FFFB}')
    };
    if text.chars().any(hidden) || text.starts_with(['"', '\'']) {
        let escaped: String = text
            .chars()
            .map(|c| {
                if hidden(c) && !matches!(c, '\n' | '\r' | '\t') {
                    c.escape_unicode().to_string()
                } else {
                    c.escape_debug().to_string()
                }
            })
            .collect();
        format!("\"{escaped}\"").into()
    } else {
        text.into()
    }
}

/// What a refusal says: the holder of a lease; of a semaphore, how many permits are held and
/// the one that expires first.
fn describe_refusal(name: &str, holder: Option<&LeaseInfo>, holders: &[SemaphoreHolder]) -> String {
    if holders.is_empty() {
        return format!("lease '{name}' is unavailable: {}", describe_holder(holder));
    }
    format!(
        "semaphore '{name}' is full: {} permits are held, the first to expire {}",
        holders.len(),
        describe_holder(holder)
    )
}

/// What to do after a refusal: wait for it if the caller did not, else wait longer.
fn advice(waited: std::time::Duration) -> String {
    if waited.is_zero() {
        "retry later, or pass wait=<seconds> to wait for it".to_owned()
    } else {
        format!(
            "gave up after waiting {:.1}s: retry later, or wait longer (wait=None waits as long as it takes)",
            waited.as_secs_f64()
        )
    }
}

/// The lease id an administrator was shown: empty for an orphan (see [`LeaseInfo::orphan`]).
fn describe_shown(id: &str) -> String {
    if id.is_empty() {
        "the orphan (no lease id)".to_owned()
    } else {
        format!("lease id {}", shown(id))
    }
}

fn describe_holder(holder: Option<&LeaseInfo>) -> String {
    let Some(h) = holder else {
        return "it is held by another holder".to_owned();
    };
    if h.orphan {
        return "held by nobody (an orphan of the .NET origin: its metadata without a lease, which the next acquire takes over)".to_owned();
    }
    let Ok(label) = h.holder_label(|s| Ok::<_, Infallible>(shown(s).into_owned()));
    let who = label.unwrap_or_else(|| format!("lease id {}", shown(&h.lease_id)));
    match h.ttl {
        Some(ttl) => format!("held by {who} for up to {:.1}s more", ttl.as_secs_f64()),
        None => format!("held by {who}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn someone_elses_text_in_a_message_cannot_forge_lines() {
        assert_eq!(shown("us-east-1"), "us-east-1");
        assert_eq!(shown("C:\\dir"), "C:\\dir");
        assert_eq!(shown("a\r\nb"), "\"a\\r\\nb\"");
        assert_eq!(shown("\u{1b}[2J"), "\"\\u{1b}[2J\"");
        assert_eq!(shown("\u{202e}abc"), "\"\\u{202e}abc\"");
        assert_eq!(shown("\"quoted\""), "\"\\\"quoted\\\"\"");
        let holder = LeaseInfo {
            name: "job".into(),
            lease_id: "id".into(),
            acquired_at: None,
            fencing_token: None,
            metadata: [("instanceId".to_owned(), "x\nforged line".to_owned())].into(),
            ttl: None,
            orphan: false,
        };
        let e = LeaseError::Unavailable {
            name: "job".into(),
            holder: Some(Box::new(holder)),
            holders: Vec::new(),
            waited: std::time::Duration::ZERO,
        };
        assert!(!e.to_string().contains('\n'), "{e}");
        assert!(e.to_string().contains("held by \"x\\nforged line\""), "{e}");
    }

    #[test]
    fn a_changed_hand_names_the_holder_now_and_the_one_shown() {
        let mut holder = LeaseInfo {
            name: "job".into(),
            lease_id: "new-id".into(),
            acquired_at: None,
            fencing_token: Some(2),
            metadata: [("instanceId".to_owned(), "py-1".to_owned())].into(),
            ttl: None,
            orphan: false,
        };
        let e = |holder: &LeaseInfo, shown: &str| {
            LeaseError::ChangedHands {
                name: "job".into(),
                shown: shown.into(),
                holder: Box::new(holder.clone()),
            }
            .to_string()
        };
        let m = e(&holder, "");
        assert!(
            m.contains("it is now held by py-1, not by the orphan (no lease id) that was shown"),
            "{m}"
        );
        holder.orphan = true;
        holder.lease_id = String::new();
        let m = e(&holder, "old-id");
        assert!(m.contains("it is now held by nobody (an orphan"), "{m}");
        assert!(m.contains("not by lease id old-id that was shown"), "{m}");
    }
}
