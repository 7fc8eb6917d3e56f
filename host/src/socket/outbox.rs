//! A socket's outbound queue, bounded in bytes.
//!
//! Everything bound for one client goes through its outbox, in order:
//! replies and pushes from its own session, fastlane broadcast frames shared
//! with every other subscriber, and intercepted broadcasts waiting for the
//! session's `handle_out`. When the queued bytes pass the cap the outbox
//! overflows: it refuses everything after, and the transport disconnects the
//! client as a slow consumer — a reconnect can recover, a lost message can't.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::Notify;

use super::Close;
use crate::protocol::{Frame, Payload};

/// An encoded frame, cheap to clone for fan-out.
#[derive(Debug, Clone, PartialEq)]
pub enum WireFrame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl WireFrame {
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Frame> for WireFrame {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Text(text) => Self::Text(text.into()),
            Frame::Binary(bytes) => Self::Binary(bytes.into()),
        }
    }
}

/// A broadcast of an event a plugin intercepts: the subscriber's session
/// runs `handle_out` for it.
#[derive(Debug)]
pub struct Intercepted {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

#[derive(Debug, Clone)]
pub enum Item {
    Frame(WireFrame),
    Intercept(Arc<Intercepted>),
    /// Some routes were removed: end the channels on retired plugins.
    Reroute,
    /// Close the connection.
    Close(Close),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.len(),
            Self::Intercept(i) => i.topic.len() + i.event.len() + i.payload.len(),
            Self::Reroute | Self::Close(_) => 0,
        }
    }
}

/// The handle to one socket's queue; clones share it.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Notify,
    cap: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    bytes: usize,
    overflowed: bool,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                cap,
            }),
        }
    }

    /// Queues an item. Returns `false` if the outbox has overflowed (now or
    /// before), in which case the item is dropped along with the socket.
    pub fn push(&self, item: Item) -> bool {
        let len = item.len();
        {
            let mut state = self.lock();
            if state.overflowed {
                return false;
            }
            if state.bytes + len > self.shared.cap {
                state.overflowed = true;
                state.items.clear();
                state.bytes = 0;
            } else {
                state.bytes += len;
                state.items.push_back(item);
            }
        }
        self.shared.ready.notify_one();
        !self.lock().overflowed
    }

    /// Queues a control item past the byte cap, even on an overflowed
    /// outbox: a close must get through.
    pub fn push_control(&self, item: Item) {
        self.lock().items.push_back(item);
        self.shared.ready.notify_one();
    }

    /// Moves everything queued in `held` (a holding outbox, see
    /// `PubSub::release`) to the end of this one. If `held` overflowed, so
    /// does this one: what it dropped cannot be recovered.
    pub fn take_from(&self, held: &Outbox) {
        let (items, overflowed) = {
            let mut held = held.lock();
            held.bytes = 0;
            (std::mem::take(&mut held.items), held.overflowed)
        };
        if overflowed {
            let mut state = self.lock();
            state.overflowed = true;
            state.items.clear();
            state.bytes = 0;
            drop(state);
            self.shared.ready.notify_one();
            return;
        }
        for item in items {
            self.push(item);
        }
    }

    /// Moves everything queued into `into`.
    pub fn drain(&self, into: &mut Vec<Item>) {
        let mut state = self.lock();
        into.extend(state.items.drain(..));
        state.bytes = 0;
    }

    /// Whether the client fell too far behind and must be disconnected.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Waits until something is pushed (or the outbox overflows). Single
    /// consumer: the socket's own task.
    pub async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic: every update is one step.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Item {
        Item::Frame(WireFrame::Text(text.to_owned().into()))
    }

    #[test]
    fn queues_in_order_and_drains() {
        let outbox = Outbox::new(100);
        assert!(outbox.push(frame("a")));
        assert!(outbox.push(frame("b")));
        let mut items = Vec::new();
        outbox.drain(&mut items);
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[0], Item::Frame(WireFrame::Text(t)) if t.as_str() == "a"));
    }

    #[test]
    fn overflows_past_the_cap_and_stays_overflowed() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(frame("12345")));
        assert!(outbox.push(frame("67890")));
        assert!(!outbox.push(frame("x")));
        assert!(outbox.overflowed());
        let mut items = Vec::new();
        outbox.drain(&mut items);
        assert!(items.is_empty(), "an overflowed outbox holds nothing");
        assert!(!outbox.push(frame("y")));
    }

    #[test]
    fn take_from_appends_held_items_in_order() {
        let outbox = Outbox::new(100);
        let held = Outbox::new(100);
        assert!(outbox.push(frame("reply")));
        assert!(held.push(frame("b1")));
        assert!(held.push(frame("b2")));
        outbox.take_from(&held);
        let mut items = Vec::new();
        outbox.drain(&mut items);
        let texts: Vec<&str> = items
            .iter()
            .map(|item| match item {
                Item::Frame(WireFrame::Text(t)) => t.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(texts, ["reply", "b1", "b2"]);
        let mut rest = Vec::new();
        held.drain(&mut rest);
        assert!(rest.is_empty());
    }

    #[test]
    fn an_overflowed_hold_overflows_the_outbox() {
        let outbox = Outbox::new(100);
        let held = Outbox::new(4);
        assert!(!held.push(frame("too long")));
        outbox.take_from(&held);
        assert!(outbox.overflowed());
    }

    #[test]
    fn drained_bytes_free_room() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(frame("1234567890")));
        outbox.drain(&mut Vec::new());
        assert!(outbox.push(frame("1234567890")));
    }
}
