//! The context of one callback: who is on the channel, its state, and what
//! the channel may ask of the host.
//!
//! A [`Socket`] is made for each call and dropped when the call returns: the
//! channel's lasting state is its assigns, which the host stores and offers
//! on the next call. The host hands the context over only as the callback
//! asks for it (the WIT `context` interface), and claims and assigns are
//! parsed only on first read, so a callback that never looks at them pays
//! for neither. Host calls (`push`, `broadcast`, timers, …) go straight to
//! the WIT imports; the host applies them in call order once the callback
//! returns.
//!
//! Presence ([`Socket::track`], [`Socket::untrack`],
//! [`Socket::presence_list`], [`Socket::push_presence_state`]) is kept by the
//! host per topic, as Phoenix.Presence is: tracking takes effect at once (a
//! list in the same callback shows it), and its `presence_diff` broadcast
//! goes out in call order with the other effects.
//!
//! Timers ([`Socket::send_after`]) are Phoenix's `Process.send_after` and
//! `send(self(), msg)`: the message comes back to
//! [`Channel::handle_info`](crate::Channel::handle_info).

use std::cell::OnceCell;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::bindings::roost::channel::{channel, context, presence, timers, types as wit};
use crate::payload::Payload;

/// A pending timer of this channel, from [`Socket::send_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

impl TimerId {
    /// The id as a number, to keep in the assigns (which outlive a call).
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// The id of a number [`to_raw`](Self::to_raw) gave.
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

/// One joined channel as seen from a callback: Phoenix's `socket`.
#[derive(Debug)]
pub struct Socket {
    app: OnceCell<String>,
    topic: OnceCell<String>,
    socket_id: OnceCell<Option<String>>,
    claims: OnceCell<Value>,
    assigns: OnceCell<Value>,
    /// Whether [`Socket::assign`] was called, i.e. whether the host must store
    /// new assigns (the outcome carries `none` otherwise).
    assigns_changed: bool,
}

impl Socket {
    /// The socket of a `join`: the topic is known, the assigns start empty.
    pub(crate) fn joining(topic: String) -> Self {
        Self {
            topic: OnceCell::from(topic),
            assigns: OnceCell::from(Value::Object(Map::new())),
            ..Self::joined()
        }
    }

    /// The socket of a call on a joined channel: everything read on demand.
    pub(crate) fn joined() -> Self {
        Self {
            app: OnceCell::new(),
            topic: OnceCell::new(),
            socket_id: OnceCell::new(),
            claims: OnceCell::new(),
            assigns: OnceCell::new(),
            assigns_changed: false,
        }
    }

    /// The app's name from the server config.
    pub fn app(&self) -> &str {
        self.app.get_or_init(context::app)
    }

    /// The channel's topic, e.g. `room:lobby`.
    pub fn topic(&self) -> &str {
        self.topic.get_or_init(context::topic)
    }

    /// The socket's id (`users_socket:<sub>`), when its token carries `sub`.
    pub fn socket_id(&self) -> Option<&str> {
        self.socket_id.get_or_init(context::socket_id).as_deref()
    }

    /// The verified token claims: a JSON object, `{}` for anonymous sockets.
    pub fn claims(&self) -> &Value {
        self.claims
            .get_or_init(|| Value::Object(parse_object(&context::claims())))
    }

    /// This channel's state: a JSON object, `{}` until the first
    /// [`assign`](Self::assign) (during `join`, typically).
    pub fn assigns(&self) -> &Value {
        self.assigns
            .get_or_init(|| Value::Object(parse_object(&context::assigns())))
    }

    /// Sets `assigns[key]`; the host stores the new assigns when the callback
    /// returns and passes them to every later call on this channel.
    pub fn assign(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.assigns();
        if let Some(Value::Object(assigns)) = self.assigns.get_mut() {
            assigns.insert(key.into(), value.into());
        }
        self.assigns_changed = true;
    }

    /// Sends `event` to this channel's client only.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) {
        channel::push(event, &payload.into().into());
    }

    /// Sends `event` to every subscriber of this channel's topic, this
    /// channel's client included.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) {
        self.broadcast_to(self.topic(), event, payload);
    }

    /// Sends `event` to every subscriber of `topic` (a topic of this app).
    pub fn broadcast_to(&self, topic: &str, event: &str, payload: impl Into<Payload>) {
        channel::broadcast(topic, event, &payload.into().into());
    }

    /// As [`broadcast`](Self::broadcast), skipping this channel's client.
    pub fn broadcast_from(&self, event: &str, payload: impl Into<Payload>) {
        channel::broadcast_from(self.topic(), event, &payload.into().into());
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
    ///     fn join(_topic: &str, _payload: Payload, socket: &mut Socket) -> JoinResult {
    ///         // Track after the join reply, as Phoenix's `:after_join`.
    ///         socket.send_after(std::time::Duration::ZERO, json!("after_join")).ok();
    ///         Ok(Joined::default())
    ///     }
    ///
    ///     fn handle_info(message: Value, socket: &mut Socket) -> Outcome {
    ///         if message == "after_join" {
    ///             socket.track("ada", json!({ "status": "online" }));
    ///             // The client's `Presence` syncs from this push and the diffs.
    ///             socket.push_presence_state();
    ///         }
    ///         noreply()
    ///     }
    /// }
    /// # export_channel!(Room);
    /// ```
    pub fn track(&self, key: &str, meta: Value) {
        presence::track(key, &meta.to_string());
    }

    /// Stops tracking `key` for this channel (a `presence_diff` with the
    /// leave); nothing if this channel does not track it.
    pub fn untrack(&self, key: &str) {
        presence::untrack(key);
    }

    /// Who is present on this channel's topic, as the `presence_state`
    /// payload: `{"<key>": {"metas": [{"phx_ref": …, …meta}, …]}, …}`,
    /// including what this callback tracked.
    pub fn presence_list(&self) -> Value {
        presence_state(&presence::list())
    }

    /// Pushes the topic's presences to this channel's client as
    /// `presence_state`, which the phoenix.js `Presence` class waits for
    /// before it applies diffs.
    pub fn push_presence_state(&self) {
        // The host's JSON text goes back as it is: no parse, no re-encode.
        channel::push(PRESENCE_STATE, &wit::Payload::Json(presence::list()));
    }

    /// Sends this channel `message` after `delay`: the host then calls
    /// [`Channel::handle_info`](crate::Channel::handle_info) with it, on the
    /// channel's assigns and code as they are then. A zero delay runs right
    /// after this callback's effects (a `join` can defer work past its
    /// reply). The timer goes with the channel when it ends. Fails when the
    /// channel or its app has too many pending timers.
    pub fn send_after(
        &self,
        delay: Duration,
        message: impl Into<Value>,
    ) -> Result<TimerId, String> {
        let delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        timers::send_after(delay_ms, &message.into().to_string()).map(TimerId)
    }

    /// Cancels a pending timer; `false` if it already fired or is unknown.
    pub fn cancel_timer(&self, id: TimerId) -> bool {
        timers::cancel_timer(id.0)
    }

    /// This server's node name from the config (asks the host on each call).
    pub fn node_name(&self) -> String {
        channel::node_name()
    }

    /// The assigns to hand back to the host: `Some` only if they changed.
    pub(crate) fn changed_assigns(&self) -> Option<String> {
        self.assigns_changed.then(|| self.assigns().to_string())
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

    /// A socket whose context is already read (no host to ask in tests).
    fn socket(claims: &str, assigns: &str) -> Socket {
        Socket {
            app: OnceCell::from("demo".to_owned()),
            topic: OnceCell::from("room:lobby".to_owned()),
            socket_id: OnceCell::from(Some("users_socket:42".to_owned())),
            claims: OnceCell::from(Value::Object(parse_object(claims))),
            assigns: OnceCell::from(Value::Object(parse_object(assigns))),
            assigns_changed: false,
        }
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
