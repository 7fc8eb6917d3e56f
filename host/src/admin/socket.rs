//! `/_roost/admin/websocket`: the dashboard's live feed, over the Phoenix
//! channel protocol, so the page uses the official client (`Socket`,
//! `channel("roost:dashboard")`) as any app's page does.
//!
//! Its one topic, [`TOPIC`], is served here by the host itself rather than
//! by a plugin: the join checks the admin key (the join payload's `key`, or
//! the client's `authToken`), and a joined channel gets a `snapshot` push
//! each second from [`Dashboard`]. The loop is deliberately small and
//! separate from `socket::run` — heartbeats, join, leave, pushes — so the
//! operator's view keeps no state in, and adds nothing to, the apps'
//! sockets it reports on. It speaks both serializers (`vsn` 1.0.0 and
//! 2.0.0), WebSocket only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::OwnedSemaphorePermit;

use super::Admin;
use crate::protocol::{self, Message, Outbound, Payload, RawFrame, Serializer, event};
use crate::transport::websocket::subprotocol_token;

/// The dashboard's topic.
pub const TOPIC: &str = "roost:dashboard";
/// The push that carries a snapshot.
pub const SNAPSHOT: &str = "snapshot";

/// phoenix.js heartbeats every 30 s: two missed ones close the socket.
const IDLE: Duration = Duration::from_secs(60);
/// Inbound frames are joins and heartbeats: small.
const MAX_FRAME: usize = 64 << 10;

pub fn upgrade(
    admin: &Admin,
    upgrade: WebSocketUpgrade,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    let Some(serializer) = Serializer::negotiate(params.get("vsn").map(String::as_str)) else {
        return (StatusCode::FORBIDDEN, "unsupported vsn\n").into_response();
    };
    let Ok(token) = subprotocol_token(headers) else {
        return (StatusCode::FORBIDDEN, "the client must offer `phoenix`\n").into_response();
    };
    let Ok(permit) = admin.shared.sockets.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many admin sockets\n").into_response();
    };
    let admin = admin.clone();
    let shutdown = admin.shared.shutdown.clone();
    upgrade
        .protocols(["phoenix"])
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |ws| {
            shutdown.spawn(run(admin, ws, serializer, token, permit));
            std::future::ready(())
        })
}

/// One admin socket, until the client goes, idles, or the server stops.
async fn run(
    admin: Admin,
    mut ws: WebSocket,
    serializer: Serializer,
    token: Option<String>,
    _permit: OwnedSemaphorePermit,
) {
    let mut snapshots = admin.shared.dashboard.subscribe();
    // The join ref of the joined channel, if joined.
    let mut joined: Option<Option<String>> = None;
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let close = loop {
        let outgoing = tokio::select! {
            () = admin.shared.shutdown.cancelled() => break Some((1001, "going away")),
            () = &mut idle => break Some((4000, "idle timeout")),
            changed = snapshots.changed(), if joined.is_some() => {
                if changed.is_err() {
                    break Some((1001, "going away"));
                }
                let snapshot: Arc<str> = snapshots.borrow_and_update().clone();
                vec![push(joined.clone().flatten(), &snapshot)]
            }
            inbound = ws.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
                let message = match inbound {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => break None,
                    Some(Ok(WsMessage::Text(text))) => protocol::decode(serializer, RawFrame::Text(text.as_str())),
                    Some(Ok(WsMessage::Binary(bytes))) => protocol::decode(serializer, RawFrame::Binary(&bytes)),
                    Some(Ok(_)) => continue,
                };
                match message {
                    Ok(message) => handle(&admin, message, token.as_deref(), &mut joined),
                    Err(_) => break Some((1007, "malformed frame")),
                }
            }
        };
        for message in outgoing {
            let Ok(frame) = protocol::encode(serializer, &message) else {
                continue;
            };
            let frame = match frame {
                protocol::Frame::Text(text) => WsMessage::Text(text.into()),
                protocol::Frame::Binary(bytes) => WsMessage::Binary(bytes.into()),
            };
            if ws.send(frame).await.is_err() {
                return;
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(WsMessage::Close(Some(frame))),
        )
        .await;
    }
}

/// Answers one client message; what to send back, in order.
fn handle(
    admin: &Admin,
    message: Message,
    token: Option<&str>,
    joined: &mut Option<Option<String>>,
) -> Vec<Outbound> {
    let Message {
        join_ref,
        ref_,
        topic,
        event: name,
        payload,
    } = message;
    let answer = |status: &str, response: Payload| Outbound::Reply {
        join_ref: join_ref.clone(),
        ref_: ref_.clone(),
        topic: topic.clone(),
        status: status.to_owned(),
        response,
    };
    if topic == event::PHOENIX && name == event::HEARTBEAT {
        // As the apps' sockets answer it: join_ref null.
        return vec![Outbound::Reply {
            join_ref: None,
            ref_,
            topic,
            status: event::OK.to_owned(),
            response: Payload::empty(),
        }];
    }
    if topic != TOPIC {
        return vec![answer(
            event::ERROR,
            Payload::json_raw(r#"{"reason":"unmatched topic"}"#),
        )];
    }
    match name.as_str() {
        event::PHX_JOIN => {
            let key = join_key(&payload);
            if !admin.key_is_valid(key.as_deref().or(token)) {
                tracing::warn!("dashboard join refused: not an admin key");
                return vec![answer(
                    event::ERROR,
                    Payload::json_raw(r#"{"reason":"unauthorized"}"#),
                )];
            }
            *joined = Some(join_ref.clone());
            let hello = Payload::from_value(&serde_json::json!({ "node": admin.node() }));
            // The reply, then a snapshot at once: the page need not wait a tick.
            let snapshot = admin.shared.dashboard.snapshot().to_string();
            vec![answer(event::OK, hello), push(join_ref.clone(), &snapshot)]
        }
        event::PHX_LEAVE => {
            *joined = None;
            vec![
                answer(event::OK, Payload::empty()),
                Outbound::Push {
                    join_ref: join_ref.clone(),
                    ref_: join_ref.clone(),
                    topic: topic.clone(),
                    event: event::PHX_CLOSE.to_owned(),
                    payload: Payload::empty(),
                },
            ]
        }
        _ if joined.is_some() => vec![answer(
            event::ERROR,
            Payload::json_raw(r#"{"reason":"unknown event"}"#),
        )],
        _ => vec![answer(
            event::ERROR,
            Payload::json_raw(r#"{"reason":"unmatched topic"}"#),
        )],
    }
}

/// The `key` of a join payload, if it has one.
fn join_key(payload: &Payload) -> Option<String> {
    let Payload::Json(raw) = payload else {
        return None;
    };
    let value: serde_json::Value = serde_json::from_str(raw.get()).ok()?;
    value.get("key")?.as_str().map(str::to_owned)
}

fn push(join_ref: Option<String>, snapshot: &str) -> Outbound {
    Outbound::Push {
        join_ref,
        ref_: None,
        topic: TOPIC.to_owned(),
        event: SNAPSHOT.to_owned(),
        payload: Payload::from_json_text(snapshot.to_owned()).unwrap_or_else(|_| Payload::empty()),
    }
}
