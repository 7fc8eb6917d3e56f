//! `reqreply`: K sockets joined to `ping` send `ping` pushes at a fixed
//! total rate and wait for the replies (push → WASM `handle_in` → reply).
//!
//! Open loop: request n (0, 1, 2, …) is scheduled at start + n / rate and
//! sent on socket n mod K, whether or not earlier replies have come (the
//! pacer thread of `pacer.rs` keeps the schedule to ~0.1 ms). Its ref
//! is `"<n>:<sent_ns>"`, which the server echoes, so the reader knows both
//! the scheduled and the actual send time. Latency is reported from the
//! scheduled time (what a client sees, including the generator's own lag)
//! and from the actual send (the server's service time
//! plus loopback). Requests without a reply after the drain timeout count
//! as timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::Report;
use crate::client::{self, Failure, Frame, Ws};
use crate::connections::millis;
use crate::pacer::{Pacer, Schedule};
use crate::stats::{self, SharedErrors, SharedHist, round3};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Sockets, each joined to the topic; requests are spread evenly.
    #[arg(long, default_value_t = 10)]
    pub sockets: u64,

    /// Requests per second across all sockets (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Seconds to send for.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,

    /// The topic the sockets join.
    #[arg(long, default_value = "ping")]
    pub topic: String,

    /// The event of each push.
    #[arg(long, default_value = "ping")]
    pub event: String,

    /// The payload of each push (a JSON object).
    #[arg(long, default_value = "{}")]
    pub payload: String,

    /// Seconds to wait for a connection or join, and for the last replies
    /// after the last request was sent.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// The request schedule and the time base of the send times in refs,
/// shared by senders and readers.
#[derive(Clone, Copy)]
pub struct Clock {
    pub base: Instant,
    pub schedule: Schedule,
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rate > 0.0 && args.sockets > 0,
        "--rate and --sockets must be positive"
    );
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&args.payload)
        .map_err(|e| anyhow::anyhow!("--payload must be a JSON object: {e}"))?;
    let timeout = Duration::from_secs_f64(args.timeout);
    target.ensure_fds(args.sockets, args.sockets)?;
    let endpoint = &target.endpoint.clone();
    let opened = client::open_joined(
        endpoint,
        &args.topic,
        args.sockets,
        1000.0,
        timeout,
        client::LARGE_READ_BUFFER,
    )
    .await;
    anyhow::ensure!(
        opened.errors.total() == 0,
        "not every socket joined `{}`: {}",
        args.topic,
        opened.errors.describe()
    );

    let count = (args.duration * args.rate).floor() as u64;
    let base = Instant::now();
    let clock = Clock {
        base,
        schedule: Schedule {
            start: base + Duration::from_millis(100),
            rate: args.rate,
            count,
        },
    };
    let hard_deadline = clock.schedule.start + Duration::from_secs_f64(args.duration) + 3 * timeout;
    let (stop, stop_rx) = watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let latency = SharedHist::new();
    let service = SharedHist::new();
    let errors = SharedErrors::default();
    let topic = Arc::new(client::json_string(&args.topic));
    let event = Arc::new(args.event.clone());
    let payload = Arc::new(args.payload.clone());

    let before = target.sample();
    let (pacer, lanes) = Pacer::start(clock.schedule, opened.sockets.len())?;
    let mut senders = JoinSet::new();
    let mut readers = JoinSet::new();
    for (ws, due) in opened.sockets.into_iter().zip(lanes) {
        let (sink, stream) = ws.split();
        let requests = Requests {
            due,
            topic: topic.clone(),
            event: event.clone(),
            payload: payload.clone(),
        };
        senders.spawn(send(sink, requests, clock, timeout, errors.clone()));
        readers.spawn(read(
            stream,
            clock,
            answered.clone(),
            (latency.recorder(), service.recorder()),
            errors.clone(),
            stop_rx.clone(),
            hard_deadline,
        ));
    }
    let mut sent = 0;
    while let Ok(Some(result)) = tokio::time::timeout_at(hard_deadline, senders.join_next()).await {
        sent += result.unwrap_or(0);
    }
    senders.abort_all();
    let drain_deadline = Instant::now() + timeout;
    while answered.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = target.sample();
    pacer.stop();
    let _ = stop.send(true);
    let mut last = None;
    while let Ok(Some(result)) = tokio::time::timeout_at(hard_deadline, readers.join_next()).await {
        if let Ok(Some(at)) = result {
            last = last.max(Some(at));
        }
    }
    readers.abort_all();
    target.check_alive()?;

    let answered = answered.load(Ordering::Relaxed);
    let timeouts = sent.saturating_sub(answered);
    let window = last.map_or(0.0, |last| {
        last.saturating_duration_since(clock.schedule.start)
            .as_secs_f64()
    });
    let achieved = if window > 0.0 {
        answered as f64 / window
    } else {
        0.0
    };
    let (latency, service, errors) = (latency.snapshot(), service.snapshot(), errors.get());
    let cpu = after.cpu_since(&before);
    let cpu_per_request = cpu
        .filter(|_| answered > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / answered as f64);

    let mut problems = Vec::new();
    if sent != count || count == 0 {
        problems.push(format!("sent {sent} of {count} requests"));
    }
    if timeouts > 0 {
        problems.push(format!("{timeouts} requests got no reply"));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }

    let mut summary = vec![
        format!(
            "reqreply: {} sockets on `{}` at {} (server {}); `{}` at {} req/s for {} s; {}",
            args.sockets,
            args.topic,
            endpoint.url,
            target.kind(),
            args.event,
            args.rate,
            args.duration,
            errors.describe()
        ),
        format!("  sent {sent}, answered {answered} ({achieved:.0}/s), {timeouts} timeouts"),
        format!(
            "  latency from scheduled send: {}",
            stats::describe(&latency)
        ),
        format!(
            "  latency from actual send:    {}",
            stats::describe(&service)
        ),
    ];
    if let (Some(cpu), Some(per)) = (cpu, cpu_per_request) {
        summary.push(format!(
            "  server CPU: {:.0} ms, {per:.1} µs per request",
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
        "scenario": "reqreply",
        "server": target.kind(),
        "url": endpoint.url,
        "sockets": args.sockets,
        "topic": args.topic,
        "event": args.event,
        "rate": args.rate,
        "duration_s": args.duration,
        "sent": sent,
        "answered": answered,
        "achieved_rps": achieved.round(),
        "timeouts": timeouts,
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "latency_ms": stats::percentiles(&latency),
        "service_ms": stats::percentiles(&service),
        "server_cpu_ms": millis(cpu),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
        "server_cpu_us_per_request": cpu_per_request.map(round3),
    });
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// The requests one socket sends: each n the pacer hands it.
pub struct Requests {
    pub due: mpsc::UnboundedReceiver<u64>,
    pub topic: Arc<String>,
    pub event: Arc<String>,
    pub payload: Arc<String>,
}

/// Sends one socket's share of the schedule as the pacer hands it over;
/// returns how many were sent. Ends when the pacer is done. (Also used by
/// `reload`.)
pub async fn send(
    mut sink: SplitSink<Ws, Message>,
    mut requests: Requests,
    clock: Clock,
    timeout: Duration,
    errors: SharedErrors,
) -> u64 {
    let mut sent = 0;
    loop {
        // A socket with long gaps between requests keeps itself alive.
        let n = match tokio::time::timeout(client::HEARTBEAT, requests.due.recv()).await {
            Ok(Some(n)) => n,
            Ok(None) => return sent,
            Err(_) => {
                let heartbeat = client::HEARTBEAT_FRAME.to_owned();
                if let Err(failure) = client::send(&mut sink, heartbeat, timeout).await {
                    errors.add(&failure);
                    return sent;
                }
                continue;
            }
        };
        let sent_ns = clock.base.elapsed().as_nanos();
        let frame = client::frame(
            Some("1"),
            &format!("{n}:{sent_ns}"),
            &requests.topic,
            &requests.event,
            &requests.payload,
        );
        if let Err(failure) = client::send(&mut sink, frame, timeout).await {
            errors.add(&failure);
            return sent;
        }
        sent += 1;
    }
}

/// Reads one socket's replies until `stop`; returns when the last came.
async fn read(
    mut stream: SplitStream<Ws>,
    clock: Clock,
    answered: Arc<AtomicU64>,
    (mut latency, mut service): (stats::Recorder, stats::Recorder),
    errors: SharedErrors,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Option<Instant> {
    let mut last = None;
    loop {
        let text = tokio::select! {
            biased;
            _ = stop.changed() => break,
            text = client::next_text(&mut stream, deadline) => text,
        };
        let now = Instant::now();
        let text = match text {
            Ok(text) => text,
            Err(failure) => {
                errors.add(&failure);
                break;
            }
        };
        let Ok(frame) = Frame::parse(&text) else {
            errors.add(&Failure::new("protocol", text.as_str()));
            continue;
        };
        let Some(status) = frame.reply_status() else {
            continue;
        };
        let Some((n, sent_ns)) = frame.r#ref().and_then(|r| r.split_once(':')) else {
            continue;
        };
        let (Ok(n), Ok(sent_ns)) = (n.parse::<u64>(), sent_ns.parse::<u64>()) else {
            continue;
        };
        if status != "ok" {
            errors.add(&Failure::new("reply_error", text.as_str()));
        }
        latency.record(now.saturating_duration_since(clock.schedule.at(n)));
        service.record(now.saturating_duration_since(clock.base + Duration::from_nanos(sent_ns)));
        answered.fetch_add(1, Ordering::Relaxed);
        last = Some(now);
    }
    last
}
