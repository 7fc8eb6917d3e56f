//! `reqreply`: K sockets joined to `ping` send `ping` pushes at a fixed
//! total rate and wait for the replies (push → WASM `handle_in` → reply).
//!
//! Open loop, as in `pushes.rs`: request n is scheduled at start + n / rate
//! and sent on socket n mod K with ref `"<n>:<sent_ns>"`. Latency is
//! reported from the scheduled time (what a client sees, including the
//! generator's own lag) and from the actual send (the server's service time
//! plus loopback). Requests without a reply after the drain timeout count
//! as timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Failure, Frame, Ws};
use crate::connections::millis;
use crate::pacer::Pacer;
use crate::pushes::{self, Clock, Requests};
use crate::stats::{self, SharedErrors, SharedHist, round3};
use crate::target::Target;
use crate::{Report, goals};

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

    let clock = Clock::new(args.rate, args.duration);
    let count = clock.schedule.count;
    let hard_deadline = clock.hard_deadline(Duration::from_secs_f64(args.duration), timeout);
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
        senders.spawn(pushes::send(sink, requests, clock, timeout, errors.clone()));
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
    let sent = pushes::sent(senders, hard_deadline).await;
    pushes::drain(&answered, sent, timeout).await;
    let after = target.sample();
    pacer.stop();
    let _ = stop.send(true);
    let last = pushes::read(readers, hard_deadline)
        .await
        .into_iter()
        .flatten()
        .max();
    target.check_alive()?;

    let answered = answered.load(Ordering::Relaxed);
    let timeouts = sent.saturating_sub(answered);
    let achieved = clock.achieved(answered, last);
    let (latency, service, errors) = (latency.snapshot(), service.snapshot(), errors.get());
    let cpu = after.cpu_since(&before);
    let cpu_per_request = after.cpu_us_per(&before, answered);

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
    summary.extend(after.cpu_line(&before, answered, "request"));
    summary.extend(after.generator_cpu_line(&before, ""));

    let mut json = json!({
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
    let p99 = latency.value_at_quantile(0.99) as f64 / 1e3;
    let goals = goals::reqreply(args.sockets, args.rate, p99, (answered, sent));
    goals::attach(&goals, &mut summary, &mut json);
    Ok(Report {
        summary,
        json,
        problems,
    })
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
    while let Some((text, now)) =
        pushes::next_reply(&mut stream, &mut stop, deadline, &errors).await
    {
        let Ok(frame) = Frame::parse(&text) else {
            errors.add(&Failure::new("protocol", text.as_str()));
            continue;
        };
        let Some(status) = frame.reply_status() else {
            continue;
        };
        let Some((n, sent_at)) = clock.reply_to(&frame) else {
            continue;
        };
        if status != "ok" {
            errors.add(&Failure::new("reply_error", text.as_str()));
        }
        latency.record(now.saturating_duration_since(clock.schedule.at(n)));
        service.record(now.saturating_duration_since(sent_at));
        answered.fetch_add(1, Ordering::Relaxed);
        last = Some(now);
    }
    last
}
