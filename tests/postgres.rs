//! The PostgreSQL store beyond the conformance suite, on a real server: the schema created by
//! many first users at once, a statement whose connection the server killed, the listening
//! connection killed while a waiter waits, messages that name the host but not the password,
//! key prefixes, TLS (sslmode prefer, require, verify-full), and connections cut through a
//! proxy at the wrong moment: a release whose reply was lost, an acquire whose first send was
//! still running on the server when its connection dropped.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::cut_proxy::{proxy, CUT_AFTER_REQUEST, CUT_REPLY, PASS};

use distributed_leasing::store::ReleaseOutcome;
use distributed_leasing::{
    BackendErrorKind, ClientOptions, LeaseClient, LeaseError, LeaseOptions, LostReason, TryAcquire,
};

const NOW: Option<Duration> = Some(Duration::ZERO);

fn options() -> ClientOptions {
    ClientOptions {
        operation_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// The shared server, or `None` (the test passes with a note) when PostgreSQL is not installed
/// outside CI.
fn server() -> Option<&'static common::PostgresServer> {
    if !common::postgres_wanted() {
        eprintln!("skipped: PostgreSQL binaries not found (apt-get install postgresql)");
        return None;
    }
    Some(common::shared_postgres())
}

/// Runs SQL as the superuser on the shared server.
async fn admin(server: &common::PostgresServer, db: &str, sql: &str) {
    let url = server.url().replace("/postgres?", &format!("/{db}?"));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = driver.await;
}

/// A new, empty database on the shared server: its name and URL.
async fn fresh_database(server: &common::PostgresServer, tag: &str) -> (String, String) {
    let db = format!("{tag}_{}", uuid::Uuid::new_v4().simple());
    admin(server, "postgres", &format!("CREATE DATABASE {db}")).await;
    let url = server.url().replace("/postgres?", &format!("/{db}?"));
    (db, url)
}

/// Kills the sessions of this library (`application_name` distributed-leasing) on database `db`.
async fn kill_sessions(server: &common::PostgresServer, db: &str) {
    admin(
        server,
        db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'distributed-leasing' AND datname = current_database()
            AND pid <> pg_backend_pid()",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_first_users_of_an_empty_database_all_succeed() {
    let Some(server) = server() else { return };
    let (_, url) = fresh_database(server, "first").await;
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { LeaseClient::connect(&url, options()).await })
        })
        .collect();
    let mut clients = Vec::new();
    for c in connects {
        clients.push(c.await.unwrap().expect("every first user connects"));
    }
    let lease = clients[0]
        .acquire("first", &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert_eq!(lease.fencing_token(), 1);
    assert_eq!(
        clients[7].inspect("first").await.unwrap().unwrap().lease_id,
        lease.lease_id()
    );
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_a_killed_connection() {
    let Some(server) = server() else { return };
    let (db, url) = fresh_database(server, "killed").await;
    let c = LeaseClient::connect(&url, options()).await.unwrap();
    let opts = LeaseOptions {
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let a = c.acquire("job", &opts, NOW).await.unwrap();
    kill_sessions(server, &db).await;
    // Renew, release and acquire each find a dead connection once and retry on a fresh one.
    assert!(a.renew().await.is_ok());
    kill_sessions(server, &db).await;
    assert!(a.release().await.unwrap());
    kill_sessions(server, &db).await;
    let b = c.acquire("job", &opts, NOW).await.unwrap();
    assert!(b.fencing_token() > a.fencing_token());
    kill_sessions(server, &db).await;
    assert_eq!(
        c.inspect("job").await.unwrap().unwrap().lease_id,
        b.lease_id()
    );
    b.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_after_its_listening_connection_was_killed() {
    let Some(server) = server() else { return };
    let (db, url) = fresh_database(server, "listen").await;
    let holder = LeaseClient::connect(&url, options()).await.unwrap();
    let waiter = LeaseClient::connect(&url, options()).await.unwrap();
    let a = holder
        .acquire("job", &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let slow = LeaseOptions {
        backoff: Some(distributed_leasing::Backoff::fixed(Duration::from_secs(60))),
        ..LeaseOptions::default()
    };
    let w = tokio::spawn(async move {
        waiter
            .acquire("job", &slow, Some(Duration::from_secs(50)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every session of the library, the waiter's listening connection among them.
    kill_sessions(server, &db).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let t = tokio::time::Instant::now();
    assert!(a.release().await.unwrap());
    let b = tokio::time::timeout(Duration::from_secs(30), w)
        .await
        .expect("the waiter finishes")
        .unwrap()
        .expect("the waiter acquires");
    // It polls once a minute and the holder had 30 s left: only a notification is this fast.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    b.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_auth_error_that_names_the_host_not_the_password() {
    let Some(server) = server() else { return };
    let url = server
        .url()
        .replace(common::POSTGRES_PASSWORD, "Wr0ngS3cret");
    let e = LeaseClient::connect(&url, options()).await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains("Wr0ngS3cret"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{}", server.port)),
        "{text}"
    );
    match e {
        LeaseError::Backend { kind, .. } => assert_eq!(kind, BackendErrorKind::Auth, "{text}"),
        other => panic!("expected an auth error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_an_unreachable_error() {
    let port = common::free_port(false);
    let url = format!("postgresql://u:Sup3rS3cret@127.0.0.1:{port}/db?sslmode=disable");
    let e = LeaseClient::connect(&url, options()).await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains("Sup3rS3cret"), "{text}");
    assert!(
        matches!(
            e,
            LeaseError::Backend {
                kind: BackendErrorKind::Unreachable,
                ..
            }
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_are_separate_namespaces() {
    let Some(server) = server() else { return };
    let name = format!("ns-{}", uuid::Uuid::new_v4());
    let a = LeaseClient::connect(&server.url(), options())
        .await
        .unwrap();
    let b = LeaseClient::connect(
        &server.url(),
        ClientOptions {
            key_prefix: "other:".into(),
            ..options()
        },
    )
    .await
    .unwrap();
    let la = a
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    let lb = b
        .acquire(&name, &LeaseOptions::default(), NOW)
        .await
        .unwrap();
    assert_eq!(b.list(&name).await.unwrap().len(), 1);
    la.release().await.unwrap();
    assert_eq!(
        b.inspect(&name).await.unwrap().unwrap().lease_id,
        lb.lease_id()
    );
    lb.release().await.unwrap();
}

/// Whether every session of this library on `server` uses TLS.
async fn sessions_use_tls(server: &common::PostgresServer) -> bool {
    let (client, conn) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    let driver = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'distributed-leasing'",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    let (all, tls): (i64, i64) = (row.get(0), row.get(1));
    all > 0 && all == tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sslmodes_require_and_verify_full() {
    if !common::postgres_wanted() {
        eprintln!("skipped: PostgreSQL binaries not found (apt-get install postgresql)");
        return;
    }
    let server = common::PostgresServer::start_tls();
    let base = server.url().replace("sslmode=disable", "sslmode=");
    // prefer (the default) and require: encrypted, the certificate not checked (libpq's meaning).
    for mode in ["prefer", "require"] {
        let c = LeaseClient::connect(&format!("{base}{mode}"), options())
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let l = c
            .acquire("tls", &LeaseOptions::default(), NOW)
            .await
            .unwrap();
        assert!(sessions_use_tls(&server).await, "sslmode={mode}");
        l.release().await.unwrap();
        c.close().await;
    }
    // verify-full: refused without the CA (the message says what to do), accepted with it.
    let e = LeaseClient::connect(&format!("{base}verify-full"), options())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("CaFile") && e.contains("127.0.0.1"), "{e}");
    let c = LeaseClient::connect(
        &format!("{base}verify-full"),
        ClientOptions {
            ca_file: Some(server.ca_file()),
            ..options()
        },
    )
    .await
    .expect("sslmode=verify-full with the CA connects");
    assert!(c.inspect("tls").await.unwrap().is_none());
    assert!(sessions_use_tls(&server).await);
}

// -- connections cut at the wrong moment ---------------------------------------------------------

/// A release whose statement committed but whose reply was lost with its connection is sent
/// once more on a fresh connection. That retry must recognise its own first send: the holder
/// held the lease to the end and let go of it itself, so `release()` says so, and no loss is
/// reported (in Python, `on_lost="cancel"` would raise `LeaseLost` at the end of the block).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_was_lost_still_reports_released() {
    let Some(server) = server() else { return };
    let (_, url) = fresh_database(server, "relcut").await;
    let (port, mode) = proxy(server.port).await;
    let url = url.replace(&format!(":{}/", server.port), &format!(":{port}/"));
    let c = LeaseClient::connect(&url, options()).await.unwrap();
    let opts = LeaseOptions {
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let lease = c.acquire("job", &opts, NOW).await.unwrap();
    mode.store(CUT_REPLY, Ordering::SeqCst);
    let released = lease.release().await.unwrap();
    assert!(
        c.inspect("job").await.unwrap().is_none(),
        "the release did commit"
    );
    assert!(
        released,
        "the holder released its own live lease, yet release() reported it as not held (end {:?})",
        lease.end()
    );
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the reply was cut");
    // The retry recognises only its own first send: a lease id whose lease expired and was
    // taken over is still a loss (at the store, which the handle would not even ask).
    let short = LeaseOptions {
        duration: Some(Duration::from_millis(100)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let stale = c.acquire("job", &short, NOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = c.acquire("job", &opts, NOW).await.unwrap();
    mode.store(CUT_REPLY, Ordering::SeqCst);
    let outcome = c.store().release("job", stale.lease_id()).await.unwrap();
    assert_eq!(mode.load(Ordering::SeqCst), PASS, "the reply was cut");
    assert!(
        matches!(outcome, ReleaseOutcome::Lost(LostReason::HeldByOther)),
        "{outcome:?}"
    );
    assert!(next.release().await.unwrap());
    c.close().await;
}

/// An acquire whose connection drops while its statement still runs on the server (here: it
/// waits for the row lock of an expired lease that an administrator's transaction holds) is
/// sent once more, with its retry flag. If that retry's snapshot misses the first statement's
/// row, the store runs the statement again; that run too must carry the flag, or the first
/// send's own win refuses it: the lease would then sit held by nobody for its whole duration
/// and the caller be told it is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_retried_after_a_drop_is_never_refused_by_its_own_first_send() {
    let Some(server) = server() else { return };
    let (_, url) = fresh_database(server, "acqcut").await;
    let (port, mode) = proxy(server.port).await;
    let proxied = url.replace(&format!(":{}/", server.port), &format!(":{port}/"));
    let c = LeaseClient::connect(&proxied, options()).await.unwrap();
    // An expired row for "job" (taking it over needs its row lock).
    let old = c
        .acquire(
            "job",
            &LeaseOptions {
                duration: Some(Duration::from_millis(20)),
                auto_renew: Some(false),
                ..LeaseOptions::default()
            },
            NOW,
        )
        .await
        .unwrap();
    std::mem::forget(old); // no release: the row stays, expired
    tokio::time::sleep(Duration::from_millis(100)).await;

    // An administrator's transaction holds the row lock for a moment.
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    admin.batch_execute("BEGIN").await.unwrap();
    admin
        .batch_execute("SELECT 1 FROM distributed_leasing.leases WHERE name = 'job' FOR UPDATE")
        .await
        .unwrap();

    mode.store(CUT_AFTER_REQUEST, Ordering::SeqCst);
    let metadata = BTreeMap::from([("who".to_owned(), "the-new-acquirer".to_owned())]);
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(30)),
        auto_renew: Some(false),
        metadata,
        ..LeaseOptions::default()
    };
    let c2 = c.clone();
    let attempt = tokio::spawn(async move { c2.try_acquire("job", &opts).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    admin.batch_execute("COMMIT").await.unwrap();
    match attempt.await.unwrap() {
        Ok(TryAcquire::Acquired(l)) => assert!(l.release().await.unwrap()),
        Ok(TryAcquire::Held(h)) => panic!(
            "the acquire was refused by its own first send: holder metadata {:?}, ttl {:?}",
            h.metadata, h.ttl
        ),
        Err(e) => panic!("acquire: {e}"),
    }
    drop(admin);
    let _ = driver.await;
    c.close().await;
}

/// An administrator pins a lease with `UPDATE ... SET expires_at = 'infinity'`. Everything
/// that shows its time left used to fail with "cannot subtract infinite timestamps": inspecting
/// it, any other client's acquire of that name, and the list of the whole namespace. It is a
/// lease held with no expiry: no TTL, a refusal that names the holder, renewals that keep it
/// pinned, and its holder's release (which marks the row `'-infinity'`) ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_pinned_with_infinity_is_held_with_no_expiry() {
    let Some(server) = server() else { return };
    let (db, url) = fresh_database(server, "pinned").await;
    let a = LeaseClient::connect(&url, options()).await.unwrap();
    let b = LeaseClient::connect(&url, options()).await.unwrap();
    let opts = LeaseOptions {
        duration: Some(Duration::from_secs(30)),
        auto_renew: Some(false),
        ..LeaseOptions::default()
    };
    let pinned = a.acquire("job", &opts, NOW).await.unwrap();
    let other = a.acquire("other", &opts, NOW).await.unwrap();
    admin(
        server,
        &db,
        "UPDATE distributed_leasing.leases SET expires_at = 'infinity' WHERE name = 'job'",
    )
    .await;

    let info = b.inspect("job").await.unwrap().expect("the pinned lease");
    assert_eq!(info.lease_id, pinned.lease_id());
    assert_eq!(info.ttl, None, "no expiry");
    assert_eq!(info.fencing_token, Some(pinned.fencing_token()));

    match b.try_acquire("job", &opts).await.unwrap() {
        TryAcquire::Held(h) => {
            assert_eq!(h.lease_id, pinned.lease_id());
            assert_eq!(h.ttl, None);
        }
        TryAcquire::Acquired(_) => panic!("took a pinned lease"),
    }
    let e = b.acquire("job", &opts, NOW).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, LeaseError::Unavailable { .. }) && text.contains(pinned.lease_id()),
        "{text}"
    );

    let listed = b.list("").await.unwrap();
    let ttls: Vec<_> = listed.iter().map(|i| (i.name.as_str(), i.ttl)).collect();
    assert_eq!(ttls.len(), 2, "{ttls:?}");
    assert_eq!(ttls[0].0, "job");
    assert_eq!(ttls[0].1, None);
    assert_eq!(ttls[1].0, "other");
    assert!(
        ttls[1].1.is_some_and(|t| t > Duration::from_secs(20)),
        "{ttls:?}"
    );

    // Its holder's renewal keeps it pinned.
    pinned.renew().await.unwrap();
    assert_eq!(b.inspect("job").await.unwrap().unwrap().ttl, None);
    // Its holder's release ends it ('-infinity': absent), and the next holder's token is above.
    assert!(pinned.release().await.unwrap());
    assert!(b.inspect("job").await.unwrap().is_none());
    assert_eq!(b.list("").await.unwrap().len(), 1);
    let next = b.acquire("job", &opts, NOW).await.unwrap();
    assert!(next.fencing_token() > pinned.fencing_token());
    assert!(next.release().await.unwrap());
    assert!(other.release().await.unwrap());
    a.close().await;
    b.close().await;
}
