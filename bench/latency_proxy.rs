//! A latency-injecting TCP proxy for benchmarks (`bench/network.py`): a stand-in for netem on a
//! kernel without it. Not part of the library, and not in any wheel.
//!
//! ```text
//! cargo run --release --example latency_proxy -- <listen port> <target host:port> <one-way delay µs>
//! ```
//!
//! Listens on 127.0.0.1:<listen port>, opens one connection to the target per accepted client
//! and forwards bytes both ways, each chunk held back by the one-way delay (a round trip through
//! the proxy gains twice the delay). It works on bytes, so TLS passes through untouched.
//!
//! Per direction a reader task reads chunks as they come and stamps each with the instant it is
//! due (read time + delay), and a writer task sends them in order when due: a delay queue, so
//! the link carries any number of chunks in flight (throughput is not one chunk per delay), and
//! whatever is due at once goes out in one write. Tokio's timer ticks in milliseconds, too
//! coarse for delays of a few hundred µs, so each writer sleeps on a `timerfd` (an hrtimer,
//! with no timer slack) registered with tokio's reactor instead. `TCP_NODELAY` on both sides.

use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The largest chunk read at once.
const CHUNK: usize = 64 * 1024;

/// A one-shot timer on `CLOCK_MONOTONIC` with nanosecond resolution, awaited through tokio.
struct Timer {
    fd: AsyncFd<File>,
}

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a negative result is an error, checked.
        #[allow(unsafe_code)]
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a file descriptor just created here and owned by nobody else.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `File` owns the timerfd: it stays open, and the same file, for as long as
        // the `AsyncFd` holding it exists, and `as_raw_fd` returns it.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(File::from(owned)) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Returns once `after` has passed (at once for zero).
    async fn sleep(&mut self, after: Duration) -> io::Result<()> {
        if after.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(after.subsec_nanos().cast_signed()),
            },
        };
        // SAFETY: the descriptor is our open timerfd; `spec` lives across the call and the old
        // value pointer may be null.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                0,
                &raw const spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|f| f.get_ref().read(&mut expirations)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// Reads chunks from `from` and queues each with the instant it is due.
async fn read_side(
    mut from: OwnedReadHalf,
    queue: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    delay: Duration,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return, // dropping the sender ends the writer after the queue
            Ok(n) => {
                if queue
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Writes the queued chunks to `to` in order, each once due; then shuts the write side down.
async fn write_side(
    mut to: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) -> io::Result<()> {
    let mut timer = Timer::new()?;
    let mut out = Vec::with_capacity(CHUNK);
    let mut next = queue.recv().await;
    while let Some((due, chunk)) = next.take() {
        timer
            .sleep(due.saturating_duration_since(Instant::now()))
            .await?;
        out.clear();
        out.extend_from_slice(&chunk);
        // Whatever else is due by now goes out in the same write.
        let now = Instant::now();
        loop {
            match queue.try_recv() {
                Ok((due, chunk)) if due <= now => out.extend_from_slice(&chunk),
                Ok(later) => {
                    next = Some(later);
                    break;
                }
                Err(_) => break,
            }
        }
        to.write_all(&out).await?;
        if next.is_none() {
            next = queue.recv().await;
        }
    }
    to.shutdown().await
}

/// Forwards one direction: `from` to `to`, delayed.
async fn pipe(from: OwnedReadHalf, to: OwnedWriteHalf, delay: Duration) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_side(from, tx, delay));
    let _ = write_side(to, rx).await;
    reader.abort();
}

async fn serve(client: TcpStream, target: String, delay: Duration) {
    let server = match TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency_proxy: connecting to {target}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    tokio::join!(
        pipe(client_rx, server_tx, delay),
        pipe(server_rx, client_tx, delay),
    );
}

fn usage() -> ! {
    eprintln!("usage: latency_proxy <listen port> <target host:port> <one-way delay µs>");
    std::process::exit(2);
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, target, delay] = args.as_slice() else {
        usage()
    };
    let Ok(port) = port.parse::<u16>() else {
        usage()
    };
    let Ok(delay) = delay.parse::<u64>().map(Duration::from_micros) else {
        usage()
    };
    // One thread: the proxy must not take the benchmark's CPUs, and a chunk's path is short.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        // The parent waits for this line before connecting.
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(serve(client, target.clone(), delay));
        }
    })
}
