//! Configuration: where the leases live and how they behave, read in layers as the .NET sample
//! reads them, so its `appsettings.json` and `appsettings.Local.json` work unchanged.
//!
//! Precedence, lowest first: built-in defaults → `appsettings.json` → `appsettings.Local.json` →
//! environment variables `RedisLeasing__<Key>` → explicit [`Overrides`] (arguments). All keys live
//! in the section `RedisLeasing`; section and key names are case-insensitive, as in .NET.
//!
//! Invariants:
//! - [`load`] either returns settings that passed every check, or one [`LeaseError::Config`] that
//!   lists *every* problem, each with the key, the offending value, where it came from, and the fix.
//! - No message or warning contains a password, a connection string's password part or a token:
//!   the `ConnectionString` value is never echoed, only the parser's description of the problem.
//! - An absent file is fine; a file that exists but cannot be read is an error naming it.
//! - Only the effective value of a key is checked (a bad value in `appsettings.json` overridden by
//!   `appsettings.Local.json` is not an error), as .NET binds only the merged result.
//!
//! Decisions worth knowing:
//! - Values may be JSON strings as well as numbers/booleans (`"Database": "0"`, `"UseSsl": "true"`),
//!   because .NET configuration is strings underneath and environment variables are always strings;
//!   a value that does not convert (`"Database": "zero"`, `"Port": true`) is refused. `null` unsets.
//! - `DefaultLeaseDuration` and `AutoRenewInterval`: TimeSpan strings or numbers of **seconds**.
//!   `ConnectTimeout` and `SyncTimeout`: numbers of **milliseconds** (as in the sample, `5000`), or
//!   TimeSpan strings (`00:00:05`).
//! - Lease timing: the API's rule ([`crate::timing`]). `DefaultLeaseDuration` lasts 10 ms to a
//!   year; with auto-renew on, `AutoRenewInterval` must be at least 5 ms and at most
//!   `DefaultLeaseDuration − max(10 % of it, min(1 s, half of it))`
//!   ([`crate::timing::max_renew_interval`]), so at least one retry fits before the lease
//!   expires. With auto-renew off, a bad interval is a warning (the .NET library skips that check
//!   too; a per-lease `auto_renew=True` re-checks it).
//! - `ConnectionString` wins over `Endpoint` when both are set in files/environment (warned); a
//!   connection string or endpoint given in [`Overrides`] wins over both from lower layers.
//! - `UseSsl` and `Port` apply to `Endpoint` only; a connection string carries its own.
//! - `Database`, `ConnectTimeout`, `SyncTimeout` against `defaultDatabase=`, `connectTimeout=`,
//!   `syncTimeout=` (or a URL's `/db`) inside the connection string: the one from the later layer
//!   wins; in the same layer the key wins (as in .NET, which passes `Database` explicitly); a
//!   difference is warned. So the template's `"Database": 0` does not override a `redis://h/3`
//!   given in `appsettings.Local.json` or the environment. The effective values are written into
//!   the target.
//! - A relative `sqlite://relative/leases.db` is resolved against the configuration directory, and
//!   so is a relative `CaFile`. `CaFile` must name an existing file; it applies to TLS connections
//!   only (a warning otherwise) and replaces the system's roots (and `SSL_CERT_FILE`) for Redis.
//! - Options of the .NET library that this crate does not read (`HostName`, `AccessKey`,
//!   `AbortOnConnectFail`, ...) and unknown keys are warnings, with typo hints.

pub mod connstr;
mod json;
pub mod timespan;

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use connstr::{
    parse_connection_string, parse_endpoint, EtcdTarget, PgSslMode, PostgresTarget, RedisTarget,
    StoreTarget,
};
pub use timespan::{format_timespan, parse_duration};

use crate::error::LeaseError;
use crate::secret::Secret;
use crate::timing;
use json::Json;

/// The configuration section all keys live in.
pub const SECTION: &str = "RedisLeasing";
/// The template file (committed, no secrets).
pub const BASE_FILE: &str = "appsettings.json";
/// The local file (git-ignored, may hold the connection string).
pub const LOCAL_FILE: &str = "appsettings.Local.json";

/// Effective configuration after all layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the leases live; `None` when nothing is configured (see [`not_configured_error`]).
    pub target: Option<StoreTarget>,
    /// The `Endpoint` in use (Microsoft Entra ID mode); `None` when a connection string is used.
    pub endpoint: Option<String>,
    /// Prefix of every lease key (`lease:`).
    pub key_prefix: String,
    /// Redis database number (0).
    pub database: i64,
    /// TLS for an `Endpoint` without explicit `ssl=` (true).
    pub use_ssl: bool,
    /// Port for an `Endpoint` without `:port` (6380).
    pub port: u16,
    /// Lease duration when a lease does not give one (30 s).
    pub default_lease_duration: Duration,
    /// Renew held leases in the background (true).
    pub auto_renew: bool,
    /// Time between renewals (20 s).
    pub auto_renew_interval: Duration,
    /// Connection timeout (5000 ms).
    pub connect_timeout: Duration,
    /// Timeout of one operation (5000 ms).
    pub sync_timeout: Duration,
    /// PEM file of the CA that signed the Redis server's TLS certificate (`CaFile`), resolved
    /// against the configuration directory; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Things worth telling the user that did not stop loading (unknown keys, unused options...).
    pub warnings: Vec<String>,
    /// What was read, in order: file paths and environment variable names.
    pub sources: Vec<String>,
}

impl Default for Settings {
    /// The sample's defaults, with no target.
    fn default() -> Self {
        Self {
            target: None,
            endpoint: None,
            key_prefix: "lease:".to_owned(),
            database: 0,
            use_ssl: true,
            port: 6380,
            default_lease_duration: Duration::from_secs(30),
            auto_renew: true,
            auto_renew_interval: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(5),
            ca_file: None,
            warnings: Vec::new(),
            sources: Vec::new(),
        }
    }
}

impl Settings {
    /// True when a store is configured (a connection string or an endpoint).
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.target.is_some()
    }
}

/// Explicit values (command-line arguments, function parameters): the highest layer.
///
/// Each `Some` replaces whatever the files and environment said, and is validated like them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// A connection string or URL (`redis://…`, `sqlite:///…`); it may hold a password.
    pub connection_string: Option<Secret>,
    /// An `Endpoint` (Entra ID mode).
    pub endpoint: Option<String>,
    /// `KeyPrefix`.
    pub key_prefix: Option<String>,
    /// `Database`.
    pub database: Option<i64>,
    /// `UseSsl`.
    pub use_ssl: Option<bool>,
    /// `Port`.
    pub port: Option<u16>,
    /// `DefaultLeaseDuration`.
    pub default_lease_duration: Option<Duration>,
    /// `AutoRenew`.
    pub auto_renew: Option<bool>,
    /// `AutoRenewInterval`.
    pub auto_renew_interval: Option<Duration>,
    /// `ConnectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `SyncTimeout`.
    pub sync_timeout: Option<Duration>,
    /// `CaFile`.
    pub ca_file: Option<PathBuf>,
}

/// Loads the configuration from `dir` and the given environment, without overrides.
///
/// `env` is the process environment as `(name, value)` pairs (pass `std::env::vars()`; tests pass
/// their own). Only `RedisLeasing__*` / `RedisLeasing:*` names (any case) are read.
///
/// # Errors
///
/// [`LeaseError::Config`] listing every problem found: malformed JSON (file, line, column), an
/// unreadable file, a value of the wrong type or out of range, a renewal interval that leaves no
/// room for retries, a connection string or endpoint that does not parse. Not configuring a store
/// at all is *not* an error here: check [`Settings::is_configured`].
pub fn load(dir: &Path, env: &[(String, String)]) -> Result<Settings, LeaseError> {
    load_with(dir, env, &Overrides::default())
}

/// [`load`] with the process environment.
///
/// # Errors
///
/// As [`load`].
pub fn load_from_process_env(dir: &Path) -> Result<Settings, LeaseError> {
    load_with(dir, &process_env(), &Overrides::default())
}

/// The process environment's `RedisLeasing` variables as UTF-8 pairs (other variables are skipped,
/// so a non-UTF-8 variable elsewhere cannot make loading fail).
#[must_use]
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            env_key(&k)?;
            Some((k, v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Loads the configuration from `dir`, `env`, then `overrides` (highest).
///
/// # Errors
///
/// As [`load`].
pub fn load_with(
    dir: &Path,
    env: &[(String, String)],
    overrides: &Overrides,
) -> Result<Settings, LeaseError> {
    let mut layers = Layers::default();
    for name in [BASE_FILE, LOCAL_FILE] {
        layers.read_file(&dir.join(name));
    }
    layers.read_env(env);
    layers.apply_overrides(overrides);
    layers.resolve(dir)
}

/// The error to raise when a lease is asked for and nothing is configured.
///
/// Lists every way to configure: `appsettings.Local.json` with `ConnectionString` or `Endpoint`,
/// the `RedisLeasing__ConnectionString` environment variable, a URL argument, and the wizard.
#[must_use]
pub fn not_configured_error(dir: &Path) -> LeaseError {
    let local = dir.join(LOCAL_FILE);
    LeaseError::Config(format!(
        "distributed-leasing is not configured: no {SECTION}:ConnectionString or {SECTION}:Endpoint \
         was found in {base}, {local} or the environment. Configure it in one of these ways:\n\
         \x20 1. create {local} with an access key:\n\
         \x20      {{\"{SECTION}\": {{\"ConnectionString\": \"mycache.redis.cache.windows.net:6380,password=YOUR_KEY,ssl=True\"}}}}\n\
         \x20    or, for Microsoft Entra ID (no key stored; uses your Azure login or managed identity):\n\
         \x20      {{\"{SECTION}\": {{\"Endpoint\": \"mycache.redis.cache.windows.net:6380\"}}}}\n\
         \x20 2. set the environment variable {SECTION}__ConnectionString, e.g. redis://localhost:6379\n\
         \x20 3. pass a URL: dl.lease(name, url=\"redis://[user:password@]host:port/db\") (rediss://... \
         for TLS), or url=\"sqlite:///absolute/path/leases.db\" for leases shared by the processes of \
         one machine; or LeaseClient.connect(url)\n\
         \x20 4. run the wizard: leasing configure\n\
         There is deliberately no silent local default: it would give each machine its own lock.",
        base = dir.join(BASE_FILE).display(),
        local = local.display(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Keys and raw values

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Field {
    ConnectionString,
    Endpoint,
    KeyPrefix,
    Database,
    UseSsl,
    Port,
    DefaultLeaseDuration,
    AutoRenew,
    AutoRenewInterval,
    ConnectTimeout,
    SyncTimeout,
    CaFile,
}

const KEYS: [Field; 12] = [
    Field::ConnectionString,
    Field::Endpoint,
    Field::KeyPrefix,
    Field::Database,
    Field::UseSsl,
    Field::Port,
    Field::DefaultLeaseDuration,
    Field::AutoRenew,
    Field::AutoRenewInterval,
    Field::ConnectTimeout,
    Field::SyncTimeout,
    Field::CaFile,
];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::ConnectionString => "ConnectionString",
            Self::Endpoint => "Endpoint",
            Self::KeyPrefix => "KeyPrefix",
            Self::Database => "Database",
            Self::UseSsl => "UseSsl",
            Self::Port => "Port",
            Self::DefaultLeaseDuration => "DefaultLeaseDuration",
            Self::AutoRenew => "AutoRenew",
            Self::AutoRenewInterval => "AutoRenewInterval",
            Self::ConnectTimeout => "ConnectTimeout",
            Self::SyncTimeout => "SyncTimeout",
            Self::CaFile => "CaFile",
        }
    }

    fn find(name: &str) -> Option<Self> {
        KEYS.into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

/// Options of the .NET DistributedLeasing library (and its base `LeaseOptions`) that this crate
/// does not read, each with advice. Their values are never shown (`AccessKey` is a secret).
const DOTNET_UNUSED: &[(&str, &str)] = &[
    (
        "HostName",
        "use Endpoint (Microsoft Entra ID) or ConnectionString instead",
    ),
    (
        "UseManagedIdentity",
        "an Endpoint without a password uses Microsoft Entra ID",
    ),
    (
        "AccessKey",
        "put the key into ConnectionString: host:6380,password=KEY,ssl=True",
    ),
    (
        "Credential",
        "an Endpoint without a password uses Microsoft Entra ID",
    ),
    (
        "AbortOnConnectFail",
        "connection failures are reported as errors",
    ),
    ("ClockDriftFactor", "the clock drift allowance is built in"),
    ("MinimumValidity", ""),
    ("AcquireTimeout", "pass wait= when acquiring a lease"),
    ("AcquireRetryInterval", ""),
    ("Metadata", "pass metadata= when acquiring a lease"),
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Argument,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("built-in default"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::Argument => f.write_str("argument"),
        }
    }
}

/// A value before conversion. Secret keys (`ConnectionString`) are held as [`Secret`].
#[derive(Clone)]
enum Raw {
    Json(Json),
    Text(String),
    Secret(Secret),
    Duration(Duration),
    Int(i64),
    Bool(bool),
}

impl Raw {
    /// The value as shown in messages.
    fn show(&self) -> String {
        fn quote(s: &str) -> String {
            let mut out: String = s.chars().take(60).collect();
            if s.chars().count() > 60 {
                out.push('…');
            }
            format!("\"{}\"", out.escape_debug())
        }
        match self {
            Self::Json(Json::String(s)) | Self::Text(s) => quote(s),
            Self::Json(Json::Number(n)) => n.to_string(),
            Self::Json(Json::Bool(b)) | Self::Bool(b) => b.to_string(),
            Self::Json(other) => other.kind().to_owned(),
            Self::Secret(_) => "(hidden: it may contain a password)".to_owned(),
            Self::Duration(d) => format!("\"{}\"", format_timespan(*d)),
            Self::Int(i) => i.to_string(),
        }
    }

    /// The value as text, when it is text.
    fn text(&self) -> Option<&str> {
        match self {
            Self::Json(Json::String(s)) | Self::Text(s) => Some(s),
            Self::Secret(s) => Some(s.expose()),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Entry {
    raw: Raw,
    origin: Origin,
    /// 1 = `appsettings.json`, 2 = `appsettings.Local.json`, 3 = environment, 4 = arguments.
    layer: u8,
}

#[derive(Default)]
struct Layers {
    values: HashMap<Field, Entry>,
    /// The layer being read (see [`Entry::layer`]).
    layer: u8,
    /// [`Overrides`] gave a connection string or endpoint, but only blank ones.
    blank_target_argument: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    sources: Vec<String>,
}

/// The key inside the section for a `RedisLeasing__Key` / `RedisLeasing:Key` name (any case).
fn env_key(name: &str) -> Option<&str> {
    let (prefix, rest) = name.split_at_checked(SECTION.len())?;
    if !prefix.eq_ignore_ascii_case(SECTION) {
        return None;
    }
    rest.strip_prefix("__").or_else(|| rest.strip_prefix(':'))
}

impl Layers {
    fn set(&mut self, key: Field, raw: Raw, origin: Origin) {
        let raw = match raw {
            Raw::Json(Json::Null) => {
                // .NET: null unsets the key for this and lower layers.
                self.values.remove(&key);
                return;
            }
            Raw::Json(Json::String(s)) | Raw::Text(s) if key == Field::ConnectionString => {
                Raw::Secret(Secret::new(s))
            }
            other => other,
        };
        let layer = self.layer;
        self.values.insert(key, Entry { raw, origin, layer });
    }

    fn read_file(&mut self, path: &Path) {
        self.layer += 1;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                self.problems.push(format!(
                    "cannot read {}: {e}. Fix: make the file readable by this user (or remove it)",
                    path.display()
                ));
                return;
            }
        };
        self.sources.push(path.display().to_string());
        let doc = match json::parse_document(&bytes) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(format!(
                    "{} is not valid JSON: {e}. Fix: correct the JSON at that place (a missing \
                     comma or quote is the usual cause)",
                    path.display()
                ));
                return;
            }
        };
        let Json::Object(top) = doc else {
            self.problems.push(format!(
                "{} must contain a JSON object like {{\"{SECTION}\": {{...}}}}, not {}",
                path.display(),
                doc.kind()
            ));
            return;
        };
        let origin = Origin::File(path.to_path_buf());
        let names: Vec<String> = top.iter().map(|(k, _)| k.clone()).collect();
        let mut members: Vec<(String, Json)> = Vec::new();
        let mut found_section = false;
        for (name, value) in top {
            if name.eq_ignore_ascii_case(SECTION) {
                found_section = true;
                match value {
                    Json::Object(m) => members.extend(m),
                    Json::Null => {}
                    other => self.problems.push(format!(
                        "{SECTION} in {} is {}, but must be an object like {{\"ConnectionString\": \"...\"}}. \
                         Fix: put the settings inside {{ }}",
                        path.display(),
                        other.kind()
                    )),
                }
            } else if let Some(k) = flattened_key(&name) {
                // .NET also reads a flattened "RedisLeasing:Key" member.
                found_section = true;
                members.push((k.to_owned(), value));
            }
        }
        if !found_section {
            let near = connstr::did_you_mean(SECTION, names.iter().map(String::as_str));
            if let Some(n) = near {
                self.warnings.push(format!(
                    "{}: section \"{n}\" is not read; did you mean \"{SECTION}\"?",
                    path.display()
                ));
            }
        }
        self.read_members(members, &origin, path);
    }

    fn read_members(&mut self, members: Vec<(String, Json)>, origin: &Origin, path: &Path) {
        let mut seen: HashMap<String, String> = HashMap::new();
        for (name, value) in members {
            let lower = name.to_ascii_lowercase();
            if let Some(first) = seen.insert(lower, name.clone()) {
                self.problems.push(format!(
                    "{SECTION}:{name} appears twice in {} (as \"{first}\" and \"{name}\"; keys are \
                     case-insensitive). Fix: keep only one of them",
                    path.display()
                ));
                continue;
            }
            match Field::find(&name) {
                Some(key) => self.set(key, Raw::Json(value), origin.clone()),
                None => self.warn_unknown(
                    &format!("{SECTION}:{name} in {}", path.display()),
                    &name,
                    ":",
                ),
            }
        }
    }

    /// Warns about a key that is not ours. `name` is the key inside the section (for environment
    /// variables possibly `Metadata__region`: the first segment decides), `sep` the separator to
    /// suggest in a hint.
    fn warn_unknown(&mut self, what: &str, name: &str, sep: &str) {
        let first = name.split("__").next().unwrap_or(name);
        let first = first.split(':').next().unwrap_or(first);
        if let Some((known, advice)) = DOTNET_UNUSED
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(first))
        {
            let advice = if advice.is_empty() {
                String::new()
            } else {
                format!("; {advice}")
            };
            self.warnings.push(format!(
                "{what}: {known} is an option of the .NET DistributedLeasing library that \
                 distributed-leasing does not use (ignored){advice}"
            ));
            return;
        }
        let candidates = KEYS
            .iter()
            .map(|k| k.name())
            .chain(DOTNET_UNUSED.iter().map(|(k, _)| *k));
        let hint = connstr::did_you_mean(first, candidates)
            .map(|k| format!("; did you mean {SECTION}{sep}{k}?"))
            .unwrap_or_default();
        self.warnings
            .push(format!("unknown key {what} (ignored){hint}"));
    }

    fn read_env(&mut self, env: &[(String, String)]) {
        self.layer = 3;
        let mut by_key: HashMap<Field, (String, String)> = HashMap::new();
        for (name, value) in env {
            let Some(rest) = env_key(name) else { continue };
            self.sources.push(format!("environment variable {name}"));
            let Some(key) = Field::find(rest) else {
                let sep = if name.contains("__") { "__" } else { ":" };
                self.warn_unknown(&format!("environment variable {name}"), rest, sep);
                continue;
            };
            if let Some((other, other_value)) = by_key.get(&key) {
                if other_value != value {
                    let shown = if matches!(key, Field::ConnectionString | Field::Endpoint) {
                        String::new()
                    } else {
                        format!(
                            " (\"{}\" and \"{}\")",
                            other_value.escape_debug(),
                            value.escape_debug()
                        )
                    };
                    self.problems.push(format!(
                        "{SECTION}:{} is set by two environment variables with different values, \
                         {other} and {name}{shown}. Fix: unset one of them",
                        key.name()
                    ));
                }
                continue;
            }
            by_key.insert(key, (name.clone(), value.clone()));
        }
        let mut keys: Vec<_> = by_key.into_iter().collect();
        keys.sort_by_key(|(k, _)| *k);
        for (key, (name, value)) in keys {
            self.set(key, Raw::Text(value), Origin::Env(name));
        }
    }

    fn apply_overrides(&mut self, o: &Overrides) {
        self.layer = 4;
        let mut any = false;
        let mut put = |layers: &mut Self, key: Field, raw: Option<Raw>| {
            if let Some(raw) = raw {
                any = true;
                layers.set(key, raw, Origin::Argument);
            }
        };
        if o.connection_string.is_some() || o.endpoint.is_some() {
            let blank = |t: Option<&str>| t.is_none_or(|t| t.trim().is_empty());
            self.blank_target_argument = blank(o.connection_string.as_ref().map(Secret::expose))
                && blank(o.endpoint.as_deref());
            self.values.remove(&Field::ConnectionString);
            self.values.remove(&Field::Endpoint);
        }
        put(
            self,
            Field::ConnectionString,
            o.connection_string.clone().map(Raw::Secret),
        );
        put(self, Field::Endpoint, o.endpoint.clone().map(Raw::Text));
        put(self, Field::KeyPrefix, o.key_prefix.clone().map(Raw::Text));
        put(self, Field::Database, o.database.map(Raw::Int));
        put(self, Field::UseSsl, o.use_ssl.map(Raw::Bool));
        put(self, Field::Port, o.port.map(|p| Raw::Int(i64::from(p))));
        put(
            self,
            Field::DefaultLeaseDuration,
            o.default_lease_duration.map(Raw::Duration),
        );
        put(self, Field::AutoRenew, o.auto_renew.map(Raw::Bool));
        put(
            self,
            Field::AutoRenewInterval,
            o.auto_renew_interval.map(Raw::Duration),
        );
        put(
            self,
            Field::ConnectTimeout,
            o.connect_timeout.map(Raw::Duration),
        );
        put(self, Field::SyncTimeout, o.sync_timeout.map(Raw::Duration));
        put(
            self,
            Field::CaFile,
            o.ca_file
                .as_ref()
                .map(|p| Raw::Text(p.to_string_lossy().into_owned())),
        );
        if any {
            self.sources.push("arguments".to_owned());
        }
    }

    fn entry(&self, key: Field) -> Option<&Entry> {
        self.values.get(&key)
    }

    /// Formats one problem: key, value, origin, issue and fix.
    fn problem(key: Field, entry: &Entry, issue: &str, fix: &str) -> String {
        format!(
            "{SECTION}:{} = {} (from {}): {issue}. Fix: {fix}",
            key.name(),
            entry.raw.show(),
            entry.origin
        )
    }

    /// Converts a key's effective value, recording a problem and returning `default` on failure.
    fn get<T>(
        &mut self,
        key: Field,
        default: T,
        convert: impl Fn(&Raw) -> Result<T, (String, String)>,
    ) -> T {
        let Some(entry) = self.entry(key).cloned() else {
            return default;
        };
        match convert(&entry.raw) {
            Ok(v) => v,
            Err((issue, fix)) => {
                self.problems.push(Self::problem(key, &entry, &issue, &fix));
                default
            }
        }
    }

    fn origin(&self, key: Field) -> Origin {
        self.entry(key)
            .map_or(Origin::Default, |e| e.origin.clone())
    }

    fn shown(&self, key: Field, value: impl FnOnce() -> String) -> String {
        self.entry(key).map_or_else(value, |e| e.raw.show())
    }

    /// The effective settings: every key converted (or recorded as a problem), the target
    /// parsed and merged with the keys it overlaps, then all problems reported at once.
    fn resolve(mut self, dir: &Path) -> Result<Settings, LeaseError> {
        let mut settings = self.read_store_keys();
        self.read_lease_keys(&mut settings);
        settings.ca_file = self.read_ca_file(dir);
        let (target, target_key) = self.read_target(&mut settings);
        self.warn_unused_ca_file(&settings, target.as_ref());
        match target {
            Some(StoreTarget::Redis(r)) => self.use_redis_target(&mut settings, r, target_key),
            Some(StoreTarget::Sqlite { path }) => self.use_sqlite_target(&mut settings, path, dir),
            Some(StoreTarget::Postgres(p)) => {
                self.warn_unused_database(&settings, "PostgreSQL");
                settings.target = Some(StoreTarget::Postgres(p));
            }
            Some(StoreTarget::Etcd(e)) => {
                self.warn_unused_database(&settings, "etcd");
                settings.target = Some(StoreTarget::Etcd(e));
            }
            None => {}
        }
        self.finish(settings)
    }

    /// The keys of the connection: `KeyPrefix`, `Database`, `UseSsl` and `Port` (defaults for
    /// the rest of the settings).
    fn read_store_keys(&mut self) -> Settings {
        let d = Settings::default();
        let key_prefix = self.get(Field::KeyPrefix, d.key_prefix.clone(), |r| {
            let s = r
                .text()
                .ok_or_else(|| wrong_type(r, "a string", "\"lease:\""))?;
            if s.trim().is_empty() {
                return Err((
                    "the key prefix is empty".to_owned(),
                    "set a prefix such as \"lease:\" (every instance must use the same one)"
                        .to_owned(),
                ));
            }
            Ok(s.to_owned())
        });
        let database = self.get(Field::Database, d.database, |r| {
            let n = int(r, "0")?;
            if n < 0 {
                return Err((
                    "a database number cannot be negative".to_owned(),
                    "use 0 (the default) or another database number".to_owned(),
                ));
            }
            Ok(n)
        });
        let use_ssl = self.get(Field::UseSsl, d.use_ssl, boolean);
        let port = self.get(Field::Port, d.port, |r| {
            let n = int(r, "6380")?;
            u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| {
                (
                    "a port must be from 1 to 65535".to_owned(),
                    "use 6380 for Azure Cache for Redis with TLS, 6379 without".to_owned(),
                )
            })
        });
        Settings {
            key_prefix,
            database,
            use_ssl,
            port,
            ..d
        }
    }

    /// The lease and timeout keys, and whether the renewal interval fits the duration (checked
    /// only when both converted).
    fn read_lease_keys(&mut self, s: &mut Settings) {
        let before = self.problems.len();
        s.default_lease_duration =
            self.get(Field::DefaultLeaseDuration, s.default_lease_duration, |r| {
                positive(seconds_duration(r)?)
            });
        s.auto_renew = self.get(Field::AutoRenew, s.auto_renew, boolean);
        s.auto_renew_interval = self.get(Field::AutoRenewInterval, s.auto_renew_interval, |r| {
            positive(seconds_duration(r)?)
        });
        s.connect_timeout = self.get(Field::ConnectTimeout, s.connect_timeout, |r| {
            positive(millis_duration(r)?)
        });
        s.sync_timeout = self.get(Field::SyncTimeout, s.sync_timeout, |r| {
            positive(millis_duration(r)?)
        });
        if self.problems.len() == before {
            self.check_renewal(
                s.default_lease_duration,
                s.auto_renew_interval,
                s.auto_renew,
            );
        }
    }

    /// `CaFile`, resolved against the configuration directory; it must exist.
    fn read_ca_file(&mut self, dir: &Path) -> Option<PathBuf> {
        self.get(Field::CaFile, None, |r| {
            let s = r
                .text()
                .ok_or_else(|| wrong_type(r, "a file path", "\"certs/redis-ca.pem\""))?;
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let path = dir.join(s);
            if !path.is_file() {
                return Err((
                    format!("there is no file {}", path.display()),
                    "give the path (absolute, or relative to the configuration directory) of the \
                     PEM file of the CA that signed the Redis server's certificate"
                        .to_owned(),
                ));
            }
            Ok(Some(path))
        })
    }

    /// The target: `ConnectionString`, else `Endpoint` (which sets `settings.endpoint`), with
    /// the key it came from, for merging and messages.
    fn read_target(
        &mut self,
        settings: &mut Settings,
    ) -> (Option<StoreTarget>, Option<(Field, Entry)>) {
        let cs = self.entry(Field::ConnectionString).cloned();
        if let Some(e) = cs.as_ref().filter(|e| e.raw.text().is_none()) {
            self.problems.push(format!(
                "{SECTION}:ConnectionString (from {}) must be a string, found {}. Fix: write it as \
                 \"host:6380,password=KEY,ssl=True\" or \"redis://host:6379\"",
                e.origin,
                raw_kind(&e.raw)
            ));
        }
        let cs = cs.filter(|e| e.raw.text().is_some_and(|t| !t.trim().is_empty()));
        let ep = self
            .entry(Field::Endpoint)
            .cloned()
            .filter(|e| !matches!(e.raw.text(), Some(t) if t.trim().is_empty()));
        if let Some(cs) = cs {
            if let Some(ep) = &ep {
                self.warnings.push(format!(
                    "{SECTION}:Endpoint (from {}) is ignored because {SECTION}:ConnectionString is set (from {}); \
                     remove one of them (an empty environment variable {SECTION}__ConnectionString= also unsets it)",
                    ep.origin, cs.origin
                ));
            }
            let target = self.read_connection_string(&cs);
            (target, Some((Field::ConnectionString, cs)))
        } else if let Some(ep) = ep {
            match self.read_endpoint(&ep, settings.use_ssl, settings.port) {
                Some((endpoint, target)) => {
                    settings.endpoint = Some(endpoint);
                    (Some(target), Some((Field::Endpoint, ep)))
                }
                None => (None, None),
            }
        } else {
            (None, None)
        }
    }

    /// Parses a `ConnectionString` entry, recording its warnings, or its problem (never
    /// showing the value: it may contain a password).
    fn read_connection_string(&mut self, cs: &Entry) -> Option<StoreTarget> {
        let text = cs.raw.text().unwrap_or_default();
        match parse_connection_string(text) {
            Ok((t, w)) => {
                self.warnings.extend(
                    w.into_iter()
                        .map(|w| format!("{SECTION}:ConnectionString (from {}): {w}", cs.origin)),
                );
                Some(t)
            }
            Err(e) => {
                // A SQLite value's own error already says how to write it; the Redis
                // forms would be a wrong hint there.
                let fix = if text
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("sqlite:")
                {
                    ""
                } else {
                    " Fix: write it as host:6380,password=KEY,ssl=True or redis://host:6379"
                };
                self.problems.push(format!(
                    "{SECTION}:ConnectionString (from {}; value hidden: it may contain a password): {e}.{fix}",
                    cs.origin
                ));
                None
            }
        }
    }

    /// Parses an `Endpoint` entry with `UseSsl` and `Port`: the endpoint as written and its
    /// target, or `None` with the problem recorded.
    fn read_endpoint(
        &mut self,
        ep: &Entry,
        use_ssl: bool,
        port: u16,
    ) -> Option<(String, StoreTarget)> {
        let Some(text) = ep.raw.text() else {
            self.problems.push(Self::problem(
                Field::Endpoint,
                ep,
                &format!("expected a string, found {}", raw_kind(&ep.raw)),
                "write it as \"mycache.redis.cache.windows.net:6380\"",
            ));
            return None;
        };
        match parse_endpoint(text, use_ssl, port) {
            Ok((t, w)) => {
                self.warnings.extend(
                    w.into_iter()
                        .map(|w| format!("{SECTION}:Endpoint (from {}): {w}", ep.origin)),
                );
                Some((text.trim().to_owned(), StoreTarget::Redis(t)))
            }
            Err(e) => {
                self.problems.push(format!(
                    "{SECTION}:Endpoint (from {}): {e}. Fix: write it as mycache.redis.cache.windows.net:6380",
                    ep.origin
                ));
                None
            }
        }
    }

    /// Warns that `CaFile` is set for a target that does not use TLS.
    fn warn_unused_ca_file(&mut self, settings: &Settings, target: Option<&StoreTarget>) {
        if settings.ca_file.is_none() {
            return;
        }
        let tls = match target {
            Some(StoreTarget::Redis(r)) => r.tls,
            // Only verify-full checks certificates (libpq's sslmode meanings).
            Some(StoreTarget::Postgres(p)) => p.ssl_mode == connstr::PgSslMode::VerifyFull,
            Some(StoreTarget::Etcd(e)) => e.tls,
            _ => false,
        };
        if target.is_some() && !tls {
            self.warnings.push(format!(
                "{SECTION}:CaFile (from {}) is used only for TLS connections (rediss://, \
                 ssl=True or UseSsl=true; postgresql://...?sslmode=verify-full; etcds://), and this one \
                 does not use TLS (ignored)",
                self.origin(Field::CaFile)
            ));
        }
    }

    /// A Redis target: `Database`, `ConnectTimeout` and `SyncTimeout` merged with the same
    /// options in the connection string (see [`Layers::merge`]), Azure's database range
    /// checked, and the merged values written into the target.
    fn use_redis_target(
        &mut self,
        settings: &mut Settings,
        mut r: RedisTarget,
        target_key: Option<(Field, Entry)>,
    ) {
        let conn = target_key
            .as_ref()
            .map_or((Field::ConnectionString, Origin::Argument, 4), |(f, e)| {
                (*f, e.origin.clone(), e.layer)
            });
        let db_from_conn;
        (settings.database, db_from_conn) = self.merge(
            Field::Database,
            settings.database,
            r.database,
            &conn,
            "defaultDatabase",
            |v| v.to_string(),
        );
        (settings.connect_timeout, _) = self.merge(
            Field::ConnectTimeout,
            settings.connect_timeout,
            r.connect_timeout,
            &conn,
            "connectTimeout",
            |v| v.as_millis().to_string(),
        );
        (settings.sync_timeout, _) = self.merge(
            Field::SyncTimeout,
            settings.sync_timeout,
            r.sync_timeout,
            &conn,
            "syncTimeout",
            |v| v.as_millis().to_string(),
        );
        if r.is_azure() && settings.database > 15 {
            self.refuse_azure_database(settings.database, db_from_conn, &conn);
        }
        r.database = Some(settings.database);
        r.connect_timeout = Some(settings.connect_timeout);
        r.sync_timeout = Some(settings.sync_timeout);
        settings.target = Some(StoreTarget::Redis(r));
    }

    /// Records that Azure Cache for Redis has no database `database`, naming where it was set.
    fn refuse_azure_database(
        &mut self,
        database: i64,
        from_conn: bool,
        conn: &(Field, Origin, u8),
    ) {
        let (shown, origin) = if from_conn {
            (
                format!("defaultDatabase={database} in {SECTION}:{}", conn.0.name()),
                conn.1.clone(),
            )
        } else {
            (
                self.shown(Field::Database, || database.to_string()),
                self.origin(Field::Database),
            )
        };
        self.problems.push(format!(
            "{SECTION}:Database = {shown} (from {origin}): Azure Cache for Redis has databases 0-15 only. \
             Fix: use a database from 0 to 15 (0 is the default)"
        ));
    }

    /// A SQLite target: its path resolved against the configuration directory; a `Database`
    /// key is warned as unused.
    fn use_sqlite_target(&mut self, settings: &mut Settings, path: PathBuf, dir: &Path) {
        self.warn_unused_database(settings, "SQLite");
        let path = if path.is_relative() {
            dir.join(path)
        } else {
            path
        };
        settings.target = Some(StoreTarget::Sqlite { path });
    }

    /// Warns that a `Database` number is set for a store without Redis databases.
    fn warn_unused_database(&mut self, settings: &Settings, store: &str) {
        let database = settings.database;
        if database != 0 && self.entry(Field::Database).is_some() {
            self.warnings.push(format!(
                "{SECTION}:Database = {database} (from {}) is not used by the {store} store (ignored)",
                self.origin(Field::Database)
            ));
        }
    }

    /// The settings with their warnings and sources, or every problem in one `Config` error.
    fn finish(mut self, mut settings: Settings) -> Result<Settings, LeaseError> {
        if self.blank_target_argument {
            // An explicit but blank URL is a mistake, not a request for "whatever the files say".
            self.problems.push(format!(
                "{SECTION}:ConnectionString (from argument) is empty. Fix: pass a URL such as redis://localhost:6379"
            ));
        }
        if !self.problems.is_empty() {
            return Err(self.config_error());
        }
        settings.warnings = self.warnings;
        settings.sources = self.sources;
        Ok(settings)
    }

    /// One error listing every problem, numbered, and what was read.
    fn config_error(&self) -> LeaseError {
        let n = self.problems.len();
        let mut msg = format!(
            "invalid distributed-leasing configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        );
        for (i, p) in self.problems.iter().enumerate() {
            let _ = write!(msg, "\n  {}. {p}", i + 1);
        }
        if !self.sources.is_empty() {
            let _ = write!(msg, "\n(read from: {})", self.sources.join(", "));
        }
        LeaseError::Config(msg)
    }

    /// A key (`Database`, `ConnectTimeout`, `SyncTimeout`) against the same option inside the
    /// connection string or endpoint `conn` (key, origin, layer): the one set in the higher layer
    /// wins, the key in the same layer, and a difference is warned. Returns the value and whether
    /// it came from the connection string.
    fn merge<T: PartialEq + Copy>(
        &mut self,
        key: Field,
        key_value: T,
        in_conn: Option<T>,
        conn: &(Field, Origin, u8),
        option: &str,
        show: impl Fn(T) -> String,
    ) -> (T, bool) {
        let Some(c) = in_conn else {
            return (key_value, false);
        };
        let Some(k) = self.entry(key).cloned() else {
            return (c, true);
        };
        if c == key_value {
            return (key_value, false);
        }
        let (conn_key, conn_origin, conn_layer) = conn;
        let key_text = format!(
            "{SECTION}:{} = {} (from {})",
            key.name(),
            k.raw.show(),
            k.origin
        );
        let conn_text = format!(
            "{option}={} in {SECTION}:{} (from {conn_origin})",
            show(c),
            conn_key.name()
        );
        if k.layer >= *conn_layer {
            self.warnings.push(format!(
                "{key_text} is used and {conn_text} is ignored: the key wins over the connection \
                 string when set in the same or a later layer; remove one of them"
            ));
            (key_value, false)
        } else {
            self.warnings.push(format!(
                "{conn_text} is used and {key_text} is ignored: it comes from a later layer; \
                 remove one of them"
            ));
            (c, true)
        }
    }

    /// `DefaultLeaseDuration` and `AutoRenewInterval` against the one rule of a lease's timing,
    /// the API's too ([`crate::timing`]).
    fn check_renewal(&mut self, duration: Duration, interval: Duration, auto_renew: bool) {
        let ts = |d: Duration| format_timespan(d);
        let duration_shown = format!(
            "{SECTION}:DefaultLeaseDuration = {} (from {})",
            self.shown(Field::DefaultLeaseDuration, || format!(
                "\"{}\"",
                ts(duration)
            )),
            self.origin(Field::DefaultLeaseDuration),
        );
        if let Err(refusal) = timing::check_duration(duration) {
            self.problems.push(format!(
                "{duration_shown} is out of range: {}. Fix: give a duration in that range, \
                 \"00:00:30\" is usual",
                refusal.limit(ts)
            ));
            return;
        }
        let Err(refusal) = timing::check_renew_interval(duration, interval) else {
            return;
        };
        let issue = format!(
            "{SECTION}:AutoRenewInterval = {} (from {}) is refused for a lease of {duration_shown}: \
             {}. Fix: set AutoRenewInterval to about two thirds of the duration ({} for this \
             duration), or make DefaultLeaseDuration longer",
            self.shown(Field::AutoRenewInterval, || format!("\"{}\"", ts(interval))),
            self.origin(Field::AutoRenewInterval),
            refusal.limit(ts),
            ts(timing::default_renew_interval(duration)),
        );
        if auto_renew {
            self.problems.push(issue);
        } else {
            self.warnings.push(format!(
                "{issue} (only a warning while {SECTION}:AutoRenew is false)"
            ));
        }
    }
}

/// The key of a flattened top-level JSON member `RedisLeasing:Key` (any case).
fn flattened_key(name: &str) -> Option<&str> {
    let (prefix, rest) = name.split_at_checked(SECTION.len())?;
    if prefix.eq_ignore_ascii_case(SECTION) {
        rest.strip_prefix(':')
    } else {
        None
    }
}

fn raw_kind(r: &Raw) -> &'static str {
    match r {
        Raw::Json(j) => j.kind(),
        Raw::Text(_) | Raw::Secret(_) => "a string",
        Raw::Duration(_) => "a duration",
        Raw::Int(_) => "a number",
        Raw::Bool(_) => "a boolean",
    }
}

fn wrong_type(r: &Raw, expected: &str, example: &str) -> (String, String) {
    (
        format!("expected {expected}, found {}", raw_kind(r)),
        format!("write it as {example}"),
    )
}

fn int(r: &Raw, example: &str) -> Result<i64, (String, String)> {
    let bad = || {
        (
            "not a whole number".to_owned(),
            format!("write a whole number, like {example}"),
        )
    };
    match r {
        Raw::Int(i) => Ok(*i),
        Raw::Json(Json::Number(n)) => n.as_i64().ok_or_else(bad),
        Raw::Json(Json::String(s)) | Raw::Text(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Err((
                    "the value is empty".to_owned(),
                    format!("write a whole number, like {example}, or remove the setting"),
                ));
            }
            t.parse::<i64>().map_err(|_| bad())
        }
        other => Err(wrong_type(other, "a whole number", example)),
    }
}

fn boolean(r: &Raw) -> Result<bool, (String, String)> {
    let bad = || ("not a boolean".to_owned(), "write true or false".to_owned());
    match r {
        Raw::Bool(b) | Raw::Json(Json::Bool(b)) => Ok(*b),
        Raw::Json(Json::String(s)) | Raw::Text(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") {
                Ok(true)
            } else if t.eq_ignore_ascii_case("false") {
                Ok(false)
            } else {
                Err(bad())
            }
        }
        other => Err(wrong_type(other, "true or false", "true")),
    }
}

const DURATION_FIX: &str = "write a TimeSpan like \"00:00:30\" or a number of seconds like 30";

/// `DefaultLeaseDuration` / `AutoRenewInterval`: TimeSpan text or a number of seconds.
fn seconds_duration(r: &Raw) -> Result<Duration, (String, String)> {
    let fix = || DURATION_FIX.to_owned();
    match r {
        Raw::Duration(d) => Ok(*d),
        Raw::Json(Json::String(s)) | Raw::Text(s) => parse_duration(s).map_err(|e| (e, fix())),
        Raw::Json(Json::Number(n)) => {
            // Exact for whole seconds; anything too large to be exact is refused anyway.
            timespan::duration_from_secs_f64(n.as_f64().unwrap_or(f64::NAN)).map_err(|e| (e, fix()))
        }
        other => Err(wrong_type(other, "a duration", "\"00:00:30\"")),
    }
}

/// `ConnectTimeout` / `SyncTimeout`: whole milliseconds (number or digits), or a TimeSpan.
fn millis_duration(r: &Raw) -> Result<Duration, (String, String)> {
    let fix = || {
        "write a whole number of milliseconds like 5000, or a TimeSpan like \"00:00:05\"".to_owned()
    };
    let from_ms = |ms: u64| {
        let d = Duration::from_millis(ms);
        if d > timespan::MAX_DURATION {
            Err(("the timeout is too large".to_owned(), fix()))
        } else {
            Ok(d)
        }
    };
    match r {
        Raw::Duration(d) => Ok(*d),
        Raw::Json(Json::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(ms), _) => from_ms(ms),
            (None, Some(_)) => Err(("a timeout cannot be negative".to_owned(), fix())),
            _ => Err(("not a whole number of milliseconds".to_owned(), fix())),
        },
        Raw::Json(Json::String(s)) | Raw::Text(s) => {
            let t = s.trim();
            if t.contains(':') {
                parse_duration(t).map_err(|e| (e, fix()))
            } else if t.starts_with('-') {
                Err(("a timeout cannot be negative".to_owned(), fix()))
            } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse::<u64>()
                    .map_err(|_| ("the timeout is too large".to_owned(), fix()))
                    .and_then(from_ms)
            } else {
                Err((
                    "not a number of milliseconds or a TimeSpan".to_owned(),
                    fix(),
                ))
            }
        }
        other => Err(wrong_type(other, "a number of milliseconds", "5000")),
    }
}

fn positive(d: Duration) -> Result<Duration, (String, String)> {
    if d < Duration::from_millis(1) {
        Err((
            "must be at least 1 ms (Redis expiry has millisecond resolution)".to_owned(),
            "use a positive value".to_owned(),
        ))
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests;
