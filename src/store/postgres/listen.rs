//! Release notifications over LISTEN/NOTIFY: one listening connection per store, for all names.
//!
//! The release and force-release statements `pg_notify` [`CHANNEL`] with the payload
//! `["<key prefix>", "<name>"]` when they delete a live lease; PostgreSQL delivers it on commit to
//! every session listening. A [`listener`] keeps its store's [`ReleaseBoard`] in step with one
//! connection that only LISTENs, opened when the first waiter appears and kept while the store
//! lives. One channel for every name: a waiter joining needs no round trip, so its feed is live
//! at once while the connection is up. Notifications are dispatched on the task that drives the
//! connection (no hop): one `notify_one` per release of a name with waiters here.
//!
//! When the connection drops (or fails its periodic check), every entry turns
//! [`Feed::Partial`](crate::wait::Feed) (waiters poll, bounded by the holder's TTL), the
//! supervisor reconnects with backoff, and once live again one waiter per name is woken in case a
//! release was missed meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Connection};

use super::Endpoint;
use crate::wait::{FedBoard, Reconnect, ReleaseBoard};

/// The notification channel of releases.
pub const CHANNEL: &str = "distributed_leasing_released";

/// How often a listening connection is checked with an empty query.
const HEALTH_EVERY: Duration = Duration::from_secs(10);

enum Control {
    /// The waiter count of a name went from 0 to 1 or from 1 to 0.
    Changed(String),
    /// The listening connection of this generation ended.
    Disconnected(u64),
}

/// Where the messages of a listening connection go.
#[derive(Clone)]
pub(crate) struct Dispatch {
    board: Weak<ReleaseBoard>,
    prefix: String,
    control: mpsc::UnboundedSender<Control>,
    generation: u64,
}

impl Dispatch {
    fn notified(&self, payload: &str) {
        let Ok((prefix, name)) = serde_json::from_str::<(String, String)>(payload) else {
            return;
        };
        if prefix != self.prefix {
            return;
        }
        if let Some(board) = self.board.upgrade() {
            crate::metrics::RELEASE_NOTIFICATIONS.add(1);
            board.notify(&name);
        }
    }
}

/// Drives a connection until it ends, handing notifications to `dispatch` (if any), then tells
/// the supervisor.
pub(crate) async fn drive<S, T>(mut conn: Connection<S, T>, dispatch: Option<Dispatch>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(d) = &dispatch {
                    d.notified(n.payload());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
                break;
            }
            None => break,
        }
    }
    if let Some(d) = dispatch {
        let _ = d.control.send(Control::Disconnected(d.generation));
    }
}

/// Release notifications of one PostgreSQL store: its board, fed by a connection that
/// `endpoint` opens when the first waiter joins.
pub(crate) fn listener(endpoint: Endpoint, prefix: String) -> FedBoard {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let hook_tx = control_tx.clone();
    let board = ReleaseBoard::subscribed(move |key| {
        let _ = hook_tx.send(Control::Changed(key.to_owned()));
    });
    let supervisor = Supervisor {
        board: Arc::downgrade(&board),
        endpoint,
        prefix,
        control_tx,
        control_rx,
        conn: None,
        generation: 0,
        reconnect: Reconnect::default(),
    };
    FedBoard::new(board, supervisor.run())
}

/// The listening connection: its client and the task that drives it (aborted when dropped).
struct Listening {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Supervisor {
    board: Weak<ReleaseBoard>,
    endpoint: Endpoint,
    prefix: String,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    conn: Option<Listening>,
    /// Of the current connection, so a late "ended" of an old one is not taken for it.
    generation: u64,
    reconnect: Reconnect,
}

impl Supervisor {
    async fn run(mut self) {
        let mut next_health = Instant::now() + HEALTH_EVERY;
        let mut dirty = HashSet::new();
        loop {
            let wake = self.reconnect.wake(next_health);
            tokio::select! {
                msg = self.control_rx.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg, &mut dirty);
                    while let Ok(msg) = self.control_rx.try_recv() {
                        self.handle(msg, &mut dirty);
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_health {
                        next_health = Instant::now() + HEALTH_EVERY;
                        self.check_health().await;
                    }
                    self.reconnect.tick();
                }
            }
            let Some(board) = self.board.upgrade() else {
                return;
            };
            let wanted = board.tidy(dirty.drain());
            if self.conn.is_none() && !wanted.is_empty() && !self.reconnect.waiting() {
                self.connect(&board).await;
            }
            if self.conn.is_some() {
                board.set_all_live(&wanted);
            } else {
                board.set_partial(None);
            }
        }
    }

    fn handle(&mut self, msg: Control, dirty: &mut HashSet<String>) {
        match msg {
            Control::Changed(key) => {
                dirty.insert(key);
            }
            Control::Disconnected(generation) if generation == self.generation => {
                tracing::debug!(addr = %self.endpoint.addr, "release notification connection dropped; waiters poll until it is back");
                self.lost();
            }
            Control::Disconnected(_) => {}
        }
    }

    /// The connection is gone: waiters poll until a new one listens.
    fn lost(&mut self) {
        self.conn = None;
        if let Some(board) = self.board.upgrade() {
            board.set_partial(None);
        }
    }

    async fn check_health(&mut self) {
        let Some(conn) = &self.conn else { return };
        let ok = tokio::time::timeout(HEALTH_EVERY, conn.client.simple_query(""))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            tracing::debug!(addr = %self.endpoint.addr, "release notification connection failed its health check; reconnecting");
            self.lost();
        }
    }

    async fn connect(&mut self, board: &ReleaseBoard) {
        self.generation += 1;
        let dispatch = Dispatch {
            board: self.board.clone(),
            prefix: self.prefix.clone(),
            control: self.control_tx.clone(),
            generation: self.generation,
        };
        let opened = async {
            let (client, driver) = self.endpoint.open(Some(dispatch)).await?;
            let listening = Listening { client, driver };
            listening
                .client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| self.endpoint.error(&e))?;
            Ok::<_, crate::error::LeaseError>(listening)
        };
        match opened.await {
            Ok(listening) => {
                tracing::debug!(addr = %self.endpoint.addr, "release notification connection listening");
                self.conn = Some(listening);
                self.reconnect.succeeded();
            }
            Err(e) => {
                if self.reconnect.first_warning() {
                    tracing::warn!(addr = %self.endpoint.addr, error = %e, "cannot listen for release notifications; waiters poll instead (at most every 100 ms, and at the holder's expiry) until it works");
                }
                board.set_partial(None);
                self.reconnect.failed();
            }
        }
    }
}
