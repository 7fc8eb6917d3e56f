//! `connections`: opens N WebSocket connections at a fixed rate, each
//! joining one channel, holds them (sending heartbeats like the official
//! client), then closes them. Reports how many joined, the errors,
//! connect and join latency, and the server's RSS and CPU: RSS before,
//! once all are joined, after the hold and after closing, and RSS per
//! connection = (after hold − before) / joined.
//!
//! A client process needs one file descriptor per connection (the open-file
//! limit here is 20,000), and an in-process server needs another one each.
//! So beyond `--per-process` connections (default 9,000), the connections
//! are split evenly across worker processes: this binary re-executed with
//! the hidden `worker` subcommand (see `worker.rs`). For 19,500
//! connections use `--spawn` or workers, so the server's own descriptors
//! fit in its limit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Endpoint, Failure, Ws};
use crate::goals::{self, Goal};
use crate::stats::{self, Errors, Hist, RecordDuration, histogram, round3};
use crate::target::Target;
use crate::{Report, worker};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub n: u64,

    /// Connections started per second (open loop: connection i starts at
    /// i / rate whether or not earlier ones have finished joining).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// The topic every connection joins, e.g. `ping` or `room:bench`.
    #[arg(long, default_value = "ping")]
    pub topic: String,

    /// Seconds to hold the connections once all have joined.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,

    /// Most connections held by one client process; more are split across
    /// worker processes. Keep 2 × this under `ulimit -n` for an in-process
    /// server (which shares this process's limit), this + 100 otherwise.
    #[arg(long, default_value_t = 9000)]
    pub per_process: u64,

    /// Seconds to wait for a connection, a join reply or a close.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

/// What opening a group of connections gave.
pub struct Opened {
    pub joined: u64,
    pub errors: Errors,
    pub connect: Hist,
    pub join: Hist,
}

impl Opened {
    pub fn empty() -> Self {
        Self {
            joined: 0,
            errors: Errors::default(),
            connect: histogram(),
            join: histogram(),
        }
    }

    pub fn merge(&mut self, other: &Opened) -> anyhow::Result<()> {
        self.joined += other.joined;
        self.errors.merge(&other.errors);
        self.connect.add(&other.connect)?;
        self.join.add(&other.join)?;
        Ok(())
    }
}

/// Connections being held by tasks of this process.
pub struct Group {
    stop: watch::Sender<bool>,
    tasks: JoinSet<bool>,
}

impl Group {
    /// Stops holding, closes every connection, and returns how many had
    /// been dropped by the server (or failed a heartbeat) while held.
    pub async fn close(mut self, timeout: Duration) -> u64 {
        let _ = self.stop.send(true);
        let mut dropped = 0;
        let deadline = Instant::now() + timeout;
        while let Ok(Some(result)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await
        {
            dropped += u64::from(result.unwrap_or(true));
        }
        // Tasks still running past the deadline are counted as dropped.
        dropped + self.tasks.len() as u64
    }
}

/// Opens `n` connections to `topic` at `rate`; returns once every one has
/// joined or failed, leaving the joined ones held by tasks.
pub async fn open(
    endpoint: &Endpoint,
    topic: &str,
    n: u64,
    rate: f64,
    timeout: Duration,
) -> (Opened, Group) {
    let topic = Arc::new(client::json_string(topic));
    let (stop, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..n {
        let (endpoint, topic, tx, stop) =
            (endpoint.clone(), topic.clone(), tx.clone(), stop_rx.clone());
        tasks.spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
            match client::connect_and_join(&endpoint, &topic, timeout, client::SMALL_READ_BUFFER)
                .await
            {
                Ok((ws, connected, joined)) => {
                    let _ = tx.send(Ok((connected, joined)));
                    hold(ws, stop, i).await
                }
                Err(failure) => {
                    let _ = tx.send(Err(failure));
                    false
                }
            }
        });
    }
    drop(tx);
    let mut opened = Opened::empty();
    let deadline = t0 + Duration::from_secs_f64(n as f64 / rate) + 3 * timeout;
    let mut answered = 0;
    while answered < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok((connected, joined)))) => {
                opened.joined += 1;
                opened.connect.record_duration(connected);
                opened.join.record_duration(joined);
            }
            Ok(Some(Err(failure))) => opened.errors.add(&failure),
            Ok(None) | Err(_) => break,
        }
        answered += 1;
    }
    for _ in answered..n {
        opened.errors.add(&Failure::new(
            "timeout",
            "the connection task never reported",
        ));
    }
    (opened, Group { stop, tasks })
}

/// Holds one joined connection until `stop`: answers nothing, reads (and
/// ignores) whatever comes, sends a heartbeat every 30 s (staggered by `i`).
/// Returns whether the connection was lost before `stop`.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>, i: u64) -> bool {
    let stagger = Duration::from_millis(i * 7919 % 30_000);
    let mut heartbeat = tokio::time::interval_at(Instant::now() + stagger, client::HEARTBEAT);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                client::close(ws).await;
                return false;
            }
            message = futures_util::StreamExt::next(&mut ws) => match message {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_)) | None => return true,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    futures_util::SinkExt::send(&mut ws, client::heartbeat()),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    return true;
                }
            }
        }
    }
}

/// Connections held either here or by worker processes.
enum Holders {
    Local(Group),
    Workers(worker::Workers),
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let timeout = Duration::from_secs_f64(args.timeout);
    let processes = args.n.div_ceil(args.per_process.max(1)).max(1);
    let client_ends = if processes == 1 { args.n } else { 0 };
    target.ensure_fds(client_ends, args.n)?;
    let before = target.sample();
    let started = Instant::now();
    let (opened, holders) = if processes == 1 {
        let (opened, group) = open(&target.endpoint, &args.topic, args.n, args.rate, timeout).await;
        (opened, Holders::Local(group))
    } else {
        let hold_bound = Duration::from_secs_f64(args.hold) + 4 * timeout + Duration::from_secs(60);
        let (opened, workers) = worker::Workers::open(
            &target.endpoint,
            &args.topic,
            args.n,
            processes,
            args.rate,
            timeout,
            hold_bound,
        )
        .await?;
        (opened, Holders::Workers(workers))
    };
    let open_time = started.elapsed();
    let joined_sample = target.sample();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = target.sample();
    let dropped = match holders {
        Holders::Local(group) => group.close(timeout).await,
        Holders::Workers(workers) => workers.close(timeout).await?,
    };
    // The server tears connections down asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = target.sample();
    target.check_alive()?;

    let rss_per_conn = match (held.rss_kb, before.rss_kb) {
        (Some(after), Some(before)) if opened.joined > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / opened.joined as f64)
        }
        _ => None,
    };
    let open_cpu = joined_sample.cpu_since(&before);
    let hold_cpu = held.cpu_since(&joined_sample);
    let cpu_per_conn = open_cpu
        .filter(|_| opened.joined > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / opened.joined as f64);

    let mut problems = Vec::new();
    if opened.joined != args.n {
        problems.push(format!(
            "{} of {} connections joined",
            opened.joined, args.n
        ));
    }
    if opened.errors.total() > 0 {
        problems.push(opened.errors.describe());
    }
    if dropped > 0 {
        problems.push(format!("{dropped} connections dropped while held"));
    }

    let rss_scope = rss_scope(target, processes);
    let mut summary = vec![
        format!(
            "connections: {}/{} joined `{}` at {} (server {}, {} client process{}); {}; {} dropped while held",
            opened.joined,
            args.n,
            args.topic,
            target.endpoint.url,
            target.kind(),
            processes,
            if processes == 1 { "" } else { "es" },
            opened.errors.describe(),
            dropped
        ),
        format!("  opened in {:.2} s", open_time.as_secs_f64()),
        format!("  connect: {}", stats::describe(&opened.connect)),
        format!("  join:    {}", stats::describe(&opened.join)),
    ];
    if let (Some(b), Some(j), Some(h), Some(c)) = (
        before.rss_kb,
        joined_sample.rss_kb,
        held.rss_kb,
        closed.rss_kb,
    ) {
        summary.push(format!(
            "  RSS ({rss_scope}): {:.1} MB before, {:.1} MB joined, {:.1} MB after {} s hold, {:.1} MB after close: {:.0} bytes per connection",
            mb(b),
            mb(j),
            mb(h),
            args.hold,
            mb(c),
            rss_per_conn.unwrap_or(0.0)
        ));
    }
    if let (Some(open_cpu), Some(hold_cpu)) = (open_cpu, hold_cpu) {
        summary.push(format!(
            "  server CPU: {:.0} ms opening ({:.0} µs per connection), {:.0} ms holding",
            open_cpu.as_secs_f64() * 1e3,
            cpu_per_conn.unwrap_or(0.0),
            hold_cpu.as_secs_f64() * 1e3
        ));
    }

    let mut json = json!({
        "scenario": "connections",
        "server": target.kind(),
        "url": target.endpoint.url,
        "n": args.n,
        "rate": args.rate,
        "topic": args.topic,
        "hold_s": args.hold,
        "client_processes": processes,
        "joined": opened.joined,
        "errors": opened.errors.total(),
        "error_kinds": opened.errors.kinds(),
        "dropped": dropped,
        "open_s": round3(open_time.as_secs_f64()),
        "connect_ms": stats::percentiles(&opened.connect),
        "join_ms": stats::percentiles(&opened.join),
        "rss_scope": rss_scope,
        "rss_kb": {
            "before": before.rss_kb,
            "joined": joined_sample.rss_kb,
            "after_hold": held.rss_kb,
            "after_close": closed.rss_kb,
        },
        "rss_per_conn_bytes": rss_per_conn.map(f64::round),
        "server_cpu_ms": {
            "open": millis(open_cpu),
            "hold": millis(hold_cpu),
        },
        "generator_cpu_ms": {
            "open": millis(joined_sample.generator_cpu_since(&before)),
            "hold": millis(held.generator_cpu_since(&joined_sample)),
        },
        "server_cpu_us_per_conn": cpu_per_conn.map(round3),
    });
    // The goal is about many idle connections, where per-process costs fade.
    if opened.joined >= 10_000
        && let Some(bytes) = rss_per_conn
    {
        let goal = Goal::at_most("memory per idle joined connection", bytes, 5000.0, "B");
        goals::attach(&[goal], &mut summary, &mut json);
    }
    Ok(Report {
        summary,
        json,
        problems,
    })
}

fn rss_scope(target: &Target, processes: u64) -> &'static str {
    match target.kind() {
        "external" => "unknown",
        _ if target.rss_includes_generator() && processes == 1 => {
            "server and generator (use --spawn for the server alone)"
        }
        _ => "server",
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Milliseconds, for JSON.
pub fn millis(duration: Option<Duration>) -> Value {
    duration.map_or(Value::Null, |d| json!(d.as_millis() as u64))
}

/// Used by the worker process: the same opening, as JSON.
pub fn encode_opened(opened: &Opened) -> Value {
    json!({
        "joined": opened.joined,
        "errors": opened.errors.encode(),
        "connect": stats::encode(&opened.connect),
        "join": stats::encode(&opened.join),
    })
}

pub fn decode_opened(value: &Value) -> Opened {
    Opened {
        joined: value["joined"].as_u64().unwrap_or(0),
        errors: Errors::decode(&value["errors"]),
        connect: stats::decode(&value["connect"]),
        join: stats::decode(&value["join"]),
    }
}
