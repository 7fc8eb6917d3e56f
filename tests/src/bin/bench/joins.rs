//! `joins`: join throughput. C sockets each run a closed loop of
//! join (`phx_join`, wait for the reply) and leave (`phx_leave`, wait for
//! the reply) on one topic until N joins have been made in all. Reports
//! joins per second, join and leave latency (sent → reply) and the server's CPU
//! per join + leave.
//!
//! With `--token`, every join is made on a fresh connection that presents
//! its own token, so every join includes one token verification: C tasks
//! each run a closed loop of mint a token (HS256, `sub` = `bench-<i>`,
//! outside the timing), connect with `token=…`, join, close (and wait for
//! the server to end the connection, as a browser does). bench's own
//! server then serves the demo app with `anonymous = false` and the secret
//! [`target::BENCH_SECRET`]; a `--url` server must verify tokens signed with
//! `--token-secret`. Reports joins per second, connect + join latency (TCP
//! connect → join reply), each part alone, and the server's CPU per verified
//! connect + join (its teardown included). Before the loops, one connection
//! with a token signed by another secret must be refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use roost_host::config::Secret;
use serde_json::{Map, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Endpoint, Failure, Ws};
use crate::connections::millis;
use crate::stats::{self, Errors, Hist, RecordDuration, histogram, round3};
use crate::target::{self, Access, Target, TargetArgs};

/// How long the minted tokens are valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

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

    /// Make each join on a fresh connection with its own token (connect
    /// with `token=…`, join, close), so that every join verifies a token.
    #[arg(long)]
    pub token: bool,

    /// With --url: the secret the server verifies tokens with, as an app's
    /// `secrets` entry: `env:NAME`, `file:PATH` or `value:TEXT`. bench's own
    /// server uses a secret of its own.
    #[arg(long, requires = "token", value_name = "SOURCE")]
    pub token_secret: Option<String>,
}

impl Args {
    /// Who may connect to bench's own server for this run; checks that
    /// `--token-secret` is given exactly when a `--url` server needs it.
    pub fn access(&self, target: &TargetArgs) -> anyhow::Result<Access> {
        if !self.token {
            return Ok(Access::Anonymous);
        }
        match (&target.url, &self.token_secret) {
            (Some(_), None) => anyhow::bail!(
                "--token with --url needs --token-secret (env:NAME, file:PATH or value:TEXT): \
                 the secret that server verifies tokens with"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--token-secret is for --url: bench's own server has a secret of its own"
            ),
            _ => Ok(Access::Tokens),
        }
    }

    /// The secret to sign tokens with.
    fn secret(&self) -> anyhow::Result<Secret> {
        match &self.token_secret {
            Some(source) => target::secret(source),
            None => target::secret(&format!("value:{}", target::BENCH_SECRET)),
        }
    }
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
    if args.token {
        return run_tokens(target, args).await;
    }
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
        "token": false,
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

/// What one fresh-connection loop did.
struct Connected {
    joins: u64,
    /// TCP connect → join reply.
    total: Hist,
    /// TCP connect → WebSocket handshake done (the token verified).
    connect: Hist,
    /// `phx_join` sent → reply.
    join: Hist,
    errors: Errors,
}

/// `--token`: each join on a fresh connection with a fresh token.
async fn run_tokens(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let secret = Arc::new(args.secret()?);
    target.ensure_fds(args.concurrency, args.concurrency)?;
    let endpoint = target.endpoint.clone();

    // Sanity: the server must refuse a token signed with another secret,
    // or these joins would not measure token verification.
    let mut problems = Vec::new();
    let foreign = target::secret("value:not-the-secret-bench-signs-with-0123456789")?;
    let token = roost_host::auth::mint(&foreign, "bench-foreign", TOKEN_TTL, Map::new())?;
    match endpoint
        .with_param("token", &token)
        .connect(timeout, client::SMALL_READ_BUFFER)
        .await
    {
        Ok(ws) => {
            client::close(ws).await;
            problems.push(
                "a token signed with another secret was accepted: the server does not verify \
                 tokens (or anyone may connect)"
                    .to_owned(),
            );
        }
        Err(failure) if failure.kind == "handshake" => {}
        Err(failure) => problems.push(format!("probing with a bad token: {failure}")),
    }
    let probed = problems.is_empty();

    let topic = Arc::new(client::json_string(&args.topic));
    let next = Arc::new(AtomicU64::new(0));
    let before = target.sample();
    let started = Instant::now();
    let mut loops = JoinSet::new();
    for _ in 0..args.concurrency {
        loops.spawn(connect_loop(
            endpoint.clone(),
            secret.clone(),
            topic.clone(),
            next.clone(),
            args.n,
            timeout,
        ));
    }
    // Each connect and join has its own timeout; this is a backstop.
    let deadline = started
        + Duration::from_secs_f64(2.0 * args.n as f64 * args.timeout / args.concurrency as f64)
        + 2 * timeout;
    let mut joins = 0;
    let (mut total, mut connect, mut join) = (histogram(), histogram(), histogram());
    let mut errors = Errors::default();
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, loops.join_next()).await {
        if let Ok(looped) = result {
            joins += looped.joins;
            total.add(&looped.total)?;
            connect.add(&looped.connect)?;
            join.add(&looped.join)?;
            errors.merge(&looped.errors);
        }
    }
    loops.abort_all();
    let elapsed = started.elapsed();
    // Let the server finish tearing down the last connections.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = target.sample();
    target.check_alive()?;

    let per_s = joins as f64 / elapsed.as_secs_f64();
    let cpu = after.cpu_since(&before);
    let cpu_per_join = cpu
        .filter(|_| joins > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / joins as f64);

    if joins != args.n {
        problems.push(format!("{joins} of {} joins succeeded", args.n));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }

    let mut summary = vec![
        format!(
            "joins --token: {joins}/{} joins of `{}`, each on a fresh connection with its own \
             token, {} at a time, at {} (server {}); {}",
            args.n,
            args.topic,
            args.concurrency,
            target.endpoint.url,
            target.kind(),
            errors.describe()
        ),
        format!(
            "  {per_s:.0} joins/s ({:.2} s; connect with token, join, close)",
            elapsed.as_secs_f64()
        ),
        format!("  connect + join: {}", stats::describe(&total)),
        format!("  connect (token verified): {}", stats::describe(&connect)),
        format!("  join:           {}", stats::describe(&join)),
    ];
    if probed {
        summary.push(
            "  probe: a token signed with another secret was refused (the server may log it)"
                .to_owned(),
        );
    }
    if let (Some(cpu), Some(per)) = (cpu, cpu_per_join) {
        summary.push(format!(
            "  server CPU: {:.0} ms, {per:.1} µs per verified connect + join (and close)",
            cpu.as_secs_f64() * 1e3
        ));
    }
    if let Some(generator) = after.generator_cpu_since(&before) {
        summary.push(format!(
            "  generator CPU (this process, minting included): {:.0} ms",
            generator.as_secs_f64() * 1e3
        ));
    }

    let json = json!({
        "scenario": "joins",
        "token": true,
        "server": target.kind(),
        "url": target.endpoint.url,
        "n": args.n,
        "concurrency": args.concurrency,
        "topic": args.topic,
        "joins": joins,
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "joins_per_s": per_s.round(),
        "connect_join_ms": stats::percentiles(&total),
        "connect_ms": stats::percentiles(&connect),
        "join_ms": stats::percentiles(&join),
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

/// Mints a token, connects with it, joins and closes, until `n` joins have
/// been claimed. A failure costs one connection, not the loop.
async fn connect_loop(
    endpoint: Endpoint,
    secret: Arc<Secret>,
    topic: Arc<String>,
    next: Arc<AtomicU64>,
    n: u64,
    timeout: Duration,
) -> Connected {
    let mut looped = Connected {
        joins: 0,
        total: histogram(),
        connect: histogram(),
        join: histogram(),
        errors: Errors::default(),
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let token =
            match roost_host::auth::mint(&secret, &format!("bench-{i}"), TOKEN_TTL, Map::new()) {
                Ok(token) => token,
                Err(error) => {
                    looped
                        .errors
                        .add(&Failure::new("mint", format!("{error:#}")));
                    continue;
                }
            };
        let endpoint = endpoint.with_param("token", &token);
        let started = Instant::now();
        match client::connect_and_join(&endpoint, &topic, timeout, client::SMALL_READ_BUFFER).await
        {
            Ok((ws, connected, joined)) => {
                looped.total.record_duration(started.elapsed());
                looped.joins += 1;
                looped.connect.record_duration(connected);
                looped.join.record_duration(joined);
                if let Err(failure) = client::close_and_wait(ws).await {
                    looped.errors.add(&failure);
                }
            }
            Err(failure) => looped.errors.add(&failure),
        }
    }
    looped
}
