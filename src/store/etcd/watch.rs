//! Release notifications from one etcd watch per store, shared by all its waiters.
//!
//! The watch covers the store's whole key prefix. Its deletions are releases, forced releases,
//! holders' own revocations and etcd's expiries of holders that stopped renewing: each deletion
//! of `<prefix><name>` wakes one waiter of `name` on this store's [`ReleaseBoard`] (and tells
//! its observers; a permit's key wakes a waiter of its semaphore,
//! [`crate::store::release_notice_name`]). Its puts are acquisitions: they tell the observers of `name` and wake no
//! waiter (renewals are lease keep-alives, not puts, so they are not in the stream). One stream for every name (as PostgreSQL's one channel):
//! a waiter joining needs no round trip, so its feed is live at once while the stream is up.
//! The stream is opened when the first waiter appears and kept while the store lives.
//!
//! When the stream ends, fails, or its member stops answering the periodic check, the shared
//! supervisor ([`crate::store::feed`]) turns every entry partial and opens a new stream, on the
//! next member, with backoff.

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::http::Transport;
use super::{prefix_end, B64};
use crate::store::feed::{self, FeedStream};
use crate::store::release_notice_name;
use crate::wait::{Change, FedBoard, ReleaseBoard};

/// How long that check may take.
const HEALTH_WITHIN: Duration = Duration::from_secs(5);
/// Longest line of the stream accepted (a response with many events): 64 MiB.
const MAX_LINE: usize = 64 << 20;

/// Release notifications of one etcd store: its board, fed by a watch that `http` opens when
/// the first waiter joins, under the shared supervisor ([`crate::store::feed`]).
pub(crate) fn watcher(http: Arc<Transport>, prefix: String) -> FedBoard {
    feed::supervised(Watch {
        next_member: http.current(),
        http,
        prefix,
        stream: None,
    })
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
    /// `DELETE`, or empty for a put (the default, omitted by the gateway).
    #[serde(default, rename = "type")]
    kind: String,
    kv: EventKv,
}

#[derive(Deserialize)]
struct EventKv {
    #[serde(default)]
    key: String,
}

/// The watch of one store: the stream open now, if any, and the member to open the next on.
struct Watch {
    http: Arc<Transport>,
    prefix: String,
    stream: Option<Stream>,
    /// The member the next stream is opened on.
    next_member: usize,
}

impl FeedStream for Watch {
    const WHAT: &'static str = "the etcd release watch";

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    fn is_live(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.live)
    }

    async fn open(&mut self, _board: &Weak<ReleaseBoard>) -> Result<(), String> {
        let member = self.next_member % self.http.members();
        let key = self.prefix.as_bytes();
        let body = serde_json::json!({
            "create_request": {
                "key": B64.encode(key),
                "range_end": B64.encode(prefix_end(key)),
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
                Ok(())
            }
            Err(e) => {
                self.next_member = (member + 1) % self.http.members();
                Err(e.to_string())
            }
        }
    }

    async fn next(&mut self, board: &Weak<ReleaseBoard>) -> Result<(), String> {
        let Some(stream) = self.stream.as_mut() else {
            return std::future::pending().await;
        };
        match stream.next_line().await {
            Ok(Some(line)) => self.message(&line, board),
            Ok(None) => Err("the watch stream ended".into()),
            Err(e) => Err(e),
        }
    }

    async fn healthy(&mut self) -> bool {
        match self.stream.as_ref().map(|s| s.member) {
            Some(member) => self.http.member_answers(member, HEALTH_WITHIN).await,
            None => true,
        }
    }

    fn close(&mut self) -> bool {
        let Some(s) = self.stream.take() else {
            return false;
        };
        self.next_member = (s.member + 1) % self.http.members();
        s.live
    }
}

impl Watch {
    /// One message of the stream: the watch confirmed, or deletions.
    fn message(&mut self, line: &[u8], board: &Weak<ReleaseBoard>) -> Result<(), String> {
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        let msg = match serde_json::from_slice::<Message>(trimmed) {
            Ok(m) => m,
            Err(e) => return Err(format!("unexpected watch message ({e})")),
        };
        if let Some(e) = msg.error {
            return Err(format!("the watch failed: {}", e.message));
        }
        let Some(result) = msg.result else {
            return Ok(());
        };
        if result.canceled {
            return Err("the server cancelled the watch".into());
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let Some(board) = board.upgrade() else {
            return Ok(());
        };
        if result.created {
            stream.live = true;
            tracing::debug!(members = %self.http.display, "etcd release watch live");
            // A watch sees deletions from its creation on: a waiter that joined while it was
            // being set up may have missed one, so one waiter per name looks again now.
            for key in board.wanted() {
                board.notify(&key);
            }
        }
        for event in result.events {
            let change = if event.kind == "DELETE" {
                Change::Released
            } else {
                Change::Acquired
            };
            let Some(name) = B64
                .decode(event.kv.key.as_bytes())
                .ok()
                .and_then(|k| String::from_utf8(k).ok())
                .and_then(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            else {
                continue;
            };
            // A permit's key is told under its semaphore's name (its waiters').
            let name = release_notice_name(&name);
            if board.changed(&name, change) && change == Change::Released {
                crate::metrics::RELEASE_NOTIFICATIONS.add(1);
            }
        }
        Ok(())
    }
}
