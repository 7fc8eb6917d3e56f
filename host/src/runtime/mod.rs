//! Hosting channel plugins: one wasmtime engine, compiled plugins, warm
//! instances, deadlines and the host imports.
//!
//! # Layout
//! - `store`: the per-instance state and the host side of every import,
//!   which record [`Effect`]s for the caller to apply in order (storage is
//!   the one import that does I/O).
//! - `world_v01`, `world_v02`: the two contract versions the host links side
//!   by side, `roost:channel@0.1.0` and `@0.2.0`, over that one `store`.
//! - `compiled`: one compiled version of a plugin file, shared by every app
//!   that routes to it (compiled once, however many apps use it).
//! - `plugin`: a compiled version serving one app, with that app's pool of
//!   warm instances, and the calls (`join`, `handle_in`, …) run with the
//!   app's deadline and memory cap.
//! - `slot`: the swappable current version of an app's plugin file.
//! - `guest_log`: guest stdout/stderr as host log lines.
//! - `function_cache`: compiled functions by content, so a new build of a
//!   plugin compiles only what changed.
//!
//! A plugin instance keeps nothing that matters between calls (channel state
//! is the host-owned `assigns`), so any warm instance can serve any channel,
//! and a trapped instance is simply dropped.

mod compiled;
mod function_cache;
mod guest_log;
mod plugin;
mod slot;
mod store;
mod world_v01;
mod world_v02;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::Linker;
use wasmtime::{Cache, CacheConfig, Config, Engine};

use crate::metrics::Metrics;
pub use compiled::{Compiled, content_hash};
pub use plugin::{CallContext, Called, Plugin, PluginError};
pub use slot::{PluginSlot, SlotStatus};
pub use store::{Effect, Outcome, StoreData, TimerBudget};

/// How often the engine's epoch advances. A running guest is checked against
/// its deadline (and yields to other tasks) once per tick, so this bounds how
/// long a spinning guest holds a runtime thread without yielding.
const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The shared wasmtime engine and linker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    /// The compiled-plugin cache, if enabled.
    cache: Option<Cache>,
    linker: Linker<StoreData>,
    /// This server's node name, for the `node-name` import.
    node: Arc<str>,
    /// Compiled versions in use, by file: an app loading a file another app
    /// already serves at the same content gets the same compilation.
    compiled: Mutex<HashMap<PathBuf, Weak<Compiled>>>,
    /// The server's metrics: every app and plugin version made with this
    /// runtime resolves its handles here.
    metrics: Metrics,
}

impl Runtime {
    /// Creates the engine and starts the epoch ticker thread. Compiled
    /// plugins are cached by content hash in `cache_dir`, if given, so a
    /// restart does not recompile unchanged plugins.
    pub fn new(node: &str, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::with_metrics(node, cache_dir, Metrics::new())
    }

    /// [`Runtime::new`], counting into `metrics`.
    pub fn with_metrics(
        node: &str,
        cache_dir: Option<PathBuf>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let cache = match cache_dir {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(&dir);
                let cache = Cache::new(cache)
                    .map_err(anyhow_error)
                    .with_context(|| format!("compiled-plugin cache in {}", dir.display()))?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        // A new build of a plugin shares most functions with the last one.
        config
            .enable_incremental_compilation(Arc::new(function_cache::FunctionCache::default()))
            .map_err(anyhow_error)?;
        let engine = Engine::new(&config).map_err(anyhow_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow_error)?;
        world_v01::add_to_linker(&mut linker).map_err(anyhow_error)?;
        world_v02::add_to_linker(&mut linker).map_err(anyhow_error)?;

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
                cache,
                linker,
                node: node.into(),
                compiled: Mutex::new(HashMap::new()),
                metrics,
            }),
        })
    }

    /// The file at `path` compiled and validated: the version in use if its
    /// content is unchanged, else a new compilation (off the async threads).
    pub async fn compile(&self, path: &Path) -> anyhow::Result<Arc<Compiled>> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading plugin {}", path.display()))?;
        let version = content_hash(&bytes);
        let in_use = self.lock_compiled().get(path).and_then(Weak::upgrade);
        if let Some(compiled) = in_use.filter(|c| c.version() == version) {
            return Ok(compiled);
        }
        let compiled = Arc::new(Compiled::load(self, path, version, bytes).await?);
        let mut map = self.lock_compiled();
        map.retain(|_, weak| weak.strong_count() > 0);
        map.insert(path.to_owned(), Arc::downgrade(&compiled));
        Ok(compiled)
    }

    fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Weak<Compiled>>> {
        // Single-step updates: a poisoned map is still consistent.
        self.shared
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Compilations served from the on-disk cache, and those that were not.
    pub fn cache_stats(&self) -> (usize, usize) {
        self.shared
            .cache
            .as_ref()
            .map_or((0, 0), |cache| (cache.cache_hits(), cache.cache_misses()))
    }

    /// The server's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
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
