//! The Phoenix socket state machine for one connection: heartbeats, joins,
//! leaves and events dispatched to plugins, in the order of the Phoenix
//! protocol, and the commands its mailbox brings (intercepted broadcasts,
//! reroutes, closes).
//!
//! The session owns its channel table (no locks: only its socket's task
//! touches it) and writes everything it sends into its mailbox's frame lane.
//! Plugin calls are awaited in place, so the messages of one socket are
//! handled strictly one after another and a join's reply always precedes
//! what follows it. Guest code runs only from here.
//!
//! # How a channel ends
//! However a channel ends — leave, stop, crash, duplicate join, route
//! removed, connection gone, session dropped — it goes through [`detach`]
//! (out of the table, uncounted, unsubscribed, its presence entries removed
//! with a `presence_diff` to the topic), and then, but for a drop, through
//! [`conclude`] (`terminate`, then what the client is told). `end` is the
//! two in a row; a duplicate join runs the new join between them, as Phoenix
//! orders the wire: the new reply, the old channel's `terminate` pushes,
//! then its `phx_close`.
//!
//! [`detach`]: Session::detach
//! [`conclude`]: Session::conclude

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::time::{DelayQueue, delay_queue};

use crate::app::App;
use crate::apps::ConnectionPermit;
use crate::auth::Identity;
use crate::config::Limits;
use crate::mailbox::{Close, Command, Intercepted, Mailbox};
use crate::metrics::JoinOutcome;
use crate::presence::Owner;
use crate::protocol::{self, Message, Outbound, Payload, Serializer, event};
use crate::pubsub::Subscriber;
use crate::runtime::{CallContext, Called, Effect, Outcome, PluginError, PluginSlot};

use super::channels::Channels;
use super::rate::{Rates, Verdict};

/// Source of server-unique socket numbers, used to tell subscribers apart.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

/// A joined channel: plain data, a few bytes plus its assigns.
struct Joined {
    /// The join's ref (V1: the join message's ref); control pushes carry it.
    join_ref: Option<String>,
    /// The route's plugin; each call uses whatever version is current.
    slot: Arc<PluginSlot>,
    /// The channel's state, a JSON object owned by the host.
    assigns: Arc<str>,
    /// Owns the presence entries the channel tracks.
    owner: Owner,
    /// The channel's pending timers, by id.
    timers: HashMap<u64, Pending>,
}

/// Where a pending timer waits.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// In the socket's timer queue.
    Queued(delay_queue::Key),
    /// A zero delay: in the socket's due list, which runs before the next
    /// client message is read (Phoenix's `send(self(), msg)`).
    Due,
}

/// A timer that fired: `handle_info(message)` on the channel of `topic`.
pub struct Fired {
    topic: String,
    id: u64,
    message: String,
}

/// Where a callback's reply goes.
enum ReplyTo {
    /// To the message with this ref.
    Message(Option<String>),
    /// Nowhere: `handle_out` has no message to answer.
    Nobody,
}

/// How a channel ended, which decides whether `terminate` runs and what the
/// client is told.
enum Ending {
    /// The client left (its leave was answered): `terminate("leave")`,
    /// then `phx_close`.
    Left,
    /// The plugin stopped it: `terminate(reason)`, then `phx_close` for
    /// `normal`, `shutdown` and `shutdown:…`, `phx_error` for the rest.
    Stopped(String),
    /// A callback failed: its instance is gone, so no `terminate`;
    /// `phx_error`.
    Crashed,
    /// A new join of the topic replaced it: `terminate("duplicate_join")`,
    /// then `phx_close` with the old join_ref.
    Replaced,
    /// A config change removed its route: `phx_error`, so the client
    /// rejoins and meets the new routes.
    Rerouted,
    /// The connection is gone: `terminate("closed")`, nothing to send.
    Closed,
}

pub struct Session {
    app: Arc<App>,
    serializer: Serializer,
    /// Server-unique number of this socket.
    socket: u64,
    /// `users_socket:<sub>` for sockets with a token subject.
    socket_id: Option<Arc<str>>,
    /// Verified token claims as a JSON object.
    claims: Arc<str>,
    mailbox: Mailbox,
    channels: Channels<Joined>,
    /// Every channel's pending timers, made on the socket's first timer
    /// (an idle socket holds none).
    timers: Option<Box<DelayQueue<Fired>>>,
    /// Zero-delay timers, in the order they were set.
    due: VecDeque<Fired>,
    /// How fast the client may send.
    rates: Rates,
    /// This connection's place in the server's and the app's limits.
    _permit: ConnectionPermit,
}

impl Session {
    /// A new session, registered with its app until dropped.
    pub fn new(
        app: Arc<App>,
        serializer: Serializer,
        identity: Identity,
        permit: ConnectionPermit,
    ) -> Self {
        let Identity { socket_id, claims } = identity;
        let state = app.state();
        let mailbox = Mailbox::new(state.limits().outbox_bytes);
        let rates = Rates::new(state.limits());
        let socket = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        app.register_socket(socket, socket_id.clone(), mailbox.clone());
        Self {
            app,
            serializer,
            socket,
            socket_id: socket_id.map(Into::into),
            claims: claims.into(),
            mailbox,
            channels: Channels::default(),
            timers: None,
            due: VecDeque::new(),
            rates,
            _permit: permit,
        }
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// The app's limits now.
    pub fn limits(&self) -> Limits {
        self.app.state().limits().clone()
    }

    /// Handles one decoded message from the client.
    ///
    /// The returned future holds a whole plugin call's state (kilobytes);
    /// callers that live as long as a connection box it, so an idle socket
    /// does not carry that space.
    pub async fn handle(&mut self, message: Message) -> Result<(), Close> {
        self.app.metrics().message_in();
        let state = self.app.state();
        let limits = state.limits();
        let join = message.event == event::PHX_JOIN;
        let refusal = match self.rates.admit(limits, join) {
            Verdict::Pass => Self::oversized(&message, limits),
            Verdict::Refuse => {
                self.app.metrics().rate_limited(join);
                Some(rate_limited())
            }
            Verdict::Close => return Err(Close::RateLimited),
        };
        if let Some(refusal) = refusal {
            // The reply echoes the topic if it fits the client's outbox (a
            // client matches replies by topic); past that, only up to the
            // limit: echoing a megabyte topic back would overflow the
            // outbox and disconnect the client instead of answering it.
            let Message {
                join_ref,
                ref_,
                topic,
                ..
            } = message;
            let clip = |text: Option<String>| text.map(|t| clipped(t, MAX_REF_BYTES));
            let room = limits.outbox_bytes.min(limits.max_frame_bytes) / 2;
            let topic = match topic.len() > room {
                true => clipped(topic, limits.max_topic_bytes),
                false => topic,
            };
            self.send(reply(
                clip(join_ref),
                clip(ref_),
                topic,
                event::ERROR,
                refusal,
            ));
            return Ok(());
        }
        drop(state);
        if message.topic == event::PHOENIX && message.event == event::HEARTBEAT {
            let reply = reply(
                None,
                message.ref_,
                message.topic,
                event::OK,
                Payload::empty(),
            );
            self.send(reply);
            return Ok(());
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
        Ok(())
    }

    /// Acts on a command from the mailbox; `Err` when the connection must
    /// close.
    pub async fn command(&mut self, command: Command) -> Result<(), Close> {
        match command {
            Command::Intercept(intercepted) => self.handle_out(&intercepted).await,
            Command::Reroute => self.reroute().await,
            Command::Close(close) => return Err(close),
        }
        Ok(())
    }

    /// Whether any channel has a pending timer.
    pub fn has_timers(&self) -> bool {
        self.timers.is_some() || !self.due.is_empty()
    }

    /// The next timer to fire: a due one at once, else the earliest queued.
    /// Pending forever while none is set: the loop only waits on it when
    /// [`has_timers`](Self::has_timers).
    pub async fn next_timer(&mut self) -> Fired {
        if let Some(fired) = self.due.pop_front() {
            return fired;
        }
        poll_fn(|cx| match self.timers.as_mut() {
            Some(queue) => match queue.poll_expired(cx) {
                std::task::Poll::Ready(Some(expired)) => {
                    std::task::Poll::Ready(expired.into_inner())
                }
                _ => std::task::Poll::Pending,
            },
            None => std::task::Poll::Pending,
        })
        .await
    }

    /// A timer fired: its channel's `handle_info` runs on the current
    /// assigns and the current code.
    pub async fn fire(&mut self, fired: Fired) {
        let Fired { topic, id, message } = fired;
        let Some(joined) = self.channels.get_mut(&topic) else {
            return;
        };
        if joined.timers.remove(&id).is_none() {
            return;
        }
        self.app.timers().release(1);
        self.drop_empty_queue();
        let Some(joined) = self.channels.get(&topic) else {
            return;
        };
        let plugin = joined.slot.current();
        let result = plugin
            .handle_info(self.context(&topic, joined), &message)
            .await;
        self.settle(&topic, result, ReplyTo::Nobody).await;
    }

    /// The connection is gone: every channel ends (`terminate("closed")`).
    pub async fn close(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.end(&topic, Ending::Closed).await;
        }
    }

    /// An error response for a topic, event name or ref over the app's
    /// limits.
    fn oversized(message: &Message, limits: &Limits) -> Option<Payload> {
        let long_ref = |r: &Option<String>| r.as_ref().is_some_and(|r| r.len() > MAX_REF_BYTES);
        if message.topic.len() > limits.max_topic_bytes {
            Some(Payload::json_raw(r#"{"reason":"topic too long"}"#))
        } else if message.event.len() > limits.max_event_bytes {
            Some(Payload::json_raw(r#"{"reason":"event too long"}"#))
        } else if long_ref(&message.ref_) || long_ref(&message.join_ref) {
            Some(Payload::json_raw(r#"{"reason":"ref too long"}"#))
        } else {
            None
        }
    }

    /// Runs `handle_out` for an intercepted broadcast, if the channel is
    /// still joined.
    async fn handle_out(&mut self, intercepted: &Intercepted) {
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

    /// Ends the channels whose plugin a config change removed.
    async fn reroute(&mut self) {
        let retired: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, joined)| joined.slot.is_retired())
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in retired {
            tracing::info!(topic, "channel ended: its route was removed");
            self.end(&topic, Ending::Rerouted).await;
        }
    }

    async fn join(&mut self, message: Message) {
        let state = self.app.state();
        let Some(slot) = state.router().route(&message.topic).cloned() else {
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
        if self.channels.len() >= state.limits().channels_per_socket {
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
        // before it replies, but into a holding mailbox: what the topic
        // broadcasts meanwhile (say, another channel's presence_diff) waits
        // there and follows the join reply. Subscribing only after the join
        // would lose what came between a presence_state the join listed and
        // the subscription.
        let held = Mailbox::new(state.limits().outbox_bytes);
        self.app
            .pubsub()
            .subscribe(&topic, self.subscriber(held.clone()));
        // In a cluster, a node's first join of a topic waits (boundedly)
        // until the node receives the topic from the other nodes and holds
        // their presence: nothing sent after the reply is missed, and
        // `presence_state` lists every node. At once on a single node.
        self.app.pubsub().ready(&topic).await;
        let owner = self.app.presence().owner();
        let empty: Arc<str> = "{}".into();
        let ctx = self.call_context(&topic, &empty, Some(owner), Vec::new());
        let result = plugin.join(ctx, &payload).await;
        self.app.metrics().join(join_outcome(&result));
        if !matches!(result, Ok(Called { value: Ok(_), .. })) {
            // A refused or crashed join never existed; what it tracked goes.
            self.app.pubsub().unsubscribe(&topic, self.socket);
            self.untrack(&topic, owner);
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
                    .pubsub()
                    .release(&topic, self.subscriber(self.mailbox.clone()), &held);
                tracing::debug!(topic, plugin = plugin.name(), "joined");
                self.app.count_channel(true);
                self.channels.insert(
                    topic.clone(),
                    Joined {
                        join_ref: channel_ref.clone(),
                        slot,
                        assigns: assigns.map_or(empty, Into::into),
                        owner,
                        timers: HashMap::new(),
                    },
                );
                // After the table entry: a timer the join set belongs to it.
                // (A broadcast over the app's rate is dropped: the join's
                // reply has gone.)
                self.apply(&topic, &channel_ref, effects);
            }
            // A refused join never existed: what it pushed, broadcast or
            // scheduled is dropped.
            Ok(Called {
                value: Err(response),
                effects,
            }) => {
                self.forgo(effects);
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
        let Some(old) = self.detach(&topic) else {
            return;
        };
        self.join(message).await;
        self.conclude(&topic, old, Ending::Replaced).await;
    }

    async fn leave(&mut self, message: Message) {
        let Some(joined) = self.channels.get(&message.topic) else {
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
        self.end(&topic, Ending::Left).await;
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
                return self.end(topic, Ending::Crashed).await;
            }
        };
        let broadcast_refused = self.apply(topic, &join_ref, effects);
        if let (Some((status, response)), ReplyTo::Message(ref_)) = (outcome.reply, reply_to) {
            // The client learns that what it sent did not go out.
            let (status, response) = match broadcast_refused {
                true => (event::ERROR.to_owned(), rate_limited()),
                false => (status, response),
            };
            self.send(reply(
                join_ref.clone(),
                ref_,
                topic.to_owned(),
                &status,
                response,
            ));
        }
        if let (Some(assigns), Some(joined)) = (outcome.assigns, self.channels.get_mut(topic)) {
            joined.assigns = assigns.into();
        }
        if let Some(reason) = outcome.stop {
            self.end(topic, Ending::Stopped(reason)).await;
        }
    }

    /// Ends the channel on `topic`, if joined: [`detach`](Self::detach),
    /// then [`conclude`](Self::conclude).
    async fn end(&mut self, topic: &str, ending: Ending) {
        if let Some(joined) = self.detach(topic) {
            self.conclude(topic, joined, ending).await;
        }
    }

    /// Takes a channel out of the table: it no longer counts, receives
    /// broadcasts, or is present on its topic. Everything a channel holds
    /// outside its socket is released here, and only here.
    fn detach(&mut self, topic: &str) -> Option<Joined> {
        let mut joined = self.channels.remove(topic)?;
        self.app.count_channel(false);
        self.app.pubsub().unsubscribe(topic, self.socket);
        self.untrack(topic, joined.owner);
        let pending = joined.timers.len();
        for (_, timer) in joined.timers.drain() {
            if let (Pending::Queued(key), Some(queue)) = (timer, self.timers.as_mut()) {
                queue.remove(&key);
            }
        }
        self.due.retain(|fired| fired.topic != topic);
        self.app.timers().release(pending);
        self.drop_empty_queue();
        Some(joined)
    }

    /// Runs `terminate` (unless the channel crashed or was rerouted) and
    /// tells the client how the channel ended.
    async fn conclude(&mut self, topic: &str, joined: Joined, ending: Ending) {
        let reason = match &ending {
            Ending::Left => Some("leave"),
            Ending::Stopped(reason) => Some(reason.as_str()),
            Ending::Replaced => Some("duplicate_join"),
            Ending::Closed => Some("closed"),
            Ending::Crashed | Ending::Rerouted => None,
        };
        if let Some(reason) = reason {
            self.terminate(topic, &joined, reason).await;
        }
        let notice = match &ending {
            Ending::Left | Ending::Replaced => Some(event::PHX_CLOSE),
            Ending::Stopped(reason) if graceful(reason) => Some(event::PHX_CLOSE),
            Ending::Stopped(reason) => {
                tracing::info!(topic, reason, "channel stopped abnormally");
                Some(event::PHX_ERROR)
            }
            Ending::Crashed | Ending::Rerouted => Some(event::PHX_ERROR),
            Ending::Closed => None,
        };
        if let Some(event) = notice {
            self.send(control(&joined.join_ref, topic.to_owned(), event));
        }
    }

    /// Calls `terminate`, best effort, and applies its effects. The channel
    /// has left the table and its presence already: `terminate` may list
    /// presences but not track.
    async fn terminate(&mut self, topic: &str, joined: &Joined, reason: &str) {
        let plugin = joined.slot.current();
        // No owner: the channel is gone, so it can neither track nor set timers.
        let ctx = self.call_context(topic, &joined.assigns, None, Vec::new());
        match plugin.terminate(ctx, reason).await {
            Ok(called) => {
                self.apply(topic, &joined.join_ref, called.effects);
            }
            Err(error) => self.log_failure(topic, &joined.slot, "terminate", &error),
        }
    }

    /// Untracks everything `owner` tracked on `topic` and broadcasts the
    /// leaves (after unsubscribing, so the leaving client is not told).
    fn untrack(&self, topic: &str, owner: Owner) {
        let diff = self.app.presence().untrack_all(topic, owner);
        self.app.presence_changed(topic, diff);
    }

    /// This socket as a subscriber whose broadcasts go to `mailbox`.
    fn subscriber(&self, mailbox: Mailbox) -> Subscriber {
        Subscriber {
            socket: self.socket,
            serializer: self.serializer,
            mailbox,
        }
    }

    /// Applies effects in call order, on behalf of the channel `topic`.
    /// Returns whether a broadcast was refused for the app's rate (and
    /// dropped; the others still apply).
    fn apply(&mut self, topic: &str, join_ref: &Option<String>, effects: Vec<Effect>) -> bool {
        let mut broadcast_refused = false;
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
                    broadcast_refused |= self.app.broadcast(&to, &event, &payload, except).is_err();
                }
                Effect::PresenceDiff { topic, diff } => self.app.presence_changed(&topic, diff),
                Effect::SendAfter { id, delay, message } => {
                    let Some(joined) = self.channels.get_mut(topic) else {
                        // The channel ended in the same callback (a stop).
                        self.app.timers().release(1);
                        continue;
                    };
                    let fired = Fired {
                        topic: topic.to_owned(),
                        id,
                        message,
                    };
                    let timer = if delay.is_zero() {
                        self.due.push_back(fired);
                        Pending::Due
                    } else {
                        let queue = self.timers.get_or_insert_with(Default::default);
                        Pending::Queued(queue.insert(fired, delay))
                    };
                    joined.timers.insert(id, timer);
                }
                Effect::CancelTimer { id } => {
                    let timer = self
                        .channels
                        .get_mut(topic)
                        .and_then(|joined| joined.timers.remove(&id));
                    match timer {
                        Some(Pending::Queued(key)) => {
                            if let Some(queue) = self.timers.as_mut() {
                                queue.remove(&key);
                            }
                        }
                        Some(Pending::Due) => self.due.retain(|fired| fired.id != id),
                        None => continue,
                    }
                    self.app.timers().release(1);
                    self.drop_empty_queue();
                }
            }
        }
        broadcast_refused
    }

    /// Drops effects that will never apply, giving back the timer places
    /// their `send-after`s took.
    fn forgo(&self, effects: Vec<Effect>) {
        let timers = effects
            .iter()
            .filter(|effect| matches!(effect, Effect::SendAfter { .. }))
            .count();
        self.app.timers().release(timers);
    }

    /// Frees the timer queue once no timer is pending.
    fn drop_empty_queue(&mut self) {
        if self.timers.as_ref().is_some_and(|queue| queue.is_empty()) {
            self.timers = None;
        }
    }

    /// The context of a call on the joined channel of `topic`.
    fn context<'a>(&'a self, topic: &'a str, joined: &'a Joined) -> CallContext<'a> {
        let timers = joined.timers.keys().copied().collect();
        self.call_context(topic, &joined.assigns, Some(joined.owner), timers)
    }

    /// A call's context: who the socket is, the channel's state, and the
    /// app's presence, storage and limits as they are now.
    fn call_context<'a>(
        &'a self,
        topic: &'a str,
        assigns: &'a Arc<str>,
        owner: Option<Owner>,
        timers: Vec<u64>,
    ) -> CallContext<'a> {
        let state = self.app.state();
        CallContext {
            topic,
            socket_id: self.socket_id.as_ref(),
            claims: &self.claims,
            assigns,
            presence: Some(self.app.presence()),
            owner,
            timers,
            timer_budget: Some(self.app.timers()),
            kv: state.kv().cloned(),
            limits: state.limits().guest(),
            timers_per_app: state.limits().timers_per_app,
        }
    }

    fn send(&self, message: Outbound) {
        match protocol::encode(self.serializer, &message) {
            Ok(frame) => {
                self.mailbox.post_frame(frame.into());
            }
            Err(error) => tracing::warn!(vsn = self.serializer.vsn(), "message not sent: {error}"),
        }
    }

    /// Logs a failed guest call with its cause and counts it on the slot.
    fn log_failure(&self, topic: &str, slot: &PluginSlot, call: &str, error: &PluginError) {
        let plugin = slot.current();
        tracing::warn!(app = %self.app.name(), plugin = plugin.name(), topic, call, kind = error.kind(), "plugin failed: {error}");
        slot.record_call_failure(error.kind());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // `close` normally emptied the table; a session dropped without it
        // (its task cancelled, say) still releases what its channels hold.
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.detach(&topic);
        }
        self.app.unregister_socket(self.socket);
    }
}

/// How a plugin's `join` ended, for `roost_joins_total`.
fn join_outcome(result: &Result<Called<Result<Outcome, Payload>>, PluginError>) -> JoinOutcome {
    match result {
        Ok(Called { value: Ok(_), .. }) => JoinOutcome::Ok,
        Ok(_) => JoinOutcome::Error,
        Err(_) => JoinOutcome::Crashed,
    }
}

/// Longest `ref` or `join_ref` a message may carry: the official client's
/// are short decimals, and every reply echoes them.
const MAX_REF_BYTES: usize = 64;

/// `text` cut to at most `max` bytes, on a character boundary.
fn clipped(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Whether a stop reason closes the channel rather than erroring it, as for
/// a Phoenix channel process exit.
fn graceful(reason: &str) -> bool {
    matches!(reason, "normal" | "shutdown") || reason.starts_with("shutdown:")
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

/// The response of a reply refused for a rate.
fn rate_limited() -> Payload {
    Payload::json_raw(r#"{"reason":"rate limited"}"#)
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
