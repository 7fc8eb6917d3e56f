//! `engines`: loads channel components (the JS ones built by `guest-sdk/js`
//! with StarlingMonkey or QuickJS, or any other) in wasmtime 48 with the
//! host's engine settings and a stub host, for `roost:channel@0.2.0` or
//! `0.1.0`. For 0.2 it first checks that each callback round-trips the
//! contract's types (the `context` import, `result`, `option`, variants,
//! `list<u8>`, a timer id). Then it measures what a
//! plugin costs: compile, instantiation, a warm `handle_in` (the room chat's
//! `message:add`: assigns read, one broadcast, a reply), the linear memory of
//! a warm instance and the resident memory each extra warm instance adds.
//!
//! `bench guest --plugin` (`src/bin/bench/guest.rs`) measures the ping
//! logic through the host's own API; this harness compares engines on any
//! plugin, memory included, without a server. The stub host records effects instead of
//! applying them, as the real one does, so a call costs about what it costs
//! there (minus the socket).
//!
//! ```sh
//! cargo run -p roost-tests --bin engines -- a.wasm b.wasm
//! ```
//!
//! Each component is measured in a child process of its own, so that one's
//! memory does not count against the next.

use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, bail, ensure, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "roost:channel/plugin",
    exports: { default: async },
});

/// The 0.1.0 world, which the host loads today.
mod v01 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "roost:channel/channel",
        exports: { default: async },
    });
}

use exports::roost::channel::handler::Outcome;
use roost::channel::types::{Joined, Level, Payload};

/// What the host offers the running callback through the `context` import.
#[derive(Clone)]
pub struct CallContext {
    topic: String,
    claims: String,
    assigns: String,
}

/// Per-instance store state: WASI with nothing granted, the resource table,
/// and what the running call asked for.
struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The running call's context (0.2 reads it through imports).
    current: CallContext,
    effects: Vec<String>,
    next_timer: u64,
    memory: MemoryMeter,
}

/// Records the largest linear memory the instance was given, and refuses
/// to grow it past the host's default cap (64 MiB, `guest_memory_bytes`),
/// as the host's `StoreLimits` do: `memory.grow` fails, the guest decides.
struct MemoryMeter {
    peak: usize,
    cap: usize,
}

impl Default for MemoryMeter {
    fn default() -> Self {
        Self {
            peak: 0,
            cap: 64 << 20,
        }
    }
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn text(payload: &Payload) -> String {
    match payload {
        Payload::Json(text) => text.clone(),
        Payload::Binary(bytes) => format!("binary {bytes:?}"),
    }
}

impl roost::channel::types::Host for Host {}

impl roost::channel::context::Host for Host {
    fn app(&mut self) -> String {
        "demo".into()
    }

    fn topic(&mut self) -> String {
        self.current.topic.clone()
    }

    fn socket_id(&mut self) -> Option<String> {
        Some("users_socket:42".into())
    }

    fn claims(&mut self) -> String {
        self.current.claims.clone()
    }

    fn assigns(&mut self) -> String {
        self.current.assigns.clone()
    }
}

impl roost::channel::channel::Host for Host {
    fn push(&mut self, event: String, payload: Payload) {
        self.effects
            .push(format!("push {event} {}", text(&payload)));
    }

    fn broadcast(&mut self, topic: String, event: String, payload: Payload) {
        self.effects
            .push(format!("broadcast {topic} {event} {}", text(&payload)));
    }

    fn broadcast_from(&mut self, topic: String, event: String, payload: Payload) {
        self.effects
            .push(format!("broadcast_from {topic} {event} {}", text(&payload)));
    }

    fn node_name(&mut self) -> String {
        "roost@engines".into()
    }
}

impl roost::channel::presence::Host for Host {
    fn track(&mut self, key: String, meta: String) {
        self.effects.push(format!("track {key} {meta}"));
    }

    fn untrack(&mut self, key: String) {
        self.effects.push(format!("untrack {key}"));
    }

    fn list(&mut self) -> String {
        r#"{"ada":{"metas":[{"online_at":1,"phx_ref":"AAAAAAAAAAAAAAAB"}]}}"#.into()
    }
}

impl roost::channel::log::Host for Host {
    fn log(&mut self, level: Level, message: String) {
        self.effects.push(format!("log {level:?} {message}"));
    }
}

impl roost::channel::timers::Host for Host {
    fn send_after(&mut self, delay_ms: u32, message: String) -> Result<u64, String> {
        if message == "refuse" {
            return Err("too many timers".into());
        }
        self.next_timer += 1;
        self.effects
            .push(format!("send_after {delay_ms} {message}"));
        Ok(self.next_timer)
    }

    fn cancel_timer(&mut self, id: u64) -> bool {
        id <= self.next_timer
    }
}

impl roost::channel::kv::Host for Host {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, roost::channel::kv::Error> {
        Ok((key == "set").then(|| b"42".to_vec()))
    }

    fn get_many(
        &mut self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, roost::channel::kv::Error> {
        Ok(keys.into_iter().map(|_| None).collect())
    }

    fn set(
        &mut self,
        key: String,
        _value: Vec<u8>,
        _ttl_ms: Option<u64>,
    ) -> Result<(), roost::channel::kv::Error> {
        if key.is_empty() {
            return Err(roost::channel::kv::Error::Invalid("empty key".into()));
        }
        Ok(())
    }

    fn delete(&mut self, _key: String) -> Result<bool, roost::channel::kv::Error> {
        Ok(true)
    }

    fn increment(&mut self, _key: String, delta: i64) -> Result<i64, roost::channel::kv::Error> {
        Ok(delta)
    }

    fn list_keys(
        &mut self,
        prefix: String,
        _after: Option<String>,
        _limit: u32,
    ) -> Result<Vec<String>, roost::channel::kv::Error> {
        Ok(vec![format!("{prefix}a")])
    }
}

fn new_store(engine: &Engine) -> Store<Host> {
    let host = Host {
        wasi: WasiCtxBuilder::new().build(),
        table: ResourceTable::new(),
        current: context("{}"),
        effects: Vec::new(),
        next_timer: 0,
        memory: MemoryMeter::default(),
    };
    let mut store = Store::new(engine, host);
    store.limiter(|host| &mut host.memory);
    // The ticker below keeps the epoch moving; a generous deadline per call.
    store.set_epoch_deadline(1_000);
    store.epoch_deadline_async_yield_and_update(1_000);
    store
}

/// The room chat channel's context for the next calls, with `assigns`.
fn context(assigns: &str) -> CallContext {
    CallContext {
        topic: "room:lobby".into(),
        claims: r#"{"sub":"ada","username":"Ada"}"#.into(),
        assigns: assigns.into(),
    }
}

fn bytes_len(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn json(text: &str) -> Payload {
    Payload::Json(text.into())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

impl v01::roost::channel::types::Host for Host {}

impl v01::roost::channel::host::Host for Host {
    fn push(&mut self, event: String, payload: v01::roost::channel::types::Payload) {
        self.effects
            .push(format!("push {event} {}", text01(&payload)));
    }

    fn broadcast(
        &mut self,
        topic: String,
        event: String,
        payload: v01::roost::channel::types::Payload,
    ) {
        self.effects
            .push(format!("broadcast {topic} {event} {}", text01(&payload)));
    }

    fn broadcast_from(
        &mut self,
        topic: String,
        event: String,
        payload: v01::roost::channel::types::Payload,
    ) {
        self.effects.push(format!(
            "broadcast_from {topic} {event} {}",
            text01(&payload)
        ));
    }

    fn log(&mut self, level: v01::roost::channel::types::Level, message: String) {
        self.effects.push(format!("log {level:?} {message}"));
    }

    fn node_name(&mut self) -> String {
        "roost@engines".into()
    }

    fn presence_track(&mut self, key: String, meta: String) {
        self.effects.push(format!("track {key} {meta}"));
    }

    fn presence_untrack(&mut self, key: String) {
        self.effects.push(format!("untrack {key}"));
    }

    fn presence_list(&mut self) -> String {
        r#"{"ada":{"metas":[{"online_at":1,"phx_ref":"AAAAAAAAAAAAAAAB"}]}}"#.into()
    }
}

fn text01(payload: &v01::roost::channel::types::Payload) -> String {
    match payload {
        v01::roost::channel::types::Payload::Json(text) => text.clone(),
        v01::roost::channel::types::Payload::Binary(bytes) => format!("binary {bytes:?}"),
    }
}

/// Calls each 0.2 callback once and prints what came back.
async fn check(instance: &Plugin, store: &mut Store<Host>) -> wasmtime::Result<()> {
    let handler = instance.roost_channel_handler();
    println!(
        "  intercepts: {:?}",
        handler.call_intercepts(&mut *store).await?
    );
    store.data_mut().current = context("{}");
    let joined: Result<Joined, Payload> = handler
        .call_join(&mut *store, "room:lobby", &json(r#"{"username":"ada"}"#))
        .await?;
    match &joined {
        Ok(j) => println!(
            "  join ok: response {} assigns {:?}",
            text(&j.response),
            j.assigns
        ),
        Err(p) => println!("  join err: {}", text(p)),
    }
    let refused = handler
        .call_join(&mut *store, "room:lobby", &json(r#"{"refuse":true}"#))
        .await?;
    println!(
        "  join with {{\"refuse\":true}}: {:?}",
        refused.map(|j| text(&j.response)).map_err(|p| text(&p))
    );

    store.data_mut().current = context(ASSIGNS);
    for (event, payload) in [
        ("ping", json(r#"{"ack_phrase":"hi"}"#)),
        ("binary", Payload::Binary(vec![0, 1, 255])),
        ("message:add", json(r#"{"message":"hello"}"#)),
    ] {
        let out: Outcome = handler.call_handle_in(&mut *store, event, &payload).await?;
        println!(
            "  handle_in {event}: reply {:?} assigns {:?} stop {:?}",
            out.reply
                .as_ref()
                .map(|r| (r.status.clone(), text(&r.response))),
            out.assigns,
            out.stop
        );
    }
    let out = handler.call_handle_info(&mut *store, "tick").await?;
    println!("  handle_info: assigns {:?}", out.assigns);
    let out = handler
        .call_handle_out(&mut *store, "new_msg", &json(r#"{"body":"x"}"#))
        .await?;
    println!("  handle_out: reply {:?}", out.reply.map(|r| r.status));
    handler.call_terminate(&mut *store, "leave").await?;
    for effect in std::mem::take(&mut store.data_mut().effects) {
        println!("  effect: {effect}");
    }
    Ok(())
}

/// A warm instance of either contract version, and its one timed call.
enum Warm {
    V02(Plugin),
    V01(v01::Channel),
}

/// The assigns a room chat channel has after its join.
const ASSIGNS: &str = r#"{"room_id":"lobby","username":"ada"}"#;
/// The timed call: the room chat's `message:add`.
const EVENT: &str = "message:add";
const PAYLOAD: &str = r#"{"message":"hello"}"#;

impl Warm {
    async fn call(&self, store: &mut Store<Host>) -> wasmtime::Result<()> {
        match self {
            Self::V02(plugin) => {
                store.data_mut().current = context(ASSIGNS);
                plugin
                    .roost_channel_handler()
                    .call_handle_in(&mut *store, EVENT, &json(PAYLOAD))
                    .await?;
            }
            Self::V01(channel) => {
                let ctx = v01::roost::channel::types::Context {
                    app: "demo".into(),
                    topic: "room:lobby".into(),
                    socket_id: None,
                    claims: r#"{"sub":"ada","username":"Ada"}"#.into(),
                    assigns: ASSIGNS.into(),
                };
                channel
                    .roost_channel_handler()
                    .call_handle_in(
                        &mut *store,
                        &ctx,
                        EVENT,
                        &v01::roost::channel::types::Payload::Json(PAYLOAD.into()),
                    )
                    .await?;
            }
        }
        store.data_mut().effects.clear();
        Ok(())
    }
}

/// Pre-instantiated component of either version.
enum Pre {
    V02(PluginPre<Host>),
    V01(v01::ChannelPre<Host>),
}

impl Pre {
    async fn instantiate(&self, store: &mut Store<Host>) -> wasmtime::Result<Warm> {
        Ok(match self {
            Self::V02(pre) => Warm::V02(pre.instantiate_async(store).await?),
            Self::V01(pre) => Warm::V01(pre.instantiate_async(store).await?),
        })
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

async fn measure(engine: &Engine, linker: &Linker<Host>, path: &str) -> wasmtime::Result<()> {
    println!("{path}: {} bytes", bytes_len(path));
    let bytes = std::fs::read(path).map_err(|e| format_err!("{path}: {e}"))?;
    let started = Instant::now();
    let component = Component::new(engine, &bytes)?;
    println!("  compile: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    let pre = match linker.instantiate_pre(&component) {
        Ok(pre) => match PluginPre::new(pre.clone()) {
            Ok(pre) => Pre::V02(pre),
            Err(_) => Pre::V01(v01::ChannelPre::new(pre)?),
        },
        Err(e) => bail!("does not link: {e:#}"),
    };
    println!(
        "  contract: {}",
        if matches!(pre, Pre::V02(_)) {
            "0.2.0"
        } else {
            "0.1.0"
        }
    );

    let mut times = Vec::new();
    for _ in 0..50 {
        let mut store = new_store(engine);
        let started = Instant::now();
        pre.instantiate(&mut store).await?;
        times.push(started.elapsed());
    }
    println!(
        "  instantiate: {:.1} µs (median of 50)",
        median(times).as_secs_f64() * 1e6
    );

    let mut store = new_store(engine);
    let warm = pre.instantiate(&mut store).await?;
    if let Warm::V02(plugin) = &warm {
        check(plugin, &mut store).await?;
    }
    warm.call(&mut store).await?;
    println!(
        "  linear memory after the first call: {} KiB",
        store.data().memory.peak / 1024
    );

    let mut rounds = Vec::new();
    for round in 0..6 {
        let calls = 2_000;
        let started = Instant::now();
        for _ in 0..calls {
            warm.call(&mut store).await?;
        }
        if round > 0 {
            rounds.push(started.elapsed() / calls);
        }
    }
    println!(
        "  warm handle_in {EVENT}: {:.1} µs (median of 5 rounds of 2000)",
        median(rounds).as_secs_f64() * 1e6
    );
    println!(
        "  linear memory after 12000 calls: {} KiB",
        store.data().memory.peak / 1024
    );
    // Does memory settle? A guest whose heap only grows hits the host's
    // memory cap (64 MiB) after some number of calls and crashes a channel.
    let soak: u64 = std::env::var("ENGINES_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut done = 12_000;
    while done < 12_000 + soak {
        let step = soak.min(50_000);
        for _ in 0..step {
            warm.call(&mut store).await?;
        }
        done += step;
        println!(
            "  linear memory after {done} calls: {} KiB",
            store.data().memory.peak / 1024
        );
    }

    // What each further warm instance costs in resident memory, after a few
    // calls each (the pages a call touches are what a pooled instance holds).
    let instances = 20;
    let before = rss_kib();
    let mut held = Vec::new();
    for _ in 0..instances {
        let mut store = new_store(engine);
        let warm = pre.instantiate(&mut store).await?;
        for _ in 0..100 {
            warm.call(&mut store).await?;
        }
        held.push((store, warm));
    }
    let per = (rss_kib().saturating_sub(before)) / instances;
    println!("  resident memory per warm instance: {per} KiB (20 instances, 100 calls each)");
    drop(held);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> wasmtime::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        bail!("usage: engines COMPONENT.wasm...");
    }
    if paths.len() > 1 {
        // One child process per component: memory figures stay its own.
        let me = std::env::current_exe()?;
        for path in &paths {
            let status = std::process::Command::new(&me).arg(path).status()?;
            ensure!(status.success(), "{path}: the measurement failed");
        }
        return Ok(());
    }
    // The host's settings: epoch interruption, parallel compilation.
    let mut config = Config::new();
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let ticker = engine.weak();
    std::thread::spawn(move || {
        while let Some(engine) = ticker.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Plugin::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |host| host)?;
    v01::Channel::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |host| host)?;
    if let Err(e) = measure(&engine, &linker, &paths[0]).await {
        println!("  FAILED: {e:#}");
        bail!("{}: {e:#}", paths[0]);
    }
    Ok(())
}
