//! Hosting channel plugins: one wasmtime engine, compiled plugins, warm
//! instances, deadlines and the host imports.
//!
//! # Layout
//! - `bindings`: the `roost:channel` world for wasmtime, and the host imports,
//!   which only record [`Effect`]s for the caller to apply in order.
//! - `plugin`: a compiled plugin version with its pool of warm instances, and
//!   the calls (`join`, `handle_in`, …) with deadline and memory cap.
//! - `guest_log`: guest stdout/stderr as host log lines.
//!
//! A plugin instance keeps nothing that matters between calls (channel state
//! is the host-owned `assigns`), so any warm instance can serve any channel,
//! and a trapped instance is simply dropped.

mod bindings;
mod guest_log;
mod plugin;

use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

pub use bindings::{Effect, Outcome, StoreData};
pub use plugin::{CallContext, Called, Plugin, PluginError};

/// How often the engine's epoch advances. A running guest is checked against
/// its deadline (and yields to other tasks) once per tick, so this bounds how
/// long a spinning guest holds a runtime thread without yielding.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The shared wasmtime engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    linker: Linker<StoreData>,
    /// This server's node name, for the `node-name` import.
    node: Arc<str>,
}

impl Runtime {
    /// Creates the engine and starts the epoch ticker thread.
    pub fn new(node: &str) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(anyhow_error)?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker).map_err(anyhow_error)?;

        let ticker = engine.weak();
        thread::Builder::new()
            .name("roost-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch ticker")?;

        Ok(Self {
            shared: Arc::new(Shared {
                engine,
                linker,
                node: node.into(),
            }),
        })
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    fn linker(&self) -> &Linker<StoreData> {
        &self.shared.linker
    }

    fn node(&self) -> &Arc<str> {
        &self.shared.node
    }
}

/// wasmtime has its own error type; keep its whole chain in the message.
fn anyhow_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}

/// The plugin serving a route. Hot reload replaces what it holds; a channel
/// keeps the slot, so its next call runs the newest version.
pub struct PluginSlot {
    current: RwLock<Arc<Plugin>>,
}

impl PluginSlot {
    pub fn new(plugin: Plugin) -> Self {
        Self {
            current: RwLock::new(Arc::new(plugin)),
        }
    }

    /// The version serving calls now.
    pub fn current(&self) -> Arc<Plugin> {
        // A poisoned lock still holds a valid Arc: writers only assign it.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swaps in a new version; calls already running finish on the old one.
    pub fn replace(&self, plugin: Plugin) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(plugin);
    }
}
