//! Socket-level rules of the Phoenix protocol (`phoenix-protocol.md` §3, §4,
//! §9), over WebSocket, V2 unless a test says V1.

use roost_tests::{Client, TestServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

async fn joined(server: &TestServer, topic: &str) -> Client {
    let mut c = server.connect_v2().await;
    c.send(&format!(r#"["1","1","{topic}","phx_join",{{}}]"#))
        .await;
    let reply = c.recv_text().await;
    assert!(reply.contains(r#""status":"ok""#), "{reply}");
    c
}

fn status_of(error: WsError) -> u16 {
    match error {
        WsError::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn heartbeat_is_answered_with_a_null_join_ref() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    // Any join_ref, even on a socket with a channel joined on "phoenix".
    c.call(
        r#"["9","2","phoenix","heartbeat",{}]"#,
        r#"[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn join_of_an_unrouted_topic_is_unmatched_with_a_null_join_ref() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["11","1","nowhere","phx_join",{}]"#,
        r#"[null,"1","nowhere","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["11","2","nowhere","event",{}]"#,
        r#"[null,"2","nowhere","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_101st_join_is_refused_by_the_default_channel_limit() {
    // Joins as fast as they are answered: past the join rate's burst.
    let server = TestServer::demo_with("joins_per_second = 1000").await;
    let mut c = server.connect_v2().await;
    for i in 1..=100 {
        c.call(
            &format!(r#"["{i}","{i}","ping:{i}","phx_join",{{}}]"#),
            &format!(r#"["{i}","{i}","ping:{i}","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
        )
        .await;
    }
    c.call(
        r#"["101","101","ping:101","phx_join",{}]"#,
        r#"["101","101","ping:101","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_channel_limit_is_configurable() {
    let server = TestServer::demo_with("channels_per_socket = 1").await;
    let mut c = joined(&server, "ping").await;
    c.call(
        r#"["2","2","ping:x","phx_join",{}]"#,
        r#"["2","2","ping:x","phx_reply",{"response":{"reason":"too many channels joined"},"status":"error"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn duplicate_join_answers_the_new_join_then_closes_the_old_channel() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","fixture:d","phx_join",{}]"#,
        r#"["1","1","fixture:d","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["2","2","fixture:d","phx_join",{}]"#).await;
    c.expect(r#"["2","2","fixture:d","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    // The old channel's terminate push, then its phx_close, with the old join_ref.
    c.expect(r#"["1",null,"fixture:d","you_left",{"reason":"duplicate_join"}]"#)
        .await;
    c.expect(r#"["1","1","fixture:d","phx_close",{}]"#).await;
    // The new channel serves.
    c.call(
        r#"["2","3","fixture:d","get",{}]"#,
        r#"["2","3","fixture:d","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn stale_join_refs_are_dropped_and_null_join_refs_accepted() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    c.send(r#"["0","2","ping","ping",{}]"#).await;
    c.send(r#"["0","3","ping","phx_leave",{}]"#).await;
    c.expect_silence().await;
    c.call(
        r#"[null,"4","ping","ping",{}]"#,
        r#"["1","4","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"[null,"5","ping","phx_leave",{}]"#,
        r#"["1","5","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1","1","ping","phx_close",{}]"#).await;
    server.stop().await;
}

#[tokio::test]
async fn leave_of_an_unjoined_topic_is_answered_ok_with_its_join_ref() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["7","1","room:nope","phx_leave",{}]"#,
        r#"["7","1","room:nope","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn leave_runs_terminate_between_the_reply_and_phx_close() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "fixture:l").await;
    c.send(r#"["1","2","fixture:l","phx_leave",{}]"#).await;
    c.expect(r#"["1","2","fixture:l","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    c.expect(r#"["1",null,"fixture:l","you_left",{"reason":"leave"}]"#)
        .await;
    c.expect(r#"["1","1","fixture:l","phx_close",{}]"#).await;
    server.stop().await;
}

#[tokio::test]
async fn join_refusal_crash_and_pushes_after_the_reply() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","fixture:a","phx_join",{"refuse":true}]"#,
        r#"["1","1","fixture:a","phx_reply",{"response":{"reason":"refused"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["2","2","fixture:a","phx_join",{"crash":true}]"#,
        r#"["2","2","fixture:a","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]"#,
    )
    .await;
    // A push made during join follows the join reply.
    c.call(
        r#"["3","3","fixture:a","phx_join",{"welcome":true,"value":42}]"#,
        r#"["3","3","fixture:a","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["3",null,"fixture:a","welcome",{}]"#).await;
    // Assigns set in join are kept by the host and passed to later calls.
    c.call(
        r#"["3","4","fixture:a","get",{}]"#,
        r#"["3","4","fixture:a","phx_reply",{"response":{"value":42},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_guest_crash_errors_only_its_channel() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","fixture:c","phx_join",{}]"#,
        r#"["1","1","fixture:c","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["2","2","ping","phx_join",{}]"#,
        r#"["2","2","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","3","fixture:c","boom",{}]"#,
        r#"["1","1","fixture:c","phx_error",{"reason":"channel_crash"}]"#,
    )
    .await;
    // The topic is unjoined now; the socket's other channel carries on.
    c.call(
        r#"["1","4","fixture:c","get",{}]"#,
        r#"[null,"4","fixture:c","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["2","5","ping","ping",{}]"#,
        r#"["2","5","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn stop_reasons_close_or_error_the_channel() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    for (i, reason, event) in [
        (1, "normal", "phx_close"),
        (2, "shutdown", "phx_close"),
        (3, "shutdown:left", "phx_close"),
        (4, "bad_thing", "phx_error"),
    ] {
        let topic = format!("fixture:s{i}");
        c.call(
            &format!(r#"["{i}","{i}","{topic}","phx_join",{{}}]"#),
            &format!(r#"["{i}","{i}","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
        )
        .await;
        c.send(&format!(
            r#"["{i}","r{i}","{topic}","stop",{{"reason":"{reason}"}}]"#
        ))
        .await;
        c.expect(&format!(
            r#"["{i}","r{i}","{topic}","phx_reply",{{"response":{{}},"status":"ok"}}]"#
        ))
        .await;
        c.expect(&format!(
            r#"["{i}",null,"{topic}","you_left",{{"reason":"{reason}"}}]"#
        ))
        .await;
        let payload = if event == "phx_error" {
            r#"{"reason":"channel_crash"}"#
        } else {
            "{}"
        };
        c.expect(&format!(r#"["{i}","{i}","{topic}","{event}",{payload}]"#))
            .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn v1_uses_objects_without_join_ref() {
    let server = TestServer::demo().await;
    for path in ["/socket/websocket?vsn=1.0.0", "/socket/websocket"] {
        let mut c = server.connect(path).await;
        c.call(
            r#"{"topic":"ping","event":"phx_join","payload":{},"ref":"1"}"#,
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"ping"}"#,
        )
        .await;
        c.call(
            r#"{"topic":"ping","event":"ping","payload":{"ack_phrase":"v1"},"ref":"2"}"#,
            r#"{"event":"phx_reply","payload":{"response":{"ping":"v1"},"status":"ok"},"ref":"2","topic":"ping"}"#,
        )
        .await;
        c.call(
            r#"{"topic":"nowhere","event":"phx_join","payload":{},"ref":"3"}"#,
            r#"{"event":"phx_reply","payload":{"response":{"reason":"unmatched topic"},"status":"error"},"ref":"3","topic":"nowhere"}"#,
        )
        .await;
        // The channel's join_ref is the join's ref: phx_close carries it.
        c.send(r#"{"topic":"ping","event":"ding","payload":{},"ref":"4"}"#)
            .await;
        c.expect(r#"{"event":"phx_reply","payload":{"response":{"msg":"shutting down"},"status":"ok"},"ref":"4","topic":"ping"}"#)
            .await;
        c.expect(r#"{"event":"phx_close","payload":{},"ref":"1","topic":"ping"}"#)
            .await;
        c.call(
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"5"}"#,
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"5","topic":"phoenix"}"#,
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn v2_binary_push_gets_binary_reply_and_push() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["11","1","fixture:b","phx_join",{}]"#,
        r#"["11","1","fixture:b","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    // kind 0, join_ref "11", ref "2", topic "fixture:b", event "binary_event", payload 1 2
    let mut frame = vec![0, 2, 1, 9, 12];
    frame.extend_from_slice(b"112fixture:bbinary_event");
    frame.extend_from_slice(&[1, 2]);
    c.send_binary(&frame).await;
    let mut push = vec![0, 2, 9, 12];
    push.extend_from_slice(b"11fixture:bbinary_event");
    push.extend_from_slice(&[0, 1]);
    assert_eq!(c.recv().await, Message::binary(push));
    let mut reply = vec![1, 2, 1, 9, 2];
    reply.extend_from_slice(b"112fixture:bok");
    reply.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(c.recv().await, Message::binary(reply));
    server.stop().await;
}

#[tokio::test]
async fn unknown_vsn_is_refused() {
    let server = TestServer::demo().await;
    let url = format!("ws://{}/socket/websocket?vsn=123.1.1", server.addr);
    let error = tokio_tungstenite::connect_async(url)
        .await
        .expect_err("refused");
    assert_eq!(status_of(error), 403);
    server.stop().await;
}

#[tokio::test]
async fn auth_token_subprotocol_is_accepted_and_phoenix_echoed() {
    let server = TestServer::demo().await;
    let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
    let mut request = url.as_str().into_client_request().expect("request");
    // btoa("secret-token") without padding, as the official client sends it.
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "phoenix, base64url.bearer.phx.c2VjcmV0LXRva2Vu"
            .parse()
            .expect("header"),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");

    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
    let error = tokio_tungstenite::connect_async(request)
        .await
        .expect_err("refused");
    assert_eq!(status_of(error), 403);
    server.stop().await;
}

#[tokio::test]
async fn idle_sockets_are_closed_with_a_code_that_reconnects() {
    let server = TestServer::demo_with("idle_timeout_ms = 200").await;
    let mut c = server.connect_v2().await;
    let close = c.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    server.stop().await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_socket() {
    let server = TestServer::demo_with("max_frame_bytes = 1000").await;
    let mut healthy = joined(&server, "ping").await;
    let invalid_utf8 = Message::Frame(Frame::message(
        vec![0xff, 0xfe],
        OpCode::Data(Data::Text),
        true,
    ));
    let cases: Vec<(&str, Message, u16)> = vec![
        ("invalid JSON", Message::text("[not json"), 1007),
        ("short array", Message::text(r#"[null,"1","t","e"]"#), 1007),
        ("wrong types", Message::text(r#"[1,"1","t","e",{}]"#), 1007),
        (
            "bad binary header",
            Message::binary(vec![1, 0, 0, 0, 0]),
            1007,
        ),
        ("truncated binary", Message::binary(vec![0, 5, 5]), 1007),
        (
            "oversized frame",
            Message::text(format!(r#"[null,"1","t","e","{}"]"#, "x".repeat(2000))),
            1009,
        ),
        ("invalid UTF-8", invalid_utf8, 1007),
    ];
    for (what, message, code) in cases {
        let mut bad = joined(&server, "ping").await;
        bad.send_message(message).await;
        let close = bad
            .expect_close()
            .await
            .unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(u16::from(close.code), code, "{what}");
        healthy
            .call(
                r#"["1","2","ping","ping",{}]"#,
                r#"["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
            )
            .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    let stopping = tokio::spawn(server.stop());
    let close = c.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    stopping.await.expect("shutdown completes");
}

#[tokio::test]
async fn idle_means_nothing_inbound_even_while_broadcasts_flow_out() {
    let server = TestServer::demo_with("idle_timeout_ms = 300").await;
    let mut c = joined(&server, "room:idle").await;
    let app = server.app("/socket");
    let payload = roost_host::protocol::Payload::empty();
    let started = std::time::Instant::now();
    let close = loop {
        let _ = app.broadcast("room:idle", "tick", &payload, None);
        match tokio::time::timeout(std::time::Duration::from_millis(100), c.next_message()).await {
            Ok(Some(Message::Close(frame))) => break frame,
            Ok(None) => panic!("closed without a close frame"),
            _ => assert!(started.elapsed() < roost_tests::WAIT, "never timed out"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4000));
    server.stop().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    // RFC 6455 §5.5.1: the server answers a Close with a Close, so the
    // client sees its own code back rather than an abnormal 1006.
    let server = TestServer::demo().await;
    let mut c = joined(&server, "ping").await;
    c.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    let answer = c.expect_close().await.expect("the server's close frame");
    assert_eq!(answer.code, CloseCode::Normal);
    server.stop().await;
}

#[tokio::test]
async fn get_root_says_where_the_sockets_are() {
    let server = TestServer::demo().await;
    let response = reqwest::get(server.url("/")).await.expect("GET /");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("a body");
    assert!(text.contains("/socket/websocket"), "{text}");
    assert!(text.contains("/socket/longpoll"), "{text}");
    let missing = reqwest::get(server.url("/nowhere")).await.expect("GET");
    assert_eq!(missing.status(), 404);
    server.stop().await;
}
