//! A TCP proxy on a free loopback port that cuts a connection at the wrong moment: after the
//! server did the work but before the client hears of it (its reply lost), or right after the
//! request (the server goes on, the client sees a drop). The stores' one retry after a dropped
//! connection must recognise its own first send; these cuts are how the tests make one.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy passes everything.
pub const PASS: u8 = 0;
/// The proxy drops the next server->client bytes and closes both sides: the server did the
/// work, the client never hears of it.
pub const CUT_REPLY: u8 = 1;
/// The proxy forwards the next client->server bytes, then closes the client's side only: the
/// server's backend goes on running the statement, the client sees a dropped connection.
pub const CUT_AFTER_REQUEST: u8 = 2;

/// A TCP proxy on a free loopback port in front of `target`, and its mode (one of the
/// constants above; a cut resets it to `PASS`). Its tasks end with the test's runtime.
pub async fn proxy(target: u16) -> (u16, Arc<AtomicU8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mode = Arc::new(AtomicU8::new(PASS));
    let m = Arc::clone(&mode);
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            tokio::spawn(pipe(client, server, Arc::clone(&m)));
        }
    });
    (port, mode)
}

async fn pipe(client: TcpStream, server: TcpStream, mode: Arc<AtomicU8>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let m = Arc::clone(&mode);
    let (cut_tx, mut cut_rx) = tokio::sync::oneshot::channel::<()>();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return (None, sw),
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                return (None, sw);
            }
            let cut =
                m.compare_exchange(CUT_AFTER_REQUEST, PASS, Ordering::SeqCst, Ordering::SeqCst);
            if cut.is_ok() {
                let _ = cut_tx.send(());
                // The server's side stays open: its backend must not notice.
                return (Some(cr), sw);
            }
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = sr.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let cut = mode.compare_exchange(CUT_REPLY, PASS, Ordering::SeqCst, Ordering::SeqCst);
                if cut.is_ok() || cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            _ = &mut cut_rx => {
                // The client's side closes; the server's is drained for a while.
                drop(cw);
                let (cr, sw) = up.await.unwrap();
                drop(cr);
                let until = tokio::time::Instant::now() + Duration::from_secs(20);
                while let Ok(Ok(n)) = tokio::time::timeout_at(until, sr.read(&mut buf)).await {
                    if n == 0 {
                        break;
                    }
                }
                drop(sw);
                return;
            }
        }
    }
    up.abort();
}
