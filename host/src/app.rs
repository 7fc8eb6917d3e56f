//! An app: a name, its own pub/sub, presence and sockets, and its current
//! state — the config and routes, which a config reload swaps as a whole.
//! Apps share the server and nothing else: topics, broadcasts, presences and
//! plugin instances are per app.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::channel::{Router, TopicPattern};
use crate::config::AppConfig;
use crate::presence::Presence;
use crate::protocol::Payload;
use crate::pubsub::PubSub;
use crate::runtime::{Plugin, PluginSlot, Runtime};
use crate::socket::{Close, Item, Outbox};

pub struct App {
    pub name: Arc<str>,
    pub pubsub: PubSub,
    /// Who is on each topic, as the app's channels track it.
    pub presence: Presence,
    state: RwLock<Arc<AppState>>,
    /// Every open socket of the app, by its server-unique number.
    sockets: Mutex<HashMap<u64, SocketEntry>>,
    /// Channels joined on all of the app's sockets.
    channels: AtomicUsize,
}

struct SocketEntry {
    /// `users_socket:<sub>`, for disconnecting a user's sockets.
    socket_id: Option<String>,
    outbox: Outbox,
}

/// What a config reload replaces.
pub struct AppState {
    pub config: AppConfig,
    pub router: Router,
}

impl AppState {
    /// Builds the routes of `config`, reusing the slots of `current` for
    /// plugin files it already serves and loading the others. Fails, changing
    /// nothing, if any new plugin does not load.
    pub async fn load(
        runtime: &Runtime,
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
                Some(slot) => slot.clone(),
                None => {
                    let plugin = Plugin::load(runtime, name, path, config.limits.guest()).await?;
                    tracing::info!(app = name, plugin = plugin.name(), version = plugin.version(), path = %path.display(), "plugin loaded");
                    let slot = Arc::new(PluginSlot::new(plugin));
                    slots.insert(path.clone(), slot.clone());
                    slot
                }
            };
            routes.push((TopicPattern::parse(pattern)?, slot));
        }
        Ok(Self {
            config,
            router: Router::new(routes),
        })
    }
}

impl App {
    pub fn new(name: &str, state: AppState) -> Self {
        Self {
            name: name.into(),
            pubsub: PubSub::default(),
            presence: Presence::default(),
            state: RwLock::new(Arc::new(state)),
            sockets: Mutex::new(HashMap::new()),
            channels: AtomicUsize::new(0),
        }
    }

    /// The app's config and routes now.
    pub fn state(&self) -> Arc<AppState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new state. Slots the new routes no longer use are retired,
    /// and every socket is told to end its channels on them.
    pub fn replace_state(&self, state: AppState) {
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(state),
        );
        let new = self.state();
        for slot in new.router.slots() {
            slot.current().set_limits(new.config.limits.guest());
        }
        let mut retired = false;
        for slot in old.router.slots() {
            if !new.router.slots().any(|s| Arc::ptr_eq(s, slot)) {
                slot.retire();
                retired = true;
            }
        }
        if retired {
            self.tell_sockets(Item::Reroute);
        }
    }

    /// Closes every socket of the app (it was removed from the config).
    pub fn close_all(&self, close: Close) {
        for slot in self.state().router.slots() {
            slot.retire();
        }
        self.tell_sockets(Item::Close(close));
    }

    pub fn register_socket(&self, socket: u64, socket_id: Option<String>, outbox: Outbox) {
        self.lock_sockets()
            .insert(socket, SocketEntry { socket_id, outbox });
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
            entry.outbox.push_control(Item::Close(Close::Disconnected));
            closed += 1;
        }
        closed
    }

    /// Counts a channel joined (`+1`) or gone (`-1`) for the status API.
    pub fn count_channel(&self, joined: bool) {
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

    pub fn unregister_socket(&self, socket: u64) {
        self.lock_sockets().remove(&socket);
    }

    /// How many sockets are open.
    pub fn socket_count(&self) -> usize {
        self.lock_sockets().len()
    }

    fn tell_sockets(&self, item: Item) {
        for entry in self.lock_sockets().values() {
            entry.outbox.push_control(item.clone());
        }
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SocketEntry>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Broadcasts to the app's subscribers of `topic` (all but the socket
    /// `except`), through `handle_out` when the topic's plugin intercepts the
    /// event. Returns how many subscribers it reached.
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: &Payload,
        except: Option<u64>,
    ) -> usize {
        let intercepted = self
            .state()
            .router
            .route(topic)
            .is_some_and(|slot| slot.current().intercepts(event));
        self.pubsub
            .broadcast(topic, event, payload, except, intercepted)
    }
}
