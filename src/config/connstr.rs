//! Connection strings: which store to use and how to reach it ([`StoreTarget`]).
//!
//! Four forms are read:
//! - the StackExchange.Redis form the .NET sample writes,
//!   `mycache.redis.cache.windows.net:6380,password=KEY,ssl=True,abortConnect=False`
//!   (options case-insensitive, several `host:port` entries = several nodes);
//! - `redis://[user:password@]host[:port][/db]` and `rediss://…` (TLS) URLs, one host, with
//!   percent-decoded user and password (`valkey://` and `valkeys://` are read as aliases);
//! - `sqlite:///absolute/path/leases.db` (three slashes: empty host, absolute path) and
//!   `sqlite://relative/path/leases.db` (two slashes: a path relative to the configuration
//!   directory, resolved by the loader). `sqlite::memory:` is refused: each process would get its
//!   own lock;
//! - `postgresql://user[:password]@host[:port][/database][?sslmode=...]` (and `postgres://`), one
//!   host, with `sslmode` `disable`, `prefer` (the default, as libpq's), `require` or
//!   `verify-full`;
//! - `etcd://[user:password@]host[:port][,host2[:port]...]` and `etcds://…` (TLS): the members
//!   of an etcd v3 cluster (port 2379 unless given), tried in order.
//!
//! Invariants: a password only ever lives in a [`Secret`]; no error or warning produced here
//! contains a password, nor any piece of the input that could be one (an entry that is neither
//! `host:port` nor `option=value` is reported by its position, not its text). Options this crate
//! does not use are reported as warnings, never silently dropped.

use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// Host suffix of Azure Cache for Redis, where only databases 0–15 exist and TLS is on port 6380.
pub const AZURE_HOST_SUFFIX: &str = ".redis.cache.windows.net";

/// Which store to use and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// A Redis server (one node, or several seed nodes of a cluster).
    Redis(RedisTarget),
    /// An embedded SQLite database file (one machine).
    Sqlite {
        /// The database file. The parser returns relative paths as written; the loader resolves
        /// them against the configuration directory.
        path: PathBuf,
    },
    /// A PostgreSQL server.
    Postgres(PostgresTarget),
    /// An etcd v3 cluster.
    Etcd(EtcdTarget),
}

/// How to reach an etcd v3 cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `(host, port)` of every member given, in order (IPv6 hosts without brackets): requests
    /// go to one and fail over to the next on a connection error.
    pub endpoints: Vec<(String, u16)>,
    /// HTTPS (`etcds://`), the certificate verified against the system roots or `CaFile`.
    pub tls: bool,
    /// The etcd user, when the cluster has authentication enabled.
    pub user: Option<String>,
    /// Its password.
    pub password: Option<Secret>,
}

impl EtcdTarget {
    /// The URL for showing to people, the password as `***`.
    #[must_use]
    pub fn display_url(&self) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        let userinfo = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{}:***@", percent_encode(u)),
            (Some(u), None) => format!("{}@", percent_encode(u)),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        format!("{scheme}://{userinfo}{}", self.hosts())
    }

    /// `host:port,host:port`, for messages.
    #[must_use]
    pub fn hosts(&self) -> String {
        self.endpoints
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How to reach a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (5432 unless the URL says).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
    /// The database; `None` means the server's default (a database named like the user).
    pub dbname: Option<String>,
    /// Whether and how TLS is used.
    pub ssl_mode: PgSslMode,
}

/// The `sslmode` of a PostgreSQL URL (the libpq values this crate supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgSslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is not verified (libpq's
    /// default and its meaning: Debian's servers offer TLS with a self-signed certificate).
    #[default]
    Prefer,
    /// TLS always, the certificate not verified (libpq's meaning: encryption without protection
    /// against an impostor; use `verify-full` for that).
    Require,
    /// TLS always, the certificate verified against the system roots (or `CaFile`) and the
    /// host name.
    VerifyFull,
}

impl PgSslMode {
    /// The URL spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl PostgresTarget {
    /// The URL for showing to people, the password as `***`.
    #[must_use]
    pub fn display_url(&self) -> String {
        let pass = if self.password.is_some() { ":***" } else { "" };
        let host = self.bracketed_host();
        let db = self
            .dbname
            .as_deref()
            .map(|d| format!("/{}", percent_encode(d)))
            .unwrap_or_default();
        format!(
            "postgresql://{}{pass}@{host}:{}{db}?sslmode={}",
            percent_encode(&self.user),
            self.port,
            self.ssl_mode.as_str()
        )
    }

    /// The host, an IPv6 address in brackets.
    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host:port/database`, for messages.
    #[must_use]
    pub fn addr(&self) -> String {
        let host = self.bracketed_host();
        format!(
            "{host}:{}/{}",
            self.port,
            self.dbname.as_deref().unwrap_or(&self.user)
        )
    }
}

/// How to reach a Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `(host, port)` of every node given; the first is used for a single connection, all of them
    /// as seeds for a cluster. IPv6 hosts are stored without brackets.
    pub nodes: Vec<(String, u16)>,
    /// Connect with TLS (`ssl=True`, `rediss://`).
    pub tls: bool,
    /// ACL user name (`user=`, the user part of a URL).
    pub username: Option<String>,
    /// Password or access key.
    pub password: Option<Secret>,
    /// Database number (`defaultDatabase=`, the URL path); the loader fills in the effective one.
    pub database: Option<i64>,
    /// Authenticate with Microsoft Entra ID (set by the loader for an `Endpoint` without password).
    pub entra_id: bool,
    /// `connectTimeout=` (milliseconds in the StackExchange form).
    pub connect_timeout: Option<Duration>,
    /// `syncTimeout=` (milliseconds in the StackExchange form).
    pub sync_timeout: Option<Duration>,
}

impl RedisTarget {
    /// A `redis://` or `rediss://` URL for the first node, with user, password and database.
    ///
    /// Wrapped in [`Secret`] because it contains the password; hand it only to the driver.
    #[must_use]
    pub fn to_url(&self) -> Secret {
        Secret::new(self.url_with(self.nodes.first().into_iter(), |p| {
            percent_encode(p.expose())
        }))
    }

    /// One URL per node (cluster seeds), each with the credentials; the first is [`Self::to_url`].
    #[must_use]
    pub fn node_urls(&self) -> Vec<Secret> {
        self.nodes
            .iter()
            .map(|n| Secret::new(self.url_with(std::iter::once(n), |p| percent_encode(p.expose()))))
            .collect()
    }

    /// The same URL for showing to people: every node, and the password as `***`.
    #[must_use]
    pub fn display_url(&self) -> String {
        self.url_with(self.nodes.iter(), |_| "***".to_owned())
    }

    /// True when a node is an Azure Cache for Redis host (`*.redis.cache.windows.net`).
    #[must_use]
    pub fn is_azure(&self) -> bool {
        self.nodes.iter().any(|(h, _)| is_azure_host(h))
    }

    fn url_with<'a>(
        &self,
        nodes: impl Iterator<Item = &'a (String, u16)>,
        password: impl Fn(&Secret) -> String,
    ) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let user = self.username.as_deref().map(percent_encode);
        let pass = self.password.as_ref().map(password);
        let userinfo = match (user, pass) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (None, Some(p)) => format!(":{p}@"),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        let hosts: Vec<String> = nodes
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        let db = self.database.map(|d| format!("/{d}")).unwrap_or_default();
        format!("{scheme}://{userinfo}{}{db}", hosts.join(","))
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(r) => f.write_str(&r.display_url()),
            Self::Sqlite { path } => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(p) => f.write_str(&p.display_url()),
            Self::Etcd(e) => f.write_str(&e.display_url()),
        }
    }
}

/// True for an Azure Cache for Redis host name (case-insensitive, a trailing dot allowed).
#[must_use]
pub fn is_azure_host(host: &str) -> bool {
    host.trim_end_matches('.')
        .to_ascii_lowercase()
        .ends_with(AZURE_HOST_SUFFIX)
}

const FORMS: &str = "expected host:port,password=KEY,ssl=True (StackExchange.Redis form), \
     redis://[user:password@]host:port/db, rediss://... for TLS, sqlite:///absolute/path/leases.db, \
     postgresql://user:password@host:5432/database, or etcd://host1:2379,host2:2379";

/// StackExchange options understood by StackExchange.Redis that this crate does not use.
const SE_UNUSED: &[&str] = &[
    "abortConnect",
    "allowAdmin",
    "asyncTimeout",
    "channelPrefix",
    "checkCertificateRevocation",
    "configChannel",
    "configCheckSeconds",
    "connectRetry",
    "heartbeatInterval",
    "highPrioritySocketThreads",
    "keepAlive",
    "name",
    "protocol",
    "proxy",
    "resolveDns",
    "responseTimeout",
    "serviceName",
    "setlib",
    "sslHost",
    "sslProtocols",
    "tiebreaker",
    "tunnel",
    "version",
    "writeBuffer",
];

const SE_USED: &[&str] = &[
    "password",
    "user",
    "ssl",
    "defaultDatabase",
    "connectTimeout",
    "syncTimeout",
];

/// Parses a connection string in any of the three forms (see the module docs).
///
/// Returns the target and warnings (options not used by this crate, unknown options, Azure hosts
/// without TLS...). A host without a port gets 6379, or 6380 with `ssl=True`, in the StackExchange
/// form; 6379 in URLs (as `redis-cli` and the Rust driver do).
///
/// # Errors
///
/// A message naming the problem and the expected forms; it never contains the password.
pub fn parse_connection_string(s: &str) -> Result<(StoreTarget, Vec<String>), String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("the connection string is empty; {FORMS}"));
    }
    let mut warnings = Vec::new();
    match scheme_of(t)? {
        Some(Scheme::Redis { tls }) => {
            let target = parse_url(t, tls, &mut warnings)?;
            azure_warnings(&target, &mut warnings);
            Ok((StoreTarget::Redis(target), warnings))
        }
        Some(Scheme::Sqlite) => {
            let path = parse_sqlite(t, &mut warnings)?;
            Ok((StoreTarget::Sqlite { path }, warnings))
        }
        Some(Scheme::Postgres) => {
            let target = parse_postgres(t, &mut warnings)?;
            Ok((StoreTarget::Postgres(target), warnings))
        }
        Some(Scheme::Etcd { tls }) => {
            let target = parse_etcd(t, tls, &mut warnings)?;
            Ok((StoreTarget::Etcd(target), warnings))
        }
        None => {
            let raw = parse_stackexchange(t, &mut warnings)?;
            let tls = raw.ssl.unwrap_or(false);
            let default_port = if tls { 6380 } else { 6379 };
            let target = raw.finish(tls, default_port);
            azure_warnings(&target, &mut warnings);
            Ok((StoreTarget::Redis(target), warnings))
        }
    }
}

/// Parses the sample's `Endpoint` (Microsoft Entra ID mode): `host[:port]`, optionally with
/// StackExchange options, or a `redis://`/`rediss://` URL, in both cases without a password.
///
/// `use_ssl` and `port` (the `UseSsl` and `Port` settings) apply where the endpoint itself does
/// not say (no `ssl=` option, no `:port`); a URL's scheme and port rules win over them.
/// The result has `entra_id: true`.
///
/// # Errors
///
/// For anything [`parse_connection_string`] refuses, a `sqlite:` URL, and a password in the
/// endpoint (an access key belongs in `ConnectionString`).
pub fn parse_endpoint(
    s: &str,
    use_ssl: bool,
    port: u16,
) -> Result<(RedisTarget, Vec<String>), String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(
            "the endpoint is empty; expected host:port, like mycache.redis.cache.windows.net:6380"
                .to_owned(),
        );
    }
    let mut warnings = Vec::new();
    let mut target = match scheme_of(t)? {
        Some(Scheme::Redis { tls }) => parse_url(t, tls, &mut warnings)?,
        Some(Scheme::Sqlite | Scheme::Postgres | Scheme::Etcd { .. }) => {
            return Err(
                "an Endpoint names a Redis host for Microsoft Entra ID; put a sqlite:///, postgresql:// or etcd:// URL in ConnectionString instead"
                    .to_owned(),
            )
        }
        None => {
            let raw = parse_stackexchange(t, &mut warnings)?;
            let tls = raw.ssl.unwrap_or(use_ssl);
            raw.finish(tls, port)
        }
    };
    if target.password.is_some() {
        return Err("the endpoint contains a password (not shown); an Endpoint means Microsoft Entra ID, \
             without a key: to use an access key, set ConnectionString = host:6380,password=KEY,ssl=True instead"
            .to_owned());
    }
    target.entra_id = true;
    azure_warnings(&target, &mut warnings);
    Ok((target, warnings))
}

enum Scheme {
    Redis { tls: bool },
    Sqlite,
    Postgres,
    Etcd { tls: bool },
}

/// The URL scheme, if the string has one. A StackExchange string never contains "://".
fn scheme_of(t: &str) -> Result<Option<Scheme>, String> {
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("sqlite:") {
        return Ok(Some(Scheme::Sqlite));
    }
    // Only a plausible URL scheme counts: a StackExchange password may itself contain "://".
    let Some((scheme, _)) = lower.split_once("://").filter(|(s, _)| {
        !s.is_empty()
            && s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    }) else {
        return Ok(None);
    };
    match scheme {
        "redis" | "valkey" => Ok(Some(Scheme::Redis { tls: false })),
        "rediss" | "valkeys" => Ok(Some(Scheme::Redis { tls: true })),
        "postgres" | "postgresql" => Ok(Some(Scheme::Postgres)),
        "etcd" => Ok(Some(Scheme::Etcd { tls: false })),
        "etcds" => Ok(Some(Scheme::Etcd { tls: true })),
        s => Err(format!("unsupported URL scheme '{s}://'; {FORMS}")),
    }
}

/// A StackExchange string before defaults: ports and ssl may be unset.
struct RawSe {
    nodes: Vec<(String, Option<u16>)>,
    ssl: Option<bool>,
    user: Option<String>,
    password: Option<Secret>,
    database: Option<i64>,
    connect_timeout: Option<Duration>,
    sync_timeout: Option<Duration>,
}

impl RawSe {
    fn finish(self, tls: bool, default_port: u16) -> RedisTarget {
        RedisTarget {
            nodes: self
                .nodes
                .into_iter()
                .map(|(h, p)| (h, p.unwrap_or(default_port)))
                .collect(),
            tls,
            username: self.user,
            password: self.password,
            database: self.database,
            entra_id: false,
            connect_timeout: self.connect_timeout,
            sync_timeout: self.sync_timeout,
        }
    }
}

fn parse_stackexchange(t: &str, warnings: &mut Vec<String>) -> Result<RawSe, String> {
    let mut raw = RawSe {
        nodes: Vec::new(),
        ssl: None,
        user: None,
        password: None,
        database: None,
        connect_timeout: None,
        sync_timeout: None,
    };
    for (i, entry) in t.split(',').enumerate() {
        let n = i + 1;
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            let what = format!("entry {n} of the connection string");
            raw.nodes.push(parse_host_port(entry, &what)?);
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if !is_option_name(key) {
            return Err(format!(
                "entry {n} of the connection string is neither host:port nor option=value \
                 (not shown: it may contain a secret); {FORMS}"
            ));
        }
        match key.to_ascii_lowercase().as_str() {
            "password" => raw.password = (!value.is_empty()).then(|| Secret::new(value)),
            "user" => raw.user = (!value.is_empty()).then(|| value.to_owned()),
            "ssl" => {
                raw.ssl = Some(parse_bool(value).ok_or_else(|| {
                    format!(
                        "option ssl must be true or false (got '{}')",
                        shorten(value)
                    )
                })?);
            }
            "defaultdatabase" => {
                raw.database = Some(value.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(
                    || {
                        format!(
                            "option defaultDatabase must be a whole number, 0 or more (got '{}')",
                            shorten(value)
                        )
                    },
                )?);
            }
            "connecttimeout" => raw.connect_timeout = Some(parse_millis("connectTimeout", value)?),
            "synctimeout" => raw.sync_timeout = Some(parse_millis("syncTimeout", value)?),
            lower => {
                if lower.starts_with('$') {
                    warnings.push(format!(
                        "option {key} (a command rename) is not used by distributed-leasing (ignored)"
                    ));
                } else if let Some(known) = SE_UNUSED.iter().find(|k| k.eq_ignore_ascii_case(lower))
                {
                    warnings.push(format!(
                        "option {known} is not used by distributed-leasing (ignored)"
                    ));
                } else {
                    let all = SE_USED.iter().chain(SE_UNUSED).copied();
                    let hint = did_you_mean(key, all)
                        .map(|k| format!("; did you mean {k}?"))
                        .unwrap_or_default();
                    warnings.push(format!(
                        "unknown option {key} in the connection string (ignored){hint}"
                    ));
                }
            }
        }
    }
    if raw.nodes.is_empty() {
        return Err(format!(
            "the connection string names no host; {FORMS} (e.g. mycache.redis.cache.windows.net:6380,password=KEY,ssl=True)"
        ));
    }
    Ok(raw)
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0 && Duration::from_millis(*ms) <= super::timespan::MAX_DURATION)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            format!(
                "option {name} must be a whole number of milliseconds above 0, like 5000 (got '{}')",
                shorten(value)
            )
        })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`. `what` names the entry by position, for messages
/// (never by its text, which may be a misplaced secret).
fn parse_host_port(entry: &str, what: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err(format!(
                "{what}: an IPv6 address needs a closing ']', like [::1]:6379"
            ));
        };
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("{what}: expected :port after the IPv6 address, like [::1]:6379")
            })?),
        };
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!(
                "{what} is not a valid IPv6 address (not shown); write it like [::1]:6379"
            ));
        }
        (h, port)
    } else {
        let (h, p) = match entry.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!(
                    "{what} has too many ':' (write IPv6 addresses in brackets, like [::1]:6379)"
                ));
            }
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        };
        if !is_host_name(h) {
            return Err(format!(
                "{what} is not a host name (not shown: it may contain a secret); {FORMS}"
            ));
        }
        (h, p)
    };
    let port =
        match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| {
                format!("the port of host {host} must be a number from 1 to 65535")
            })?),
        };
    Ok((host.to_owned(), port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p > 0)
}

fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Option names are short identifiers (the longest StackExchange one has 26 characters); anything
/// longer or stranger is more likely a misplaced access key and is never echoed.
fn is_option_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 32
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'_' | b'-' | b'.'))
}

fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// A non-secret value for a message, cut to a readable length.
fn shorten(v: &str) -> String {
    let mut out: String = v.chars().take(40).collect();
    if v.chars().count() > 40 {
        out.push('…');
    }
    out.escape_debug().to_string()
}

/// The pieces of a `scheme://[user[:password]@]host[:port][/path][?query][#fragment]` URL,
/// user and password percent-decoded (shared by the Redis and PostgreSQL URL forms).
struct UrlParts<'a> {
    username: Option<String>,
    password: Option<Secret>,
    host_port: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn split_url(t: &str) -> Result<UrlParts<'_>, String> {
    let rest = t.split_once("://").map_or("", |(_, r)| r);
    // The last '@' ends the user info, so an unescaped '@' inside a password still works.
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match ui.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (ui, None),
            };
            let u = percent_decode(u).ok_or(
                "the user name in the URL has an invalid %-escape; encode special characters as %XX",
            )?;
            let p = match p {
                Some(p) => Some(percent_decode(p).ok_or(
                    "the password in the URL has an invalid %-escape (not shown); encode special characters as %XX",
                )?),
                None => None,
            };
            (
                (!u.is_empty()).then_some(u),
                p.filter(|p| !p.is_empty()).map(Secret::new),
            )
        }
    };
    let (before_fragment, fragment) = match hostpart.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (hostpart, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let (host_port, path) = match before_query.split_once('/') {
        Some((h, p)) => (h, p),
        None => (before_query, ""),
    };
    Ok(UrlParts {
        username,
        password,
        host_port,
        path,
        query,
        fragment,
    })
}

fn parse_url(t: &str, tls: bool, warnings: &mut Vec<String>) -> Result<RedisTarget, String> {
    let UrlParts {
        username,
        password,
        host_port,
        path,
        query,
        fragment,
    } = split_url(t)?;
    if host_port.contains(',') {
        return Err(
            "a redis:// URL names one host; for several nodes use the StackExchange form \
             host1:6379,host2:6379,password=KEY"
                .to_owned(),
        );
    }
    if host_port.is_empty() {
        return Err(format!("the URL names no host; {FORMS}"));
    }
    let (host, port) = parse_host_port(host_port, "the host part of the URL")?;
    let database = match path.trim_end_matches('/') {
        "" => None,
        p => Some(
            p.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!(
                        "the path of a redis URL is the database number, like /0 (got '/{}')",
                        shorten(p)
                    )
                })?,
        ),
    };
    if let Some(q) = query {
        for param in q.split('&').filter(|p| !p.is_empty()) {
            let name = param.split_once('=').map_or(param, |(n, _)| n);
            if is_option_name(name) {
                warnings.push(format!(
                    "URL parameter {name} is not used by distributed-leasing (ignored)"
                ));
            } else {
                warnings.push(
                    "a URL parameter is not used by distributed-leasing (ignored)".to_owned(),
                );
            }
        }
    }
    match fragment {
        Some(f) if f.eq_ignore_ascii_case("insecure") => warnings.push(
            "'#insecure' is not supported: TLS certificates are always verified; to trust a private \
             CA, set CaFile (RedisLeasing:CaFile) to its PEM file"
                .to_owned(),
        ),
        Some(f) if !f.is_empty() => {
            warnings.push("the URL fragment (after '#') is not used (ignored)".to_owned());
        }
        _ => {}
    }
    Ok(RedisTarget {
        nodes: vec![(host, port.unwrap_or(6379))],
        tls,
        username,
        password,
        database,
        entra_id: false,
        connect_timeout: None,
        sync_timeout: None,
    })
}

fn parse_sqlite(t: &str, warnings: &mut Vec<String>) -> Result<PathBuf, String> {
    const SQLITE_FORMS: &str = "expected sqlite:///absolute/path/leases.db (three slashes) or \
         sqlite://relative/path/leases.db (relative to the configuration directory)";
    let rest = &t["sqlite:".len()..];
    let Some(after) = rest.strip_prefix("//") else {
        if rest.eq_ignore_ascii_case(":memory:") {
            return Err(memory_error());
        }
        return Err(SQLITE_FORMS.to_owned());
    };
    let after = match after.split_once('?') {
        Some((p, _)) => {
            warnings.push("parameters after '?' in a sqlite URL are not used (ignored)".to_owned());
            p
        }
        None => after,
    };
    let decoded = percent_decode(after)
        .ok_or_else(|| format!("the sqlite path has an invalid %-escape; {SQLITE_FORMS}"))?;
    let mut path = decoded.as_str();
    if path.starts_with('/') {
        // `sqlite:////abs` (SQLAlchemy style) means the same absolute path.
        path = &path[path.len() - path.trim_start_matches('/').len() - 1..];
        // `sqlite:///C:/x` on Windows.
        let b = path.as_bytes();
        if b.len() >= 3 && b[1].is_ascii_alphabetic() && b[2] == b':' {
            path = &path[1..];
        }
    }
    if path.is_empty() || path == "/" {
        return Err(format!("the sqlite URL names no file; {SQLITE_FORMS}"));
    }
    if path.eq_ignore_ascii_case(":memory:") {
        return Err(memory_error());
    }
    if path.ends_with('/') {
        return Err(format!(
            "the sqlite URL names a directory, not a file; {SQLITE_FORMS}"
        ));
    }
    Ok(PathBuf::from(path))
}

/// `postgresql://user[:password]@host[:port][/database][?sslmode=...]`.
fn parse_postgres(t: &str, warnings: &mut Vec<String>) -> Result<PostgresTarget, String> {
    const PG_FORM: &str =
        "expected postgresql://user:password@host:5432/database?sslmode=verify-full";
    let parts = split_url(t)?;
    if parts.host_port.contains(',') {
        return Err(format!(
            "a postgresql:// URL names one host here (several hosts are not supported); {PG_FORM}"
        ));
    }
    if parts.host_port.is_empty() {
        return Err(format!(
            "the URL names no host (Unix sockets are not supported); {PG_FORM}"
        ));
    }
    let (host, port) = parse_host_port(parts.host_port, "the host part of the URL")?;
    let user = parts
        .username
        .ok_or_else(|| format!("the URL names no user; {PG_FORM}"))?;
    let dbname = match parts.path.trim_end_matches('/') {
        "" => None,
        p => Some(percent_decode(p).ok_or_else(|| {
            format!("the database name in the URL has an invalid %-escape; {PG_FORM}")
        })?),
    };
    let mut ssl_mode = PgSslMode::default();
    for param in parts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name == "sslmode" {
            ssl_mode = match value {
                "disable" => PgSslMode::Disable,
                "prefer" => PgSslMode::Prefer,
                "require" => PgSslMode::Require,
                "verify-full" => PgSslMode::VerifyFull,
                other => {
                    return Err(format!(
                    "sslmode '{}' is not supported; use disable, prefer, require or verify-full",
                    shorten(other)
                ))
                }
            };
        } else if is_option_name(name) {
            warnings.push(format!(
                "URL parameter {name} is not used by distributed-leasing (ignored)"
            ));
        } else {
            warnings
                .push("a URL parameter is not used by distributed-leasing (ignored)".to_owned());
        }
    }
    if parts.fragment.is_some_and(|f| !f.is_empty()) {
        warnings.push("the URL fragment (after '#') is not used (ignored)".to_owned());
    }
    Ok(PostgresTarget {
        host,
        port: port.unwrap_or(5432),
        user,
        password: parts.password,
        dbname,
        ssl_mode,
    })
}

/// `etcd://[user:password@]host[:port][,host[:port]...]` (`etcds://` for TLS).
fn parse_etcd(t: &str, tls: bool, warnings: &mut Vec<String>) -> Result<EtcdTarget, String> {
    const ETCD_FORM: &str =
        "expected etcd://[user:password@]host1:2379,host2:2379 (etcds:// for TLS)";
    let parts = split_url(t)?;
    if parts.host_port.is_empty() {
        return Err(format!("the URL names no host; {ETCD_FORM}"));
    }
    let mut endpoints = Vec::new();
    for (i, entry) in parts.host_port.split(',').enumerate() {
        if entry.is_empty() {
            return Err(format!(
                "host {} of the URL is empty (two commas in a row?); {ETCD_FORM}",
                i + 1
            ));
        }
        let (host, port) = parse_host_port(entry, "a host of the URL")?;
        endpoints.push((host, port.unwrap_or(2379)));
    }
    if !parts.path.trim_end_matches('/').is_empty() {
        return Err(format!(
            "an etcd URL has no path (keys live under KeyPrefix); {ETCD_FORM}"
        ));
    }
    if parts.password.is_some() && parts.username.is_none() {
        return Err(format!(
            "the URL has a password (not shown) but no user; etcd authenticates a user: {ETCD_FORM}"
        ));
    }
    for param in parts
        .query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        if is_option_name(name) {
            warnings.push(format!(
                "URL parameter {name} is not used by distributed-leasing (ignored)"
            ));
        } else {
            warnings
                .push("a URL parameter is not used by distributed-leasing (ignored)".to_owned());
        }
    }
    if parts.fragment.is_some_and(|f| !f.is_empty()) {
        warnings.push("the URL fragment (after '#') is not used (ignored)".to_owned());
    }
    if parts.password.is_some() && !tls {
        warnings.push(
            "the etcd password travels unencrypted over etcd:// (only once, to get a token; the token travels with every request): use etcds:// outside a trusted network"
                .to_owned(),
        );
    }
    Ok(EtcdTarget {
        endpoints,
        tls,
        user: parts.username,
        password: parts.password,
    })
}

fn memory_error() -> String {
    "an in-memory SQLite database lives inside one process, so every process would have its own \
     lock; give a file path, like sqlite:///var/lib/myapp/leases.db"
        .to_owned()
}

fn azure_warnings(target: &RedisTarget, warnings: &mut Vec<String>) {
    for (host, port) in &target.nodes {
        if !is_azure_host(host) {
            continue;
        }
        if !target.tls {
            warnings.push(format!(
                "{host} is Azure Cache for Redis, which accepts TLS connections only by default: \
                 add ssl=True (or use rediss://) and port 6380"
            ));
        } else if *port == 6379 {
            warnings.push(format!(
                "{host} is Azure Cache for Redis, whose TLS port is 6380, not 6379"
            ));
        }
    }
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The closest candidate within edit distance 2 (case-insensitive), for typo hints.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "s3cr3tK3y+/AbC=";

    fn redis(s: &str) -> (RedisTarget, Vec<String>) {
        match parse_connection_string(s) {
            Ok((StoreTarget::Redis(r), w)) => (r, w),
            other => panic!("{s}: expected a Redis target, got {other:?}"),
        }
    }

    fn refused(s: &str) -> String {
        let e = parse_connection_string(s).expect_err(s);
        assert!(!e.contains(KEY), "error leaks the key: {e}");
        assert!(!e.contains("s3cr3t"), "error leaks part of the key: {e}");
        e
    }

    #[test]
    fn stackexchange_form_of_the_sample() {
        let (r, w) = redis(&format!(
            "mycache.redis.cache.windows.net:6380,password={KEY},ssl=True,abortConnect=False"
        ));
        assert_eq!(
            r.nodes,
            vec![("mycache.redis.cache.windows.net".to_owned(), 6380)]
        );
        assert!(r.tls);
        assert_eq!(r.password.as_ref().map(Secret::expose), Some(KEY));
        assert_eq!(r.username, None);
        assert!(!r.entra_id);
        assert_eq!(
            w,
            vec!["option abortConnect is not used by distributed-leasing (ignored)"]
        );
        assert!(r.is_azure());
    }

    #[test]
    fn stackexchange_options_are_case_insensitive_and_complete() {
        let (r, w) = redis(&format!(
            "h1:7000, h2 ,[::1]:7002,PASSWORD={KEY},SSL=false,User=app,DEFAULTDATABASE=2,connectTimeout=1500,synctimeout=2500"
        ));
        assert_eq!(
            r.nodes,
            vec![
                ("h1".to_owned(), 7000),
                ("h2".to_owned(), 6379),
                ("::1".to_owned(), 7002)
            ]
        );
        assert!(!r.tls);
        assert_eq!(r.username.as_deref(), Some("app"));
        assert_eq!(r.database, Some(2));
        assert_eq!(r.connect_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.sync_timeout, Some(Duration::from_millis(2500)));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn host_without_port_defaults_by_ssl() {
        assert_eq!(
            redis("localhost").0.nodes,
            vec![("localhost".to_owned(), 6379)]
        );
        assert_eq!(
            redis("localhost,ssl=true").0.nodes,
            vec![("localhost".to_owned(), 6380)]
        );
    }

    #[test]
    fn unused_and_unknown_options_are_warnings() {
        let (_, w) = redis("h:1,allowAdmin=true,connectRetry=3,keepAlive=60,name=x,sslHost=h,$INFO=,passwrd=x,frobnicate=1");
        assert!(w
            .iter()
            .any(|x| x == "option allowAdmin is not used by distributed-leasing (ignored)"));
        assert!(w
            .iter()
            .any(|x| x.contains("option connectRetry is not used")));
        assert!(w.iter().any(|x| x.contains("option keepAlive is not used")));
        assert!(w.iter().any(|x| x.contains("option name is not used")));
        assert!(w.iter().any(|x| x.contains("option sslHost is not used")));
        assert!(w.iter().any(|x| x.contains("$INFO")));
        assert!(w
            .iter()
            .any(|x| x.contains("unknown option passwrd") && x.contains("did you mean password?")));
        assert!(w.iter().any(|x| x.contains("unknown option frobnicate")));
        assert_eq!(w.len(), 8, "{w:?}");
    }

    #[test]
    fn azure_without_tls_is_warned() {
        let (_, w) = redis("mycache.redis.cache.windows.net:6379,password=x");
        assert!(w[0].contains("TLS"), "{w:?}");
        let (_, w) = redis("rediss://mycache.redis.cache.windows.net");
        assert!(w[0].contains("6380"), "{w:?}");
    }

    #[test]
    fn redis_urls() {
        let (r, w) = redis("redis://localhost");
        assert_eq!(
            (r.nodes.clone(), r.tls, r.database),
            (vec![("localhost".to_owned(), 6379)], false, None)
        );
        assert!(w.is_empty());
        let (r, _) = redis("rediss://app:p%40ss%3Aw%2Fd@cache.example.com:6390/3");
        assert!(r.tls);
        assert_eq!(r.username.as_deref(), Some("app"));
        assert_eq!(r.password.as_ref().map(Secret::expose), Some("p@ss:w/d"));
        assert_eq!(r.database, Some(3));
        assert_eq!(r.nodes, vec![("cache.example.com".to_owned(), 6390)]);
        let (r, _) = redis(&format!("REDIS://:{}@[::1]:6379/", percent_encode(KEY)));
        assert_eq!(r.username, None);
        assert_eq!(r.password.as_ref().map(Secret::expose), Some(KEY));
        assert_eq!(r.nodes, vec![("::1".to_owned(), 6379)]);
        let (r, _) = redis("redis://user@host");
        assert_eq!(
            (r.username.as_deref(), r.password.is_none()),
            (Some("user"), true)
        );
        let (_, w) = redis("rediss://host/0?protocol=resp3#insecure");
        assert!(w.iter().any(|x| x.contains("protocol")));
        assert!(w
            .iter()
            .any(|x| x.contains("#insecure") && x.contains("always verified")));
        let (r, _) = redis("valkeys://host:1");
        assert!(r.tls);
    }

    fn postgres(s: &str) -> (PostgresTarget, Vec<String>) {
        match parse_connection_string(s) {
            Ok((StoreTarget::Postgres(p), w)) => (p, w),
            other => panic!("{s}: expected a PostgreSQL target, got {other:?}"),
        }
    }

    #[test]
    fn postgres_urls() {
        let (p, w) = postgres(&format!(
            "postgresql://app:{}@db.example.com:6543/leases?sslmode=verify-full",
            percent_encode(KEY)
        ));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(p.host, "db.example.com");
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "app");
        assert_eq!(p.password.as_ref().map(Secret::expose), Some(KEY));
        assert_eq!(p.dbname.as_deref(), Some("leases"));
        assert_eq!(p.ssl_mode, PgSslMode::VerifyFull);
        let shown = StoreTarget::Postgres(p.clone()).to_string();
        assert!(
            !shown.contains("s3cr3t") && shown.contains(":***@"),
            "{shown}"
        );
        assert!(!format!("{p:?}").contains("s3cr3t"));
        let (p, _) = postgres("postgres://u@[::1]");
        assert_eq!((p.host.as_str(), p.port, p.dbname), ("::1", 5432, None));
        assert_eq!(p.ssl_mode, PgSslMode::Prefer);
        for (mode, want) in [
            ("disable", PgSslMode::Disable),
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
        ] {
            assert_eq!(
                postgres(&format!("postgresql://u@h/d?sslmode={mode}"))
                    .0
                    .ssl_mode,
                want
            );
        }
        let (_, w) = postgres("postgresql://u@h/d?application_name=x");
        assert!(w[0].contains("application_name"), "{w:?}");
        assert!(refused("postgresql://u@h/d?sslmode=verify-ca").contains("verify-full"));
        assert!(refused(&format!("postgresql://:{KEY}@h/d")).contains("no user"));
        assert!(refused("postgresql:///d").contains("no host"));
        assert!(refused("postgresql://u@h1,h2/d").contains("one host"));
    }

    fn etcd(s: &str) -> (EtcdTarget, Vec<String>) {
        match parse_connection_string(s) {
            Ok((StoreTarget::Etcd(e), w)) => (e, w),
            other => panic!("{s}: expected an etcd target, got {other:?}"),
        }
    }

    #[test]
    fn etcd_urls() {
        let (e, w) = etcd("etcd://127.0.0.1:2379,[::1]:2380,etcd3");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            e.endpoints,
            [
                ("127.0.0.1".to_owned(), 2379),
                ("::1".to_owned(), 2380),
                ("etcd3".to_owned(), 2379)
            ]
        );
        assert!(!e.tls && e.user.is_none() && e.password.is_none());
        assert_eq!(
            StoreTarget::Etcd(e).to_string(),
            "etcd://127.0.0.1:2379,[::1]:2380,etcd3:2379"
        );
        let (e, w) = etcd(&format!("ETCDS://app:{}@e1:23790/", percent_encode(KEY)));
        assert!(w.is_empty(), "{w:?}");
        assert!(e.tls);
        assert_eq!(e.user.as_deref(), Some("app"));
        assert_eq!(e.password.as_ref().map(Secret::expose), Some(KEY));
        let shown = StoreTarget::Etcd(e.clone()).to_string();
        assert_eq!(shown, "etcds://app:***@e1:23790");
        assert!(!format!("{e:?}").contains("s3cr3t"));
        let (_, w) = etcd(&format!("etcd://app:{}@h", percent_encode(KEY)));
        assert!(w[0].contains("unencrypted"), "{w:?}");
        assert!(!w[0].contains("s3cr3t"));
        let (_, w) = etcd("etcd://h?dial-timeout=5");
        assert!(w[0].contains("dial-timeout"), "{w:?}");
        assert!(refused("etcd://").contains("no host"));
        assert!(refused("etcd://h1,,h2").contains("empty"));
        assert!(refused("etcd://h/prefix").contains("no path"));
        assert!(refused(&format!("etcd://:{KEY}@h")).contains("no user"));
        assert!(refused("etcd://h:99999").contains("port"));
    }

    #[test]
    fn sqlite_urls() {
        let path = |s: &str| match parse_connection_string(s) {
            Ok((StoreTarget::Sqlite { path }, _)) => path,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            path("sqlite:///var/lib/app/leases.db"),
            PathBuf::from("/var/lib/app/leases.db")
        );
        assert_eq!(
            path("sqlite:////var/leases.db"),
            PathBuf::from("/var/leases.db")
        );
        assert_eq!(
            path("sqlite://data/leases.db"),
            PathBuf::from("data/leases.db")
        );
        assert_eq!(
            path("SQLITE:///tmp/my%20leases.db"),
            PathBuf::from("/tmp/my leases.db")
        );
        assert_eq!(
            path("sqlite:///C:/data/leases.db"),
            PathBuf::from("C:/data/leases.db")
        );
        assert!(refused("sqlite::memory:").contains("in-memory"));
        assert!(refused("sqlite://:memory:").contains("in-memory"));
        assert!(refused("sqlite:///").contains("names no file"));
        assert!(refused("sqlite:leases.db").contains("three slashes"));
        assert!(refused("sqlite:///tmp/").contains("directory"));
    }

    #[test]
    fn refusals_never_contain_the_password() {
        for s in [
            format!("host:6380,password={KEY},ssl=maybe"),
            format!("host:abc,password={KEY}"),
            format!("host:6380,{KEY}"),
            format!("host:{KEY}"),
            format!("password:{KEY}"),
            format!("{KEY},ssl=true"),
            format!("password={KEY}"),
            format!("host,password={KEY},defaultDatabase=-1"),
            format!("host,password={KEY},connectTimeout=0"),
            format!("redis://:{KEY}"),
            format!("redis://user:{KEY}@host:notaport"),
            format!("redis://user:{KEY}%zz@host"),
            format!("redis://user:{KEY}@host/abc"),
            format!("redis://user:{KEY}@h1:1,h2:2"),
            format!("redis://:{KEY}@"),
            format!("http://user:{KEY}@host"),
            format!("{KEY}://host"),
            format!("host:1:{KEY}"),
            format!("[{KEY}]:1"),
        ] {
            let e = refused(&s);
            assert!(!e.is_empty());
        }
        assert!(refused("host:0").contains("1 to 65535"));
        assert!(refused("host:65536").contains("1 to 65535"));
        assert!(refused("ssl=true").contains("names no host"));
        assert!(refused("").contains("empty"));
        assert!(refused("h,ssl=yes").contains("ssl must be true or false"));
        assert!(refused("redis://h1:1,h2:2").contains("several nodes"));
        assert!(refused("http://host").contains("unsupported URL scheme 'http://'"));
        assert!(refused("::1").contains("brackets"));
    }

    #[test]
    fn endpoint_means_entra_id_and_uses_use_ssl_and_port() {
        let (r, w) = parse_endpoint("mycache.redis.cache.windows.net:6380", true, 6380).unwrap();
        assert!(r.entra_id && r.tls && r.password.is_none());
        assert_eq!(
            r.nodes,
            vec![("mycache.redis.cache.windows.net".to_owned(), 6380)]
        );
        assert!(w.is_empty());
        let (r, _) = parse_endpoint("myhost", false, 7000).unwrap();
        assert_eq!((r.nodes[0].1, r.tls), (7000, false));
        let (r, _) = parse_endpoint("myhost:1234,ssl=false", true, 7000).unwrap();
        assert_eq!((r.nodes[0].1, r.tls), (1234, false));
        let (r, _) = parse_endpoint("rediss://myhost:6390", false, 7000).unwrap();
        assert_eq!((r.nodes[0].1, r.tls, r.entra_id), (6390, true, true));
        let e = parse_endpoint(&format!("myhost:6380,password={KEY}"), true, 6380).unwrap_err();
        assert!(e.contains("ConnectionString") && !e.contains(KEY), "{e}");
        let e = parse_endpoint(&format!("rediss://u:{KEY}@myhost"), true, 6380).unwrap_err();
        assert!(!e.contains(KEY), "{e}");
        assert!(parse_endpoint("sqlite:///x.db", true, 6380)
            .unwrap_err()
            .contains("ConnectionString"));
    }

    #[test]
    fn urls_for_the_driver_and_for_people() {
        let (r, _) = redis(&format!(
            "h1:6380,h2:6381,password={KEY},ssl=True,user=a b,defaultDatabase=1"
        ));
        let url = r.to_url();
        assert_eq!(
            url.expose(),
            format!("rediss://a%20b:{}@h1:6380/1", percent_encode(KEY))
        );
        assert_eq!(format!("{url}"), "***");
        assert_eq!(r.display_url(), "rediss://a%20b:***@h1:6380,h2:6381/1");
        assert_eq!(StoreTarget::Redis(r.clone()).to_string(), r.display_url());
        assert!(!format!("{r:?}").contains(KEY));
        // The driver URL parses back to the same target.
        let (back, _) = redis(url.expose());
        assert_eq!(back.password, r.password);
        assert_eq!(back.username, r.username);
        let (r, _) = redis("[::1]:7000");
        assert_eq!(r.to_url().expose(), "redis://[::1]:7000");
        assert_eq!(r.display_url(), "redis://[::1]:7000");
        let (r, _) = redis(&format!("redis://:{KEY}@h"));
        assert_eq!(r.display_url(), "redis://:***@h:6379");
    }

    #[test]
    fn typo_hints() {
        assert_eq!(
            did_you_mean("Databse", ["Database", "Port"]),
            Some("Database")
        );
        assert_eq!(did_you_mean("zzzzzz", ["Database", "Port"]), None);
    }
}
