//! A client connection, whatever its transport: one task, [`run`], owns the
//! connection's [`Session`] and reads, in one loop, the client's messages
//! and the session's mailbox (frames to write; commands: intercepted
//! broadcasts, reroutes, closes).
//!
//! The loop is generic over a [`Connection`]: a stream of decoded client
//! messages and a sink of outgoing frames. It also waits on the session's
//! channel timers, whose firing runs the channel's `handle_info`. `transport::websocket` and
//! `transport::longpoll` are thin adapters that make one; the tests use a
//! pair of channels. So there is one place that decides the order of
//! things — commands are acted on, then queued frames written, several per
//! flush, then the next event awaited — and guest code runs only from the
//! session's handlers, never from a transport's write path.

mod channels;
mod rate;
mod session;
#[cfg(test)]
mod tests;

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};

pub use session::Session;

use crate::mailbox::{Close, Command, Mailbox, WireFrame};
use crate::protocol::Message;
use crate::shutdown::Shutdown;

/// How long a closing connection may take to send its close frame and
/// flush: a client that does not read must not hold the task.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the socket writes to its client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Frame(WireFrame),
    /// Tell the client why the server closes (a WebSocket close frame).
    Close(Close),
}

/// The connection is gone: nothing more can be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// A client connection as the socket loop sees it. The stream yields the
/// client's messages in order, or `Err(close)` when the connection must
/// close with that code (a malformed frame, say); it ends when the client
/// has gone or closed. Closing the sink flushes and ends the connection
/// (on a WebSocket, that also answers a client's close frame).
pub trait Connection:
    Stream<Item = Result<Message, Close>> + Sink<Outgoing, Error = Gone> + Unpin + Send
{
}

impl<T> Connection for T where
    T: Stream<Item = Result<Message, Close>> + Sink<Outgoing, Error = Gone> + Unpin + Send
{
}

/// Runs a connection until it ends: the client goes, a close is asked for
/// (server shutdown, the API, a slow client — its outbox full, or a write
/// blocked past `limits.write_timeout_ms` — `idle` with no message from the
/// client), or the connection fails. Then every channel ends.
///
/// The future is kept small (an idle connection holds it for its whole
/// life): the plugin calls it awaits are boxed while they run.
pub async fn run<C: Connection>(
    mut conn: C,
    mut session: Session,
    shutdown: Shutdown,
    idle: Option<Duration>,
) {
    tracing::debug!("connected");
    let mailbox = session.mailbox().clone();
    let write_timeout = session.app().state().config().limits.write_timeout();
    let mut frames = Vec::new();
    let mut commands = Vec::new();
    // Made once and re-armed rather than remade per loop: a delivery to this
    // socket then costs no timer or cancellation bookkeeping. The idle timer
    // counts from the last inbound message only, as Phoenix's timeout does.
    let idle = idle.unwrap_or(Duration::MAX);
    let idle_timer = tokio::time::sleep(idle);
    let cancelled = shutdown.cancelled();
    tokio::pin!(idle_timer, cancelled);
    let close = loop {
        let flushed = tokio::select! {
            biased;
            flushed = flush(&mut conn, &mut session, &mailbox, &mut frames, &mut commands, write_timeout) => flushed,
            () = overflow(&mailbox) => Err(Some(Close::SlowConsumer)),
        };
        if let Err(close) = flushed {
            break close;
        }
        tokio::select! {
            biased;
            () = &mut cancelled => break Some(Close::GoingAway),
            () = mailbox.ready() => {}
            fired = session.next_timer(), if session.has_timers() => {
                Box::pin(session.fire(fired)).await;
            }
            () = &mut idle_timer => break Some(Close::IdleTimeout),
            inbound = conn.next() => {
                if let Some(deadline) = tokio::time::Instant::now().checked_add(idle) {
                    idle_timer.as_mut().reset(deadline);
                }
                match inbound {
                    None => break None,
                    Some(Err(close)) => break Some(close),
                    Some(Ok(message)) => {
                        if let Err(close) = Box::pin(session.handle(message)).await {
                            break Some(close);
                        }
                    }
                }
            }
        }
    };
    if let Some(close) = close {
        session.app().metrics().disconnected(close.reason());
        tracing::info!(code = close.code(), "closing: {}", close.reason());
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.send(Outgoing::Close(close))).await;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, conn.close()).await;
    Box::pin(session.close()).await;
    tracing::debug!("disconnected");
}

/// Acts on queued commands, then writes queued frames, several per flush,
/// until the mailbox is empty: it returns only after finding it so, so a
/// post after that wakes the caller's `mailbox.ready()`. `Err(Some)` closes
/// with that code, `Err(None)` means the connection is gone. A batch of
/// writes that does not go out within `write_timeout` (the client stopped
/// reading and the kernel's buffers are full) closes as a slow consumer.
async fn flush<C: Connection>(
    conn: &mut C,
    session: &mut Session,
    mailbox: &Mailbox,
    frames: &mut Vec<WireFrame>,
    commands: &mut Vec<Command>,
    write_timeout: Duration,
) -> Result<(), Option<Close>> {
    loop {
        if mailbox.overflowed() {
            return Err(Some(Close::SlowConsumer));
        }
        mailbox.take_commands(commands);
        for command in commands.drain(..) {
            // Boxed, like `handle`: a plugin call's state lives on the heap
            // only while it runs.
            Box::pin(session.command(command)).await.map_err(Some)?;
        }
        mailbox.take_frames(frames);
        if frames.is_empty() {
            return Ok(());
        }
        session.app().metrics().messages_out(frames.len());
        // A write that completes at once (the usual case) never arms the
        // timer: `timeout` polls its future first.
        // Taken, so the batch's storage is freed once written, as the
        // mailbox's is: an idle socket holds no buffer for frames.
        let batch = std::mem::take(frames);
        let written = async {
            for frame in batch {
                conn.feed(Outgoing::Frame(frame)).await?;
            }
            conn.flush().await
        };
        match tokio::time::timeout(write_timeout, written).await {
            Err(_) => return Err(Some(Close::SlowConsumer)),
            Ok(written) => written.map_err(|Gone| None)?,
        }
    }
}

/// Resolves once the mailbox has overflowed.
async fn overflow(mailbox: &Mailbox) {
    while !mailbox.overflowed() {
        mailbox.ready().await;
    }
}
