//! `bench`: a load generator for Phoenix Channels servers (V2 JSON over
//! WebSocket), used to check Roost against its performance budgets.
//!
//! ```sh
//! cargo run -p roost-tests --bin bench -- <scenario> [options]
//! cargo run -p roost-tests --bin bench -- fanout --subscribers 1000 --rate 200 --spawn
//! cargo run -p roost-tests --bin bench -- reqreply --url 'ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0'
//! cargo run -p roost-tests --bin bench -- smoke
//! cargo run --release -p roost-tests --bin bench -- joins --token --n 20000 --spawn
//! cargo run --release -p roost-tests --bin bench -- guest --calls 1000000
//! cargo run --release -p roost-tests --bin bench -- reload --spawn --sockets 20 --rate 2000
//! cargo run -p roost-tests --bin bench -- dev --saves 20 2>/dev/null
//! ```
//!
//! Scenarios: `connections`, `fanout`, `reqreply`, `joins`, `guest`,
//! `reload`, `timers`, `presence`, `dev` (one file each) and `smoke` (all of them, tiny, as a test). Each
//! prints a short summary and then one JSON line (`{"scenario": …, "ok": …,
//! "problems": […], …}`). `guest` needs no server (it calls a plugin in this
//! process); `reload` and `dev` start their own, with their own config.
//!
//! The server under test is started in this process by default, started as
//! a child with `--spawn` (so its memory and CPU are its own; needs the
//! `roost` binary: `cargo build -p roost-host`), or any running server with
//! `--url` (see `target.rs`). Server CPU time is reported per unit of work,
//! which does not depend on how fast the generator is.
//!
//! The generator runs on its own tokio runtime (threads `bench-client`,
//! `--client-threads`). It only connects to loopback addresses, and every
//! network wait and every loop is bounded.

mod client;
mod connections;
mod dev;
mod fanout;
mod goals;
mod guest;
mod joins;
mod pacer;
mod presence;
mod pushes;
mod reload;
mod reqreply;
mod smoke;
mod stats;
mod target;
mod timers;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::target::{Access, Target, TargetArgs};

#[derive(Parser, Debug)]
#[command(about = "Load generator for Phoenix Channels servers (V2 JSON over WebSocket)")]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,

    /// Threads of the generator's tokio runtime.
    #[arg(long, global = true, default_value_t = 2, help_heading = "Generator")]
    client_threads: usize,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N connections at a fixed rate, each joined to one channel, hold
    /// them, and report join latency and server memory per connection.
    Connections(connections::Args),
    /// Broadcast fan-out: a publisher at a fixed rate, N subscribers;
    /// deliveries/s, delivery ratio, latency, server CPU per delivery.
    Fanout(fanout::Args),
    /// Push → reply at a fixed total rate over K sockets; latency percentiles.
    Reqreply(reqreply::Args),
    /// Join + leave in closed loops over C sockets; joins/s and latency.
    /// With --token, each join on a fresh connection with its own token.
    Joins(joins::Args),
    /// Cost of a warm guest call: the ping plugin through the host's API vs
    /// the same logic as a native Rust handler, in this process (no server).
    Guest(guest::Args),
    /// Hot reload under load: pushes on K channels while the plugin file is
    /// replaced every few hundred ms; lost, reordered, version switch times.
    Reload(reload::Args),
    /// Channels with repeating timers: fires/s, lateness, server CPU per fire.
    Timers(timers::Args),
    /// A crowd of named users joins one room: frames and bytes sent to all,
    /// time until a watcher sees everyone, server memory and CPU per join.
    Presence(presence::Args),
    /// `roost dev`: save a scaffolded plugin's source → first reply from the
    /// new code, in Rust and JS; p50 / max and where the time goes.
    Dev(dev::Args),
    /// Every scenario with tiny numbers; exits 1 unless all pass.
    Smoke,
    /// (internal) A client process holding a share of `connections`.
    #[command(hide = true)]
    Worker(worker::Args),
}

/// What a scenario found.
pub struct Report {
    /// Human-readable lines.
    pub summary: Vec<String>,
    /// The machine-readable line (an object with at least `scenario`).
    pub json: Value,
    /// Failed sanity checks (errors, missing deliveries, …); empty if fine.
    pub problems: Vec<String>,
}

/// Prints the summary, then the JSON line with `ok` and `problems` added.
pub fn print(report: &Report) {
    for line in &report.summary {
        println!("{line}");
    }
    for problem in &report.problems {
        println!("  problem: {problem}");
    }
    let mut json = report.json.clone();
    if let Value::Object(map) = &mut json {
        map.insert("ok".into(), report.problems.is_empty().into());
        map.insert("problems".into(), report.problems.clone().into());
    }
    println!("{json}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Each connection is a file descriptor: use the whole hard limit.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("bench: could not raise the open-file limit: {error}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .thread_name("bench-client")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Tasks still holding sockets are dropped with the runtime.
    runtime.shutdown_background();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenario; `Ok(false)` if smoke failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let scenario = match cli.scenario {
        Scenario::Worker(args) => return worker::run(&args).await.map(|()| true),
        Scenario::Smoke => return smoke::run(&cli.target).await,
        Scenario::Guest(args) => {
            print(&guest::run(&args).await?);
            return Ok(true);
        }
        Scenario::Reload(args) => {
            print(&reload::run(&cli.target, &args).await?);
            return Ok(true);
        }
        Scenario::Dev(args) => {
            print(&dev::run(&args).await?);
            return Ok(true);
        }
        scenario => scenario,
    };
    let access = match &scenario {
        Scenario::Joins(args) => args.access(&cli.target)?,
        _ => Access::Anonymous,
    };
    let mut target = Target::start(&cli.target, access).await?;
    let report = match &scenario {
        Scenario::Connections(args) => connections::run(&mut target, args).await,
        Scenario::Fanout(args) => fanout::run(&mut target, args).await,
        Scenario::Reqreply(args) => reqreply::run(&mut target, args).await,
        Scenario::Joins(args) => joins::run(&mut target, args).await,
        Scenario::Timers(args) => timers::run(&mut target, args).await,
        Scenario::Presence(args) => presence::run(&mut target, args).await,
        Scenario::Smoke
        | Scenario::Worker(_)
        | Scenario::Guest(_)
        | Scenario::Reload(_)
        | Scenario::Dev(_) => {
            unreachable!("handled above")
        }
    };
    target.stop().await;
    print(&report?);
    Ok(true)
}
