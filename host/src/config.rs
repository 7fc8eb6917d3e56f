//! The server config: a TOML file with the listen address and the apps.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:4000"
//! admin_keys = ["env:ROOST_ADMIN_KEY"]  # opens /dashboard and /metrics
//!
//! [apps.demo]
//! mount = "/socket"
//! static = "www"     # optional: files for browsers, at `web_path` (default `/`)
//! [apps.demo.routes]
//! "ping" = "plugins/target/wasm32-wasip2/release/ping.wasm"
//! "room:*" = "plugins/target/wasm32-wasip2/release/room_chat.wasm"
//! ```
//!
//! With `[cluster] redis = "redis://…"`, nodes that share the Redis and the
//! app names serve as one server (see [`ClusterConfig`]).
//!
//! Everything is validated by [`Config::load`] before the server starts, with
//! messages naming the app, the key and the problem. Plugin paths and
//! `static` directories are relative to the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::protocol::TopicPattern;

/// Where Roost serves its own files for pages (the phoenix client).
pub const ROOST_PATH: &str = "/_roost";

/// Paths no `web_path` may take, nor sit under: the HTTP API, the health
/// check, Roost's own files, the dashboard and the metrics.
pub const RESERVED_PATHS: &[&str] = &["/api", "/health", ROOST_PATH, "/dashboard", "/metrics"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Apps by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// Absent: a single node, with in-process pub/sub.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// The file this config was read from; hot reload watches it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// This node's name, passed to plugins (`node-name`), and how the
    /// cluster's status lists it; `--node NAME` overrides it.
    pub node: String,
    /// Reload plugins and this config when their files change.
    pub watch: bool,
    /// Where compiled plugins are cached by content hash; empty disables it.
    pub cache_dir: PathBuf,
    /// Where the embedded key-value store keeps its file (`kv.sqlite3`).
    pub data_dir: PathBuf,
    /// Open sockets, all apps together; past it, HTTP 503.
    pub max_connections: usize,
    /// On shutdown (Ctrl-C, SIGTERM), how long connections get to close and
    /// channels to terminate before the process exits anyway.
    pub drain_timeout_ms: u64,
    /// How long a client may take to send a request's headers (WebSocket
    /// upgrades included); past it the connection is closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// Open sockets one client address may hold (and TCP connections still
    /// reading their request).
    pub max_connections_per_ip: usize,
    /// New sockets one client address may open per second (a burst of
    /// twice that).
    pub connections_per_ip_per_second: u32,
    /// Behind a proxy: the header holding the client's address (its last
    /// entry), e.g. `x-forwarded-for`. Only set it if a proxy you trust
    /// always sets it.
    pub client_ip_header: Option<String>,
    /// Where the admin keys come from (`env:NAME`, `file:PATH`,
    /// `value:TEXT`, as app secrets): `Authorization: Bearer <key>` opens
    /// `/dashboard` and `/metrics`. None turns both off (404).
    #[serde(rename = "admin_keys")]
    pub admin_key_sources: Vec<String>,
    /// Serve `/metrics` without an admin key (to a scraper on a private
    /// network, say).
    pub metrics_public: bool,
    /// The resolved `admin_keys`.
    #[serde(skip)]
    pub admin_keys: Vec<Secret>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            node: default_node_name(),
            watch: true,
            cache_dir: default_cache_dir(),
            data_dir: default_data_dir(),
            max_connections: 100_000,
            drain_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            max_connections_per_ip: 1000,
            connections_per_ip_per_second: 100,
            client_ip_header: None,
            admin_key_sources: Vec::new(),
            metrics_public: false,
            admin_keys: Vec::new(),
        }
    }
}

/// `$XDG_DATA_HOME/roost`, else `~/.local/share/roost`.
fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("roost")
}

/// `$XDG_CACHE_HOME/roost/plugins`, else `~/.cache/roost/plugins`.
fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("roost/plugins")
}

impl ServerConfig {
    /// The compiled-plugin cache directory, unless disabled.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        (!self.cache_dir.as_os_str().is_empty()).then(|| self.cache_dir.clone())
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

/// `[cluster]`: the nodes that share one Redis (and the same app names)
/// serve as one server. Taken at start; changing it takes a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis every node uses, `redis://[user:password@]host:port[/db]`.
    pub redis: String,
    /// The start of every Redis key and channel name Roost uses; nodes of
    /// one cluster share it, and different clusters may share a Redis by
    /// using different ones.
    pub prefix: String,
    /// A node not heard from for this long is gone: its presence entries
    /// leave on every other node. Nodes check in several times within it.
    pub node_timeout_ms: u64,
    /// Messages waiting to be published to Redis, all apps together; when
    /// Redis is slow or down, what does not fit is dropped and counted
    /// (local subscribers already have it).
    pub publish_queue: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            prefix: "roost".into(),
            node_timeout_ms: 10_000,
            publish_queue: 10_000,
        }
    }
}

impl ClusterConfig {
    pub fn node_timeout(&self) -> Duration {
        Duration::from_millis(self.node_timeout_ms)
    }

    fn validate(&self) -> anyhow::Result<()> {
        // No TLS (`rediss://`): the redis crate's TLS features are not built in.
        if !self.redis.starts_with("redis://") {
            bail!(
                "key `redis`: `{}` must be a `redis://host:port` URL",
                self.redis
            );
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            bail!("key `prefix`: must be a non-empty word");
        }
        if !(500..=600_000).contains(&self.node_timeout_ms) {
            bail!("key `node_timeout_ms`: must be between 500 and 600000");
        }
        if self.publish_queue == 0 {
            bail!("key `publish_queue`: must be greater than zero");
        }
        Ok(())
    }
}

/// `roost@<hostname>`, like an Erlang node name.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("roost@{host}")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Where the app's socket is mounted: `<mount>/websocket`, `<mount>/longpoll`.
    pub mount: String,
    /// Topic pattern (`ping`, `room:*`) → plugin file.
    pub routes: BTreeMap<String, PathBuf>,
    /// Where the HS256 token secrets come from (`env:NAME`, `file:PATH`,
    /// `value:TEXT`). Several may be valid at once, for rotation; the first
    /// signs tokens made by `roost token`.
    #[serde(default, rename = "secrets")]
    pub secret_sources: Vec<String>,
    /// Keys for the HTTP API, as `secrets`.
    #[serde(default, rename = "api_keys")]
    pub api_key_sources: Vec<String>,
    /// Whether sockets without a token may connect. Defaults to true only
    /// when the app has no secrets.
    #[serde(default)]
    pub anonymous: Option<bool>,
    /// Which `Origin`s may connect: `true` (the origin's host must be the
    /// request's host), `false` (any), or a list such as
    /// `["https://example.com", "//*.example.org"]`.
    #[serde(default)]
    pub check_origin: CheckOrigin,
    #[serde(default)]
    pub limits: Limits,
    /// What the app's plugins may use beyond the always-granted imports.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// A directory served over HTTP at `web_path` (relative to the config
    /// file; made absolute), e.g. a page that connects to this app. Files
    /// are read per request, so edits show at once.
    #[serde(default, rename = "static")]
    pub static_dir: Option<PathBuf>,
    /// Where `static` is served. Defaults to `/` when only one app has
    /// `static`; required otherwise. It may not be, or be under, an app's
    /// mount or Roost's own paths (`/api`, `/health`, `/_roost`,
    /// `/dashboard`, `/metrics`).
    #[serde(default)]
    pub web_path: Option<String>,
    /// The resolved `secrets`.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    /// The resolved `api_keys`.
    #[serde(skip)]
    pub api_keys: Vec<Secret>,
}

impl AppConfig {
    /// Whether sockets without a token may connect.
    pub fn allows_anonymous(&self) -> bool {
        self.anonymous.unwrap_or(self.secrets.is_empty())
    }
}

/// The `check_origin` setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CheckOrigin {
    Enabled(bool),
    Allowed(Vec<String>),
}

impl Default for CheckOrigin {
    fn default() -> Self {
        Self::Enabled(true)
    }
}

/// Capabilities an app grants its plugins (`[apps.<name>.capabilities]`).
/// A plugin that imports one its app does not grant does not load.
/// `channel`, `presence`, `log` and `timers` are always granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Key-value storage (`roost:channel/kv`).
    pub kv: bool,
}

/// A secret's bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads `env:NAME`, `file:PATH` (relative to `base`) or `value:TEXT`.
    fn resolve(source: &str, base: &Path) -> anyhow::Result<Self> {
        let bytes = match source.split_once(':') {
            Some(("env", name)) => std::env::var(name)
                .with_context(|| format!("environment variable `{name}` is not set"))?
                .into_bytes(),
            Some(("file", path)) => {
                let path = base.join(path);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
            Some(("value", text)) => text.as_bytes().to_vec(),
            _ => bail!(
                "`{}…` is not `env:NAME`, `file:PATH` or `value:TEXT`",
                source.chars().take(6).collect::<String>()
            ),
        };
        if bytes.len() < 16 {
            bail!("a secret must be at least 16 bytes");
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Per-app limits; every one has a default (README, "Limits and protection").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Channels one socket may join; the next join gets `too many channels joined`.
    pub channels_per_socket: usize,
    /// A WebSocket with no inbound frame for this long is closed.
    pub idle_timeout_ms: u64,
    /// Bytes queued for a client before it is disconnected as a slow consumer.
    pub outbox_bytes: usize,
    /// Largest inbound frame, in bytes.
    pub max_frame_bytes: usize,
    /// How long a long-poll GET waits for messages; a session with no GET
    /// for 1.5 windows ends.
    pub longpoll_window_ms: u64,
    /// Largest long-poll POST body, in bytes.
    pub longpoll_body_bytes: usize,
    /// Open sockets (both transports) the app accepts; past it, HTTP 503.
    pub max_connections: usize,
    /// Sockets held back for this app however full the server is: other
    /// apps cannot take these places, so no app can starve another.
    pub reserved_connections: usize,
    /// How long a write to a client may block (a client that stopped
    /// reading); past it the socket is closed as a slow consumer.
    pub write_timeout_ms: u64,
    /// Messages one socket may send per second (a burst of twice that);
    /// past it each gets `{"reason":"rate limited"}`, and a client that
    /// sends on through a burst's worth of refusals is closed (1008).
    pub messages_per_second: u32,
    /// Joins one socket may send per second (a burst of twice that), on
    /// top of the message rate.
    pub joins_per_second: u32,
    /// Broadcasts the app's plugins and API may make per second, all
    /// sockets together (a burst of twice that); past it a broadcast is
    /// dropped, the push that made it gets `{"reason":"rate limited"}`
    /// instead of its reply, and the API answers 429. Presence diffs are
    /// not counted: they are batched per topic instead.
    pub broadcasts_per_second: u32,
    /// Presence changes on a topic within this window go out as one
    /// `presence_diff` (with every join and leave in it); 0 sends each at
    /// once.
    pub presence_batch_ms: u64,
    /// Longest topic and event name, in bytes; longer ones get an error reply.
    pub max_topic_bytes: usize,
    pub max_event_bytes: usize,
    /// Deadline of a guest callback, and of `join`.
    pub call_deadline_ms: u64,
    pub join_deadline_ms: u64,
    /// Linear memory one plugin instance may grow to.
    pub guest_memory_bytes: usize,
    /// Pending timers (`send-after`) one channel may have, and the app in all.
    pub timers_per_channel: usize,
    pub timers_per_app: usize,
    /// Key-value storage quotas: keys the app may hold, and the largest
    /// value and key, in bytes.
    pub kv_max_keys: usize,
    pub kv_max_value_bytes: usize,
    pub kv_max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            channels_per_socket: 100,
            idle_timeout_ms: 60_000,
            outbox_bytes: 1 << 20,
            max_frame_bytes: 1 << 20,
            longpoll_window_ms: 10_000,
            longpoll_body_bytes: 4 << 20,
            max_connections: 100_000,
            reserved_connections: 1000,
            write_timeout_ms: 5_000,
            messages_per_second: 100,
            joins_per_second: 50,
            broadcasts_per_second: 10_000,
            presence_batch_ms: 100,
            max_topic_bytes: 1024,
            max_event_bytes: 256,
            call_deadline_ms: 1_000,
            join_deadline_ms: 5_000,
            guest_memory_bytes: 64 << 20,
            timers_per_channel: 100,
            timers_per_app: 100_000,
            kv_max_keys: 100_000,
            kv_max_value_bytes: 64 << 10,
            kv_max_key_bytes: 512,
        }
    }
}

impl Limits {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn presence_batch(&self) -> Duration {
        Duration::from_millis(self.presence_batch_ms)
    }

    pub fn longpoll_window(&self) -> Duration {
        Duration::from_millis(self.longpoll_window_ms)
    }

    /// What bounds this app's guests.
    pub fn guest(&self) -> GuestLimits {
        GuestLimits {
            call_deadline: Duration::from_millis(self.call_deadline_ms),
            join_deadline: Duration::from_millis(self.join_deadline_ms),
            memory_bytes: self.guest_memory_bytes,
            output_bytes: self.max_frame_bytes,
            timers_per_channel: self.timers_per_channel,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let path = std::path::absolute(path)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut config =
            Self::parse(&text, base).with_context(|| format!("in config {}", path.display()))?;
        config.source = Some(path);
        Ok(config)
    }

    /// Parses and validates config text; relative plugin paths are resolved
    /// against `base` (made absolute, as hot reload matches file events by path).
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let mut config: Config = toml::from_str(text)?;
        config.server.admin_keys = resolve_all(&config.server.admin_key_sources, base)
            .context("key `server.admin_keys`")?;
        let s = &config.server;
        if s.max_connections_per_ip == 0
            || s.connections_per_ip_per_second == 0
            || s.header_read_timeout_ms == 0
            || s.max_connections == 0
        {
            bail!(
                "key `server`: max_connections, max_connections_per_ip, connections_per_ip_per_second and header_read_timeout_ms must be greater than zero"
            );
        }
        let mut mounts: BTreeMap<String, &str> = BTreeMap::new();
        for (name, app) in &mut config.apps {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                bail!("app `{name}`: names use letters, digits, `-` and `_`");
            }
            let mount = app.mount.trim_end_matches('/');
            if !mount.starts_with('/') || mount.contains(['?', '#', ' ']) {
                bail!(
                    "app `{name}`: key `mount`: `{}` must be a path starting with `/`",
                    app.mount
                );
            }
            app.mount = mount.to_owned();
            if let Some(other) = mounts.insert(app.mount.clone(), name) {
                bail!(
                    "app `{name}`: key `mount`: `{}` is already the mount of app `{other}`",
                    app.mount
                );
            }
            if app.routes.is_empty() {
                bail!("app `{name}`: key `routes`: at least one topic route is needed");
            }
            for (pattern, plugin) in &mut app.routes {
                TopicPattern::parse(pattern)
                    .with_context(|| format!("app `{name}`: route `{pattern}`"))?;
                *plugin = std::path::absolute(base.join(&*plugin))?;
            }
            let l = &app.limits;
            let sizes = [
                l.max_topic_bytes,
                l.max_event_bytes,
                l.channels_per_socket,
                l.outbox_bytes,
                l.max_frame_bytes,
                l.longpoll_body_bytes,
                l.max_connections,
                l.guest_memory_bytes,
                l.timers_per_channel,
                l.timers_per_app,
                l.kv_max_keys,
                l.kv_max_value_bytes,
                l.kv_max_key_bytes,
            ];
            let times = [
                l.idle_timeout_ms,
                l.write_timeout_ms,
                l.longpoll_window_ms,
                l.call_deadline_ms,
                l.join_deadline_ms,
            ];
            let rates = [
                l.messages_per_second,
                l.joins_per_second,
                l.broadcasts_per_second,
            ];
            if sizes.contains(&0) || times.contains(&0) || rates.contains(&0) {
                bail!("app `{name}`: key `limits`: limits must be greater than zero");
            }
            app.secrets = resolve_all(&app.secret_sources, base)
                .with_context(|| format!("app `{name}`: key `secrets`"))?;
            app.api_keys = resolve_all(&app.api_key_sources, base)
                .with_context(|| format!("app `{name}`: key `api_keys`"))?;
            if !app.allows_anonymous() && app.secrets.is_empty() {
                bail!(
                    "app `{name}`: key `anonymous`: `false` needs at least one entry in `secrets`"
                );
            }
            if let CheckOrigin::Allowed(origins) = &app.check_origin
                && let Some(bad) = origins.iter().find(|o| !o.contains("//"))
            {
                bail!(
                    "app `{name}`: key `check_origin`: `{bad}` must look like `https://host` or `//host`"
                );
            }
        }
        if config.apps.is_empty() {
            bail!("no apps: add an `[apps.<name>]` table");
        }
        if let Some(cluster) = &config.cluster {
            cluster.validate().context("[cluster]")?;
        }
        validate_web_paths(&mut config.apps, base)?;
        Ok(config)
    }
}

/// Resolves each app's `static` directory and settles its `web_path`: the
/// default, the syntax, and that it takes no path already taken.
fn validate_web_paths(apps: &mut BTreeMap<String, AppConfig>, base: &Path) -> anyhow::Result<()> {
    let serving = apps.values().filter(|a| a.static_dir.is_some()).count();
    let mounts: Vec<(String, String)> = apps
        .iter()
        .map(|(name, app)| (name.clone(), app.mount.clone()))
        .collect();
    let mut taken: BTreeMap<String, &str> = BTreeMap::new();
    for (name, app) in apps.iter_mut() {
        let Some(dir) = &mut app.static_dir else {
            if app.web_path.is_some() {
                bail!("app `{name}`: key `web_path`: it needs `static`, the directory to serve");
            }
            continue;
        };
        *dir = std::path::absolute(base.join(&*dir))?;
        if !dir.is_dir() {
            bail!(
                "app `{name}`: key `static`: {} is not a directory",
                dir.display()
            );
        }
        let web_path = match app.web_path.as_deref() {
            Some(path) => path,
            None if serving == 1 => "/",
            None => {
                bail!("app `{name}`: key `web_path`: required when more than one app has `static`")
            }
        };
        let trimmed = web_path.trim_end_matches('/');
        let web_path = if trimmed.is_empty() { "/" } else { trimmed };
        let bad_segment = web_path
            .split('/')
            .skip(1)
            .any(|s| s == "." || s == ".." || (s.is_empty() && web_path != "/"));
        if !web_path.starts_with('/')
            || web_path.contains(['?', '#', '%', '\\', ' '])
            || bad_segment
        {
            bail!(
                "app `{name}`: key `web_path`: `{web_path}` must be a path starting with `/`, \
                 without `.`, `..`, `%`, `?`, `#` or spaces"
            );
        }
        let under = |base: &str| web_path == base || web_path.starts_with(&format!("{base}/"));
        if let Some(reserved) = RESERVED_PATHS.iter().find(|r| under(r)) {
            bail!(
                "app `{name}`: key `web_path`: `{web_path}` is under `{reserved}`, which Roost serves"
            );
        }
        if let Some((other, mount)) = mounts.iter().find(|(_, mount)| under(mount)) {
            bail!(
                "app `{name}`: key `web_path`: `{web_path}` is under `{mount}`, the mount of app `{other}`"
            );
        }
        if let Some(other) = taken.insert(web_path.to_owned(), name) {
            bail!(
                "app `{name}`: key `web_path`: `{web_path}` is already the web path of app `{other}`"
            );
        }
        app.web_path = Some(web_path.to_owned());
    }
    Ok(())
}

fn resolve_all(sources: &[String], base: &Path) -> anyhow::Result<Vec<Secret>> {
    sources
        .iter()
        .map(|source| Secret::resolve(source, base))
        .collect()
}

/// What bounds one app's guests (`Limits::guest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestLimits {
    pub call_deadline: Duration,
    pub join_deadline: Duration,
    pub memory_bytes: usize,
    /// Largest payload (or assigns) a guest may hand back: frames are
    /// bounded both ways by `max_frame_bytes`.
    pub output_bytes: usize,
    /// Pending timers one channel may have.
    pub timers_per_channel: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Limits::default().guest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/srv"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("config should be refused"))
    }

    #[test]
    fn parses_apps_and_resolves_plugin_paths() {
        let config = parse(
            r#"
            [apps.demo]
            mount = "/socket/"
            routes = { "ping" = "p/ping.wasm", "room:*" = "/abs/room.wasm" }
            "#,
        )
        .unwrap();
        let demo = &config.apps["demo"];
        assert_eq!(demo.mount, "/socket");
        assert_eq!(demo.routes["ping"], Path::new("/srv/p/ping.wasm"));
        assert_eq!(demo.routes["room:*"], Path::new("/abs/room.wasm"));
        assert_eq!(demo.limits.channels_per_socket, 100);
    }

    #[test]
    fn a_cluster_section_has_defaults_and_is_validated() {
        let app = "[apps.a]\nmount = \"/a\"\nroutes = { x = \"x.wasm\" }\n";
        assert!(parse(app).unwrap().cluster.is_none());
        let config = parse(&format!(
            "{app}[cluster]\nredis = \"redis://127.0.0.1:6379\"\n"
        ))
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.prefix, "roost");
        assert_eq!(cluster.node_timeout(), Duration::from_secs(10));
        let e = error(&format!("{app}[cluster]\nredis = \"localhost\"\n"));
        assert!(e.contains("[cluster]: key `redis`"), "{e}");
        let e = error(&format!(
            "{app}[cluster]\nredis = \"redis://h:1\"\nnode_timeout_ms = 1\n"
        ));
        assert!(e.contains("node_timeout_ms"), "{e}");
        assert!(
            error(&format!(
                "{app}[cluster]\nredis = \"redis://h:1\"\nnodes = 2\n"
            ))
            .contains("unknown field")
        );
    }

    #[test]
    fn refuses_a_star_inside_a_pattern() {
        let e = error(
            r#"
            [apps.demo]
            mount = "/socket"
            routes = { "ping:*a" = "p.wasm" }
            "#,
        );
        assert!(e.contains("app `demo`: route `ping:*a`"), "{e}");
        assert!(e.contains("`*`"), "{e}");
    }

    #[test]
    fn refuses_unknown_keys_and_duplicate_mounts() {
        let e = error("[apps.demo]\nmount = \"/s\"\nroutes = { a = \"a\" }\nsecret_typo = 1\n");
        assert!(e.contains("secret_typo"), "{e}");
        let e = error(
            "[apps.a]\nmount = \"/s\"\nroutes = { a = \"a\" }\n[apps.b]\nmount = \"/s/\"\nroutes = { a = \"a\" }\n",
        );
        assert!(e.contains("app `b`: key `mount`"), "{e}");
    }

    #[test]
    fn refuses_bad_auth_settings() {
        let base = "[apps.a]\nmount = \"/s\"\nroutes = { x = \"x.wasm\" }\n";
        let e = error(&format!("{base}secrets = [\"plain\"]"));
        assert!(
            e.contains("app `a`: key `secrets`") && e.contains("env:NAME"),
            "{e}"
        );
        let e = error(&format!("{base}secrets = [\"value:short\"]"));
        assert!(e.contains("at least 16 bytes"), "{e}");
        let e = error(&format!(
            "{base}secrets = [\"env:ROOST_TEST_SURELY_UNSET\"]"
        ));
        assert!(e.contains("ROOST_TEST_SURELY_UNSET"), "{e}");
        let e = error(&format!("{base}anonymous = false"));
        assert!(e.contains("app `a`: key `anonymous`"), "{e}");
        let e = error(&format!("{base}check_origin = [\"example.com\"]"));
        assert!(e.contains("app `a`: key `check_origin`"), "{e}");
        let e = error(&format!("{base}[apps.a.limits]\nmax_connections = 0"));
        assert!(e.contains("app `a`: key `limits`"), "{e}");
    }

    #[test]
    fn static_dirs_get_a_web_path_that_takes_nothing_taken() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("www/a")).unwrap();
        let app = |name: &str, mount: &str, extra: &str| {
            format!("[apps.{name}]\nmount = \"{mount}\"\nroutes = {{ x = \"x.wasm\" }}\n{extra}\n")
        };
        let parse = |text: &str| Config::parse(text, dir.path());
        let error = |text: &str| format!("{:#}", parse(text).expect_err("refused"));

        // One app with `static`: served at `/`, the directory made absolute.
        let config =
            parse(&(app("a", "/socket", "static = \"www\"") + &app("b", "/b", ""))).unwrap();
        assert_eq!(config.apps["a"].web_path.as_deref(), Some("/"));
        assert_eq!(
            config.apps["a"].static_dir.as_deref(),
            Some(&*dir.path().join("www"))
        );
        assert_eq!(config.apps["b"].web_path, None);
        let config = parse(&app(
            "a",
            "/socket",
            "static = \"www\"\nweb_path = \"/ui/\"",
        ))
        .unwrap();
        assert_eq!(config.apps["a"].web_path.as_deref(), Some("/ui"));

        // Two need explicit, distinct web paths.
        let two = app("a", "/s", "static = \"www\"") + &app("b", "/b", "static = \"www/a\"");
        let e = error(&two);
        assert!(e.contains("app `a`: key `web_path`: required"), "{e}");
        let e = error(
            &(app("a", "/s", "static = \"www\"\nweb_path = \"/x\"")
                + &app("b", "/b", "static = \"www/a\"\nweb_path = \"/x/\"")),
        );
        assert!(
            e.contains("app `b`: key `web_path`: `/x` is already the web path of app `a`"),
            "{e}"
        );

        for (web_path, problem) in [
            (
                "/socket",
                "`/socket` is under `/socket`, the mount of app `a`",
            ),
            ("/b/page", "`/b/page` is under `/b`, the mount of app `b`"),
            ("/api", "`/api` is under `/api`, which Roost serves"),
            ("/health", "is under `/health`"),
            ("/_roost/x", "is under `/_roost`"),
            ("/dashboard", "is under `/dashboard`"),
            ("/metrics", "is under `/metrics`"),
            ("ui", "must be a path starting with `/`"),
            ("/a/../b", "must be a path"),
            ("/a%2f", "must be a path"),
        ] {
            let text = app(
                "a",
                "/socket",
                &format!("static = \"www\"\nweb_path = \"{web_path}\""),
            ) + &app("b", "/b", "");
            let e = error(&text);
            assert!(e.contains("app `a`: key `web_path`"), "{web_path}: {e}");
            assert!(e.contains(problem), "{web_path}: {e}");
        }
        let e = error(&app("a", "/s", "static = \"missing\""));
        assert!(
            e.contains("app `a`: key `static`:") && e.contains("not a directory"),
            "{e}"
        );
        let e = error(&app("a", "/s", "web_path = \"/x\""));
        assert!(
            e.contains("app `a`: key `web_path`: it needs `static`"),
            "{e}"
        );
    }

    #[test]
    fn admin_keys_resolve_like_secrets() {
        let config = parse(
            "[server]\nadmin_keys = [\"value:0123456789abcdef\"]\nmetrics_public = true\n[apps.a]\nmount = \"/s\"\nroutes = { x = \"x.wasm\" }\n",
        )
        .unwrap();
        assert_eq!(config.server.admin_keys.len(), 1);
        assert!(config.server.metrics_public);
        assert!(!format!("{:?}", config.server.admin_keys).contains("0123456789abcdef"));
        let e = error(
            "[server]\nadmin_keys = [\"plain\"]\n[apps.a]\nmount = \"/s\"\nroutes = { x = \"x.wasm\" }\n",
        );
        assert!(e.contains("key `server.admin_keys`"), "{e}");
    }

    #[test]
    fn secrets_are_never_printed() {
        let config = parse(
            "[apps.a]\nmount = \"/s\"\nroutes = { x = \"x.wasm\" }\nsecrets = [\"value:0123456789abcdef\"]\n",
        )
        .unwrap();
        let printed = format!("{:?}", config.apps["a"].secrets);
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
    }
}
