//! `smoke`: every scenario once with tiny numbers against one server
//! (in-process unless --spawn or --url), including `connections` split
//! across two worker processes; `guest` needs no server, and `reload`
//! starts its own (in-process, or a child with --spawn; skipped with
//! --url), as does `joins --token` (a server that requires tokens; skipped
//! with --url). Fails (exit status 1) if any scenario errors or fails its
//! sanity checks: everything joined, every message delivered, every
//! request answered, no errors, the plugin reloaded with nothing lost.
//! There are no timing assertions, so it is safe on a loaded machine; it
//! takes about ten seconds.

use std::time::Duration;

use crate::target::{Access, Target, TargetArgs};
use crate::{Report, connections, fanout, guest, joins, presence, print, reload, reqreply, timers};

/// How long one scenario may take before smoke gives up on it.
const SCENARIO_LIMIT: Duration = Duration::from_secs(25);

/// Runs the scenarios; returns whether all passed.
pub async fn run(target_args: &TargetArgs) -> anyhow::Result<bool> {
    let mut target = Target::start(target_args, Access::Anonymous).await?;
    let timeout = 5.0;
    let connections = |per_process| connections::Args {
        n: 20,
        rate: 500.0,
        topic: "ping".to_owned(),
        hold: 0.5,
        per_process,
        timeout,
    };
    let mut passed = 0;
    let mut failed = 0;
    for name in [
        "connections",
        "connections (2 worker processes)",
        "fanout",
        "reqreply",
        "joins",
        "joins --token",
        "guest",
        "reload",
        "timers",
        "presence",
    ] {
        if matches!(name, "reload" | "joins --token") && target_args.url.is_some() {
            println!("smoke: {name} skipped: it starts its own server, and --url was given");
            continue;
        }
        let run = async {
            match name {
                "connections" => connections::run(&mut target, &connections(1000)).await,
                "fanout" => {
                    let args = fanout::Args {
                        subscribers: 10,
                        rate: 50.0,
                        duration: 1.0,
                        topic: "room:bench".to_owned(),
                        connect_rate: 500.0,
                        timeout,
                    };
                    fanout::run(&mut target, &args).await
                }
                "reqreply" => {
                    let args = reqreply::Args {
                        sockets: 4,
                        rate: 200.0,
                        duration: 1.0,
                        topic: "ping".to_owned(),
                        event: "ping".to_owned(),
                        payload: "{}".to_owned(),
                        timeout,
                    };
                    reqreply::run(&mut target, &args).await
                }
                "joins" => {
                    let args = joins::Args {
                        n: 200,
                        concurrency: 4,
                        topic: "ping".to_owned(),
                        timeout,
                        token: false,
                        token_secret: None,
                        unique_topics: false,
                    };
                    joins::run(&mut target, &args).await
                }
                "joins --token" => {
                    let args = joins::Args {
                        n: 100,
                        concurrency: 4,
                        topic: "ping".to_owned(),
                        timeout,
                        token: true,
                        token_secret: None,
                        unique_topics: false,
                    };
                    let mut tokens = Target::start(target_args, Access::Tokens).await?;
                    let report = joins::run(&mut tokens, &args).await;
                    tokens.stop().await;
                    report
                }
                "guest" => {
                    let args = guest::Args {
                        calls: 20_000,
                        rounds: 2,
                        context_bytes: 200,
                        plugin: None,
                    };
                    guest::run(&args).await
                }
                "reload" => {
                    let args = reload::Args {
                        sockets: 4,
                        rate: 200.0,
                        duration: 3.0,
                        swap_every: 1000,
                        window: 100,
                        cache: false,
                        timeout,
                    };
                    reload::run(target_args, &args).await
                }
                "timers" => {
                    let args = timers::Args {
                        channels: 20,
                        sockets: 2,
                        interval_ms: 50,
                        duration: 1.0,
                        timeout,
                    };
                    timers::run(&mut target, &args).await
                }
                "presence" => {
                    let args = presence::Args {
                        n: 20,
                        rate: 200.0,
                        room: "smoke".to_owned(),
                        timeout,
                    };
                    presence::run(&mut target, &args).await
                }
                _ => connections::run(&mut target, &connections(10)).await,
            }
        };
        let result: anyhow::Result<Report> = tokio::time::timeout(SCENARIO_LIMIT, run)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("did not finish within {SCENARIO_LIMIT:?}")));
        match result {
            Ok(report) if report.problems.is_empty() => {
                print(&report);
                passed += 1;
            }
            Ok(report) => {
                print(&report);
                println!("smoke: {name} FAILED: {}", report.problems.join("; "));
                failed += 1;
            }
            Err(error) => {
                println!("smoke: {name} FAILED: {error:#}");
                failed += 1;
            }
        }
    }
    target.stop().await;
    println!("smoke: {passed} passed, {failed} failed");
    Ok(failed == 0)
}
