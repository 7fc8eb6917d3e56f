//! The context of one callback: who is on the channel, its state, and what
//! the channel may ask of the host.
//!
//! A [`Socket`] is built from the WIT `context` for each call and dropped when
//! the call returns: the channel's lasting state is its assigns, which the
//! host stores and hands back on the next call. Claims and assigns arrive as
//! JSON text and are parsed only when the channel reads them, so a callback
//! that never looks at them pays nothing. Host calls (`push`, `broadcast`, …)
//! go straight to the WIT imports; the host applies them in call order once
//! the callback returns.
//!
//! Presence ([`Socket::track`], [`Socket::untrack`],
//! [`Socket::presence_list`], [`Socket::push_presence_state`]) is kept by the
//! host per topic, as Phoenix.Presence is: tracking takes effect at once (a
//! list in the same callback shows it), and its `presence_diff` broadcast
//! goes out in call order with the other effects.

use std::cell::OnceCell;

use serde_json::{Map, Value};

use crate::bindings::roost::channel::{host, types as wit};
use crate::payload::Payload;

/// One joined channel as seen from a callback: Phoenix's `socket`.
#[derive(Debug)]
pub struct Socket {
    app: String,
    topic: String,
    socket_id: Option<String>,
    /// Token claims as the host sent them; parsed into `claims` on first read.
    claims_text: String,
    claims: OnceCell<Value>,
    /// Assigns as the host sent them; parsed into `assigns` on first use.
    assigns_text: String,
    assigns: OnceCell<Value>,
    /// Whether [`Socket::assign`] was called, i.e. whether the host must store
    /// new assigns (the outcome carries `none` otherwise).
    assigns_changed: bool,
}

impl Socket {
    /// The app's name from the server config.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The channel's topic, e.g. `room:lobby`.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The socket's id (`users_socket:<sub>`), when its token carries `sub`.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket_id.as_deref()
    }

    /// The verified token claims: a JSON object, `{}` for anonymous sockets.
    pub fn claims(&self) -> &Value {
        self.claims
            .get_or_init(|| Value::Object(parse_object(&self.claims_text)))
    }

    /// This channel's state: a JSON object, `{}` until the first
    /// [`assign`](Self::assign) (during `join`, typically).
    pub fn assigns(&self) -> &Value {
        self.assigns
            .get_or_init(|| Value::Object(parse_object(&self.assigns_text)))
    }

    /// Sets `assigns[key]`; the host stores the new assigns when the callback
    /// returns and passes them to every later call on this channel.
    pub fn assign(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let mut assigns = match self.assigns.take() {
            Some(Value::Object(map)) => map,
            _ => parse_object(&self.assigns_text),
        };
        assigns.insert(key.into(), value.into());
        self.assigns = OnceCell::from(Value::Object(assigns));
        self.assigns_changed = true;
    }

    /// Sends `event` to this channel's client only.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) {
        host::push(event, &payload.into().into());
    }

    /// Sends `event` to every subscriber of this channel's topic, this
    /// channel's client included.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) {
        self.broadcast_to(&self.topic, event, payload);
    }

    /// Sends `event` to every subscriber of `topic` (a topic of this app).
    pub fn broadcast_to(&self, topic: &str, event: &str, payload: impl Into<Payload>) {
        host::broadcast(topic, event, &payload.into().into());
    }

    /// As [`broadcast`](Self::broadcast), skipping this channel's client.
    pub fn broadcast_from(&self, event: &str, payload: impl Into<Payload>) {
        host::broadcast_from(&self.topic, event, &payload.into().into());
    }

    /// Tracks `key` (a user id, say) as present on this channel's topic,
    /// with `meta`, a JSON object (anything else crashes the channel), as
    /// `Phoenix.Presence.track` does. The host adds a unique `phx_ref` and
    /// broadcasts a `presence_diff` to the topic. Tracking a key this channel
    /// already tracks updates its meta (one diff: the new meta, with
    /// `phx_ref_prev`, joins; the old one leaves).
    ///
    /// The entry belongs to this channel: it leaves by itself when the
    /// channel leaves, closes, crashes or its socket goes away, so most
    /// channels never call [`untrack`](Self::untrack). A key may be present
    /// several times at once: a user with two tabs is two channels tracking
    /// the same key. Ignored in [`Channel::terminate`](crate::Channel::terminate).
    ///
    /// ```
    /// use roost_guest::prelude::*;
    ///
    /// struct Room;
    ///
    /// impl Channel for Room {
    ///     fn join(_topic: &str, payload: Payload, socket: &mut Socket) -> JoinResult {
    ///         let user = payload["user"].as_str().unwrap_or("anonymous").to_owned();
    ///         socket.track(&user, json!({ "status": "online" }));
    ///         // The client's `Presence` syncs from this push and the diffs.
    ///         socket.push_presence_state();
    ///         Ok(Joined::default())
    ///     }
    /// }
    /// # export_channel!(Room);
    /// ```
    pub fn track(&self, key: &str, meta: Value) {
        host::presence_track(key, &meta.to_string());
    }

    /// Stops tracking `key` for this channel (a `presence_diff` with the
    /// leave); nothing if this channel does not track it.
    pub fn untrack(&self, key: &str) {
        host::presence_untrack(key);
    }

    /// Who is present on this channel's topic, as the `presence_state`
    /// payload: `{"<key>": {"metas": [{"phx_ref": …, …meta}, …]}, …}`,
    /// including what this callback tracked.
    pub fn presence_list(&self) -> Value {
        presence_state(&host::presence_list())
    }

    /// Pushes the topic's presences to this channel's client as
    /// `presence_state`, which the phoenix.js `Presence` class waits for
    /// before it applies diffs. Call it in [`Channel::join`](crate::Channel::join)
    /// (the push follows the join reply), after tracking.
    pub fn push_presence_state(&self) {
        // The host's JSON text goes back as it is: no parse, no re-encode.
        host::push(PRESENCE_STATE, &wit::Payload::Json(host::presence_list()));
    }

    /// This server's node name from the config (asks the host on each call).
    pub fn node_name(&self) -> String {
        host::node_name()
    }

    /// The assigns to hand back to the host: `Some` only if they changed.
    pub(crate) fn changed_assigns(&self) -> Option<String> {
        self.assigns_changed.then(|| self.assigns().to_string())
    }
}

impl From<wit::Context> for Socket {
    fn from(ctx: wit::Context) -> Self {
        Self {
            app: ctx.app,
            topic: ctx.topic,
            socket_id: ctx.socket_id,
            claims_text: ctx.claims,
            claims: OnceCell::new(),
            assigns_text: ctx.assigns,
            assigns: OnceCell::new(),
            assigns_changed: false,
        }
    }
}

/// The event that carries a topic's presences (Phoenix's name).
const PRESENCE_STATE: &str = "presence_state";

/// Parses the host's `presence-list` text; `{}` if it is not an object.
fn presence_state(text: &str) -> Value {
    Value::Object(parse_object(text))
}

/// Parses claims or assigns text; anything but a JSON object (which the host
/// never sends) becomes `{}`, so `assign` always has an object to write to.
fn parse_object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn socket(claims: &str, assigns: &str) -> Socket {
        Socket::from(wit::Context {
            app: "demo".into(),
            topic: "room:lobby".into(),
            socket_id: Some("users_socket:42".into()),
            claims: claims.into(),
            assigns: assigns.into(),
        })
    }

    #[test]
    fn context_fields_are_exposed() {
        let socket = socket(r#"{"sub":"42"}"#, r#"{"room":"lobby"}"#);
        assert_eq!(socket.app(), "demo");
        assert_eq!(socket.topic(), "room:lobby");
        assert_eq!(socket.socket_id(), Some("users_socket:42"));
        assert_eq!(socket.claims(), &json!({ "sub": "42" }));
        assert_eq!(socket.assigns(), &json!({ "room": "lobby" }));
    }

    #[test]
    fn unchanged_assigns_are_not_sent_back() {
        let socket = socket("{}", r#"{"room":"lobby"}"#);
        assert_eq!(socket.assigns()["room"], "lobby");
        assert_eq!(socket.changed_assigns(), None);
    }

    #[test]
    fn assign_adds_to_the_existing_assigns_and_marks_them_changed() {
        let mut socket = socket("{}", r#"{"room":"lobby"}"#);
        socket.assign("user", "ana");
        socket.assign("count", 2);
        let sent: Value =
            serde_json::from_str(&socket.changed_assigns().expect("changed")).expect("valid JSON");
        assert_eq!(sent, json!({ "room": "lobby", "user": "ana", "count": 2 }));
    }

    #[test]
    fn presence_state_text_from_the_host_is_parsed() {
        let state = presence_state(
            r#"{"ada":{"metas":[{"phx_ref":"AAAAAAAAAAAAAAAB","online_at":1},{"phx_ref":"AAAAAAAAAAAAAAAC"}]}}"#,
        );
        assert_eq!(state["ada"]["metas"][0]["online_at"], 1);
        assert_eq!(state["ada"]["metas"].as_array().map(Vec::len), Some(2));
        assert_eq!(presence_state("{}"), json!({}));
        assert_eq!(presence_state("not json"), json!({}));
    }

    #[test]
    fn non_object_claims_and_assigns_read_as_empty_objects() {
        let mut socket = socket("not json", "[1]");
        assert_eq!(socket.claims(), &json!({}));
        assert_eq!(socket.assigns(), &json!({}));
        socket.assign("a", true);
        assert_eq!(socket.changed_assigns().as_deref(), Some(r#"{"a":true}"#));
    }
}
