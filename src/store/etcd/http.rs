//! The etcd store's transport: etcd's JSON gateway (`/v3/...`, grpc-gateway) over HTTP/1.1.
//!
//! Why the gateway rather than the `etcd-client` crate (gRPC): that crate generates its code
//! with `protoc` at build time (one more system package on every build machine) and brings
//! tonic, prost, tower and h2 into every build of the extension; reqwest (rustls on `ring`) is
//! already compiled in for the Entra ID credentials, and `base64` was already in the tree, so
//! the gateway costs no new crate to build (Cargo.lock gained no package). Its price is the
//! JSON and HTTP/1.1 (one request per connection at a time, pooled): measured on this loaded
//! 2-core machine with the 3-member test cluster on loopback (tests/etcd.rs,
//! `acquire_and_release_latency`), a median acquire takes 2-3 ms (one txn, with a spare etcd
//! lease; 4.5 ms as grant + txn), a release (one txn) 2-4 ms, nearly all of it etcd's
//! consensus on each write, which a gRPC client pays too.
//!
//! Invariants:
//! - Requests go to one member (the last one that answered) and fail over to the next, in the
//!   URL's order, on a transport error (refused, reset, timed out) or on an etcd "unavailable"
//!   answer (no leader, request timed out): each attempt gets an equal share of what is left
//!   of the operation timeout, so a frozen member cannot eat the whole budget.
//! - A request that failed over may have been applied by the member that did not answer:
//!   callers make every operation safe to send twice (see the store's module docs).
//! - With a user in the URL, a token from `/v3/auth/authenticate` travels in the
//!   `Authorization` header (marked sensitive, so reqwest's `Debug` hides it); an "invalid auth
//!   token" answer (tokens expire) takes a new token and sends the request once more. The
//!   password and the token live in [`Secret`]s only; messages name the members, never them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::EtcdTarget;
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::secret::Secret;
use crate::store::common::{self, closed_error, error_chain};

/// An error answer of the gateway: `{"error": ..., "message": ..., "code": <gRPC code>}`.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct GatewayError {
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) code: i32,
}

/// The answer of `/v3/auth/authenticate`.
#[derive(Deserialize)]
struct Authenticated {
    #[serde(default)]
    token: String,
}

/// gRPC status codes the gateway reports.
const UNAUTHENTICATED: i32 = 16;
const UNAVAILABLE: i32 = 14;
const PERMISSION_DENIED: i32 = 7;
const DEADLINE_EXCEEDED: i32 = 4;

/// One failed attempt: whether the next member should be tried, and the error.
enum Failure {
    /// The member did not answer, or answered that it cannot serve now: try the next one.
    Next(LeaseError),
    /// The token expired: authenticate again and resend.
    Token,
    /// A definite answer: stop.
    Stop(LeaseError),
}

/// The HTTP client of one etcd store, with its members and credentials.
pub(crate) struct Transport {
    /// `None` once closed: dropping the client closes its pooled connections.
    client: Mutex<Option<reqwest::Client>>,
    /// `http://host:port` or `https://host:port`, in the URL's order.
    bases: Vec<String>,
    /// The member that answered last.
    current: AtomicUsize,
    user: Option<String>,
    password: Option<Secret>,
    token: Mutex<Option<Secret>>,
    /// `etcd://host:port,...` (no credentials), for messages.
    pub(crate) display: String,
    pub(crate) operation_timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("members", &self.display)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport to the members of `target`; opens nothing yet.
    pub(crate) fn new(
        target: &EtcdTarget,
        connect_timeout: Duration,
        operation_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        let scheme = if target.tls { "https" } else { "http" };
        let bases = target
            .endpoints
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("{scheme}://[{h}]:{p}")
                } else {
                    format!("{scheme}://{h}:{p}")
                }
            })
            .collect();
        let display = format!(
            "{}://{}",
            if target.tls { "etcds" } else { "etcd" },
            target.hosts()
        );
        // reqwest (rustls without a provider) needs one even for plain HTTP.
        common::ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60));
        if target.tls {
            let roots = common::root_store(ca_file).map_err(|e| {
                LeaseError::backend(BackendErrorKind::Other, format!("TLS to {display}: {e}"))
            })?;
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        let client = builder.build().map_err(|e| {
            LeaseError::backend(
                BackendErrorKind::Other,
                format!("cannot set up the HTTP client for {display}: {e}"),
            )
        })?;
        Ok(Self {
            client: Mutex::new(Some(client)),
            bases,
            current: AtomicUsize::new(0),
            user: target.user.clone(),
            password: target.password.clone(),
            token: Mutex::new(None),
            display,
            operation_timeout,
        })
    }

    fn client(&self) -> Result<reqwest::Client> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(closed_error)
    }

    /// Drops the HTTP client: its idle connections close now, busy ones when their request
    /// ends; every later call fails.
    pub(crate) fn close(&self) {
        drop(
            self.client
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The number of members.
    pub(crate) fn members(&self) -> usize {
        self.bases.len()
    }

    /// The member requests go to now.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.bases.len()
    }

    /// POSTs `body` to `path` (like `/v3/kv/txn`) and reads the JSON answer, failing over to
    /// the next member as the module docs say.
    ///
    /// # Errors
    /// `Backend`: every member unreachable or unavailable (the last member's error), an
    /// authentication or permission refusal, another etcd error, an answer that does not parse.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| {
            LeaseError::backend(BackendErrorKind::Other, format!("cannot encode: {e}"))
        })?;
        let bytes = self.call_raw(path, &body).await?;
        self.parse(path, &bytes)
    }

    /// Reads one JSON answer of `path`.
    pub(crate) fn parse<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "{}: unexpected answer to {path} ({e}); is this an etcd v3.4+ client URL?",
                    self.display
                ),
            )
        })
    }

    /// As [`Self::call`], with the body as bytes (a stream of requests, one per line, for a
    /// streaming RPC) and the answer as bytes (for a stream: one answer per line).
    pub(crate) async fn call_raw(&self, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.operation_timeout;
        let mut reauthenticated = false;
        loop {
            let token = self.token(deadline).await?;
            match self.send(path, body, token.as_ref(), deadline).await {
                Ok(bytes) => return Ok(bytes),
                Err(Failure::Token) if !reauthenticated && self.user.is_some() => {
                    reauthenticated = true;
                    tracing::debug!(members = %self.display, "etcd auth token expired; authenticating again");
                    *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
                }
                Err(Failure::Token) => {
                    return Err(LeaseError::backend(
                        BackendErrorKind::Auth,
                        format!(
                            "{}: the cluster asks for authentication: give the user and password in the URL (etcd://user:password@host:2379)",
                            self.display
                        ),
                    ))
                }
                Err(Failure::Next(e) | Failure::Stop(e)) => return Err(e),
            }
        }
    }

    /// The token to send, authenticating first if a user is configured and there is none.
    async fn token(&self, deadline: Instant) -> Result<Option<Secret>> {
        let (Some(user), Some(password)) = (&self.user, &self.password) else {
            return Ok(None);
        };
        if let Some(t) = self
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(Some(t));
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "name": user,
            "password": password.expose(),
        }))
        .map_err(|e| LeaseError::backend(BackendErrorKind::Other, format!("cannot encode: {e}")))?;
        let answer = match self
            .send("/v3/auth/authenticate", &body, None, deadline)
            .await
        {
            Ok(bytes) => bytes,
            Err(Failure::Next(e) | Failure::Stop(e)) => return Err(e),
            Err(Failure::Token) => {
                return Err(LeaseError::backend(
                    BackendErrorKind::Auth,
                    format!("{}: authentication refused", self.display),
                ))
            }
        };
        let token = serde_json::from_slice::<Authenticated>(&answer)
            .ok()
            .filter(|a| !a.token.is_empty())
            .map(|a| Secret::new(a.token))
            .ok_or_else(|| {
                LeaseError::backend(
                    BackendErrorKind::Auth,
                    format!(
                        "{}: the cluster gave no token for user {user:?}: is authentication enabled (etcdctl auth enable)?",
                        self.display
                    ),
                )
            })?;
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(Some(token))
    }

    /// One request, to each member in turn until one answers.
    async fn send(
        &self,
        path: &str,
        body: &[u8],
        token: Option<&Secret>,
        deadline: Instant,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let client = self.client().map_err(Failure::Stop)?;
        let n = self.bases.len();
        let first = self.current();
        let mut last = None;
        for attempt in 0..n {
            let member = (first + attempt) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(n - attempt).unwrap_or(1);
            match self
                .send_to(&client, member, path, body, token, share)
                .await
            {
                Ok(bytes) => {
                    if attempt > 0 {
                        self.current.store(member, Ordering::Relaxed);
                        tracing::debug!(members = %self.display, member = %self.bases[member], "etcd requests fail over to another member");
                    }
                    return Ok(bytes);
                }
                Err(Failure::Next(e)) => {
                    tracing::debug!(member = %self.bases[member], error = %e, "etcd member did not answer; trying the next");
                    last = Some(e);
                }
                Err(other) => return Err(other),
            }
        }
        Err(Failure::Next(last.unwrap_or_else(|| {
            LeaseError::backend(
                BackendErrorKind::Timeout,
                format!(
                    "{} did not answer within {:?}: check the members and the network, or raise SyncTimeout",
                    self.display, self.operation_timeout
                ),
            )
        })))
    }

    async fn send_to(
        &self,
        client: &reqwest::Client,
        member: usize,
        path: &str,
        body: &[u8],
        token: Option<&Secret>,
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let base = &self.bases[member];
        let mut request = client
            .post(format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.to_vec());
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                Failure::Stop(LeaseError::backend(
                    BackendErrorKind::Auth,
                    format!("{}: the auth token is not a valid header", self.display),
                ))
            })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            let bytes = response.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = match exchange.await {
            Ok(pair) => pair,
            Err(e) => return Err(Failure::Next(self.transport_error(member, &e))),
        };
        if status.is_success() {
            // A streamed answer (keepalive) carries an error as one of its lines.
            #[derive(Deserialize)]
            struct Streamed {
                error: GatewayError,
            }
            for line in bytes.split(|b| *b == b'\n') {
                if line.starts_with(b"{\"error\"") {
                    if let Ok(s) = serde_json::from_slice::<Streamed>(line) {
                        return Err(self.etcd_failure(member, &s.error));
                    }
                }
            }
            return Ok(bytes);
        }
        let error =
            serde_json::from_slice::<GatewayError>(&bytes).unwrap_or_else(|_| GatewayError {
                message: format!("HTTP {status}"),
                code: if status.is_server_error() {
                    UNAVAILABLE
                } else {
                    0
                },
            });
        Err(self.etcd_failure(member, &error))
    }

    fn etcd_failure(&self, member: usize, e: &GatewayError) -> Failure {
        let m = e.message.as_str();
        let at = &self.bases[member];
        if e.code == UNAUTHENTICATED
            || m.contains("invalid auth token")
            || m.contains("user name is empty")
        {
            return Failure::Token;
        }
        let error = |kind, fix: &str| {
            LeaseError::backend(
                kind,
                format!("etcd member {at} of {}: {m}: {fix}", self.display),
            )
        };
        if m.contains("authentication failed") {
            return Failure::Stop(error(
                BackendErrorKind::Auth,
                "check the user and password in the URL",
            ));
        }
        if e.code == PERMISSION_DENIED || m.contains("permission denied") {
            return Failure::Stop(error(
                BackendErrorKind::Permission,
                "grant the user's role readwrite on the KeyPrefix range (etcdctl role grant-permission --prefix)",
            ));
        }
        if e.code == UNAVAILABLE
            || e.code == DEADLINE_EXCEEDED
            || m.contains("no leader")
            || m.contains("timed out")
            || m.contains("leader changed")
        {
            return Failure::Next(error(
                BackendErrorKind::Unreachable,
                "the cluster has no quorum or no leader right now: check that a majority of its members run",
            ));
        }
        Failure::Stop(error(BackendErrorKind::Other, "check the cluster's logs"))
    }

    fn transport_error(&self, member: usize, e: &reqwest::Error) -> LeaseError {
        let at = &self.bases[member];
        let kind = if e.is_timeout() {
            BackendErrorKind::Timeout
        } else {
            BackendErrorKind::Unreachable
        };
        // reqwest's messages name the URL, which holds no credentials (they go in a header).
        LeaseError::backend(
            kind,
            format!(
                "etcd member {at} of {}: {}: check that the members run and the hosts and ports are right",
                self.display,
                error_chain(e)
            ),
        )
    }

    /// Opens the watch stream `body` on member `member` (no timeout: it lives until closed).
    pub(crate) async fn open_stream(
        &self,
        member: usize,
        path: &str,
        body: &serde_json::Value,
        connect_within: Duration,
    ) -> Result<reqwest::Response> {
        let client = self.client()?;
        let deadline = Instant::now() + connect_within;
        let token = self.token(deadline).await?;
        let mut request = client
            .post(format!("{}{path}", self.bases[member]))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .json_body(body);
        if let Some(t) = token {
            if let Ok(mut value) = reqwest::header::HeaderValue::from_str(t.expose()) {
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
            }
        }
        let response = tokio::time::timeout(connect_within, request.send())
            .await
            .map_err(|_| {
                LeaseError::backend(
                    BackendErrorKind::Timeout,
                    format!(
                        "etcd member {} of {} did not answer a watch within {connect_within:?}",
                        self.bases[member], self.display
                    ),
                )
            })?
            .map_err(|e| self.transport_error(member, &e))?;
        if !response.status().is_success() {
            if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            return Err(LeaseError::backend(
                BackendErrorKind::Other,
                format!(
                    "etcd member {} of {}: the watch was refused (HTTP {})",
                    self.bases[member],
                    self.display,
                    response.status()
                ),
            ));
        }
        Ok(response)
    }

    /// Checks that member `member` answers (`/v3/maintenance/status`) within `within`.
    pub(crate) async fn member_answers(&self, member: usize, within: Duration) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        let token = self.token(Instant::now() + within).await.ok().flatten();
        self.send_to(
            &client,
            member,
            "/v3/maintenance/status",
            b"{}",
            token.as_ref(),
            within,
        )
        .await
        .is_ok()
    }
}

/// `RequestBuilder::json` needs reqwest's `json` feature; this is the same without it.
trait JsonBody {
    fn json_body(self, body: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &serde_json::Value) -> Self {
        self.body(serde_json::to_vec(body).unwrap_or_default())
    }
}
