//! Microsoft Entra ID authentication to Redis: the sample's "DefaultAzureCredential" mode, chosen
//! by an `Endpoint` without a password.
//!
//! A token for [`SCOPE`] comes from the first usable credential of a chain like .NET's
//! `DefaultAzureCredential` (the Rust SDK has none any more), built on `azure_identity` 1.0:
//!
//! 1. environment service principal: `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`
//!    (`ClientSecretCredential`; `AZURE_AUTHORITY_HOST` picks another cloud);
//! 2. workload identity: `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_TENANT_ID` + `AZURE_CLIENT_ID`;
//! 3. managed identity, **only** when the platform announces its endpoint: `IDENTITY_ENDPOINT` +
//!    `IDENTITY_HEADER` (App Service, Functions, Container Apps; `AZURE_CLIENT_ID` selects a
//!    user-assigned identity). The instance metadata service at 169.254.169.254 is never probed:
//!    off Azure that probe costs seconds per process, and nothing here may reach an address
//!    nobody configured;
//! 4. the Azure CLI (`az account get-access-token`, i.e. whoever ran `az login`).
//!
//! As in `DefaultAzureCredential`, a credential whose variables are absent is skipped; one that is
//! configured but fails ends the chain with its error (a broken service principal must not
//! silently become someone's `az login`), and the first credential that produced a token is used
//! from then on.
//!
//! Redis is authenticated with user name = the token's `oid` claim (read from the JWT payload; the
//! server checks the signature, we do not need to) and password = the token. [`EntraCredentials`]
//! implements the `redis` crate's [`StreamingCredentialsProvider`]: a background task refreshes the
//! token before it expires (at three quarters of its life, or about five minutes before the end
//! for long-lived tokens), every live connection re-AUTHs with each new token, and every new
//! connection (also a reconnection after a drop) starts with the current one. Failed refreshes are
//! retried with backoff while the current token is still valid; only then do new connections see
//! the error.
//!
//! Invariants: a token only ever lives in a [`Secret`] (and, on its way to the server, in the
//! driver's `BasicAuth`, which redacts itself); no log line or error message contains it.
//! Errors and logs say which credential was used and the object id, which is not a secret.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use futures_util::Stream;
use redis::{BasicAuth, RedisError, RedisResult, StreamingCredentialsProvider};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{BackendErrorKind, LeaseError, Result};
use crate::secret::Secret;

/// The token scope of Azure Cache for Redis (and Azure Managed Redis).
pub const SCOPE: &str = "https://redis.azure.com/.default";

/// Every Entra ID failure message starts with this, so the Redis error mapping can pass it on.
pub const MESSAGE_PREFIX: &str = "Microsoft Entra ID";

/// Time one credential may take to produce a token (the Azure CLI takes a few seconds).
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Refresh long-lived tokens this long before they expire: just inside `azure_identity`'s own
/// token cache, which hands out a new token only in the last 300 s of the old one.
const REFRESH_HEADROOM: Duration = Duration::from_secs(290);
/// Never refresh more often than this (a source that keeps returning short-lived tokens).
const MIN_REFRESH: Duration = Duration::from_millis(500);
/// Retries of a failed refresh: 500 ms doubling to 30 s.
const RETRY: Backoff = Backoff::doubling(Duration::from_millis(500), Duration::from_secs(30));

const FIX: &str = "Fix: on a developer machine sign in with `az login`; in Azure give the \
    application a managed identity (App Service, Functions, Container Apps) or a workload identity; \
    elsewhere set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (a service principal). \
    Or use an access key instead: ConnectionString = host:6380,password=KEY,ssl=True";

// ---------------------------------------------------------------------------------------------
// Tokens and the object id

/// A token as a source hands it out.
pub struct Token {
    /// The JWT.
    pub secret: Secret,
    /// Time left until it expires, as the source said when it handed it out.
    pub expires_in: Duration,
    /// Which credential produced it (`AzureCliCredential`, ...).
    pub source: &'static str,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &self.secret)
            .field("expires_in", &self.expires_in)
            .field("source", &self.source)
            .finish()
    }
}

/// Where tokens come from: the credential chain, or a test's fake.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// A token for [`SCOPE`].
    ///
    /// # Errors
    /// A message without secrets saying what failed and what to do.
    async fn token(&self) -> std::result::Result<Token, String>;
}

/// The `oid` (object id) claim of a JWT: the Redis user name of an Entra ID identity.
///
/// Only the payload is decoded; the signature is the server's business.
///
/// # Errors
/// When the token is not a JWT or has no `oid`; the message never contains the token.
pub fn object_id(token: &str) -> std::result::Result<String, String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "{MESSAGE_PREFIX}: the access token is not a JWT (header.payload.signature)"
        ));
    };
    let bytes = base64url_decode(payload)
        .ok_or_else(|| format!("{MESSAGE_PREFIX}: the access token's payload is not base64url"))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| format!("{MESSAGE_PREFIX}: the access token's payload is not JSON"))?;
    match claims.get("oid") {
        Some(serde_json::Value::String(oid)) if !oid.is_empty() => Ok(oid.clone()),
        _ => Err(format!(
            "{MESSAGE_PREFIX}: the access token has no oid (object id) claim, which Redis needs as \
             the user name: use a token of a user, service principal or managed identity"
        )),
    }
}

/// Decodes base64url (or standard base64), with or without padding.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The credential chain

/// One credential of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A service principal from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`.
    Environment,
    /// Workload identity (`AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity,
    /// Managed identity announced by `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
    ManagedIdentity,
    /// The Azure CLI's signed-in account.
    AzureCli,
}

impl CredentialKind {
    /// The name used in messages (the `azure_identity` type).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Environment => "EnvironmentCredential (ClientSecretCredential)",
            Self::WorkloadIdentity => "WorkloadIdentityCredential",
            Self::ManagedIdentity => "ManagedIdentityCredential",
            Self::AzureCli => "AzureCliCredential",
        }
    }
}

/// Whether a credential of the chain will be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Its variables are there (or it needs none: the Azure CLI).
    Try,
    /// Skipped, and why.
    Skip(String),
}

/// The chain for an environment: each credential in order, tried or skipped. `var` returns a
/// variable's value, `None` when unset or empty.
pub fn plan(var: &dyn Fn(&str) -> Option<String>) -> Vec<(CredentialKind, Plan)> {
    let missing = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|n| var(n).is_none())
            .map(|n| (*n).to_owned())
            .collect()
    };
    let environment = {
        let m = missing(&["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]);
        if m.is_empty() {
            Plan::Try
        } else if var("AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
            Plan::Skip(
                "AZURE_CLIENT_CERTIFICATE_PATH is set, but certificate credentials are not \
                 supported by this build (they need OpenSSL): use AZURE_CLIENT_SECRET, a workload \
                 or managed identity, or az login"
                    .to_owned(),
            )
        } else {
            Plan::Skip(format!("not configured ({} not set)", m.join(", ")))
        }
    };
    let workload = if var("AZURE_FEDERATED_TOKEN_FILE").is_none() {
        Plan::Skip("not configured (AZURE_FEDERATED_TOKEN_FILE not set)".to_owned())
    } else {
        let m = missing(&["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]);
        if m.is_empty() {
            Plan::Try
        } else {
            Plan::Skip(format!(
                "AZURE_FEDERATED_TOKEN_FILE is set but {} is not",
                m.join(" and ")
            ))
        }
    };
    let endpoint = var("IDENTITY_ENDPOINT").is_some();
    let header = var("IDENTITY_HEADER").is_some();
    // azure_identity falls back to the instance metadata service (169.254.169.254) for any other
    // combination: only the App Service source is ever constructed.
    let managed = if endpoint && header && var("IDENTITY_SERVER_THUMBPRINT").is_none() {
        Plan::Try
    } else if endpoint && header {
        Plan::Skip("Service Fabric managed identity is not supported by azure_identity".to_owned())
    } else if endpoint {
        Plan::Skip(
            "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc and others are not \
             supported)"
                .to_owned(),
        )
    } else if var("MSI_ENDPOINT").is_some() {
        Plan::Skip(
            "MSI_ENDPOINT (Cloud Shell, Azure ML) is not supported by azure_identity 1.0: sign in \
             with az login"
                .to_owned(),
        )
    } else {
        Plan::Skip(
            "not configured (IDENTITY_ENDPOINT and IDENTITY_HEADER not set; the instance metadata \
             service is never probed)"
                .to_owned(),
        )
    };
    vec![
        (CredentialKind::Environment, environment),
        (CredentialKind::WorkloadIdentity, workload),
        (CredentialKind::ManagedIdentity, managed),
        (CredentialKind::AzureCli, Plan::Try),
    ]
}

enum Step {
    Skip(String),
    /// Configured, but could not be constructed (a malformed tenant id, an unreadable file).
    Broken(String),
    Ready(Arc<dyn TokenCredential>),
}

/// The credential chain (see the module docs). A [`TokenSource`].
pub struct CredentialChain {
    steps: Vec<(CredentialKind, Step)>,
    /// The index of the credential that produced a token: used from then on.
    chosen: Mutex<Option<usize>>,
}

impl fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(k, s)| {
                let state = match s {
                    Step::Skip(_) => "skipped",
                    Step::Broken(_) => "broken",
                    Step::Ready(_) => "ready",
                };
                format!("{}: {state}", k.name())
            })
            .collect();
        f.debug_struct("CredentialChain")
            .field("steps", &steps)
            .finish_non_exhaustive()
    }
}

/// An Azure SDK error on one line (its `Display`; `Debug` carries backtraces).
fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl CredentialChain {
    /// The chain for the process environment. Constructs only the credentials [`plan`] tries;
    /// none of them contacts anything before the first token is asked for.
    #[must_use]
    pub fn from_process_env() -> Self {
        Self::from_env(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// The chain for the variables `var` gives (`None`: unset or empty).
    ///
    /// The managed identity and Azure CLI credentials of `azure_identity` read the process
    /// environment themselves; `var` decides only which of them are used.
    #[must_use]
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Self {
        crate::store::common::ensure_crypto_provider();
        let get = |n: &str| var(n).unwrap_or_default();
        let steps = plan(var)
            .into_iter()
            .map(|(kind, p)| {
                if let Plan::Skip(why) = p {
                    return (kind, Step::Skip(why));
                }
                let built: azure_core::Result<Arc<dyn TokenCredential>> = match kind {
                    CredentialKind::Environment => ClientSecretCredential::new(
                        &get("AZURE_TENANT_ID"),
                        get("AZURE_CLIENT_ID"),
                        azure_core::credentials::Secret::new(get("AZURE_CLIENT_SECRET")),
                        None,
                    )
                    .map(|c| c as Arc<dyn TokenCredential>),
                    CredentialKind::WorkloadIdentity => {
                        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                            tenant_id: Some(get("AZURE_TENANT_ID")),
                            client_id: Some(get("AZURE_CLIENT_ID")),
                            token_file_path: Some(get("AZURE_FEDERATED_TOKEN_FILE").into()),
                            ..WorkloadIdentityCredentialOptions::default()
                        }))
                        .map(|c| c as Arc<dyn TokenCredential>)
                    }
                    CredentialKind::ManagedIdentity => {
                        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                            user_assigned_id: var("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
                            ..ManagedIdentityCredentialOptions::default()
                        }))
                        .map(|c| c as Arc<dyn TokenCredential>)
                    }
                    CredentialKind::AzureCli => {
                        AzureCliCredential::new(None).map(|c| c as Arc<dyn TokenCredential>)
                    }
                };
                match built {
                    Ok(c) => (kind, Step::Ready(c)),
                    Err(e) => (kind, Step::Broken(one_line(&e))),
                }
            })
            .collect();
        Self {
            steps,
            chosen: Mutex::new(None),
        }
    }

    #[cfg(test)]
    fn from_credentials(steps: Vec<(CredentialKind, Option<Arc<dyn TokenCredential>>)>) -> Self {
        Self {
            steps: steps
                .into_iter()
                .map(|(k, c)| {
                    (
                        k,
                        c.map_or_else(|| Step::Skip("not configured".into()), Step::Ready),
                    )
                })
                .collect(),
            chosen: Mutex::new(None),
        }
    }

    async fn ask(
        kind: CredentialKind,
        credential: &dyn TokenCredential,
    ) -> std::result::Result<Token, String> {
        match tokio::time::timeout(TOKEN_TIMEOUT, credential.get_token(&[SCOPE], None)).await {
            Err(_) => Err(format!(
                "gave no token within {} s",
                TOKEN_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(one_line(&e)),
            Ok(Ok(at)) => {
                let left = at.expires_on - azure_core::time::OffsetDateTime::now_utc();
                let ms = u64::try_from(left.whole_milliseconds().max(0)).unwrap_or(u64::MAX);
                Ok(Token {
                    secret: Secret::new(at.token.secret()),
                    expires_in: Duration::from_millis(ms),
                    source: kind.name(),
                })
            }
        }
    }

    fn failure(notes: &[String]) -> String {
        format!(
            "{MESSAGE_PREFIX}: no credential produced a token for {SCOPE}: {}. {FIX}",
            notes.join("; ")
        )
    }
}

#[async_trait]
impl TokenSource for CredentialChain {
    async fn token(&self) -> std::result::Result<Token, String> {
        let chosen = *self
            .chosen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = chosen {
            let (kind, step) = &self.steps[i];
            if let Step::Ready(c) = step {
                return Self::ask(*kind, c.as_ref()).await.map_err(|e| {
                    format!(
                        "{MESSAGE_PREFIX}: refreshing the token with {} failed: {e}",
                        kind.name()
                    )
                });
            }
        }
        let mut notes = Vec::new();
        for (i, (kind, step)) in self.steps.iter().enumerate() {
            match step {
                Step::Skip(why) => notes.push(format!("{}: {why}", kind.name())),
                Step::Broken(e) => {
                    notes.push(format!("{}: {e}", kind.name()));
                    return Err(Self::failure(&notes));
                }
                Step::Ready(c) => match Self::ask(*kind, c.as_ref()).await {
                    Ok(token) => {
                        *self
                            .chosen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(i);
                        return Ok(token);
                    }
                    Err(e) => {
                        notes.push(format!("{}: {e}", kind.name()));
                        // A configured credential that fails ends the chain; only the Azure CLI
                        // (last, needs no configuration) is "unavailable" when it fails.
                        if *kind != CredentialKind::AzureCli {
                            return Err(Self::failure(&notes));
                        }
                    }
                },
            }
        }
        Err(Self::failure(&notes))
    }
}

// ---------------------------------------------------------------------------------------------
// The credentials provider

/// Who we are signed in as: not secret (an object id names an identity, it does not prove it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `oid` claim, used as the Redis user name.
    pub object_id: String,
    /// The credential that produced the token.
    pub source: &'static str,
}

struct Current {
    identity: Identity,
    token: Secret,
}

#[derive(Clone)]
enum State {
    /// No token asked for yet.
    Pending,
    Ready(Arc<Current>),
    /// No valid token: the last attempt failed and the previous token (if any) has expired.
    Failed(Arc<str>),
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    state: watch::Receiver<State>,
    _refresher: AbortOnDrop,
}

/// Redis credentials from Microsoft Entra ID, kept fresh by a background task that ends when
/// the last clone is dropped. Cheap to clone.
#[derive(Clone)]
pub struct EntraCredentials {
    inner: Arc<Inner>,
}

impl fmt::Debug for EntraCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.state.borrow() {
            State::Pending => "pending".to_owned(),
            State::Ready(c) => format!(
                "object id {} via {}",
                c.identity.object_id, c.identity.source
            ),
            State::Failed(_) => "failed".to_owned(),
        };
        f.debug_struct("EntraCredentials")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl EntraCredentials {
    /// Starts refreshing tokens from the credential chain of the process environment.
    /// Must be called inside a tokio runtime.
    #[must_use]
    pub fn from_process_env() -> Self {
        Self::start(Arc::new(CredentialChain::from_process_env()))
    }

    /// Starts refreshing tokens from `source`. Must be called inside a tokio runtime.
    #[must_use]
    pub fn start(source: Arc<dyn TokenSource>) -> Self {
        let (tx, rx) = watch::channel(State::Pending);
        let task = tokio::spawn(refresh(source, tx));
        Self {
            inner: Arc::new(Inner {
                state: rx,
                _refresher: AbortOnDrop(task),
            }),
        }
    }

    /// Waits for the first token and says whose it is.
    ///
    /// # Errors
    /// `Backend` (`Auth`) with every credential's reason and what to do, when none produced a
    /// usable token.
    pub async fn ready(&self) -> Result<Identity> {
        let mut rx = self.inner.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, State::Pending))
            .await
            .map(|s| s.clone())
            .map_err(|_| {
                LeaseError::backend(
                    BackendErrorKind::Auth,
                    format!("{MESSAGE_PREFIX}: the token refresh task ended"),
                )
            })?;
        match state {
            State::Ready(c) => Ok(c.identity.clone()),
            State::Failed(m) => Err(LeaseError::backend(BackendErrorKind::Auth, m.to_string())),
            State::Pending => unreachable!("waited for a state other than Pending"),
        }
    }

    /// The identity of the current token, if there is one.
    #[must_use]
    pub fn identity(&self) -> Option<Identity> {
        match &*self.inner.state.borrow() {
            State::Ready(c) => Some(c.identity.clone()),
            _ => None,
        }
    }

    /// Adds to an authentication failure reported by Redis who we signed in as and what to do.
    #[must_use]
    pub fn explain(&self, e: LeaseError) -> LeaseError {
        match e {
            LeaseError::Backend {
                kind: BackendErrorKind::Auth,
                message,
            } if !message.starts_with(MESSAGE_PREFIX) => {
                let who = self.identity().map_or_else(
                    || "an Entra ID identity".to_owned(),
                    |i| format!("object id {} (via {})", i.object_id, i.source),
                );
                let oid = self
                    .identity()
                    .map_or_else(|| "OBJECT_ID".to_owned(), |i| i.object_id);
                LeaseError::backend(
                    BackendErrorKind::Auth,
                    format!(
                        "{message}. {MESSAGE_PREFIX}: signed in as {who}, which Redis refused: give \
                         it a data access policy on the cache (and enable Microsoft Entra \
                         authentication on it), e.g. az redis access-policy-assignment create \
                         --name CACHE --resource-group GROUP --policy-name \"Data Contributor\" \
                         --object-id {oid} --object-id-alias {oid} \
                         --access-policy-assignment-name {oid}"
                    ),
                )
            }
            other => other,
        }
    }
}

fn to_item(state: &State) -> RedisResult<BasicAuth> {
    match state {
        State::Ready(c) => Ok(BasicAuth::new(
            c.identity.object_id.clone(),
            c.token.expose().to_owned(),
        )),
        State::Failed(m) => Err(RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            MESSAGE_PREFIX,
            m.to_string(),
        ))),
        State::Pending => Err(RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            MESSAGE_PREFIX,
            format!("{MESSAGE_PREFIX}: no token yet"),
        ))),
    }
}

impl StreamingCredentialsProvider for EntraCredentials {
    /// The current credentials (after waiting for the first token), then each new one. The
    /// driver takes the first item to open a connection and re-AUTHs it with every later one.
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        let rx = self.inner.state.clone();
        Box::pin(futures_util::stream::unfold(
            (rx, true),
            |(mut rx, first)| async move {
                if first {
                    rx.wait_for(|s| !matches!(s, State::Pending)).await.ok()?;
                } else {
                    loop {
                        rx.changed().await.ok()?;
                        if !matches!(*rx.borrow_and_update(), State::Pending) {
                            break;
                        }
                    }
                }
                let item = to_item(&rx.borrow_and_update());
                Some((item, (rx, false)))
            },
        ))
    }
}

/// When to refresh a token that is valid for `valid_for`: at three quarters of its life, or
/// [`REFRESH_HEADROOM`] before it expires if that is later (long-lived tokens).
fn refresh_delay(valid_for: Duration) -> Duration {
    (valid_for * 3 / 4)
        .max(valid_for.saturating_sub(REFRESH_HEADROOM))
        .max(MIN_REFRESH)
}

async fn refresh(source: Arc<dyn TokenSource>, tx: watch::Sender<State>) {
    let mut valid_until: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let asked = Instant::now();
        let outcome = source.token().await.and_then(|t| {
            let oid = object_id(t.secret.expose())?;
            Ok((t, oid))
        });
        let delay = match outcome {
            Ok((token, object_id)) => {
                failures = 0;
                valid_until = Some(asked + token.expires_in);
                let identity = Identity {
                    object_id,
                    source: token.source,
                };
                let new = tx.send_if_modified(|s| match s {
                    State::Ready(c) if c.token == token.secret && c.identity == identity => false,
                    _ => {
                        *s = State::Ready(Arc::new(Current {
                            identity: identity.clone(),
                            token: token.secret.clone(),
                        }));
                        true
                    }
                });
                let next = refresh_delay(token.expires_in);
                if new {
                    tracing::debug!(
                        object_id = %identity.object_id,
                        source = identity.source,
                        valid_for_s = token.expires_in.as_secs(),
                        refresh_in_ms = u64::try_from(next.as_millis()).unwrap_or(u64::MAX),
                        "Microsoft Entra ID token acquired; connections re-authenticate with it"
                    );
                }
                next
            }
            Err(message) => {
                let now = Instant::now();
                let delay = RETRY.delay(failures);
                failures = failures.saturating_add(1);
                match valid_until {
                    Some(until) if until > now => {
                        tracing::warn!(
                            error = %message,
                            valid_for_ms = u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX),
                            "refreshing the Microsoft Entra ID token failed; the current token is still valid, retrying"
                        );
                        // Wake up at the latest when the current token expires, to report it.
                        delay.min(until - now)
                    }
                    _ => {
                        tracing::warn!(error = %message, "no valid Microsoft Entra ID token; retrying");
                        // The same failure again is not news for the subscribers.
                        tx.send_if_modified(|s| match s {
                            State::Failed(m) if **m == *message => false,
                            _ => {
                                *s = State::Failed(message.into());
                                true
                            }
                        });
                        delay
                    }
                }
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::collections::{HashMap, VecDeque};

    /// A JWT-shaped token (`alg: none`) with the given claims.
    pub(crate) fn jwt(claims: &str, sig: &str) -> String {
        fn b64url(data: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
                }
            }
            out
        }
        format!(
            "{}.{}.{sig}",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(claims.as_bytes())
        )
    }

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64url_decode("+/8").unwrap(), [0xfb, 0xff]);
        assert!(base64url_decode("Z").is_none());
        assert!(base64url_decode("Zm9v!").is_none());
    }

    #[test]
    fn object_id_comes_from_the_payload_and_errors_never_show_the_token() {
        let t = jwt(
            r#"{"aud":"https://redis.azure.com","oid":"6f1c2b9e-0000-4000-8000-00000000abcd","exp":1}"#,
            "c2lnbmF0dXJl",
        );
        assert_eq!(
            object_id(&t).unwrap(),
            "6f1c2b9e-0000-4000-8000-00000000abcd"
        );
        let no_oid = jwt(r#"{"sub":"someone-secretish"}"#, "sig");
        let bad = [
            "not-a-jwt".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "h.!!!.s".to_owned(),
            jwt("not json", "s"),
            no_oid.clone(),
            jwt(r#"{"oid":""}"#, "s"),
            jwt(r#"{"oid":42}"#, "s"),
        ];
        for b in &bad {
            let e = object_id(b).unwrap_err();
            assert!(e.starts_with(MESSAGE_PREFIX), "{e}");
            assert!(!e.contains(b.as_str()), "{e}");
        }
        assert!(object_id(&no_oid).unwrap_err().contains("oid"));
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned().filter(|v| !v.is_empty())
    }

    fn tried(p: &[(CredentialKind, Plan)]) -> Vec<CredentialKind> {
        p.iter()
            .filter(|(_, p)| *p == Plan::Try)
            .map(|(k, _)| *k)
            .collect()
    }

    #[test]
    fn chain_order_and_what_is_tried() {
        use CredentialKind::*;
        let p = plan(&env_of(&[]));
        assert_eq!(
            p.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [Environment, WorkloadIdentity, ManagedIdentity, AzureCli]
        );
        assert_eq!(tried(&p), [AzureCli]);
        let Plan::Skip(why) = &p[2].1 else { panic!() };
        assert!(why.contains("never probed"), "{why}");

        let sp = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ];
        assert_eq!(tried(&plan(&env_of(&sp))), [Environment, AzureCli]);
        let Plan::Skip(why) = &plan(&env_of(&sp[..2]))[0].1 else {
            panic!()
        };
        assert!(
            why.contains("AZURE_CLIENT_SECRET") && !why.contains("AZURE_TENANT_ID"),
            "{why}"
        );
        // Empty values count as unset.
        let blank = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", ""),
        ];
        assert_eq!(tried(&plan(&env_of(&blank))), [AzureCli]);

        let wl = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
        ];
        assert_eq!(tried(&plan(&env_of(&wl))), [WorkloadIdentity, AzureCli]);
        let Plan::Skip(why) = &plan(&env_of(&wl[1..]))[1].1 else {
            panic!()
        };
        assert!(why.contains("AZURE_TENANT_ID"), "{why}");

        let app_service = [
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"),
            ("IDENTITY_HEADER", "h"),
        ];
        assert_eq!(
            tried(&plan(&env_of(&app_service))),
            [ManagedIdentity, AzureCli]
        );
    }

    #[test]
    fn managed_identity_is_never_the_metadata_service() {
        // Every combination that would make azure_identity fall back to 169.254.169.254 (or use
        // an unsupported source) skips managed identity.
        for env in [
            &[("IDENTITY_ENDPOINT", "http://x")][..],
            &[("IDENTITY_HEADER", "h")][..],
            &[
                ("IDENTITY_ENDPOINT", "http://x"),
                ("IMDS_ENDPOINT", "http://y"),
            ][..],
            &[("MSI_ENDPOINT", "http://x")][..],
            &[("MSI_ENDPOINT", "http://x"), ("MSI_SECRET", "s")][..],
            &[
                ("IDENTITY_ENDPOINT", "http://x"),
                ("IDENTITY_HEADER", "h"),
                ("IDENTITY_SERVER_THUMBPRINT", "t"),
            ][..],
            &[("AZURE_CLIENT_ID", "c")][..],
        ] {
            let p = plan(&env_of(env));
            assert!(
                matches!(p[2], (CredentialKind::ManagedIdentity, Plan::Skip(_))),
                "{env:?}: {p:?}"
            );
        }
        // And the chain built for such an environment holds no managed identity credential.
        let chain = CredentialChain::from_env(&env_of(&[("IDENTITY_ENDPOINT", "http://x")]));
        assert!(matches!(chain.steps[2].1, Step::Skip(_)));
    }

    #[derive(Debug)]
    struct Fake {
        replies: Mutex<VecDeque<azure_core::Result<String>>>,
        calls: Mutex<usize>,
    }

    impl Fake {
        fn new(replies: Vec<azure_core::Result<String>>) -> Arc<Self> {
            Arc::new(Self {
                replies: Mutex::new(replies.into()),
                calls: Mutex::new(0),
            })
        }
        fn calls(&self) -> usize {
            *self.calls.lock().unwrap()
        }
    }

    #[async_trait]
    impl TokenCredential for Fake {
        async fn get_token(
            &self,
            scopes: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            assert_eq!(scopes, [SCOPE]);
            *self.calls.lock().unwrap() += 1;
            let reply = self
                .replies
                .lock()
                .unwrap()
                .pop_front()
                .expect("no more replies");
            reply.map(|t| {
                azure_core::credentials::AccessToken::new(
                    t,
                    azure_core::time::OffsetDateTime::now_utc()
                        + azure_core::time::Duration::seconds(3600),
                )
            })
        }
    }

    fn fail(msg: &str) -> azure_core::Result<String> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            msg.to_owned(),
        ))
    }

    #[tokio::test]
    async fn the_first_credential_that_works_is_kept() {
        let cli = Fake::new(vec![Ok("t1".into()), Ok("t2".into())]);
        let chain = CredentialChain::from_credentials(vec![
            (CredentialKind::Environment, None),
            (CredentialKind::AzureCli, Some(cli.clone())),
        ]);
        let t = chain.token().await.unwrap();
        assert_eq!(t.secret.expose(), "t1");
        assert_eq!(t.source, "AzureCliCredential");
        assert!(t.expires_in > Duration::from_secs(3590));
        assert_eq!(chain.token().await.unwrap().secret.expose(), "t2");
        assert_eq!(cli.calls(), 2);
    }

    #[tokio::test]
    async fn a_configured_credential_that_fails_ends_the_chain() {
        let sp = Fake::new(vec![fail("AADSTS7000215: Invalid client secret provided")]);
        let cli = Fake::new(vec![Ok("t".into())]);
        let chain = CredentialChain::from_credentials(vec![
            (CredentialKind::Environment, Some(sp)),
            (CredentialKind::AzureCli, Some(cli.clone())),
        ]);
        let e = chain.token().await.unwrap_err();
        assert!(
            e.starts_with(MESSAGE_PREFIX) && e.contains("AADSTS7000215"),
            "{e}"
        );
        assert!(e.contains("az login"), "{e}");
        assert_eq!(
            cli.calls(),
            0,
            "the CLI must not stand in for a broken service principal"
        );
    }

    #[tokio::test]
    async fn when_all_fail_every_reason_is_listed() {
        let cli = Fake::new(vec![fail("az not found on PATH")]);
        let chain = CredentialChain::from_credentials(vec![
            (CredentialKind::Environment, None),
            (CredentialKind::WorkloadIdentity, None),
            (CredentialKind::AzureCli, Some(cli)),
        ]);
        let e = chain.token().await.unwrap_err();
        assert!(
            e.contains("EnvironmentCredential")
                && e.contains("WorkloadIdentityCredential")
                && e.contains("az not found on PATH"),
            "{e}"
        );
    }

    /// Hands out scripted tokens; `None` is a failure.
    struct Script {
        replies: Mutex<VecDeque<Option<(String, Duration)>>>,
        asked: Mutex<Vec<Instant>>,
    }

    #[async_trait]
    impl TokenSource for Script {
        async fn token(&self) -> std::result::Result<Token, String> {
            self.asked.lock().unwrap().push(Instant::now());
            let next = self.replies.lock().unwrap().pop_front();
            match next {
                Some(Some((t, valid))) => Ok(Token {
                    secret: Secret::new(t),
                    expires_in: valid,
                    source: "Script",
                }),
                Some(None) => Err(format!("{MESSAGE_PREFIX}: scripted failure")),
                // Out of script: hang (as a slow credential would).
                None => std::future::pending().await,
            }
        }
    }

    fn script(replies: Vec<Option<(String, Duration)>>) -> Arc<Script> {
        Arc::new(Script {
            replies: Mutex::new(replies.into()),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn tok(n: u32) -> String {
        jwt(r#"{"oid":"oid-1"}"#, &format!("sig{n}"))
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_refreshed_before_they_expire_and_streamed() {
        let s = script(vec![
            Some((tok(1), Duration::from_secs(8))),
            Some((tok(2), Duration::from_secs(3600))),
            Some((tok(3), Duration::from_secs(3600))),
        ]);
        let start = Instant::now();
        let creds = EntraCredentials::start(s.clone());
        let id = creds.ready().await.unwrap();
        assert_eq!(id.object_id, "oid-1");
        let mut stream = creds.subscribe();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            (first.username(), first.password()),
            ("oid-1", tok(1).as_str())
        );
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.password(), tok(2));
        let asked = s.asked.lock().unwrap().clone();
        // An 8 s token is refreshed at 6 s; a one-hour token 290 s before its end.
        assert_eq!(asked[1] - start, Duration::from_secs(6));
        let third = stream.next().await.unwrap().unwrap();
        assert_eq!(third.password(), tok(3));
        let asked = s.asked.lock().unwrap().clone();
        assert_eq!(asked[2] - asked[1], Duration::from_secs(3600 - 290));
        // A new subscriber (a new connection) starts with the current token.
        let mut late = creds.subscribe();
        assert_eq!(late.next().await.unwrap().unwrap().password(), tok(3));
        assert!(!format!("{creds:?}").contains(&tok(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refreshes_keep_the_valid_token_then_report() {
        let s = script(vec![
            Some((tok(1), Duration::from_secs(4))),
            None,
            None,
            None,
            None,
            Some((tok(2), Duration::from_secs(3600))),
        ]);
        let creds = EntraCredentials::start(s.clone());
        creds.ready().await.unwrap();
        let mut stream = creds.subscribe();
        assert_eq!(stream.next().await.unwrap().unwrap().password(), tok(1));
        // Refresh at 3 s fails; retries at +0.5 s and then when the token expires (4 s).
        let e = stream.next().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("scripted failure"), "{e}");
        let asked = s.asked.lock().unwrap().clone();
        let t0 = asked[0];
        assert_eq!(asked[1] - t0, Duration::from_secs(3));
        assert_eq!(asked[2] - t0, Duration::from_millis(3500));
        assert_eq!(asked[3] - t0, Duration::from_secs(4));
        // New connections now get the error; the next success is streamed.
        assert!(creds.subscribe().next().await.unwrap().is_err());
        assert!(creds.identity().is_none());
        assert_eq!(stream.next().await.unwrap().unwrap().password(), tok(2));
        assert!(creds.identity().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_reports_the_failure_and_dropping_stops_the_task() {
        let s = script(vec![None]);
        let creds = EntraCredentials::start(s.clone());
        let e = creds.ready().await.unwrap_err();
        assert!(matches!(
            e,
            LeaseError::Backend {
                kind: BackendErrorKind::Auth,
                ..
            }
        ));
        let mut stream = creds.subscribe();
        drop(creds);
        // The refresher is aborted: the stream ends instead of hanging.
        let _ = stream.next().await; // the current (failed) state
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn explain_names_the_identity_but_never_the_token() {
        let s = script(vec![Some((tok(1), Duration::from_secs(3600)))]);
        let creds = EntraCredentials::start(s);
        creds.ready().await.unwrap();
        let e = creds.explain(LeaseError::backend(
            BackendErrorKind::Auth,
            "authentication to Redis at h:6380 failed (WRONGPASS)",
        ));
        let m = e.to_string();
        assert!(
            m.contains("oid-1") && m.contains("access-policy") && !m.contains(&tok(1)),
            "{m}"
        );
        let other = creds.explain(LeaseError::Config("x".into()));
        assert!(matches!(other, LeaseError::Config(_)));
    }

    #[test]
    fn delays() {
        assert_eq!(
            refresh_delay(Duration::from_secs(8)),
            Duration::from_secs(6)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(3600)),
            Duration::from_secs(3310)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(600)),
            Duration::from_secs(450)
        );
        assert_eq!(refresh_delay(Duration::ZERO), MIN_REFRESH);
        assert_eq!(RETRY.delay(0), Duration::from_millis(500));
        assert_eq!(RETRY.delay(1), Duration::from_secs(1));
        assert_eq!(RETRY.delay(49), Duration::from_secs(30));
    }
}
