//! Publish/subscribe: which sockets of an app are subscribed to which
//! topic, fan-out to their mailboxes, and the broker that carries
//! broadcasts to the other nodes of a cluster.
//!
//! One `PubSub` per app, so topics never cross apps. Each topic's
//! subscribers have a lock of their own: a fan-out to a crowded topic holds
//! up neither other topics' broadcasts nor joins elsewhere, and the app-wide
//! map is locked only to find a topic. Fan-out encodes a
//! broadcast once per serializer and hands every subscriber the same shared
//! bytes (Phoenix's "fastlane"), or posts it as a command for each
//! subscriber's `handle_out` when the topic's plugin intercepts the event.
//! Which of the two is decided by the caller, `App::broadcast`, the one way
//! to broadcast.
//!
//! # Layout
//! - this file: [`PubSub`], the local subscriptions and fan-out, and the
//!   broker seam: [`Broker`] (what an app's pub/sub needs from the other
//!   nodes) and [`Inbound`] (what the broker hands back to the app).
//! - `local`: [`LocalBroker`], a single node — nothing to carry, no cost.
//! - `redis_broker`: [`RedisBroker`], a cluster of nodes on one Redis: a
//!   Redis channel per topic with local subscribers, one publish per
//!   broadcast, presence replicated through Redis, node liveness.
//! - `wire`: what the nodes publish to each other, encoded. Pure code.
//! - `nodes`: the cluster's node registry and liveness, on Redis.
//!
//! Local delivery never waits for the broker: a broadcast reaches this
//! node's subscribers first, directly, and is then handed to the broker for
//! the others (so local service goes on when Redis is down). A node drops
//! its own messages when they come back from Redis.

mod local;
mod nodes;
mod redis_broker;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::mailbox::{Command, Intercepted, Mailbox, WireFrame};
use crate::protocol::{self, Outbound, Payload, Serializer};

pub use local::LocalBroker;
pub use redis_broker::{ClusterStatus, NodeStatus, RedisBroker};

/// How long a join waits for its topic's broker subscription (and the
/// presence of the other nodes) before it goes on without: a slow Redis
/// delays first joins on a node by at most this, never blocks them.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What an app's pub/sub needs from the other nodes. Every method but
/// `disconnect` is called from socket tasks (some under the pub/sub lock)
/// and must return at once: real work happens on the broker's own tasks.
pub trait Broker: Send + Sync {
    /// `topic` got its first subscriber on this node.
    fn subscribe(&self, topic: &str);
    /// `topic` lost its last subscriber on this node.
    fn unsubscribe(&self, topic: &str);
    /// Resolves once this node receives what other nodes publish to
    /// `topic` (and holds their presence there).
    fn ready(&self, topic: &str) -> Ready;
    /// Carries a broadcast to the other nodes, once, whatever their number
    /// of subscribers. Never waits: what cannot be queued is counted and
    /// dropped (this node's subscribers already have it).
    fn publish(&self, topic: &str, event: &str, payload: &Payload);
    /// Closes the sockets with this socket id on the other nodes; resolves
    /// to how many other nodes were told.
    fn disconnect<'a>(&'a self, socket_id: &'a str) -> BoxFuture<'a, usize>;
}

/// A boxed future, for the one async method of a `dyn Broker`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the broker hands to an app: what other nodes sent it.
pub trait Inbound: Send + Sync {
    /// The app's presence tracker, which keeps the other nodes' entries.
    fn presence(&self) -> &crate::presence::Presence;
    /// Delivers a broadcast from another node to this node's subscribers
    /// (fastlane or `handle_out`, as for a local broadcast).
    fn deliver(&self, topic: &str, event: &str, payload: &Payload);
    /// Closes this node's sockets with the socket id.
    fn disconnect(&self, socket_id: &str);
}

/// When a topic's broker subscription is in place ([`Broker::ready`]).
#[derive(Debug, Default)]
pub struct Ready(Option<tokio::sync::oneshot::Receiver<()>>);

impl Ready {
    /// Already in place (or nothing to wait for).
    pub fn now() -> Self {
        Self(None)
    }

    /// In place once `receiver` fires (or its sender is dropped).
    pub fn on(receiver: tokio::sync::oneshot::Receiver<()>) -> Self {
        Self(Some(receiver))
    }

    /// Waits, at most [`READY_TIMEOUT`].
    pub async fn wait(self) {
        if let Some(receiver) = self.0 {
            let _ = tokio::time::timeout(READY_TIMEOUT, receiver).await;
        }
    }
}

/// A socket subscribed to a topic.
#[derive(Clone)]
pub struct Subscriber {
    /// The socket's unique id within the server.
    pub socket: u64,
    pub serializer: Serializer,
    pub mailbox: Mailbox,
}

/// How a broadcast reaches a topic's subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Encoded once per serializer, the same bytes for everyone.
    Fastlane,
    /// Through each subscriber's `handle_out`.
    Intercepted,
}

/// A topic's subscribers by socket: one subscription per socket, and
/// joining or leaving a crowded topic costs O(1).
type Subscribers = HashMap<u64, Subscriber>;

/// One topic's subscribers, behind their own lock.
#[derive(Default)]
struct Topic {
    subscribers: Mutex<Listed>,
    /// `subscribers.len()`, readable without the lock (the dashboard's
    /// busiest topics).
    count: AtomicUsize,
}

#[derive(Default)]
struct Listed {
    subscribers: Subscribers,
    /// Taken out of the app's map (its last subscriber left): a subscriber
    /// that found it before must look again.
    removed: bool,
}

impl Topic {
    fn lock(&self) -> MutexGuard<'_, Listed> {
        // Every update is a single step, so a poisoned set is still consistent.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One app's subscriptions, and its broker. Cheap to clone.
///
/// Locks: the app's map, then (after letting it go) a topic's; only
/// `unsubscribe` takes the map while holding a topic (to remove the empty
/// topic), and nothing takes a topic while holding the map, so the two
/// never wait on each other in a circle.
#[derive(Clone)]
pub struct PubSub {
    topics: Arc<Mutex<HashMap<String, Arc<Topic>>>>,
    broker: Arc<dyn Broker>,
}

impl Default for PubSub {
    /// A single node's.
    fn default() -> Self {
        Self::new(Arc::new(LocalBroker))
    }
}

impl PubSub {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Self {
            topics: Arc::default(),
            broker,
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn subscribe(&self, topic: &str, subscriber: Subscriber) {
        self.add(topic, subscriber, |_| {});
    }

    /// Adds `subscriber` to `topic`, first running `before` under the
    /// topic's lock. The first subscriber tells the broker, under that
    /// lock too, so the broker sees first-and-last in order.
    fn add(&self, name: &str, subscriber: Subscriber, before: impl FnOnce(&Subscriber)) {
        loop {
            let topic = self.lock().entry(name.to_owned()).or_default().clone();
            let mut listed = topic.lock();
            if listed.removed {
                continue;
            }
            before(&subscriber);
            if listed.subscribers.is_empty() {
                self.broker.subscribe(name);
            }
            listed.subscribers.insert(subscriber.socket, subscriber);
            topic
                .count
                .store(listed.subscribers.len(), Ordering::Relaxed);
            return;
        }
    }

    /// Resolves once broadcasts from other nodes reach this node's
    /// subscribers of `topic` (at once on a single node), at most
    /// [`READY_TIMEOUT`]: a join waits for it after subscribing, so
    /// nothing published anywhere after its reply is missed.
    pub async fn ready(&self, topic: &str) {
        self.broker.ready(topic).wait().await;
    }

    /// Turns the subscription a joining channel made with a holding mailbox
    /// into `subscriber` (with the socket's own mailbox), first moving what
    /// the holding mailbox caught into it. Under the lock, so no broadcast
    /// lands in between: the socket gets the topic's broadcasts from before
    /// its join reply, in order, right after that reply.
    pub fn release(&self, topic: &str, subscriber: Subscriber, held: &Mailbox) {
        self.add(topic, subscriber, |subscriber| {
            subscriber.mailbox.take_from(held);
        });
    }

    pub fn unsubscribe(&self, name: &str, socket: u64) {
        let Some(topic) = self.lock().get(name).cloned() else {
            return;
        };
        let mut listed = topic.lock();
        listed.subscribers.remove(&socket);
        topic
            .count
            .store(listed.subscribers.len(), Ordering::Relaxed);
        if listed.subscribers.is_empty() && !listed.removed {
            listed.removed = true;
            let mut topics = self.lock();
            if topics.get(name).is_some_and(|t| Arc::ptr_eq(t, &topic)) {
                topics.remove(name);
            }
            // Under the map's lock: a new first subscriber, which needs it
            // to make the topic again, tells the broker after this.
            self.broker.unsubscribe(name);
        }
    }

    /// Delivers an event to this node's subscribers of `topic` (but the
    /// socket `except`), then hands it to the broker for the other nodes.
    /// Returns how many of this node's subscribers it reached.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<u64>,
        delivery: Delivery,
    ) -> usize {
        let reached = self.deliver(topic, event, payload, except, delivery);
        self.broker.publish(topic, event, payload);
        reached
    }

    /// Delivers an event to every subscriber of `topic` on this node but
    /// the socket `except`. Returns how many subscribers it reached.
    pub fn deliver(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<u64>,
        delivery: Delivery,
    ) -> usize {
        let Some(listed) = self.lock().get(topic).cloned() else {
            return 0;
        };
        // Fan-out runs under the topic's lock (posting to a mailbox never
        // waits), so every subscriber gets the topic's broadcasts in one
        // order.
        let listed = listed.lock();
        let subscribers = &listed.subscribers;
        if delivery == Delivery::Intercepted {
            let intercepted = Arc::new(Intercepted {
                topic: topic.to_owned(),
                event: event.to_owned(),
                payload: payload.clone(),
            });
            return fan_out(subscribers, except, |_| {
                Some(Post::Command(Command::Intercept(intercepted.clone())))
            });
        }
        let message = Outbound::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: payload.clone(),
        };
        // Encoded at most once per serializer, on first need.
        let (mut v1, mut v2): (Option<Option<WireFrame>>, Option<Option<WireFrame>>) = (None, None);
        fan_out(subscribers, except, |serializer| {
            let slot = match serializer {
                Serializer::V1 => &mut v1,
                Serializer::V2 => &mut v2,
            };
            let frame = slot.get_or_insert_with(|| {
                protocol::encode(serializer, &message)
                    .inspect_err(|e| {
                        tracing::debug!(
                            topic,
                            event,
                            vsn = serializer.vsn(),
                            "broadcast not sent: {e}"
                        )
                    })
                    .ok()
                    .map(WireFrame::from)
            });
            frame.clone().map(Post::Frame)
        })
    }

    /// How many topics have subscribers, and the `n` with the most, most
    /// first. Walks every topic under the map's lock (lookups wait, fan-outs
    /// in progress do not): for the dashboard, once a second, not for a hot
    /// path.
    pub fn busiest(&self, n: usize) -> (usize, Vec<(String, usize)>) {
        let topics = self.lock();
        let mut top: Vec<(usize, &String)> = Vec::with_capacity(n + 1);
        for (name, topic) in topics.iter() {
            let (count, topic) = (topic.count.load(Ordering::Relaxed), name);
            // Most subscribers first; ties by name, so the list is stable.
            let at = top.partition_point(|(c, t)| *c > count || (*c == count && *t < topic));
            if at < n {
                top.insert(at, (count, topic));
                top.truncate(n);
            }
        }
        let top = top
            .into_iter()
            .map(|(count, topic)| (topic.clone(), count))
            .collect();
        (topics.len(), top)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Topic>>> {
        // Every update is a single step, so a poisoned map is still consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What fan-out posts to one subscriber.
enum Post {
    Frame(WireFrame),
    Command(Command),
}

fn fan_out(
    subscribers: &Subscribers,
    except: Option<u64>,
    mut post_for: impl FnMut(Serializer) -> Option<Post>,
) -> usize {
    let mut reached = 0;
    for subscriber in subscribers.values() {
        if Some(subscriber.socket) == except {
            continue;
        }
        // An overflowed mailbox is its socket's problem: it is being
        // disconnected, and the other subscribers still get the message.
        match post_for(subscriber.serializer) {
            Some(Post::Frame(frame)) => subscriber.mailbox.post_frame(frame),
            Some(Post::Command(command)) => subscriber.mailbox.post_command(command),
            None => continue,
        };
        reached += 1;
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(socket: u64, serializer: Serializer) -> (Subscriber, Mailbox) {
        let mailbox = Mailbox::new(1 << 20);
        let subscriber = Subscriber {
            socket,
            serializer,
            mailbox: mailbox.clone(),
        };
        (subscriber, mailbox)
    }

    fn frames(mailbox: &Mailbox) -> Vec<String> {
        let mut frames = Vec::new();
        mailbox.take_frames(&mut frames);
        frames
            .into_iter()
            .map(|frame| match frame {
                WireFrame::Text(text) => text.to_string(),
                WireFrame::Binary(_) => "<binary>".into(),
            })
            .collect()
    }

    #[test]
    fn fastlane_encodes_once_per_serializer_and_skips_the_sender() {
        let pubsub = PubSub::default();
        let (a, a_box) = subscriber(1, Serializer::V2);
        let (b, b_box) = subscriber(2, Serializer::V1);
        let (c, c_box) = subscriber(3, Serializer::V2);
        for s in [a, b, c] {
            pubsub.subscribe("t", s);
        }
        let payload = Payload::json_raw(r#"{"x":1}"#);
        let reached = pubsub.deliver("t", "e", &payload, Some(3), Delivery::Fastlane);
        assert_eq!(reached, 2);
        assert_eq!(frames(&a_box), [r#"[null,null,"t","e",{"x":1}]"#]);
        assert_eq!(
            frames(&b_box),
            [r#"{"event":"e","payload":{"x":1},"ref":null,"topic":"t"}"#]
        );
        assert!(frames(&c_box).is_empty(), "the sender is skipped");
        assert_eq!(
            pubsub.deliver("other", "e", &payload, None, Delivery::Fastlane),
            0
        );
    }

    #[test]
    fn intercepted_events_become_commands() {
        let pubsub = PubSub::default();
        let (a, a_box) = subscriber(1, Serializer::V2);
        pubsub.subscribe("t", a);
        pubsub.deliver("t", "e", &Payload::empty(), None, Delivery::Intercepted);
        assert!(frames(&a_box).is_empty());
        let mut commands = Vec::new();
        a_box.take_commands(&mut commands);
        assert!(matches!(&commands[..], [Command::Intercept(i)] if i.event == "e"));
    }

    #[test]
    fn release_keeps_what_the_hold_caught_after_the_reply() {
        let pubsub = PubSub::default();
        let held = Mailbox::new(1 << 20);
        let (joining, own) = subscriber(1, Serializer::V2);
        pubsub.subscribe(
            "t",
            Subscriber {
                mailbox: held.clone(),
                ..joining.clone()
            },
        );
        pubsub.deliver("t", "during", &Payload::empty(), None, Delivery::Fastlane);
        own.post_frame(WireFrame::Text("reply".into()));
        pubsub.release("t", joining, &held);
        pubsub.deliver("t", "after", &Payload::empty(), None, Delivery::Fastlane);
        assert_eq!(
            frames(&own),
            [
                "reply",
                r#"[null,null,"t","during",{}]"#,
                r#"[null,null,"t","after",{}]"#
            ]
        );
    }

    #[test]
    fn busiest_lists_the_most_subscribed_topics_first() {
        let pubsub = PubSub::default();
        for (socket, topic) in [(1, "a"), (2, "a"), (3, "b"), (1, "c"), (2, "c"), (3, "c")] {
            pubsub.subscribe(topic, subscriber(socket, Serializer::V2).0);
        }
        pubsub.subscribe("d", subscriber(1, Serializer::V2).0);
        let (topics, top) = pubsub.busiest(3);
        assert_eq!(topics, 4);
        assert_eq!(
            top,
            [
                ("c".to_owned(), 3),
                ("a".to_owned(), 2),
                ("b".to_owned(), 1)
            ]
        );
    }

    /// Several publishers at once to a big room: every subscriber gets
    /// every broadcast, each publisher's in its order — indeed all in one
    /// order, the same for everyone.
    #[test]
    fn ten_thousand_subscribers_get_every_broadcast_in_one_order() {
        let pubsub = PubSub::default();
        let mailboxes: Vec<Mailbox> = (0..10_000)
            .map(|socket| {
                let (s, mailbox) = subscriber(socket, Serializer::V2);
                pubsub.subscribe("room", s);
                mailbox
            })
            .collect();
        let (publishers, each) = (3, 20);
        std::thread::scope(|scope| {
            for p in 0..publishers {
                let pubsub = &pubsub;
                scope.spawn(move || {
                    for i in 0..each {
                        let payload = Payload::json_raw(&format!(r#"{{"p":{p},"i":{i}}}"#));
                        let reached =
                            pubsub.deliver("room", "m", &payload, None, Delivery::Fastlane);
                        assert_eq!(reached, 10_000);
                    }
                });
            }
        });
        let first = frames(&mailboxes[0]);
        assert_eq!(first.len(), publishers * each, "every broadcast");
        for p in 0..publishers {
            let mine: Vec<&String> = first
                .iter()
                .filter(|f| f.contains(&format!(r#""p":{p},"#)))
                .collect();
            let expected: Vec<String> = (0..each)
                .map(|i| format!(r#"[null,null,"room","m",{{"p":{p},"i":{i}}}]"#))
                .collect();
            assert_eq!(
                mine,
                expected.iter().collect::<Vec<_>>(),
                "publisher {p}'s order"
            );
        }
        for mailbox in &mailboxes[1..] {
            assert_eq!(frames(mailbox), first, "the same order for everyone");
        }
    }

    #[test]
    fn a_topic_emptied_and_joined_again_concurrently_keeps_its_subscriber() {
        let broker = Arc::new(Recording::default());
        let pubsub = PubSub::new(broker.clone());
        for round in 0..200u64 {
            let (a, _) = subscriber(2 * round, Serializer::V2);
            pubsub.subscribe("t", a);
            let (b, b_box) = subscriber(2 * round + 1, Serializer::V2);
            std::thread::scope(|scope| {
                scope.spawn(|| pubsub.unsubscribe("t", 2 * round));
                scope.spawn(|| pubsub.subscribe("t", b));
            });
            assert_eq!(
                pubsub.deliver("t", "e", &Payload::empty(), None, Delivery::Fastlane),
                1
            );
            assert_eq!(frames(&b_box).len(), 1, "round {round}: b is subscribed");
            pubsub.unsubscribe("t", 2 * round + 1);
        }
        assert!(pubsub.lock().is_empty());
        // The broker heard subscribe and unsubscribe in turn, never two in a row.
        let heard = broker.0.lock().unwrap();
        for pair in heard.windows(2) {
            assert_ne!(pair[0], pair[1], "{heard:?}");
        }
    }

    #[test]
    fn unsubscribe_drops_an_empty_topic() {
        let pubsub = PubSub::default();
        let (a, _) = subscriber(1, Serializer::V2);
        pubsub.subscribe("t", a);
        pubsub.unsubscribe("t", 1);
        assert!(pubsub.lock().is_empty());
    }

    /// Records what a PubSub asks of its broker.
    #[derive(Default)]
    struct Recording(Mutex<Vec<String>>);

    impl Broker for Recording {
        fn subscribe(&self, topic: &str) {
            self.0.lock().unwrap().push(format!("subscribe {topic}"));
        }
        fn unsubscribe(&self, topic: &str) {
            self.0.lock().unwrap().push(format!("unsubscribe {topic}"));
        }
        fn ready(&self, _topic: &str) -> Ready {
            Ready::now()
        }
        fn publish(&self, topic: &str, event: &str, _payload: &Payload) {
            self.0
                .lock()
                .unwrap()
                .push(format!("publish {topic} {event}"));
        }
        fn disconnect<'a>(&'a self, _socket_id: &'a str) -> BoxFuture<'a, usize> {
            Box::pin(std::future::ready(0))
        }
    }

    #[test]
    fn the_broker_hears_first_and_last_subscribers_and_one_publish_per_broadcast() {
        let broker = Arc::new(Recording::default());
        let pubsub = PubSub::new(broker.clone());
        let (a, a_box) = subscriber(1, Serializer::V2);
        let (b, b_box) = subscriber(2, Serializer::V2);
        pubsub.subscribe("t", a);
        pubsub.subscribe("t", b);
        // broadcast_from by socket 1: skipped here only; the other nodes
        // get it once, for all their subscribers.
        let reached = pubsub.broadcast("t", "e", &Payload::empty(), Some(1), Delivery::Fastlane);
        assert_eq!(reached, 1);
        assert!(frames(&a_box).is_empty());
        assert_eq!(frames(&b_box).len(), 1);
        pubsub.unsubscribe("t", 1);
        pubsub.unsubscribe("t", 2);
        assert_eq!(
            *broker.0.lock().unwrap(),
            ["subscribe t", "publish t e", "unsubscribe t"]
        );
    }
}
