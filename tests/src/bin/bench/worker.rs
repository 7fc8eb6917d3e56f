//! Client worker processes for `connections`: each holds a share of the
//! connections, so that more connections than one process's open-file
//! limit allows can be held.
//!
//! The parent re-executes this binary as `bench worker --url … --n …` with
//! piped stdin and stdout. The worker opens its connections (see
//! [`connections::open`]), prints one JSON line `{"opened": …}`, holds them
//! until a line (or EOF) arrives on its stdin or `--max-hold` passes, closes
//! them, prints `{"dropped": N}` and exits. A worker left behind by a killed
//! parent therefore stops by itself.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use crate::client::Endpoint;
use crate::connections::{self, Opened};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The server's WebSocket URL (this worker does not use --url's
    /// global meaning: it never starts a server).
    #[arg(long = "to")]
    pub to: String,

    /// Connections this worker opens.
    #[arg(long)]
    pub n: u64,

    /// Connections started per second by this worker.
    #[arg(long)]
    pub rate: f64,

    /// The topic every connection joins.
    #[arg(long)]
    pub topic: String,

    /// Seconds to wait for a connection, a join reply or a close.
    #[arg(long)]
    pub timeout: f64,

    /// Seconds after which the worker stops holding even without a word
    /// from its parent.
    #[arg(long)]
    pub max_hold: f64,
}

/// The worker process's side.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let endpoint = Endpoint::parse(&args.to)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let (opened, group) =
        connections::open(&endpoint, &args.topic, args.n, args.rate, timeout).await;
    say(&json!({"opened": connections::encode_opened(&opened)}))?;
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = tokio::time::timeout(
        Duration::from_secs_f64(args.max_hold),
        stdin.read_line(&mut line),
    )
    .await;
    let dropped = group.close(timeout).await;
    say(&json!({ "dropped": dropped }))
}

fn say(value: &Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")?;
    stdout.flush()?;
    Ok(())
}

/// The parent's side: the running workers.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Workers {
    /// Starts `processes` workers sharing `n` connections and `rate`, and
    /// waits until each has opened its share.
    pub async fn open(
        endpoint: &Endpoint,
        topic: &str,
        n: u64,
        processes: u64,
        rate: f64,
        timeout: Duration,
        max_hold: Duration,
    ) -> anyhow::Result<(Opened, Workers)> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for k in 0..processes {
            let share = n / processes + u64::from(k < n % processes);
            let mut child = Command::new(&exe)
                .args([
                    "--client-threads",
                    "1",
                    "worker",
                    "--to",
                    &endpoint.url,
                    "--topic",
                    topic,
                ])
                .args(["--n", &share.to_string()])
                .args(["--rate", &(rate / processes as f64).to_string()])
                .args(["--timeout", &timeout.as_secs_f64().to_string()])
                .args(["--max-hold", &max_hold.as_secs_f64().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            workers.push(Worker {
                child,
                stdin,
                stdout,
            });
        }
        let deadline = Instant::now()
            + Duration::from_secs_f64(n as f64 / rate)
            + 4 * timeout
            + Duration::from_secs(10);
        let mut opened = Opened::empty();
        for worker in &mut workers {
            let line = worker.next_line(deadline).await?;
            opened.merge(&connections::decode_opened(&line["opened"]))?;
        }
        Ok((opened, Workers { workers }))
    }

    /// Tells every worker to close; returns the connections dropped while held.
    pub async fn close(mut self, timeout: Duration) -> anyhow::Result<u64> {
        for worker in &mut self.workers {
            if let Some(mut stdin) = worker.stdin.take() {
                let _ = stdin.write_all(b"stop\n").await;
            }
        }
        let deadline = Instant::now() + 2 * timeout;
        let mut dropped = 0;
        for worker in &mut self.workers {
            dropped += worker.next_line(deadline).await?["dropped"]
                .as_u64()
                .unwrap_or(0);
            let _ = tokio::time::timeout_at(deadline, worker.child.wait()).await;
        }
        Ok(dropped)
    }
}

impl Worker {
    async fn next_line(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
            .await
            .context("a worker process did not answer in time")??
            .context("a worker process exited early")?;
        Ok(serde_json::from_str(&line)?)
    }
}
