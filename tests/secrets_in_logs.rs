//! No password in any log line, trace span or error, at TRACE level.
//!
//! Installs, for this whole test binary, a `tracing` subscriber that records every span (with
//! its fields and later records) and every event at every level, and a `log` logger that records
//! everything (the `redis` driver logs through `log`). Then it does everything that handles a
//! password: loads configuration holding one, connects with it as an ACL user, fails
//! authentication with another, acquires, renews (manually and in the background), reconnects
//! after the server drops the connection (which authenticates again), inspects, lists, releases
//! and force-releases; it also formats the errors, settings and client with `{}` and `{:?}`. The
//! same on PostgreSQL (a role with that password), when PostgreSQL is installed, and on etcd
//! (the user `root` with that password on a cluster with authentication enabled; its tokens
//! revoked by turning authentication off and on, so the store authenticates again), when etcd
//! is installed.
//! Neither password, raw or percent-encoded, may appear anywhere in what was captured.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use distributed_leasing::config::{load_with, Overrides};
use distributed_leasing::{ClientOptions, LeaseClient, LeaseOptions, Secret};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The ACL user's password: characters that get percent-encoded in a URL, so that both forms
/// are looked for.
const SECRET: &str = "Pw-9f3b/S3cr3t@x:y%z";
/// A wrong password tried once: it must not leak either.
const WRONG: &str = "Wr0ng-7c1e/Passw0rd";

fn captured() -> &'static Mutex<String> {
    static TEXT: OnceLock<Mutex<String>> = OnceLock::new();
    TEXT.get_or_init(|| Mutex::new(String::new()))
}

fn append(line: &str) {
    let mut text = captured()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    text.push_str(line);
    text.push('\n');
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value} ({value:?})", field.name());
    }
}

/// Records everything, at every level.
struct CaptureAll {
    next_id: AtomicU64,
}

impl Subscriber for CaptureAll {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut f = Fields(format!(
            "SPAN {} {} {}",
            span.metadata().level(),
            span.metadata().target(),
            span.metadata().name()
        ));
        span.record(&mut f);
        append(&f.0);
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut f = Fields(format!("RECORD {span:?}"));
        values.record(&mut f);
        append(&f.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields(format!(
            "EVENT {} {}",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut f);
        append(&f.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct LogAll;

impl log::Log for LogAll {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        append(&format!(
            "LOG {} {} {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

fn install_capture() {
    static LOGGER: LogAll = LogAll;
    tracing::subscriber::set_global_default(CaptureAll {
        next_id: AtomicU64::new(0),
    })
    .expect("no other subscriber in this test binary");
    log::set_logger(&LOGGER).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Trace);
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn note(what: &str, value: impl std::fmt::Display + std::fmt::Debug) {
    append(&format!("SHOWN {what}: {value} | {value:?}"));
}

async fn exercise(port: u16, dir: &Path) {
    let host = format!("127.0.0.1:{port}");
    exercise_store(
        "redis",
        &format!("redis://alice:{}@{host}", percent_encode(SECRET)),
        &format!("redis://alice:{}@{host}", percent_encode(WRONG)),
        // The StackExchange form, as the sample writes it.
        &format!("{host},user=alice,password={SECRET},ssl=False,abortConnect=False,bogusOption=1"),
        dir,
        || async move {
            // The driver reconnects and authenticates again.
            let killed = common::raw_command(port, "CLIENT KILL USER alice");
            append(&format!("killed: {killed:?}"));
        },
    )
    .await;

    // A connection string with the password and something wrong in it.
    let bad = Overrides {
        connection_string: Some(Secret::new(format!(
            "{host},password={SECRET},defaultDatabase=notanumber"
        ))),
        ..Overrides::default()
    };
    note("bad settings", format!("{:?}", load_with(dir, &[], &bad)));
    let bad_url = format!("redis://alice:{}@{host}/notadb", percent_encode(SECRET));
    note(
        "bad url",
        format!(
            "{:?}",
            LeaseClient::connect(&bad_url, ClientOptions::default()).await
        ),
    );
}

/// Everything a holder does, on one store: authentication refused with `wrong`, a client from
/// configuration holding `connection_string`, one from `url`, acquire, renew (manual and in the
/// background), a refusal, the server dropping every connection (`kill`), inspect, list,
/// release, force release.
async fn exercise_store<F, Fut>(
    tag: &str,
    url: &str,
    wrong: &str,
    connection_string: &str,
    dir: &Path,
    kill: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    let err = LeaseClient::connect(wrong, options.clone())
        .await
        .expect_err("a wrong password must be refused");
    note(&format!("{tag} auth error"), &err);
    let overrides = Overrides {
        connection_string: Some(Secret::new(connection_string)),
        ..Overrides::default()
    };
    let settings = load_with(dir, &[], &overrides).expect("settings");
    note(&format!("{tag} settings"), format!("{settings:?}"));
    let from_settings = LeaseClient::from_settings(&settings, dir)
        .await
        .expect("connect from settings");
    note(
        &format!("{tag} client from settings"),
        format!("{from_settings:?}"),
    );
    let client = LeaseClient::connect(url, options).await.expect("connect");
    note(
        &format!("{tag} client"),
        format!("{client:?} {:?}", client.store()),
    );
    let name = format!("{tag}-secret-test");
    let opts = LeaseOptions {
        duration: Some(Duration::from_millis(600)),
        renew_interval: Some(Duration::from_millis(100)),
        ..LeaseOptions::default()
    };
    let lease = client
        .acquire(&name, &opts, Some(Duration::ZERO))
        .await
        .expect("acquire");
    note(&format!("{tag} lease"), format!("{lease:?}"));
    lease.renew().await.expect("renew");
    let refused = from_settings
        .acquire(&name, &LeaseOptions::default(), Some(Duration::ZERO))
        .await
        .expect_err("held");
    note(&format!("{tag} unavailable"), &refused);
    kill().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(lease.renewals() >= 2, "background renewals ran");
    note(
        &format!("{tag} inspect"),
        format!("{:?}", client.inspect(&name).await),
    );
    note(
        &format!("{tag} list"),
        format!("{:?}", client.list("").await),
    );
    assert!(lease.release().await.expect("release"));
    let again = from_settings
        .acquire(&name, &LeaseOptions::default(), Some(Duration::ZERO))
        .await
        .expect("acquire after release");
    assert!(client.force_release(&name).await.expect("force"));
    note(
        &format!("{tag} renew after force release"),
        format!("{:?}", again.renew().await),
    );
    drop(again);
}

/// Runs SQL as the superuser of `server`.
async fn admin_sql(server: &common::PostgresServer, sql: &str) {
    let (client, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect("admin SQL");
    drop(client);
    let _ = driver.await;
}

/// The same on the PostgreSQL store, as the role `alice` whose password is [`SECRET`].
async fn exercise_postgres(server: &common::PostgresServer, dir: &Path) {
    let url = format!(
        "postgresql://alice:{}@127.0.0.1:{}/postgres?sslmode=disable",
        percent_encode(SECRET),
        server.port
    );
    let wrong = url.replace(&percent_encode(SECRET), &percent_encode(WRONG));
    exercise_store("postgres", &url, &wrong, &url, dir, || async {
        // The server ends every session of alice: the store reconnects and logs in again.
        admin_sql(
            server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'alice'",
        )
        .await;
    })
    .await;
    let bad_url = format!("{url}&sslmode=bogus");
    note(
        "postgres bad url",
        format!(
            "{:?}",
            LeaseClient::connect(&bad_url, ClientOptions::default()).await
        ),
    );
}

/// `etcdctl` as `root` (with [`SECRET`]) on `cluster`; outside the capture (a child process).
async fn etcdctl_root(cluster: &common::EtcdCluster, args: &[&str]) {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints()))
        .args(["--user", "root", "--password", SECRET])
        .args(args)
        .output()
        .await
        .expect("etcdctl");
    assert!(out.status.success(), "etcdctl {args:?} failed");
}

/// The same on the etcd store, as `root` whose password is [`SECRET`].
async fn exercise_etcd(cluster: &common::EtcdCluster, dir: &Path) {
    let url = format!(
        "etcd://root:{}@{}",
        percent_encode(SECRET),
        cluster.endpoints()
    );
    let wrong = url.replace(&percent_encode(SECRET), &percent_encode(WRONG));
    exercise_store("etcd", &url, &wrong, &url, dir, || async {
        // Every token is dropped: the store authenticates again.
        etcdctl_root(cluster, &["auth", "disable"]).await;
        etcdctl_root(cluster, &["auth", "enable"]).await;
    })
    .await;
    note(
        "etcd bad url",
        format!(
            "{:?}",
            LeaseClient::connect(&format!("{url}/path"), ClientOptions::default()).await
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_trace_log_or_error() {
    // A PostgreSQL role with the same password, made before the capture starts (the statement
    // that sets it is the one place the password is meant to travel as text).
    let postgres = if common::postgres_wanted() {
        let server = common::PostgresServer::start();
        admin_sql(
            &server,
            &format!("CREATE ROLE alice LOGIN PASSWORD '{SECRET}'; GRANT CREATE ON DATABASE postgres TO alice"),
        )
        .await;
        Some(server)
    } else {
        eprintln!("PostgreSQL not installed: its part is skipped");
        None
    };
    // An etcd cluster with authentication, made before the capture starts too.
    let etcd = if common::etcd_wanted() {
        let cluster = common::EtcdCluster::start(1);
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoints()))
            .args([
                "user",
                "add",
                "root",
                &format!("--new-user-password={SECRET}"),
            ])
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "etcdctl user add failed");
        cluster.etcdctl(&["auth", "enable"]);
        Some(cluster)
    } else {
        eprintln!("etcd not installed: its part is skipped");
        None
    };
    install_capture();
    let server = common::RedisServer::start_with(&[
        "--user",
        "alice",
        "on",
        &format!(">{SECRET}"),
        "~*",
        "&*",
        "+@all",
    ]);
    let dir = std::env::temp_dir().join(format!("dl-secrets-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    exercise(server.port, &dir).await;
    if let Some(pg) = &postgres {
        exercise_postgres(pg, &dir).await;
    }
    if let Some(cluster) = &etcd {
        exercise_etcd(cluster, &dir).await;
    }
    // Let background work (the dropped handle's release, reconnections) log what it logs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&dir);

    let text = captured()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // The capture works and saw the library at its most verbose, and the driver's errors.
    assert!(text.contains("lease acquired"), "{text}");
    assert!(text.contains("lease renewed"), "{text}");
    assert!(text.contains("authentication"), "{text}");
    assert!(text.lines().count() > 20, "{text}");
    if let Some(pg) = &postgres {
        assert!(
            text.contains(&format!("PostgreSQL at 127.0.0.1:{}", pg.port)),
            "{text}"
        );
    }
    if let Some(cluster) = &etcd {
        assert!(
            text.contains(&format!("etcd://{}", cluster.endpoints())),
            "{text}"
        );
        // Its tokens were dropped, and the store authenticated again.
        assert!(text.contains("etcd auth token expired"), "{text}");
    }
    for secret in [SECRET, WRONG] {
        for form in [secret.to_owned(), percent_encode(secret)] {
            let leaks: Vec<&str> = text.lines().filter(|l| l.contains(&form)).collect();
            assert!(
                leaks.is_empty(),
                "{form:?} leaked in:\n{}",
                leaks.join("\n")
            );
        }
    }
}
