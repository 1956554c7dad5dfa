//! The supervisor of a store's change feed when one stream carries every name (PostgreSQL's
//! listening connection, etcd's watch): shared, so that both keep the same schedule and rules.
//!
//! Owns the loop that keeps a store's [`ReleaseBoard`] in step with its [`FeedStream`]: it
//! opens the stream when the first waiter or observer joins (and keeps it while the store
//! lives), reads it, checks it every [`HEALTH_EVERY`], reopens it with backoff
//! ([`Reconnect`]: 250 ms doubling to 5 s) after it ended or failed, and says on the board
//! what the feed covers: every entry [`Feed::Live`](crate::wait::Feed) while the stream is
//! live, [`Feed::Partial`](crate::wait::Feed) while it is not (waiters poll, bounded by the
//! holder's TTL). When the stream is live again, the board wakes one waiter per name in case a
//! change was missed meanwhile. What a message means is the stream's: it tells the board.
//!
//! The Redis store subscribes per name (a channel per lease, with a linger before it
//! unsubscribes, and cluster slots that move), which this loop does not model; its notifier
//! (`store::redis::notify`) keeps its own loop on the same schedule.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::wait::{FedBoard, Reconnect, ReleaseBoard};

/// How often a live stream is checked.
pub(crate) const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// One store's notification stream for every name.
pub(crate) trait FeedStream: Send + 'static {
    /// What it is, for messages: "PostgreSQL release notifications", "the etcd release watch".
    const WHAT: &'static str;
    /// Whether a stream is open now.
    fn is_open(&self) -> bool;
    /// Whether the open stream is confirmed to carry every change from now on.
    fn is_live(&self) -> bool;
    /// Opens the stream (called only while none is open), to tell `board` what it carries.
    ///
    /// # Errors
    /// Why it could not be opened (no secrets): the feed stays partial and the supervisor tries
    /// again later.
    fn open(
        &mut self,
        board: &Weak<ReleaseBoard>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Reads the open stream until it says something, telling the board (if it still exists)
    /// what changed; pending forever while none is open.
    ///
    /// # Errors
    /// Why the stream ended: the supervisor closes it and reopens it later.
    fn next(
        &mut self,
        board: &Weak<ReleaseBoard>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether the open stream still answers (at most every [`HEALTH_EVERY`]).
    fn healthy(&mut self) -> impl Future<Output = bool> + Send;
    /// Drops the open stream; returns whether it had been live (one that ended before it was
    /// confirmed is not reopened at once, but on the backoff schedule).
    fn close(&mut self) -> bool;
}

/// A board whose entries are fed by `stream`, supervised from the first use of the board on.
pub(crate) fn supervised<S: FeedStream>(stream: S) -> FedBoard {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let board = ReleaseBoard::subscribed(move |key| {
        let _ = control_tx.send(key.to_owned());
    });
    let supervisor = supervise(stream, Arc::downgrade(&board), control_rx);
    FedBoard::new(board, supervisor)
}

enum Step {
    /// A name gained its first user or lost its last (`None`: the board is gone).
    Control(Option<String>),
    /// The stream said something, or ended.
    Stream(Result<(), String>),
    Timer,
}

async fn supervise<S: FeedStream>(
    mut stream: S,
    board: Weak<ReleaseBoard>,
    mut control: mpsc::UnboundedReceiver<String>,
) {
    let mut reconnect = Reconnect::default();
    let mut next_health = Instant::now() + HEALTH_EVERY;
    let mut dirty = HashSet::new();
    loop {
        let wake = reconnect.wake(next_health);
        let step = tokio::select! {
            key = control.recv() => Step::Control(key),
            said = stream.next(&board) => Step::Stream(said),
            () = tokio::time::sleep_until(wake) => Step::Timer,
        };
        match step {
            Step::Control(None) => return,
            Step::Control(Some(key)) => {
                dirty.insert(key);
                // Take everything queued, so one pass handles a burst of waiters.
                while let Ok(key) = control.try_recv() {
                    dirty.insert(key);
                }
            }
            // Live (confirmed): the failure streak is over. Not at open: a stream that opens
            // and ends unconfirmed, again and again, is a failure that backs off.
            Step::Stream(Ok(())) if stream.is_live() => reconnect.succeeded(),
            Step::Stream(Ok(())) => {}
            Step::Stream(Err(why)) => {
                lost(&mut stream, &mut reconnect, &board, &why);
            }
            Step::Timer => {
                if Instant::now() >= next_health {
                    next_health = Instant::now() + HEALTH_EVERY;
                    if stream.is_open() && !stream.healthy().await {
                        lost(
                            &mut stream,
                            &mut reconnect,
                            &board,
                            "it failed its health check",
                        );
                    }
                }
                reconnect.tick();
            }
        }
        let Some(live_board) = board.upgrade() else {
            return;
        };
        let wanted = live_board.tidy(dirty.drain());
        if !stream.is_open() && !wanted.is_empty() && !reconnect.waiting() {
            match stream.open(&board).await {
                Ok(()) => {
                    tracing::debug!("{} open", S::WHAT);
                    if stream.is_live() {
                        reconnect.succeeded();
                    }
                }
                Err(e) => {
                    if reconnect.first_warning() {
                        tracing::warn!(error = %e, "cannot open {}; waiters poll instead (at most every 100 ms, and at the holder's expiry) until it works", S::WHAT);
                    }
                    live_board.set_partial(None);
                    reconnect.failed();
                }
            }
        }
        if stream.is_live() {
            live_board.set_all_live(&wanted);
        } else if !stream.is_open() {
            live_board.set_partial(None);
        }
    }
}

/// The stream is gone: waiters poll until a new one is live.
fn lost<S: FeedStream>(
    stream: &mut S,
    reconnect: &mut Reconnect,
    board: &Weak<ReleaseBoard>,
    why: &str,
) {
    if stream.is_open() {
        tracing::debug!(why, "{} ended; waiters poll until it is back", S::WHAT);
        if !stream.close() {
            // Ended before it was confirmed: do not reopen in a busy loop.
            reconnect.failed();
        }
    }
    if let Some(board) = board.upgrade() {
        board.set_partial(None);
    }
}
