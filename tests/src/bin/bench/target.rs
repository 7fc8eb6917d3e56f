//! The server under test, and what bench can measure of it.
//!
//! - `--url URL`: any Phoenix-protocol server already running (loopback
//!   only); bench cannot see its memory or CPU.
//! - default: Roost started inside this process on its own tokio runtime
//!   (threads `roost-server`). RSS is the whole process's (server and
//!   generator); server CPU is the process's minus the generator's threads
//!   (`bench-client`) and the main thread's.
//! - `--spawn`: the `roost` binary started as a child process with a config
//!   written to a temporary file; RSS and CPU are the child's alone. Its log
//!   (which roost writes to stdout) is copied to this process's stderr, at
//!   `ROOST_LOG=warn` unless ROOST_LOG is set.
//! - `--cluster N`: a `redis-server` of bench's own (free loopback port, no
//!   persistence) and N spawned `roost` nodes on it (`[cluster]`); the
//!   endpoint is node 1's, [`Target::endpoints`] lists every node's. CPU is
//!   the nodes' together; [`Target::cluster_sample`] has each node's, and
//!   Redis's CPU and command counts (`INFO commandstats`).
//!
//! The server runs the demo app with the routes the scenarios use, or, for
//! a scenario that brings its own config file (`reload`), that file, which
//! the server then watches as `roost serve` does. With [`Access::Tokens`]
//! the demo app refuses sockets without a token signed with
//! [`BENCH_SECRET`] (`anonymous = false`): every connect verifies one.
//!
//! CPU comes from `/proc/<pid>/stat` (utime + stime, in 10 ms ticks), RSS
//! from `VmRSS` in `/proc/<pid>/status`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use roost_host::config::{Config, Secret};
use roost_host::server::{self, Running};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::client::Endpoint;

/// Where the server comes from; options shared by every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Measure an already running Phoenix Channels server (V2 JSON) at this
    /// WebSocket URL, e.g. `ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0`.
    /// Loopback addresses only. Without it bench starts Roost itself.
    #[arg(
        long,
        global = true,
        help_heading = "Server under test",
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Start Roost as a child process (the `roost` binary) rather than in
    /// this process, so that its RSS and CPU are measured alone.
    #[arg(
        long,
        global = true,
        help_heading = "Server under test",
        conflicts_with = "url"
    )]
    pub spawn: bool,

    /// Start a redis-server and this many `roost` nodes on it, as a
    /// cluster (each a child process, as with --spawn). Scenarios that
    /// connect many sockets spread them over the nodes.
    #[arg(
        long,
        global = true,
        help_heading = "Server under test",
        conflicts_with = "url",
        value_name = "NODES"
    )]
    pub cluster: Option<usize>,

    /// The `roost` binary for --spawn [default: `roost` next to this
    /// executable, i.e. $CARGO_TARGET_DIR/<profile>/roost; build it with
    /// `cargo build -p roost-host`].
    #[arg(
        long,
        global = true,
        help_heading = "Server under test",
        value_name = "PATH"
    )]
    pub roost_bin: Option<PathBuf>,

    /// Worker threads of the in-process Roost server.
    #[arg(
        long,
        global = true,
        help_heading = "Server under test",
        default_value_t = 2
    )]
    pub server_threads: usize,

    /// A line for the `[apps.demo.limits]` of bench's own server, e.g.
    /// `--limit presence_batch_ms=0` (repeatable).
    #[arg(
        long = "limit",
        global = true,
        help_heading = "Server under test",
        value_name = "KEY=VALUE",
        value_parser = key_value
    )]
    pub limits: Vec<String>,
}

/// Who may connect to the demo app bench's own server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the demo app as the sample config has it).
    Anonymous,
    /// Only sockets with a token signed with [`BENCH_SECRET`].
    Tokens,
}

/// The HS256 secret of the demo app under [`Access::Tokens`]: a made-up
/// development secret, known to anyone who reads this file.
pub const BENCH_SECRET: &str = "roost-bench-hs256-secret-for-tests-only-0123456789";

/// The environment variable through which a spawned server gets
/// [`BENCH_SECRET`] (an inline `value:` secret would log a warning).
const SECRET_ENV: &str = "ROOST_BENCH_TOKEN_SECRET";

/// Resolves a secret source as an app's `secrets` entry would: `env:NAME`,
/// `file:PATH` (relative to the working directory) or `value:TEXT`.
pub fn secret(source: &str) -> anyhow::Result<Secret> {
    let text = format!(
        "[apps.a]\nmount = \"/s\"\nroutes = {{ x = \"x.wasm\" }}\nsecrets = [{}]\n",
        serde_json::Value::from(source)
    );
    let mut config = Config::parse(&text, ".".as_ref()).context("the token secret")?;
    config
        .apps
        .remove("a")
        .and_then(|mut app| app.secrets.pop())
        .context("the token secret did not resolve")
}

/// One reading of the server's resource use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kb: Option<u64>,
    pub cpu: Option<Duration>,
    /// This process's generator threads (not its worker processes).
    pub generator_cpu: Option<Duration>,
}

impl Sample {
    /// Server CPU time used between `earlier` and this sample.
    pub fn cpu_since(&self, earlier: &Sample) -> Option<Duration> {
        Some(self.cpu?.saturating_sub(earlier.cpu?))
    }

    /// Generator CPU time used between `earlier` and this sample.
    pub fn generator_cpu_since(&self, earlier: &Sample) -> Option<Duration> {
        Some(self.generator_cpu?.saturating_sub(earlier.generator_cpu?))
    }

    /// Server CPU time per unit of work between `earlier` and this sample,
    /// in µs; `None` without CPU readings or without work.
    pub fn cpu_us_per(&self, earlier: &Sample, units: u64) -> Option<f64> {
        self.cpu_since(earlier)
            .filter(|_| units > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / units as f64)
    }

    /// `  server CPU: 50 ms, 2.5 µs per {unit}` (see [`Self::cpu_us_per`]).
    pub fn cpu_line(&self, earlier: &Sample, units: u64, unit: &str) -> Option<String> {
        let cpu = self.cpu_since(earlier)?;
        let per = self.cpu_us_per(earlier, units)?;
        Some(format!(
            "  server CPU: {:.0} ms, {per:.1} µs per {unit}",
            cpu.as_secs_f64() * 1e3
        ))
    }

    /// `  generator CPU (this process{note}): 10 ms`, if known.
    pub fn generator_cpu_line(&self, earlier: &Sample, note: &str) -> Option<String> {
        let generator = self.generator_cpu_since(earlier)?;
        Some(format!(
            "  generator CPU (this process{note}): {:.0} ms",
            generator.as_secs_f64() * 1e3
        ))
    }
}

/// A started (or found) server.
pub struct Target {
    pub endpoint: Endpoint,
    /// Every node's endpoint (just `endpoint` but for a cluster).
    pub endpoints: Vec<Endpoint>,
    kind: Kind,
    /// The server's `data_dir` (its key-value store), removed with it.
    _data: Option<tempfile::TempDir>,
}

/// One reading of a cluster's resource use.
#[derive(Debug, Clone, Default)]
pub struct ClusterSample {
    /// Each node's CPU time.
    pub nodes_cpu: Vec<Option<Duration>>,
    pub redis_cpu: Option<Duration>,
    /// `INFO commandstats` calls: PUBLISH, and every command.
    pub redis_publishes: u64,
    pub redis_commands: u64,
}

enum Kind {
    External,
    InProcess {
        running: Option<Running>,
        runtime: Option<Runtime>,
    },
    Spawned {
        child: Child,
        pid: u32,
        /// The config file bench wrote, to remove.
        config: Option<PathBuf>,
    },
    Cluster {
        nodes: Vec<Target>,
        redis: RedisChild,
        redis_port: u16,
    },
}

impl Target {
    /// Starts the demo app with `access` (or finds the `--url` server, whose
    /// access is its own).
    pub async fn start(args: &TargetArgs, access: Access) -> anyhow::Result<Self> {
        if let Some(url) = &args.url {
            let endpoint = Endpoint::parse(url)?;
            return Ok(Self {
                endpoints: vec![endpoint.clone()],
                endpoint,
                kind: Kind::External,
                _data: None,
            });
        }
        if let Some(nodes) = args.cluster {
            return Self::cluster(args, access, nodes).await;
        }
        if args.spawn {
            return Self::spawn(args, Demo::Config(access)).await;
        }
        let secret = format!("value:{BENCH_SECRET}");
        let data = tempfile::tempdir()?;
        let text = config_text("127.0.0.1:0", access, &secret, data.path(), &args.limits);
        let config = Config::parse(&text, ".".as_ref())?;
        let mut target = Self::in_process(args, config).await?;
        target._data = Some(data);
        Ok(target)
    }

    /// Starts Roost from the config file at `config` instead of the demo
    /// config: in this process, or as a child with `--spawn`. Either way
    /// the server watches the file and its plugins, as `roost serve` does.
    /// It listens on a free loopback port whatever the file says, and the
    /// endpoint is that of an app mounted at `/socket`. Not for `--url`: a
    /// scenario that needs its own config needs its own server.
    pub async fn start_from_file(args: &TargetArgs, config: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            args.url.is_none(),
            "this scenario starts its own server with its own config; --url does not apply"
        );
        if args.spawn {
            return Self::spawn(args, Demo::File(config)).await;
        }
        let mut config = Config::load(config)?;
        config.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::in_process(args, config).await
    }

    async fn in_process(args: &TargetArgs, config: Config) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.server_threads.max(1))
            .thread_name("roost-server")
            .enable_all()
            .build()?;
        let running = runtime.spawn(server::start(config)).await??;
        Ok(Self {
            endpoints: vec![Endpoint::roost(running.addr)],
            endpoint: Endpoint::roost(running.addr),
            kind: Kind::InProcess {
                running: Some(running),
                runtime: Some(runtime),
            },
            _data: None,
        })
    }

    /// A redis-server and `n` nodes of the demo config on it.
    async fn cluster(args: &TargetArgs, access: Access, n: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(n >= 1, "--cluster needs at least one node");
        let redis_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let redis = RedisChild(
            std::process::Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (apt-get install redis-server)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
            .await
            .is_err()
        {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let cluster = ClusterNode {
                redis: format!("redis://127.0.0.1:{redis_port}"),
                name: format!("roost@bench-{}", i + 1),
            };
            nodes.push(Self::spawn(args, Demo::Cluster(access, cluster)).await?);
        }
        Ok(Self {
            endpoint: nodes[0].endpoint.clone(),
            endpoints: nodes.iter().map(|node| node.endpoint.clone()).collect(),
            kind: Kind::Cluster {
                nodes,
                redis,
                redis_port,
            },
            _data: None,
        })
    }

    /// Each node's CPU, and Redis's CPU and command counts; `None` but for
    /// a cluster.
    pub async fn cluster_sample(&self) -> Option<ClusterSample> {
        let Kind::Cluster {
            nodes,
            redis,
            redis_port,
        } = &self.kind
        else {
            return None;
        };
        let stats = redis_info(*redis_port, "commandstats")
            .await
            .unwrap_or_default();
        let calls = |line: &str| -> u64 {
            line.split_once("calls=")
                .and_then(|(_, rest)| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let mut sample = ClusterSample {
            nodes_cpu: nodes.iter().map(|node| node.sample().cpu).collect(),
            redis_cpu: cpu_ticks(format!("/proc/{}/stat", redis.0.id()).as_ref()).map(ticks),
            ..ClusterSample::default()
        };
        for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
            sample.redis_commands += calls(line);
            if line.starts_with("cmdstat_publish:") {
                sample.redis_publishes += calls(line);
            }
        }
        Some(sample)
    }

    /// Starts the `roost` binary with a config file, or with the demo config
    /// written to a temporary file (removed by [`Target::stop`]).
    async fn spawn(args: &TargetArgs, config: Demo<'_>) -> anyhow::Result<Self> {
        let bin = match &args.roost_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this executable has no directory")?
                .join("roost"),
        };
        anyhow::ensure!(
            bin.is_file(),
            "{}: no roost binary; build it with `cargo build -p roost-host` or pass --roost-bin",
            bin.display()
        );
        // A free port: bind, read it, release it for the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(&bin);
        let data = tempfile::tempdir()?;
        let (file, demo, cluster) = match config {
            Demo::File(path) => (Some(path.to_owned()), None, None),
            Demo::Config(access) => (None, Some(access), None),
            Demo::Cluster(access, node) => (None, Some(access), Some(node)),
        };
        let (config, written) = match (file, demo) {
            (Some(path), _) => (path, None),
            (None, Some(access)) => {
                // Unique per server: smoke runs two at once.
                static SERVERS: AtomicU64 = AtomicU64::new(0);
                let path = std::env::temp_dir().join(format!(
                    "roost-bench-{}-{}.toml",
                    std::process::id(),
                    SERVERS.fetch_add(1, Ordering::Relaxed)
                ));
                let secret = format!("env:{SECRET_ENV}");
                let mut text = config_text(&listen, access, &secret, data.path(), &args.limits);
                if let Some(cluster) = &cluster {
                    text.push_str(&format!("\n[cluster]\nredis = \"{}\"\n", cluster.redis));
                }
                std::fs::write(&path, text)?;
                if access == Access::Tokens {
                    command.env(SECRET_ENV, BENCH_SECRET);
                }
                (path.clone(), Some(path))
            }
            (None, None) => unreachable!("a demo config has its access"),
        };
        command
            .args(["serve", "--listen", &listen, "--config"])
            .arg(&config);
        if let Some(cluster) = &cluster {
            command.args(["--node", &cluster.name]);
        }
        command
            .stdin(Stdio::null())
            // roost logs to stdout; this process's stdout is for reports.
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("ROOST_LOG").is_none() {
            command.env("ROOST_LOG", "warn");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the child has no pid")?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_log(stdout));
        }
        let addr = listen.parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{} exited before listening: {status}", bin.display());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "roost did not listen on {listen} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            endpoint: Endpoint::roost(addr),
            endpoints: vec![Endpoint::roost(addr)],
            kind: Kind::Spawned {
                child,
                pid,
                config: written,
            },
            _data: Some(data),
        })
    }

    /// `external`, `in-process` or `spawned`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::External => "external",
            Kind::InProcess { .. } => "in-process",
            Kind::Spawned { .. } => "spawned",
            Kind::Cluster { .. } => "cluster",
        }
    }

    /// Whether this process's own connections count in [`Sample::rss_kb`].
    pub fn rss_includes_generator(&self) -> bool {
        matches!(self.kind, Kind::InProcess { .. })
    }

    pub fn sample(&self) -> Sample {
        let generator = generator_ticks();
        match &self.kind {
            Kind::External => Sample {
                generator_cpu: generator.map(ticks),
                ..Sample::default()
            },
            Kind::InProcess { .. } => Sample {
                rss_kb: rss_kb("/proc/self/status".as_ref()),
                cpu: cpu_ticks("/proc/self/stat".as_ref())
                    .zip(generator)
                    .map(|(total, generator)| ticks(total.saturating_sub(generator))),
                generator_cpu: generator.map(ticks),
            },
            Kind::Spawned { pid, .. } => Sample {
                rss_kb: rss_kb(format!("/proc/{pid}/status").as_ref()),
                cpu: cpu_ticks(format!("/proc/{pid}/stat").as_ref()).map(ticks),
                generator_cpu: generator.map(ticks),
            },
            // The nodes together.
            Kind::Cluster { nodes, .. } => {
                let samples: Vec<Sample> = nodes.iter().map(Target::sample).collect();
                let sum =
                    |f: fn(&Sample) -> Option<u64>| samples.iter().map(f).sum::<Option<u64>>();
                Sample {
                    rss_kb: sum(|s| s.rss_kb),
                    cpu: samples.iter().map(|s| s.cpu).sum::<Option<Duration>>(),
                    generator_cpu: generator.map(ticks),
                }
            }
        }
    }

    /// Fails early, with advice, if this process's open-file limit cannot
    /// hold `client_ends` connections made here, plus `connections` server
    /// ends if the server runs in this process.
    pub fn ensure_fds(&self, client_ends: u64, connections: u64) -> anyhow::Result<()> {
        let server_ends = if self.rss_includes_generator() {
            connections
        } else {
            0
        };
        let needed = client_ends + server_ends + 100;
        let (limit, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
        anyhow::ensure!(
            needed <= limit,
            "{connections} connections need about {needed} file descriptors in this process \
             (server {}), but `ulimit -n` is {limit}: use fewer, --spawn, or (for \
             `connections`) a smaller --per-process",
            self.kind()
        );
        Ok(())
    }

    /// Fails if a spawned server has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Kind::Spawned { child, .. } = &mut self.kind
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("the roost server exited: {status}");
        }
        if let Kind::Cluster { nodes, .. } = &mut self.kind {
            for node in nodes {
                node.check_alive()?;
            }
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        match &mut self.kind {
            Kind::External => {}
            Kind::InProcess { running, runtime } => {
                if let (Some(running), Some(runtime)) = (running.take(), runtime.take()) {
                    let shutdown = runtime.spawn(running.shutdown());
                    let _ = tokio::time::timeout(Duration::from_secs(10), shutdown).await;
                    runtime.shutdown_background();
                }
            }
            Kind::Spawned { child, config, .. } => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                if let Some(config) = config.take() {
                    let _ = std::fs::remove_file(config);
                }
            }
            Kind::Cluster { nodes, redis, .. } => {
                for node in std::mem::take(nodes) {
                    Box::pin(node.stop()).await;
                }
                redis.kill();
            }
        }
    }
}

/// A target dropped without [`Target::stop`] (a scenario that timed out):
/// an in-process server's runtime is shut down without blocking (dropping
/// it in async code would panic), a child is killed (`kill_on_drop`), and
/// its config file removed.
impl Drop for Target {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::External => {}
            Kind::InProcess { runtime, .. } => {
                if let Some(runtime) = runtime.take() {
                    runtime.shutdown_background();
                }
            }
            Kind::Spawned { config, .. } => {
                if let Some(config) = config.take() {
                    let _ = std::fs::remove_file(config);
                }
            }
            // The nodes and Redis are killed as they drop.
            Kind::Cluster { .. } => {}
        }
    }
}

/// The config a spawned server runs.
enum Demo<'a> {
    /// The demo config, written by bench.
    Config(Access),
    /// The demo config as one node of a cluster.
    Cluster(Access, ClusterNode),
    /// A scenario's own config file.
    File(&'a Path),
}

/// The demo app on `/socket` with the routes the scenarios use; under
/// [`Access::Tokens`] it has `secret` (a source) and `anonymous = false`.
/// `limits` are `KEY=VALUE` lines for its limits.
fn config_text(
    listen: &str,
    access: Access,
    secret: &str,
    data_dir: &Path,
    limits: &[String],
) -> String {
    let plugin = |name: &str| {
        let path = roost_tests::plugin(name);
        std::fs::canonicalize(&path).unwrap_or(path)
    };
    let access = match access {
        Access::Anonymous => String::new(),
        Access::Tokens => format!(
            "secrets = [{}]\nanonymous = false\n",
            serde_json::Value::from(secret)
        ),
    };
    format!(
        r#"
[server]
listen = "{listen}"
node = "roost@bench"
# One generator opens every connection, from one address.
max_connections_per_ip = 1000000
connections_per_ip_per_second = 1000000
data_dir = {data_dir}

[apps.demo]
mount = "/socket"
capabilities = {{ kv = true }}
{access}[apps.demo.routes]
"ping" = "{ping}"
"ping:*" = "{ping}"
"room:*" = "{room}"
"fixture:*" = "{fixture}"
[apps.demo.limits]
{limits}
"#,
        ping = plugin("ping").display(),
        room = plugin("room_chat").display(),
        fixture = plugin("fixture").display(),
        data_dir = serde_json::Value::from(data_dir.display().to_string()),
        limits = limit_lines(limits),
    )
}

fn key_value(line: &str) -> Result<String, String> {
    match line.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
            Ok(line.to_owned())
        }
        _ => Err(format!("`{line}` is not KEY=VALUE")),
    }
}

/// The `[apps.demo.limits]` lines: the rates raised (load scenarios send
/// as fast as the server answers, on few sockets), then `limits` (which may
/// set them too).
fn limit_lines(limits: &[String]) -> String {
    let given: Vec<(&str, &str)> = limits
        .iter()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim()))
        .collect();
    let raised = [
        ("messages_per_second", "1000000"),
        ("joins_per_second", "1000000"),
        ("broadcasts_per_second", "1000000"),
    ];
    raised
        .into_iter()
        .filter(|(key, _)| !given.iter().any(|(k, _)| k == key))
        .chain(given.iter().copied())
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect()
}

/// bench's redis-server, killed when dropped (also when a node fails to
/// start).
struct RedisChild(std::process::Child);

impl RedisChild {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster node's Redis and name.
struct ClusterNode {
    redis: String,
    name: String,
}

/// `INFO <section>` from the Redis on `port`, over a raw RESP request.
async fn redis_info(port: u16, section: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut header)).await??;
    let len: usize = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .context("unexpected INFO reply")?;
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(2), reader.read_exact(&mut body)).await??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Copies a spawned server's log lines to this process's stderr, until the
/// server closes its stdout.
async fn forward_log(stdout: ChildStdout) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{line}");
    }
}

fn rss_kb(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a `/proc/.../stat` file, in clock ticks.
fn cpu_ticks(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The name of a thread, from its `stat` file.
fn thread_name(stat: &Path) -> Option<String> {
    let text = std::fs::read_to_string(stat).ok()?;
    Some(text[text.find('(')? + 1..text.rfind(')')?].to_owned())
}

/// Linux reports CPU times in USER_HZ ticks, which is 100 on every
/// mainstream architecture.
fn ticks(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// CPU ticks of this process's generator threads: the main thread (which
/// only waits) and every thread named `bench…` (the `bench-client` runtime,
/// the `bench-pacer`). The rest of the process is the in-process server.
fn generator_ticks() -> Option<u64> {
    let pid = std::process::id().to_string();
    let mut generator = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = entry.path().join("stat");
        let is_main = entry.file_name().to_str() == Some(pid.as_str());
        if is_main || thread_name(&stat).is_some_and(|name| name.starts_with("bench")) {
            generator += cpu_ticks(&stat).unwrap_or(0);
        }
    }
    Some(generator)
}
