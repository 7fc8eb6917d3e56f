//! How fast an app may broadcast, all its sockets and its API together
//! (`limits.broadcasts_per_second`, with a burst of twice the rate): one
//! token bucket behind a mutex, taken once per broadcast. A refusal is
//! logged when a run of them starts and when it ends, not once each.

use std::sync::Mutex;

use tokio::time::Instant;

/// The app's broadcast bucket.
#[derive(Debug)]
pub struct BroadcastRate {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Broadcasts refused since the last one let through.
    refused_in_a_row: u64,
}

impl BroadcastRate {
    /// A full bucket.
    pub fn new(per_second: u32) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: burst(per_second),
                refilled: Instant::now(),
                refused_in_a_row: 0,
            }),
        }
    }

    /// Takes one broadcast from the bucket, refilled at `per_second` (the
    /// rate now: a config reload may have changed it). `false`: refused.
    pub fn take(&self, app: &str, per_second: u32) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.tokens = (bucket.tokens + elapsed * f64::from(per_second)).min(burst(per_second));
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            if bucket.refused_in_a_row > 0 {
                tracing::warn!(
                    app,
                    "broadcasting again after {} refused over the app's rate",
                    bucket.refused_in_a_row
                );
                bucket.refused_in_a_row = 0;
            }
            return true;
        }
        if bucket.refused_in_a_row == 0 {
            tracing::warn!(
                app,
                "refusing broadcasts: over the app's rate (limits.broadcasts_per_second = {per_second})"
            );
        }
        bucket.refused_in_a_row += 1;
        false
    }
}

fn burst(per_second: u32) -> f64 {
    2.0 * f64::from(per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_twice_the_rate_then_the_rate() {
        let rate = BroadcastRate::new(10);
        let taken = (0..25).filter(|_| rate.take("a", 10)).count();
        assert_eq!(taken, 20);
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        let taken = (0..25).filter(|_| rate.take("a", 10)).count();
        assert_eq!(taken, 5);
    }
}
