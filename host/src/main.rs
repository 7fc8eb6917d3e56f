//! The `roost` command: `roost serve [--config roost.toml]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use roost_host::config::Config;
use roost_host::server;
use tracing_subscriber::EnvFilter;

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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ROOST_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve { config, listen } => {
            let mut config = Config::load(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let running = server::start(config).await?;
            tokio::signal::ctrl_c()
                .await
                .context("waiting for ctrl-c")?;
            tracing::info!("shutting down");
            running.shutdown().await;
            Ok(())
        }
    }
}
