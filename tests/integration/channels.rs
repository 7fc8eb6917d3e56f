//! The sample channels (ping, wildcard, room chat) behave exactly as
//! specified, including the seed transcript.

use roost_host::protocol::Payload;
use roost_tests::{Refs, TestServer};

#[tokio::test]
async fn seed_transcript_replays_exactly() {
    let server = TestServer::demo().await;
    replay_seed_transcript(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_ping_built_against_the_0_1_contract_replays_the_transcript_unchanged() {
    let config = roost_tests::demo_config().replace(
        &roost_tests::plugin("ping").display().to_string(),
        &roost_tests::plugin("ping_v01").display().to_string(),
    );
    let server = TestServer::with_config(&config).await;
    let slot = server
        .app("/socket")
        .state()
        .router()
        .route("ping")
        .cloned();
    assert_eq!(slot.map(|s| s.status().wit), Some("roost:channel@0.1.0"));
    replay_seed_transcript(&server).await;
    server.stop().await;
}

/// The tutorial's ping session, frame by frame.
async fn replay_seed_transcript(server: &TestServer) {
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","2","ping","ping",{}]"#,
        r#"["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","3","ping","ping",{"ack_phrase":"hoorays..!"}]"#,
        r#"["1","3","ping","phx_reply",{"response":{"ping":"hoorays..!"},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","4","wild:1:3","phx_join",{}]"#,
        r#"["1","4","wild:1:3","phx_reply",{"response":{},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["1","5","ping","ding",{}]"#,
        r#"["1","5","ping","phx_reply",{"response":{"msg":"shutting down"},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1","1","ping","phx_close",{}]"#).await;
    // The channel is gone: events on it are unmatched now.
    c.call(
        r#"["1","6","ping","ping",{}]"#,
        r#"[null,"6","ping","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
}

#[tokio::test]
async fn an_event_ping_does_not_handle_crashes_only_that_channel() {
    // As a Phoenix channel with no matching handle_in clause: phx_error
    // (ref = join_ref), then the topic is unmatched until the client rejoins.
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["2","2","wild:1:2","phx_join",{}]"#,
        r#"["2","2","wild:1:2","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["1","3","ping","no_such_event",{}]"#,
        r#"["1","1","ping","phx_error",{"reason":"channel_crash"}]"#,
    )
    .await;
    c.call(
        r#"["1","4","ping","ping",{}]"#,
        r#"[null,"4","ping","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    // The socket and its other channel are unaffected; a rejoin works.
    c.call(
        r#"["2","5","wild:1:2","ping",{}]"#,
        r#"["2","5","wild:1:2","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["6","6","ping","phx_join",{}]"#,
        r#"["6","6","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn ping_events() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    c.call(
        r#"["7","7","ping:x","phx_join",{}]"#,
        r#"["7","7","ping:x","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["7","8","ping:x","ping:hello there",{}]"#,
        r#"["7","8","ping:x","phx_reply",{"response":{"ping":"hello there"},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["7","9","ping:x","pong",{}]"#).await;
    c.expect_silence().await;
    c.call(
        r#"["7","10","ping:x","param_ping",{"error":true}]"#,
        r#"["7","10","ping:x","phx_reply",{"response":{"reason":"You asked for this!"},"status":"error"}]"#,
    )
    .await;
    c.call(
        r#"["7","11","ping:x","param_ping",{"error":false,"n":[1,2]}]"#,
        r#"["7","11","ping:x","phx_reply",{"response":{"error":false,"n":[1,2]},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn request_ping_is_intercepted_per_subscriber() {
    let server = TestServer::demo().await;
    let mut a = server.connect_v2().await;
    let mut b = server.connect_v2().await;
    a.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    b.call(
        r#"["5","5","ping","phx_join",{}]"#,
        r#"["5","5","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    let app = server.app("/socket");
    let reached = app.broadcast(
        "ping",
        "request_ping",
        &Payload::json_raw(r#"{"k":"v"}"#),
        None,
    );
    assert_eq!(reached, Ok(2));
    // handle_out pushes with each subscriber's own join_ref.
    a.expect(r#"["1",null,"ping","send_ping",{"from_node":"roost@test","k":"v"}]"#)
        .await;
    b.expect(r#"["5",null,"ping","send_ping",{"from_node":"roost@test","k":"v"}]"#)
        .await;
    // A broadcast the plugin does not intercept takes the fastlane.
    let _ = app.broadcast("ping", "other", &Payload::json_raw(r#"{"x":1}"#), None);
    a.expect(r#"[null,null,"ping","other",{"x":1}]"#).await;
    b.expect(r#"[null,null,"ping","other",{"x":1}]"#).await;
    server.stop().await;
}

#[tokio::test]
async fn wildcard_joins_only_when_b_is_twice_a() {
    let server = TestServer::demo().await;
    let mut c = server.connect_v2().await;
    for (i, (topic, ok)) in [
        ("wild:1:2", true),
        ("wild:20:40", true),
        ("wild:-3:-6", true),
        ("wild:1:3", false),
        ("wild:2:4:6", false),
        ("wild:x:y", false),
        ("wild:", false),
    ]
    .into_iter()
    .enumerate()
    {
        let status = if ok { "ok" } else { "error" };
        c.call(
            &format!(r#"["{i}","{i}","{topic}","phx_join",{{}}]"#),
            &format!(
                r#"["{i}","{i}","{topic}","phx_reply",{{"response":{{}},"status":"{status}"}}]"#
            ),
        )
        .await;
    }
    c.call(
        r#"["0","9","wild:1:2","ping",{}]"#,
        r#"["0","9","wild:1:2","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn room_chat_broadcasts_between_sockets_and_keeps_rooms_apart() {
    let server = TestServer::demo().await;
    let mut alice = server.connect_v2().await;
    let mut bob = server.connect_v2().await;
    let mut carol = server.connect_v2().await;
    let mut refs = Refs::default();
    // Each join is followed by the room's history, its presence (a named
    // joiner included), then a named joiner's presence_diff to the room.
    alice
        .call(
            r#"["1","1","room:lobby","phx_join",{"username":"alice"}]"#,
            r#"["1","1","room:lobby","phx_reply",{"response":{"channel":"room:lobby"},"status":"ok"}]"#,
        )
        .await;
    alice
        .expect(r#"["1",null,"room:lobby","history",{"messages":[]}]"#)
        .await;
    alice
        .expect_masked(
            &mut refs,
            r#"["1",null,"room:lobby","presence_state",{"alice":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
        )
        .await;
    alice
        .expect_masked(
            &mut refs,
            r#"[null,null,"room:lobby","presence_diff",{"joins":{"alice":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#,
        )
        .await;
    bob.call(
        r#"["2","2","room:lobby","phx_join",{}]"#,
        r#"["2","2","room:lobby","phx_reply",{"response":{"channel":"room:lobby"},"status":"ok"}]"#,
    )
    .await;
    // An anonymous reader sees who is in the room but is not listed itself.
    bob.expect(r#"["2",null,"room:lobby","history",{"messages":[]}]"#)
        .await;
    bob.expect_masked(
        &mut refs,
        r#"["2",null,"room:lobby","presence_state",{"alice":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
    )
    .await;
    carol
        .call(
            r#"["3","3","room:other","phx_join",{"username":"carol"}]"#,
            r#"["3","3","room:other","phx_reply",{"response":{"channel":"room:other"},"status":"ok"}]"#,
        )
        .await;
    carol
        .expect(r#"["3",null,"room:other","history",{"messages":[]}]"#)
        .await;
    carol
        .expect_masked(
            &mut refs,
            r#"["3",null,"room:other","presence_state",{"carol":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}]"#,
        )
        .await;
    carol
        .expect_masked(
            &mut refs,
            r#"[null,null,"room:other","presence_diff",{"joins":{"carol":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}]"#,
        )
        .await;

    // The broadcast reaches both lobby members (the sender first, then its
    // reply), and the username comes from alice's join payload (assigns).
    alice
        .send(r#"["1","4","room:lobby","message:add",{"message":"hi"}]"#)
        .await;
    let new_message = r#"[null,null,"room:lobby","room:lobby:new_message",{"content":"hi","user":{"username":"alice"}}]"#;
    alice.expect(new_message).await;
    alice
        .expect(r#"["1","4","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    bob.expect(new_message).await;

    bob.send(r#"["2","5","room:lobby","new_msg",{"body":"yo"}]"#)
        .await;
    let yo = r#"[null,null,"room:lobby","new_msg",{"body":"yo"}]"#;
    bob.expect(yo).await;
    bob.expect(r#"["2","5","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    alice.expect(yo).await;

    // Anonymous when neither token nor payload names the user.
    bob.send(r#"["2","6","room:lobby","message:add",{"message":"me"}]"#)
        .await;
    let anon = r#"[null,null,"room:lobby","room:lobby:new_message",{"content":"me","user":{"username":"anonymous"}}]"#;
    bob.expect(anon).await;
    alice.expect(anon).await;
    bob.recv_text().await; // bob's reply

    // The other room heard none of it.
    carol.expect_silence().await;
    server.stop().await;
}

#[tokio::test]
async fn leave_closes_the_channel_and_stops_delivery() {
    let server = TestServer::demo().await;
    let mut a = server.connect_v2().await;
    let mut b = server.connect_v2().await;
    let mut refs = Refs::default();
    a.call(
        r#"["1","1","room:1","phx_join",{"username":"dup"}]"#,
        r#"["1","1","room:1","phx_reply",{"response":{"channel":"room:1"},"status":"ok"}]"#,
    )
    .await;
    a.expect(r#"["1",null,"room:1","history",{"messages":[]}]"#)
        .await;
    a.expect_masked(
        &mut refs,
        r#"["1",null,"room:1","presence_state",{"dup":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
    )
    .await;
    let a_joined = r#"[null,null,"room:1","presence_diff",{"joins":{"dup":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#;
    a.expect_masked(&mut refs, a_joined).await;
    b.call(
        r#"["1","1","room:1","phx_join",{"username":"dup"}]"#,
        r#"["1","1","room:1","phx_reply",{"response":{"channel":"room:1"},"status":"ok"}]"#,
    )
    .await;
    // Two sockets of one user: one key, two metas.
    b.expect(r#"["1",null,"room:1","history",{"messages":[]}]"#)
        .await;
    b.expect_masked(
        &mut refs,
        r#"["1",null,"room:1","presence_state",{"dup":{"metas":[{"online_at":T,"phx_ref":"ref1"},{"online_at":T,"phx_ref":"ref2"}]}}]"#,
    )
    .await;
    let b_joined = r#"[null,null,"room:1","presence_diff",{"joins":{"dup":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}]"#;
    b.expect_masked(&mut refs, b_joined).await;
    a.expect_masked(&mut refs, b_joined).await;
    a.call(
        r#"["1","2","room:1","phx_leave",{}]"#,
        r#"["1","2","room:1","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    a.expect(r#"["1","1","room:1","phx_close",{}]"#).await;
    // The others see a's meta leave; a, already unsubscribed, does not.
    b.expect_masked(
        &mut refs,
        r#"[null,null,"room:1","presence_diff",{"joins":{},"leaves":{"dup":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}}]"#,
    )
    .await;
    b.send(r#"["1","2","room:1","new_msg",{"body":"x"}]"#).await;
    b.expect(r#"[null,null,"room:1","new_msg",{"body":"x"}]"#)
        .await;
    b.recv_text().await;
    a.expect_silence().await;
    a.call(
        r#"["1","3","room:1","new_msg",{"body":"x"}]"#,
        r#"[null,"3","room:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    server.stop().await;
}
