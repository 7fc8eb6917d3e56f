//! The `roost` command: `roost serve` runs the server, `roost dev` runs it
//! and rebuilds plugins as their sources change, `roost token` mints a
//! token for an app, `roost new` creates a plugin project.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;

use roost_host::auth;
use roost_host::config::Config;
use roost_host::{dev, scaffold, server};
use serde_json::Value;
use tracing_subscriber::EnvFilter;

/// jemalloc, for memory that comes back after a flood (see `Cargo.toml`;
/// its settings are in `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A Phoenix Channels server whose channel logic runs as WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server with the apps of a config file.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "roost.toml", env = "ROOST_CONFIG")]
        config: PathBuf,
        /// Listen on this address instead of the config's `server.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// This node's name instead of the config's `server.node` (in a
        /// cluster, each node has its own).
        #[arg(long)]
        node: Option<String>,
    },
    /// Start the server as `serve` does, and rebuild each plugin whose
    /// project (a cargo package or a roost-js npm package) is found when
    /// its sources change; the server hot-reloads the new build.
    Dev {
        /// The config file.
        #[arg(long, short, default_value = "roost.toml", env = "ROOST_CONFIG")]
        config: PathBuf,
        /// Listen on this address instead of the config's `server.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Build Rust plugins with their release profile exactly as written
        /// (LTO and all) instead of the quicker one `dev` uses by default
        /// (no LTO, incremental, 16 codegen units).
        #[arg(long)]
        exact_profile: bool,
    },
    /// Print a token (HS256 JWT) signed with an app's first secret.
    Token {
        /// The config file that defines the app.
        #[arg(long, short, default_value = "roost.toml", env = "ROOST_CONFIG")]
        config: PathBuf,
        /// The app's name.
        #[arg(long)]
        app: String,
        /// The subject: the socket id becomes `users_socket:<sub>`.
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// An extra claim, `key=value` (value parsed as JSON if it is JSON).
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, Value)>,
    },
    /// Create a plugin project, in Rust or JavaScript, that builds as it is.
    New {
        /// The plugin's name: a valid crate and npm package name.
        name: String,
        #[arg(long, default_value_t = scaffold::Lang::Rust)]
        lang: scaffold::Lang,
        /// The topic pattern it serves (default `<name>:*`).
        #[arg(long)]
        topic: Option<String>,
        /// Where to create it (default `plugins/<name>`; `plugins/js/<name>` for JS).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Add the route to this app's routes in the config (else print it).
        #[arg(long)]
        app: Option<String>,
        /// The config file.
        #[arg(long, short, default_value = "roost.toml", env = "ROOST_CONFIG")]
        config: PathBuf,
    },
}

fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not key=value"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// Waits for Ctrl-C or SIGTERM (what containers and systemd send); both
/// drain the same way.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            result.context("listening for Ctrl-C")?;
            Ok("SIGINT")
        }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("ROOST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::New {
            name,
            lang,
            topic,
            dir,
            app,
            config,
        } => scaffold::run(
            &name,
            lang,
            topic.as_deref(),
            dir.as_deref(),
            &config,
            app.as_deref(),
        ),
        Command::Serve {
            config,
            listen,
            node,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(node) = node {
                config.server.node = node;
            }
            let running = server::start(config).await?;
            let signal = shutdown_signal().await?;
            tracing::info!(signal, "shutting down");
            running.shutdown().await;
            Ok(())
        }
        Command::Dev {
            config,
            listen,
            exact_profile,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let rust = dev::RustBuild { exact_profile };
            let dev = dev::Dev::prepare(&mut config, rust).await?;
            let running = server::start(config).await?;
            dev.start(running.apps().clone(), running.tasks().clone())?;
            let signal = shutdown_signal().await?;
            tracing::info!(signal, "shutting down");
            running.shutdown().await;
            Ok(())
        }
        Command::Token {
            config,
            app,
            sub,
            ttl,
            claims,
        } => {
            let config = Config::load(&config)?;
            let app_config = config
                .apps
                .get(&app)
                .with_context(|| format!("no app named `{app}` in the config"))?;
            let secret = app_config
                .secrets
                .first()
                .with_context(|| format!("app `{app}` has no `secrets`: it takes no tokens"))?;
            println!(
                "{}",
                auth::mint(secret, &sub, ttl, claims.into_iter().collect())?
            );
            Ok(())
        }
    }
}
