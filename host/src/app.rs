//! An app: a mount path, its routes to plugins, its limits and its own
//! pub/sub. Apps share the server and nothing else: topics, broadcasts and
//! plugin instances are per app.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::channel::{Router, TopicPattern};
use crate::config::AppConfig;
use crate::protocol::Payload;
use crate::pubsub::PubSub;
use crate::runtime::{Plugin, PluginSlot, Runtime};

pub struct App {
    pub name: Arc<str>,
    pub config: AppConfig,
    pub router: Router,
    pub pubsub: PubSub,
}

impl App {
    /// Loads (compiles and validates) every plugin the app routes to. A file
    /// routed from several patterns is loaded once.
    pub async fn load(runtime: &Runtime, name: &str, config: AppConfig) -> anyhow::Result<Self> {
        let mut slots: HashMap<PathBuf, Arc<PluginSlot>> = HashMap::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (pattern, path) in &config.routes {
            let slot = match slots.get(path) {
                Some(slot) => slot.clone(),
                None => {
                    let plugin = Plugin::load(runtime, name, path).await?;
                    tracing::info!(app = name, plugin = plugin.name(), path = %path.display(), "plugin loaded");
                    let slot = Arc::new(PluginSlot::new(plugin));
                    slots.insert(path.clone(), slot.clone());
                    slot
                }
            };
            // Validated with the config; parsing again cannot fail.
            let pattern = TopicPattern::parse(pattern)?;
            routes.push((pattern, slot));
        }
        Ok(Self {
            name: name.into(),
            config,
            router: Router::new(routes),
            pubsub: PubSub::default(),
        })
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
            .router
            .route(topic)
            .is_some_and(|slot| slot.current().intercepts(event));
        self.pubsub
            .broadcast(topic, event, payload, except, intercepted)
    }
}
