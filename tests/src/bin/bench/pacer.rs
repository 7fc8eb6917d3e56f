//! Open-loop pacing with sub-millisecond precision.
//!
//! tokio's timer has a resolution of 1 ms and rounds deadlines up, which
//! would add up to ~1 ms of generator lag to every latency measured from a
//! scheduled send time. Instead one OS thread (`bench-pacer`) sleeps until
//! each scheduled time (Linux sleeps are precise to ~50–100 µs) and hands
//! item n (scheduled at start + n / rate) to the task that sends it, over a
//! channel; when it falls behind it hands over every item that is due at
//! once. It stops handing out items after `count` items, when every
//! receiver is gone, or when [`Pacer::stop`] is called; then it lingers
//! until `stop` (at most 10 minutes), so that its CPU time still counts as
//! the generator's when a scenario reads CPU times (a finished thread's time
//! only shows in the process total).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The longest the thread waits for [`Pacer::stop`] once done.
const LINGER: Duration = Duration::from_secs(600);

/// A schedule: item n at `start + n / rate`, for n < `count`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub rate: f64,
    pub count: u64,
}

impl Schedule {
    pub fn at(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }
}

/// The pacing thread; dropping this handle stops it.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Pacer {
    /// Starts pacing `schedule` over `lanes` receivers: item n goes to lane
    /// n mod `lanes`.
    pub fn start(
        schedule: Schedule,
        lanes: usize,
    ) -> anyhow::Result<(Self, Vec<mpsc::UnboundedReceiver<u64>>)> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..lanes.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                pace(schedule, &senders, &stopped);
                drop(senders);
                let linger = std::time::Instant::now();
                while !stopped.load(Ordering::Relaxed) && linger.elapsed() < LINGER {
                    std::thread::park_timeout(Duration::from_secs(1));
                }
            })?
            .thread()
            .clone();
        Ok((Self { stop, thread }, receivers))
    }

    /// Stops handing out items, and ends the thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.unpark();
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pace(schedule: Schedule, senders: &[mpsc::UnboundedSender<u64>], stop: &AtomicBool) {
    let lanes = senders.len() as u64;
    for n in 0..schedule.count {
        if stop.load(Ordering::Relaxed) || senders.iter().all(|lane| lane.is_closed()) {
            return;
        }
        let at = schedule.at(n).into_std();
        let now = std::time::Instant::now();
        if at > now {
            // Bounded: `at` is at most the schedule's length away.
            std::thread::sleep(at - now);
        }
        let lane = usize::try_from(n % lanes).unwrap_or(0);
        // A lane whose task has ended just loses its items.
        let _ = senders[lane].send(n);
    }
}
