//! Measures one warm guest call: `handle_in` of the ping plugin, in process,
//! through the same `Plugin` API the sockets use.
//!
//! `cargo run --release -p roost-tests --bin guest-call [-- CALLS]`

use std::time::Instant;

use roost_host::protocol::Payload;
use roost_host::runtime::{CallContext, Plugin, Runtime};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let calls: u32 = std::env::args().nth(1).map_or(Ok(200_000), |n| n.parse())?;
    let runtime = Runtime::new("roost@bench", None)?;
    let limits = roost_host::config::GuestLimits::default();
    let plugin = Plugin::load(&runtime, "bench", &roost_tests::plugin("ping"), limits).await?;
    let payload = Payload::json_raw(r#"{"ack_phrase":"hi"}"#);
    let ctx = CallContext {
        topic: "ping",
        socket_id: None,
        claims: "{}",
        assigns: "{}",
        presence: None,
        owner: None,
    };
    for _ in 0..1_000 {
        plugin.handle_in(ctx, "ping", &payload).await?;
    }
    let started = Instant::now();
    for _ in 0..calls {
        let called = plugin.handle_in(ctx, "ping", &payload).await?;
        assert!(called.value.reply.is_some());
    }
    let elapsed = started.elapsed();
    let per_call = elapsed / calls;
    println!("warm handle_in: {calls} calls in {elapsed:?}, {per_call:?} per call");
    println!(
        "{}",
        serde_json::json!({"scenario": "guest-call", "calls": calls, "ns_per_call": per_call.as_nanos()})
    );
    Ok(())
}
