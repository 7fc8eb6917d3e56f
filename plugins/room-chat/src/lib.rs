//! The `room-chat` channel (routes `room:*`): a chat room per topic, with the
//! user's name taken from the token or the join payload, and presence: each
//! named user is tracked on join (key = username, meta `{"online_at": <ms>}`),
//! and every joining client gets the room's `presence_state`, so the
//! phoenix.js `Presence` class shows who is in the room. Anonymous readers
//! are not listed: they would make every join announce itself to the whole
//! room, which a large audience cannot afford.

use std::time::{SystemTime, UNIX_EPOCH};

use roost_guest::prelude::*;

struct RoomChat;

impl Channel for RoomChat {
    fn join(topic: &str, payload: Payload, socket: &mut Socket) -> JoinResult {
        let room_id = topic.strip_prefix("room:").unwrap_or(topic).to_owned();
        let username = username(socket.claims(), &payload);
        if let Some(name) = &username {
            socket.track(name, json!({ "online_at": now_ms() }));
        }
        // Lists the user just tracked too; pushed after the join reply.
        socket.push_presence_state();
        socket.assign("room_id", room_id);
        socket.assign("username", username.as_deref().unwrap_or("anonymous"));
        Ok(Joined::reply(json!({ "channel": topic })))
    }

    fn handle_in(event: &str, payload: Payload, socket: &mut Socket) -> Outcome {
        match event {
            "message:add" => {
                let assigns = socket.assigns();
                let event = format!(
                    "room:{}:new_message",
                    assigns["room_id"].as_str().unwrap_or_default()
                );
                let message = json!({
                    "content": payload["message"],
                    "user": { "username": assigns["username"] },
                });
                socket.broadcast(&event, message);
                reply_ok(json!({}))
            }
            "new_msg" => {
                socket.broadcast("new_msg", json!({ "body": payload["body"] }));
                reply_ok(json!({}))
            }
            _ => noreply(),
        }
    }
}

/// The token's `username` or `sub` claim, else the join payload's
/// `username`; `None` for an anonymous reader.
fn username(claims: &Value, payload: &Payload) -> Option<String> {
    [&claims["username"], &claims["sub"], &payload["username"]]
        .into_iter()
        .find_map(Value::as_str)
        .map(str::to_owned)
}

/// Milliseconds since the Unix epoch, from the WASI wall clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

export_channel!(RoomChat);
