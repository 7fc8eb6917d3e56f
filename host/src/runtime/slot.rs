//! The plugin serving an app's routes to one file, swappable while channels
//! use it.
//!
//! A joined channel keeps its route's slot, so its next call runs whatever
//! version the slot holds then: hot reload is one pointer swap, and reading
//! the current version takes no lock. The slot also keeps what the status
//! API reports: the version, when it loaded, the last failed reload, and
//! failed calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::Plugin;

pub struct PluginSlot {
    path: PathBuf,
    current: ArcSwap<Plugin>,
    /// Set when a config change removed the route: channels on it end.
    retired: AtomicBool,
    last_error: Mutex<Option<(SystemTime, String)>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// Failed guest calls by kind (`trap`, `deadline`, `memory`, …).
    call_failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// A snapshot for the status API and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub path: PathBuf,
    pub plugin: String,
    /// Content hash of the file now serving.
    pub version: String,
    /// The contract it was built against: `roost:channel@0.2.0` or `@0.1.0`.
    pub wit: &'static str,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Failed guest calls by kind since the slot was made.
    pub call_failures: BTreeMap<&'static str, u64>,
    /// Instances kept warm for this app.
    pub warm_instances: usize,
    /// The linear memory of each warm instance, in bytes (what a JS
    /// plugin's engine and heap take per instance).
    pub warm_memory_bytes: Vec<usize>,
}

impl PluginSlot {
    pub fn new(plugin: Plugin) -> Self {
        Self {
            path: plugin.compiled().path().to_owned(),
            current: ArcSwap::from_pointee(plugin),
            retired: AtomicBool::new(false),
            last_error: Mutex::new(None),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            call_failures: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version serving calls now.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.load_full()
    }

    /// Swaps in a new version; calls already running finish on the old one.
    pub fn replace(&self, plugin: Plugin) {
        plugin.metrics().reloaded(plugin.version());
        self.current.store(Arc::new(plugin));
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a reload that failed; the current version keeps serving.
    pub fn record_failure(&self, error: String) {
        let serving = self.current();
        serving.metrics().reload_failed(serving.version(), &error);
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((SystemTime::now(), error));
    }

    /// Counts a failed guest call of this kind.
    pub fn record_call_failure(&self, kind: &'static str) {
        self.current().metrics().failed(kind);
        *self
            .call_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn status(&self) -> SlotStatus {
        let plugin = self.current();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SlotStatus {
            path: self.path.clone(),
            plugin: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            wit: plugin.compiled().wit(),
            loaded_at: unix_seconds(plugin.compiled().loaded_at()),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
            last_error_at: last_error.as_ref().map(|(at, _)| unix_seconds(*at)),
            last_error: last_error.map(|(_, error)| error),
            call_failures: self
                .call_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            warm_instances: plugin.warm_instances(),
            warm_memory_bytes: plugin.warm_memory(),
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
