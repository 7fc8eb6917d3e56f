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

/// One app's subscriptions. Cheap to clone.
#[derive(Clone, Default)]
pub struct PubSub {
    topics: Arc<Mutex<HashMap<String, Vec<Subscriber>>>>,
}

impl PubSub {
    pub fn subscribe(&self, topic: &str, subscriber: Subscriber) {
        let mut topics = self.lock();
        let subscribers = topics.entry(topic.to_owned()).or_default();
        subscribers.retain(|s| s.socket != subscriber.socket);
        subscribers.push(subscriber);
    }

    /// Turns the subscription a joining channel made with a holding outbox
    /// into `subscriber` (with the socket's own outbox), first moving what
    /// the holding outbox caught into it. Under the lock, so no broadcast
    /// lands in between: the socket gets the topic's broadcasts from before
    /// its join reply, in order, right after that reply.
    pub fn release(&self, topic: &str, subscriber: Subscriber, held: &Outbox) {
        let mut topics = self.lock();
        subscriber.outbox.take_from(held);
        let subscribers = topics.entry(topic.to_owned()).or_default();
        // Searched from the end: the hold was added moments ago.
        match subscribers
            .iter()
            .rposition(|s| s.socket == subscriber.socket)
        {
            Some(i) => subscribers[i] = subscriber,
            None => subscribers.push(subscriber),
        }
    }

    pub fn unsubscribe(&self, topic: &str, socket: u64) {
        let mut topics = self.lock();
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.retain(|s| s.socket != socket);
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
        let mut encoded: HashMap<Serializer, Option<WireFrame>> = HashMap::with_capacity(2);
        deliver(subscribers, except, |serializer| {
            let frame = encoded.entry(serializer).or_insert_with(|| {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Subscriber>>> {
        // Every update is a single step, so a poisoned map is still consistent.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn deliver(
    subscribers: &[Subscriber],
    except: Option<u64>,
    mut item_for: impl FnMut(Serializer) -> Option<Item>,
) -> usize {
    let mut reached = 0;
    for subscriber in subscribers {
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
