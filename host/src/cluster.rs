//! The link to the cluster's Redis (`[cluster] redis = "redis://…"`): the
//! connections, and whether Redis is reachable. The pub/sub broker
//! (`pubsub::RedisBroker`) is its first user; anything else that keeps
//! shared state in Redis (plugin key-value storage) takes a clone and uses
//! [`RedisLink::commands`], so every user shares one command connection
//! and one view of Redis's health.
//!
//! Connections are redis-rs `ConnectionManager`s, made lazily: the server
//! starts, and serves its local sockets, whether or not Redis is up. A
//! manager reconnects by itself with exponential backoff whenever a
//! command meets a broken connection. Every call goes through
//! [`RedisLink::call`], bounded by [`CALL_TIMEOUT`], which marks the link
//! degraded on the first failure (one log line) and healthy again on the
//! next success (one more), so the status API and the broker see one
//! flag. Redis key and channel names all start with the configured prefix
//! and then the app's name ([`RedisLink::app_key`]), so apps never meet.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{AsyncPushSender, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ProtocolVersion, RedisResult};

use crate::config::ClusterConfig;

/// Longest any one Redis call may take before it counts as a failure: a
/// slow Redis degrades the cluster, it never stalls it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Cheap to clone; clones share the connections and the health.
#[derive(Clone)]
pub struct RedisLink {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    /// The URL without credentials, for log lines and status.
    shown: String,
    prefix: String,
    commands: ConnectionManager,
    degraded: AtomicBool,
    /// Set by every failure, cleared by [`RedisLink::take_lost`]: whether
    /// anything may have been missed since the last look (a call that
    /// succeeds clears `degraded`, not this).
    lost: AtomicBool,
    /// Why the last call failed, while degraded.
    problem: Mutex<Option<String>>,
}

impl RedisLink {
    /// A link to the Redis of `config`; fails only on a malformed URL
    /// (connecting happens on first use, and again after every failure).
    pub fn new(config: &ClusterConfig) -> anyhow::Result<Self> {
        let client = Client::open(config.redis.as_str()).context("[cluster] redis")?;
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .context("[cluster] redis")?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                shown: without_credentials(&config.redis),
                prefix: config.prefix.clone(),
                commands,
                degraded: AtomicBool::new(false),
                lost: AtomicBool::new(false),
                problem: Mutex::new(None),
            }),
        })
    }

    /// A connection of its own (RESP3) whose pushes — subscribed messages,
    /// and a `Disconnection` when it breaks — go to `push`. After a
    /// reconnect it subscribes again to what it was subscribed to.
    pub fn subscriber(&self, push: impl AsyncPushSender) -> anyhow::Result<ConnectionManager> {
        let info = self.shared.client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(resp3)).context("[cluster] redis")?;
        let config = manager_config()
            .set_push_sender(push)
            .set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(client, config).context("[cluster] redis")
    }

    /// The shared command connection (cheap to clone; requests on it are
    /// pipelined with everyone else's).
    pub fn commands(&self) -> ConnectionManager {
        self.shared.commands.clone()
    }

    /// Runs one Redis call, bounded by [`CALL_TIMEOUT`], and records the
    /// link's health from its outcome. `None` if it failed.
    pub async fn call<T, F>(&self, what: &str, call: F) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.up();
                Some(value)
            }
            Ok(Err(error)) => {
                self.down(what, &error);
                None
            }
            Err(_) => {
                self.down(what, &format!("no answer within {CALL_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Whether the last call failed.
    pub fn is_degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Relaxed)
    }

    /// Whether a call failed (or a connection broke) since the last time
    /// this was asked; asking clears it.
    pub fn take_lost(&self) -> bool {
        self.shared.lost.swap(false, Ordering::Relaxed)
    }

    /// Why, while degraded.
    pub fn problem(&self) -> Option<String> {
        self.lock_problem().clone()
    }

    /// The Redis URL, without credentials.
    pub fn url(&self) -> &str {
        &self.shared.shown
    }

    /// `<prefix>:<app>:<rest>`: the one way to name an app's Redis keys and
    /// channels. App names have no `:`, so no app's names are a prefix of
    /// another's.
    pub fn app_key(&self, app: &str, rest: &str) -> String {
        format!("{}:{app}:{rest}", self.shared.prefix)
    }

    /// `<prefix>:<rest>`, for the cluster's own keys (its node registry).
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.shared.prefix)
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Records a failure; logs it if the link was healthy.
    pub fn down(&self, what: &str, error: &dyn std::fmt::Display) {
        let problem = format!("{what}: {error}");
        self.shared.lost.store(true, Ordering::Relaxed);
        if !self.shared.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(
                redis = self.url(),
                "redis unreachable, cluster degraded (local sockets are still served): {problem}"
            );
        }
        *self.lock_problem() = Some(problem);
    }

    fn up(&self) {
        if self.shared.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(redis = self.url(), "redis reachable again");
            *self.lock_problem() = None;
        }
    }

    fn lock_problem(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Replaced whole: a poisoned value is still a value.
        self.shared
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconnects with backoff from 100 ms up to 1 s, a few times per
/// attempt; the next call starts a new attempt, so it never gives up for
/// good. Answers within 2 s or the call fails.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(3)
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
}

/// `redis://user:secret@host:6379` → `redis://…@host:6379`.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}…{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_shown() {
        assert_eq!(
            without_credentials("redis://u:pw@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(
            without_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[tokio::test]
    async fn a_link_to_nowhere_is_made_and_then_degraded_by_its_first_call() {
        let config = ClusterConfig {
            redis: "redis://127.0.0.1:1".into(),
            ..ClusterConfig::default()
        };
        let link = RedisLink::new(&config).unwrap();
        assert_eq!(link.app_key("demo", "t:room:1"), "roost:demo:t:room:1");
        assert!(!link.is_degraded());
        let mut commands = link.commands();
        let answer: Option<String> = link
            .call("ping", redis::cmd("PING").query_async(&mut commands))
            .await;
        assert!(answer.is_none());
        assert!(link.is_degraded());
        assert!(link.problem().unwrap().starts_with("ping: "));
    }
}
