//! A faulty plugin, a hostile client or a slow reader hurts only itself:
//! each failure gets its documented outcome while a healthy channel on the
//! same socket, another socket and another app keep getting answers.

use std::time::{Duration, Instant};

use roost_tests::{Client, TestServer, plugin};

fn config(limits: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        max_connections = 6

        [apps.demo]
        mount = "/socket"
        capabilities = {{ kv = true }}
        [apps.demo.routes]
        "ping" = "{ping}"
        "fixture:*" = "{fixture}"
        "room:*" = "{room}"
        [apps.demo.limits]
        {limits}

        [apps.other]
        mount = "/other"
        [apps.other.routes]
        "ping" = "{ping}"
        "#,
        ping = plugin("ping").display(),
        fixture = plugin("fixture").display(),
        room = plugin("room_chat").display(),
    )
}

const PING: &str = r#"["p","p","ping","phx_join",{}]"#;

async fn with_ping(server: &TestServer, path: &str) -> Client {
    let mut c = server.connect(path).await;
    c.call(
        PING,
        r#"["p","p","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c
}

async fn assert_answers(c: &mut Client) {
    c.call(
        r#"["p","x","ping","ping",{}]"#,
        r#"["p","x","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
}

#[tokio::test]
async fn each_guest_failure_ends_only_its_channel() {
    let server = TestServer::with_config(&config(
        "call_deadline_ms = 300\njoin_deadline_ms = 300\nguest_memory_bytes = 16777216\nmax_frame_bytes = 65536",
    ))
    .await;
    let mut victim = with_ping(&server, "/socket/websocket?vsn=2.0.0").await;
    let mut neighbour = with_ping(&server, "/socket/websocket?vsn=2.0.0").await;
    let mut other_app = with_ping(&server, "/other/websocket?vsn=2.0.0").await;

    for (i, (event, payload)) in [
        ("boom", "{}"),                       // a panic: the guest traps
        ("trap", "{}"),                       // a bare `unreachable` trap
        ("forever", "{}"),                    // a loop: stopped at the deadline
        ("alloc", "{}"),                      // unbounded allocation: the memory cap
        ("big_reply", r#"{"bytes":100000}"#), // a reply over max_frame_bytes
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("fixture:{i}");
        victim
            .call(
                &format!(r#"["{i}","{i}","{topic}","phx_join",{{}}]"#),
                &format!(
                    r#"["{i}","{i}","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#
                ),
            )
            .await;
        victim
            .send(&format!(r#"["{i}","e{i}","{topic}","{event}",{payload}]"#))
            .await;
        victim
            .expect(&format!(
                r#"["{i}","{i}","{topic}","phx_error",{{"reason":"channel_crash"}}]"#
            ))
            .await;
        assert_answers(&mut victim).await;
        assert_answers(&mut neighbour).await;
        assert_answers(&mut other_app).await;
    }
    // A join that runs past its deadline crashes the join only.
    victim
        .call(
            r#"["j","j","fixture:slow","phx_join",{"spin_ms":2000}]"#,
            r#"["j","j","fixture:slow","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]"#,
        )
        .await;
    assert_answers(&mut victim).await;

    let slot = server
        .app("/socket")
        .state()
        .router()
        .route("fixture:x")
        .cloned()
        .expect("route");
    let failures = slot.status().call_failures;
    let count = |kind| failures.get(kind).copied().unwrap_or(0);
    assert_eq!(
        (
            count("trap"),
            count("deadline"),
            count("memory"),
            count("bad_output")
        ),
        (2, 2, 1, 1),
        "{failures:?}"
    );
    server.stop().await;
}

// Two workers, as `roost serve` runs on this 2-core machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_does_not_stall_other_sockets() {
    let server = TestServer::with_config(&config("call_deadline_ms = 1500")).await;
    let mut spinner = server.connect("/socket/websocket?vsn=2.0.0").await;
    spinner
        .call(
            r#"["1","1","fixture:spin","phx_join",{}]"#,
            r#"["1","1","fixture:spin","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    let mut other = with_ping(&server, "/socket/websocket?vsn=2.0.0").await;
    spinner
        .send(r#"["1","2","fixture:spin","forever",{}]"#)
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert_answers(&mut other).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "replies while a guest spins: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    spinner
        .expect(r#"["1","1","fixture:spin","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    server.stop().await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_memory_stays_bounded() {
    let server = TestServer::with_config(&config("outbox_bytes = 262144")).await;
    let app = server.app("/socket");
    let mut slow = server.connect("/socket/websocket?vsn=2.0.0").await;
    slow.call(
        r#"["1","1","room:flood","phx_join",{}]"#,
        r#"["1","1","room:flood","phx_reply",{"response":{"channel":"room:flood"},"status":"ok"}]"#,
    )
    .await;
    let mut healthy = with_ping(&server, "/socket/websocket?vsn=2.0.0").await;
    let before = rss_bytes();
    // 64 MiB of broadcasts to a client that reads none of them.
    let chunk = format!(r#"{{"body":"{}"}}"#, "x".repeat(64 * 1024));
    let payload = roost_host::protocol::Payload::from_json_text(chunk).expect("json");
    for _ in 0..1024 {
        let _ = app.broadcast("room:flood", "new_msg", &payload, None);
        if app.socket_count() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    while app.socket_count() > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slow consumer was not disconnected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "server memory grew by {} KiB while flooding a slow reader",
        grown / 1024
    );
    assert!(grown < 48 << 20, "memory grew by {grown} bytes");
    // When it finally reads, its stream ends with the slow-consumer close
    // (or a reset, if the close frame could not be written).
    if let Some(close) = slow.expect_close().await {
        assert_eq!(u16::from(close.code), 1008);
    }
    assert_answers(&mut healthy).await;
    server.stop().await;
}

#[tokio::test]
async fn limits_refuse_clearly() {
    let server =
        TestServer::with_config(&config("max_topic_bytes = 32\nmax_event_bytes = 16")).await;
    let mut c = with_ping(&server, "/socket/websocket?vsn=2.0.0").await;
    let long_topic = format!("room:{}", "t".repeat(40));
    c.call(
        &format!(r#"["1","1","{long_topic}","phx_join",{{}}]"#),
        &format!(r#"["1","1","{long_topic}","phx_reply",{{"response":{{"reason":"topic too long"}},"status":"error"}}]"#),
    )
    .await;
    let long_event = "e".repeat(17);
    c.call(
        &format!(r#"["p","2","ping","{long_event}",{{}}]"#),
        r#"["p","2","ping","phx_reply",{"response":{"reason":"event too long"},"status":"error"}]"#,
    )
    .await;
    assert_answers(&mut c).await;

    // The server-wide connection limit (6): the seventh is refused with 503.
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(server.connect("/other/websocket?vsn=2.0.0").await);
    }
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}
