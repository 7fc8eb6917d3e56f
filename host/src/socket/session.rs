//! The Phoenix socket state machine for one connection: heartbeats, joins,
//! leaves and events dispatched to plugins, in the order of
//! `shared/phoenix-protocol.md` §3.
//!
//! The session owns its channel table (no locks: only its transport's task
//! touches it) and writes everything it sends into its outbox. Plugin calls
//! are awaited in place, so the messages of one socket are handled strictly
//! one after another and a join's reply always precedes what follows it.
//!
//! Each joined channel owns its presence entries (`presence`); they are
//! removed, with a `presence_diff` to the topic, wherever a channel ends:
//! in `remove` (leave, stop, crash, duplicate join, removed route), in
//! `close` (the connection is gone, a long-poll session expired), after a
//! refused or crashed join, and on drop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::App;
use crate::auth::Identity;
use crate::presence::Owner;
use crate::protocol::{self, Message, Outbound, Payload, Serializer, event};
use crate::runtime::{CallContext, Called, Effect, Outcome, PluginError, PluginSlot};

use super::{Close, Intercepted, Item, Outbox, WireFrame};
use crate::pubsub::Subscriber;

/// Source of server-unique socket numbers, used to tell subscribers apart.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// A joined channel: plain data, a few bytes plus its assigns.
struct Joined {
    /// The join's ref (V1: the join message's ref); control pushes carry it.
    join_ref: Option<String>,
    /// The route's plugin; each call uses whatever version is current.
    slot: Arc<PluginSlot>,
    /// The channel's state, a JSON object owned by the host.
    assigns: String,
    /// Owns the presence entries the channel tracks.
    owner: Owner,
}

/// Where a callback's reply goes.
enum ReplyTo {
    /// To the message with this ref.
    Message(Option<String>),
    /// Nowhere: `handle_out` has no message to answer.
    Nobody,
}

pub struct Session {
    app: Arc<App>,
    serializer: Serializer,
    /// Server-unique number of this socket.
    socket: u64,
    /// `users_socket:<sub>` for sockets with a token subject.
    socket_id: Option<String>,
    /// Verified token claims as a JSON object.
    claims: String,
    outbox: Outbox,
    channels: HashMap<String, Joined>,
}

impl Session {
    /// A new session, registered with its app until dropped.
    pub fn new(app: Arc<App>, serializer: Serializer, identity: Identity) -> Self {
        let Identity { socket_id, claims } = identity;
        let outbox = Outbox::new(app.state().config.limits.outbox_bytes);
        let socket = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        app.register_socket(socket, socket_id.clone(), outbox.clone());
        Self {
            app,
            serializer,
            socket,
            socket_id,
            claims,
            outbox,
            channels: HashMap::new(),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// Handles one decoded message from the client.
    ///
    /// The returned future holds a whole plugin call's state (kilobytes);
    /// callers that live as long as a connection box it, so an idle socket
    /// does not carry that space.
    pub async fn handle(&mut self, message: Message) {
        if message.topic == event::PHOENIX && message.event == event::HEARTBEAT {
            let reply = reply(
                None,
                message.ref_,
                message.topic,
                event::OK,
                Payload::empty(),
            );
            return self.send(reply);
        }
        if let Some(refusal) = self.oversized(&message) {
            let Message {
                join_ref,
                ref_,
                topic,
                ..
            } = message;
            return self.send(reply(join_ref, ref_, topic, event::ERROR, refusal));
        }
        let current = self
            .channels
            .get(&message.topic)
            .map(|joined| message.join_ref.is_none() || message.join_ref == joined.join_ref);
        match (message.event.as_str(), current) {
            (event::PHX_JOIN, None) => self.join(message).await,
            (event::PHX_JOIN, Some(_)) => self.rejoin(message).await,
            (event::PHX_LEAVE, Some(true)) => self.leave(message).await,
            (event::PHX_LEAVE, None) => {
                let Message {
                    join_ref,
                    ref_,
                    topic,
                    ..
                } = message;
                self.send(reply(join_ref, ref_, topic, event::OK, Payload::empty()));
            }
            (_, Some(true)) => self.handle_in(message).await,
            // A message for an earlier join of this topic: dropped unanswered.
            (_, Some(false)) => {}
            (_, None) => self.send(unmatched(message)),
        }
    }

    /// An error response for a topic or event name over the app's limits.
    fn oversized(&self, message: &Message) -> Option<Payload> {
        let limits = &self.app.state().config.limits;
        if message.topic.len() > limits.max_topic_bytes {
            Some(Payload::json_raw(r#"{"reason":"topic too long"}"#))
        } else if message.event.len() > limits.max_event_bytes {
            Some(Payload::json_raw(r#"{"reason":"event too long"}"#))
        } else {
            None
        }
    }

    /// Moves what is queued for the client into `frames`, handling on the way
    /// the items that are the session's own business (intercepted
    /// broadcasts, reroutes). Returns once the outbox is empty; `Err` when
    /// the connection must close.
    pub async fn take_frames(&mut self, frames: &mut Vec<WireFrame>) -> Result<(), Close> {
        let mut items = Vec::new();
        loop {
            if self.outbox.overflowed() {
                return Err(Close::SlowConsumer);
            }
            self.outbox.drain(&mut items);
            if items.is_empty() {
                return Ok(());
            }
            for item in items.drain(..) {
                match item {
                    Item::Frame(frame) => frames.push(frame),
                    // Boxed, like `handle`: a plugin call's state lives on
                    // the heap only while it runs.
                    Item::Intercept(intercepted) => {
                        Box::pin(self.handle_intercept(&intercepted)).await;
                    }
                    Item::Reroute => self.reroute(),
                    Item::Close(close) => return Err(close),
                }
            }
        }
    }

    /// Runs `handle_out` for an intercepted broadcast, if the channel is
    /// still joined.
    async fn handle_intercept(&mut self, intercepted: &Intercepted) {
        let Some(joined) = self.channels.get(&intercepted.topic) else {
            return;
        };
        let plugin = joined.slot.current();
        let result = plugin
            .handle_out(
                self.context(&intercepted.topic, joined),
                &intercepted.event,
                &intercepted.payload,
            )
            .await;
        self.settle(&intercepted.topic, result, ReplyTo::Nobody)
            .await;
    }

    /// Ends the channels whose plugin a config change removed, with
    /// `phx_error`, so their clients rejoin and meet the new routes.
    fn reroute(&mut self) {
        let retired: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, joined)| joined.slot.is_retired())
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in retired {
            if let Some(joined) = self.remove(&topic) {
                tracing::info!(topic, "channel ended: its route was removed");
                self.send(crashed(&joined.join_ref, topic));
            }
        }
    }

    /// The connection is gone: every channel unsubscribes, leaves presence
    /// and terminates.
    pub async fn close(&mut self) {
        for (topic, joined) in std::mem::take(&mut self.channels) {
            self.app.count_channel(false);
            self.app.pubsub.unsubscribe(&topic, self.socket);
            self.forget(&topic, joined.owner);
            self.terminate(&topic, &joined, "closed").await;
        }
    }

    async fn join(&mut self, message: Message) {
        let state = self.app.state();
        let Some(slot) = state.router.route(&message.topic).cloned() else {
            tracing::warn!(topic = %message.topic, "ignoring unmatched topic");
            return self.send(unmatched(message));
        };
        let Message {
            join_ref,
            ref_,
            topic,
            payload,
            ..
        } = message;
        if self.channels.len() >= state.config.limits.channels_per_socket {
            let response = Payload::json_raw(r#"{"reason":"too many channels joined"}"#);
            return self.send(reply(join_ref, ref_, topic, event::ERROR, response));
        }
        // V1 frames carry no join_ref: the join's ref stands in for it.
        let channel_ref = match self.serializer {
            Serializer::V1 => join_ref.clone().or_else(|| ref_.clone()),
            Serializer::V2 => join_ref.clone(),
        };
        let plugin = slot.current();
        // Subscribed before the guest's join runs, as a Phoenix channel is
        // before it replies, but into a holding outbox: what the topic
        // broadcasts meanwhile (say, another channel's presence_diff) waits
        // there and follows the join reply. Subscribing only after the join
        // would lose what came between a presence_state the join listed and
        // the subscription.
        let held = Outbox::new(state.config.limits.outbox_bytes);
        self.app
            .pubsub
            .subscribe(&topic, self.subscriber(held.clone()));
        let owner = self.app.presence.owner();
        let ctx = CallContext {
            topic: &topic,
            socket_id: self.socket_id.as_deref(),
            claims: &self.claims,
            assigns: "{}",
            presence: Some(&self.app.presence),
            owner: Some(owner),
        };
        let result = plugin.join(ctx, &payload).await;
        if !matches!(result, Ok(Called { value: Ok(_), .. })) {
            // A refused or crashed join never existed; what it tracked goes.
            self.app.pubsub.unsubscribe(&topic, self.socket);
            self.forget(&topic, owner);
        }
        match result {
            Ok(Called {
                value: Ok(outcome),
                effects,
            }) => {
                let Outcome {
                    reply: response,
                    assigns,
                    ..
                } = outcome;
                let response = response.map_or_else(Payload::empty, |(_, response)| response);
                self.send(reply(join_ref, ref_, topic.clone(), event::OK, response));
                self.app
                    .pubsub
                    .release(&topic, self.subscriber(self.outbox.clone()), &held);
                self.apply(&topic, &channel_ref, effects);
                tracing::debug!(topic, plugin = plugin.name(), "joined");
                let assigns = assigns.unwrap_or_else(|| "{}".to_owned());
                self.app.count_channel(true);
                self.channels.insert(
                    topic,
                    Joined {
                        join_ref: channel_ref,
                        slot,
                        assigns,
                        owner,
                    },
                );
            }
            // A refused join never existed: what it pushed or broadcast is dropped.
            Ok(Called {
                value: Err(response),
                ..
            }) => {
                self.send(reply(join_ref, ref_, topic, event::ERROR, response));
            }
            Err(error) => {
                self.log_failure(&topic, &slot, "join", &error);
                let response = Payload::json_raw(r#"{"reason":"join crashed"}"#);
                self.send(reply(join_ref, ref_, topic, event::ERROR, response));
            }
        }
    }

    /// A join for a topic already joined: the new join is answered, then the
    /// old channel terminates and gets `phx_close` with its old join_ref.
    async fn rejoin(&mut self, message: Message) {
        let topic = message.topic.clone();
        let Some(old) = self.remove(&topic) else {
            return;
        };
        self.join(message).await;
        self.terminate(&topic, &old, "duplicate_join").await;
        self.send(control(&old.join_ref, topic, event::PHX_CLOSE));
    }

    async fn leave(&mut self, message: Message) {
        let Some(joined) = self.remove(&message.topic) else {
            return;
        };
        let Message { ref_, topic, .. } = message;
        self.send(reply(
            joined.join_ref.clone(),
            ref_,
            topic.clone(),
            event::OK,
            Payload::empty(),
        ));
        self.terminate(&topic, &joined, "leave").await;
        self.send(control(&joined.join_ref, topic, event::PHX_CLOSE));
    }

    async fn handle_in(&mut self, message: Message) {
        let Some(joined) = self.channels.get(&message.topic) else {
            return;
        };
        let plugin = joined.slot.current();
        let result = plugin
            .handle_in(
                self.context(&message.topic, joined),
                &message.event,
                &message.payload,
            )
            .await;
        self.settle(&message.topic, result, ReplyTo::Message(message.ref_))
            .await;
    }

    /// Applies a callback's outcome: effects, then the reply, then the new
    /// assigns, then a stop.
    async fn settle(
        &mut self,
        topic: &str,
        result: Result<Called<Outcome>, PluginError>,
        reply_to: ReplyTo,
    ) {
        let Some(joined) = self.channels.get(topic) else {
            return;
        };
        let join_ref = joined.join_ref.clone();
        let Called {
            value: outcome,
            effects,
        } = match result {
            Ok(called) => called,
            Err(error) => {
                self.log_failure(topic, &joined.slot, "callback", &error);
                self.remove(topic);
                return self.send(crashed(&join_ref, topic.to_owned()));
            }
        };
        self.apply(topic, &join_ref, effects);
        if let (Some((status, response)), ReplyTo::Message(ref_)) = (outcome.reply, reply_to) {
            self.send(reply(
                join_ref.clone(),
                ref_,
                topic.to_owned(),
                &status,
                response,
            ));
        }
        if let (Some(assigns), Some(joined)) = (outcome.assigns, self.channels.get_mut(topic)) {
            joined.assigns = assigns;
        }
        if let Some(reason) = outcome.stop {
            self.stop(topic, &reason).await;
        }
    }

    /// A plugin stopped its channel: `normal` and `shutdown` close it, any
    /// other reason errors it, as a Phoenix channel process exit would.
    async fn stop(&mut self, topic: &str, reason: &str) {
        let Some(joined) = self.remove(topic) else {
            return;
        };
        self.terminate(topic, &joined, reason).await;
        let graceful = matches!(reason, "normal" | "shutdown") || reason.starts_with("shutdown:");
        if graceful {
            self.send(control(
                &joined.join_ref,
                topic.to_owned(),
                event::PHX_CLOSE,
            ));
        } else {
            tracing::info!(topic, reason, "channel stopped abnormally");
            self.send(crashed(&joined.join_ref, topic.to_owned()));
        }
    }

    /// Calls `terminate`, best effort, and applies its effects. The channel
    /// has left the table and its presence already: `terminate` may list
    /// presences but not track.
    async fn terminate(&mut self, topic: &str, joined: &Joined, reason: &str) {
        let plugin = joined.slot.current();
        let ctx = CallContext {
            owner: None,
            ..self.context(topic, joined)
        };
        match plugin.terminate(ctx, reason).await {
            Ok(called) => self.apply(topic, &joined.join_ref, called.effects),
            Err(error) => self.log_failure(topic, &joined.slot, "terminate", &error),
        }
    }

    /// Takes a channel out of the table: it no longer counts, receives
    /// broadcasts, or is present on its topic.
    fn remove(&mut self, topic: &str) -> Option<Joined> {
        let joined = self.channels.remove(topic)?;
        self.app.count_channel(false);
        self.app.pubsub.unsubscribe(topic, self.socket);
        self.forget(topic, joined.owner);
        Some(joined)
    }

    /// Untracks everything `owner` tracked on `topic` and broadcasts the
    /// leaves (after unsubscribing, so the leaving client is not told).
    fn forget(&self, topic: &str, owner: Owner) {
        let diff = self.app.presence.untrack_all(topic, owner);
        if !diff.is_empty() {
            let payload = diff.to_payload();
            self.app
                .broadcast(topic, event::PRESENCE_DIFF, &payload, None);
        }
    }

    /// This socket as a subscriber whose broadcasts go to `outbox`.
    fn subscriber(&self, outbox: Outbox) -> Subscriber {
        Subscriber {
            socket: self.socket,
            serializer: self.serializer,
            outbox,
        }
    }

    /// Applies effects in call order, on behalf of the channel `topic`.
    fn apply(&self, topic: &str, join_ref: &Option<String>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Push { event, payload } => self.send(Outbound::Push {
                    join_ref: join_ref.clone(),
                    ref_: None,
                    topic: topic.to_owned(),
                    event,
                    payload,
                }),
                Effect::Broadcast {
                    topic: to,
                    event,
                    payload,
                    exclude_self,
                } => {
                    // broadcast_from skips the sending channel, which is
                    // subscribed to its own topic only.
                    let except = (exclude_self && to == topic).then_some(self.socket);
                    self.app.broadcast(&to, &event, &payload, except);
                }
            }
        }
    }

    fn context<'a>(&'a self, topic: &'a str, joined: &'a Joined) -> CallContext<'a> {
        CallContext {
            topic,
            socket_id: self.socket_id.as_deref(),
            claims: &self.claims,
            assigns: &joined.assigns,
            presence: Some(&self.app.presence),
            owner: Some(joined.owner),
        }
    }

    fn send(&self, message: Outbound) {
        match protocol::encode(self.serializer, &message) {
            Ok(frame) => {
                self.outbox.push(Item::Frame(frame.into()));
            }
            Err(error) => tracing::warn!(vsn = self.serializer.vsn(), "message not sent: {error}"),
        }
    }

    /// Logs a failed guest call with its cause and counts it on the slot.
    fn log_failure(&self, topic: &str, slot: &PluginSlot, call: &str, error: &PluginError) {
        let plugin = slot.current();
        tracing::warn!(app = %self.app.name, plugin = plugin.name(), topic, call, kind = error.kind(), "plugin failed: {error}");
        slot.record_call_failure(error.kind());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // `close` normally emptied the table; a session dropped without it
        // still takes its channels' presences along.
        for (topic, joined) in &self.channels {
            self.forget(topic, joined.owner);
        }
        self.app.unregister_socket(self.socket);
    }
}

fn reply(
    join_ref: Option<String>,
    ref_: Option<String>,
    topic: String,
    status: &str,
    response: Payload,
) -> Outbound {
    Outbound::Reply {
        join_ref,
        ref_,
        topic,
        status: status.to_owned(),
        response,
    }
}

/// The error reply for a topic with no route or no joined channel; its
/// join_ref is always null.
fn unmatched(message: Message) -> Outbound {
    let response = Payload::json_raw(r#"{"reason":"unmatched topic"}"#);
    reply(None, message.ref_, message.topic, event::ERROR, response)
}

/// `phx_close` / `phx_error`: ref = join_ref.
fn control(join_ref: &Option<String>, topic: String, event: &str) -> Outbound {
    let payload = if event == event::PHX_ERROR {
        Payload::json_raw(r#"{"reason":"channel_crash"}"#)
    } else {
        Payload::empty()
    };
    Outbound::Push {
        join_ref: join_ref.clone(),
        ref_: join_ref.clone(),
        topic,
        event: event.to_owned(),
        payload,
    }
}

fn crashed(join_ref: &Option<String>, topic: String) -> Outbound {
    control(join_ref, topic, event::PHX_ERROR)
}
