//! Channel timers (`send-after`, `cancel-timer`, `handle_info`), exact
//! frames over WebSocket (the long-poll case is in `longpoll.rs`): the ping
//! plugin's `ping_after`/`cancel_pings`, and the fixture's timer events for
//! the rules — a zero delay runs after the callback's effects, timers go
//! with their channel, survive a hot swap, are bounded, and a failing
//! `handle_info` crashes the channel like any callback.

use std::time::Duration;

use roost_tests::{Client, TestServer};

async fn joined(server: &TestServer, topic: &str) -> Client {
    let mut c = server.connect_v2().await;
    c.call(
        &format!(r#"["1","1","{topic}","phx_join",{{}}]"#),
        &format!(r#"["1","1","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
    )
    .await;
    c
}

#[tokio::test]
async fn ping_after_replies_at_once_and_pushes_later() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    let started = std::time::Instant::now();
    c.call(
        r#"["1","2","ping","ping_after",{"delay_ms":150}]"#,
        r#"["1","2","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1",null,"ping","pong_later",{"delay_ms":150}]"#)
        .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    // The socket serves as before, and nothing else comes.
    c.call(
        r#"["1","3","ping","ping",{}]"#,
        r#"["1","3","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    c.expect_silence().await;
    server.stop().await;
}

#[tokio::test]
async fn cancel_pings_cancels_every_pending_one() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    for (r, delay) in [("2", 300), ("3", 400)] {
        c.call(
            &format!(r#"["1","{r}","ping","ping_after",{{"delay_ms":{delay}}}]"#),
            &format!(r#"["1","{r}","ping","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
        )
        .await;
    }
    c.call(
        r#"["1","4","ping","cancel_pings",{}]"#,
        r#"["1","4","ping","phx_reply",{"response":{"cancelled":2},"status":"ok"}]"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.expect_silence().await;
    c.call(
        r#"["1","5","ping","cancel_pings",{}]"#,
        r#"["1","5","ping","phx_reply",{"response":{"cancelled":0},"status":"ok"}]"#,
    )
    .await;
    assert_eq!(server.app("/socket").timers().pending(), 0);
    server.stop().await;
}

#[tokio::test]
async fn leaving_cancels_the_channels_timers() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    c.call(
        r#"["1","2","ping","ping_after",{"delay_ms":200}]"#,
        r#"["1","2","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","3","ping","phx_leave",{}]"#,
        r#"["1","3","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1","1","ping","phx_close",{}]"#).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    c.expect_silence().await;
    assert_eq!(server.app("/socket").timers().pending(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_zero_delay_runs_after_the_callbacks_effects_and_reply() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "fixture:defer").await;
    c.send(r#"["1","2","fixture:defer","defer",{}]"#).await;
    c.expect(r#"["1",null,"fixture:defer","immediate",{}]"#)
        .await;
    c.expect(
        r#"["1","2","fixture:defer","phx_reply",{"response":{"deferred":true},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1",null,"fixture:defer","deferred",{"assigns":{}}]"#)
        .await;
    server.stop().await;
}

#[tokio::test]
async fn handle_info_sees_the_current_assigns_and_can_change_them() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","fixture:a","phx_join",{"value":"first"}]"#,
        r#"["1","1","fixture:a","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["1","2","fixture:a","after",{"delay_ms":100,"message":{"push":"seen"}}]"#)
        .await;
    let reply = c.recv_text().await;
    assert!(
        reply.starts_with(r#"["1","2","fixture:a","phx_reply",{"response":{"timer":"#),
        "{reply}"
    );
    // Assigns changed after the timer was set: it sees the new ones.
    c.call(
        r#"["1","3","fixture:a","set",{"value":"second"}]"#,
        r#"["1","3","fixture:a","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1",null,"fixture:a","seen",{"assigns":{"value":"second"}}]"#)
        .await;
    c.send(r#"["1","4","fixture:a","after",{"delay_ms":0,"message":{"set":"from the timer"}}]"#)
        .await;
    c.recv_text().await; // its reply
    c.call(
        r#"["1","5","fixture:a","get",{}]"#,
        r#"["1","5","fixture:a","phx_reply",{"response":{"value":"from the timer"},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_crash_or_stop_in_handle_info_ends_the_channel() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "fixture:boom").await;
    c.send(r#"["1","2","fixture:boom","after",{"delay_ms":0,"message":"boom"}]"#)
        .await;
    c.recv_text().await; // its reply
    c.expect(r#"["1","1","fixture:boom","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    c.call(
        r#"["2","3","fixture:stop","phx_join",{}]"#,
        r#"["2","3","fixture:stop","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["2","4","fixture:stop","after",{"delay_ms":0,"message":"stop"}]"#)
        .await;
    c.recv_text().await; // its reply
    c.expect(r#"["2",null,"fixture:stop","you_left",{"reason":"normal"}]"#)
        .await;
    c.expect(r#"["2","2","fixture:stop","phx_close",{}]"#).await;
    server.stop().await;
}

#[tokio::test]
async fn timers_are_bounded_per_channel_and_a_huge_message_is_a_guest_failure() {
    let server = TestServer::demo_with("timers_per_channel = 2\nmax_frame_bytes = 1000").await;
    let mut c = joined(&server, "fixture:many").await;
    for r in ["2", "3"] {
        c.send(&format!(
            r#"["1","{r}","fixture:many","after",{{"delay_ms":60000,"message":"later"}}]"#
        ))
        .await;
        assert!(c.recv_text().await.contains(r#""status":"ok""#));
    }
    c.call(
        r#"["1","4","fixture:many","after",{"delay_ms":60000,"message":"later"}]"#,
        r#"["1","4","fixture:many","phx_reply",{"response":{"reason":"the channel has 2 pending timers, its limit (limits.timers_per_channel)"},"status":"error"}]"#,
    )
    .await;
    assert_eq!(server.app("/socket").timers().pending(), 2);
    // A message over the frame limit fails the call: the channel errors.
    c.call(
        r#"["1","5","fixture:many","big_timer",{"bytes":2000}]"#,
        r#"["1","1","fixture:many","phx_error",{"reason":"channel_crash"}]"#,
    )
    .await;
    // Its timers went with it.
    assert_eq!(server.app("/socket").timers().pending(), 0);
    server.stop().await;
}

#[tokio::test]
async fn closing_the_socket_drops_its_timers() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    c.call(
        r#"["1","2","ping","ping_after",{"delay_ms":60000}]"#,
        r#"["1","2","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    assert_eq!(server.app("/socket").timers().pending(), 1);
    drop(c);
    let app = server.app("/socket");
    let deadline = std::time::Instant::now() + roost_tests::WAIT;
    while app.timers().pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "timer still pending");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}
