//! An app: a name, its own pub/sub, presence and sockets, and its current
//! state — the config and routes, which a config reload swaps as a whole.
//! Apps share the server and nothing else: topics, broadcasts, presences and
//! plugin instances are per app.
//!
//! [`App::broadcast`] is the one way to broadcast (plugins and the HTTP API
//! go through it, within the app's broadcast rate; presence diffs through
//! its unlimited half, `publish`): it decides here, from the topic's
//! route, whether the event takes the fastlane or each subscriber's
//! `handle_out`, delivers to this node's subscribers, and hands the event to
//! the app's broker for the other nodes of a cluster. What other nodes
//! broadcast arrives through [`Inbound`] and is delivered the same way,
//! decided by this node's routes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::channel::Router;
use crate::config::{AppConfig, Limits};
use crate::mailbox::{Close, Command, Mailbox};
use crate::metrics::AppMetrics;
use crate::presence::{Diff, Presence};
use crate::protocol::{Payload, TopicPattern, event};
use crate::pubsub::{Delivery, Inbound, PubSub, RedisBroker};
use crate::runtime::{Compiled, Plugin, PluginSlot, Runtime, TimerBudget};
use crate::storage::{Kv, Quotas, Storage};

mod rate;

use rate::BroadcastRate;

/// A broadcast refused: the app is over `limits.broadcasts_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited;

pub struct App {
    name: Arc<str>,
    pubsub: PubSub,
    /// Who is on each topic, as the app's channels track it.
    presence: Presence,
    /// Swapped whole by a config reload; read without a lock.
    state: ArcSwap<AppState>,
    /// Every open socket of the app, by its server-unique number.
    sockets: Mutex<HashMap<u64, SocketEntry>>,
    /// Open connections, counted by [`AppPermit`]s.
    connections: AtomicUsize,
    /// Channels joined on all of the app's sockets.
    channels: AtomicUsize,
    /// Timers pending on all of the app's channels.
    timers: Arc<TimerBudget>,
    /// Presence changes waiting for the end of their batch window, by
    /// topic (see [`App::presence_changed`]).
    presence_batch: Mutex<HashMap<String, Diff>>,
    /// Broadcasts the app may still make (`limits.broadcasts_per_second`).
    broadcast_rate: BroadcastRate,
    /// The app's counters and gauges, resolved once.
    metrics: AppMetrics,
}

struct SocketEntry {
    /// `users_socket:<sub>`, for disconnecting a user's sockets.
    socket_id: Option<String>,
    mailbox: Mailbox,
}

/// What a config reload replaces.
pub struct AppState {
    config: AppConfig,
    router: Router,
    /// The app's storage, if it grants the `kv` capability.
    kv: Option<Kv>,
}

impl AppState {
    /// Builds the routes of `config`, reusing the slots of `current` for
    /// plugin files it already serves and loading the others (a file another
    /// app already serves is compiled once). Fails, changing nothing, if any
    /// new plugin does not load or imports a capability the app does not
    /// grant.
    pub async fn load(
        runtime: &Runtime,
        storage: &Storage,
        name: &str,
        config: AppConfig,
        current: Option<&AppState>,
    ) -> anyhow::Result<Self> {
        let mut slots: HashMap<PathBuf, Arc<PluginSlot>> = current
            .map(|state| {
                state
                    .router
                    .slots()
                    .map(|s| (s.path().to_owned(), s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (pattern, path) in &config.routes {
            let slot = match slots.get(path) {
                Some(slot) => {
                    // A granted capability may have been taken away.
                    grants(&config, name, slot.current().compiled())?;
                    slot.clone()
                }
                None => {
                    let compiled = runtime.compile(path).await?;
                    grants(&config, name, &compiled)?;
                    tracing::info!(app = name, plugin = compiled.name(), version = compiled.version(), path = %path.display(), "plugin loaded");
                    let plugin = Plugin::new(runtime.clone(), compiled, name.into());
                    let slot = Arc::new(PluginSlot::new(plugin));
                    slots.insert(path.clone(), slot.clone());
                    slot
                }
            };
            routes.push((TopicPattern::parse(pattern)?, slot));
        }
        let kv = match config.capabilities.kv {
            true => Some(storage.kv(name, Quotas::from_limits(&config.limits))?),
            false => None,
        };
        Ok(Self {
            kv,
            ..Self::new(config, Router::new(routes))
        })
    }

    /// A state with no storage, for tests and apps that grant none.
    pub fn new(config: AppConfig, router: Router) -> Self {
        Self {
            config,
            router,
            kv: None,
        }
    }

    pub fn kv(&self) -> Option<&Kv> {
        self.kv.as_ref()
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    pub fn router(&self) -> &Router {
        &self.router
    }
}

/// Refuses a plugin that imports a capability the app does not grant.
pub fn grants(config: &AppConfig, app: &str, plugin: &Compiled) -> anyhow::Result<()> {
    if plugin.uses_kv() && !config.capabilities.kv {
        anyhow::bail!(
            "plugin {} imports key-value storage (roost:channel/kv), which app `{app}` does not grant: add `[apps.{app}.capabilities]` with `kv = true`",
            plugin.path().display()
        );
    }
    Ok(())
}

impl App {
    /// An app on a single node whose metrics are registered nowhere (tests).
    pub fn new(name: &str, state: AppState) -> Self {
        Self::with_metrics(name, state, AppMetrics::unregistered())
    }

    /// An app on a single node (in-process pub/sub) counting into `metrics`.
    pub fn with_metrics(name: &str, state: AppState, metrics: AppMetrics) -> Self {
        Self::with(name, state, metrics, PubSub::default(), Presence::default())
    }

    /// An app on one node of a cluster: broadcasts and presence reach the
    /// other nodes through `broker`, and theirs reach this app.
    pub fn clustered(
        name: &str,
        state: AppState,
        metrics: AppMetrics,
        broker: &RedisBroker,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &std::sync::Weak<App>| {
            let presence = Presence::for_node(broker.node());
            let inbound: std::sync::Weak<dyn Inbound> = me.clone();
            let pubsub = PubSub::new(broker.join_app(name, &presence, inbound));
            Self::with(name, state, metrics, pubsub, presence)
        })
    }

    fn with(
        name: &str,
        state: AppState,
        metrics: AppMetrics,
        pubsub: PubSub,
        presence: Presence,
    ) -> Self {
        let broadcast_rate = BroadcastRate::new(state.config.limits.broadcasts_per_second);
        Self {
            name: name.into(),
            pubsub,
            presence,
            state: ArcSwap::from_pointee(state),
            sockets: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            channels: AtomicUsize::new(0),
            timers: Arc::default(),
            presence_batch: Mutex::default(),
            broadcast_rate,
            metrics,
        }
    }

    /// The app's count of pending timers.
    pub fn timers(&self) -> &Arc<TimerBudget> {
        &self.timers
    }

    pub fn metrics(&self) -> &AppMetrics {
        &self.metrics
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The app's config and routes now.
    pub fn state(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Swaps in a new state. Slots the new routes no longer use are retired,
    /// and every socket is told to end its channels on them.
    pub fn replace_state(&self, state: AppState) {
        let old = self.state.swap(Arc::new(state));
        let new = self.state();
        let mut retired = false;
        for slot in old.router.slots() {
            if !new.router.slots().any(|s| Arc::ptr_eq(s, slot)) {
                slot.retire();
                retired = true;
            }
        }
        if retired {
            self.tell_sockets(Command::Reroute);
        }
    }

    /// Closes every socket of the app (it was removed from the config).
    pub fn close_all(&self, close: Close) {
        for slot in self.state().router.slots() {
            slot.retire();
        }
        self.tell_sockets(Command::Close(close));
    }

    /// Takes one of the app's connections, if it is below its
    /// `max_connections`; the connection is counted until the permit drops.
    /// One atomic step, so concurrent connects cannot overshoot the limit.
    pub fn admit(self: &Arc<Self>) -> Option<AppPermit> {
        let limit = self.state().config.limits.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()?;
        Some(AppPermit { app: self.clone() })
    }

    /// Registers a socket, so disconnects and config changes reach it.
    pub fn register_socket(&self, socket: u64, socket_id: Option<String>, mailbox: Mailbox) {
        self.lock_sockets()
            .insert(socket, SocketEntry { socket_id, mailbox });
    }

    pub fn unregister_socket(&self, socket: u64) {
        self.lock_sockets().remove(&socket);
    }

    /// Closes every socket with this socket id (all of one user's sockets,
    /// on both transports) with a code that makes clients reconnect, and so
    /// authenticate again. Returns how many it closed.
    pub fn disconnect(&self, socket_id: &str) -> usize {
        let sockets = self.lock_sockets();
        let matching = sockets
            .values()
            .filter(|entry| entry.socket_id.as_deref() == Some(socket_id));
        let mut closed = 0;
        for entry in matching {
            entry
                .mailbox
                .post_control(Command::Close(Close::Disconnected));
            closed += 1;
        }
        closed
    }

    /// Counts a channel joined (`+1`) or gone (`-1`) for the status API.
    pub fn count_channel(&self, joined: bool) {
        self.metrics.channel(joined);
        if joined {
            self.channels.fetch_add(1, Ordering::Relaxed);
        } else {
            self.channels.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Channels joined now, on all of the app's sockets.
    pub fn channel_count(&self) -> usize {
        self.channels.load(Ordering::Relaxed)
    }

    /// Places of the app's `reserved_connections` it does not use now, of
    /// at most `share` (reservations never take the whole server).
    pub fn unused_reservation(&self, share: usize) -> usize {
        let reserved = self.state.load().config.limits.reserved_connections;
        reserved.min(share).saturating_sub(self.socket_count())
    }

    /// How many sockets are open (both transports).
    pub fn socket_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Closes every socket with this socket id on every node of the
    /// cluster: this node's (how many), and how many other nodes were told.
    pub async fn disconnect_everywhere(&self, socket_id: &str) -> (usize, usize) {
        let local = self.disconnect(socket_id);
        let nodes = self.pubsub.broker().disconnect(socket_id).await;
        (local, nodes)
    }

    /// A presence change on `topic`, for its subscribers as a
    /// `presence_diff`. Changes within `limits.presence_batch_ms` of the
    /// first go out together, as one diff: a crowd joining a room costs
    /// each member a diff per window, not one per join (with 2,000 joins,
    /// 4 M frames otherwise). The tracker itself changed at once, so a
    /// joiner's `presence_state` is current; a diff that repeats what a
    /// state already listed is a no-op for the official client.
    pub fn presence_changed(self: &Arc<Self>, topic: &str, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        let window = self.state.load().config.limits.presence_batch();
        if window.is_zero() {
            self.publish(topic, event::PRESENCE_DIFF, &diff.to_payload(), None);
            return;
        }
        let opens_a_batch = {
            let mut batch = self
                .presence_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let opens = batch.is_empty();
            batch.entry(topic.to_owned()).or_default().merge(diff);
            opens
        };
        if opens_a_batch {
            let app = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                if let Some(app) = app.upgrade() {
                    app.send_presence_batch();
                }
            });
        }
    }

    fn send_presence_batch(&self) {
        let batch = std::mem::take(
            &mut *self
                .presence_batch
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (topic, diff) in batch {
            if !diff.is_empty() {
                self.publish(&topic, event::PRESENCE_DIFF, &diff.to_payload(), None);
            }
        }
    }

    /// Broadcasts to the app's subscribers of `topic` (all but the socket
    /// `except`, which is this node's), through `handle_out` when the
    /// topic's plugin intercepts the event, then to the other nodes' (all
    /// of them: `except` is a socket here). Returns how many of this node's
    /// subscribers it reached, or `Err` when the app is over its broadcast
    /// rate (counted; nothing is sent).
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<u64>,
    ) -> Result<usize, RateLimited> {
        let per_second = self.state.load().config.limits.broadcasts_per_second;
        if !self.broadcast_rate.take(&self.name, per_second) {
            self.metrics.broadcast_rate_limited();
            return Err(RateLimited);
        }
        Ok(self.publish(topic, event, payload, except))
    }

    /// [`broadcast`](Self::broadcast) past the rate: presence diffs, which
    /// are batched instead.
    fn publish(&self, topic: &str, event: &str, payload: &Payload, except: Option<u64>) -> usize {
        let delivery = self.delivery(topic, event);
        let reached = self
            .pubsub
            .broadcast(topic, event, payload, except, delivery);
        self.metrics.broadcast(reached);
        reached
    }

    /// Fastlane, or `handle_out` if the topic's plugin intercepts the event.
    fn delivery(&self, topic: &str, event: &str) -> Delivery {
        let intercepted = self
            .state
            .load()
            .router
            .route(topic)
            .is_some_and(|slot| slot.current().intercepts(event));
        if intercepted {
            Delivery::Intercepted
        } else {
            Delivery::Fastlane
        }
    }

    /// Bytes queued in the mailboxes of the app's sockets now. Walks every
    /// socket: for a scrape or the dashboard, not for a hot path.
    pub fn outbox_bytes(&self) -> usize {
        self.lock_sockets()
            .values()
            .map(|entry| entry.mailbox.queued_bytes())
            .sum()
    }

    fn tell_sockets(&self, command: Command) {
        for entry in self.lock_sockets().values() {
            entry.mailbox.post_control(command.clone());
        }
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SocketEntry>> {
        // Single-step updates: a poisoned map is still consistent.
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What other nodes of the cluster send the app.
impl Inbound for App {
    fn presence(&self) -> &Presence {
        &self.presence
    }

    fn deliver(&self, topic: &str, event: &str, payload: &Payload) {
        let delivery = self.delivery(topic, event);
        self.pubsub.deliver(topic, event, payload, None, delivery);
    }

    fn disconnect(&self, socket_id: &str) {
        let closed = App::disconnect(self, socket_id);
        if closed > 0 {
            tracing::info!(app = %self.name, socket_id, sockets = closed, "disconnected on another node's request");
        }
    }
}

/// One open connection of an app, counted until dropped (it moves into the
/// connection's session).
pub struct AppPermit {
    app: Arc<App>,
}

impl Drop for AppPermit {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn app(max_connections: usize) -> Arc<App> {
        let config = Config::parse(
            &format!(
                "[apps.a]\nmount = \"/a\"\nroutes = {{ x = \"x.wasm\" }}\n[apps.a.limits]\nmax_connections = {max_connections}\n"
            ),
            "/srv".as_ref(),
        )
        .unwrap();
        let config = config.apps["a"].clone();
        Arc::new(App::new("a", AppState::new(config, Router::default())))
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_on_drop() {
        let app = app(2);
        let first = app.admit().expect("first");
        let _second = app.admit().expect("second");
        assert!(app.admit().is_none(), "the third is over the limit");
        assert_eq!(app.socket_count(), 2);
        drop(first);
        assert!(app.admit().is_some(), "a dropped permit frees its place");
    }

    #[test]
    fn disconnect_reaches_only_the_sockets_with_that_id() {
        let app = app(10);
        let (ada, bob) = (Mailbox::new(100), Mailbox::new(100));
        app.register_socket(1, Some("users_socket:ada".into()), ada.clone());
        app.register_socket(2, Some("users_socket:bob".into()), bob.clone());
        assert_eq!(app.disconnect("users_socket:ada"), 1);
        let mut commands = Vec::new();
        ada.take_commands(&mut commands);
        assert!(matches!(
            commands[..],
            [Command::Close(Close::Disconnected)]
        ));
        bob.take_commands(&mut commands);
        assert_eq!(commands.len(), 1, "bob got nothing");
        app.unregister_socket(1);
        assert_eq!(app.disconnect("users_socket:ada"), 0);
    }
}
