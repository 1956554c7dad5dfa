//! Release notifications over LISTEN/NOTIFY: one listening connection per store, for all names.
//!
//! The release and force-release statements `pg_notify` [`CHANNEL`] with the payload
//! `["<key prefix>", "<name>"]` when they delete a live lease (a release: one waiter is woken,
//! every observer told), the proclaim and the announced acquire with `["<key prefix>",
//! "<name>", "proclaimed" | "acquired"]` (observers only); PostgreSQL delivers it on commit to
//! every session listening. A [`listener`] keeps its store's [`ReleaseBoard`] in step with one
//! connection that only LISTENs, opened when the first waiter appears and kept while the store
//! lives. One channel for every name: a waiter joining needs no round trip, so its feed is live
//! at once while the connection is up. Notifications are dispatched on the task that drives the
//! connection (no hop): one `notify_one` per release of a name with waiters here. The release
//! of a semaphore's permit (its record's name, [`crate::store::permit_record`]) is told under
//! the semaphore's name ([`crate::store::release_notice_name`]), which its waiters watch.
//!
//! When the connection drops (or fails its periodic check with an empty query), the shared
//! supervisor ([`crate::store::feed`]) turns every entry partial and reconnects with backoff.

use std::sync::Weak;

use futures_util::future::poll_fn;
use tokio_postgres::{AsyncMessage, Client, Connection};

use super::Endpoint;
use crate::store::feed::{self, FeedStream, HEALTH_EVERY};
use crate::store::release_notice_name;
use crate::wait::{Change, FedBoard, ReleaseBoard};

/// The notification channel of releases.
pub const CHANNEL: &str = "distributed_leasing_released";

/// Where the notifications of a listening connection go.
#[derive(Clone)]
pub(crate) struct Dispatch {
    board: Weak<ReleaseBoard>,
    prefix: String,
}

impl Dispatch {
    fn notified(&self, payload: &str) {
        let Some((prefix, name, change)) = parse(payload) else {
            return;
        };
        if prefix != self.prefix {
            return;
        }
        if let Some(board) = self.board.upgrade() {
            if change == Change::Released {
                crate::metrics::RELEASE_NOTIFICATIONS.add(1);
            }
            // A permit's release is told to the waiters of its semaphore.
            board.changed(&release_notice_name(&name), change);
        }
    }
}

/// A notification's payload: `[key_prefix, name]` a release, `[key_prefix, name, "acquired"]`
/// (an announced acquisition) or `[..., "proclaimed"]` a change for observers only; anything
/// else is ignored.
fn parse(payload: &str) -> Option<(String, String, Change)> {
    let mut parts = serde_json::from_str::<Vec<String>>(payload)
        .ok()?
        .into_iter();
    let (prefix, name) = (parts.next()?, parts.next()?);
    let change = match parts.next().as_deref() {
        None => Change::Released,
        Some("acquired" | "proclaimed") => Change::Acquired,
        Some(_) => return None,
    };
    parts.next().is_none().then_some((prefix, name, change))
}

/// Drives a connection until it ends, handing notifications to `dispatch` (if any); the
/// listener learns of the end from the task's end.
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
}

/// Release notifications of one PostgreSQL store: its board, fed by a connection that
/// `endpoint` opens when the first waiter joins, under the shared supervisor
/// ([`crate::store::feed`]).
pub(crate) fn listener(endpoint: Endpoint, prefix: String) -> FedBoard {
    feed::supervised(Listener {
        endpoint,
        prefix,
        conn: None,
    })
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

/// The listener of one store: the connection that LISTENs now, if any.
struct Listener {
    endpoint: Endpoint,
    prefix: String,
    conn: Option<Listening>,
}

impl FeedStream for Listener {
    const WHAT: &'static str = "the PostgreSQL release notification connection";

    fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// LISTEN was confirmed when it opened: from then on, every notification is delivered.
    fn is_live(&self) -> bool {
        self.conn.is_some()
    }

    async fn open(&mut self, board: &Weak<ReleaseBoard>) -> Result<(), String> {
        let dispatch = Dispatch {
            board: board.clone(),
            prefix: self.prefix.clone(),
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
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", self.endpoint.addr)),
        }
    }

    /// The notifications are handed to the board on the task that drives the connection (no
    /// hop); this waits for that task to end.
    async fn next(&mut self, _board: &Weak<ReleaseBoard>) -> Result<(), String> {
        let Some(conn) = self.conn.as_mut() else {
            return std::future::pending().await;
        };
        let _ = (&mut conn.driver).await;
        Err(format!("the connection to {} dropped", self.endpoint.addr))
    }

    async fn healthy(&mut self) -> bool {
        let Some(conn) = &self.conn else { return true };
        tokio::time::timeout(HEALTH_EVERY, conn.client.simple_query(""))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn close(&mut self) -> bool {
        self.conn.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_release_payload_is_a_release() {
        let p = |s: &str| parse(s).map(|(_, n, c)| (n, c));
        assert_eq!(p(r#"["lease:","a"]"#), Some(("a".into(), Change::Released)));
        assert_eq!(
            p(r#"["lease:","a","acquired"]"#),
            Some(("a".into(), Change::Acquired))
        );
        assert_eq!(
            p(r#"["lease:","a","proclaimed"]"#),
            Some(("a".into(), Change::Acquired))
        );
        assert_eq!(p(r#"["lease:","a","other"]"#), None);
        assert_eq!(p(r#"["lease:"]"#), None);
        assert_eq!(p("not json"), None);
    }
}
