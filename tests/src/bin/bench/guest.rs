//! `guest`: what running channel logic as WebAssembly costs per call. No
//! server and no sockets: the ping logic (`ping` with an optional
//! `{"ack_phrase": P}` → reply `{"ping": P}`, else `{"ping": "pong"}`) runs
//! in this process both
//!
//! - as the WASM ping plugin, loaded and called through the host's own API
//!   (`Runtime::compile`, `Plugin::handle_in` with a `CallContext`), exactly as
//!   a socket's channel calls it: warm instance from the pool, deadline,
//!   context and payload copied into the guest, the guest SDK parsing the
//!   payload and serializing the reply, the host validating the reply; and
//! - as a native Rust handler compiled into this binary, doing the same
//!   work: the payload's JSON text parsed with serde_json, the reply built
//!   as JSON text (a `Payload`), returned as the same `Called<Outcome>`.
//!
//! Both first get the same payloads and must give the same replies. Then
//! each makes `--calls` calls (alternating the two payloads) on this thread
//! in `--rounds` interleaved rounds; ns per call is the median round's.
//! Reported: ns per call for both, the throughput ratio (WASM calls/s ÷
//! native calls/s; budget ≥ 0.8) and the µs the guest adds per call (budget
//! ≤ 2 µs). Twice: with an anonymous socket's context (claims and assigns
//! `{}`, no socket id) and with claims and assigns of `--context-bytes` each
//! and a socket id, which the host copies into the guest on every call (the
//! guest SDK parses them only when the callback reads them; ping does not).
//!
//! The server options (`--url`, `--spawn`, …) do not apply.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roost_host::config::GuestLimits;
use roost_host::protocol::Payload;
use roost_host::runtime::{CallContext, Called, Outcome, Plugin, PluginError, Runtime};
use serde_json::{Value, json};

use crate::Report;
use crate::goals::{self, Goal};
use crate::stats::round3;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Timed calls per handler and context.
    #[arg(long, default_value_t = 1_000_000)]
    pub calls: u64,

    /// Rounds the calls are split into, native and WASM interleaved; the
    /// median round is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: u64,

    /// Size in bytes of the claims and of the assigns (JSON objects) in the
    /// second context.
    #[arg(long, default_value_t = 200)]
    pub context_bytes: usize,

    /// Another build of the ping plugin to measure instead of the Rust one,
    /// e.g. `plugins/js/ping` built by `roost-js build`.
    #[arg(long)]
    pub plugin: Option<std::path::PathBuf>,
}

/// Untimed calls per handler and context before the rounds.
const WARMUP: u64 = 10_000;

/// The payloads, alternated: with an ack phrase, and without.
const PAYLOADS: [&str; 2] = [r#"{"ack_phrase":"hoorays..!"}"#, "{}"];

/// A call's context: owned text, borrowed by [`CallContext`].
struct Context {
    name: &'static str,
    socket_id: Option<Arc<str>>,
    claims: Arc<str>,
    assigns: Arc<str>,
}

impl Context {
    fn call(&self) -> CallContext<'_> {
        CallContext {
            topic: "ping",
            socket_id: self.socket_id.as_ref(),
            claims: &self.claims,
            assigns: &self.assigns,
            presence: None,
            owner: None,
            timers: Vec::new(),
            timer_budget: None,
            kv: None,
            limits: GuestLimits::default(),
            timers_per_app: 0,
        }
    }
}

/// What one context's rounds gave.
struct Measured {
    native_ns: Vec<f64>,
    wasm_ns: Vec<f64>,
}

impl Measured {
    fn native(&self) -> f64 {
        median(&self.native_ns)
    }

    fn wasm(&self) -> f64 {
        median(&self.wasm_ns)
    }

    /// WASM calls/s ÷ native calls/s.
    fn ratio(&self) -> f64 {
        self.native() / self.wasm()
    }

    /// µs the guest adds to each call.
    fn added_us(&self) -> f64 {
        (self.wasm() - self.native()) / 1e3
    }
}

pub async fn run(args: &Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.rounds > 0 && args.calls >= args.rounds,
        "--rounds must be positive and --calls at least --rounds"
    );
    let path = args
        .plugin
        .clone()
        .unwrap_or_else(|| roost_tests::plugin("ping"));
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let runtime = Runtime::new("roost@bench", None)?;
    let plugin = Plugin::new(
        runtime.clone(),
        runtime.compile(&path).await?,
        "bench".into(),
    );
    let payloads = PAYLOADS.map(Payload::json_raw);
    let contexts = [
        Context {
            name: "empty",
            socket_id: None,
            claims: "{}".into(),
            assigns: "{}".into(),
        },
        Context {
            name: "sized",
            socket_id: Some("users_socket:user-1234567".into()),
            claims: sized_object(
                json!({
                    "sub": "user-1234567",
                    "username": "Ada Lovelace",
                    "iat": 1_767_225_600,
                    "exp": 1_767_229_200,
                    "iss": "https://auth.example.com",
                    "roles": ["reader", "writer"],
                }),
                args.context_bytes,
            )
            .into(),
            assigns: sized_object(
                json!({
                    "count": 42,
                    "user_id": "user-1234567",
                    "joined_at": 1_767_225_600_000_u64,
                    "prefs": {"theme": "dark", "lang": "en"},
                }),
                args.context_bytes,
            )
            .into(),
        },
    ];

    let mut problems = Vec::new();
    let mut measured = Vec::new();
    for context in &contexts {
        let ctx = context.call();
        for payload in &payloads {
            let wasm = plugin.handle_in(ctx.clone(), "ping", payload).await;
            let native = native_handle_in(&ctx, "ping", payload).await;
            match (wasm, native) {
                (Ok(wasm), Ok(native)) if wasm.value == native.value && wasm.effects.is_empty() => {
                }
                (Ok(wasm), Ok(native)) => problems.push(format!(
                    "{} context: the replies differ: WASM {:?}, native {:?}",
                    context.name, wasm.value, native.value
                )),
                (wasm, native) => problems.push(format!(
                    "{} context: a call failed: WASM {:?}, native {:?}",
                    context.name,
                    wasm.err(),
                    native.err()
                )),
            }
        }
        if !problems.is_empty() {
            break;
        }
        native_calls(&ctx, &payloads, WARMUP).await?;
        wasm_calls(&plugin, &ctx, &payloads, WARMUP).await?;
        let per_round = args.calls / args.rounds;
        let mut rounds = Measured {
            native_ns: Vec::new(),
            wasm_ns: Vec::new(),
        };
        for _ in 0..args.rounds {
            let took = native_calls(&ctx, &payloads, per_round).await?;
            rounds.native_ns.push(ns_per_call(took, per_round));
            let took = wasm_calls(&plugin, &ctx, &payloads, per_round).await?;
            rounds.wasm_ns.push(ns_per_call(took, per_round));
        }
        measured.push((context, rounds));
    }

    let calls = args.calls / args.rounds * args.rounds;
    let mut summary = vec![format!(
        "guest: the ping logic as the WASM plugin ({}) through Plugin::handle_in vs a native \
         Rust handler; {calls} calls each per context in {} rounds (median round)",
        path.display(),
        args.rounds
    )];
    let mut json = json!({
        "scenario": "guest",
        "plugin": path.display().to_string(),
        "calls": calls,
        "rounds": args.rounds,
        "budget": {"added_us_per_call": 2.0, "throughput_ratio": 0.8},
    });
    for (context, rounds) in &measured {
        let (ratio, added) = (rounds.ratio(), rounds.added_us());
        summary.push(format!(
            "  {} context (claims {} B, assigns {} B, socket id {}):",
            context.name,
            context.claims.len(),
            context.assigns.len(),
            context.socket_id.as_deref().unwrap_or("none"),
        ));
        summary.push(format!(
            "    native {:.0} ns/call ({:.2} M calls/s), WASM {:.0} ns/call ({:.2} M calls/s); \
             rounds: native {}, WASM {} ns",
            rounds.native(),
            1e3 / rounds.native(),
            rounds.wasm(),
            1e3 / rounds.wasm(),
            spread(&rounds.native_ns),
            spread(&rounds.wasm_ns),
        ));
        summary.push(format!(
            "    throughput ratio WASM/native {ratio:.3} (budget ≥ 0.8: {}); \
             the guest adds {added:.2} µs per call (budget ≤ 2 µs: {})",
            verdict(ratio >= 0.8, ratio / 0.8, "of the budget"),
            verdict(added <= 2.0, added / 2.0, "the budget"),
        ));
        json[context.name] = json!({
            "claims_bytes": context.claims.len(),
            "assigns_bytes": context.assigns.len(),
            "socket_id": context.socket_id.is_some(),
            "native_ns_per_call": rounds.native().round(),
            "wasm_ns_per_call": rounds.wasm().round(),
            "native_ns_rounds": rounds.native_ns.iter().map(|ns| ns.round()).collect::<Vec<_>>(),
            "wasm_ns_rounds": rounds.wasm_ns.iter().map(|ns| ns.round()).collect::<Vec<_>>(),
            "throughput_ratio": round3(ratio),
            "added_us_per_call": round3(added),
        });
    }
    if let [(_, empty), (_, sized)] = measured.as_slice() {
        summary.push(format!(
            "  the larger context adds {:.0} ns per WASM call",
            sized.wasm() - empty.wasm()
        ));
    }
    if args.plugin.is_none()
        && let Some((context, _)) = measured.last()
    {
        let more = other_calls(&runtime, context, &payloads, (args.calls / 10).max(100)).await?;
        summary.push("  other calls (sized context, ns per call, median of 3 rounds):".into());
        for (name, ns) in &more {
            summary.push(format!("    {name}: {ns:.0} ns"));
        }
        json["other_calls_ns"] = more
            .iter()
            .map(|(name, ns)| (name.to_string(), json!(ns.round())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some((_, empty)) = measured.first() {
        let goal = Goal::at_most(
            "guest call overhead over native",
            empty.added_us(),
            0.8,
            "µs",
        );
        goals::attach(&[goal], &mut summary, &mut json);
    }
    Ok(Report {
        summary,
        json,
        problems,
    })
}

/// The ping plugin's `handle_in` for `ping` and `ping:<p>`, natively: the
/// payload's JSON text parsed, the reply serialized to JSON text.
async fn native_handle_in(
    _ctx: &CallContext<'_>,
    event: &str,
    payload: &Payload,
) -> Result<Called<Outcome>, PluginError> {
    let reply = |response: Value| Outcome {
        reply: Some(("ok".to_owned(), Payload::from_value(&response))),
        ..Outcome::default()
    };
    let value = match payload {
        Payload::Json(raw) => serde_json::from_str::<Value>(raw.get())
            .map_err(|e| PluginError::BadOutput(e.to_string()))?,
        Payload::Binary(_) => Value::Null,
    };
    let outcome = if let Some(phrase) = event.strip_prefix("ping:") {
        reply(json!({ "ping": phrase }))
    } else if event == "ping" {
        match value.get("ack_phrase") {
            Some(phrase) => reply(json!({ "ping": phrase })),
            None => reply(json!({ "ping": "pong" })),
        }
    } else {
        Outcome::default()
    };
    Ok(Called {
        value: outcome,
        effects: Vec::new(),
    })
}

async fn native_calls(
    ctx: &CallContext<'_>,
    payloads: &[Payload; 2],
    calls: u64,
) -> Result<Duration, PluginError> {
    let started = Instant::now();
    for i in 0..calls {
        let payload = &payloads[(i % 2) as usize];
        black_box(native_handle_in(ctx, black_box("ping"), black_box(payload)).await?);
    }
    Ok(started.elapsed())
}

async fn wasm_calls(
    plugin: &Plugin,
    ctx: &CallContext<'_>,
    payloads: &[Payload; 2],
    calls: u64,
) -> Result<Duration, PluginError> {
    let started = Instant::now();
    for i in 0..calls {
        let payload = &payloads[(i % 2) as usize];
        black_box(
            plugin
                .handle_in(ctx.clone(), black_box("ping"), payload)
                .await?,
        );
    }
    Ok(started.elapsed())
}

/// A JSON object with the fields of `base`, padded with a `pad` string to
/// `bytes` bytes of text (or left as is if it is already that long).
fn sized_object(mut base: Value, bytes: usize) -> String {
    let len = base.to_string().len();
    // `,"pad":""` is 9 bytes.
    if let Some(room) = bytes.checked_sub(len + 9).filter(|room| *room > 0)
        && let Value::Object(fields) = &mut base
    {
        fields.insert("pad".to_owned(), "x".repeat(room).into());
    }
    base.to_string()
}

fn ns_per_call(took: Duration, calls: u64) -> f64 {
    took.as_nanos() as f64 / calls.max(1) as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `min–max` of the rounds.
fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

/// `met` or `NOT met (3.2× the budget)`.
fn verdict(met: bool, factor: f64, of: &str) -> String {
    if met {
        "met".to_owned()
    } else {
        format!("NOT met, {factor:.2}× {of}")
    }
}

/// Calls beyond `handle_in` on the 0.2 ping, each timed over `calls` calls
/// (median of 3 rounds): the same `ping` on a build of the 0.1 contract
/// (which copies the whole context into the guest on every call), the
/// ping's `handle_info` (a timer firing), and key-value `set` and `get`
/// through the `store` fixture (SQLite in a temp dir, off the async
/// threads, as a server runs it).
async fn other_calls(
    runtime: &Runtime,
    context: &Context,
    payloads: &[Payload; 2],
    calls: u64,
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let load = |name: &str| {
        let path = roost_tests::plugin(name);
        let runtime = runtime.clone();
        async move {
            let compiled = runtime.compile(&path).await?;
            anyhow::Ok(Plugin::new(runtime, compiled, "bench".into()))
        }
    };
    let (v01, ping, store) = (
        load("ping_v01").await?,
        load("ping").await?,
        load("store").await?,
    );
    let data = tempfile::tempdir()?;
    let storage = roost_host::storage::Storage::new(data.path().to_owned());
    let limits = roost_host::config::Limits::default();
    let kv = storage.kv("bench", roost_host::storage::Quotas::from_limits(&limits))?;
    let ctx = context.call();
    let stored = CallContext {
        kv: Some(kv),
        ..ctx.clone()
    };
    let info = r#"{"ping":1,"delay_ms":0}"#;
    let set = Payload::json_raw(r#"{"key":"bench","value":"a value of some thirty bytes."}"#);
    let get = Payload::json_raw(r#"{"key":"bench"}"#);
    let mut results = Vec::new();
    for name in [
        "ping on 0.1 (context copied)",
        "handle_info",
        "kv set",
        "kv get",
    ] {
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            for i in 0..calls {
                let called = match name {
                    "ping on 0.1 (context copied)" => {
                        v01.handle_in(ctx.clone(), "ping", &payloads[(i % 2) as usize])
                            .await
                    }
                    "handle_info" => ping.handle_info(ctx.clone(), info).await,
                    "kv set" => store.handle_in(stored.clone(), "set", &set).await,
                    _ => store.handle_in(stored.clone(), "get", &get).await,
                };
                let called = called.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                if let Some((status, response)) = &called.value.reply
                    && status != "ok"
                {
                    anyhow::bail!("{name}: replied {status} {response:?}");
                }
                black_box(called);
            }
            rounds.push(ns_per_call(started.elapsed(), calls));
        }
        results.push((name, median(&rounds)));
    }
    Ok(results)
}
