//! Local publish/subscribe: which sockets of an app are subscribed to which
//! topic, and fan-out to their outboxes.
//!
//! One `PubSub` per app, so topics never cross apps. Fan-out encodes a
//! broadcast once per serializer and hands every subscriber the same shared
//! bytes (Phoenix's "fastlane").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::protocol::{self, Outbound, Payload, Serializer};
use crate::socket::{Intercepted, Item, Outbox, WireFrame};

/// A socket subscribed to a topic.
#[derive(Clone)]
pub struct Subscriber {
    /// The socket's unique id within the server.
    pub socket: u64,
    pub serializer: Serializer,
    pub outbox: Outbox,
}

/// A topic's subscribers by socket: one subscription per socket, and
/// joining or leaving a crowded topic costs O(1).
type Subscribers = HashMap<u64, Subscriber>;

/// One app's subscriptions. Cheap to clone.
#[derive(Clone, Default)]
pub struct PubSub {
    topics: Arc<Mutex<HashMap<String, Subscribers>>>,
}

impl PubSub {
    pub fn subscribe(&self, topic: &str, subscriber: Subscriber) {
        self.lock()
            .entry(topic.to_owned())
            .or_default()
            .insert(subscriber.socket, subscriber);
    }

    /// Turns the subscription a joining channel made with a holding outbox
    /// into `subscriber` (with the socket's own outbox), first moving what
    /// the holding outbox caught into it. Under the lock, so no broadcast
    /// lands in between: the socket gets the topic's broadcasts from before
    /// its join reply, in order, right after that reply.
    pub fn release(&self, topic: &str, subscriber: Subscriber, held: &Outbox) {
        let mut topics = self.lock();
        subscriber.outbox.take_from(held);
        topics
            .entry(topic.to_owned())
            .or_default()
            .insert(subscriber.socket, subscriber);
    }

    pub fn unsubscribe(&self, topic: &str, socket: u64) {
        let mut topics = self.lock();
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.remove(&socket);
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Sends an event to every subscriber of `topic` but `except`: encoded
    /// once per serializer, or as an [`Intercepted`] item for the
    /// subscriber's `handle_out` when `intercepted`. Returns how many
    /// subscribers it reached.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<u64>,
        intercepted: bool,
    ) -> usize {
        // Fan-out runs under the lock: pushing to an outbox never waits.
        let topics = self.lock();
        let Some(subscribers) = topics.get(topic) else {
            return 0;
        };
        if intercepted {
            let item = Item::Intercept(Arc::new(Intercepted {
                topic: topic.to_owned(),
                event: event.to_owned(),
                payload: payload.clone(),
            }));
            return deliver(subscribers, except, |_| Some(item.clone()));
        }
        let message = Outbound::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload: payload.clone(),
        };
        // Encoded at most once per serializer, on first need.
        let (mut v1, mut v2): (Option<Option<WireFrame>>, Option<Option<WireFrame>>) = (None, None);
        deliver(subscribers, except, |serializer| {
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
            frame.clone().map(Item::Frame)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscribers>> {
        // Every update is a single step, so a poisoned map is still consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn deliver(
    subscribers: &Subscribers,
    except: Option<u64>,
    mut item_for: impl FnMut(Serializer) -> Option<Item>,
) -> usize {
    let mut reached = 0;
    for subscriber in subscribers.values() {
        if Some(subscriber.socket) == except {
            continue;
        }
        if let Some(item) = item_for(subscriber.serializer) {
            // An overflowed outbox is its socket's problem: it is being
            // disconnected, and the other subscribers still get the message.
            subscriber.outbox.push(item);
            reached += 1;
        }
    }
    reached
}
