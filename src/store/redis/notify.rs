//! Release notifications over Redis pub/sub: one connection for all the waiters of a store.
//!
//! The release and force-release scripts publish on `<lease key>:released` (hash-tagged like the
//! key on a cluster) the message `released`; the proclaim script publishes `proclaimed`, and the
//! acquire script `acquired` when the acquisition is announced (an election's campaign): those
//! two are changes for observers ([`Change::Acquired`]) and wake no waiter. A [`Notifier`] keeps the [`ReleaseBoard`] of its store in step with one
//! RESP3 connection that carries only subscriptions, created when the first waiter appears:
//! - standalone: a `ConnectionManager` in RESP3 with a push sender; `SUBSCRIBE`/`PUBLISH`;
//! - cluster: a cluster connection in RESP3 with a push sender; sharded `SSUBSCRIBE`/`SPUBLISH`,
//!   so a release's message stays in the shard that owns the lease instead of being broadcast to
//!   every node over the cluster bus, and the `redis` crate moves the subscription when the slot
//!   moves. It holds at most one socket per master, opened as needed.
//!
//! Messages are dispatched inside the push sender (on the connection's reader task, no hop):
//! one `notify_one` per release message. Everything that changes subscriptions runs in one supervisor
//! task, in order, so SUBSCRIBE and UNSUBSCRIBE of a key can never overtake each other. When the
//! connection drops, every entry turns [`Feed::Partial`] (waiters poll, bounded by the holder's
//! TTL), the supervisor resubscribes, and once a key is live again one waiter is woken in case a
//! release was missed meanwhile. A server that refuses pub/sub (an ACL without channel rights,
//! no RESP3, no sharded pub/sub before Redis 7) leaves the feed partial: waiting still works,
//! by polling.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use redis::aio::{AsyncPushSender, ConnectionManager, SendError};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::wait::{Change, ReleaseBoard};

/// Suffix of a lease key that names its release channel.
pub const RELEASED_SUFFIX: &str = ":released";

/// The change a message on a lease's channel reports: `acquired` (an announced acquisition)
/// and `proclaimed` (new metadata) are told to observers only; anything else (`released`, and
/// whatever an older or newer version sends) is a release, which wakes a waiter, as before.
fn change_of(message: Option<&str>) -> Change {
    match message {
        Some("acquired" | "proclaimed") => Change::Acquired,
        _ => Change::Released,
    }
}

/// How often a healthy connection is checked with a PING.
const HEALTH_EVERY: Duration = Duration::from_secs(10);
/// How long a channel stays subscribed after its last waiter left: a lease that is waited for
/// again soon (a busy lease, a loop) does not pay an UNSUBSCRIBE and a SUBSCRIBE each time.
pub const LINGER: Duration = Duration::from_secs(2);
/// Attempts to (re)subscribe after a failure: 250 ms doubling to 5 s.
const RETRY: Backoff = Backoff::doubling(Duration::from_millis(250), Duration::from_secs(5));

/// The subscription connection.
#[derive(Clone)]
pub(crate) enum PushConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl PushConn {
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.subscribe(channel).await,
            Self::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => c.unsubscribe(channel).await,
            Self::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    async fn ping(&mut self) -> RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            Self::Single(c) => cmd.query_async::<Value>(c).await.map(drop),
            Self::Cluster(c) => cmd.query_async::<Value>(c).await.map(drop),
        }
    }
}

/// Opens the subscription connection, delivering push messages to the given sender.
pub(crate) type Connector =
    Arc<dyn Fn(Pushes) -> BoxFuture<'static, RedisResult<PushConn>> + Send + Sync>;

enum Control {
    /// The waiter count of a channel went from 0 to 1 or from 1 to 0.
    Changed(String),
    /// The connection dropped (the `redis` crate reconnects; we resubscribe).
    Disconnected,
    /// The server says we are no longer subscribed to a channel.
    Unsubscribed(String),
}

/// The push sender of the subscription connection: dispatches on the connection's reader task.
#[derive(Clone)]
pub(crate) struct Pushes {
    board: Weak<ReleaseBoard>,
    control: mpsc::UnboundedSender<Control>,
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let text = |i: usize| {
            info.data.get(i).and_then(|v| match v {
                Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            })
        };
        let channel = || text(0);
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(board) = self.board.upgrade() else {
                    return Err(SendError);
                };
                if let Some(ch) = channel() {
                    match change_of(text(1).as_deref()) {
                        Change::Released => {
                            crate::metrics::RELEASE_NOTIFICATIONS.add(1);
                            board.notify(&ch);
                        }
                        Change::Acquired => {
                            board.changed(&ch, Change::Acquired);
                        }
                    }
                }
            }
            PushKind::Disconnection => {
                let _ = self.control.send(Control::Disconnected);
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                if let Some(ch) = channel() {
                    let _ = self.control.send(Control::Unsubscribed(ch));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Release notifications of one Redis store.
pub(crate) struct Notifier {
    board: Arc<ReleaseBoard>,
    start: Mutex<Option<Start>>,
    /// The supervisor, once started: [`Notifier::close`] ends it (and so its connection).
    task: crate::store::TaskSlot,
    /// Dropped with the notifier: stops the supervisor, which closes the connection.
    _stop: oneshot::Sender<()>,
}

struct Start {
    control_rx: mpsc::UnboundedReceiver<Control>,
    control_tx: mpsc::UnboundedSender<Control>,
    stop_rx: oneshot::Receiver<()>,
    connect: Connector,
    addr: String,
    /// The runtime the store was connected on, where the supervisor runs (see
    /// [`crate::store::TaskSlot::start_on`]).
    home: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("board", &self.board)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier that will connect with `connect` when the first waiter joins, its
    /// supervisor on the runtime this is called on.
    pub(crate) fn new(connect: Connector, addr: String) -> Self {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let hook_tx = control_tx.clone();
        let board = ReleaseBoard::subscribed(move |key| {
            let _ = hook_tx.send(Control::Changed(key.to_owned()));
        });
        let (stop, stop_rx) = oneshot::channel();
        Self {
            board,
            start: Mutex::new(Some(Start {
                control_rx,
                control_tx,
                stop_rx,
                connect,
                addr,
                home: tokio::runtime::Handle::try_current().ok(),
            })),
            task: crate::store::TaskSlot::default(),
            _stop: stop,
        }
    }

    /// Stops the supervisor, closing the subscription connection (waiters fall back to
    /// polling, and the store is closing anyway); it is never started again.
    pub(crate) async fn close(&self) {
        drop(
            self.start
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // Returns once the task (and the connection it owns) has been dropped.
        self.task.stop().await;
    }

    /// The board of this store's waiters; starts the supervisor on first use (needs a runtime).
    pub(crate) fn board(&self) -> &Arc<ReleaseBoard> {
        // Held until the task is recorded, so that `close` cannot miss it.
        let mut start = self.start.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = start.take() {
            let supervisor = Supervisor {
                pushes: Pushes {
                    board: Arc::downgrade(&self.board),
                    control: s.control_tx,
                },
                board: Arc::downgrade(&self.board),
                connect: s.connect,
                addr: s.addr,
                conn: None,
                subscribed: HashSet::new(),
                own_unsubscribes: HashMap::new(),
                dirty: HashSet::new(),
                idle: HashMap::new(),
                retry: None,
                failures: 0,
                warned: false,
            };
            self.task
                .start_on(s.home.as_ref(), supervisor.run(s.control_rx, s.stop_rx));
        }
        drop(start);
        &self.board
    }
}

struct Supervisor {
    pushes: Pushes,
    board: Weak<ReleaseBoard>,
    connect: Connector,
    addr: String,
    conn: Option<PushConn>,
    /// The channels the server has confirmed on the current connection.
    subscribed: HashSet<String>,
    /// Unsubscribe confirmations still to come for our own UNSUBSCRIBEs, by channel: those are
    /// not news. Any other unsubscribe push is (a cluster slot moved).
    own_unsubscribes: HashMap<String, usize>,
    /// Channels whose subscription may not match their waiters.
    dirty: HashSet<String>,
    /// Subscribed channels without waiters, and since when: unsubscribed after [`LINGER`].
    idle: HashMap<String, Instant>,
    /// When to try again after a failure.
    retry: Option<Instant>,
    /// Consecutive failures: the place in [`RETRY`].
    failures: u32,
    /// Whether the current failure streak was logged.
    warned: bool,
}

impl Supervisor {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut next_health = Instant::now() + HEALTH_EVERY;
        loop {
            let linger_end = self.idle.values().min().map(|t| *t + LINGER);
            let wake = [self.retry, linger_end, Some(next_health)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_health);
            tokio::select! {
                biased;
                _ = &mut stop => return,
                msg = control.recv() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg);
                    // Take everything queued, so one pass handles a burst of waiters.
                    while let Ok(msg) = control.try_recv() {
                        self.handle(msg);
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_health {
                        next_health = Instant::now() + HEALTH_EVERY;
                        self.check_health().await;
                    }
                    if self.retry.is_some_and(|r| Instant::now() >= r) {
                        self.retry = None;
                        if let Some(board) = self.board.upgrade() {
                            self.dirty.extend(board.wanted());
                        }
                    }
                    let now = Instant::now();
                    let expired: Vec<String> = self
                        .idle
                        .iter()
                        .filter(|(_, since)| now >= **since + LINGER)
                        .map(|(ch, _)| ch.clone())
                        .collect();
                    self.dirty.extend(expired);
                }
            }
            let Some(board) = self.board.upgrade() else {
                return;
            };
            if self.retry.is_some() {
                // Failing: new waiters must not wait for a subscription that is not coming.
                for ch in &self.dirty {
                    board.set_partial(Some(ch));
                }
            } else if !self.dirty.is_empty() {
                drop(board);
                self.reconcile().await;
            }
        }
    }

    fn handle(&mut self, msg: Control) {
        match msg {
            Control::Changed(ch) => {
                self.dirty.insert(ch);
            }
            Control::Disconnected => {
                tracing::debug!(addr = %self.addr, "release notification connection dropped; waiters poll until it is back");
                self.lost_all();
            }
            Control::Unsubscribed(ch) => {
                if let Some(n) = self.own_unsubscribes.get_mut(&ch) {
                    *n -= 1;
                    if *n == 0 {
                        self.own_unsubscribes.remove(&ch);
                    }
                } else if self.subscribed.remove(&ch) {
                    // The server dropped it (a cluster slot moved): poll, and subscribe again.
                    if let Some(board) = self.board.upgrade() {
                        board.set_partial(Some(&ch));
                    }
                    self.dirty.insert(ch);
                }
            }
        }
    }

    /// Every subscription is gone: waiters poll until each is confirmed again.
    fn lost_all(&mut self) {
        self.subscribed.clear();
        self.own_unsubscribes.clear();
        // Nothing to unsubscribe any more: drop the idle entries nobody waits for.
        if let Some(board) = self.board.upgrade() {
            for (ch, _) in self.idle.drain() {
                board.remove_if_unused(&ch);
            }
        }
        if let Some(board) = self.board.upgrade() {
            board.set_partial(None);
            self.dirty.extend(board.wanted());
        }
    }

    async fn check_health(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if self.subscribed.is_empty() {
            return;
        }
        if let Err(e) = conn.ping().await {
            tracing::debug!(addr = %self.addr, error = %e.kind_str(), "release notification connection failed its health check; resubscribing");
            self.lost_all();
        }
    }

    fn failed(&mut self, what: &str, e: &redis::RedisError) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(addr = %self.addr, error = %e.kind_str(), "cannot {what} release notifications; waiters poll instead (at most every 100 ms, and at the holder's expiry) until it works");
        }
        if let Some(board) = self.board.upgrade() {
            board.set_partial(None);
        }
        self.retry = Some(Instant::now() + RETRY.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
    }

    /// Takes the dirty channels and returns those to subscribe and those to unsubscribe now;
    /// the rest are settled here (already live, lingering, or gone).
    fn sort_dirty(&mut self, board: &ReleaseBoard) -> (Vec<String>, Vec<String>) {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let now = Instant::now();
        for ch in self.dirty.drain() {
            match (board.waiters(&ch) > 0, self.subscribed.contains(&ch)) {
                (true, false) => {
                    self.idle.remove(&ch);
                    subscribe.push(ch);
                }
                (false, true) => {
                    let since = *self.idle.entry(ch.clone()).or_insert(now);
                    if now >= since + LINGER {
                        self.idle.remove(&ch);
                        unsubscribe.push(ch);
                    }
                }
                (true, true) => {
                    self.idle.remove(&ch);
                    board.set_live(&ch);
                }
                (false, false) => {
                    self.idle.remove(&ch);
                    board.remove_if_unused(&ch);
                }
            }
        }
        (subscribe, unsubscribe)
    }

    /// Makes the server's subscriptions match the waiters of every dirty channel.
    async fn reconcile(&mut self) {
        let Some(board) = self.board.upgrade() else {
            return;
        };
        if self.conn.is_none() {
            // Nobody waits any more: nothing to connect for.
            if self.dirty.iter().all(|ch| board.waiters(ch) == 0) {
                for ch in self.dirty.drain() {
                    board.remove_if_unused(&ch);
                }
                return;
            }
            match (self.connect)(self.pushes.clone()).await {
                Ok(conn) => {
                    tracing::debug!(addr = %self.addr, "release notification connection open");
                    self.conn = Some(conn);
                }
                Err(e) => return self.failed("connect for", &e),
            }
        }
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let (subscribe, unsubscribe) = self.sort_dirty(&board);
        for ch in &unsubscribe {
            *self.own_unsubscribes.entry(ch.clone()).or_default() += 1;
        }
        // Each channel its own command (sharded channels of several slots cannot share one);
        // all at once, multiplexed on the one connection.
        let subs = join_all(subscribe.iter().map(|ch| {
            let mut c = conn.clone();
            async move { c.subscribe(ch).await }
        }));
        let unsubs = join_all(unsubscribe.iter().map(|ch| {
            let mut c = conn.clone();
            async move { c.unsubscribe(ch).await }
        }));
        let (subs, unsubs) = futures_util::future::join(subs, unsubs).await;
        let mut failure = None;
        for (ch, r) in subscribe.into_iter().zip(subs) {
            match r {
                Ok(()) => {
                    self.subscribed.insert(ch.clone());
                    board.set_live(&ch);
                    // A waiter that left while we subscribed: unsubscribe on the next pass.
                    if board.waiters(&ch) == 0 {
                        self.dirty.insert(ch);
                    }
                }
                Err(e) => {
                    self.dirty.insert(ch);
                    failure = Some(e);
                }
            }
        }
        for (ch, r) in unsubscribe.into_iter().zip(unsubs) {
            match r {
                Ok(()) => {
                    self.subscribed.remove(&ch);
                    // A waiter that came meanwhile: subscribe again on the next pass.
                    if !board.remove_if_unused(&ch) {
                        self.dirty.insert(ch);
                    }
                }
                Err(e) => {
                    if let Some(n) = self.own_unsubscribes.get_mut(&ch) {
                        *n = n.saturating_sub(1);
                    }
                    self.dirty.insert(ch);
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => self.failed("subscribe to", &e),
            None => {
                self.warned = false;
                self.failures = 0;
            }
        }
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The error's code and kind only: never a message that could quote a connection string.
    fn kind_str(&self) -> String {
        match self.code() {
            Some(code) => format!("{code} ({:?})", self.kind()),
            None => format!("{:?}", self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_release_message_wakes_a_waiter() {
        assert_eq!(change_of(Some("released")), Change::Released);
        assert_eq!(change_of(Some("acquired")), Change::Acquired);
        assert_eq!(change_of(Some("proclaimed")), Change::Acquired);
        // Unknown or missing: a release, as every message was before.
        assert_eq!(change_of(Some("other")), Change::Released);
        assert_eq!(change_of(None), Change::Released);
    }
}
