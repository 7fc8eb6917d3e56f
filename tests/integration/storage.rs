//! Key-value storage from real guests: the room chat's history (stored on
//! every message, pushed after the join reply, caught up with
//! `last_seen_id`, kept across a restart), the `store` fixture for
//! namespaces, quotas and expiry — each on the embedded store and on a
//! cluster's Redis — and the capability an app must grant.

use std::time::Duration;

use roost_host::config::Config;
use roost_tests::{Client, Redis, TestServer, plugin};
use serde_json::{Value, json};

/// Joins `room` as `user` (with extra join params) and returns the
/// history's messages; the presence frames that follow are read too.
async fn join_room(c: &mut Client, join_ref: &str, room: &str, params: Value) -> Vec<Value> {
    let payload = json!({ "username": "ada" })
        .as_object()
        .cloned()
        .map(|mut p| {
            if let Value::Object(extra) = params {
                p.extend(extra);
            }
            Value::Object(p)
        });
    let payload = payload.unwrap_or_default();
    c.call(
        &format!(r#"["{join_ref}","{join_ref}","{room}","phx_join",{payload}]"#),
        &format!(
            r#"["{join_ref}","{join_ref}","{room}","phx_reply",{{"response":{{"channel":"{room}"}},"status":"ok"}}]"#
        ),
    )
    .await;
    let history: Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
    assert_eq!(history[3], "history", "right after the reply: {history}");
    assert_eq!(history[0], join_ref, "pushed on the channel: {history}");
    for _ in 0..2 {
        c.recv_text().await; // presence_state, presence_diff
    }
    history[4]["messages"].as_array().expect("messages").clone()
}

/// Sends `n` messages (`message:add` for odd ones, `new_msg` for even).
async fn chat(c: &mut Client, join_ref: &str, room: &str, n: usize) {
    for i in 1..=n {
        let (event, body) = if i % 2 == 1 {
            ("message:add", json!({ "message": format!("m{i}") }))
        } else {
            ("new_msg", json!({ "body": format!("m{i}") }))
        };
        c.send(&format!(
            r#"["{join_ref}","{i}x","{room}","{event}",{body}]"#
        ))
        .await;
        // The broadcast to ourselves, then the reply.
        c.recv_text().await;
        let reply = c.recv_text().await;
        assert!(reply.contains(r#""status":"ok""#), "{reply}");
    }
}

#[tokio::test]
async fn the_room_keeps_history_and_a_join_gets_the_last_fifty() {
    let server = TestServer::demo().await;
    let mut ada = server.connect_v2().await;
    assert!(
        join_room(&mut ada, "1", "room:h", json!({}))
            .await
            .is_empty()
    );
    chat(&mut ada, "1", "room:h", 55).await;

    let mut bob = server.connect_v2().await;
    let messages = join_room(&mut bob, "1", "room:h", json!({})).await;
    let ids: Vec<u64> = messages.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(
        ids,
        (6..=55).collect::<Vec<_>>(),
        "the last 50, oldest first"
    );
    // Even ones were `new_msg` (`body`), odd ones `message:add` (`content`).
    let (even, odd) = (&messages[0], &messages[1]);
    assert_eq!(even["body"], "m6", "{even}");
    assert_eq!(
        (&even["id"], &even["user"]),
        (&json!(6), &json!({ "username": "ada" }))
    );
    assert_eq!(odd["content"], "m7", "{odd}");
    assert!(
        even["at"].as_u64().is_some_and(|at| at > 1_700_000_000_000),
        "{even}"
    );

    // Catching up after a reconnect: only what came after the last seen.
    let mut carol = server.connect_v2().await;
    let newer = join_room(&mut carol, "1", "room:h", json!({ "last_seen_id": 52 })).await;
    let ids: Vec<u64> = newer.iter().filter_map(|m| m["id"].as_u64()).collect();
    assert_eq!(ids, [53, 54, 55]);
    // Rooms are apart.
    assert!(
        join_room(&mut carol, "2", "room:other", json!({}))
            .await
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn history_survives_a_restart() {
    let data = tempfile::tempdir().expect("temp dir");
    let start = || {
        let mut config = Config::parse(&roost_tests::demo_config(), ".".as_ref()).expect("config");
        config.server.data_dir = data.path().to_owned();
        roost_host::server::start(config)
    };
    let running = start().await.expect("starts");
    let mut c = Client::connect(&format!("ws://{}/socket/websocket?vsn=2.0.0", running.addr)).await;
    join_room(&mut c, "1", "room:kept", json!({})).await;
    chat(&mut c, "1", "room:kept", 3).await;
    drop(c);
    running.shutdown().await;

    let running = start().await.expect("starts again");
    let mut c = Client::connect(&format!("ws://{}/socket/websocket?vsn=2.0.0", running.addr)).await;
    let messages = join_room(&mut c, "1", "room:kept", json!({})).await;
    let bodies: Vec<&Value> = messages
        .iter()
        .map(|m| {
            if m["content"].is_null() {
                &m["body"]
            } else {
                &m["content"]
            }
        })
        .collect();
    assert_eq!(bodies, [&json!("m1"), &json!("m2"), &json!("m3")]);
    running.shutdown().await;
}

async fn store(c: &mut Client, r: &str, event: &str, payload: Value) -> Value {
    c.send(&format!(r#"["1","{r}","store:s","{event}",{payload}]"#))
        .await;
    let reply: Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
    assert_eq!(reply[1], r, "{reply}");
    reply[4].clone()
}

async fn store_client(server: &TestServer, mount: &str) -> Client {
    let mut c = server
        .connect(&format!("{mount}/websocket?vsn=2.0.0"))
        .await;
    c.call(
        r#"["1","1","store:s","phx_join",{}]"#,
        r#"["1","1","store:s","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c
}

/// Where a storage test's keys live.
#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    /// A one-node cluster on a Redis of the test's own.
    Redis,
}

/// A server of `config` on `backend`, and its Redis if any; `None` when
/// Redis is asked for and not installed (see [`Redis::start`]).
async fn server_on(backend: Backend, config: &str) -> Option<(TestServer, Option<Redis>)> {
    match backend {
        Backend::Embedded => Some((TestServer::with_config(config).await, None)),
        Backend::Redis => {
            let redis = Redis::start().await?;
            let config = format!("{config}\n[cluster]\nredis = \"{}\"\n", redis.url());
            Some((TestServer::with_config(&config).await, Some(redis)))
        }
    }
}

#[tokio::test]
async fn get_set_delete_increment_list_and_expiry_embedded() {
    get_set_delete_increment_list_and_expiry(Backend::Embedded).await;
}

#[tokio::test]
async fn get_set_delete_increment_list_and_expiry_on_redis() {
    get_set_delete_increment_list_and_expiry(Backend::Redis).await;
}

async fn get_set_delete_increment_list_and_expiry(backend: Backend) {
    let Some((server, _redis)) = server_on(backend, &roost_tests::demo_config()).await else {
        return;
    };
    let mut c = store_client(&server, "/socket").await;
    let ok = |response: Value| json!({ "response": response, "status": "ok" });
    assert_eq!(
        store(&mut c, "2", "get", json!({"key": "k"})).await,
        ok(json!({"value": null}))
    );
    assert_eq!(
        store(&mut c, "3", "set", json!({"key": "k", "value": "v"})).await,
        ok(json!({}))
    );
    assert_eq!(
        store(&mut c, "4", "get", json!({"key": "k"})).await,
        ok(json!({"value": "v"}))
    );
    assert_eq!(
        store(&mut c, "5", "incr", json!({"key": "n", "by": 2})).await,
        ok(json!({"value": 2}))
    );
    assert_eq!(
        store(&mut c, "6", "incr", json!({"key": "n", "by": 40})).await,
        ok(json!({"value": 42}))
    );
    for (r, key) in [("7", "p:b"), ("8", "p:a"), ("9", "q:a")] {
        store(&mut c, r, "set", json!({"key": key, "value": ""})).await;
    }
    assert_eq!(
        store(&mut c, "10", "list", json!({"prefix": "p:"})).await,
        ok(json!({"keys": ["p:a", "p:b"]}))
    );
    assert_eq!(
        store(
            &mut c,
            "11",
            "list",
            json!({"prefix": "p:", "after": "p:a"})
        )
        .await,
        ok(json!({"keys": ["p:b"]}))
    );
    assert_eq!(
        store(&mut c, "12", "delete", json!({"key": "k"})).await,
        ok(json!({"deleted": true}))
    );
    assert_eq!(
        store(&mut c, "13", "delete", json!({"key": "k"})).await,
        ok(json!({"deleted": false}))
    );
    store(
        &mut c,
        "14",
        "set",
        json!({"key": "t", "value": "brief", "ttl_ms": 50}),
    )
    .await;
    assert_eq!(
        store(&mut c, "15", "get", json!({"key": "t"})).await,
        ok(json!({"value": "brief"}))
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        store(&mut c, "16", "get", json!({"key": "t"})).await,
        ok(json!({"value": null}))
    );
    assert_eq!(
        store(&mut c, "17", "list", json!({"prefix": "t"})).await,
        ok(json!({"keys": []})),
        "an expired key is not listed"
    );
    server.stop().await;
}

#[tokio::test]
async fn quotas_are_errors_the_guest_sees_and_the_channel_survives_embedded() {
    quotas_are_errors_the_guest_sees_and_the_channel_survives(Backend::Embedded).await;
}

#[tokio::test]
async fn quotas_are_errors_the_guest_sees_and_the_channel_survives_on_redis() {
    quotas_are_errors_the_guest_sees_and_the_channel_survives(Backend::Redis).await;
}

async fn quotas_are_errors_the_guest_sees_and_the_channel_survives(backend: Backend) {
    let limits = "kv_max_keys = 2\nkv_max_value_bytes = 8\nkv_max_key_bytes = 4";
    let Some((server, _redis)) = server_on(backend, &roost_tests::demo_config_with(limits)).await
    else {
        return;
    };
    let mut c = store_client(&server, "/socket").await;
    let reason = |reply: Value| {
        assert_eq!(reply["status"], "error", "{reply}");
        reply["response"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let big = reason(
        store(
            &mut c,
            "2",
            "set",
            json!({"key": "a", "value": "123456789"}),
        )
        .await,
    );
    assert!(
        big.starts_with("quota:") && big.contains("kv_max_value_bytes"),
        "{big}"
    );
    let long = reason(store(&mut c, "3", "get", json!({"key": "12345"})).await);
    assert!(
        long.starts_with("quota:") && long.contains("kv_max_key_bytes"),
        "{long}"
    );
    let empty = reason(store(&mut c, "4", "get", json!({"key": ""})).await);
    assert!(empty.starts_with("invalid:"), "{empty}");
    store(&mut c, "5", "set", json!({"key": "a", "value": "1"})).await;
    store(&mut c, "6", "set", json!({"key": "b", "value": "1"})).await;
    let full = reason(store(&mut c, "7", "set", json!({"key": "c", "value": "1"})).await);
    assert!(
        full.starts_with("quota:") && full.contains("kv_max_keys"),
        "{full}"
    );
    store(&mut c, "8", "set", json!({"key": "b", "value": "x"})).await;
    let text = reason(store(&mut c, "9", "incr", json!({"key": "b", "by": 1})).await);
    assert!(text.starts_with("invalid:"), "{text}");
    // The channel is still joined and serving.
    assert_eq!(
        store(&mut c, "10", "incr", json!({"key": "a", "by": 1})).await["response"],
        json!({"value": 2})
    );
    server.stop().await;
}

#[tokio::test]
async fn an_app_cannot_read_another_apps_keys_whatever_key_it_asks_for_embedded() {
    an_app_cannot_read_another_apps_keys_whatever_key_it_asks_for(Backend::Embedded).await;
}

#[tokio::test]
async fn an_app_cannot_read_another_apps_keys_whatever_key_it_asks_for_on_redis() {
    an_app_cannot_read_another_apps_keys_whatever_key_it_asks_for(Backend::Redis).await;
}

async fn an_app_cannot_read_another_apps_keys_whatever_key_it_asks_for(backend: Backend) {
    let store_wasm = plugin("store").display().to_string();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [apps.a]\nmount = \"/a\"\ncapabilities = {{ kv = true }}\n[apps.a.routes]\n\"store:*\" = \"{store_wasm}\"\n\
         [apps.b]\nmount = \"/b\"\ncapabilities = {{ kv = true }}\n[apps.b.routes]\n\"store:*\" = \"{store_wasm}\"\n"
    );
    let Some((server, _redis)) = server_on(backend, &config).await else {
        return;
    };
    let (mut a, mut b) = (
        store_client(&server, "/a").await,
        store_client(&server, "/b").await,
    );
    store(
        &mut a,
        "2",
        "set",
        json!({"key": "secret", "value": "of a"}),
    )
    .await;
    for (r, key) in [
        ("2", "secret"),
        ("3", "a:secret"),
        ("4", "../a/secret"),
        ("5", "a\u{0}secret"),
    ] {
        let reply = store(&mut b, r, "get", json!({ "key": key })).await;
        assert_eq!(
            reply["response"],
            json!({"value": null}),
            "{key:?}: {reply}"
        );
    }
    let listed = store(&mut b, "6", "list", json!({"prefix": ""})).await;
    assert_eq!(listed["response"], json!({"keys": []}));
    assert_eq!(
        store(&mut a, "3", "get", json!({"key": "secret"})).await["response"],
        json!({"value": "of a"})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_plugin_that_imports_storage_needs_the_grant() {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[apps.bare]\nmount = \"/bare\"\n[apps.bare.routes]\n\"store:*\" = \"{}\"\n\"ping\" = \"{}\"\n",
        plugin("store").display(),
        plugin("ping").display(),
    );
    let config = Config::parse(&config, ".".as_ref()).expect("parses");
    let error = match roost_host::server::start(config).await {
        Ok(_) => panic!("started a plugin its app does not grant storage"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("app `bare`") && error.contains("kv = true") && error.contains("store.wasm"),
        "{error}"
    );
}

#[tokio::test]
async fn a_reload_to_a_build_that_needs_an_ungranted_capability_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let routed = dir.path().join("plugin.wasm");
    std::fs::copy(plugin("ping"), &routed).expect("copy");
    let config = dir.path().join("roost.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[apps.demo]\nmount = \"/socket\"\n[apps.demo.routes]\n\"ping\" = \"plugin.wasm\"\n",
    )
    .expect("write config");
    let server = TestServer::from_file(&config).await;
    let slot = server
        .app("/socket")
        .state()
        .router()
        .route("ping")
        .cloned()
        .expect("routed");
    let serving = slot.status().version;
    let tmp = dir.path().join("plugin.tmp");
    std::fs::copy(plugin("store"), &tmp).expect("copy");
    std::fs::rename(&tmp, &routed).expect("rename");
    let started = std::time::Instant::now();
    while slot.status().last_error.is_none() {
        assert!(
            started.elapsed() < roost_tests::WAIT,
            "no reload failure recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = slot.status();
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("kv = true"), "{error}");
    assert_eq!(
        status.version, serving,
        "the last good version keeps serving"
    );
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
    server.stop().await;
}

#[tokio::test]
async fn a_store_that_does_not_answer_is_an_error_in_time_not_a_crash() {
    // A "Redis" that accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let config = format!(
        "{}\n[cluster]\nredis = \"{url}\"\n",
        roost_tests::demo_config_with("call_deadline_ms = 500")
    );
    let server = TestServer::with_config(&config).await;
    let mut c = store_client(&server, "/socket").await;
    let started = std::time::Instant::now();
    let reply = store(&mut c, "2", "set", json!({"key": "k", "value": "v"})).await;
    assert_eq!(reply["status"], "error", "{reply}");
    let reason = reply["response"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("unavailable:"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "within the deadline"
    );
    // The channel lives on.
    let again = store(&mut c, "3", "get", json!({"key": "k"})).await;
    assert_eq!(again["status"], "error", "{again}");
    server.stop().await;
    held.abort();
}
