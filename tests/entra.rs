//! Microsoft Entra ID end to end, for real: the credential chain runs a fake `az` (first on PATH)
//! that mints short-lived JWTs and rotates the password of the Redis ACL user named after their
//! `oid` to each new token, so a connection that kept an old token, or reconnected with one,
//! would be refused. A lease is held through several rotations and a killed connection, and the
//! whole run is traced at TRACE level (the `redis` crate's `log` records included): no token may
//! appear in that output.
//!
//! This binary holds ONE test on purpose: it sets PATH and clears the Azure variables of its own
//! process before any other thread exists.

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_leasing::{config, LeaseClient, LeaseOptions};

const OID: &str = "4a2c6b1e-8f3d-4e5a-9b7c-0d1e2f3a4b5c";
/// Lifetime of the fake tokens: refreshed at three quarters, so a rotation every ~4 s.
const TOKEN_SECONDS: u64 = 6;

/// Everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fake_az(bin: &Path, state: &Path, port: u16) {
    let script = format!(
        r#"#!/bin/sh
# Fake Azure CLI for tests: "az account get-access-token -o json --scope <scope>" only.
case "$*" in
  "account get-access-token -o json --scope https://redis.azure.com/.default") ;;
  *) echo "fake az: unexpected arguments: $*" >&2; exit 2 ;;
esac
STATE='{state}'
n=$(( $(cat "$STATE/count" 2>/dev/null || echo 0) + 1 ))
exp=$(( $(date +%s) + {TOKEN_SECONDS} ))
b64() {{ base64 | tr -d '\n=' | tr '+/' '-_'; }}
head=$(printf '%s' '{{"alg":"none","typ":"JWT"}}' | b64)
body=$(printf '{{"aud":"https://redis.azure.com","oid":"%s","n":%s,"exp":%s}}' '{OID}' "$n" "$exp" | b64)
sig=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
token="$head.$body.$sig"
out=$(redis-cli -h 127.0.0.1 -p {port} ACL SETUSER '{OID}' on resetpass ">$token" '~*' '&*' '+@all')
[ "$out" = OK ] || {{ echo "fake az: ACL SETUSER failed: $out" >&2; exit 1; }}
echo "$token" >> "$STATE/tokens"
echo "$n" > "$STATE/count"
printf '{{"accessToken": "%s", "expires_on": %s, "tokenType": "Bearer"}}\n' "$token" "$exp"
"#,
        state = state.display()
    );
    let az = bin.join("az");
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn tokens(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join("tokens"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn auth_calls(server: &common::RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Ids of the connections authenticated as the token's object id.
fn oid_connections(server: &common::RedisServer) -> Vec<String> {
    server
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&format!(" user={OID} ")))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn entra_id_lease_survives_token_rotations_and_a_killed_connection_and_never_logs_a_token() {
    let server = common::RedisServer::start();
    let dir = TempDir(std::env::temp_dir().join(format!("dl-entra-{}", uuid::Uuid::new_v4())));
    let (bin, state) = (dir.0.join("bin"), dir.0.join("state"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    fake_az(&bin, &state, server.port);

    // Only the fake az may answer: no Azure variable may route a credential anywhere else.
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if ["AZURE_", "IDENTITY_", "MSI_", "IMDS_"]
            .iter()
            .any(|p| n.starts_with(p))
        {
            std::env::remove_var(&name);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    std::env::set_var("PATH", std::env::join_paths(paths).unwrap());

    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .init();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = vec![
            (
                "RedisLeasing__Endpoint".to_owned(),
                format!("127.0.0.1:{}", server.port),
            ),
            ("RedisLeasing__UseSsl".to_owned(), "false".to_owned()),
        ];
        let settings = config::load(&dir.0, &env).unwrap();
        let client = LeaseClient::from_settings(&settings, &dir.0)
            .await
            .unwrap_or_else(|e| panic!("connect with Entra ID: {e}"));
        assert_eq!(
            tokens(&state).len(),
            1,
            "one token for the first connection"
        );
        let lease = client
            .acquire(
                "entra-rotations",
                &LeaseOptions {
                    duration: Some(Duration::from_secs(3)),
                    renew_interval: Some(Duration::from_secs(1)),
                    ..LeaseOptions::default()
                },
                Some(Duration::ZERO),
            )
            .await
            .unwrap();
        let conns = oid_connections(&server);
        assert_eq!(conns.len(), 1, "one connection as {OID}: {conns:?}");
        let auths_before = auth_calls(&server);

        // Three rotations: each new token replaces the user's only password.
        wait_until("three token rotations", Duration::from_secs(60), || {
            assert!(!lease.is_lost(), "lease lost during rotations");
            tokens(&state).len() >= 4
        })
        .await;
        let renewals = lease.renewals();
        wait_until(
            "renewals after the rotations",
            Duration::from_secs(20),
            || lease.renewals() >= renewals + 2,
        )
        .await;
        assert!(!lease.is_lost());
        // The same connection lived through the rotations, re-authenticating each time.
        assert_eq!(
            oid_connections(&server),
            conns,
            "the connection was replaced"
        );
        let auths = auth_calls(&server) - auths_before;
        assert!(
            auths >= 3,
            "live connection re-AUTHed {auths} times for 3 rotations"
        );
        // And the first token really is dead now.
        let all = tokens(&state);
        let old = server.cli(&["AUTH", OID, &all[0]]);
        assert!(
            old.contains("WRONGPASS"),
            "the first token still works: {old}"
        );

        // Kill the connection: the reconnection must use the current token.
        let before_kill = tokens(&state).len();
        let killed = server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
        assert_ne!(killed.trim(), "0", "nothing was killed");
        let renewals = lease.renewals();
        wait_until("renewals after the kill", Duration::from_secs(20), || {
            assert!(!lease.is_lost(), "lease lost after the kill");
            lease.renewals() >= renewals + 2
        })
        .await;
        let after = oid_connections(&server);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_ne!(after, conns, "no reconnection happened");
        // One more rotation on the new connection.
        wait_until("a rotation after the kill", Duration::from_secs(30), || {
            tokens(&state).len() > before_kill
        })
        .await;
        let renewals = lease.renewals();
        wait_until(
            "renewals after that rotation",
            Duration::from_secs(20),
            || lease.renewals() >= renewals + 2,
        )
        .await;
        let holder = client.inspect("entra-rotations").await.unwrap().unwrap();
        assert_eq!(holder.lease_id, lease.lease_id());
        assert!(!lease.is_lost());
        assert!(lease.release().await.unwrap());
    });
    drop(rt);

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    if let Some(path) = std::env::var_os("DL_TEST_DUMP_LOGS") {
        std::fs::write(path, &logs).unwrap();
    }
    // The capture works, at TRACE, for our events and for the driver's `log` records...
    assert!(
        logs.contains("Microsoft Entra ID token acquired"),
        "{}",
        &logs[..logs.len().min(2000)]
    );
    assert!(logs.contains("TRACE"), "no TRACE records were captured");
    assert!(
        logs.contains("Re-authenticated async connection"),
        "the redis crate's log records were not captured"
    );
    assert!(logs.contains(OID), "the object id (not a secret) is logged");
    // ...and no token, nor its signature, is in it.
    let all = tokens(&state);
    assert!(all.len() >= 5, "{} tokens", all.len());
    for t in &all {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(t.as_str()), "a token is in the logs");
        assert!(!logs.contains(sig), "a token's signature is in the logs");
    }
}
