//! Hot reload: watch the plugin files and the config, and swap in what
//! changed without a restart or a dropped connection.
//!
//! File events are debounced per path (a compiler or an editor writes a file
//! in several steps), then the file is compiled off the async threads and
//! validated once (`Runtime::compile`), and swapped into the slot of every
//! app that routes to it. Calls already
//! running finish on the old version; joined channels keep their assigns and
//! are served by the new version from their next message on. A file that
//! does not load never replaces a working version: the failure is logged and
//! kept for the status API. A config change is applied whole, or refused
//! whole (`Apps::apply`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::{self, App};
use crate::apps::Apps;
use crate::config::Config;
use crate::runtime::{Plugin, PluginSlot};
use crate::shutdown::Shutdown;

/// Quiet time after the last event on a path before it is reloaded: long
/// enough to merge the steps of one write, short enough to leave most of the
/// 100 ms write-to-serving budget to compiling.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// A watcher that sends the path of every change it sees to `events`.
/// Reads (ours of a plugin file, a compiler's of a source) show up as
/// access events: not changes. Also `roost dev`'s source watcher.
pub fn changes_to(events: mpsc::UnboundedSender<PathBuf>) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let read_only = matches!(
            event.kind,
            EventKind::Access(
                AccessKind::Open(_)
                    | AccessKind::Read
                    | AccessKind::Close(
                        AccessMode::Read
                            | AccessMode::Execute
                            | AccessMode::Any
                            | AccessMode::Other
                    )
            )
        );
        if !read_only {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    })
}

/// Starts watching `config` (if the server was started from a file) and
/// every plugin file of every app, on a task that ends with the server.
pub fn watch(apps: Apps, shutdown: Shutdown, config: Option<PathBuf>) -> anyhow::Result<()> {
    let (events, mut changed) = mpsc::unbounded_channel();
    let mut watcher = changes_to(events).context("starting the file watcher")?;
    let mut watched = BTreeSet::new();
    rewatch(&apps, config.as_deref(), &mut watcher, &mut watched);

    let tracked = shutdown.clone();
    tracked.spawn(async move {
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        loop {
            let next = pending.values().min().copied();
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(path) = changed.recv() => {
                    if config.as_deref() == Some(&*path) || !slots(&apps, &path).is_empty() {
                        pending.insert(path, Instant::now() + DEBOUNCE);
                    }
                }
                () = sleep_until(next), if next.is_some() => {
                    let now = Instant::now();
                    let ready: Vec<PathBuf> =
                        pending.iter().filter(|(_, at)| **at <= now).map(|(p, _)| p.clone()).collect();
                    for path in ready {
                        pending.remove(&path);
                        if config.as_deref() == Some(&*path) {
                            reload_config(&apps, &path).await;
                            rewatch(&apps, config.as_deref(), &mut watcher, &mut watched);
                        } else {
                            reload_plugin(&apps, &path).await;
                        }
                    }
                }
            }
        }
        drop(watcher);
    });
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Watches the directory of the config and of every plugin file: files are
/// often replaced by rename, which a watch on the file itself would lose.
fn rewatch(
    apps: &Apps,
    config: Option<&Path>,
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
) {
    let plugin_files = apps
        .all()
        .iter()
        .flat_map(|app| {
            app.state()
                .router()
                .slots()
                .map(|s| s.path().to_owned())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let dirs = config
        .into_iter()
        .map(Path::to_owned)
        .chain(plugin_files)
        .filter_map(|file| file.parent().map(Path::to_owned));
    for dir in dirs {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching");
                watched.insert(dir);
            }
            Err(error) => tracing::warn!(dir = %dir.display(), "cannot watch for changes: {error}"),
        }
    }
}

/// Every (app, slot) serving the file at `path`.
fn slots(apps: &Apps, path: &Path) -> Vec<(Arc<App>, Arc<PluginSlot>)> {
    let mut found = Vec::new();
    for app in apps.all() {
        for slot in app.state().router().slots() {
            if slot.path() == path {
                found.push((app.clone(), slot.clone()));
            }
        }
    }
    found
}

/// Size and modification time: how a file still being written is told apart
/// from a finished bad one.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Compiles the changed file once and swaps it into every app serving it.
async fn reload_plugin(apps: &Apps, path: &Path) {
    let serving = slots(apps, path);
    if serving.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let before = stamp(path);
    if before.is_none() {
        tracing::warn!(path = %path.display(), "plugin file is gone; the loaded version keeps serving");
        return;
    }
    let compiled = match apps.runtime().compile(path).await {
        Ok(compiled) => compiled,
        // Changed while we compiled it: a later event brings the rest.
        Err(_) if stamp(path) != before => {
            tracing::debug!(path = %path.display(), "plugin file still changing");
            return;
        }
        Err(error) => {
            for (app, slot) in serving {
                tracing::warn!(
                    app = %app.name(),
                    path = %path.display(),
                    serving = slot.current().version(),
                    "plugin reload failed, the last good version keeps serving: {error:#}"
                );
                slot.record_failure(format!("{error:#}"));
            }
            return;
        }
    };
    for (app, slot) in serving {
        let previous = slot.current();
        if let Err(error) = app::grants(app.state().config(), app.name(), &compiled) {
            tracing::warn!(app = %app.name(), path = %path.display(), serving = previous.version(), "plugin reload refused, the last good version keeps serving: {error:#}");
            slot.record_failure(format!("{error:#}"));
            continue;
        }
        if previous.version() == compiled.version() {
            tracing::debug!(app = %app.name(), path = %path.display(), "plugin file touched, content unchanged");
            continue;
        }
        tracing::info!(
            app = %app.name(),
            plugin = compiled.name(),
            version = compiled.version(),
            previous = previous.version(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "plugin reloaded"
        );
        slot.replace(Plugin::new(
            apps.runtime().clone(),
            compiled.clone(),
            app.name().clone(),
        ));
    }
}

/// Loads the config at `path` and applies it whole, or logs why not and
/// keeps the running one (also used by `roost dev` once it has built the
/// files a new route names).
pub(crate) async fn reload_config(apps: &Apps, path: &Path) {
    let applied = match Config::load(path) {
        Ok(config) => apps.apply(config.apps).await,
        Err(error) => Err(error),
    };
    match applied {
        Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
        Err(error) => tracing::warn!(
            path = %path.display(),
            "config change refused, the running config stays: {error:#}"
        ),
    }
}
