//! `engines`: loads `roost:channel@0.2.0` components (the JS ones built by
//! `guest-sdk/js` with StarlingMonkey or QuickJS, or any other) in wasmtime
//! 48 with the host's engine settings and a stub host, checks that each
//! callback round-trips the contract's types (the `context` resource passed
//! as `borrow`, `result`, `option`, variants, `list<u8>`, a timer id), and
//! measures what a plugin costs: compile, instantiation, a warm `handle_in`
//! and the linear memory of a warm instance.
//!
//! It exists because the host loads only 0.1.0 so far; once it loads 0.2.0,
//! `bench guest` (`src/bin/bench/guest.rs`) measures through the host's own
//! API and this harness can go. The stub host records effects instead of
//! applying them, as the real one does, so a call costs about what it costs
//! there (minus the socket).
//!
//! ```sh
//! cargo run -p roost-tests --bin engines -- a.wasm b.wasm
//! ```

use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, bail, ensure, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "roost:channel/plugin",
    exports: { default: async },
    with: { "roost:channel/types.context": CallContext },
});

use exports::roost::channel::handler::Outcome;
use roost::channel::types::{Joined, Level, Payload};

/// What the host offers a callback through the `context` resource.
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
    effects: Vec<String>,
    next_timer: u64,
    memory: MemoryMeter,
}

/// Records the largest linear memory the instance asked for.
#[derive(Default)]
struct MemoryMeter {
    peak: usize,
}

impl ResourceLimiter for MemoryMeter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
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

impl roost::channel::types::HostContext for Host {
    fn app(&mut self, _ctx: Resource<CallContext>) -> String {
        "demo".into()
    }

    fn topic(&mut self, ctx: Resource<CallContext>) -> String {
        self.table
            .get(&ctx)
            .map(|c| c.topic.clone())
            .unwrap_or_default()
    }

    fn socket_id(&mut self, _ctx: Resource<CallContext>) -> Option<String> {
        Some("users_socket:42".into())
    }

    fn claims(&mut self, ctx: Resource<CallContext>) -> String {
        self.table
            .get(&ctx)
            .map(|c| c.claims.clone())
            .unwrap_or_default()
    }

    fn assigns(&mut self, ctx: Resource<CallContext>) -> String {
        self.table
            .get(&ctx)
            .map(|c| c.assigns.clone())
            .unwrap_or_default()
    }

    fn drop(&mut self, ctx: Resource<CallContext>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
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

fn context(store: &mut Store<Host>, assigns: &str) -> wasmtime::Result<Resource<CallContext>> {
    let ctx = CallContext {
        topic: "room:lobby".into(),
        claims: r#"{"sub":"ada","username":"Ada"}"#.into(),
        assigns: assigns.into(),
    };
    Ok(store.data_mut().table.push(ctx)?)
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

/// Calls each callback once and prints what came back.
async fn check(instance: &Plugin, store: &mut Store<Host>) -> wasmtime::Result<()> {
    let handler = instance.roost_channel_handler();
    println!(
        "  intercepts: {:?}",
        handler.call_intercepts(&mut *store).await?
    );
    let ctx = context(store, "{}")?;
    let joined: Result<Joined, Payload> = handler
        .call_join(
            &mut *store,
            Resource::new_borrow(ctx.rep()),
            &json(r#"{"username":"ada"}"#),
        )
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
        .call_join(
            &mut *store,
            Resource::new_borrow(ctx.rep()),
            &json(r#"{"refuse":true}"#),
        )
        .await?;
    println!(
        "  join refused: {:?}",
        refused.map(|j| text(&j.response)).map_err(|p| text(&p))
    );
    let assigns = joined
        .ok()
        .and_then(|j| j.assigns)
        .unwrap_or_else(|| "{}".into());
    store.data_mut().table.delete(ctx)?;

    let ctx = context(store, &assigns)?;
    for (event, payload) in [
        ("ping", json(r#"{"ack_phrase":"hi"}"#)),
        ("binary", Payload::Binary(vec![0, 1, 255])),
        ("message:add", json(r#"{"message":"hello"}"#)),
    ] {
        let out: Outcome = handler
            .call_handle_in(
                &mut *store,
                Resource::new_borrow(ctx.rep()),
                event,
                &payload,
            )
            .await?;
        println!(
            "  handle_in {event}: reply {:?} assigns {:?} stop {:?}",
            out.reply
                .as_ref()
                .map(|r| (r.status.clone(), text(&r.response))),
            out.assigns,
            out.stop
        );
    }
    let out = handler
        .call_handle_info(&mut *store, Resource::new_borrow(ctx.rep()), "tick")
        .await?;
    println!("  handle_info: assigns {:?}", out.assigns);
    let out = handler
        .call_handle_out(
            &mut *store,
            Resource::new_borrow(ctx.rep()),
            "new_msg",
            &json(r#"{"body":"x"}"#),
        )
        .await?;
    println!("  handle_out: reply {:?}", out.reply.map(|r| r.status));
    handler
        .call_terminate(&mut *store, Resource::new_borrow(ctx.rep()), "leave")
        .await?;
    store.data_mut().table.delete(ctx)?;
    for effect in std::mem::take(&mut store.data_mut().effects) {
        println!("  effect: {effect}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> wasmtime::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        bail!("usage: engines COMPONENT.wasm...");
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

    for path in paths {
        println!("{path}: {} bytes", bytes_len(&path));
        let bytes = std::fs::read(&path).map_err(|e| format_err!("{path}: {e}"))?;
        let started = Instant::now();
        let component = Component::new(&engine, &bytes)?;
        println!("  compile: {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
        let pre = PluginPre::new(linker.instantiate_pre(&component)?)?;

        let mut times = Vec::new();
        for _ in 0..20 {
            let mut store = new_store(&engine);
            let started = Instant::now();
            pre.instantiate_async(&mut store).await?;
            times.push(started.elapsed());
        }
        println!(
            "  instantiate: {:.1} µs (median of 20)",
            median(times).as_secs_f64() * 1e6
        );

        let mut store = new_store(&engine);
        let instance = pre.instantiate_async(&mut store).await?;
        if let Err(e) = check(&instance, &mut store).await {
            println!("  check FAILED: {e:#}");
            continue;
        }
        println!(
            "  linear memory after the checks: {} KiB",
            store.data().memory.peak / 1024
        );

        // Warm calls: `ping` with an ack phrase, a reply, no assigns change.
        let handler = instance.roost_channel_handler();
        let ctx = context(&mut store, r#"{"room_id":"lobby","username":"ada"}"#)?;
        let payload = json(r#"{"ack_phrase":"hoorays..!"}"#);
        let mut rounds = Vec::new();
        for round in 0..6 {
            let calls = 2_000;
            let started = Instant::now();
            for _ in 0..calls {
                let out = handler
                    .call_handle_in(
                        &mut store,
                        Resource::new_borrow(ctx.rep()),
                        "ping",
                        &payload,
                    )
                    .await?;
                ensure!(out.reply.is_some(), "ping got no reply");
            }
            store.data_mut().effects.clear();
            if round > 0 {
                rounds.push(started.elapsed() / calls);
            }
        }
        println!(
            "  warm handle_in ping: {:.1} µs (median of 5 rounds of 2000)",
            median(rounds).as_secs_f64() * 1e6
        );
        println!(
            "  linear memory after the warm calls: {} KiB",
            store.data().memory.peak / 1024
        );
    }
    Ok(())
}
