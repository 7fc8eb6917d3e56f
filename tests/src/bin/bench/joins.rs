//! `joins`: join throughput. C sockets each run a closed loop of
//! join (`phx_join`, wait for the reply) and leave (`phx_leave`, wait for
//! the reply) on one topic until N joins have been made in all. Reports
//! joins per second, join and leave latency (sent → reply) and the server's CPU
//! per join + leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Ws};
use crate::connections::millis;
use crate::stats::{self, Errors, Hist, RecordDuration, histogram, round3};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Joins to make in all.
    #[arg(long, default_value_t = 1000)]
    pub n: u64,

    /// Sockets joining at once, each one join at a time.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u64,

    /// The topic to join and leave.
    #[arg(long, default_value = "ping")]
    pub topic: String,

    /// Seconds to wait for a connection or any one reply.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// What one socket's loop did.
struct Looped {
    joins: u64,
    latency: Hist,
    leave: Hist,
    errors: Errors,
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    let timeout = Duration::from_secs_f64(args.timeout);
    target.ensure_fds(args.concurrency, args.concurrency)?;
    let endpoint = &target.endpoint;
    let mut sockets = Vec::new();
    for _ in 0..args.concurrency {
        let ws = endpoint
            .connect(timeout, client::SMALL_READ_BUFFER)
            .await
            .map_err(|failure| anyhow::anyhow!("connecting: {failure}"))?;
        sockets.push(ws);
    }

    let topic = Arc::new(client::json_string(&args.topic));
    let next = Arc::new(AtomicU64::new(0));
    let before = target.sample();
    let started = Instant::now();
    let mut loops = JoinSet::new();
    for ws in sockets {
        loops.spawn(join_loop(ws, topic.clone(), next.clone(), args.n, timeout));
    }
    // Each join and leave has its own timeout; this is a backstop.
    let deadline = started
        + Duration::from_secs_f64(2.0 * args.n as f64 * args.timeout / args.concurrency as f64)
        + 2 * timeout;
    let (mut joins, mut latency, mut leave) = (0, histogram(), histogram());
    let mut errors = Errors::default();
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, loops.join_next()).await {
        if let Ok(looped) = result {
            joins += looped.joins;
            latency.add(&looped.latency)?;
            leave.add(&looped.leave)?;
            errors.merge(&looped.errors);
        }
    }
    loops.abort_all();
    let elapsed = started.elapsed();
    let after = target.sample();
    target.check_alive()?;

    let per_s = joins as f64 / elapsed.as_secs_f64();
    let cpu = after.cpu_since(&before);
    let cpu_per_join = cpu
        .filter(|_| joins > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / joins as f64);

    let mut problems = Vec::new();
    if joins != args.n {
        problems.push(format!("{joins} of {} joins succeeded", args.n));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }

    let mut summary = vec![
        format!(
            "joins: {joins}/{} joins of `{}` over {} sockets at {} (server {}); {}",
            args.n,
            args.topic,
            args.concurrency,
            target.endpoint.url,
            target.kind(),
            errors.describe()
        ),
        format!(
            "  {per_s:.0} joins/s ({:.2} s, each followed by a leave)",
            elapsed.as_secs_f64()
        ),
        format!("  join latency:  {}", stats::describe(&latency)),
        format!("  leave latency: {}", stats::describe(&leave)),
    ];
    if let (Some(cpu), Some(per)) = (cpu, cpu_per_join) {
        summary.push(format!(
            "  server CPU: {:.0} ms, {per:.1} µs per join + leave",
            cpu.as_secs_f64() * 1e3
        ));
    }
    if let Some(generator) = after.generator_cpu_since(&before) {
        summary.push(format!(
            "  generator CPU (this process): {:.0} ms",
            generator.as_secs_f64() * 1e3
        ));
    }

    let json = json!({
        "scenario": "joins",
        "server": target.kind(),
        "url": target.endpoint.url,
        "n": args.n,
        "concurrency": args.concurrency,
        "topic": args.topic,
        "joins": joins,
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "joins_per_s": per_s.round(),
        "join_ms": stats::percentiles(&latency),
        "leave_ms": stats::percentiles(&leave),
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "server_cpu_ms": millis(cpu),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
        "server_cpu_us_per_join": cpu_per_join.map(round3),
    });
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// Joins and leaves on one socket until `n` joins have been claimed.
async fn join_loop(
    mut ws: Ws,
    topic: Arc<String>,
    next: Arc<AtomicU64>,
    n: u64,
    timeout: Duration,
) -> Looped {
    let mut looped = Looped {
        joins: 0,
        latency: histogram(),
        leave: histogram(),
        errors: Errors::default(),
    };
    while next.fetch_add(1, Ordering::Relaxed) < n {
        let k = looped.joins + looped.errors.total();
        let join_ref = format!("j{k}");
        match client::join(&mut ws, &join_ref, &topic, timeout).await {
            Ok(took) => {
                looped.joins += 1;
                looped.latency.record_duration(took);
            }
            Err(failure) => {
                looped.errors.add(&failure);
                if failure.kind == "join_refused" {
                    continue;
                }
                break;
            }
        }
        let leave_ref = format!("l{k}");
        let leave = client::frame(Some(&join_ref), &leave_ref, &topic, "phx_leave", "{}");
        let started = Instant::now();
        let left = async {
            client::send(&mut ws, leave, timeout).await?;
            client::await_reply(&mut ws, &leave_ref, started + timeout).await
        };
        match left.await {
            Ok(()) => looped.leave.record_duration(started.elapsed()),
            Err(failure) => {
                looped.errors.add(&failure);
                break;
            }
        }
    }
    client::close(ws).await;
    looped
}
