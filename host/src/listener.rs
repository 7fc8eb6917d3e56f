//! Accepting HTTP connections: each one served by hyper with a header-read
//! timeout (a client trickling its request a byte at a time, or sending
//! nothing, is dropped after `server.header_read_timeout_ms` — what
//! `axum::serve` cannot do, as it runs hyper without a timer), upgrades for
//! WebSockets, `TCP_NODELAY`, the peer address for the handlers, a cap
//! per client address on HTTP connections, and a lingering close.
//!
//! On shutdown it stops accepting, lets requests in flight finish (a
//! waiting long-poll GET answers once its session ends), and closes idle
//! keep-alive connections. Upgraded WebSockets are the socket tasks' own,
//! drained by `shutdown`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::clients::Clients;
use crate::shutdown::Shutdown;

/// How long to back off when `accept` fails, which it does when the
/// process is out of file descriptors: retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long idle and unfinished connections get to close at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading what its client still sends,
/// at most, and how long it waits for more (nginx's `lingering_time` and
/// `lingering_timeout`): a client that sends nothing holds its descriptor
/// no longer than that.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_QUIET: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until shutdown begins.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    clients: Clients,
    header_read_timeout: Duration,
) {
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Failed accepts since the last one that worked: logged when they
    // start and when they end, not 20 times a second.
    let mut failed_accepts = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if failed_accepts == 0 {
                        tracing::warn!("accept failed (out of file descriptors?), retrying every {ACCEPT_BACKOFF:?}: {error}");
                    }
                    failed_accepts += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if failed_accepts > 0 {
            tracing::warn!("accepting again after {failed_accepts} failed accepts");
            failed_accepts = 0;
        }
        // Counted until the connection ends or upgrades: an upgraded
        // WebSocket then counts as the client's socket instead.
        let Some(permit) = clients.tcp(peer.ip()) else {
            tracing::debug!(%peer, "refused: too many connections from this address");
            continue;
        };
        // Frames are small and latency matters: no Nagle delay.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {error}");
        }
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            });
        let connection = http
            .serve_connection(
                TokioIo::new(Lingering(Some(stream))),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        let stopping = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stopping.cancelled() => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, "connection ended: {error}");
            }
            drop(permit);
        });
    }
    connections.close();
    if tokio::time::timeout(CLOSE_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("some HTTP connections were still open at shutdown");
    }
}

/// A client's TCP connection that lingers once dropped, as nginx's
/// `lingering_close` does: it sends its FIN, then reads and discards what
/// the client still sends, until it closes or [`LINGER`] is over (or it is
/// quiet for [`LINGER_QUIET`]).
/// Closing a socket with unread bytes makes the kernel answer with a reset,
/// which can destroy what was written just before — the close frame
/// (1009) after a frame too large, a 413 — while the client is still
/// sending.
struct Lingering(Option<TcpStream>);

impl Lingering {
    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(self.get_mut().0.as_mut().expect("taken only on drop"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _ = stream.shutdown().await;
            let until = tokio::time::Instant::now() + LINGER;
            let mut discard = vec![0; 8 << 10];
            while tokio::time::Instant::now() < until {
                let read = tokio::time::timeout(LINGER_QUIET, stream.read(&mut discard)).await;
                if !matches!(read, Ok(Ok(n)) if n > 0) {
                    break;
                }
            }
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
