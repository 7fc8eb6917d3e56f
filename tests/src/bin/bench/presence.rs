//! `presence`: a crowd joins one room. A watcher joins the room chat's
//! `room:<topic>` first, then `--n` named users join it on sockets of their
//! own, paced at `--rate` joins per second; every socket reads all it is
//! sent. Reports the time from the first crowd join until the watcher's
//! view (its `presence_state` plus the joins of every `presence_diff`)
//! lists everyone, the frames and bytes all the clients received (what a
//! crowd costs the server to tell everyone), the diffs the watcher got, the
//! server's RSS growth and its CPU per join.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Failure, Ws};
use crate::connections::millis;
use crate::stats::{SharedErrors, round3};
use crate::target::Target;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Named users joining the room.
    #[arg(long, default_value_t = 2000)]
    pub n: u64,

    /// Joins per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// The room (the topic is `room:<room>`).
    #[arg(long, default_value = "crowd")]
    pub room: String,

    /// Seconds to wait for a connection, a join, or the watcher's view
    /// after the last join.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

/// What every client received, together.
#[derive(Default)]
struct Received {
    frames: AtomicU64,
    bytes: AtomicU64,
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.n > 0 && args.rate > 0.0,
        "--n and --rate must be positive"
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    target.ensure_fds(args.n + 1, args.n + 1)?;
    let endpoint = target.endpoint.clone();
    let topic = client::json_string(&format!("room:{}", args.room));
    let received = Arc::new(Received::default());
    let errors = SharedErrors::default();

    let join = |user: &str| {
        let payload = json!({ "username": user }).to_string();
        client::frame(Some("1"), "1", &topic, "phx_join", &payload)
    };
    let watcher = async {
        let mut ws = endpoint.connect(timeout, client::LARGE_READ_BUFFER).await?;
        client::send(&mut ws, join("watcher"), timeout).await?;
        Ok::<_, Failure>(ws)
    };
    let mut watcher = watcher
        .await
        .map_err(|failure| anyhow::anyhow!("the watcher: {failure}"))?;

    let before = target.sample();
    let started = Instant::now();
    let spacing = Duration::from_secs_f64(1.0 / args.rate);
    let last_join_at = started + spacing.mul_f64(args.n as f64);
    let stop_at = last_join_at + timeout;
    let mut crowd = JoinSet::new();
    for i in 0..args.n {
        let (endpoint, frame) = (endpoint.clone(), join(&format!("u{i}")));
        let (received, errors) = (received.clone(), errors.clone());
        let at = started + spacing.mul_f64(i as f64);
        crowd.spawn(async move {
            tokio::time::sleep_until(at).await;
            let joined = async {
                let mut ws = endpoint.connect(timeout, client::LARGE_READ_BUFFER).await?;
                client::send(&mut ws, frame, timeout).await?;
                Ok::<_, Failure>(ws)
            };
            match joined.await {
                Ok(ws) => count(ws, &received, &errors, stop_at).await,
                Err(failure) => errors.add(&failure),
            }
        });
    }

    // The watcher's view: everyone it has been told of.
    let everyone = args.n as usize + 1;
    let (mut seen, mut diffs) = (BTreeSet::new(), 0u64);
    let mut complete = None;
    while complete.is_none() {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(stop_at, watcher.next()).await else {
            break;
        };
        let text = message.to_text().unwrap_or_default();
        received.frames.fetch_add(1, Ordering::Relaxed);
        received
            .bytes
            .fetch_add(text.len() as u64, Ordering::Relaxed);
        let frame: Value = serde_json::from_str(text).unwrap_or_default();
        let users = match frame[3].as_str() {
            Some("presence_state") => &frame[4],
            Some("presence_diff") => {
                diffs += 1;
                &frame[4]["joins"]
            }
            _ => continue,
        };
        seen.extend(
            users
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys().cloned()),
        );
        if seen.len() >= everyone {
            complete = Some(started.elapsed());
        }
    }
    // Let the last diffs reach everyone before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = target.sample();
    let (frames, bytes) = (
        received.frames.load(Ordering::Relaxed),
        received.bytes.load(Ordering::Relaxed),
    );
    crowd.abort_all();
    while crowd.join_next().await.is_some() {}
    client::close(watcher).await;
    target.check_alive()?;

    let errors = errors.get();
    let mut problems = Vec::new();
    if complete.is_none() {
        problems.push(format!(
            "the watcher saw {} of {everyone} users",
            seen.len()
        ));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }
    let rss_growth_kb = match (before.rss_kb, after.rss_kb) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let mut summary = vec![
        format!(
            "presence: {} named joins on room:{} at {}/s, a watcher first (server {}); {}",
            args.n,
            args.room,
            args.rate,
            target.kind(),
            errors.describe()
        ),
        format!(
            "  watcher's view complete after {}; {diffs} presence_diff frames to it",
            complete.map_or("never".into(), |t| format!("{:.2} s", t.as_secs_f64()))
        ),
        format!(
            "  sent to all clients: {frames} frames, {:.1} MiB; server RSS +{} MB",
            bytes as f64 / (1 << 20) as f64,
            rss_growth_kb.map_or("?".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
        ),
    ];
    summary.extend(after.cpu_line(&before, args.n, "join"));
    let json = json!({
        "scenario": "presence",
        "server": target.kind(),
        "n": args.n,
        "rate": args.rate,
        "complete_s": complete.map(|t| round3(t.as_secs_f64())),
        "watcher_diffs": diffs,
        "frames": frames,
        "bytes": bytes,
        "rss_growth_kb": rss_growth_kb,
        "errors": errors.total(),
        "server_cpu_ms": millis(after.cpu_since(&before)),
        "server_cpu_us_per_join": after.cpu_us_per(&before, args.n).map(round3),
    });
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// Counts what one crowd socket receives until `stop_at` (or it is closed).
async fn count(mut ws: Ws, received: &Received, errors: &SharedErrors, stop_at: Instant) {
    loop {
        match tokio::time::timeout_at(stop_at, ws.next()).await {
            Ok(Some(Ok(message))) => {
                received.frames.fetch_add(1, Ordering::Relaxed);
                received
                    .bytes
                    .fetch_add(message.len() as u64, Ordering::Relaxed);
            }
            Ok(ended) => {
                errors.add(&Failure::new("closed", format!("{ended:?}")));
                return;
            }
            Err(_) => return,
        }
    }
}
