//! Open-loop pushes on joined sockets, shared by `reqreply` and `reload`.
//!
//! Push n (0, 1, 2, …) is scheduled at start + n / rate and sent on socket
//! n mod K, whether or not earlier replies have come (the pacer thread of
//! `pacer.rs` keeps the schedule to ~0.1 ms). Its ref is `"<n>:<sent_ns>"`,
//! which the server echoes, so a reader knows both the scheduled and the
//! actual send time. Here: the schedule ([`Clock`]), the senders ([`send`]),
//! the start of each reader's loop ([`next_reply`]) and the waits that end a
//! run; each scenario checks the replies its own way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{self, Frame, Ws};
use crate::pacer::Schedule;
use crate::stats::SharedErrors;

/// The push schedule and the time base of the send times in refs, shared
/// by senders and readers.
#[derive(Clone, Copy)]
pub struct Clock {
    pub base: Instant,
    pub schedule: Schedule,
}

impl Clock {
    /// `rate` pushes a second for `duration` seconds, from 100 ms from now.
    pub fn new(rate: f64, duration: f64) -> Self {
        let count = (duration * rate).floor() as u64;
        let base = Instant::now();
        Self {
            base,
            schedule: Schedule {
                start: base + Duration::from_millis(100),
                rate,
                count,
            },
        }
    }

    /// When the run's tasks give up whatever happens: 3 × `timeout` after
    /// the schedule's `duration`.
    pub fn hard_deadline(&self, duration: Duration, timeout: Duration) -> Instant {
        self.schedule.start + duration + 3 * timeout
    }

    /// The push a reply answers, from its ref: n, and when it was sent.
    pub fn reply_to(&self, frame: &Frame) -> Option<(u64, Instant)> {
        let (n, sent_ns) = frame.r#ref()?.split_once(':')?;
        let (Ok(n), Ok(sent_ns)) = (n.parse::<u64>(), sent_ns.parse::<u64>()) else {
            return None;
        };
        Some((n, self.base + Duration::from_nanos(sent_ns)))
    }

    /// Replies per second from the schedule's start to the `last` reply
    /// (0 without one).
    pub fn achieved(&self, answered: u64, last: Option<Instant>) -> f64 {
        let window = last.map_or(0.0, |last| {
            last.saturating_duration_since(self.schedule.start)
                .as_secs_f64()
        });
        if window > 0.0 {
            answered as f64 / window
        } else {
            0.0
        }
    }
}

/// The pushes one socket sends: each n the pacer hands it.
pub struct Requests {
    pub due: mpsc::UnboundedReceiver<u64>,
    pub topic: Arc<String>,
    pub event: Arc<String>,
    pub payload: Arc<String>,
}

/// Sends one socket's share of the schedule as the pacer hands it over;
/// returns how many were sent. Ends when the pacer is done.
pub async fn send(
    mut sink: SplitSink<Ws, Message>,
    mut requests: Requests,
    clock: Clock,
    timeout: Duration,
    errors: SharedErrors,
) -> u64 {
    let mut sent = 0;
    loop {
        // A socket with long gaps between requests keeps itself alive.
        let n = match tokio::time::timeout(client::HEARTBEAT, requests.due.recv()).await {
            Ok(Some(n)) => n,
            Ok(None) => return sent,
            Err(_) => {
                let heartbeat = client::HEARTBEAT_FRAME.to_owned();
                if let Err(failure) = client::send(&mut sink, heartbeat, timeout).await {
                    errors.add(&failure);
                    return sent;
                }
                continue;
            }
        };
        let sent_ns = clock.base.elapsed().as_nanos();
        let frame = client::frame(
            Some("1"),
            &format!("{n}:{sent_ns}"),
            &requests.topic,
            &requests.event,
            &requests.payload,
        );
        if let Err(failure) = client::send(&mut sink, frame, timeout).await {
            errors.add(&failure);
            return sent;
        }
        sent += 1;
    }
}

/// A reader's next text frame and when it came; `None` once `stop` has
/// changed (checked first) or the socket failed (counted in `errors`).
pub async fn next_reply(
    stream: &mut SplitStream<Ws>,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
    errors: &SharedErrors,
) -> Option<(Utf8Bytes, Instant)> {
    let text = tokio::select! {
        biased;
        _ = stop.changed() => return None,
        text = client::next_text(stream, deadline) => text,
    };
    let now = Instant::now();
    match text {
        Ok(text) => Some((text, now)),
        Err(failure) => {
            errors.add(&failure);
            None
        }
    }
}

/// How many pushes the senders sent in all, waiting for them until
/// `deadline`; the ones still running then are aborted.
pub async fn sent(mut senders: JoinSet<u64>, deadline: Instant) -> u64 {
    let mut sent = 0;
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, senders.join_next()).await {
        sent += result.unwrap_or(0);
    }
    senders.abort_all();
    sent
}

/// Waits until `answered` reaches `sent`, for at most `timeout`.
pub async fn drain(answered: &AtomicU64, sent: u64, timeout: Duration) {
    let drain_deadline = Instant::now() + timeout;
    while answered.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the readers returned, waiting for them until `deadline`; the ones
/// still running then (or that panicked) are left out.
pub async fn read<T: 'static>(mut readers: JoinSet<T>, deadline: Instant) -> Vec<T> {
    let mut results = Vec::new();
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, readers.join_next()).await {
        if let Ok(one) = result {
            results.push(one);
        }
    }
    readers.abort_all();
    results
}
