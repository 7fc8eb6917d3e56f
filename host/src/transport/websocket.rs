//! `<mount>/websocket`: the upgrade (vsn negotiation, subprotocol) and the
//! connection's task, which reads frames into its session and writes the
//! session's outbox back out, coalescing queued frames into one flush.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
use crate::auth;
use crate::protocol::{self, RawFrame};
use crate::server::Server;
use crate::socket::{Close, Outbox, Session, WireFrame};

/// Read buffer per connection. Small, because an idle connection should cost
/// bytes (it is allocated up front); larger frames simply take more reads.
const READ_BUFFER: usize = 1 << 10;
/// Bytes buffered by the WebSocket before it writes to the TCP socket.
const WRITE_BUFFER: usize = 8 << 10;

/// The subprotocol the official client offers and expects echoed.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";
/// Prefix of the subprotocol that carries the client's `authToken`.
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

pub fn upgrade(
    server: &Server,
    app: Arc<App>,
    upgrade: WebSocketUpgrade,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    let state = app.state();
    let refuse = |reason: &dyn std::fmt::Display| {
        tracing::warn!(app = %app.name, transport = "websocket", "refused: {reason}");
        StatusCode::FORBIDDEN.into_response()
    };
    if let Err(error) = auth::check_origin(&state.config, headers) {
        return refuse(&error);
    }
    let offered = match subprotocol_token(headers) {
        Ok(offered) => offered,
        Err(reason) => return refuse(&reason),
    };
    let token = offered
        .as_deref()
        .or(params.get("token").map(String::as_str));
    let vsn = params.get("vsn").map(String::as_str);
    let (serializer, identity) = match server.admit(&app, "websocket", vsn, token) {
        Ok(admitted) => admitted,
        Err(status) => return status.into_response(),
    };
    let limits = state.config.limits.clone();
    let span = tracing::info_span!("socket", app = %app.name, transport = "websocket", vsn = serializer.vsn());
    let session = Session::new(app.clone(), serializer, identity);
    let shutdown = server.shutdown_token();
    let tracker = server.tracker();
    upgrade
        .protocols([PHOENIX_SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(run(socket, session, shutdown).instrument(span))
        })
}

/// The token of the official client's `authToken` option, sent as the
/// subprotocol `base64url.bearer.phx.<base64 without padding>` next to
/// `phoenix`. A client that offers subprotocols must offer `phoenix`.
pub fn subprotocol_token(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    if !offered.contains(&PHOENIX_SUBPROTOCOL) {
        return Err("the client offered subprotocols but not `phoenix`");
    }
    let Some(encoded) = offered
        .iter()
        .find_map(|p| p.strip_prefix(AUTH_TOKEN_PREFIX))
    else {
        return Ok(None);
    };
    let bytes = STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| "the authToken subprotocol is not valid base64")?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "the authToken subprotocol is not UTF-8")
}

/// The connection's task. Its future is kept small (about 1.5 KB): the
/// plugin calls it awaits are boxed while they run, since an idle connection
/// would otherwise carry their state for its whole life.
async fn run(mut socket: WebSocket, mut session: Session, shutdown: CancellationToken) {
    tracing::debug!("connected");
    let outbox = session.outbox().clone();
    let idle = session.app().state().config.limits.idle_timeout();
    let mut frames = Vec::new();
    // Made once and re-armed rather than remade per loop: a delivery to this
    // socket then costs no timer or cancellation bookkeeping. The idle timer
    // counts from the last inbound frame only, as Phoenix's timeout does.
    let idle_timer = tokio::time::sleep(idle);
    let cancelled = shutdown.cancelled();
    tokio::pin!(idle_timer, cancelled);
    let close = loop {
        let written = tokio::select! {
            biased;
            written = write_queued(&mut socket, &mut session, &mut frames) => written,
            () = overflow(&outbox) => Err(Some(Close::SlowConsumer)),
        };
        if let Err(close) = written {
            break close;
        }
        tokio::select! {
            biased;
            () = &mut cancelled => break Some(Close::GoingAway),
            () = outbox.ready() => {}
            () = &mut idle_timer => break Some(Close::IdleTimeout),
            incoming = socket.recv() => {
                idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                match incoming {
                    None | Some(Ok(WsMessage::Close(_))) => break None,
                    Some(Err(error)) => break read_error(error),
                    Some(Ok(message)) => {
                        let frame = match &message {
                            WsMessage::Text(text) => RawFrame::Text(text.as_str()),
                            WsMessage::Binary(bytes) => RawFrame::Binary(bytes),
                            // Pings are answered by the WebSocket layer itself.
                            _ => continue,
                        };
                        match protocol::decode(session.serializer(), frame) {
                            Ok(message) => Box::pin(session.handle(message)).await,
                            Err(error) => {
                                tracing::warn!("closing: malformed frame: {error}");
                                break Some(Close::MalformedFrame);
                            }
                        }
                    }
                }
            }
        }
    };
    if let Some(close) = close {
        if close != Close::MalformedFrame {
            tracing::info!(code = close.code(), "closing: {}", close.reason());
        }
        let frame = CloseFrame {
            code: close.code(),
            reason: close.reason().into(),
        };
        // A slow consumer may never read this; don't wait for it long.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            socket.send(WsMessage::Close(Some(frame))),
        )
        .await;
    }
    Box::pin(session.close()).await;
    tracing::debug!("disconnected");
}

/// Writes everything queued, several frames per flush. It returns only
/// after finding the outbox empty, so a push after that wakes the caller's
/// `outbox.ready()`. `Err(None)` means the connection is gone.
async fn write_queued(
    socket: &mut WebSocket,
    session: &mut Session,
    frames: &mut Vec<WireFrame>,
) -> Result<(), Option<Close>> {
    loop {
        session.take_frames(frames).await.map_err(Some)?;
        if frames.is_empty() {
            return Ok(());
        }
        for frame in frames.drain(..) {
            let message = match frame {
                WireFrame::Text(text) => WsMessage::Text(text),
                WireFrame::Binary(bytes) => WsMessage::Binary(bytes),
            };
            socket.feed(message).await.map_err(|_| None)?;
        }
        socket.flush().await.map_err(|_| None)?;
    }
}

/// Resolves once the outbox has overflowed.
async fn overflow(outbox: &Outbox) {
    while !outbox.overflowed() {
        outbox.ready().await;
    }
}

/// The close for a failed read, or `None` when the connection is simply gone.
fn read_error(error: axum::Error) -> Option<Close> {
    use tungstenite::error::ProtocolError;
    let close = match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(error) => match *error {
            tungstenite::Error::Capacity(_) => Close::FrameTooLarge,
            // The client went away without a close frame: nothing to say.
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_) => return None,
            tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_) => Close::MalformedFrame,
            other => {
                tracing::warn!("closing: {other}");
                Close::InternalError
            }
        },
        Err(other) => {
            tracing::warn!("closing: {other}");
            Close::InternalError
        }
    };
    tracing::warn!(code = close.code(), "closing: {}", close.reason());
    Some(close)
}
