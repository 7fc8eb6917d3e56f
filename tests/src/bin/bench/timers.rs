//! `timers`: many channels, each with a repeating timer. `--channels` are
//! spread over `--sockets` (a socket joins up to 100 channels, Roost's
//! default per-socket limit, so 10,000 channels need only 100 sockets), each
//! channel on the fixture plugin's `every` timer (join payload
//! `{"every_ms": I}`): every I ms its `handle_info` pushes `tick {"due":
//! <ms>}` — when the guest meant the timer to fire — and sets the next one,
//! drift-free. After a warm-up second, over `--duration`: ticks received
//! against the `channels × duration / interval` expected, lateness (receive
//! time − due, wall clocks of one machine) and server CPU per tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Failure, Frame, Ws};
use crate::connections::millis;
use crate::stats::{self, SharedErrors, SharedHist, round3};
use crate::target::Target;

/// Channels one socket joins at most (Roost's default `channels_per_socket`).
const PER_SOCKET: u64 = 100;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Channels, each with its own repeating timer.
    #[arg(long, default_value_t = 1000)]
    pub channels: u64,

    /// Sockets the channels are spread over (at least channels / 100).
    #[arg(long, default_value_t = 10)]
    pub sockets: u64,

    /// Each timer's interval.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,

    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds to wait for a connection or a join.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
}

pub async fn run(target: &mut Target, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.channels > 0 && args.sockets > 0 && args.interval_ms > 0,
        "--channels, --sockets and --interval-ms must be positive"
    );
    // The sockets only listen: past Roost's 60 s idle timeout they would
    // be closed.
    anyhow::ensure!(args.duration < 55.0, "--duration must be under 55 s");
    anyhow::ensure!(
        args.channels <= args.sockets * PER_SOCKET,
        "{} channels need at least {} sockets (100 channels each)",
        args.channels,
        args.channels.div_ceil(PER_SOCKET)
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    target.ensure_fds(args.sockets, args.sockets)?;
    let endpoint = target.endpoint.clone();

    // Join every channel, each starting its timer.
    let mut sockets = Vec::new();
    let join_started = Instant::now();
    for s in 0..args.sockets {
        let channels = args.channels / args.sockets + u64::from(s < args.channels % args.sockets);
        let joined = async {
            let mut ws = endpoint.connect(timeout, client::LARGE_READ_BUFFER).await?;
            join_channels(&mut ws, s, channels, args.interval_ms, timeout).await?;
            Ok::<_, Failure>(ws)
        };
        let ws = joined
            .await
            .map_err(|failure| anyhow::anyhow!("socket {s}: {failure}"))?;
        sockets.push(ws);
    }
    let joined_in = join_started.elapsed();

    let counting = Arc::new(AtomicBool::new(false));
    let ticks = Arc::new(AtomicU64::new(0));
    let lateness = SharedHist::new();
    let errors = SharedErrors::default();
    let stop_at = Instant::now() + Duration::from_secs(1) + Duration::from_secs_f64(args.duration);
    let mut readers = JoinSet::new();
    for ws in sockets {
        readers.spawn(read(
            ws,
            counting.clone(),
            ticks.clone(),
            lateness.recorder(),
            errors.clone(),
            stop_at,
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = target.sample();
    counting.store(true, Ordering::Release);
    tokio::time::sleep_until(stop_at).await;
    counting.store(false, Ordering::Release);
    let after = target.sample();
    while readers.join_next().await.is_some() {}
    target.check_alive()?;

    let ticks = ticks.load(Ordering::Relaxed);
    let expected = (args.channels as f64 * args.duration * 1000.0 / args.interval_ms as f64) as u64;
    let (lateness, errors) = (lateness.snapshot(), errors.get());
    let ratio = ticks as f64 / expected.max(1) as f64;
    let mut problems = Vec::new();
    // Timers slip under load (that is what lateness shows); losing a tenth
    // of them means they do not keep up at all.
    if ratio < 0.9 {
        problems.push(format!("received {ticks} ticks of {expected} expected"));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }
    let mut summary = vec![
        format!(
            "timers: {} channels over {} sockets at {}, each with a {} ms repeating timer (server {}); {} s measured; {}",
            args.channels,
            args.sockets,
            endpoint.url,
            args.interval_ms,
            target.kind(),
            args.duration,
            errors.describe()
        ),
        format!(
            "  joined in {:.2} s; {ticks} ticks of {expected} expected (ratio {ratio:.4}), {:.0} fires/s",
            joined_in.as_secs_f64(),
            ticks as f64 / args.duration
        ),
        format!(
            "  lateness (received − due): {}",
            stats::describe(&lateness)
        ),
    ];
    summary.extend(after.cpu_line(&before, ticks, "timer fire"));
    summary.extend(after.generator_cpu_line(&before, ""));
    let json = json!({
        "scenario": "timers",
        "server": target.kind(),
        "url": endpoint.url,
        "channels": args.channels,
        "sockets": args.sockets,
        "interval_ms": args.interval_ms,
        "duration_s": args.duration,
        "ticks": ticks,
        "expected": expected,
        "ratio": round3(ratio),
        "fires_per_s": (ticks as f64 / args.duration).round(),
        "lateness_ms": stats::percentiles(&lateness),
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "server_cpu_ms": millis(after.cpu_since(&before)),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
        "server_cpu_us_per_fire": after.cpu_us_per(&before, ticks).map(round3),
    });
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// Joins `n` fixture channels on one socket, each starting its timer.
async fn join_channels(
    ws: &mut Ws,
    socket: u64,
    n: u64,
    interval_ms: u64,
    timeout: Duration,
) -> Result<(), Failure> {
    let payload = json!({ "every_ms": interval_ms }).to_string();
    for c in 0..n {
        let topic = client::json_string(&format!("fixture:tick-{socket}-{c}"));
        let join_ref = (c + 1).to_string();
        let frame = client::frame(Some(&join_ref), &join_ref, &topic, "phx_join", &payload);
        client::send(ws, frame, timeout).await?;
        client::await_reply(ws, &join_ref, Instant::now() + timeout).await?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct Tick {
    due: u64,
}

/// Counts one socket's ticks (while `counting`) and their lateness, until
/// `stop_at`, then closes the socket.
async fn read(
    mut ws: Ws,
    counting: Arc<AtomicBool>,
    ticks: Arc<AtomicU64>,
    mut lateness: stats::Recorder,
    errors: SharedErrors,
    stop_at: Instant,
) {
    loop {
        let next = tokio::time::timeout_at(stop_at, ws.next()).await;
        let Ok(Some(Ok(message))) = next else {
            if let Ok(ended) = next {
                errors.add(&Failure::new("closed", format!("{ended:?}")));
            }
            break;
        };
        let Ok(text) = message.to_text() else {
            continue;
        };
        let Ok(frame) = Frame::parse(text) else {
            errors.add(&Failure::new("protocol", text));
            continue;
        };
        if frame.event() != "tick" || !counting.load(Ordering::Acquire) {
            continue;
        }
        let Ok(tick) = serde_json::from_str::<Tick>(frame.payload().get()) else {
            errors.add(&Failure::new("protocol", text));
            continue;
        };
        let late = now_ms().saturating_sub(tick.due);
        lateness.record(Duration::from_millis(late));
        ticks.fetch_add(1, Ordering::Relaxed);
    }
    lateness.flush();
    client::close(ws).await;
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
