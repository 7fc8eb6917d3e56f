//! `reload`: hot reload under load. Bench writes a config to a temporary
//! directory (app `demo` on `/socket`, route `counter:*` → `counter.wasm`
//! there, a copy of the `version_a` fixture, and an API key) and starts
//! Roost with it (in this process, or as a child with `--spawn`; `--url`
//! does not apply). K sockets join `counter:0` … `counter:K-1` and send
//! `count` pushes at a fixed total rate, open loop, paced and timed as in
//! `reqreply` (push n goes to socket n mod K with ref `"<n>:<sent_ns>"`).
//! Meanwhile a thread (`bench-swapper`) replaces the plugin file every
//! `--swap-every` ms, alternating `version_b` and `version_a` the way an
//! editor saves: write a temporary file in the same directory, rename it
//! over the plugin. Swaps stop one interval before the pushes do, so each
//! has time to go live.
//!
//! The fixtures reply `{"version": "a"|"b", "count": n}`, n one more than
//! the channel's previous reply: the count lives in the assigns, which must
//! survive every swap. Each socket's reader checks that every push is
//! answered once (lost = no reply by the drain timeout), in order, with a
//! continuous count, and that the socket stays open with no `phx_error` or
//! `phx_close`; any failure is a problem. So is a failed reload or guest
//! call in the status API, or the last file written not serving within the
//! timeout after the run.
//!
//! A swap is *observed* when some channel's replies change to its version
//! after the rename (and before the same version is written again); the
//! first such reply gives the write → new code serving time. Latency is
//! reported overall and for pushes scheduled within ±`--window` ms of a
//! swap.
//!
//! The server's compiled-plugin cache is off by default, so every swap
//! compiles the component as a fresh build would; `--cache` turns it on (in
//! the temporary directory), so that only the first swap to each version
//! compiles.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::Report;
use crate::client::{self, Endpoint, Failure, Frame, Ws};
use crate::connections::millis;
use crate::goals::{self, Goal};
use crate::pacer::Pacer;
use crate::pushes::{self, Clock, Requests};
use crate::stats::{self, RecordDuration, SharedErrors, SharedHist, histogram, round3};
use crate::target::{Target, TargetArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Sockets, socket i joined to `counter:<i>`; pushes are spread evenly.
    #[arg(long, default_value_t = 20)]
    pub sockets: u64,

    /// `count` pushes per second across all sockets (open loop).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,

    /// Seconds to push for; at least two swap intervals.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Milliseconds between replacements of the plugin file.
    #[arg(long, default_value_t = 500)]
    pub swap_every: u64,

    /// Pushes scheduled within this many milliseconds of a swap count as
    /// near it, for the latency near swaps.
    #[arg(long, default_value_t = 100)]
    pub window: u64,

    /// Let the server cache compiled plugins (in the temporary directory),
    /// so that only the first swap to each version compiles.
    #[arg(long)]
    pub cache: bool,

    /// Seconds to wait for a connection or join, for the last replies after
    /// the last push, and for the last version written to serve.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// The budget for plugin file written → new code serving.
const BUDGET: Duration = Duration::from_millis(100);

/// The server's files, in a temporary directory removed when dropped.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    plugin: PathBuf,
    api_key: String,
    /// The two builds, `a` (written first) and `b`.
    versions: [(char, Arc<Vec<u8>>); 2],
}

impl Setup {
    fn write(cache: bool) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = roost_tests::plugin(name);
            std::fs::read(&path)
                .with_context(|| format!("reading the {name} fixture {}", path.display()))
        };
        let (a, b) = (read("version_a")?, read("version_b")?);
        anyhow::ensure!(a != b, "the version_a and version_b fixtures are identical");
        let dir = tempfile::Builder::new()
            .prefix("roost-bench-reload-")
            .tempdir()?;
        let plugin = dir.path().join("counter.wasm");
        std::fs::write(&plugin, &a)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let api_key = format!("bench-reload-{}-{nanos}", std::process::id());
        std::fs::write(dir.path().join("api.key"), &api_key)?;
        let cache_dir = if cache {
            dir.path().join("cache")
        } else {
            PathBuf::new()
        };
        let config = dir.path().join("roost.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
node = "roost@bench"
cache_dir = {cache_dir}

[apps.demo]
mount = "/socket"
api_keys = ["file:api.key"]
[apps.demo.routes]
"counter:*" = {plugin}
"#,
                cache_dir = client::json_string(&cache_dir.to_string_lossy()),
                plugin = client::json_string(&plugin.to_string_lossy()),
            ),
        )?;
        Ok(Self {
            dir,
            config,
            plugin,
            api_key,
            versions: [('a', Arc::new(a)), ('b', Arc::new(b))],
        })
    }

    /// The content hash the server reports for a version's file.
    fn hash(&self, version: char) -> String {
        let (_, bytes) = self.versions[usize::from(version == 'b')].clone();
        roost_host::runtime::content_hash(&bytes)
    }
}

pub async fn run(target_args: &TargetArgs, args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rate > 0.0 && args.sockets > 0 && args.swap_every > 0,
        "--rate, --sockets and --swap-every must be positive"
    );
    anyhow::ensure!(
        args.duration * 1e3 >= 2.0 * args.swap_every as f64,
        "--duration must be at least two --swap-every intervals"
    );
    let setup = Setup::write(args.cache)?;
    let mut target = Target::start_from_file(target_args, &setup.config).await?;
    let report = measure(&mut target, &setup, args).await;
    target.stop().await;
    drop(setup.dir);
    report
}

async fn measure(target: &mut Target, setup: &Setup, args: &Args) -> anyhow::Result<Report> {
    let timeout = Duration::from_secs_f64(args.timeout);
    target.ensure_fds(args.sockets, args.sockets)?;
    let endpoint = &target.endpoint.clone();
    let topics: Vec<Arc<String>> = (0..args.sockets)
        .map(|i| Arc::new(client::json_string(&format!("counter:{i}"))))
        .collect();
    let mut opening = JoinSet::new();
    for (i, topic) in topics.iter().enumerate() {
        let (endpoint, topic) = (endpoint.clone(), topic.clone());
        opening.spawn(async move {
            let opened =
                client::connect_and_join(&endpoint, &topic, timeout, client::LARGE_READ_BUFFER)
                    .await;
            (i, opened)
        });
    }
    let mut sockets: Vec<Option<Ws>> = (0..args.sockets).map(|_| None).collect();
    while let Some(result) = opening.join_next().await {
        let (i, opened) = result?;
        let (ws, _, _) = opened.map_err(|failure| anyhow::anyhow!("counter:{i}: {failure}"))?;
        sockets[i] = Some(ws);
    }

    let clock = Clock::new(args.rate, args.duration);
    let count = clock.schedule.count;
    let duration = Duration::from_secs_f64(args.duration);
    let hard_deadline = clock.hard_deadline(duration, timeout);
    let (stop, stop_rx) = watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let service = SharedHist::new();
    let errors = SharedErrors::default();
    let event = Arc::new("count".to_owned());
    let payload = Arc::new("{}".to_owned());

    let before = target.sample();
    let every = Duration::from_millis(args.swap_every);
    let swapper = Swapper::start(
        setup,
        clock.schedule.start + every,
        every,
        (duration.as_millis() as u64 / args.swap_every).saturating_sub(1),
    )?;
    let (pacer, lanes) = Pacer::start(clock.schedule, sockets.len())?;
    let mut senders = JoinSet::new();
    let mut readers = JoinSet::new();
    for (i, (ws, due)) in sockets.into_iter().zip(lanes).enumerate() {
        let Some(ws) = ws else { continue };
        let (sink, stream) = ws.split();
        let requests = Requests {
            due,
            topic: topics[i].clone(),
            event: event.clone(),
            payload: payload.clone(),
        };
        senders.spawn(pushes::send(sink, requests, clock, timeout, errors.clone()));
        let lane = Lane {
            index: i as u64,
            sockets: args.sockets,
            topic: format!("counter:{i}"),
        };
        readers.spawn(read(
            stream,
            lane,
            clock,
            answered.clone(),
            service.recorder(),
            errors.clone(),
            stop_rx.clone(),
            hard_deadline,
        ));
    }
    let sent = pushes::sent(senders, hard_deadline).await;
    pushes::drain(&answered, sent, timeout).await;
    let after = target.sample();
    pacer.stop();
    let swaps = swapper.finish().await?;
    let _ = stop.send(true);
    let seen = pushes::read(readers, hard_deadline).await;
    target.check_alive()?;

    // The last file written must go live, however long that takes here.
    let last = swaps.last().map_or('a', |swap| swap.version);
    let status = wait_for_version(endpoint, &setup.api_key, &setup.hash(last), timeout).await;

    let answered = answered.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(answered);
    let (service, errors) = (service.snapshot(), errors.get());
    let (mut latency, mut near) = (histogram(), histogram());
    let swap_times: Vec<Instant> = swaps.iter().map(|swap| swap.at).collect();
    let window = Duration::from_millis(args.window);
    for (n, took) in seen.iter().flat_map(|seen| &seen.latencies) {
        latency.record_duration(*took);
        if near_any(&swap_times, clock.schedule.at(*n), window) {
            near.record_duration(*took);
        }
    }
    let mut flips: Vec<(Instant, char)> =
        seen.iter().flat_map(|seen| &seen.flips).copied().collect();
    flips.sort_by_key(|(at, _)| *at);
    let served = first_served(&swaps, &flips);
    let mut to_serving: Vec<Duration> = served.iter().filter_map(|s| s.map(|(d, _)| d)).collect();
    to_serving.sort();
    let observed = to_serving.len();
    let over_budget = to_serving.iter().filter(|d| **d > BUDGET).count();
    let version_changes: usize = served.iter().filter_map(|s| s.map(|(_, n)| n)).sum();
    let (p50, max) = (
        to_serving.get(to_serving.len() / 2).copied(),
        to_serving.last().copied(),
    );
    let last_reply = seen.iter().filter_map(|seen| seen.last).max();
    let achieved = clock.achieved(answered, last_reply);
    let cpu = after.cpu_since(&before);

    let (disconnects, channel_errors) = (errors.count("closed"), errors.count("channel_error"));
    let (duplicated, out_of_order) = (errors.count("duplicate"), errors.count("out_of_order"));
    let count_breaks = errors.count("count_break");
    let mut problems = Vec::new();
    if sent != count || count == 0 {
        problems.push(format!("sent {sent} of {count} pushes"));
    }
    if lost > 0 {
        problems.push(format!("{lost} pushes got no reply"));
    }
    if errors.total() > 0 {
        problems.push(errors.describe());
    }
    let plugin_status = match &status {
        Ok((status, live)) => {
            if !live {
                problems.push(format!(
                    "the last version written ({last}) was not serving {:.1} s after the run: \
                     the server serves {}",
                    args.timeout, status["version"]
                ));
            }
            if status["reload_failures"].as_u64() != Some(0) {
                problems.push(format!(
                    "{} reloads failed, the last: {}",
                    status["reload_failures"], status["last_error"]
                ));
            }
            if status["call_failures"]
                .as_object()
                .is_none_or(|failures| !failures.is_empty())
            {
                problems.push(format!("guest calls failed: {}", status["call_failures"]));
            }
            status.clone()
        }
        Err(error) => {
            problems.push(format!("the status API: {error:#}"));
            Value::Null
        }
    };

    let mut summary = vec![
        format!(
            "reload: {} sockets on counter:0…{} at {} (server {}, plugin cache {}); `count` at {} \
             req/s for {} s; the plugin file replaced every {} ms; {}",
            args.sockets,
            args.sockets - 1,
            endpoint.url,
            target.kind(),
            if args.cache { "on" } else { "off" },
            args.rate,
            args.duration,
            args.swap_every,
            errors.describe()
        ),
        format!(
            "  sent {sent}, answered {answered} ({achieved:.0}/s), lost {lost}, duplicated \
             {duplicated}, out of order {out_of_order}, count breaks {count_breaks}, disconnects \
             {disconnects}, channel errors {channel_errors}"
        ),
        format!(
            "  swaps: {} written, {observed} observed by clients ({version_changes} channel \
             version changes); server: {} reloads, {} failed",
            swaps.len(),
            plugin_status["reloads"],
            plugin_status["reload_failures"],
        ),
        match (p50, max) {
            (Some(p50), Some(max)) => format!(
                "  file renamed → first reply from the new version: p50 {:.1} ms, max {:.1} ms; \
                 {over_budget} of {observed} over the {} ms budget",
                ms(p50),
                ms(max),
                BUDGET.as_millis()
            ),
            _ => "  file renamed → first reply from the new version: no swap observed".to_owned(),
        },
        format!(
            "  latency from scheduled send:   {}",
            stats::describe(&latency)
        ),
        format!(
            "  … within ±{} ms of a swap:    {}",
            args.window,
            stats::describe(&near)
        ),
        format!(
            "  latency from actual send:      {}",
            stats::describe(&service)
        ),
    ];
    if let Some(cpu) = cpu {
        summary.push(format!(
            "  server CPU: {:.0} ms (serving and compiling)",
            cpu.as_secs_f64() * 1e3
        ));
    }
    summary.extend(after.generator_cpu_line(&before, ""));

    let mut json = json!({
        "scenario": "reload",
        "server": target.kind(),
        "url": endpoint.url,
        "sockets": args.sockets,
        "rate": args.rate,
        "duration_s": args.duration,
        "swap_every_ms": args.swap_every,
        "plugin_cache": args.cache,
        "sent": sent,
        "answered": answered,
        "achieved_rps": achieved.round(),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
        "count_breaks": count_breaks,
        "disconnects": disconnects,
        "channel_errors": channel_errors,
        "errors": errors.total(),
        "error_kinds": errors.kinds(),
        "swaps_written": swaps.len(),
        "swaps_observed": observed,
        "channel_version_changes": version_changes,
        "server_reloads": plugin_status["reloads"],
        "reload_failures": plugin_status["reload_failures"],
        "call_failures": plugin_status["call_failures"],
        "swap_to_serving_ms": {
            "count": observed,
            "p50": p50.map(|d| round3(ms(d))),
            "max": max.map(|d| round3(ms(d))),
            "over_budget": over_budget,
            "each": served.iter().map(|s| s.map(|(d, _)| round3(ms(d)))).collect::<Vec<_>>(),
        },
        "latency_ms": stats::percentiles(&latency),
        "near_swap_window_ms": args.window,
        "near_swap_latency_ms": stats::percentiles(&near),
        "service_ms": stats::percentiles(&service),
        "server_cpu_ms": millis(cpu),
        "generator_cpu_ms": millis(after.generator_cpu_since(&before)),
    });
    // The goal is for fresh builds: every swap compiles (no plugin cache).
    if !args.cache
        && let Some(p99) = to_serving.get((observed * 99 / 100).min(observed.saturating_sub(1)))
    {
        let goal = Goal::at_most("file written → new code serving, p99", ms(*p99), 50.0, "ms");
        goals::attach(&[goal], &mut summary, &mut json);
    }
    Ok(Report {
        summary,
        json,
        problems,
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Whether `at` is within `window` of one of `times` (sorted).
fn near_any(times: &[Instant], at: Instant, window: Duration) -> bool {
    let next = times.partition_point(|t| *t < at);
    let after = times.get(next).is_some_and(|t| *t - at <= window);
    let before = next
        .checked_sub(1)
        .and_then(|i| times.get(i))
        .is_some_and(|t| at - *t <= window);
    after || before
}

/// For each swap, if a client saw it: the time from its rename to the
/// first reply from its version, and how many channels changed to it.
/// A change to the swap's version counts from its rename until the same
/// version is written again (swaps alternate, so that is two swaps later).
fn first_served(swaps: &[Swap], flips: &[(Instant, char)]) -> Vec<Option<(Duration, usize)>> {
    swaps
        .iter()
        .enumerate()
        .map(|(i, swap)| {
            let until = swaps.get(i + 2).map(|later| later.at);
            let changes: Vec<Instant> = flips
                .iter()
                .filter(|(at, version)| {
                    *version == swap.version && *at > swap.at && until.is_none_or(|u| *at <= u)
                })
                .map(|(at, _)| *at)
                .collect();
            let first = changes.first()?;
            Some((*first - swap.at, changes.len()))
        })
        .collect()
}

/// Polls the status API until the plugin's version is `version` (true) or
/// `timeout` passes (false); returns the plugin's status.
async fn wait_for_version(
    endpoint: &Endpoint,
    api_key: &str,
    version: &str,
    timeout: Duration,
) -> anyhow::Result<(Value, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = plugin_status(endpoint, api_key, timeout).await?;
        let live = status["version"] == version;
        if live || Instant::now() >= deadline {
            return Ok((status, live));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The plugin's entry in `GET /api/apps/demo/status`.
async fn plugin_status(
    endpoint: &Endpoint,
    api_key: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/apps/demo/status", endpoint.addr()))
        .bearer_auth(api_key)
        .timeout(timeout)
        .send()
        .await?;
    let code = response.status();
    let text = response.text().await?;
    anyhow::ensure!(code.is_success(), "{code}: {text}");
    let status: Value = serde_json::from_str(&text)?;
    let plugin = status["plugins"][0].clone();
    anyhow::ensure!(plugin.is_object(), "no plugin in {text}");
    Ok(plugin)
}

/// A replacement of the plugin file.
#[derive(Debug, Clone, Copy)]
struct Swap {
    /// When the rename returned.
    at: Instant,
    /// The version the file holds from then on.
    version: char,
}

/// The thread replacing the plugin file on schedule.
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Swap>>>,
}

impl Swapper {
    /// Swaps `count` times, at `first`, `first + every`, …, alternating
    /// `b` and `a`.
    fn start(setup: &Setup, first: Instant, every: Duration, count: u64) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let plugin = setup.plugin.clone();
        let [a, b] = setup.versions.clone();
        let thread = std::thread::Builder::new()
            .name("bench-swapper".into())
            .spawn(move || swap(&plugin, [b, a], first, every, count, &stopped))?;
        Ok(Self { stop, thread })
    }

    /// Stops swapping; the swaps made.
    async fn finish(self) -> anyhow::Result<Vec<Swap>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the swapper thread panicked"))?
    }
}

/// The swapper's loop; once done, it waits for `stop` (so that its CPU time
/// still counts as the generator's, see `pacer.rs`).
fn swap(
    plugin: &std::path::Path,
    versions: [(char, Arc<Vec<u8>>); 2],
    first: Instant,
    every: Duration,
    count: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Swap>> {
    let name = plugin
        .file_name()
        .context("the plugin path has no file name")?
        .to_string_lossy();
    let temporary = plugin.with_file_name(format!(".{name}.tmp"));
    let mut swaps = Vec::new();
    for k in 0..count {
        let at = first + every * u32::try_from(k)?;
        // Bounded: `at` is at most the run's length away.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(swaps);
            }
            let now = Instant::now();
            if now >= at {
                break;
            }
            std::thread::park_timeout((at - now).min(Duration::from_millis(50)));
        }
        let (version, bytes) = &versions[usize::try_from(k % 2)?];
        std::fs::write(&temporary, bytes.as_slice())
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, plugin)
            .with_context(|| format!("renaming over {}", plugin.display()))?;
        swaps.push(Swap {
            at: Instant::now(),
            version: *version,
        });
    }
    let linger = Instant::now();
    while !stop.load(Ordering::Relaxed) && linger.elapsed() < Duration::from_secs(600) {
        std::thread::park_timeout(Duration::from_secs(1));
    }
    Ok(swaps)
}

/// Which socket a reader reads: socket `index` of `sockets`, joined to
/// `topic`, sent pushes n = index, index + sockets, ….
struct Lane {
    index: u64,
    sockets: u64,
    topic: String,
}

/// What one socket's reader saw.
struct Seen {
    /// Each push's first reply: n, and its latency from the scheduled send.
    latencies: Vec<(u64, Duration)>,
    /// When this channel's replies changed version, and to which.
    flips: Vec<(Instant, char)>,
    /// When the last reply came.
    last: Option<Instant>,
}

/// A `count` reply's payload.
#[derive(Deserialize)]
struct CountReply<'a> {
    status: &'a str,
    #[serde(borrow, default)]
    response: Option<Counted<'a>>,
}

#[derive(Deserialize)]
struct Counted<'a> {
    #[serde(borrow)]
    version: Option<&'a str>,
    count: Option<u64>,
}

/// Reads one socket's replies until `stop`, checking them (see the module
/// docs); failures go to `errors` by kind.
#[allow(clippy::too_many_arguments)]
async fn read(
    mut stream: SplitStream<Ws>,
    lane: Lane,
    clock: Clock,
    answered: Arc<AtomicU64>,
    mut service: stats::Recorder,
    errors: SharedErrors,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen {
        latencies: Vec::new(),
        flips: Vec::new(),
        last: None,
    };
    let per_socket = clock.schedule.count.div_ceil(lane.sockets);
    let mut replied = vec![false; usize::try_from(per_socket).unwrap_or(0)];
    let mut highest: Option<u64> = None;
    let mut count = 0;
    // The join reply came from the first file, version a.
    let mut version = 'a';
    while let Some((text, now)) =
        pushes::next_reply(&mut stream, &mut stop, deadline, &errors).await
    {
        let Ok(frame) = Frame::parse(&text) else {
            errors.add(&Failure::new("protocol", text.as_str()));
            continue;
        };
        if frame.topic() != lane.topic {
            continue;
        }
        if matches!(frame.event(), "phx_error" | "phx_close") {
            errors.add(&Failure::new("channel_error", text.as_str()));
            continue;
        }
        if frame.event() != "phx_reply" {
            continue;
        }
        let Some((n, sent_at)) = clock.reply_to(&frame) else {
            continue;
        };
        let j = n / lane.sockets;
        let Some(slot) = replied
            .get_mut(usize::try_from(j).unwrap_or(usize::MAX))
            .filter(|_| n % lane.sockets == lane.index)
        else {
            errors.add(&Failure::new("protocol", format!("unexpected ref: {text}")));
            continue;
        };
        if *slot {
            errors.add(&Failure::new("duplicate", text.as_str()));
            continue;
        }
        *slot = true;
        if highest.is_some_and(|highest| j < highest) {
            errors.add(&Failure::new("out_of_order", text.as_str()));
        }
        highest = highest.max(Some(j));
        answered.fetch_add(1, Ordering::Relaxed);
        seen.latencies
            .push((n, now.saturating_duration_since(clock.schedule.at(n))));
        service.record(now.saturating_duration_since(sent_at));
        seen.last = Some(now);
        let reply = serde_json::from_str::<CountReply>(frame.payload().get());
        let (version_now, count_now) = match &reply {
            Ok(CountReply {
                status: "ok",
                response:
                    Some(Counted {
                        version: Some(version),
                        count: Some(count),
                    }),
            }) => (version.chars().next().unwrap_or('?'), *count),
            Ok(CountReply { status: "ok", .. }) | Err(_) => {
                errors.add(&Failure::new("bad_reply", text.as_str()));
                continue;
            }
            Ok(_) => {
                errors.add(&Failure::new("reply_error", text.as_str()));
                continue;
            }
        };
        if count_now != count + 1 {
            errors.add(&Failure::new(
                "count_break",
                format!("{}: count {count_now} after {count}", lane.topic),
            ));
        }
        count = count_now;
        if version_now != version {
            seen.flips.push((now, version_now));
            version = version_now;
        }
    }
    seen
}
