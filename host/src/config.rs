//! The server config: a TOML file with the listen address and the apps.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:4000"
//!
//! [apps.demo]
//! mount = "/socket"
//! [apps.demo.routes]
//! "ping" = "plugins/target/wasm32-wasip2/release/ping.wasm"
//! "room:*" = "plugins/target/wasm32-wasip2/release/room_chat.wasm"
//! ```
//!
//! Everything is validated by [`Config::load`] before the server starts, with
//! messages naming the app, the key and the problem. Plugin paths are relative
//! to the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::channel::TopicPattern;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Apps by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// The file this config was read from; hot reload watches it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// This node's name, passed to plugins (`node-name`).
    pub node: String,
    /// Reload plugins and this config when their files change.
    pub watch: bool,
    /// Where compiled plugins are cached by content hash; empty disables it.
    pub cache_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            node: default_node_name(),
            watch: true,
            cache_dir: default_cache_dir(),
        }
    }
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
    #[serde(default)]
    pub limits: Limits,
}

/// Per-app limits; every one has a default (README, "Limits").
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
        }
    }
}

impl Limits {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn longpoll_window(&self) -> Duration {
        Duration::from_millis(self.longpoll_window_ms)
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
            let limits = &app.limits;
            if [
                limits.channels_per_socket,
                limits.outbox_bytes,
                limits.max_frame_bytes,
                limits.longpoll_body_bytes,
            ]
            .contains(&0)
                || limits.idle_timeout_ms == 0
                || limits.longpoll_window_ms == 0
            {
                bail!("app `{name}`: key `limits`: limits must be greater than zero");
            }
        }
        if config.apps.is_empty() {
            bail!("no apps: add an `[apps.<name>]` table");
        }
        Ok(config)
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
}
