//! What an attacker found, each fixed at its cause: a message too large to
//! deliver is refused where it is made (API 413, a guest failure) instead of
//! disconnecting its whole room; a refusal never echoes more than the limits
//! back; slow, silent and stalled connections are reaped; a client closed
//! for a too-large frame gets its close code.

use roost_tests::{Client, TestServer};
use serde_json::{Value, json};

async fn post(server: &TestServer, path: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header("authorization", "Bearer demo-api-key-0123456789")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let body = serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or_default();
    (status, body)
}

fn config(limits: &str) -> String {
    roost_tests::demo_config_with(limits).replace(
        "[apps.demo]\n        mount = \"/socket\"",
        "[apps.demo]\n        mount = \"/socket\"\n        api_keys = [\"value:demo-api-key-0123456789\"]",
    )
}

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
async fn an_api_broadcast_too_large_to_deliver_is_refused_with_413_and_the_room_stays() {
    let server = TestServer::with_config(&config("max_frame_bytes = 2000")).await;
    let mut member = joined(&server, "fixture:room").await;
    let big = json!({"topic": "fixture:room", "event": "e", "payload": {"data": "x".repeat(3000)}});
    let (status, body) = post(&server, "/api/apps/demo/broadcast", big.to_string()).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("max_frame_bytes"),
        "{body}"
    );
    // Nobody was disconnected; a fitting broadcast still arrives.
    let small = json!({"topic": "fixture:room", "event": "e", "payload": {"n": 1}});
    let (status, body) = post(&server, "/api/apps/demo/broadcast", small.to_string()).await;
    assert_eq!((status, &body), (200, &json!({"subscribers": 1})));
    member
        .expect(r#"[null,null,"fixture:room","e",{"n":1}]"#)
        .await;
    // A body past the HTTP body limit answers 413 too, not 400.
    let huge = format!(
        r#"{{"topic":"t","event":"e","payload":{{"d":"{}"}}}}"#,
        "x".repeat(3 << 20)
    );
    let (status, _) = post(&server, "/api/apps/demo/broadcast", huge).await;
    assert_eq!(status, 413);
    server.stop().await;
}

#[tokio::test]
async fn a_plugin_broadcast_too_large_is_a_guest_failure_not_a_room_wide_disconnect() {
    let server = TestServer::with_config(&config("max_frame_bytes = 2000")).await;
    let mut other = joined(&server, "fixture:loud").await;
    let mut loud = joined(&server, "fixture:loud").await;
    loud.call(
        r#"["1","2","fixture:loud","big_broadcast",{"bytes":3000}]"#,
        r#"["1","1","fixture:loud","phx_error",{"reason":"channel_crash"}]"#,
    )
    .await;
    // The other member heard nothing and is still joined.
    other.expect_silence().await;
    other
        .call(
            r#"["1","2","fixture:loud","echo",{"still":"here"}]"#,
            r#"["1","2","fixture:loud","phx_reply",{"response":{"still":"here"},"status":"ok"}]"#,
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn a_topic_too_long_gets_its_reply_and_the_echo_fits() {
    let server = TestServer::with_config(&config("max_frame_bytes = 2097152")).await;
    let mut c = server.connect_v2().await;
    let topic = "t".repeat(1 << 20);
    c.send(&format!(r#"["1","1","{topic}","phx_join",{{}}]"#))
        .await;
    let reply: Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
    assert_eq!(
        reply[4],
        json!({"response": {"reason": "topic too long"}, "status": "error"})
    );
    assert_eq!(
        reply[2].as_str().map(str::len),
        Some(1024),
        "echoed up to the limit only"
    );
    let long_ref = "1".repeat(1000);
    c.send(&format!(r#"["1","{long_ref}","ping","phx_join",{{}}]"#))
        .await;
    let reply: Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
    assert_eq!(reply[4]["response"], json!({"reason": "ref too long"}));
    // The socket is fine.
    c.call(
        r#"[null,"2","phoenix","heartbeat",{}]"#,
        r#"[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    server.stop().await;
}
