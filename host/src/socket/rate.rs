//! How fast one socket may send: a token bucket for its messages and one
//! for its joins (`limits.messages_per_second`, `limits.joins_per_second`,
//! each with a burst of twice the rate). A message over its rate gets an
//! error reply and goes no further — no plugin runs for it; a client that
//! goes on sending through a whole burst's worth of refusals is closed.
//!
//! Hand-rolled rather than governor's direct limiter: a socket's buckets
//! are owned by its one task, so two floats and one clock reading do, with
//! no atomics, clock handle or quota copy in every connection's memory.

use tokio::time::Instant;

use crate::config::Limits;

/// A socket's buckets.
#[derive(Debug)]
pub struct Rates {
    messages: f32,
    joins: f32,
    /// When the buckets were last refilled.
    refilled: Instant,
    /// Messages refused since the last one let through.
    refused_in_a_row: u32,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Refuse it with an error reply.
    Refuse,
    /// The client ignores its refusals: close the socket.
    Close,
}

impl Rates {
    /// Full buckets: a new socket may send a burst at once (its joins).
    pub fn new(limits: &Limits) -> Self {
        Self {
            messages: burst(limits.messages_per_second),
            joins: burst(limits.joins_per_second),
            refilled: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Takes a message (and a join, if it is one) from the buckets.
    pub fn admit(&mut self, limits: &Limits, join: bool) -> Verdict {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f32();
        self.refilled = now;
        let refill = |tokens: f32, rate: u32| (tokens + elapsed * rate as f32).min(burst(rate));
        self.messages = refill(self.messages, limits.messages_per_second);
        self.joins = refill(self.joins, limits.joins_per_second);
        let passes = self.messages >= 1.0 && (!join || self.joins >= 1.0);
        if passes {
            self.messages -= 1.0;
            if join {
                self.joins -= 1.0;
            }
            self.refused_in_a_row = 0;
            return Verdict::Pass;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row as f32 > burst(limits.messages_per_second) {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

fn burst(rate: u32) -> f32 {
    2.0 * rate as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(messages: u32, joins: u32) -> Limits {
        Limits {
            messages_per_second: messages,
            joins_per_second: joins,
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_twice_the_rate_passes_then_the_rate_refills() {
        let l = limits(5, 100);
        let mut rates = Rates::new(&l);
        for _ in 0..10 {
            assert_eq!(rates.admit(&l, false), Verdict::Pass);
        }
        assert_eq!(rates.admit(&l, false), Verdict::Refuse);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(rates.admit(&l, false), Verdict::Pass, "one token back");
        assert_eq!(rates.admit(&l, false), Verdict::Refuse);
    }

    #[tokio::test(start_paused = true)]
    async fn joins_have_their_own_rate() {
        let l = limits(100, 1);
        let mut rates = Rates::new(&l);
        assert_eq!(rates.admit(&l, true), Verdict::Pass);
        assert_eq!(rates.admit(&l, true), Verdict::Pass);
        assert_eq!(rates.admit(&l, true), Verdict::Refuse);
        assert_eq!(
            rates.admit(&l, false),
            Verdict::Pass,
            "other messages still pass"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_ignoring_a_bursts_worth_of_refusals_is_closed() {
        let l = limits(2, 2);
        let mut rates = Rates::new(&l);
        for _ in 0..4 {
            rates.admit(&l, false);
        }
        let verdicts: Vec<_> = (0..5).map(|_| rates.admit(&l, false)).collect();
        assert_eq!(verdicts[..4], [Verdict::Refuse; 4]);
        assert_eq!(verdicts[4], Verdict::Close);
    }
}
