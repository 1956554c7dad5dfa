//! Tests of the layered loader: the sample's files load unchanged, each layer overrides the one
//! below, and every refusal names the key, the value, the source and the fix, never a secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const KEY: &str = "Zm9vYmFyU2VjcmV0S2V5MTIzNDU2Nzg5MGFiY2RlZmdoaWo=";

/// The seed's `appsettings.json` template, byte for byte.
const SEED_TEMPLATE: &str = r#"{
  "RedisLeasing": {
    "KeyPrefix": "lease:",
    "Database": 0,
    "UseSsl": true,
    "Port": 6380,
    "DefaultLeaseDuration": "00:00:30",
    "AutoRenew": true,
    "AutoRenewInterval": "00:00:20",
    "ConnectTimeout": 5000,
    "SyncTimeout": 5000
  }
}
"#;

/// The seed's generated `appsettings.Local.json`, connection string mode.
const SEED_LOCAL_CONNECTION_STRING: &str = r#"{
  "RedisLeasing": {
    "ConnectionString": "mycache.redis.cache.windows.net:6380,password=YOUR_KEY,ssl=True",
    "KeyPrefix": "lease:",
    "Database": 0
  }
}
"#;

/// The seed's generated `appsettings.Local.json`, DefaultAzureCredential mode.
const SEED_LOCAL_ENTRA: &str = r#"{
  "RedisLeasing": {
    "Endpoint": "mycache.redis.cache.windows.net:6380",
    "KeyPrefix": "lease:",
    "Database": 0
  }
}
"#;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("dl-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn with(files: &[(&str, &str)]) -> Self {
        let d = Self::new();
        for (name, text) in files {
            d.write(name, text);
        }
        d
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(dir: &TempDir, e: &[(&str, &str)]) -> Settings {
    load(dir.path(), &env(e)).unwrap_or_else(|e| panic!("should load: {e}"))
}

fn refused(dir: &TempDir, e: &[(&str, &str)]) -> String {
    refused_with(dir, e, &Overrides::default())
}

fn refused_with(dir: &TempDir, e: &[(&str, &str)], o: &Overrides) -> String {
    match load_with(dir.path(), &env(e), o) {
        Ok(s) => panic!("should be refused, loaded {s:?}"),
        Err(LeaseError::Config(m)) => {
            assert!(!m.contains(KEY), "message leaks the key: {m}");
            assert!(
                !m.contains(&KEY[..12]),
                "message leaks part of the key: {m}"
            );
            m
        }
        Err(other) => panic!("expected a Config error, got {other:?}"),
    }
}

fn redis(s: &Settings) -> &RedisTarget {
    match &s.target {
        Some(StoreTarget::Redis(r)) => r,
        other => panic!("expected a Redis target, got {other:?}"),
    }
}

fn local(json_members: &str) -> String {
    format!("{{\"RedisLeasing\": {{{json_members}}}}}")
}

// --- the sample's files -------------------------------------------------------------------

#[test]
fn seed_template_loads_unchanged_with_the_sample_defaults() {
    let d = TempDir::with(&[(BASE_FILE, SEED_TEMPLATE)]);
    let s = ok(&d, &[]);
    let expected = Settings {
        sources: vec![d.file(BASE_FILE)],
        ..Settings::default()
    };
    assert_eq!(s, expected);
    assert!(!s.is_configured());
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn seed_connection_string_mode_loads_unchanged() {
    let d = TempDir::with(&[
        (BASE_FILE, SEED_TEMPLATE),
        (LOCAL_FILE, SEED_LOCAL_CONNECTION_STRING),
    ]);
    let s = ok(&d, &[]);
    assert!(s.is_configured());
    let r = redis(&s);
    assert_eq!(
        r.nodes,
        vec![("mycache.redis.cache.windows.net".to_owned(), 6380)]
    );
    assert!(r.tls && !r.entra_id);
    assert_eq!(r.password.as_ref().map(Secret::expose), Some("YOUR_KEY"));
    assert_eq!(r.database, Some(0));
    assert_eq!(r.connect_timeout, Some(Duration::from_secs(5)));
    assert_eq!(s.key_prefix, "lease:");
    assert_eq!(s.sources, vec![d.file(BASE_FILE), d.file(LOCAL_FILE)]);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert!(!format!("{s:?}").contains("YOUR_KEY"));
}

#[test]
fn seed_entra_id_mode_loads_unchanged() {
    let d = TempDir::with(&[(BASE_FILE, SEED_TEMPLATE), (LOCAL_FILE, SEED_LOCAL_ENTRA)]);
    let s = ok(&d, &[]);
    let r = redis(&s);
    assert!(r.entra_id && r.tls && r.password.is_none());
    assert_eq!(
        r.nodes,
        vec![("mycache.redis.cache.windows.net".to_owned(), 6380)]
    );
    assert_eq!(
        s.endpoint.as_deref(),
        Some("mycache.redis.cache.windows.net:6380")
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn seed_quick_start_files_without_template_load() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        r#"{
  "RedisLeasing": {
    "ConnectionString": "myrediscache.redis.cache.windows.net:6380,password=YOUR_KEY,ssl=True"
  }
}"#,
    )]);
    assert!(redis(&ok(&d, &[])).tls);
    let d = TempDir::with(&[(
        LOCAL_FILE,
        r#"{
  "RedisLeasing": {
    "Endpoint": "myrediscache.redis.cache.windows.net:6380"
  }
}"#,
    )]);
    assert!(redis(&ok(&d, &[])).entra_id);
}

#[test]
fn seed_troubleshooting_snippets_load() {
    let d = TempDir::with(&[
        (BASE_FILE, SEED_TEMPLATE),
        (
            LOCAL_FILE,
            r#"{
  "RedisLeasing": {
    "DefaultLeaseDuration": "00:01:00",
    "AutoRenewInterval": "00:00:40"
  }
}"#,
        ),
    ]);
    let s = ok(&d, &[]);
    assert_eq!(s.default_lease_duration, Duration::from_secs(60));
    assert_eq!(s.auto_renew_interval, Duration::from_secs(40));
    let d = TempDir::with(&[(
        LOCAL_FILE,
        "{\n  \"RedisLeasing\": {\n    \"UseSsl\": true,\n    \"Port\": 6380\n  }\n}",
    )]);
    let s = ok(&d, &[]);
    assert!(s.use_ssl);
    assert_eq!(s.port, 6380);
}

#[test]
fn dotnet_json_extras_comments_trailing_commas_and_bom_are_accepted() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        "\u{feff}{\n  // written by hand\n  \"RedisLeasing\": {\n    /* local */ \"KeyPrefix\": \"x:\",\n    \"Database\": 1,\n  },\n}\n",
    )]);
    let s = ok(&d, &[]);
    assert_eq!((s.key_prefix.as_str(), s.database), ("x:", 1));
}

// --- layers ----------------------------------------------------------------------------------

#[test]
fn each_layer_overrides_the_one_below() {
    let d = TempDir::with(&[
        (BASE_FILE, SEED_TEMPLATE),
        (
            LOCAL_FILE,
            &local(r#""KeyPrefix": "local:", "Database": 2, "Port": 7000"#),
        ),
    ]);
    // Local file over template.
    let s = ok(&d, &[]);
    assert_eq!(
        (s.key_prefix.as_str(), s.database, s.port),
        ("local:", 2, 7000)
    );
    assert_eq!(s.default_lease_duration, Duration::from_secs(30));
    // Environment over local file.
    let e = [
        ("RedisLeasing__Database", "3"),
        ("RedisLeasing__KeyPrefix", "env:"),
    ];
    let s = ok(&d, &e);
    assert_eq!(
        (s.key_prefix.as_str(), s.database, s.port),
        ("env:", 3, 7000)
    );
    assert!(s
        .sources
        .contains(&"environment variable RedisLeasing__Database".to_owned()));
    // Arguments over environment.
    let o = Overrides {
        database: Some(4),
        default_lease_duration: Some(Duration::from_secs(90)),
        ..Overrides::default()
    };
    let s = load_with(d.path(), &env(&e), &o).unwrap();
    assert_eq!((s.key_prefix.as_str(), s.database), ("env:", 4));
    assert_eq!(s.default_lease_duration, Duration::from_secs(90));
    assert_eq!(s.sources.last().map(String::as_str), Some("arguments"));
}

#[test]
fn only_the_effective_value_is_checked() {
    let d = TempDir::with(&[
        (BASE_FILE, &local(r#""Database": "zero""#)),
        (LOCAL_FILE, &local(r#""Database": 1"#)),
    ]);
    assert_eq!(ok(&d, &[]).database, 1);
}

#[test]
fn environment_names_are_case_insensitive() {
    let d = TempDir::new();
    let s = ok(
        &d,
        &[
            ("REDISLEASING__KEYPREFIX", "upper:"),
            ("redisleasing__database", "5"),
            ("RedisLeasing:Port", "7001"),
            ("RedisLeasing__useSSL", "FALSE"),
            ("RedisLeasingX__Database", "9"),
            ("PATH", "/usr/bin"),
        ],
    );
    assert_eq!(
        (s.key_prefix.as_str(), s.database, s.port, s.use_ssl),
        ("upper:", 5, 7001, false)
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn json_section_and_keys_are_case_insensitive() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        r#"{"redisleasing": {"keyprefix": "a:", "DATABASE": "7", "useSsl": "True"}, "Logging": {}}"#,
    )]);
    let s = ok(&d, &[]);
    assert_eq!(
        (s.key_prefix.as_str(), s.database, s.use_ssl),
        ("a:", 7, true)
    );
    let d = TempDir::with(&[(LOCAL_FILE, r#"{"RedisLeasing:KeyPrefix": "flat:"}"#)]);
    assert_eq!(ok(&d, &[]).key_prefix, "flat:");
}

#[test]
fn null_and_empty_values_unset() {
    let d = TempDir::with(&[
        (
            BASE_FILE,
            &local(r#""ConnectionString": "localhost:6379", "Database": 3"#),
        ),
        (LOCAL_FILE, &local(r#""Database": null"#)),
    ]);
    let s = ok(&d, &[]);
    assert_eq!(s.database, 0);
    assert!(s.is_configured());
    let s = ok(&d, &[("RedisLeasing__ConnectionString", "")]);
    assert!(!s.is_configured());
}

#[test]
fn timeouts_are_milliseconds_or_timespans() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""ConnectTimeout": 1500, "SyncTimeout": "00:00:02""#),
    )]);
    let s = ok(&d, &[]);
    assert_eq!(s.connect_timeout, Duration::from_millis(1500));
    assert_eq!(s.sync_timeout, Duration::from_secs(2));
    let s = ok(&d, &[("RedisLeasing__SyncTimeout", "2500")]);
    assert_eq!(s.sync_timeout, Duration::from_millis(2500));
}

#[test]
fn durations_accept_timespans_and_seconds() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""DefaultLeaseDuration": 45, "AutoRenewInterval": 2.5"#),
    )]);
    let s = ok(&d, &[]);
    assert_eq!(s.default_lease_duration, Duration::from_secs(45));
    assert_eq!(s.auto_renew_interval, Duration::from_millis(2500));
    let s = ok(
        &d,
        &[
            ("RedisLeasing__DefaultLeaseDuration", "1.00:00:00"),
            ("RedisLeasing__AutoRenewInterval", "00:00:00.250"),
        ],
    );
    assert_eq!(s.default_lease_duration, Duration::from_secs(86_400));
    assert_eq!(s.auto_renew_interval, Duration::from_millis(250));
}

// --- targets -----------------------------------------------------------------------------------

#[test]
fn connection_string_wins_over_endpoint_with_a_warning() {
    let d = TempDir::with(&[(LOCAL_FILE, SEED_LOCAL_ENTRA)]);
    let s = ok(
        &d,
        &[("RedisLeasing__ConnectionString", "redis://localhost:6379")],
    );
    let r = redis(&s);
    assert_eq!(r.nodes, vec![("localhost".to_owned(), 6379)]);
    assert!(!r.entra_id);
    assert!(
        s.warnings.iter().any(|w| w.contains("Endpoint")
            && w.contains("ignored")
            && w.contains(&d.file(LOCAL_FILE))),
        "{:?}",
        s.warnings
    );
}

#[test]
fn endpoint_uses_use_ssl_and_port_when_it_has_no_port() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""Endpoint": "cache.internal", "UseSsl": false, "Port": 7000"#),
    )]);
    let r = redis(&ok(&d, &[])).clone();
    assert_eq!((r.nodes[0].1, r.tls, r.entra_id), (7000, false, true));
}

#[test]
fn argument_target_replaces_lower_layers() {
    let d = TempDir::with(&[(LOCAL_FILE, SEED_LOCAL_CONNECTION_STRING)]);
    let o = Overrides {
        endpoint: Some("other.redis.cache.windows.net".to_owned()),
        ..Overrides::default()
    };
    let s = load_with(d.path(), &[], &o).unwrap();
    let r = redis(&s);
    assert!(r.entra_id);
    assert_eq!(
        r.nodes,
        vec![("other.redis.cache.windows.net".to_owned(), 6380)]
    );
    let o = Overrides {
        connection_string: Some(Secret::new("sqlite:///tmp/leases.db")),
        ..Overrides::default()
    };
    let s = load_with(d.path(), &[], &o).unwrap();
    assert_eq!(
        s.target,
        Some(StoreTarget::Sqlite {
            path: PathBuf::from("/tmp/leases.db")
        })
    );
    let o = Overrides {
        connection_string: Some(Secret::new("  ")),
        ..Overrides::default()
    };
    assert!(refused_with(&d, &[], &o).contains("ConnectionString (from argument) is empty"));
}

#[test]
fn sqlite_relative_path_is_resolved_against_the_configuration_directory() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""ConnectionString": "sqlite://data/leases.db", "Database": 3"#),
    )]);
    let s = ok(&d, &[]);
    assert_eq!(
        s.target,
        Some(StoreTarget::Sqlite {
            path: d.path().join("data/leases.db")
        })
    );
    assert!(s
        .warnings
        .iter()
        .any(|w| w.contains("not used by the SQLite store")));
}

#[test]
fn connection_string_options_against_keys_the_later_layer_wins() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""ConnectionString": "h:1,defaultDatabase=4,connectTimeout=1234""#),
    )]);
    // Keys unset: the connection string's values apply.
    let s = ok(&d, &[]);
    assert_eq!((s.database, redis(&s).database), (4, Some(4)));
    assert_eq!(s.connect_timeout, Duration::from_millis(1234));
    assert_eq!(redis(&s).connect_timeout, Some(Duration::from_millis(1234)));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // A key in a later layer wins.
    let s = ok(&d, &[("RedisLeasing__Database", "2")]);
    assert_eq!((s.database, redis(&s).database), (2, Some(2)));
    assert!(
        s.warnings[0].contains("defaultDatabase=4 in RedisLeasing:ConnectionString"),
        "{:?}",
        s.warnings
    );
    assert!(
        s.warnings[0].contains("RedisLeasing__Database") && s.warnings[0].contains("is ignored")
    );
    // The template's "Database": 0 and "ConnectTimeout": 5000 lose to a later connection string.
    d.write(BASE_FILE, SEED_TEMPLATE);
    d.write(
        LOCAL_FILE,
        &local(r#""ConnectionString": "redis://localhost/3""#),
    );
    let s = ok(&d, &[]);
    assert_eq!(s.database, 3);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("defaultDatabase=3") && w.contains("is used")),
        "{:?}",
        s.warnings
    );
    // In the same layer the key wins, as in .NET.
    d.write(
        LOCAL_FILE,
        &local(r#""ConnectionString": "redis://localhost/3", "Database": 1"#),
    );
    assert_eq!(ok(&d, &[]).database, 1);
}

#[test]
fn connection_string_warnings_name_the_source() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(&format!(
            r#""ConnectionString": "c.redis.cache.windows.net:6380,password={KEY},ssl=True,abortConnect=False,allowAdmin=true""#
        )),
    )]);
    let s = ok(&d, &[]);
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("abortConnect is not used")
            && s.warnings[0].contains(&d.file(LOCAL_FILE))
    );
    assert!(s.warnings.iter().all(|w| !w.contains(KEY)));
}

// --- refusals ----------------------------------------------------------------------------------

#[test]
fn wrong_types_are_refused_with_key_value_and_file() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(
            r#""Database": "zero", "Port": true, "UseSsl": 1, "DefaultLeaseDuration": [1], "AutoRenew": "yes", "KeyPrefix": 5, "ConnectTimeout": 2.5, "Endpoint": 7, "ConnectionString": {}"#,
        ),
    )]);
    let m = refused(&d, &[]);
    let file = d.file(LOCAL_FILE);
    for needle in [
        "RedisLeasing:Database = \"zero\"",
        "RedisLeasing:Port = true",
        "RedisLeasing:UseSsl = 1",
        "RedisLeasing:DefaultLeaseDuration = an array",
        "RedisLeasing:AutoRenew = \"yes\"",
        "RedisLeasing:KeyPrefix = 5",
        "RedisLeasing:ConnectTimeout = 2.5",
        "RedisLeasing:Endpoint = 7",
        "RedisLeasing:ConnectionString (from",
        "must be a string, found an object",
        "(9 problems)",
        "Fix:",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in {m}");
    }
    assert_eq!(m.matches(&format!("(from {file})")).count(), 9, "{m}");
}

#[test]
fn every_problem_is_reported_together() {
    let d = TempDir::with(&[
        (BASE_FILE, &local(r#""Port": 0"#)),
        (
            LOCAL_FILE,
            &local(r#""Database": -1, "DefaultLeaseDuration": "00:00:00""#),
        ),
    ]);
    let m = refused(
        &d,
        &[
            ("RedisLeasing__SyncTimeout", "-5"),
            ("RedisLeasing__KeyPrefix", " "),
        ],
    );
    assert!(m.contains("(5 problems)"), "{m}");
    assert!(
        m.contains("RedisLeasing:Port = 0")
            && m.contains(&d.file(BASE_FILE))
            && m.contains("1 to 65535")
    );
    assert!(m.contains("RedisLeasing:Database = -1") && m.contains(&d.file(LOCAL_FILE)));
    assert!(
        m.contains("RedisLeasing:DefaultLeaseDuration = \"00:00:00\"")
            && m.contains("at least 1 ms")
    );
    assert!(m.contains("environment variable RedisLeasing__SyncTimeout") && m.contains("negative"));
    assert!(m.contains("RedisLeasing:KeyPrefix = \" \"") && m.contains("empty"));
    assert!(m.contains("read from:"));
}

#[test]
fn port_out_of_range_is_refused() {
    let d = TempDir::new();
    for v in ["0", "65536", "-1", "abc", ""] {
        let m = refused(&d, &[("RedisLeasing__Port", v)]);
        assert!(
            m.contains("RedisLeasing:Port")
                && m.contains("environment variable RedisLeasing__Port"),
            "{m}"
        );
    }
}

#[test]
fn renew_interval_must_leave_room_for_retries() {
    use crate::timing::max_renew_interval;
    assert_eq!(
        max_renew_interval(Duration::from_secs(30)),
        Duration::from_secs(27)
    );
    assert_eq!(
        max_renew_interval(Duration::from_secs(60)),
        Duration::from_secs(54)
    );
    assert_eq!(
        max_renew_interval(Duration::from_secs(5)),
        Duration::from_secs(4)
    );
    assert_eq!(
        max_renew_interval(Duration::from_secs(1)),
        Duration::from_millis(500)
    );
    assert_eq!(
        max_renew_interval(Duration::from_millis(200)),
        Duration::from_millis(100)
    );

    let d = TempDir::with(&[
        (BASE_FILE, SEED_TEMPLATE),
        (LOCAL_FILE, &local(r#""AutoRenewInterval": "00:00:27""#)),
    ]);
    ok(&d, &[]);
    let m = refused(&d, &[("RedisLeasing__AutoRenewInterval", "00:00:27.001")]);
    assert!(m.contains("RedisLeasing:AutoRenewInterval = \"00:00:27.001\" (from environment variable RedisLeasing__AutoRenewInterval)"), "{m}");
    assert!(
        m.contains(&format!(
            "RedisLeasing:DefaultLeaseDuration = \"00:00:30\" (from {})",
            d.file(BASE_FILE)
        )),
        "{m}"
    );
    assert!(
        m.contains("at most 00:00:27") && m.contains("00:00:20"),
        "{m}"
    );
    let m = refused(&d, &[("RedisLeasing__AutoRenewInterval", "00:01:00")]);
    assert!(m.contains("leaves no room"), "{m}");
    // With auto-renew off it is only a warning.
    let s = ok(
        &d,
        &[
            ("RedisLeasing__AutoRenewInterval", "00:01:00"),
            ("RedisLeasing__AutoRenew", "false"),
        ],
    );
    assert!(s
        .warnings
        .iter()
        .any(|w| w.contains("leaves no room") && w.contains("only a warning")));
}

#[test]
fn azure_databases_are_0_to_15() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""Endpoint": "mycache.redis.cache.windows.net:6380", "Database": 16"#),
    )]);
    let m = refused(&d, &[]);
    assert!(
        m.contains("RedisLeasing:Database = 16")
            && m.contains("0 to 15")
            && m.contains(&d.file(LOCAL_FILE)),
        "{m}"
    );
    let m = refused(
        &TempDir::new(),
        &[(
            "RedisLeasing__ConnectionString",
            &format!("c.REDIS.cache.windows.net:6380,password={KEY},ssl=True,defaultDatabase=20"),
        )],
    );
    assert!(
        m.contains("defaultDatabase=20") && m.contains("RedisLeasing__ConnectionString"),
        "{m}"
    );
    // Elsewhere any non-negative database is fine.
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""ConnectionString": "localhost:6379", "Database": 99"#),
    )]);
    assert_eq!(ok(&d, &[]).database, 99);
}

#[test]
fn malformed_json_reports_file_line_and_column() {
    let d = TempDir::with(&[
        (BASE_FILE, "{\n  \"RedisLeasing\": {\n    \"KeyPrefix\": \"lease:\"\n    \"Database\": 0\n  }\n}\n"),
        (LOCAL_FILE, &local(r#""Port": "x""#)),
    ]);
    let m = refused(&d, &[]);
    assert!(
        m.contains(&d.file(BASE_FILE)) && m.contains("line 4 column 5"),
        "{m}"
    );
    // The other file's problem is reported in the same message.
    assert!(
        m.contains("RedisLeasing:Port = \"x\"") && m.contains("(2 problems)"),
        "{m}"
    );
    let d = TempDir::with(&[(LOCAL_FILE, "[]")]);
    assert!(refused(&d, &[]).contains("must contain a JSON object"));
    let d = TempDir::with(&[(LOCAL_FILE, r#"{"RedisLeasing": "x"}"#)]);
    assert!(refused(&d, &[]).contains("must be an object"));
}

#[test]
fn unreadable_file_is_an_error_naming_it_and_absent_files_are_fine() {
    let d = TempDir::new();
    assert_eq!(ok(&d, &[]), Settings::default());
    std::fs::create_dir(d.path().join(LOCAL_FILE)).unwrap();
    let m = refused(&d, &[]);
    assert!(
        m.contains(&format!("cannot read {}", d.file(LOCAL_FILE))),
        "{m}"
    );
}

#[test]
fn duplicate_keys_are_refused_as_dotnet_does() {
    let d = TempDir::with(&[(LOCAL_FILE, &local(r#""Database": 1, "database": 2"#))]);
    let m = refused(&d, &[]);
    assert!(
        m.contains("appears twice") && m.contains(&d.file(LOCAL_FILE)),
        "{m}"
    );
    let m = refused(
        &TempDir::new(),
        &[("RedisLeasing__Port", "1"), ("REDISLEASING__PORT", "2")],
    );
    assert!(
        m.contains("two environment variables") && m.contains("REDISLEASING__PORT"),
        "{m}"
    );
}

#[test]
fn secrets_never_appear_in_errors_warnings_or_debug() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(&format!(
            r#""ConnectionString": "c.redis.cache.windows.net:6380,password={KEY},ssl=maybe", "AccessKey": "{KEY}""#
        )),
    )]);
    let m = refused(&d, &[]);
    assert!(
        m.contains("RedisLeasing:ConnectionString")
            && m.contains("value hidden")
            && m.contains("ssl must be true or false"),
        "{m}"
    );
    // Two different connection strings in the environment: named, not shown.
    let m = refused(
        &TempDir::new(),
        &[
            (
                "RedisLeasing__ConnectionString",
                &format!("h,password={KEY}"),
            ),
            (
                "redisleasing__connectionstring",
                &format!("h,password={KEY}x"),
            ),
        ],
    );
    assert!(m.contains("two environment variables"), "{m}");
    // Endpoint with a password.
    let m = refused(
        &TempDir::new(),
        &[("RedisLeasing__Endpoint", &format!("h:6380,password={KEY}"))],
    );
    assert!(
        m.contains("Endpoint") && m.contains("ConnectionString"),
        "{m}"
    );
    // Loaded settings: warnings and Debug output are clean too.
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(&format!(
            r#""ConnectionString": "rediss://u:{KEY}@h:6380?x=1", "AccessKey": "{KEY}""#
        )),
    )]);
    let s = ok(&d, &[]);
    assert!(!format!("{s:?}").contains(KEY));
    assert!(
        s.warnings.iter().all(|w| !w.contains(KEY)),
        "{:?}",
        s.warnings
    );
    assert!(s
        .warnings
        .iter()
        .any(|w| w.contains("AccessKey") && w.contains("password=KEY")));
    assert_eq!(
        redis(&s).to_url().expose(),
        format!("rediss://u:{}@h:6380/0", KEY.replace('=', "%3D"))
    );
}

#[test]
fn unknown_keys_are_warnings_with_hints() {
    let d = TempDir::with(&[(
        LOCAL_FILE,
        &local(r#""Databse": 1, "HostName": "x", "Frobnicate": 2"#),
    )]);
    let s = ok(
        &d,
        &[
            ("RedisLeasing__KeyPrefx", "p:"),
            ("RedisLeasing__Metadata__region", "eu"),
        ],
    );
    let w = s.warnings.join("\n");
    assert!(
        w.contains(&format!(
            "unknown key RedisLeasing:Databse in {} (ignored); did you mean RedisLeasing:Database?",
            d.file(LOCAL_FILE)
        )),
        "{w}"
    );
    assert!(
        w.contains("HostName is an option of the .NET DistributedLeasing library")
            && w.contains("use Endpoint"),
        "{w}"
    );
    assert!(w.contains("unknown key RedisLeasing:Frobnicate"), "{w}");
    assert!(w.contains("environment variable RedisLeasing__KeyPrefx (ignored); did you mean RedisLeasing__KeyPrefix?"), "{w}");
    assert!(
        w.contains("RedisLeasing__Metadata__region") && w.contains("pass metadata="),
        "{w}"
    );
    let d = TempDir::with(&[(LOCAL_FILE, r#"{"RedisLeasng": {"Database": 1}}"#)]);
    let s = ok(&d, &[]);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("did you mean \"RedisLeasing\"")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn not_configured_error_lists_the_ways_to_configure() {
    let d = TempDir::new();
    let LeaseError::Config(m) = not_configured_error(d.path()) else {
        panic!("not a Config error")
    };
    let file = d.file(LOCAL_FILE);
    for needle in [
        file.as_str(),
        "ConnectionString",
        "Endpoint",
        "RedisLeasing__ConnectionString",
        "redis://",
        "sqlite:///",
        "leasing configure",
        "each machine its own lock",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in {m}");
    }
}

#[test]
fn ca_file_is_resolved_against_the_configuration_directory_and_must_exist() {
    let d = TempDir::with(&[
        ("ca.pem", "-----BEGIN CERTIFICATE-----\n"),
        (
            LOCAL_FILE,
            &local(r#""ConnectionString": "h:6380,ssl=True,password=x", "CaFile": "ca.pem""#),
        ),
    ]);
    let s = ok(&d, &[]);
    assert_eq!(s.ca_file, Some(d.path().join("ca.pem")));
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    // From the environment, absolute; an empty value unsets it.
    let abs = d.file("ca.pem");
    let s = ok(&d, &[("RedisLeasing__CaFile", &abs)]);
    assert_eq!(s.ca_file, Some(PathBuf::from(&abs)));
    let s = ok(&d, &[("RedisLeasing__CaFile", "")]);
    assert_eq!(s.ca_file, None);
    // An argument wins.
    let o = Overrides {
        ca_file: Some(PathBuf::from("ca.pem")),
        ..Overrides::default()
    };
    let s = load_with(d.path(), &env(&[("RedisLeasing__CaFile", "/nope.pem")]), &o).unwrap();
    assert_eq!(s.ca_file, Some(d.path().join("ca.pem")));
    // A missing file is refused with key, value, source and fix.
    let m = refused(&d, &[("RedisLeasing__CaFile", "missing.pem")]);
    assert!(
        m.contains("RedisLeasing:CaFile")
            && m.contains("missing.pem")
            && m.contains("RedisLeasing__CaFile")
            && m.contains("PEM"),
        "{m}"
    );
    // A number is the wrong type.
    let d2 = TempDir::with(&[(LOCAL_FILE, &local(r#""CaFile": 3"#))]);
    let m = refused(&d2, &[]);
    assert!(m.contains("CaFile") && m.contains("file path"), "{m}");
}

#[test]
fn ca_file_without_tls_is_a_warning() {
    let d = TempDir::with(&[
        ("ca.pem", "x"),
        (
            LOCAL_FILE,
            &local(r#""ConnectionString": "redis://h:6379", "CaFile": "ca.pem""#),
        ),
    ]);
    let s = ok(&d, &[]);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("CaFile") && w.contains("does not use TLS")),
        "{:?}",
        s.warnings
    );
    // An Endpoint uses TLS by default (UseSsl = true): no warning.
    let d = TempDir::with(&[
        ("ca.pem", "x"),
        (
            LOCAL_FILE,
            &local(r#""Endpoint": "h:6380", "CaFile": "ca.pem""#),
        ),
    ]);
    let s = ok(&d, &[]);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    assert!(redis(&s).tls && redis(&s).entra_id);
}
