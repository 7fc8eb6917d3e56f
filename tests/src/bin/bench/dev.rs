//! `dev`: the plugin author's loop with `roost dev` — save a source file,
//! get the first reply from the new code — for a plugin scaffolded by
//! `roost new` in Rust and in JS.
//!
//! For each language, bench scaffolds `counter` into `--dir` (default
//! `$TMPDIR/roost-bench-dev`, kept between runs: the Rust project's
//! `target/` stays warm, as a project's does; the sources are rewritten
//! from the scaffold every run), routes `counter:*` to the file its build
//! writes, and starts Roost and `dev` in this process, as `roost dev` does
//! (the compiled-plugin cache off, so every version compiles). One socket
//! joins `counter:1`. Then `--saves` times: the source is saved (written
//! and renamed, as an editor does) with the reply changed to carry
//! `"v": "<n>"`, and the socket pings every 5 ms until a reply has it.
//!
//! Each save is timed from the rename, in four parts: until the build
//! starts (the 50 ms debounce and the file event), the build (`cargo build`
//! or `roost-js build`), until the slot serves the new version (the file
//! event, the hot reload's 10 ms debounce, compiling the component in
//! wasmtime, the swap), and until the first reply from it (the pings' 5 ms
//! spacing). It reports p50 and max of each and of the whole, and the
//! machine's load average before and after (builds compete for the CPU).
//! Saves are `--pause` ms apart, so builds never overlap. Times start once
//! the builds `dev` starts with have finished and the server is quiet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use roost_host::config::Config;
use roost_host::dev::{Dev, Rebuilt, RustBuild};
use roost_host::scaffold::{self, Lang};
use roost_host::server;
use roost_tests::Client;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::Report;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Which scaffold to measure: rust, js, or both.
    #[arg(long, default_value = "both")]
    pub lang: String,

    /// Saves per language.
    #[arg(long, default_value_t = 20)]
    pub saves: usize,

    /// Milliseconds between one save's new reply and the next save.
    #[arg(long, default_value_t = 300)]
    pub pause: u64,

    /// Where the projects live (kept between runs; default
    /// `$TMPDIR/roost-bench-dev`).
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Build Rust with the scaffold's release profile as written (LTO),
    /// as `roost dev --exact-profile` does.
    #[arg(long)]
    pub exact_profile: bool,

    /// Seconds to wait for one save's new reply (the first build of a cold
    /// Rust project takes longer: it is not timed).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// One save, timed from the rename.
struct Save {
    to_build: Duration,
    build: Duration,
    to_serving: Duration,
    to_reply: Duration,
    total: Duration,
}

pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let langs = match args.lang.as_str() {
        "rust" => vec![Lang::Rust],
        "js" => vec![Lang::Js],
        "both" => vec![Lang::Rust, Lang::Js],
        other => anyhow::bail!("--lang must be rust, js or both, not {other}"),
    };
    anyhow::ensure!(args.saves > 0, "--saves must be positive");
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("roost-bench-dev"));
    let load_before = load_average();
    let mut summary = vec![format!(
        "dev: {} saves per language, {} ms apart; {}; load average {load_before}",
        args.saves,
        args.pause,
        cpu_model()
    )];
    let mut results = serde_json::Map::new();
    let mut problems = Vec::new();
    for lang in langs {
        match measure(lang, &dir.join(lang.to_string()), args).await {
            Ok(saves) => {
                summary.extend(describe(lang, &saves));
                results.insert(lang.to_string(), encode(&saves));
            }
            Err(error) => problems.push(format!("{lang}: {error:#}")),
        }
    }
    let load_after = load_average();
    summary.push(format!("load average after: {load_after}"));
    Ok(Report {
        summary,
        json: json!({
            "scenario": "dev",
            "saves": args.saves,
            "exact_profile": args.exact_profile,
            "cpu": cpu_model(),
            "load_before": load_before,
            "load_after": load_after,
            "results": results,
        }),
        problems,
    })
}

/// The scaffold's reply line, and how a save changes it.
fn edit(lang: Lang) -> (&'static str, fn(usize) -> String) {
    match lang {
        Lang::Rust => (r#"json!({ "pong": pings })"#, |n| {
            format!(r#"json!({{ "pong": pings, "v": "{n}" }})"#)
        }),
        Lang::Js => ("pong: pings }", |n| format!(r#"pong: pings, v: "{n}" }}"#)),
    }
}

async fn measure(lang: Lang, dir: &Path, args: &Args) -> anyhow::Result<Vec<Save>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the repository")?
        .to_owned();
    let project = dir.join("counter");
    let source = write_project(lang, dir, &project, &repo)?;
    let output = match lang {
        Lang::Rust => project.join("target/wasm32-wasip2/release/counter.wasm"),
        Lang::Js => project.join("dist/counter.wasm"),
    };
    let data = tempfile::tempdir()?;
    let config_file = dir.join("roost.toml");
    std::fs::write(
        &config_file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncache_dir = \"\"\ndata_dir = {}\n\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"counter:*\" = {}\n",
            crate::client::json_string(&data.path().to_string_lossy()),
            crate::client::json_string(&output.to_string_lossy()),
        ),
    )?;
    let mut config = Config::load(&config_file)?;
    let rust = RustBuild {
        exact_profile: args.exact_profile,
    };
    let dev = Dev::prepare(&mut config, rust).await?;
    anyhow::ensure!(dev.projects().count() == 1, "dev found no project");
    let mut builds = dev.subscribe();
    let running = server::start(config).await?;
    let first_builds = dev.start(running.apps().clone(), running.tasks().clone())?;
    let result = saves(lang, &running, &mut builds, first_builds, &source, args).await;
    running.shutdown().await;
    result
}

/// Writes the scaffold into `project` (over the last run's sources, keeping
/// its build outputs); returns the source file a save edits.
fn write_project(lang: Lang, dir: &Path, project: &Path, repo: &Path) -> anyhow::Result<PathBuf> {
    let fresh = dir.join("scaffold");
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(dir)?;
    let sdk = match lang {
        Lang::Rust => repo.join("guest-sdk"),
        Lang::Js => repo.join("guest-sdk/js"),
    };
    scaffold::create_with_sdk("counter", lang, None, &fresh, &sdk)?;
    copy_tree(&fresh, project)?;
    std::fs::remove_dir_all(&fresh)?;
    if lang == Lang::Rust && !project.join("Cargo.lock").exists() {
        // The sample plugins' dependency versions: resolved already, offline.
        std::fs::copy(repo.join("plugins/Cargo.lock"), project.join("Cargo.lock"))?;
    }
    Ok(project.join(match lang {
        Lang::Rust => "src/lib.rs",
        Lang::Js => "src/index.js",
    }))
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

async fn saves(
    lang: Lang,
    running: &server::Running,
    builds: &mut broadcast::Receiver<Rebuilt>,
    first_builds: usize,
    source: &Path,
    args: &Args,
) -> anyhow::Result<Vec<Save>> {
    let timeout = Duration::from_secs_f64(args.timeout);
    // Let the builds `dev` starts with finish (a Rust project's first one
    // with a profile builds its dependencies) before timing anything.
    for _ in 0..first_builds {
        let built = tokio::time::timeout(Duration::from_secs(600), builds.recv())
            .await
            .context("the first build")??;
        anyhow::ensure!(
            built.error.is_none(),
            "first build failed: {:?}",
            built.error
        );
    }
    // And what follows them: their hot reload, and a build that cargo's
    // rewrite of Cargo.lock starts (a source of the package too).
    while let Ok(built) = tokio::time::timeout(Duration::from_secs(3), builds.recv()).await {
        anyhow::ensure!(built?.error.is_none(), "a first build failed");
    }
    let slot = running
        .app("/socket")
        .and_then(|app| app.state().router().route("counter:1").cloned())
        .context("counter:1 is routed")?;
    let mut client =
        Client::connect(&format!("ws://{}/socket/websocket?vsn=2.0.0", running.addr)).await;
    client
        .call(
            r#"["1","1","counter:1","phx_join",{}]"#,
            r#"["1","1","counter:1","phx_reply",{"response":{"topic":"counter:1"},"status":"ok"}]"#,
        )
        .await;
    let original = std::fs::read_to_string(source)?;
    let (line, changed) = edit(lang);
    anyhow::ensure!(original.contains(line), "the scaffold changed");
    let mut saves = Vec::new();
    let mut next_ref = 2u64;
    for n in 1..=args.saves {
        let serving = slot.current().version().to_owned();
        let tmp = source.with_file_name(".save.tmp");
        std::fs::write(&tmp, original.replace(line, &changed(n)))?;
        std::fs::rename(&tmp, source)?;
        let saved = Instant::now();
        // The slot's version, watched from here: when the new code serves.
        let watched = slot.clone();
        let swapped = tokio::spawn(async move {
            while watched.current().version() == serving {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Instant::now()
        });
        let want = n.to_string();
        let replied = tokio::time::timeout(timeout, async {
            loop {
                client
                    .send(&format!(r#"["1","{next_ref}","counter:1","ping",{{}}]"#))
                    .await;
                next_ref += 1;
                let frame: Value = serde_json::from_str(&client.recv_text().await)?;
                if frame[4]["response"]["v"] == want.as_str() {
                    return anyhow::Ok(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .with_context(|| format!("save {n}: no reply from the new code"))??;
        // The build this save started (not one that was already running).
        let built = tokio::time::timeout(timeout, async {
            loop {
                let built = builds.recv().await?;
                if built.started >= saved {
                    return anyhow::Ok(built);
                }
            }
        })
        .await
        .with_context(|| format!("save {n}: no build was reported"))??;
        anyhow::ensure!(built.error.is_none(), "save {n}: {:?}", built.error);
        let swapped = tokio::time::timeout(timeout, swapped).await??;
        let build_end = built.started + built.took;
        saves.push(Save {
            to_build: built.started.saturating_duration_since(saved),
            build: built.took,
            to_serving: swapped.saturating_duration_since(build_end),
            to_reply: replied.saturating_duration_since(swapped),
            total: replied.saturating_duration_since(saved),
        });
        tokio::time::sleep(Duration::from_millis(args.pause)).await;
        // A save that made two builds (it should not) would show here.
        while let Ok(extra) = builds.try_recv() {
            anyhow::ensure!(extra.error.is_none(), "save {n}: {:?}", extra.error);
        }
    }
    std::fs::write(source, original)?;
    Ok(saves)
}

fn p50_max(mut values: Vec<Duration>) -> (f64, f64) {
    values.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    (ms(values[values.len() / 2]), ms(values[values.len() - 1]))
}

fn phases(saves: &[Save]) -> [(&'static str, (f64, f64)); 5] {
    let pick = |f: fn(&Save) -> Duration| p50_max(saves.iter().map(f).collect());
    [
        ("edit → first new reply", pick(|s| s.total)),
        ("  save → build starts (debounce)", pick(|s| s.to_build)),
        ("  build", pick(|s| s.build)),
        (
            "  build done → serving (reload: compile, swap)",
            pick(|s| s.to_serving),
        ),
        ("  serving → first new reply", pick(|s| s.to_reply)),
    ]
}

fn describe(lang: Lang, saves: &[Save]) -> Vec<String> {
    let mut lines = vec![format!("{lang} ({} saves): p50 / max ms", saves.len())];
    for (name, (p50, max)) in phases(saves) {
        lines.push(format!("  {name:<48} {p50:>8.1} / {max:>8.1}"));
    }
    lines
}

fn encode(saves: &[Save]) -> Value {
    let keys = ["total", "to_build", "build", "to_serving", "to_reply"];
    let mut out = serde_json::Map::new();
    for (key, (_, (p50, max))) in keys.iter().zip(phases(saves)) {
        out.insert(format!("{key}_ms"), json!({ "p50": p50, "max": max }));
    }
    Value::Object(out)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} × {model}")
}
