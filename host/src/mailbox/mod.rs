//! A socket's mailbox: everything bound for one connection, in two lanes,
//! bounded in bytes together.
//!
//! - **Frames** to write as they are: the session's own replies and pushes,
//!   and fastlane broadcast frames shared with every other subscriber.
//! - **Commands** for the session to act on: an intercepted broadcast for
//!   its `handle_out`, a reroute after a config change, a close.
//!
//! Anyone may post (pub/sub fan-out, the app, the API); only the socket's own
//! task (`socket::run`) takes. When the queued bytes pass the cap the mailbox
//! overflows: it refuses everything after, and the socket closes as a slow
//! consumer — a reconnect can recover, a lost message cannot.
//!
//! Leaf module: `pubsub`, `app` and `socket` all post here, so it depends on
//! none of them.

mod close;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::task::AtomicWaker;

pub use close::Close;

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

/// What a session is asked to do besides writing frames.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run `handle_out` for an intercepted broadcast.
    Intercept(Arc<Intercepted>),
    /// Some routes were removed: end the channels on retired plugins.
    Reroute,
    /// Close the connection.
    Close(Close),
}

impl Command {
    /// Bytes it holds, counted against the mailbox's cap.
    fn len(&self) -> usize {
        match self {
            Self::Intercept(i) => i.topic.len() + i.event.len() + i.payload.len(),
            Self::Reroute | Self::Close(_) => 0,
        }
    }
}

/// The handle to one socket's mailbox; clones share it.
#[derive(Clone)]
pub struct Mailbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Set by every post, cleared when the socket sees it: the socket's
    /// task is woken once per batch of posts, not once per post.
    posted: AtomicBool,
    /// The socket's task, waiting in [`Mailbox::ready`]. An `AtomicWaker`
    /// rather than tokio's `Notify`: one consumer, so no waiter list and
    /// no lock to take per wait.
    waker: AtomicWaker,
    cap: usize,
}

#[derive(Default)]
struct State {
    frames: VecDeque<WireFrame>,
    commands: VecDeque<Command>,
    /// Bytes queued in both lanes.
    bytes: usize,
    overflowed: bool,
}

impl State {
    /// Makes room for `len` bytes, or overflows (dropping everything queued:
    /// the socket is about to close and nothing of it will be written).
    fn admit(&mut self, len: usize, cap: usize) -> bool {
        if self.overflowed {
            return false;
        }
        if self.bytes + len > cap {
            self.overflow();
            return false;
        }
        self.bytes += len;
        true
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.frames.clear();
        self.commands
            .retain(|c| !matches!(c, Command::Intercept(_)));
        self.bytes = 0;
    }
}

impl Mailbox {
    pub fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                posted: AtomicBool::new(false),
                waker: AtomicWaker::new(),
                cap,
            }),
        }
    }

    /// Queues a frame. Returns `false` if the mailbox has overflowed (now or
    /// before), in which case the frame is dropped along with the socket.
    pub fn post_frame(&self, frame: WireFrame) -> bool {
        let posted = {
            let mut state = self.lock();
            let admitted = state.admit(frame.len(), self.shared.cap);
            if admitted {
                state.frames.push_back(frame);
            }
            admitted
        };
        // An overflow wakes the socket too: it must close.
        self.wake();
        posted
    }

    /// Queues a command, counted against the cap like a frame.
    pub fn post_command(&self, command: Command) -> bool {
        let posted = {
            let mut state = self.lock();
            let admitted = state.admit(command.len(), self.shared.cap);
            if admitted {
                state.commands.push_back(command);
            }
            admitted
        };
        self.wake();
        posted
    }

    /// Queues a control command past the byte cap, even on an overflowed
    /// mailbox: a close must get through.
    pub fn post_control(&self, command: Command) {
        self.lock().commands.push_back(command);
        self.wake();
    }

    /// Moves everything queued in `held` (a holding mailbox, see
    /// `PubSub::release`) to the end of this one. If `held` overflowed, so
    /// does this one: what it dropped cannot be recovered.
    pub fn take_from(&self, held: &Mailbox) {
        let (frames, commands, overflowed) = {
            let mut held = held.lock();
            held.bytes = 0;
            (
                std::mem::take(&mut held.frames),
                std::mem::take(&mut held.commands),
                held.overflowed,
            )
        };
        if overflowed {
            self.lock().overflow();
            self.wake();
            return;
        }
        for frame in frames {
            self.post_frame(frame);
        }
        for command in commands {
            self.post_command(command);
        }
    }

    /// Moves every queued command into `into`.
    pub fn take_commands(&self, into: &mut Vec<Command>) {
        let mut state = self.lock();
        let bytes: usize = state.commands.iter().map(Command::len).sum();
        state.bytes -= bytes;
        into.extend(state.commands.drain(..));
    }

    /// Moves every queued frame into `into`. The queue's storage goes
    /// with them: an idle socket's mailbox holds none (~160 bytes a socket
    /// kept otherwise, against one allocation per batch).
    pub fn take_frames(&self, into: &mut Vec<WireFrame>) {
        let mut state = self.lock();
        let bytes: usize = state.frames.iter().map(WireFrame::len).sum();
        state.bytes -= bytes;
        into.extend(std::mem::take(&mut state.frames));
    }

    /// Bytes queued in both lanes now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether the client fell too far behind and must be disconnected.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Waits until something is posted (or the mailbox overflows) since
    /// the last time it returned. Single consumer: the socket's own task.
    pub async fn ready(&self) {
        let shared = &self.shared;
        std::future::poll_fn(|cx| {
            if shared.posted.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            shared.waker.register(cx.waker());
            // A post between the check and the registration woke nobody.
            match shared.posted.swap(false, Ordering::Acquire) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        })
        .await;
    }

    /// Tells the socket's task, unless a post since it last looked already has.
    fn wake(&self) {
        if !self.shared.posted.swap(true, Ordering::Release) {
            self.shared.waker.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic: every update is one step.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> WireFrame {
        WireFrame::Text(text.to_owned().into())
    }

    fn texts(frames: &[WireFrame]) -> Vec<&str> {
        frames
            .iter()
            .map(|frame| match frame {
                WireFrame::Text(t) => t.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn queues_in_order_and_drains() {
        let mailbox = Mailbox::new(100);
        assert!(mailbox.post_frame(frame("a")));
        assert!(mailbox.post_frame(frame("b")));
        let mut frames = Vec::new();
        mailbox.take_frames(&mut frames);
        assert_eq!(texts(&frames), ["a", "b"]);
    }

    #[test]
    fn overflows_past_the_cap_and_stays_overflowed() {
        let mailbox = Mailbox::new(10);
        assert!(mailbox.post_frame(frame("12345")));
        assert!(mailbox.post_frame(frame("67890")));
        assert!(!mailbox.post_frame(frame("x")));
        assert!(mailbox.overflowed());
        let mut frames = Vec::new();
        mailbox.take_frames(&mut frames);
        assert!(frames.is_empty(), "an overflowed mailbox holds nothing");
        assert!(!mailbox.post_frame(frame("y")));
    }

    #[test]
    fn commands_count_against_the_same_cap_but_controls_pass() {
        let mailbox = Mailbox::new(10);
        assert!(mailbox.post_frame(frame("12345678")));
        let intercepted = Command::Intercept(Arc::new(Intercepted {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::empty(),
        }));
        assert!(!mailbox.post_command(intercepted), "8 + 4 bytes > 10");
        assert!(mailbox.overflowed());
        mailbox.post_control(Command::Close(Close::Disconnected));
        let mut commands = Vec::new();
        mailbox.take_commands(&mut commands);
        assert!(matches!(
            commands.as_slice(),
            [Command::Close(Close::Disconnected)]
        ));
    }

    #[test]
    fn take_from_appends_held_items_in_order() {
        let mailbox = Mailbox::new(100);
        let held = Mailbox::new(100);
        assert!(mailbox.post_frame(frame("reply")));
        assert!(held.post_frame(frame("b1")));
        assert!(held.post_frame(frame("b2")));
        mailbox.take_from(&held);
        let mut frames = Vec::new();
        mailbox.take_frames(&mut frames);
        assert_eq!(texts(&frames), ["reply", "b1", "b2"]);
        let mut rest = Vec::new();
        held.take_frames(&mut rest);
        assert!(rest.is_empty());
    }

    #[test]
    fn an_overflowed_hold_overflows_the_mailbox() {
        let mailbox = Mailbox::new(100);
        let held = Mailbox::new(4);
        assert!(!held.post_frame(frame("too long")));
        mailbox.take_from(&held);
        assert!(mailbox.overflowed());
    }

    #[test]
    fn drained_bytes_free_room() {
        let mailbox = Mailbox::new(10);
        assert!(mailbox.post_frame(frame("1234567890")));
        mailbox.take_frames(&mut Vec::new());
        assert!(mailbox.post_frame(frame("1234567890")));
    }
}
