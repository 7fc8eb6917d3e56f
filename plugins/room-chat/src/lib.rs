//! The `room-chat` channel (routes `room:*`): a chat room per topic, with
//! the user's name taken from the token or the join payload, its history
//! kept in the app's key-value storage, and presence.
//!
//! - `message:add {message}` broadcasts `room:<id>:new_message {content,
//!   user: {username}}`; `new_msg {body}` broadcasts `new_msg {body}`. Both
//!   are stored as `{"id", "content"|"body", "user": {"username"}, "at"}`,
//!   ids counting up per room; the last 100 are kept.
//! - Right after the join reply (a zero-delay timer, as Phoenix's
//!   `send(self(), :after_join)`), the channel pushes `history`
//!   `{"messages": [...]}` — the last 50, oldest first, or only those after
//!   the join payload's `last_seen_id` (catching up after a reconnect) —
//!   then tracks a named user (key = username, meta `{"online_at": <ms>}`)
//!   and pushes the room's `presence_state`. Anonymous readers see it but
//!   are not listed: they would make every join announce itself to the
//!   whole room, which a large audience cannot afford.
//!
//! The app must grant storage (`[apps.<name>.capabilities] kv = true`). If
//! the store fails, messages are still broadcast, and not stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roost_guest::prelude::*;

/// Messages a join sends back.
const HISTORY: u64 = 50;
/// Messages kept per room.
const KEPT: u64 = 100;

struct RoomChat;

impl Channel for RoomChat {
    fn join(topic: &str, payload: Payload, socket: &mut Socket) -> JoinResult {
        let room_id = topic.strip_prefix("room:").unwrap_or(topic).to_owned();
        let username = username(socket.claims(), &payload);
        socket.assign("room_id", room_id);
        socket.assign("username", username.as_deref().unwrap_or("anonymous"));
        socket.assign("named", username.is_some());
        if let Some(seen) = payload["last_seen_id"].as_u64() {
            socket.assign("last_seen_id", seen);
        }
        if socket
            .send_after(Duration::ZERO, json!("after_join"))
            .is_err()
        {
            // No timer to spare: the pushes still follow the join reply.
            after_join(socket);
        }
        Ok(Joined::reply(json!({ "channel": topic })))
    }

    fn handle_in(event: &str, payload: Payload, socket: &mut Socket) -> Outcome {
        let assigns = socket.assigns().clone();
        let room_id = assigns["room_id"].as_str().unwrap_or_default();
        let user = json!({ "username": assigns["username"] });
        match event {
            "message:add" => {
                let content = payload["message"].clone();
                remember(room_id, "content", &content, &user);
                let event = format!("room:{room_id}:new_message");
                socket.broadcast(&event, json!({ "content": content, "user": user }));
                reply_ok(json!({}))
            }
            "new_msg" => {
                let body = payload["body"].clone();
                remember(room_id, "body", &body, &user);
                socket.broadcast("new_msg", json!({ "body": body }));
                reply_ok(json!({}))
            }
            _ => noreply(),
        }
    }

    fn handle_info(message: Value, socket: &mut Socket) -> Outcome {
        if message == "after_join" {
            after_join(socket);
        }
        noreply()
    }
}

/// What a join sends after its reply: the history, then presence.
fn after_join(socket: &mut Socket) {
    let assigns = socket.assigns().clone();
    let room_id = assigns["room_id"].as_str().unwrap_or_default();
    let messages = history(room_id, assigns["last_seen_id"].as_u64());
    socket.push("history", json!({ "messages": messages }));
    if assigns["named"] == true {
        let name = assigns["username"].as_str().unwrap_or("anonymous");
        socket.track(name, json!({ "online_at": now_ms() }));
    }
    // Lists the user just tracked too.
    socket.push_presence_state();
}

/// Stores a message under the room's next id (best effort: a chat that
/// cannot store still chats).
fn remember(room_id: &str, field: &str, text: &Value, user: &Value) {
    let stored = kv::increment(&seq_key(room_id), 1).and_then(|id| {
        let id = id as u64;
        let entry = json!({ "id": id, field: text, "user": user, "at": now_ms() });
        kv::set_json(&message_key(room_id, id), &entry)?;
        if id > KEPT {
            kv::delete(&message_key(room_id, id - KEPT))?;
        }
        Ok(())
    });
    if let Err(error) = stored {
        log::warn(format!("room {room_id}: message not stored: {error}"));
    }
}

/// The last [`HISTORY`] messages of the room, oldest first, or those after
/// `last_seen`.
fn history(room_id: &str, last_seen: Option<u64>) -> Vec<Value> {
    let last = match kv::get_json(&seq_key(room_id)) {
        Ok(Some(value)) => value.as_u64().unwrap_or(0),
        Ok(None) => 0,
        Err(error) => {
            log::warn(format!("room {room_id}: history not read: {error}"));
            return Vec::new();
        }
    };
    let first = (last + 1)
        .saturating_sub(HISTORY)
        .max(last_seen.map_or(1, |seen| seen + 1))
        .max(1);
    let keys: Vec<String> = (first..=last).map(|id| message_key(room_id, id)).collect();
    if keys.is_empty() {
        return Vec::new();
    }
    match kv::get_many(&keys) {
        Ok(values) => values
            .into_iter()
            .flatten()
            .map(|bytes| kv::from_bytes(&bytes))
            .collect(),
        Err(error) => {
            log::warn(format!("room {room_id}: history not read: {error}"));
            Vec::new()
        }
    }
}

fn seq_key(room_id: &str) -> String {
    format!("room:{room_id}:seq")
}

/// Zero-padded, so keys sort in id order.
fn message_key(room_id: &str, id: u64) -> String {
    format!("room:{room_id}:msg:{id:020}")
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
