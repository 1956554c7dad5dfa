//! Release notifications from one etcd watch per store, shared by all its waiters.
//!
//! The watch covers the store's whole key prefix with the `NOPUT` filter, so it carries only
//! deletions: releases, forced releases, holders' own revocations and etcd's expiries of
//! holders that stopped renewing. Each deletion of `<prefix><name>` wakes one waiter of `name`
//! on this store's [`ReleaseBoard`]. One stream for every name (as PostgreSQL's one channel):
//! a waiter joining needs no round trip, so its feed is live at once while the stream is up.
//! The stream is opened when the first waiter appears and kept while the store lives.
//!
//! When the stream ends, fails, or its member stops answering the periodic check, every entry
//! turns [`Feed::Partial`](crate::wait::Feed) (waiters poll, bounded by the holder's TTL), the
//! supervisor opens a new stream on the next member with backoff, and once it is live again
//! one waiter per name is woken in case a release was missed meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http::Transport;
use super::{prefix_end, B64};
use crate::wait::{FedBoard, Reconnect, ReleaseBoard};

/// How often the member of a live stream is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(10);
/// How long that check may take.
const HEALTH_WITHIN: Duration = Duration::from_secs(5);
/// Longest line of the stream accepted (a response with many events): 64 MiB.
const MAX_LINE: usize = 64 << 20;

/// The waiter count of a name went from 0 to 1 or from 1 to 0.
struct Changed(String);

/// Release notifications of one etcd store: its board, fed by a watch that `http` opens when
/// the first waiter joins.
pub(crate) fn watcher(http: Arc<Transport>, prefix: String) -> FedBoard {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let board = ReleaseBoard::subscribed(move |key| {
        let _ = control_tx.send(Changed(key.to_owned()));
    });
    let supervisor = Supervisor {
        board: Arc::downgrade(&board),
        next_member: http.current(),
        http,
        prefix,
        control_rx,
        stream: None,
        reconnect: Reconnect::default(),
    };
    FedBoard::new(board, supervisor.run())
}

/// An open watch stream and what has been read of it.
struct Stream {
    response: reqwest::Response,
    buf: Vec<u8>,
    member: usize,
    /// The server confirmed the watch (`created`): every deletion from now on is seen.
    live: bool,
}

impl Stream {
    /// The next newline-terminated message; `None` at the end of the stream.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Ok(Some(line));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    if self.buf.len() > MAX_LINE {
                        return Err("a watch message is too long".into());
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<super::http::GatewayError>,
}

#[derive(Deserialize, Default)]
struct WatchResult {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    /// `DELETE`; a put (the default, omitted by the gateway) is filtered out by the server.
    #[serde(default, rename = "type")]
    kind: String,
    kv: EventKv,
}

#[derive(Deserialize)]
struct EventKv {
    #[serde(default)]
    key: String,
}

enum Step {
    Control(Option<Changed>),
    Line(Result<Option<Vec<u8>>, String>),
    Timer,
}

struct Supervisor {
    board: Weak<ReleaseBoard>,
    http: Arc<Transport>,
    prefix: String,
    control_rx: mpsc::UnboundedReceiver<Changed>,
    stream: Option<Stream>,
    /// The member the next stream is opened on.
    next_member: usize,
    reconnect: Reconnect,
}

impl Supervisor {
    async fn run(mut self) {
        let mut next_health = Instant::now() + HEALTH_EVERY;
        let mut dirty = HashSet::new();
        loop {
            let wake = self.reconnect.wake(next_health);
            let step = {
                let line = async {
                    match self.stream.as_mut() {
                        Some(s) => s.next_line().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = self.control_rx.recv() => Step::Control(msg),
                    line = line => Step::Line(line),
                    () = tokio::time::sleep_until(wake) => Step::Timer,
                }
            };
            match step {
                Step::Control(None) => return,
                Step::Control(Some(Changed(key))) => {
                    dirty.insert(key);
                    while let Ok(Changed(key)) = self.control_rx.try_recv() {
                        dirty.insert(key);
                    }
                }
                Step::Line(Ok(Some(line))) => self.message(&line),
                Step::Line(Ok(None)) => self.lost("the watch stream ended"),
                Step::Line(Err(e)) => self.lost(&e),
                Step::Timer => {
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
            if self.stream.is_none() && !wanted.is_empty() && !self.reconnect.waiting() {
                self.open(&board).await;
            }
            if self.stream.as_ref().is_some_and(|s| s.live) {
                board.set_all_live(&wanted);
            } else if self.stream.is_none() {
                board.set_partial(None);
            }
        }
    }

    /// One message of the stream: the watch confirmed, or deletions.
    fn message(&mut self, line: &[u8]) {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return;
        }
        let msg = match serde_json::from_slice::<Message>(trimmed) {
            Ok(m) => m,
            Err(e) => return self.lost(&format!("unexpected watch message ({e})")),
        };
        if let Some(e) = msg.error {
            return self.lost(&format!("the watch failed: {}", e.message));
        }
        let Some(result) = msg.result else { return };
        if result.canceled {
            return self.lost("the server cancelled the watch");
        }
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let Some(board) = self.board.upgrade() else {
            return;
        };
        if result.created {
            stream.live = true;
            self.reconnect.succeeded();
            tracing::debug!(members = %self.http.display, "etcd release watch live");
            // A watch sees deletions from its creation on: a waiter that joined while it was
            // being set up may have missed one, so one waiter per name looks again now.
            for key in board.wanted() {
                board.notify(&key);
            }
        }
        for event in result.events {
            if event.kind != "DELETE" {
                continue;
            }
            let Some(name) = B64
                .decode(event.kv.key.as_bytes())
                .ok()
                .and_then(|k| String::from_utf8(k).ok())
                .and_then(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            else {
                continue;
            };
            if board.notify(&name) {
                crate::metrics::RELEASE_NOTIFICATIONS.add(1);
            }
        }
    }

    /// The stream is gone: waiters poll until a new one is live.
    fn lost(&mut self, why: &str) {
        if let Some(s) = self.stream.take() {
            tracing::debug!(members = %self.http.display, why, "etcd release watch ended; waiters poll until it is back");
            self.next_member = (s.member + 1) % self.http.members();
            if !s.live {
                // Ended before it was confirmed: do not reopen in a busy loop.
                self.reconnect.failed();
            }
        }
        if let Some(board) = self.board.upgrade() {
            board.set_partial(None);
        }
    }

    async fn check_health(&mut self) {
        let Some(member) = self.stream.as_ref().map(|s| s.member) else {
            return;
        };
        if !self.http.member_answers(member, HEALTH_WITHIN).await {
            self.lost("its member failed the health check");
        }
    }

    async fn open(&mut self, board: &ReleaseBoard) {
        let member = self.next_member % self.http.members();
        let key = self.prefix.as_bytes();
        let body = serde_json::json!({
            "create_request": {
                "key": B64.encode(key),
                "range_end": B64.encode(prefix_end(key)),
                "filters": ["NOPUT"],
            }
        });
        match self
            .http
            .open_stream(member, "/v3/watch", &body, self.http.operation_timeout)
            .await
        {
            Ok(response) => {
                self.stream = Some(Stream {
                    response,
                    buf: Vec::new(),
                    member,
                    live: false,
                });
            }
            Err(e) => {
                if self.reconnect.first_warning() {
                    tracing::warn!(error = %e, "cannot watch etcd for releases; waiters poll instead (at most every 100 ms, and at the holder's expiry) until it works");
                }
                board.set_partial(None);
                self.next_member = (member + 1) % self.http.members();
                self.reconnect.failed();
            }
        }
    }
}
