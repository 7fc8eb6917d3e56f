//! `fanout`: N subscribers join a topic (`room:bench`); one publisher,
//! joined to the same topic, pushes `new_msg {"body": "<t_ns>"}` at a fixed
//! rate, and the server broadcasts each message to every member (Roost's
//! `room_chat` plugin does this for `new_msg`).
//!
//! Open loop: message i is scheduled at start + i / rate and carries its
//! scheduled time (ns since the generator's time base) in `body`; latency
//! is the time a subscriber receives it minus that scheduled time, so a
//! publisher or server falling behind shows up as latency, not as a lower
//! send rate. Reports deliveries received per second, the delivery ratio
//! received / (sent × N), latency percentiles, and the server's CPU per
//! delivery (deliveries include the publisher's own copy of each message).
//!
//! With `--cluster N`, subscriber i connects to node i mod N and the
//! publisher to node 1, so every broadcast crosses Redis; the report adds
//! each node's CPU per delivery it made, Redis PUBLISH calls (and all
//! commands) per broadcast, and Redis's CPU.
//!
//! Subscribers read from the moment they join, and publishing starts only
//! once the setup traffic has settled (no other frames for 250 ms): with
//! presence on the topic, every join sends a `presence_diff` to every
//! member, N²/2 frames in all, which would otherwise still be in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Endpoint, Failure, Frame, Ws};
use crate::connections::millis;
use crate::pacer::{Pacer, Schedule};
use crate::stats::{self, RecordDuration, SharedErrors, SharedHist, histogram, round3};
use crate::target::{ClusterSample, Target};
use crate::{Report, goals};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Subscribers joined to the topic (each one connection).
    #[arg(long, default_value_t = 100)]
    pub subscribers: u64,

    /// Messages published per second (open loop), each delivered to every
    /// subscriber. At least 0.1.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Seconds to publish for.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,

    /// The topic; the server must broadcast `new_msg {body}` pushed to it
    /// to all its members.
    #[arg(long, default_value = "room:bench")]
    pub topic: String,

    /// Subscriber connections started per second before publishing.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,

    /// Seconds to wait for a connection, a reply, or the last deliveries
    /// after the last message was sent.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

/// What the publisher's and subscribers' tasks share.
#[derive(Clone)]
struct Shared {
    endpoint: Endpoint,
    /// The topic as a JSON string literal, for frames sent.
    topic_json: Arc<str>,
    /// The topic as it appears in frames received.
    topic: Arc<str>,
    timeout: Duration,
    /// The time base of the `t_ns` in message bodies and of `last_other`.
    base: Instant,
    /// When tasks give up whatever happens.
    deadline: Instant,
    /// `new_msg` deliveries received by all subscribers.
    received: Arc<AtomicU64>,
    /// Other frames received by subscribers (presence, heartbeat replies).
    others: Arc<AtomicU64>,
    /// When the last of those came, in ns since `base`.
    last_other: Arc<AtomicU64>,
    errors: SharedErrors,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// How long subscribers must see no setup traffic before publishing starts.
const SETTLE: Duration = Duration::from_millis(250);

/// What one subscriber saw.
struct Seen {
    last: Option<Instant>,
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate >= 0.1, "--rate must be at least 0.1");
    anyhow::ensure!(args.connect_rate > 0.0, "--connect-rate must be positive");
    target.ensure_fds(args.subscribers + 1, args.subscribers + 1)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let endpoint = target.endpoint.clone();
    let count = (args.duration * args.rate).floor() as u64;
    let base = Instant::now();
    let setup = Duration::from_secs_f64(args.subscribers as f64 / args.connect_rate) + 4 * timeout;
    let hard_deadline = base + setup + Duration::from_secs_f64(args.duration) + 3 * timeout;
    let (stop, stop_rx) = watch::channel(false);
    let shared = Shared {
        endpoint: endpoint.clone(),
        topic_json: client::json_string(&args.topic).into(),
        topic: args.topic.as_str().into(),
        timeout,
        base,
        deadline: hard_deadline,
        received: Arc::new(AtomicU64::new(0)),
        others: Arc::new(AtomicU64::new(0)),
        last_other: Arc::new(AtomicU64::new(0)),
        errors: SharedErrors::default(),
        stop: stop_rx,
    };
    let (received, errors) = (shared.received.clone(), shared.errors.clone());
    let latency = SharedHist::new();

    // Subscribers: connect and join at `connect_rate`, then read.
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel();
    let mut subscribers = JoinSet::new();
    let endpoints = target.endpoints.clone();
    for i in 0..args.subscribers {
        let at = base + Duration::from_secs_f64(i as f64 / args.connect_rate);
        let (shared, recorder, joined) = (shared.clone(), latency.recorder(), joined_tx.clone());
        let endpoint = endpoints[(i as usize) % endpoints.len()].clone();
        subscribers.spawn(async move {
            tokio::time::sleep_until(at).await;
            let connected = client::connect_and_join(
                &endpoint,
                &shared.topic_json,
                shared.timeout,
                client::LARGE_READ_BUFFER,
            )
            .await;
            match connected {
                Ok((ws, _, took)) => {
                    let _ = joined.send(Ok(took));
                    subscribe(ws, shared, recorder).await
                }
                Err(failure) => {
                    let _ = joined.send(Err(failure));
                    Seen { last: None }
                }
            }
        });
    }
    drop(joined_tx);
    let mut join_latency = histogram();
    let (mut joined, mut reported) = (0, 0);
    // Each subscriber reports once (and keeps its sender while it reads, so
    // the channel does not close): stop when all have.
    while reported < args.subscribers
        && let Ok(Some(result)) = tokio::time::timeout_at(base + setup, joined_rx.recv()).await
    {
        reported += 1;
        match result {
            Ok(took) => {
                joined += 1;
                join_latency.record_duration(took);
            }
            // Subscribers that never joined count as errors too.
            Err(failure) => errors.add(&failure),
        }
    }

    let replies = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    let publisher = Publisher {
        shared: shared.clone(),
        replies: replies.clone(),
        copies: copies.clone(),
    }
    .start()?;
    tokio::time::timeout(timeout + Duration::from_secs(1), publisher.joined)
        .await
        .map_err(|_| anyhow::anyhow!("the publisher did not join in time"))??
        .map_err(|failure| anyhow::anyhow!("the publisher could not join: {failure}"))?;

    // Let setup traffic (presence) drain before measuring.
    let setup_started = Instant::now();
    let settle_deadline = setup_started + timeout;
    loop {
        let last = shared.base + Duration::from_nanos(shared.last_other.load(Ordering::Relaxed));
        let now = Instant::now();
        if now.saturating_duration_since(last.max(setup_started)) >= SETTLE
            || now >= settle_deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_frames = shared.others.load(Ordering::Relaxed);
    let settle_time = setup_started.elapsed();
    let settled = Instant::now() < settle_deadline;

    let before = target.sample();
    let cluster_before = target.cluster_sample().await;
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(args.duration);
    let schedule = Schedule {
        start,
        rate: args.rate,
        count,
    };
    let _ = publisher.go.send(schedule);
    let (sent, send_lag) = tokio::time::timeout_at(hard_deadline, publisher.published)
        .await
        .map_err(|_| anyhow::anyhow!("the publisher did not finish in time"))?
        .map_err(|_| anyhow::anyhow!("the publisher's thread ended early"))?;

    // Wait for every delivery and reply, or the drain timeout.
    let expected_received = sent * joined;
    let drain_deadline = Instant::now().max(end) + timeout;
    while (received.load(Ordering::Relaxed) < expected_received
        || replies.load(Ordering::Relaxed) < sent)
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = target.sample();
    let cluster_after = target.cluster_sample().await;
    let _ = stop.send(true);
    let mut last = None;
    while let Ok(Some(seen)) = tokio::time::timeout_at(hard_deadline, subscribers.join_next()).await
    {
        if let Ok(Seen { last: Some(at) }) = seen {
            last = last.max(Some(at));
        }
    }
    subscribers.abort_all();
    while !publisher.thread.is_finished() && Instant::now() < hard_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    target.check_alive()?;

    let received = received.load(Ordering::Relaxed);
    let copies = copies.load(Ordering::Relaxed);
    let replies = replies.load(Ordering::Relaxed);
    let expected = sent * args.subscribers;
    let ratio = if expected == 0 {
        0.0
    } else {
        received as f64 / expected as f64
    };
    let window = last.map_or(0.0, |last| {
        last.saturating_duration_since(start).as_secs_f64()
    });
    let per_s = if window > 0.0 {
        received as f64 / window
    } else {
        0.0
    };
    let latency = latency.snapshot();
    let errors = errors.get();
    let cpu = after.cpu_since(&before);
    let server_deliveries = received + copies;
    let cpu_per_delivery = after.cpu_us_per(&before, server_deliveries);

    let mut problems = Vec::new();
    if sent != count {
        problems.push(format!("sent {sent} of {count} messages"));
    }
    if received != expected || count == 0 {
        problems.push(format!("received {received} of {expected} deliveries"));
    }
    if replies != sent {
        problems.push(format!("{replies} ok replies to {sent} pushes"));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }
    if !settled {
        problems.push(format!(
            "setup traffic had not settled after {} s ({setup_frames} frames)",
            args.timeout
        ));
    }

    let mut summary = vec![
        format!(
            "fanout: {} subscribers ({joined} joined) on `{}` at {} (server {}); {} msg/s for {} s; {}",
            args.subscribers,
            args.topic,
            endpoint.url,
            target.kind(),
            args.rate,
            args.duration,
            errors.describe()
        ),
        format!(
            "  setup: join {}; {setup_frames} other frames (presence) settled in {:.2} s",
            stats::describe(&join_latency),
            settle_time.as_secs_f64()
        ),
        format!(
            "  sent {sent}, delivered {received} of {expected} (ratio {ratio:.4}), {per_s:.0} deliveries/s over {window:.2} s"
        ),
        format!(
            "  latency (scheduled send → received): {}",
            stats::describe(&latency)
        ),
        format!(
            "  publisher send lag (actual − scheduled): {}",
            stats::describe(&send_lag)
        ),
    ];
    if let (Some(cpu), Some(per)) = (cpu, cpu_per_delivery) {
        summary.push(format!(
            "  server CPU: {:.0} ms, {per:.2} µs per delivery ({server_deliveries} incl. the publisher's copies)",
            cpu.as_secs_f64() * 1e3
        ));
    }
    summary.extend(after.generator_cpu_line(&before, ""));
    let cluster = match (cluster_before, cluster_after) {
        (Some(before), Some(after)) => {
            let (lines, json) =
                cluster_report(&before, &after, sent, args.subscribers, copies, ratio);
            summary.extend(lines);
            json
        }
        _ => serde_json::Value::Null,
    };

    let mut json = json!({
        "scenario": "fanout",
        "server": target.kind(),
        "url": endpoint.url,
        "topic": args.topic,
        "subscribers": args.subscribers,
        "joined": joined,
        "setup_frames": setup_frames,
        "rate": args.rate,
        "duration_s": args.duration,
        "sent": sent,
        "ok_replies": replies,
        "expected": expected,
        "received": received,
        "delivery_ratio": (ratio * 1e6).round() / 1e6,
        "deliveries_per_s": per_s.round(),
        "window_s": round3(window),
        "latency_ms": stats::percentiles(&latency),
        "send_lag_ms": stats::percentiles(&send_lag),
        "join_ms": stats::percentiles(&join_latency),
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "server_deliveries": server_deliveries,
        "server_cpu_ms": millis(cpu),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
        "server_cpu_us_per_delivery": cpu_per_delivery.map(round3),
        "cluster": cluster,
    });
    let p99 = latency.value_at_quantile(0.99) as f64 / 1e3;
    let goals = goals::fanout(
        args.subscribers,
        args.rate,
        p99,
        (received, expected),
        cpu_per_delivery,
    );
    goals::attach(&goals, &mut summary, &mut json);
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// Per node: CPU per delivery it made (its subscribers' copies, and node
/// 1's publisher copy); Redis: PUBLISH calls and commands per broadcast,
/// CPU. Deliveries per node are counted from the split, scaled by the
/// delivery ratio.
fn cluster_report(
    before: &ClusterSample,
    after: &ClusterSample,
    sent: u64,
    subscribers: u64,
    copies: u64,
    ratio: f64,
) -> (Vec<String>, serde_json::Value) {
    let n = after.nodes_cpu.len() as u64;
    let mut lines = Vec::new();
    let mut nodes = Vec::new();
    for (i, (b, a)) in before.nodes_cpu.iter().zip(&after.nodes_cpu).enumerate() {
        let i = i as u64;
        let on_node = subscribers / n + u64::from(i < subscribers % n);
        let deliveries =
            (on_node as f64 * sent as f64 * ratio) as u64 + if i == 0 { copies } else { 0 };
        let cpu = a.zip(*b).map(|(a, b)| a.saturating_sub(b));
        let per = cpu
            .filter(|_| deliveries > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / deliveries as f64);
        lines.push(format!(
            "  node {}: {on_node} subscribers, {deliveries} deliveries, CPU {} ms, {} µs per delivery",
            i + 1,
            cpu.map_or("?".into(), |d| d.as_millis().to_string()),
            per.map_or("?".into(), |p| format!("{p:.2}"))
        ));
        nodes.push(json!({
            "subscribers": on_node,
            "deliveries": deliveries,
            "cpu_ms": millis(cpu),
            "cpu_us_per_delivery": per.map(round3),
        }));
    }
    let publishes = after.redis_publishes.saturating_sub(before.redis_publishes);
    let commands = after.redis_commands.saturating_sub(before.redis_commands);
    let per_broadcast = |x: u64| {
        if sent == 0 {
            0.0
        } else {
            x as f64 / sent as f64
        }
    };
    let redis_cpu = after
        .redis_cpu
        .zip(before.redis_cpu)
        .map(|(a, b)| a.saturating_sub(b));
    lines.push(format!(
        "  redis: {publishes} PUBLISH for {sent} broadcasts ({:.2} per broadcast), {commands} commands ({:.2} per broadcast), CPU {} ms",
        per_broadcast(publishes),
        per_broadcast(commands),
        redis_cpu.map_or("?".into(), |d| d.as_millis().to_string()),
    ));
    let json = json!({
        "nodes": nodes,
        "redis_publishes": publishes,
        "redis_publishes_per_broadcast": round3(per_broadcast(publishes)),
        "redis_commands_per_broadcast": round3(per_broadcast(commands)),
        "redis_cpu_ms": millis(redis_cpu),
    });
    (lines, json)
}

/// The publisher: one socket on a thread (`bench-publisher`) and runtime
/// of its own, so that the subscribers' load on the generator's runtime
/// does not delay its sends.
struct Publisher {
    shared: Shared,
    /// Ok replies to its pushes.
    replies: Arc<AtomicU64>,
    /// Its own copies of the broadcasts.
    copies: Arc<AtomicU64>,
}

/// The running publisher thread.
struct Started {
    /// Resolves once the publisher has joined (or failed to).
    joined: oneshot::Receiver<Result<(), Failure>>,
    /// Starts the schedule.
    go: oneshot::Sender<Schedule>,
    /// How many messages were sent, and how late each send was.
    published: oneshot::Receiver<(u64, stats::Hist)>,
    /// Lives until `shared.stop` (or the deadline), so that its CPU time
    /// is read as the generator's.
    thread: std::thread::JoinHandle<()>,
}

impl Publisher {
    fn start(self) -> anyhow::Result<Started> {
        let (joined_tx, joined) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let (published_tx, published) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("bench-publisher".into())
            .spawn(move || {
                runtime.block_on(self.run(joined_tx, go_rx, published_tx));
            })?;
        Ok(Started {
            joined,
            go,
            published,
            thread,
        })
    }

    async fn run(
        self,
        joined: oneshot::Sender<Result<(), Failure>>,
        go: oneshot::Receiver<Schedule>,
        published: oneshot::Sender<(u64, stats::Hist)>,
    ) {
        let shared = &self.shared;
        let connected = client::connect_and_join(
            &shared.endpoint,
            &shared.topic_json,
            shared.timeout,
            client::LARGE_READ_BUFFER,
        )
        .await;
        let ws = match connected {
            Ok((ws, _, _)) => {
                let _ = joined.send(Ok(()));
                ws
            }
            Err(failure) => {
                let _ = joined.send(Err(failure));
                return;
            }
        };
        let Ok(Ok(schedule)) = tokio::time::timeout_at(self.shared.deadline, go).await else {
            return;
        };
        let Ok((pacer, mut lanes)) = Pacer::start(schedule, 1) else {
            self.shared
                .errors
                .add(&Failure::new("internal", "could not start the pacer"));
            return;
        };
        let Some(due) = lanes.pop() else {
            return;
        };
        let (sink, stream) = ws.split();
        let reader = tokio::spawn(read_publisher(
            stream,
            self.shared.clone(),
            self.replies.clone(),
            self.copies.clone(),
        ));
        let _ = published.send(self.publish(sink, schedule, due).await);
        let mut stop = self.shared.stop.clone();
        let _ = tokio::time::timeout_at(self.shared.deadline, stop.wait_for(|stop| *stop)).await;
        pacer.stop();
        let _ = tokio::time::timeout_at(self.shared.deadline, reader).await;
    }

    /// Sends the scheduled messages (open loop) until the pacer is done;
    /// returns how many were sent and how late each send was.
    async fn publish(
        &self,
        mut sink: SplitSink<Ws, Message>,
        schedule: Schedule,
        mut due: mpsc::UnboundedReceiver<u64>,
    ) -> (u64, stats::Hist) {
        let (topic, shared) = (&self.shared.topic_json, &self.shared);
        let mut lag = histogram();
        let mut sent = 0;
        while let Some(i) = due.recv().await {
            let scheduled = schedule.at(i);
            lag.record_duration(Instant::now().saturating_duration_since(scheduled));
            let t_ns = scheduled.duration_since(shared.base).as_nanos();
            let payload = format!(r#"{{"body":"{t_ns}"}}"#);
            let frame = client::frame(Some("1"), &i.to_string(), topic, "new_msg", &payload);
            if let Err(failure) = client::send(&mut sink, frame, shared.timeout).await {
                shared.errors.add(&failure);
                break;
            }
            sent += 1;
        }
        (sent, lag)
    }
}

/// Counts the publisher's ok replies and its own copies of the broadcasts.
async fn read_publisher(
    mut stream: SplitStream<Ws>,
    shared: Shared,
    replies: Arc<AtomicU64>,
    copies: Arc<AtomicU64>,
) {
    let Shared {
        errors,
        mut stop,
        deadline,
        ..
    } = shared;
    loop {
        let text = tokio::select! {
            _ = stop.changed() => return,
            text = client::next_text(&mut stream, deadline) => text,
        };
        let text = match text {
            Ok(text) => text,
            Err(failure) => {
                errors.add(&Failure::new(
                    failure.kind,
                    format!("publisher: {}", failure.detail),
                ));
                return;
            }
        };
        let Ok(frame) = Frame::parse(&text) else {
            errors.add(&Failure::new("protocol", text.as_str()));
            continue;
        };
        match (frame.event(), frame.reply_status()) {
            ("new_msg", _) => {
                copies.fetch_add(1, Ordering::Relaxed);
            }
            (_, Some("ok")) if frame.r#ref() != Some("hb") => {
                replies.fetch_add(1, Ordering::Relaxed);
            }
            (_, Some("ok")) => {}
            (_, Some(_)) => errors.add(&Failure::new("reply_error", text.as_str())),
            _ => {}
        }
    }
}

/// Receives frames until `stop`: records each `new_msg`'s latency, and
/// counts the other frames (setup traffic such as presence).
async fn subscribe(mut ws: Ws, shared: Shared, mut recorder: stats::Recorder) -> Seen {
    #[derive(Deserialize)]
    struct Body<'a> {
        body: &'a str,
    }
    let mut stop = shared.stop.clone();
    let errors = &shared.errors;
    let mut seen = Seen { last: None };
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + client::HEARTBEAT, client::HEARTBEAT);
    let give_up = tokio::time::sleep_until(shared.deadline);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    let Ok(frame) = Frame::parse(&text) else {
                        errors.add(&Failure::new("protocol", text.as_str()));
                        continue;
                    };
                    if frame.event() != "new_msg" || frame.topic() != &*shared.topic {
                        shared.others.fetch_add(1, Ordering::Relaxed);
                        shared.last_other.fetch_max(shared.since_base(now), Ordering::Relaxed);
                        continue;
                    }
                    let t_ns = serde_json::from_str::<Body>(frame.payload().get())
                        .ok()
                        .and_then(|body| body.body.parse::<u64>().ok());
                    let Some(t_ns) = t_ns else {
                        errors.add(&Failure::new("protocol", format!("unexpected new_msg: {text}")));
                        continue;
                    };
                    let scheduled = shared.base + Duration::from_nanos(t_ns);
                    recorder.record(now.saturating_duration_since(scheduled));
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    seen.last = Some(now);
                }
                Some(Ok(Message::Close(frame))) => {
                    errors.add(&Failure::new("closed", format!("subscriber closed by the server: {frame:?}")));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    errors.add(&Failure::new("closed", format!("subscriber: {e}")));
                    break;
                }
                None => {
                    errors.add(&Failure::new("closed", "subscriber: connection ended"));
                    break;
                }
            },
            _ = heartbeat.tick() => {
                let sent = tokio::time::timeout(Duration::from_secs(5), futures_util::SinkExt::send(&mut ws, client::heartbeat())).await;
                if !matches!(sent, Ok(Ok(()))) {
                    errors.add(&Failure::new("send", "subscriber heartbeat failed"));
                    break;
                }
            }
            () = &mut give_up => {
                errors.add(&Failure::new("timeout", "subscriber still running at the hard deadline"));
                break;
            }
        }
    }
    recorder.flush();
    client::close(ws).await;
    seen
}
