//! Many apps on one server: isolation, token auth, origins, the HTTP API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roost_host::auth;
use roost_host::config::{Config, Secret};
use roost_tests::{Client, Refs, TestServer, plugin};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ALPHA_KEY: &str = "alpha-api-key-0123456789";
const BETA_SECRET: &str = "beta-secret-0123456789";
const BETA_NEXT_SECRET: &str = "beta-next-secret-0123456789";

fn config(extra_beta: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        node = "roost@test"

        [apps.alpha]
        mount = "/alpha"
        api_keys = ["value:{ALPHA_KEY}"]
        check_origin = ["https://alpha.example"]
        capabilities = {{ kv = true }}
        [apps.alpha.routes]
        "room:*" = "{room}"
        "ping" = "{ping}"

        [apps.beta]
        mount = "/beta"
        secrets = ["value:{BETA_NEXT_SECRET}", "value:{BETA_SECRET}"]
        api_keys = ["value:beta-api-key-0123456789"]
        capabilities = {{ kv = true }}
        {extra_beta}
        [apps.beta.routes]
        "room:*" = "{room}"
        "#,
        room = plugin("room_chat").display(),
        ping = plugin("ping").display(),
    )
}

fn beta_secret(secret: &str) -> Secret {
    let config = Config::parse(&config(""), ".".as_ref()).expect("config");
    config.apps["beta"]
        .secrets
        .iter()
        .find(|s| s.bytes() == secret.as_bytes())
        .expect("secret")
        .clone()
}

fn beta_token(secret: &str, sub: &str) -> String {
    let mut claims = Map::new();
    claims.insert("username".into(), format!("user {sub}").into());
    auth::mint(&beta_secret(secret), sub, Duration::from_secs(60), claims).expect("mint")
}

/// A token whose `exp` passed an hour ago.
fn expired_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"sub": "1", "exp": now - 3600});
    let Value::Object(claims) = claims else {
        unreachable!()
    };
    auth::sign(&beta_secret(BETA_SECRET), &claims).expect("sign")
}

async fn ws_status(server: &TestServer, path: &str, origin: Option<&str>) -> Result<Client, u16> {
    let url = format!("ws://{}{path}", server.addr);
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("origin"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

async fn lp_status(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut request = reqwest::Client::new().get(server.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("get");
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("json")
}

#[tokio::test]
async fn apps_with_the_same_topic_do_not_see_each_other() {
    let server = TestServer::with_config(&config("anonymous = true")).await;
    let mut a = server.connect("/alpha/websocket?vsn=2.0.0").await;
    let mut b = server.connect("/beta/websocket?vsn=2.0.0").await;
    let mut refs = Refs::default();
    // Presence is per app too: each app's room has its own user only.
    for (c, r) in [(&mut a, "ref1"), (&mut b, "ref2")] {
        c.call(
            r#"["1","1","room:same","phx_join",{"username":"u"}]"#,
            r#"["1","1","room:same","phx_reply",{"response":{"channel":"room:same"},"status":"ok"}]"#,
        )
        .await;
        c.expect(r#"["1",null,"room:same","history",{"messages":[]}]"#)
            .await;
        c.expect_masked(&mut refs, &format!(r#"["1",null,"room:same","presence_state",{{"u":{{"metas":[{{"online_at":T,"phx_ref":"{r}"}}]}}}}]"#)).await;
        c.expect_masked(&mut refs, &format!(r#"[null,null,"room:same","presence_diff",{{"joins":{{"u":{{"metas":[{{"online_at":T,"phx_ref":"{r}"}}]}}}},"leaves":{{}}}}]"#)).await;
    }
    a.send(r#"["1","2","room:same","new_msg",{"body":"alpha only"}]"#)
        .await;
    a.expect(r#"[null,null,"room:same","new_msg",{"body":"alpha only"}]"#)
        .await;
    a.recv_text().await;
    b.expect_silence().await;
    // The API of one app cannot reach the other's subscribers either.
    let reached = api(
        &server,
        "beta",
        ALPHA_KEY,
        "broadcast",
        json!({"topic":"room:same","event":"x","payload":{}}),
    )
    .await;
    assert_eq!(reached.0, 401);
    server.stop().await;
}

async fn api(server: &TestServer, app: &str, key: &str, call: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/apps/{app}/{call}")))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("api call");
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn bad_tokens_are_refused_on_both_transports() {
    let server = TestServer::with_config(&config("")).await;
    let foreign = {
        let other = Config::parse(
            &config("").replace(BETA_SECRET, "some-other-apps-secret-0123"),
            ".".as_ref(),
        )
        .expect("config");
        let secret = other.apps["beta"].secrets[1].clone();
        auth::mint(&secret, "1", Duration::from_secs(60), Map::new()).expect("mint")
    };
    let good = beta_token(BETA_SECRET, "1");
    let tampered = {
        let (head, _) = good.rsplit_once('.').expect("jwt");
        format!("{head}.c2lnbmF0dXJl")
    };
    let expired = expired_token();
    for (what, token) in [
        ("missing", None),
        ("expired", Some(expired.as_str())),
        ("tampered", Some(tampered.as_str())),
        ("another app's", Some(foreign.as_str())),
        ("garbage", Some("garbage")),
    ] {
        let query = token.map(|t| format!("&token={t}")).unwrap_or_default();
        let ws = ws_status(&server, &format!("/beta/websocket?vsn=2.0.0{query}"), None).await;
        assert_eq!(ws.err(), Some(403), "{what} token over WebSocket");
        let lp = lp_status(&server, &format!("/beta/longpoll?vsn=2.0.0{query}"), &[]).await;
        assert_eq!(lp, json!({"status": 403}), "{what} token over long-poll");
    }
    server.stop().await;
}

#[tokio::test]
async fn valid_tokens_connect_and_their_claims_reach_the_guest() {
    // Each round's presence diff on its own, not batched with the last
    // round's leave.
    let server = TestServer::with_config(&config("limits = { presence_batch_ms = 0 }")).await;
    let mut refs = Refs::default();
    // Either secret verifies (rotation).
    for (round, (secret, r)) in [(BETA_SECRET, "ref1"), (BETA_NEXT_SECRET, "ref2")]
        .into_iter()
        .enumerate()
    {
        let token = beta_token(secret, "42");
        let mut c = ws_status(
            &server,
            &format!("/beta/websocket?vsn=2.0.0&token={token}"),
            None,
        )
        .await
        .expect("connected");
        c.call(
            r#"["1","1","room:t","phx_join",{"username":"ignored"}]"#,
            r#"["1","1","room:t","phx_reply",{"response":{"channel":"room:t"},"status":"ok"}]"#,
        )
        .await;
        // The room's history: the first round's message, in the second.
        let history: serde_json::Value = serde_json::from_str(&c.recv_text().await).expect("JSON");
        assert_eq!(history[3], "history");
        let messages = history[4]["messages"].as_array().expect("messages").clone();
        assert_eq!(messages.len(), round, "{history}");
        if let Some(first) = messages.first() {
            assert_eq!(
                (&first["id"], &first["content"], &first["user"]),
                (&json!(1), &json!("hi"), &json!({ "username": "user 42" }))
            );
        }
        // The token's username is the presence key too.
        c.expect_masked(&mut refs, &format!(r#"["1",null,"room:t","presence_state",{{"user 42":{{"metas":[{{"online_at":T,"phx_ref":"{r}"}}]}}}}]"#)).await;
        c.expect_masked(&mut refs, &format!(r#"[null,null,"room:t","presence_diff",{{"joins":{{"user 42":{{"metas":[{{"online_at":T,"phx_ref":"{r}"}}]}}}},"leaves":{{}}}}]"#)).await;
        c.send(r#"["1","2","room:t","message:add",{"message":"hi"}]"#)
            .await;
        c.expect(r#"[null,null,"room:t","room:t:new_message",{"content":"hi","user":{"username":"user 42"}}]"#)
            .await;
        c.expect(r#"["1","2","room:t","phx_reply",{"response":{},"status":"ok"}]"#)
            .await;
        // Left before the next round, so its presence is gone by then.
        c.call(
            r#"["1","3","room:t","phx_leave",{}]"#,
            r#"["1","3","room:t","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
        c.expect(r#"["1","1","room:t","phx_close",{}]"#).await;
    }
    // The authToken subprotocol carries the token too.
    use base64::Engine as _;
    let token = beta_token(BETA_SECRET, "7");
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token);
    let mut request = format!("ws://{}/beta/websocket?vsn=2.0.0", server.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("phoenix, base64url.bearer.phx.{encoded}")
            .parse()
            .expect("header"),
    );
    let (_ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(response.headers()["sec-websocket-protocol"], "phoenix");
    // And the long-poll header.
    let body = lp_status(
        &server,
        "/beta/longpoll?vsn=2.0.0",
        &[("x-phoenix-authtoken", &token)],
    )
    .await;
    assert_eq!(body["status"], 410);
    server.stop().await;
}

#[tokio::test]
async fn origins_are_checked() {
    let server = TestServer::with_config(&config("anonymous = true")).await;
    let path = "/alpha/websocket?vsn=2.0.0";
    assert!(
        ws_status(&server, path, Some("https://alpha.example"))
            .await
            .is_ok()
    );
    assert!(
        ws_status(&server, path, None).await.is_ok(),
        "no Origin header: not a browser"
    );
    assert_eq!(
        ws_status(&server, path, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    let lp = lp_status(
        &server,
        "/alpha/longpoll?vsn=2.0.0",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(lp, json!({"status": 403}));
    let lp = lp_status(
        &server,
        "/alpha/longpoll?vsn=2.0.0",
        &[("origin", "https://alpha.example")],
    )
    .await;
    assert_eq!(lp["status"], 410);
    server.stop().await;
}

#[tokio::test]
async fn the_api_needs_the_apps_key() {
    let server = TestServer::with_config(&config("")).await;
    let body = json!({"topic": "room:x", "event": "e", "payload": {}});
    assert_eq!(
        api(&server, "alpha", "wrong-key", "broadcast", body.clone())
            .await
            .0,
        401
    );
    let response = reqwest::Client::new()
        .post(server.url("/api/apps/alpha/broadcast"))
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 401);
    // An unknown app answers as a wrong key does: app names do not leak.
    let unknown = api(&server, "nope", ALPHA_KEY, "broadcast", body.clone()).await;
    let wrong = api(&server, "alpha", "wrong-key", "broadcast", body.clone()).await;
    assert_eq!(unknown, wrong);
    let (status, error) = api(
        &server,
        "alpha",
        ALPHA_KEY,
        "broadcast",
        json!({"topic": 1}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let health = reqwest::get(server.url("/health")).await.expect("health");
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn api_broadcasts_reach_subscribers_and_intercepts() {
    let server = TestServer::with_config(&config("")).await;
    let mut c = server.connect("/alpha/websocket?vsn=2.0.0").await;
    c.call(
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["2","2","room:api","phx_join",{"username":"api"}]"#,
        r#"["2","2","room:api","phx_reply",{"response":{"channel":"room:api"},"status":"ok"}]"#,
    )
    .await;
    let mut refs = Refs::default();
    c.expect(r#"["2",null,"room:api","history",{"messages":[]}]"#)
        .await;
    c.expect_masked(
        &mut refs,
        r#"["2",null,"room:api","presence_state",{"api":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
    )
    .await;
    c.expect_masked(
        &mut refs,
        r#"[null,null,"room:api","presence_diff",{"joins":{"api":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#,
    )
    .await;
    let (status, body) = api(
        &server,
        "alpha",
        ALPHA_KEY,
        "broadcast",
        json!({"topic":"room:api","event":"news","payload":{"n":1}}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"subscribers": 1})));
    c.expect(r#"[null,null,"room:api","news",{"n":1}]"#).await;
    api(
        &server,
        "alpha",
        ALPHA_KEY,
        "broadcast",
        json!({"topic":"ping","event":"request_ping","payload":{"k":"v"}}),
    )
    .await;
    c.expect(r#"["1",null,"ping","send_ping",{"from_node":"roost@test","k":"v"}]"#)
        .await;

    let (status, body) = get_status(&server, "alpha").await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["sockets"].clone(), body["channels"].clone()),
        (json!(1), json!(2))
    );
    let plugins = body["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 2, "{body}");
    assert!(
        plugins
            .iter()
            .all(|p| p["version"].as_str().is_some_and(|v| v.len() == 16)),
        "{body}"
    );
    assert!(plugins.iter().all(|p| p["last_error"].is_null()), "{body}");
    // Each warm instance reports its linear memory: at least a page, at
    // most the app's cap.
    let warm: Vec<&Value> = plugins
        .iter()
        .filter(|p| p["warm_instances"].as_u64() > Some(0))
        .collect();
    assert!(!warm.is_empty(), "{body}");
    for plugin in warm {
        let memory = plugin["warm_memory_bytes"].as_array().expect("memory");
        assert_eq!(Some(memory.len() as u64), plugin["warm_instances"].as_u64());
        assert!(
            memory
                .iter()
                .all(|m| m.as_u64().is_some_and(|m| (65_536..=64 << 20).contains(&m))),
            "{body}"
        );
    }
    server.stop().await;
}

async fn get_status(server: &TestServer, app: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(server.url(&format!("/api/apps/{app}/status")))
        .header("authorization", format!("Bearer {ALPHA_KEY}"))
        .send()
        .await
        .expect("status");
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("json"),
    )
}

#[tokio::test]
async fn disconnect_closes_all_of_a_users_sockets_on_both_transports() {
    let server = TestServer::with_config(&config("")).await;
    let token = beta_token(BETA_SECRET, "99");
    let other = beta_token(BETA_SECRET, "100");
    let path = |t: &str| format!("/beta/websocket?vsn=2.0.0&token={t}");
    let mut first = ws_status(&server, &path(&token), None).await.expect("ws");
    let mut second = ws_status(&server, &path(&token), None).await.expect("ws");
    let mut bystander = ws_status(&server, &path(&other), None).await.expect("ws");
    let lp = lp_status(
        &server,
        &format!("/beta/longpoll?vsn=2.0.0&token={token}"),
        &[],
    )
    .await;
    let lp_token = lp["token"].as_str().expect("session token").to_owned();

    let (status, body) = api(
        &server,
        "beta",
        "beta-api-key-0123456789",
        "disconnect",
        json!({"socket_id": "users_socket:99"}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"sockets": 3})));
    for c in [&mut first, &mut second] {
        let close = c.expect_close().await.expect("close frame");
        assert_eq!(u16::from(close.code), 1001);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let post = reqwest::Client::new()
        .post(server.url(&format!("/beta/longpoll?vsn=2.0.0&token={lp_token}")))
        .header("content-type", "application/x-ndjson")
        .body(r#"[null,"1","phoenix","heartbeat",{}]"#)
        .send()
        .await
        .expect("post");
    assert_eq!(post.text().await.expect("body"), r#"{"status":410}"#);
    bystander
        .call(
            r#"[null,"1","phoenix","heartbeat",{}]"#,
            r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_app_limit_get_503() {
    let server = TestServer::with_config(&config(
        "anonymous = true\n[apps.beta.limits]\nmax_connections = 1",
    ))
    .await;
    let _first = server.connect("/beta/websocket?vsn=2.0.0").await;
    assert_eq!(
        ws_status(&server, "/beta/websocket?vsn=2.0.0", None)
            .await
            .err(),
        Some(503)
    );
    assert!(
        ws_status(&server, "/alpha/websocket?vsn=2.0.0", None)
            .await
            .is_ok(),
        "other apps unaffected"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_missing_plugin_file_stops_the_start_with_a_clear_error() {
    let text = config("").replace(&plugin("ping").display().to_string(), "/nowhere/ping.wasm");
    let config = Config::parse(&text, ".".as_ref()).expect("parses");
    let error = match roost_host::server::start(config).await {
        Ok(_) => panic!("started without its plugin"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("app `alpha`") && error.contains("/nowhere/ping.wasm"),
        "{error}"
    );
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    // RFC 7519 §4.1.5: a token must not be accepted before its `nbf`.
    let server = TestServer::with_config(&config("")).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = |nbf: u64| {
        let Value::Object(claims) = json!({"sub": "1", "exp": now + 7200, "nbf": nbf}) else {
            unreachable!()
        };
        auth::sign(&beta_secret(BETA_SECRET), &claims).expect("sign")
    };
    let path = |t: &str| format!("/beta/websocket?vsn=2.0.0&token={t}");
    assert_eq!(
        ws_status(&server, &path(&token(now + 3600)), None)
            .await
            .err(),
        Some(403)
    );
    let lp = lp_status(
        &server,
        &format!("/beta/longpoll?vsn=2.0.0&token={}", token(now + 3600)),
        &[],
    )
    .await;
    assert_eq!(lp["status"], 403);
    assert!(
        ws_status(&server, &path(&token(now - 10)), None)
            .await
            .is_ok()
    );
    server.stop().await;
}
