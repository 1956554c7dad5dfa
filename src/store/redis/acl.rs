//! Redis ACL refusals (`NOPERM`): what the server refused, and the rule that allows it.
//!
//! A user whose password is right but who lacks a command, key or channel is not told that its
//! login failed: [`permission_error`] names what was refused (when the server says) and the ACL
//! rule to add. Redis words the refusal differently by version and by where it happened:
//!
//! - a command sent by the client: `NOPERM this user has no permissions to run the 'scan'
//!   command` (7.0), `NOPERM User u has no permissions to run the 'scan' command` (7.2+);
//! - a key or channel: `NOPERM this user has no permissions to access one of the keys used as
//!   arguments` (7.0), `NOPERM User u has no permissions to access the 'k' key` (7.2+);
//! - a command run by `redis.call` inside a script: `ERR The user executing the script can't
//!   run this command or subcommand script: ...` (6.2, 7.0: no name), `ERR ACL failure in
//!   script: User u has no permissions to run the 'hset' command script: ...` (7.2+), or inside
//!   `ERR Error running script (call to f_...): ... NOPERM ...` (older servers);
//! - a refused `SELECT` while connecting, which the driver wraps as "refused to switch database".

use redis::RedisError;

use crate::error::{BackendErrorKind, LeaseError};

/// The key and channel patterns and the commands a Redis user of this library needs on a
/// standalone server, for the default key prefix `lease:`: the scripts (`EVALSHA`, and `SCRIPT
/// LOAD` when the server does not have them yet: after a restart or `SCRIPT FLUSH`), the
/// commands the scripts run, `SCAN` for `list`, and for waiting the release notices (`PUBLISH`
/// from the release scripts; `SUBSCRIBE`, `UNSUBSCRIBE` and `PING` on the subscription
/// connection). The README's "ACL users and passwords" section shows the same rule; a test runs
/// every operation as a user with exactly the README's rule, and checks that the messages below
/// quote it.
pub const ACL_RULE: &str = "~lease:* &lease:* +evalsha +script|load +exists +hget +hexists +hgetall +hset +pexpire +pttl +incr +decr +type +del +publish +subscribe +unsubscribe +ping +scan";

/// What a user needs in addition on a Redis Cluster (Redis 7 or later; on every node):
/// sharded pub/sub, and the commands that find the cluster and its nodes.
pub const ACL_CLUSTER_COMMANDS: &str =
    "+spublish +ssubscribe +sunsubscribe +cluster|info +cluster|slots";

/// The whole rule, as `ACL SETUSER` takes it, and its additions.
fn full_rule() -> String {
    format!(
        "`ACL SETUSER <user> {ACL_RULE}` (use your KeyPrefix in `~lease:* &lease:*`; on a cluster also `{ACL_CLUSTER_COMMANDS}`; with a Database other than 0 also `+select`)"
    )
}

/// What the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    /// A command (or `command|subcommand`), by its name.
    Command(String),
    /// A key, by its name when the server gave it.
    Key(Option<String>),
    /// A pub/sub channel, by its name when the server gave it.
    Channel(Option<String>),
    /// Something the server did not name (a command inside a script on Redis 6.2 and 7.0).
    Unnamed,
}

/// The text between `start` and `end` after `start`'s first occurrence (ASCII case-insensitive).
fn quoted<'a>(text: &'a str, lower: &str, start: &str, end: &str) -> Option<&'a str> {
    let from = lower.find(start)? + start.len();
    let len = lower[from..].find(end)?;
    // `lower` is `text` with ASCII letters lowered: the same byte offsets.
    text.get(from..from + len)
}

/// Reads a refusal from a server error's code and text; `None` if it is not one.
fn refusal(code: &str, detail: &str) -> Option<Refused> {
    let text = format!("{code} {detail}");
    let lower = text.to_ascii_lowercase();
    let is_refusal = code.eq_ignore_ascii_case("NOPERM")
        || lower.contains("noperm")
        || lower.contains("no permissions to")
        || lower.contains("acl failure")
        || lower.contains("the user executing the script can't");
    if !is_refusal {
        return None;
    }
    if let Some(cmd) = quoted(&text, &lower, "permissions to run the '", "' command") {
        return Some(Refused::Command(cmd.to_ascii_lowercase()));
    }
    if let Some(key) = quoted(&text, &lower, "permissions to access the '", "' key") {
        return Some(Refused::Key(Some(key.to_owned())));
    }
    if let Some(channel) = quoted(&text, &lower, "permissions to access the '", "' channel") {
        return Some(Refused::Channel(Some(channel.to_owned())));
    }
    if lower.contains("channel") {
        return Some(Refused::Channel(None));
    }
    if lower.contains("key") {
        return Some(Refused::Key(None));
    }
    Some(Refused::Unnamed)
}

/// The error for an ACL refusal, or `None` if `e` is not one. `key` is the lease key of the
/// operation, if it has one.
pub(super) fn permission_error(
    e: &RedisError,
    addr: &str,
    key: Option<&str>,
) -> Option<LeaseError> {
    let refused = refusal(e.code().unwrap_or(""), e.detail().unwrap_or(""))?;
    let what = "(NOPERM: the user and password were accepted, but an ACL rule is missing)";
    let message = match refused {
        Refused::Command(cmd) => format!(
            "Redis at {addr} refused the '{cmd}' command to this user {what}: allow it with `ACL SETUSER <user> +{cmd}`, or give the user the whole rule of the README (ACL users and passwords): {}",
            full_rule()
        ),
        Refused::Key(named) => {
            let which = match (named, key) {
                (Some(k), _) => format!("key '{k}'"),
                (None, Some(k)) => format!("a key of lease key '{k}' (the lease key or its '{k}:fence' counter)"),
                (None, None) => "a key".to_owned(),
            };
            format!(
                "Redis at {addr} refused {which} to this user {what}: allow the keys of the KeyPrefix with a key pattern, `ACL SETUSER <user> ~<KeyPrefix>*` (`~lease:*` for the default prefix); the whole rule is in the README (ACL users and passwords): {}",
                full_rule()
            )
        }
        Refused::Channel(named) => {
            let which = named.map_or_else(|| "a channel".to_owned(), |c| format!("channel '{c}'"));
            format!(
                "Redis at {addr} refused {which} to this user {what}: allow the release notices with a channel pattern, `ACL SETUSER <user> &<KeyPrefix>*` (`&lease:*` for the default prefix); the whole rule is in the README (ACL users and passwords): {}",
                full_rule()
            )
        }
        Refused::Unnamed => format!(
            "Redis at {addr} refused a command to this user {what}; the server did not say which (Redis before 7.2 does not name a command refused inside a lease script; `ACL LOG` on the server names it): give the user the whole rule of the README (ACL users and passwords): {}",
            full_rule()
        ),
    };
    Some(LeaseError::backend(BackendErrorKind::Permission, message))
}

/// `CROSSSLOT` from a script: only a cluster node says it, to a client that took it for a
/// standalone server, which happens when the user may run neither `INFO` nor `CLUSTER INFO`.
pub(super) fn cross_slot_error(addr: &str) -> LeaseError {
    LeaseError::backend(
        BackendErrorKind::Permission,
        format!("Redis at {addr} is a cluster node but was taken for a standalone server (CROSSSLOT): the user may run neither INFO nor CLUSTER INFO; add `+cluster|info` to its ACL rule on every node, with the other cluster commands: `{ACL_CLUSTER_COMMANDS}` (README: ACL users and passwords)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_wording_of_a_refusal() {
        let cases = [
            ("NOPERM", "this user has no permissions to run the 'scan' command", Refused::Command("scan".into())),
            ("NOPERM", "User leaser has no permissions to run the 'script|load' command", Refused::Command("script|load".into())),
            ("ERR", "ACL failure in script: User u has no permissions to run the 'hset' command script: 4a15, on @user_script:1.", Refused::Command("hset".into())),
            ("NOPERM", "ACL failure in script: User u has no permissions to run the 'HSET' command", Refused::Command("hset".into())),
            ("ERR", "Error running script (call to f_4a15): @user_script:1: NOPERM This user has no permissions to run the 'incr' command", Refused::Command("incr".into())),
            ("ERR", "This user has no permissions to run the 'get' command", Refused::Command("get".into())),
            ("ERR", "The user executing the script can't run this command or subcommand script: 4a15, on @user_script:1.", Refused::Unnamed),
            ("ERR", "The user executing the script can't access at least one of the keys mentioned in the command script: 4a15", Refused::Key(None)),
            ("NOPERM", "this user has no permissions to access one of the keys used as arguments", Refused::Key(None)),
            ("NOPERM", "User u has no permissions to access the 'other:x' key", Refused::Key(Some("other:x".into()))),
            ("NOPERM", "this user has no permissions to access one of the channels used as arguments", Refused::Channel(None)),
            ("NOPERM", "User u has no permissions to access the 'lease:x:released' channel", Refused::Channel(Some("lease:x:released".into()))),
        ];
        for (code, detail, want) in cases {
            assert_eq!(refusal(code, detail), Some(want), "{code} {detail}");
        }
        for (code, detail) in [
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
            ),
            ("ERR", "value is not an integer or out of range"),
            (
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            ),
            ("NOSCRIPT", "No matching script. Please use EVAL."),
        ] {
            assert_eq!(refusal(code, detail), None, "{code} {detail}");
        }
    }

    #[test]
    fn messages_name_what_was_refused_and_the_rule() {
        let e = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "",
            "this user has no permissions to run the 'scan' command".to_owned(),
        ));
        let err = permission_error(&e, "127.0.0.1:6379", None).expect("a refusal");
        let LeaseError::Backend { kind, message } = err else {
            panic!("not a backend error")
        };
        assert_eq!(kind, BackendErrorKind::Permission);
        assert!(message.contains("'scan'"), "{message}");
        assert!(message.contains("ACL SETUSER <user> +scan"), "{message}");
        assert!(message.contains(ACL_RULE), "{message}");
        assert!(message.contains(ACL_CLUSTER_COMMANDS), "{message}");
        assert!(!message.contains("password)"), "{message}");
    }
}
