//! `<mount>/websocket`: the upgrade (origin, subprotocol, admission) and
//! [`WsConnection`], the adapter that makes an upgraded WebSocket a
//! `socket::Connection`: text and binary frames decoded into messages on the
//! way in, frames and close frames on the way out. The socket loop itself is
//! `socket::run`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use futures_util::{Sink, Stream};
use tracing::Instrument;

use super::Transports;
use crate::app::App;
use crate::auth;
use crate::mailbox::{Close, WireFrame};
use crate::metrics::refusal;
use crate::protocol::{self, Message, RawFrame, Serializer};
use crate::socket::{self, Gone, Outgoing, Session};

/// Read buffer per connection. Small, because an idle connection should cost
/// bytes (it is allocated up front, and kept); larger frames simply take
/// more reads. Phoenix messages are mostly well under it (a heartbeat is
/// ~50 bytes, a chat message a few hundred).
const READ_BUFFER: usize = 512;
/// Bytes buffered by the WebSocket before it writes to the TCP socket.
const WRITE_BUFFER: usize = 8 << 10;

/// The subprotocol the official client offers and expects echoed.
const PHOENIX_SUBPROTOCOL: &str = "phoenix";
/// Prefix of the subprotocol that carries the client's `authToken`.
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

pub fn upgrade(
    transports: &Transports,
    app: Arc<App>,
    upgrade: WebSocketUpgrade,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    client: Option<std::net::IpAddr>,
) -> Response {
    let state = app.state();
    let refuse = |metric: &str, reason: &dyn std::fmt::Display| {
        app.metrics().refused("websocket", metric);
        tracing::warn!(app = %app.name(), transport = "websocket", "refused: {reason}");
        StatusCode::FORBIDDEN.into_response()
    };
    if let Err(error) = auth::check_origin(state.config(), headers) {
        return refuse(error.metric(), &error);
    }
    let offered = match subprotocol_token(headers) {
        Ok(offered) => offered,
        Err(reason) => return refuse(refusal::SUBPROTOCOL, &reason),
    };
    let token = offered
        .as_deref()
        .or(params.get("token").map(String::as_str));
    let vsn = params.get("vsn").map(String::as_str);
    let admission = match transports.apps.admit(&app, "websocket", vsn, token, client) {
        Ok(admission) => admission,
        Err(status) => return status.into_response(),
    };
    let limits = state.limits();
    let serializer = admission.serializer;
    let span = tracing::info_span!("socket", app = %app.name(), transport = "websocket", vsn = serializer.vsn());
    let session = Session::new(
        app.clone(),
        serializer,
        admission.identity,
        admission.permit,
    );
    let idle = Some(limits.idle_timeout());
    let shutdown = transports.shutdown.clone();
    upgrade
        .protocols([PHOENIX_SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| {
            let conn = WsConnection {
                ws: socket,
                serializer,
            };
            // A task of its own rather than the rest of axum's upgrade task:
            // that one also keeps this closure's state and the upgrade's,
            // ~0.8 KB more for every connection's whole life.
            shutdown.spawn(socket::run(conn, session, shutdown.clone(), idle).instrument(span));
            std::future::ready(())
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

/// An upgraded WebSocket as a `socket::Connection`.
pub struct WsConnection {
    ws: WebSocket,
    serializer: Serializer,
}

impl Stream for WsConnection {
    type Item = Result<Message, Close>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let decoded = match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                // A close frame from the client: the stream ends, and closing
                // the sink sends tungstenite's answer to it.
                None | Some(Ok(WsMessage::Close(_))) => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(read_error(error).map(Err)),
                Some(Ok(WsMessage::Text(text))) => {
                    protocol::decode(self.serializer, RawFrame::Text(text.as_str()))
                }
                Some(Ok(WsMessage::Binary(bytes))) => {
                    protocol::decode(self.serializer, RawFrame::Binary(&bytes))
                }
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            };
            return Poll::Ready(Some(decoded.map_err(|error| {
                tracing::warn!("closing: malformed frame: {error}");
                Close::MalformedFrame
            })));
        }
    }
}

impl Sink<Outgoing> for WsConnection {
    type Error = Gone;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(|_| Gone)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Outgoing) -> Result<(), Gone> {
        let message = match item {
            Outgoing::Frame(WireFrame::Text(text)) => WsMessage::Text(text),
            Outgoing::Frame(WireFrame::Binary(bytes)) => WsMessage::Binary(bytes),
            Outgoing::Close(close) => WsMessage::Close(Some(CloseFrame {
                code: close.code(),
                reason: close.reason().into(),
            })),
        };
        Pin::new(&mut self.ws).start_send(message).map_err(|_| Gone)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(|_| Gone)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(|_| Gone)
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
