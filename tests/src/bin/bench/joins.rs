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
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Endpoint, Failure, Ws};
use crate::connections::millis;
use crate::stats::{self, Errors, Hist, RecordDuration, histogram, round3};
use crate::target::{self, Access, Sample, Target, TargetArgs};

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

    /// Join `<topic>:<i>`, a topic of its own, each time (route `ping:*`):
    /// every join is a topic's first subscriber and every leave its last,
    /// which in a cluster (`--cluster`) is a Redis SUBSCRIBE and UNSUBSCRIBE
    /// each — the churn cost of per-topic subscriptions.
    #[arg(long)]
    pub unique_topics: bool,

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

/// What one loop did (then all of them): joins made, their latencies as
/// `L` (per mode), failures.
struct Looped<L> {
    joins: u64,
    latencies: L,
    errors: Errors,
}

/// The latencies one mode records.
trait Latencies: Send + 'static {
    fn new() -> Self;
    fn add(&mut self, other: &Self) -> anyhow::Result<()>;
}

/// Without `--token`: each join followed by a leave.
struct JoinLeave {
    join: Hist,
    leave: Hist,
}

impl Latencies for JoinLeave {
    fn new() -> Self {
        Self {
            join: histogram(),
            leave: histogram(),
        }
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.join.add(&other.join)?;
        self.leave.add(&other.leave)?;
        Ok(())
    }
}

/// With `--token`: each join on a fresh connection.
struct ConnectJoin {
    /// TCP connect → join reply.
    total: Hist,
    /// TCP connect → WebSocket handshake done (the token verified).
    connect: Hist,
    /// `phx_join` sent → reply.
    join: Hist,
}

impl Latencies for ConnectJoin {
    fn new() -> Self {
        Self {
            total: histogram(),
            connect: histogram(),
            join: histogram(),
        }
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.total.add(&other.total)?;
        self.connect.add(&other.connect)?;
        self.join.add(&other.join)?;
        Ok(())
    }
}

impl<L: Latencies> Looped<L> {
    fn new() -> Self {
        Self {
            joins: 0,
            latencies: L::new(),
            errors: Errors::default(),
        }
    }
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

    let (topic, next) = claims(args);
    let loops = sockets.into_iter().map(|ws| {
        let unique = args.unique_topics.then(|| Arc::new(args.topic.clone()));
        join_loop(ws, topic.clone(), unique, next.clone(), args.n, timeout)
    });
    let (looped, elapsed, before) = drive(target, args, loops).await?;
    let after = target.sample();
    target.check_alive()?;

    let latencies = &looped.latencies;
    let mode = Mode {
        name: "joins",
        how: format!(" over {} sockets", args.concurrency),
        rate_note: ", each followed by a leave",
        lines: vec![
            format!("  join latency:  {}", stats::describe(&latencies.join)),
            format!("  leave latency: {}", stats::describe(&latencies.leave)),
        ],
        unit: "join + leave",
        generator_note: "",
        json: json!({
            "token": false,
            "join_ms": stats::percentiles(&latencies.join),
            "leave_ms": stats::percentiles(&latencies.leave),
        }),
    };
    Ok(report(
        target,
        args,
        &looped,
        elapsed,
        (before, after),
        Vec::new(),
        mode,
    ))
}

/// The topic as a JSON string literal, and the counter the loops claim
/// joins from.
fn claims(args: &Args) -> (Arc<String>, Arc<AtomicU64>) {
    (
        Arc::new(client::json_string(&args.topic)),
        Arc::new(AtomicU64::new(0)),
    )
}

/// Runs the loops to their end (or a backstop deadline: each connect, join
/// and leave has its own timeout) and adds up what they did; also returns
/// how long they took and the sample taken before they started.
async fn drive<L: Latencies>(
    target: &Target,
    args: &Args,
    loops: impl IntoIterator<Item = impl Future<Output = Looped<L>> + Send + 'static>,
) -> anyhow::Result<(Looped<L>, Duration, Sample)> {
    let before = target.sample();
    let started = Instant::now();
    let mut running = JoinSet::new();
    for one in loops {
        running.spawn(one);
    }
    let deadline = started
        + Duration::from_secs_f64(2.0 * args.n as f64 * args.timeout / args.concurrency as f64)
        + 2 * Duration::from_secs_f64(args.timeout);
    let mut all = Looped::<L>::new();
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, running.join_next()).await {
        if let Ok(looped) = result {
            all.joins += looped.joins;
            all.latencies.add(&looped.latencies)?;
            all.errors.merge(&looped.errors);
        }
    }
    running.abort_all();
    Ok((all, started.elapsed(), before))
}

/// A mode's own parts of the report.
struct Mode {
    /// The scenario's name in the first line.
    name: &'static str,
    /// How the joins were made, in the first line.
    how: String,
    /// After the elapsed time in the second line.
    rate_note: &'static str,
    /// The latency lines, and any notes.
    lines: Vec<String>,
    /// The unit of work server CPU is reported per.
    unit: &'static str,
    /// For the generator CPU line.
    generator_note: &'static str,
    /// The mode's own JSON fields.
    json: Value,
}

fn report<L>(
    target: &Target,
    args: &Args,
    looped: &Looped<L>,
    elapsed: Duration,
    (before, after): (Sample, Sample),
    mut problems: Vec<String>,
    mode: Mode,
) -> Report {
    let Looped { joins, errors, .. } = looped;
    let per_s = *joins as f64 / elapsed.as_secs_f64();
    let cpu = after.cpu_since(&before);
    let cpu_per_join = after.cpu_us_per(&before, *joins);

    if *joins != args.n {
        problems.push(format!("{joins} of {} joins succeeded", args.n));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }

    let mut summary = vec![
        format!(
            "{}: {joins}/{} joins of `{}`{} at {} (server {}); {}",
            mode.name,
            args.n,
            args.topic,
            mode.how,
            target.endpoint.url,
            target.kind(),
            errors.describe()
        ),
        format!(
            "  {per_s:.0} joins/s ({:.2} s{})",
            elapsed.as_secs_f64(),
            mode.rate_note
        ),
    ];
    summary.extend(mode.lines);
    summary.extend(after.cpu_line(&before, *joins, mode.unit));
    summary.extend(after.generator_cpu_line(&before, mode.generator_note));

    let mut json = json!({
        "scenario": "joins",
        "server": target.kind(),
        "url": target.endpoint.url,
        "n": args.n,
        "concurrency": args.concurrency,
        "topic": args.topic,
        "joins": joins,
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "joins_per_s": per_s.round(),
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "server_cpu_ms": millis(cpu),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
        "server_cpu_us_per_join": cpu_per_join.map(round3),
    });
    if let (Value::Object(all), Value::Object(own)) = (&mut json, mode.json) {
        all.extend(own);
    }
    Report {
        summary,
        json,
        problems,
    }
}

/// Joins and leaves on one socket until `n` joins have been claimed.
async fn join_loop(
    mut ws: Ws,
    topic: Arc<String>,
    unique: Option<Arc<String>>,
    next: Arc<AtomicU64>,
    n: u64,
    timeout: Duration,
) -> Looped<JoinLeave> {
    let mut looped = Looped::<JoinLeave>::new();
    loop {
        let claimed = next.fetch_add(1, Ordering::Relaxed);
        if claimed >= n {
            break;
        }
        let topic = match &unique {
            Some(base) => Arc::new(client::json_string(&format!("{base}:{claimed}"))),
            None => topic.clone(),
        };
        let k = looped.joins + looped.errors.total();
        let join_ref = format!("j{k}");
        match client::join(&mut ws, &join_ref, &topic, timeout).await {
            Ok(took) => {
                looped.joins += 1;
                looped.latencies.join.record_duration(took);
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
            Ok(()) => looped.latencies.leave.record_duration(started.elapsed()),
            Err(failure) => {
                looped.errors.add(&failure);
                break;
            }
        }
    }
    client::close(ws).await;
    looped
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

    let (topic, next) = claims(args);
    let loops = (0..args.concurrency).map(|_| {
        connect_loop(
            endpoint.clone(),
            secret.clone(),
            topic.clone(),
            next.clone(),
            args.n,
            timeout,
        )
    });
    let (looped, elapsed, before) = drive(target, args, loops).await?;
    // Let the server finish tearing down the last connections.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = target.sample();
    target.check_alive()?;

    let latencies = &looped.latencies;
    let mut lines = vec![
        format!("  connect + join: {}", stats::describe(&latencies.total)),
        format!(
            "  connect (token verified): {}",
            stats::describe(&latencies.connect)
        ),
        format!("  join:           {}", stats::describe(&latencies.join)),
    ];
    if probed {
        lines.push(
            "  probe: a token signed with another secret was refused (the server may log it)"
                .to_owned(),
        );
    }
    let mode = Mode {
        name: "joins --token",
        how: format!(
            ", each on a fresh connection with its own token, {} at a time,",
            args.concurrency
        ),
        rate_note: "; connect with token, join, close",
        lines,
        unit: "verified connect + join (and close)",
        generator_note: ", minting included",
        json: json!({
            "token": true,
            "connect_join_ms": stats::percentiles(&latencies.total),
            "connect_ms": stats::percentiles(&latencies.connect),
            "join_ms": stats::percentiles(&latencies.join),
        }),
    };
    Ok(report(
        target,
        args,
        &looped,
        elapsed,
        (before, after),
        problems,
        mode,
    ))
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
) -> Looped<ConnectJoin> {
    let mut looped = Looped::<ConnectJoin>::new();
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
                looped.latencies.total.record_duration(started.elapsed());
                looped.joins += 1;
                looped.latencies.connect.record_duration(connected);
                looped.latencies.join.record_duration(joined);
                if let Err(failure) = client::close_and_wait(ws).await {
                    looped.errors.add(&failure);
                }
            }
            Err(failure) => looped.errors.add(&failure),
        }
    }
    looped
}
