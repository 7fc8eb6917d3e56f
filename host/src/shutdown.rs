//! Shutdown: one cancellation token every long-lived task watches, and one
//! tracker every such task is spawned through, so a shutdown can wait for
//! them to finish — up to a deadline, after which the process goes anyway.
//!
//! axum does not track upgraded WebSocket tasks, so the transports spawn
//! their connection tasks here; so do the long-poll sessions and the file
//! watcher. `server` makes one `Shutdown` and hands clones out.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Cheap to clone; clones share the token and the tracker.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Resolves once shutdown has begun.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Resolves once shutdown has begun; owns its token, for `'static` uses.
    pub fn cancelled_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    pub fn is_started(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Begins the shutdown: every task watching the token winds down
    /// (sockets close with 1001, so clients reconnect elsewhere).
    pub fn begin(&self) {
        self.token.cancel();
        self.tracker.close();
    }

    /// Begins the shutdown and waits up to `timeout` for every tracked task
    /// to end. Returns how many were still running when time ran out (a
    /// guest that hangs in `terminate`, a client that will not take its
    /// close frame): the caller exits regardless.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.begin();
        match tokio::time::timeout(timeout, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_that_end_and_gives_up_on_those_that_hang() {
        let shutdown = Shutdown::default();
        let watcher = shutdown.clone();
        shutdown.spawn(async move { watcher.cancelled().await });
        shutdown.spawn(std::future::pending());
        let left = shutdown.drain(Duration::from_secs(10)).await;
        assert_eq!(left, 1, "the hanging task is abandoned, the other ended");
        assert!(shutdown.is_started());
    }
}
