//! `roost dev`: the server, plus a rebuild of a plugin whenever one of its
//! sources is saved.
//!
//! # Layout
//! - `project`: which project builds a route's file (a cargo package, or
//!   an npm package built with `roost-js`) and its build command.
//! - `build`: one build, its output streamed to the terminal.
//! - this file: [`Dev`], which finds the projects of a config's routes,
//!   builds the files that are missing (the server cannot start without
//!   them), then watches every project's sources and runs one rebuild loop
//!   per plugin.
//!
//! A save starts a build once the sources have been quiet for
//! [`DEBOUNCE`]; saves during a build queue up and make one more build
//! after it. A build that succeeds rewrites the plugin file, and the
//! server's own hot reload (`reload.rs`) swaps it in as for any other write
//! of that file: channels and their assigns stay. A build that fails
//! changes no file; its compiler messages go to the terminal and to every
//! slot serving that file (`PluginSlot::record_failure`: the status API and
//! the dashboard), and the last good version keeps serving. A config change
//! that routes a new plugin gets that plugin watched too (and built first
//! if its file does not exist yet).
//!
//! Uses the config, the apps registry (to find slots) and `reload` (to
//! apply a config once the files it names are built); nothing uses this
//! module but `main`.

mod build;
mod project;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apps::Apps;
use crate::config::Config;
use crate::reload;
use crate::runtime::PluginSlot;
use crate::shutdown::Shutdown;
pub use build::Built;
pub use project::{Kind, Project, RustBuild};

/// Quiet time after the last change to a project's sources before it is
/// built: an editor's save, or a `git checkout` of many files, is several
/// events; a person does not notice 50 ms.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Quiet time after the last change to the config before its routes are
/// looked at again (the server's own reload of it runs in parallel).
const CONFIG_DEBOUNCE: Duration = Duration::from_millis(100);

/// One finished build, for whoever [subscribes](Dev::subscribe) (tests,
/// the `dev` bench scenario).
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The plugin file it builds.
    pub output: PathBuf,
    pub plugin: String,
    /// When the build started, and how long it took.
    pub started: Instant,
    pub took: Duration,
    /// The failure, as recorded on the plugin's slots; `None` if it built.
    pub error: Option<String>,
}

/// What `roost dev` watches: the projects of a config's routes.
pub struct Dev {
    config: Option<PathBuf>,
    rust: RustBuild,
    /// Every app's `static` directory: served from disk, never a build input.
    static_dirs: Vec<PathBuf>,
    projects: BTreeMap<PathBuf, Project>,
    events: broadcast::Sender<Rebuilt>,
}

impl Dev {
    /// Finds the project of every route in `config`, and builds the files
    /// routes name that do not exist yet. Turns `server.watch` on: new
    /// builds reach the server through its hot reload.
    pub async fn prepare(config: &mut Config, rust: RustBuild) -> anyhow::Result<Self> {
        if !config.server.watch {
            tracing::info!("roost dev turns `server.watch` on: rebuilt plugins are hot-reloaded");
            config.server.watch = true;
        }
        let (events, _) = broadcast::channel(64);
        let mut dev = Self {
            config: config.source.clone(),
            rust,
            static_dirs: static_dirs(config),
            projects: BTreeMap::new(),
            events,
        };
        for (output, found) in discover(route_files(config)).await {
            match found {
                Ok(project) => {
                    tracing::info!(plugin = %project.plugin, "dev: rebuilding {} from {} when its sources change", output.display(), project.summary());
                    dev.projects
                        .insert(output, dev.with_static_excluded(project));
                }
                Err(why) => tracing::info!(
                    "dev: not watching the sources of {}: {why}",
                    output.display()
                ),
            }
        }
        let locks = BuildLocks::default();
        for project in dev.projects.values() {
            if !project.output.exists() {
                let built = locks.build(project, rust).await;
                report(None, &dev.events, project, &built);
                if let Some(error) = built.error {
                    anyhow::bail!(
                        "{} does not exist and building it failed:\n{error}",
                        project.output.display()
                    );
                }
            }
        }
        Ok(dev)
    }

    /// Every build from now on, as it finishes.
    pub fn subscribe(&self) -> broadcast::Receiver<Rebuilt> {
        self.events.subscribe()
    }

    /// The projects found, by the plugin file they build.
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    /// Watches every project's sources and rebuilds on change, on tasks
    /// that end with `shutdown`. Builds each Rust project once now (cargo
    /// knows whether anything changed since the file was built; the first
    /// one with the quick profile also builds the dependencies, so that the
    /// first save does not), and each JS project whose sources are newer
    /// than its file. Returns how many builds that starts.
    pub fn start(self, apps: Apps, shutdown: Shutdown) -> anyhow::Result<usize> {
        let (events, changed) = mpsc::unbounded_channel();
        let watcher = reload::changes_to(events).context("starting the source watcher")?;
        let mut watching = Watching {
            apps,
            shutdown: shutdown.clone(),
            rust: self.rust,
            events: self.events,
            config: self.config,
            static_dirs: self.static_dirs,
            watcher,
            watched: BTreeSet::new(),
            running: BTreeMap::new(),
            locks: BuildLocks::default(),
            unbuildable: BTreeSet::new(),
        };
        if let Some(dir) = watching.config.as_deref().and_then(Path::parent) {
            watching.watch(dir.to_owned(), RecursiveMode::NonRecursive);
        }
        let mut first_builds = 0;
        for project in self.projects.into_values() {
            let first = first_build_due(&project);
            first_builds += usize::from(first);
            watching.add(project, first);
        }
        shutdown.clone().spawn(watching.run(changed));
        Ok(first_builds)
    }

    fn with_static_excluded(&self, mut project: Project) -> Project {
        exclude_static(&mut project, &self.static_dirs);
        project
    }
}

/// The running watch: the watcher, and one rebuild loop per project.
struct Watching {
    apps: Apps,
    shutdown: Shutdown,
    rust: RustBuild,
    events: broadcast::Sender<Rebuilt>,
    config: Option<PathBuf>,
    static_dirs: Vec<PathBuf>,
    watcher: notify::RecommendedWatcher,
    /// Directories watched, and whether recursively.
    watched: BTreeSet<(PathBuf, bool)>,
    /// By plugin file.
    running: BTreeMap<PathBuf, Running>,
    locks: BuildLocks,
    /// Route files with no project found, so a config change does not look
    /// again (and log again) for them.
    unbuildable: BTreeSet<PathBuf>,
}

/// A project's rebuild loop, from outside.
struct Running {
    project: Arc<Project>,
    changes: mpsc::UnboundedSender<()>,
    /// Ends the loop (its route went away).
    stop: CancellationToken,
}

impl Watching {
    async fn run(mut self, mut changed: mpsc::UnboundedReceiver<PathBuf>) {
        let mut config_due: Option<Instant> = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some(path) = changed.recv() => self.changed(&path, &mut config_due),
                () = sleep_until(config_due), if config_due.is_some() => {
                    config_due = None;
                    self.rescan().await;
                }
            }
        }
        for running in self.running.values() {
            running.stop.cancel();
        }
    }

    /// A file event: tell each project it is a source of; watch a new
    /// directory at the top of a project.
    fn changed(&mut self, path: &Path, config_due: &mut Option<Instant>) {
        if self.config.as_deref() == Some(path) {
            *config_due = Some(Instant::now() + CONFIG_DEBOUNCE);
            return;
        }
        let mut new_dirs = Vec::new();
        for running in self.running.values() {
            if running.project.is_source(path) {
                let _ = running.changes.send(());
                if path.parent() == Some(&running.project.root) && path.is_dir() {
                    new_dirs.push(path.to_owned());
                }
            }
        }
        for dir in new_dirs {
            self.watch(dir, RecursiveMode::Recursive);
        }
    }

    fn watch(&mut self, dir: PathBuf, mode: RecursiveMode) {
        let key = (dir, mode == RecursiveMode::Recursive);
        if self.watched.contains(&key) {
            return;
        }
        match self.watcher.watch(&key.0, mode) {
            Ok(()) => {
                self.watched.insert(key);
            }
            Err(error) => {
                tracing::warn!(dir = %key.0.display(), "dev: cannot watch for changes: {error}")
            }
        }
    }

    /// Watches `project`'s sources and starts its rebuild loop.
    fn add(&mut self, project: Project, first_build: bool) {
        let (root, subdirs) = project.watch_dirs();
        self.watch(root, RecursiveMode::NonRecursive);
        for dir in subdirs {
            self.watch(dir, RecursiveMode::Recursive);
        }
        let project = Arc::new(project);
        let (changes, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let rebuild = Rebuild {
            project: project.clone(),
            config: self.config.clone(),
            apps: self.apps.clone(),
            rust: self.rust,
            events: self.events.clone(),
            locks: self.locks.clone(),
        };
        self.shutdown
            .spawn(rebuild.run(rx, first_build, stop.clone(), self.shutdown.clone()));
        self.running.insert(
            project.output.clone(),
            Running {
                project,
                changes,
                stop,
            },
        );
    }

    /// The config changed: stop watching plugins no longer routed, start
    /// watching new ones (building them at once if their file does not
    /// exist yet).
    async fn rescan(&mut self) {
        let Some(path) = self.config.clone() else {
            return;
        };
        // An invalid config is the server's reload's to report.
        let Ok(config) = Config::load(&path) else {
            return;
        };
        self.static_dirs = static_dirs(&config);
        let routed = route_files(&config);
        let gone: Vec<PathBuf> = self
            .running
            .keys()
            .filter(|output| !routed.contains(*output))
            .cloned()
            .collect();
        for output in gone {
            if let Some(running) = self.running.remove(&output) {
                tracing::info!(plugin = %running.project.plugin, "dev: no longer routed, not watching its sources");
                running.stop.cancel();
            }
        }
        let new: BTreeSet<PathBuf> = routed
            .into_iter()
            .filter(|output| {
                !self.running.contains_key(output) && !self.unbuildable.contains(output)
            })
            .collect();
        for (output, found) in discover(new).await {
            let mut project = match found {
                Ok(project) => project,
                Err(why) => {
                    tracing::info!(
                        "dev: not watching the sources of {}: {why}",
                        output.display()
                    );
                    self.unbuildable.insert(output);
                    continue;
                }
            };
            exclude_static(&mut project, &self.static_dirs);
            tracing::info!(plugin = %project.plugin, "dev: rebuilding {} from {} when its sources change", output.display(), project.summary());
            // A missing file is among the first builds; once it exists, the
            // rebuild loop applies the config the server refused without it.
            let first = first_build_due(&project);
            self.add(project, first);
        }
    }
}

/// One project's loop: wait for a change, let the sources go quiet, build,
/// report; changes during a build make one more build after it.
struct Rebuild {
    project: Arc<Project>,
    /// The config file, applied again after a build that no slot serves yet:
    /// the server refused a config whose route named a missing file.
    config: Option<PathBuf>,
    apps: Apps,
    rust: RustBuild,
    events: broadcast::Sender<Rebuilt>,
    locks: BuildLocks,
}

impl Rebuild {
    async fn run(
        self,
        mut changes: mpsc::UnboundedReceiver<()>,
        mut due: bool,
        stop: CancellationToken,
        shutdown: Shutdown,
    ) {
        let stopped = async {
            tokio::select! {
                () = stop.cancelled() => {}
                () = shutdown.cancelled() => {}
            }
        };
        tokio::pin!(stopped);
        loop {
            if !due {
                tokio::select! {
                    () = &mut stopped => return,
                    change = changes.recv() => if change.is_none() { return },
                }
            }
            due = false;
            // Quiet for DEBOUNCE: the changes queued so far, and those that
            // come meanwhile, all go into this one build.
            loop {
                tokio::select! {
                    () = &mut stopped => return,
                    change = tokio::time::timeout(DEBOUNCE, changes.recv()) => match change {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            // Dropping the build (on stop) kills it.
            let built = tokio::select! {
                () = &mut stopped => return,
                built = self.locks.build(&self.project, self.rust) => built,
            };
            let served = !slots_serving(&self.apps, &self.project.output).is_empty();
            if built.error.is_none()
                && !served
                && let Some(config) = &self.config
            {
                reload::reload_config(&self.apps, config).await;
            }
            report(Some(&self.apps), &self.events, &self.project, &built);
        }
    }
}

/// One build at a time per cargo target directory: cargo would make the
/// others wait on its lock anyway, with "Blocking" lines in between.
#[derive(Clone, Default)]
struct BuildLocks {
    by_target: Arc<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

impl BuildLocks {
    async fn build(&self, project: &Project, rust: RustBuild) -> Rebuilt {
        let lock = match &project.kind {
            Kind::Rust { target_dir, .. } => Some(
                self.by_target
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(target_dir.clone())
                    .or_default()
                    .clone(),
            ),
            Kind::Js { .. } => None,
        };
        let _turn = match &lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let started = Instant::now();
        let built = build::run(project, rust).await;
        Rebuilt {
            output: project.output.clone(),
            plugin: project.plugin.clone(),
            started,
            took: built.took,
            error: built.error,
        }
    }
}

/// Logs the build's one line, records a failure on every slot serving the
/// file, and tells the subscribers.
fn report(
    apps: Option<&Apps>,
    events: &broadcast::Sender<Rebuilt>,
    project: &Project,
    built: &Rebuilt,
) {
    let took_ms = built.took.as_millis() as u64;
    match &built.error {
        None => {
            tracing::info!(plugin = %project.plugin, lang = project.lang(), took_ms, result = "ok", "rebuilt")
        }
        Some(error) => {
            tracing::warn!(plugin = %project.plugin, lang = project.lang(), took_ms, result = "failed", "rebuild failed, the last good version keeps serving");
            for slot in apps.map_or_else(Vec::new, |apps| slots_serving(apps, &project.output)) {
                slot.record_failure(error.clone());
            }
        }
    }
    let _ = events.send(built.clone());
}

/// Every app's slot serving the plugin file `output`.
fn slots_serving(apps: &Apps, output: &Path) -> Vec<Arc<PluginSlot>> {
    apps.all()
        .iter()
        .flat_map(|app| {
            app.state()
                .router()
                .slots()
                .filter(|slot| project::normalize(slot.path()) == output)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether a project is built as soon as watching starts: Rust always
/// (cheap if nothing changed), JS when a source is newer than its file (a
/// JS build does the whole work every time).
fn first_build_due(project: &Project) -> bool {
    match project.kind {
        Kind::Rust { .. } => true,
        Kind::Js { .. } => {
            let Ok(built) = std::fs::metadata(&project.output).and_then(|m| m.modified()) else {
                return true;
            };
            newer_source(project, &project.root, built)
        }
    }
}

fn newer_source(project: &Project, dir: &Path, than: std::time::SystemTime) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if !project.is_source(&path) {
            return false;
        }
        if path.is_dir() {
            return newer_source(project, &path, than);
        }
        entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|at| at > than)
    })
}

/// Every plugin file the config routes, normalized.
fn route_files(config: &Config) -> BTreeSet<PathBuf> {
    config
        .apps
        .values()
        .flat_map(|app| app.routes.values())
        .map(|path| project::normalize(path))
        .collect()
}

fn static_dirs(config: &Config) -> Vec<PathBuf> {
    config
        .apps
        .values()
        .filter_map(|app| app.static_dir.as_deref().map(project::normalize))
        .collect()
}

fn exclude_static(project: &mut Project, static_dirs: &[PathBuf]) {
    for dir in static_dirs {
        if dir.starts_with(&project.root) && !project.excluded.contains(dir) {
            project.excluded.push(dir.clone());
        }
    }
}

/// Finds the projects of `outputs` (each `cargo metadata` off the async
/// threads), in order.
async fn discover(outputs: BTreeSet<PathBuf>) -> Vec<(PathBuf, Result<Project, String>)> {
    let mut found = Vec::new();
    for output in outputs {
        let lookup = output.clone();
        let project = tokio::task::spawn_blocking(move || Project::find(&lookup))
            .await
            .unwrap_or_else(|e| Err(format!("looking for its project: {e}")));
        found.push((output, project));
    }
    found
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}
