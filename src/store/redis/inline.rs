//! Caller-driven connections: a twin of a [`RedisStore`] whose connection's I/O is done by
//! whoever polls its futures, on that thread, instead of by a tokio worker.
//!
//! Why: every operation of the store's own connection crosses threads twice (the caller hands
//! the request to the tokio worker that owns the socket, and the worker hands the reply back),
//! and on this 2-core machine those two wake-ups cost more than the Redis round trip itself
//! (`bench/run.py`, `bench/profile.sh`). An asyncio event loop can own a socket as well as
//! tokio can: the Python bindings give the twin a stream whose readiness comes from the loop
//! (`loop.add_reader`), and poll its futures on the loop's thread, so that an acquire is one
//! write and one read on the caller's thread, as in redis-py, with no thread hop.
//!
//! What it owns here: who may have such a twin (one server, over TCP or TLS, no Entra ID: its
//! token refresh stays on the store's own connection), the socket's opening (done by tokio, so
//! that connecting never blocks the caller), and the twin itself: the `redis` crate's
//! [`MultiplexedConnection`] over the caller's stream, with the handshake (TLS with the store's
//! trust, then AUTH, SELECT) and the response timeout of the store. The protocol, scripts and error
//! mapping are the store's, unchanged. A twin retries a command whose connection dropped once,
//! on a fresh shared connection of the store (polled on the store's home runtime, wherever the
//! twin is: see `shared`), so a dead caller-driven connection costs no operation; a twin
//! whose connection failed in any way (dropped, timed out) says so ([`RedisStore::is_broken`])
//! and its owner must open another. Its futures must be polled where the stream's readiness is
//! delivered.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use redis::{ConnectionAddr, RedisConnectionInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{map_error, timed_out, Conn, RedisOptions, RedisStore};
use crate::error::Result;

/// The future that drives a twin's connection (boxed: the `redis` crate's type cannot be named).
pub type Driver = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where and how a caller-driven connection connects. Holds the password: never printed.
pub struct InlineTarget {
    host: String,
    port: u16,
    settings: RedisConnectionInfo,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Set for `rediss://`.
    tls: Option<Tls>,
}

/// The TLS of a caller-driven connection: the trust of the store's own connection (its CA file
/// alone, else the system's roots, as the `redis` crate's TLS does) and the host name the
/// certificate must carry. Built with `tokio-rustls` over the caller's stream, because the
/// `redis` crate opens its TLS streams only over sockets it connects itself.
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl Tls {
    /// `None` (no caller-driven connection: the store's own is used) when the trust cannot be
    /// built; the store's own connection reports why.
    fn new(host: &str, ca_file: Option<&Path>) -> Option<Self> {
        let roots = crate::store::common::root_store(ca_file).ok()?;
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?,
        })
    }
}

impl std::fmt::Debug for InlineTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl InlineTarget {
    /// The target for a single server reached over TCP or TLS (unless `#insecure`) with the
    /// URL's credentials; `None` for Unix sockets and Entra ID.
    pub(super) fn for_client(client: &redis::Client, options: &RedisOptions) -> Option<Self> {
        if options.credentials.is_some() {
            return None;
        }
        let info = client.get_connection_info();
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host, port, None),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => (
                host,
                port,
                Some(Tls::new(host, options.ca_file.as_deref())?),
            ),
            _ => return None,
        };
        Some(Self {
            host: host.clone(),
            port: *port,
            settings: info.redis_settings().clone(),
            connect_timeout: options.connect_timeout,
            response_timeout: options.response_timeout,
            tls,
        })
    }
}

impl RedisStore {
    /// Whether this store can have caller-driven twins (see the module docs).
    #[must_use]
    pub fn supports_inline(&self) -> bool {
        self.inline.is_some() && matches!(self.conn, Conn::Single(_))
    }

    /// Opens a non-blocking TCP socket to the server (no Redis handshake yet), within the
    /// connect timeout. Runs on tokio.
    ///
    /// # Errors
    /// `Config` if the store cannot have twins; `Backend` when the server cannot be reached.
    pub async fn open_inline_socket(&self) -> Result<std::net::TcpStream> {
        let target = self.inline_target()?;
        let connect = tokio::net::TcpStream::connect((target.host.as_str(), target.port));
        let stream = tokio::time::timeout(target.connect_timeout, connect)
            .await
            .map_err(|_| timed_out(&self.addr))?
            .map_err(|e| map_error(&e.into(), &self.addr, None))?;
        stream
            .set_nodelay(true)
            .map_err(|e| map_error(&e.into(), &self.addr, None))?;
        stream
            .into_std()
            .map_err(|e| map_error(&e.into(), &self.addr, None))
    }

    /// A twin of this store whose commands go over `stream` (after the store's handshake on
    /// it), and the future that drives the connection: it must be polled, where the stream's
    /// readiness is delivered, until it returns (the connection closed).
    ///
    /// # Errors
    /// `Config` if the store cannot have twins; `Backend` when the handshake fails.
    pub async fn inline_twin<S>(&self, stream: S) -> Result<(RedisStore, Driver)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let target = self.inline_target()?;
        match &target.tls {
            None => self.twin_over(target, stream).await,
            Some(tls) => {
                let handshake = tls.connector.connect(tls.server_name.clone(), stream);
                let stream = tokio::time::timeout(target.connect_timeout, handshake)
                    .await
                    .map_err(|_| timed_out(&self.addr))?
                    .map_err(|e| map_error(&e.into(), &self.addr, None))?;
                self.twin_over(target, stream).await
            }
        }
    }

    /// The twin over `stream`, once any TLS is set up on it: the Redis handshake, then the
    /// twin.
    async fn twin_over<S>(&self, target: &InlineTarget, stream: S) -> Result<(RedisStore, Driver)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn::Single(shared) = &self.conn else {
            return Err(not_inline());
        };
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(target.response_timeout));
        let (conn, driver) = tokio::time::timeout(
            target.connect_timeout,
            MultiplexedConnection::new_with_config(&target.settings, stream, config),
        )
        .await
        .map_err(|_| timed_out(&self.addr))?
        .map_err(|e| map_error(&e, &self.addr, None))?;
        let twin = RedisStore {
            conn: Conn::Inline {
                conn,
                shared: Arc::clone(shared),
                broken: Arc::new(AtomicBool::new(false)),
            },
            keys: self.keys.clone(),
            addr: self.addr.clone(),
            notifier: Arc::clone(&self.notifier),
            inline: None,
        };
        Ok((twin, Box::pin(driver)))
    }

    fn inline_target(&self) -> Result<&InlineTarget> {
        match (&self.inline, &self.conn) {
            (Some(t), Conn::Single(_)) => Ok(t),
            _ => Err(not_inline()),
        }
    }
}

fn not_inline() -> crate::error::LeaseError {
    crate::error::LeaseError::Config(
        "this Redis store cannot have a caller-driven connection (Entra ID, cluster, or already one)".into(),
    )
}
