//! A cluster on a real Redis (a `redis-server` of the test's own, see
//! [`Redis`]): two in-process nodes share it and serve one app, clients
//! on different nodes. Exact frames where the wire is known; presence refs
//! masked by [`Refs`]. The multi-process cases (kill -9 of a node, three
//! nodes, the official client) are in tests/js/test/cluster.test.js.

use std::time::Duration;

use roost_tests::{Client, Redis, Refs, TestServer, WAIT, plugin};
use serde_json::{Value, json};

const API_KEY: &str = "cluster-test-api-key-0123456789";
const SECRET: &str = "cluster-test-token-secret-0123456789";

fn node_config(name: &str, redis: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        node = "roost@{name}"
        watch = false

        [cluster]
        redis = "{redis}"
        node_timeout_ms = 2000

        [apps.demo]
        mount = "/socket"
        secrets = ["value:{SECRET}"]
        anonymous = true
        api_keys = ["value:{API_KEY}"]
        [apps.demo.capabilities]
        kv = true
        [apps.demo.routes]
        "ping" = "{ping}"
        "room:*" = "{room}"
        "#,
        ping = plugin("ping").display(),
        room = plugin("room_chat").display(),
    )
}

/// Redis and two nodes, `a` and `b`; `None` without redis-server.
async fn cluster() -> Option<(Redis, TestServer, TestServer)> {
    let redis = Redis::start().await?;
    let a = TestServer::with_config(&node_config("a", &redis.url())).await;
    let b = TestServer::with_config(&node_config("b", &redis.url())).await;
    Some((redis, a, b))
}

async fn api(server: &TestServer, call: &str, body: Option<Value>) -> Value {
    let url = server.url(&format!("/api/apps/demo/{call}"));
    let client = reqwest::Client::new();
    let request = match body {
        Some(body) => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => client.get(url),
    };
    let response = request
        .header("authorization", format!("Bearer {API_KEY}"))
        .send()
        .await
        .expect("api call");
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json")
}

/// Waits until `check` holds for `server`'s status, or fails naming `what`.
async fn status_until(server: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    loop {
        let status = api(server, "status", None).await;
        if check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: status is {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nodes(status: &Value) -> Vec<String> {
    status["cluster"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Joins `topic` on the room chat as an anonymous reader (no presence);
/// returns the room's history.
async fn join_reader(c: &mut Client, topic: &str) -> Value {
    c.call(
        &format!(r#"["1","1","{topic}","phx_join",{{}}]"#),
        &format!(r#"["1","1","{topic}","phx_reply",{{"response":{{"channel":"{topic}"}},"status":"ok"}}]"#),
    )
    .await;
    let history: Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
    assert_eq!(history[3], "history", "{history}");
    // Then the room's state.
    let state = c.recv_text().await;
    assert!(state.contains("presence_state"), "{state}");
    history[4]["messages"].clone()
}

#[tokio::test]
async fn broadcasts_reach_every_node_once_and_in_order() {
    let Some((_redis, a, b)) = cluster().await else {
        return;
    };
    let mut on_a = a.connect_v2().await;
    let mut on_b = b.connect_v2().await;
    join_reader(&mut on_a, "room:order").await;
    join_reader(&mut on_b, "room:order").await;
    for i in 0..20 {
        on_a.send(&format!(
            r#"["1","{}","room:order","new_msg",{{"body":"{i}"}}]"#,
            i + 2
        ))
        .await;
    }
    for i in 0..20 {
        on_b.expect(&format!(
            r#"[null,null,"room:order","new_msg",{{"body":"{i}"}}]"#
        ))
        .await;
    }
    on_b.expect_silence().await;
    // The API on b broadcasts to a's subscribers too (and b's).
    let reached = api(
        &b,
        "broadcast",
        Some(json!({"topic": "room:order", "event": "new_msg", "payload": {"body": "api"}})),
    )
    .await;
    assert_eq!(reached["subscribers"], 1, "b's own subscriber: {reached}");
    on_b.expect(r#"[null,null,"room:order","new_msg",{"body":"api"}]"#)
        .await;
    loop {
        let frame = on_a.recv_text().await;
        if frame.contains(r#""body":"api""#) {
            assert_eq!(
                frame,
                r#"[null,null,"room:order","new_msg",{"body":"api"}]"#
            );
            break;
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_room_has_one_history_whichever_node_its_users_are_on() {
    let Some((_redis, a, b)) = cluster().await else {
        return;
    };
    let mut on_a = a.connect_v2().await;
    assert_eq!(join_reader(&mut on_a, "room:h").await, json!([]));
    for (i, body) in ["one", "two"].iter().enumerate() {
        on_a.send(&format!(
            r#"["1","{}","room:h","new_msg",{{"body":"{body}"}}]"#,
            i + 2
        ))
        .await;
        on_a.recv_text().await; // the broadcast to ourselves
        on_a.expect(&format!(
            r#"["1","{}","room:h","phx_reply",{{"response":{{}},"status":"ok"}}]"#,
            i + 2
        ))
        .await;
    }
    // Stored on a's side, read on b's.
    let mut on_b = b.connect_v2().await;
    let history = join_reader(&mut on_b, "room:h").await;
    let bodies: Vec<_> = history
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["id"].clone(), m["body"].clone()))
        .collect();
    assert_eq!(bodies, [(json!(1), json!("one")), (json!(2), json!("two"))]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn intercepted_events_run_handle_out_on_the_subscribers_node() {
    let Some((_redis, a, b)) = cluster().await else {
        return;
    };
    let mut on_b = b.connect_v2().await;
    on_b.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    api(
        &a,
        "broadcast",
        Some(json!({"topic": "ping", "event": "request_ping", "payload": {"n": 1}})),
    )
    .await;
    // The ping plugin's handle_out ran on b: it says so.
    on_b.expect(r#"["1",null,"ping","send_ping",{"from_node":"roost@b","n":1}]"#)
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn presence_lists_users_of_every_node_and_their_leaves() {
    let Some((_redis, a, b)) = cluster().await else {
        return;
    };
    let mut refs = Refs::default();
    let mut ada = a.connect_v2().await;
    ada.call(
        r#"["1","1","room:p","phx_join",{"username":"ada"}]"#,
        r#"["1","1","room:p","phx_reply",{"response":{"channel":"room:p"},"status":"ok"}]"#,
    )
    .await;
    ada.expect(r#"["1",null,"room:p","history",{"messages":[]}]"#)
        .await;
    ada.expect_masked(
        &mut refs,
        r#"["1",null,"room:p","presence_state",{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
    )
    .await;
    ada.expect_masked(
        &mut refs,
        r#"[null,null,"room:p","presence_diff",{"joins":{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#,
    )
    .await;
    // bob joins on b: his state lists ada (from a), and a hears his join.
    let mut bob = b.connect_v2().await;
    bob.call(
        r#"["1","1","room:p","phx_join",{"username":"bob"}]"#,
        r#"["1","1","room:p","phx_reply",{"response":{"channel":"room:p"},"status":"ok"}]"#,
    )
    .await;
    bob.expect(r#"["1",null,"room:p","history",{"messages":[]}]"#)
        .await;
    bob.expect_masked(
        &mut refs,
        r#"["1",null,"room:p","presence_state",{"ada":{"metas":[{"online_at":T,"phx_ref":"ref1"}]},"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}]"#,
    )
    .await;
    let bob_joins = r#"[null,null,"room:p","presence_diff",{"joins":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}]"#;
    bob.expect_masked(&mut refs, bob_joins).await;
    ada.expect_masked(&mut refs, bob_joins).await;
    assert_eq!(a.app("/socket").presence().count("room:p"), 2);
    // bob leaves: ada sees it.
    bob.call(
        r#"["1","2","room:p","phx_leave",{}]"#,
        r#"["1","2","room:p","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    ada.expect_masked(
        &mut refs,
        r#"[null,null,"room:p","presence_diff",{"joins":{},"leaves":{"bob":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}}]"#,
    )
    .await;
    assert_eq!(a.app("/socket").presence().count("room:p"), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn disconnect_and_status_span_the_cluster() {
    let Some((_redis, a, b)) = cluster().await else {
        return;
    };
    let status = status_until(&a, "a sees b", |s| nodes(s).len() == 2).await;
    assert_eq!(status["node"], "roost@a");
    assert_eq!(nodes(&status), ["roost@a", "roost@b"]);
    assert_eq!(status["cluster"]["degraded"], false);

    let secret = roost_host::config::Config::parse(&node_config("x", "redis://h:1"), ".".as_ref())
        .expect("config")
        .apps["demo"]
        .secrets[0]
        .clone();
    let token = roost_host::auth::mint(&secret, "ada", Duration::from_secs(60), Default::default())
        .expect("token");
    let mut ada_on_b = b
        .connect(&format!("/socket/websocket?vsn=2.0.0&token={token}"))
        .await;
    ada_on_b
        .call(
            r#"["1","1","ping","phx_join",{}]"#,
            r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    let answer = api(
        &a,
        "disconnect",
        Some(json!({"socket_id": "users_socket:ada"})),
    )
    .await;
    assert_eq!(answer, json!({"sockets": 0, "nodes": 1}));
    let close = ada_on_b.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_down_keeps_local_service_and_its_return_resumes_the_cluster() {
    let Some((mut redis, a, b)) = cluster().await else {
        return;
    };
    let mut ada = a.connect_v2().await;
    ada.call(
        r#"["1","1","room:r","phx_join",{"username":"ada"}]"#,
        r#"["1","1","room:r","phx_reply",{"response":{"channel":"room:r"},"status":"ok"}]"#,
    )
    .await;
    let _history = ada.recv_text().await;
    let _state = ada.recv_text().await;
    let _own_join = ada.recv_text().await;
    let mut reader_on_b = b.connect_v2().await;
    join_reader(&mut reader_on_b, "room:r").await;

    redis.kill();
    // Local service goes on: a's own subscribers still get a's broadcasts.
    ada.send(r#"["1","2","room:r","new_msg",{"body":"while down"}]"#)
        .await;
    ada.expect(r#"[null,null,"room:r","new_msg",{"body":"while down"}]"#)
        .await;
    ada.expect(r#"["1","2","room:r","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    let down = status_until(&a, "a degraded", |s| s["cluster"]["degraded"] == true).await;
    assert!(
        down["cluster"]["not_replicated"].as_u64().unwrap_or(0) >= 1,
        "{down}"
    );

    // Redis comes back empty; both nodes resync by themselves.
    redis.restart().await;
    for node in [&a, &b] {
        status_until(node, "resynced", |s| {
            s["cluster"]["degraded"] == false && s["cluster"]["resyncs"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    }
    // A broadcast from a reaches b again (retried: b may resubscribe a
    // moment after a does).
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    'resumed: loop {
        ada.send(r#"["1","3","room:r","new_msg",{"body":"after"}]"#)
            .await;
        while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(300), async {
            Some(reader_on_b.recv_text().await)
        })
        .await
        {
            if frame.contains(r#""body":"after""#) {
                break 'resumed;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never got a's broadcast again"
        );
    }
    // Presence resynced: a new user on b sees ada, who joined on a before
    // Redis lost everything.
    let mut bob = b.connect_v2().await;
    bob.call(
        r#"["1","1","room:r","phx_join",{"username":"bob"}]"#,
        r#"["1","1","room:r","phx_reply",{"response":{"channel":"room:r"},"status":"ok"}]"#,
    )
    .await;
    let _history = bob.recv_text().await;
    let state = bob.recv_text().await;
    assert!(
        state.contains(r#""ada""#) && state.contains(r#""bob""#),
        "{state}"
    );
    a.stop().await;
    b.stop().await;
}
