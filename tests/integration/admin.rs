//! The operator's side over HTTP: `/metrics`, `/dashboard` and its live
//! feed behind `server.admin_keys` — off (404, saying how to turn them on)
//! without a key, 401 with a wrong or missing one, `metrics_public` — and
//! counters that move as clients do things.

use roost_tests::{TestServer, WAIT, plugin};
use serde_json::Value;

const ADMIN_KEY: &str = "admin-key-for-the-tests-0123";
const ROTATED_KEY: &str = "the-next-admin-key-0123456789";

/// The ping app on `/socket`, with `server` lines (admin keys, say).
fn config(server: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        node = "roost@admin-test"
        {server}

        [apps.demo]
        mount = "/socket"
        capabilities = {{ kv = true }}
        [apps.demo.routes]
        "ping" = "{ping}"
        "room:*" = "{room}"
        "#,
        ping = plugin("ping").display(),
        room = plugin("room_chat").display(),
    )
}

fn with_keys() -> String {
    config(&format!(
        r#"admin_keys = ["value:{ADMIN_KEY}", "value:{ROTATED_KEY}"]"#
    ))
}

/// GET `path` with `key` as the bearer; the status, a header, the body.
async fn get(server: &TestServer, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(server.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.expect("body"))
}

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn without_an_admin_key_the_dashboard_and_metrics_are_off() {
    let server = TestServer::with_config(&config("")).await;
    for path in [
        "/metrics",
        "/dashboard",
        "/dashboard/state",
        "/dashboard/dashboard.js",
        "/_roost/admin/websocket?vsn=2.0.0",
    ] {
        let (status, _, body) = get(&server, path, Some("anything-at-all-0123456789")).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("server.admin_keys"), "{path}: {body}");
        assert!(body.contains("admin_keys = [\"env:"), "{path}: {body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_public_opens_metrics_only() {
    let server = TestServer::with_config(&config("metrics_public = true")).await;
    let (status, content_type, body) = get(&server, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(body.contains("# TYPE roost_sockets_active gauge"), "{body}");
    assert_eq!(get(&server, "/dashboard", None).await.0, 404);
    assert_eq!(get(&server, "/dashboard/state", None).await.0, 404);
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_admin_key_gets_401() {
    let server = TestServer::with_config(&with_keys()).await;
    for path in ["/metrics", "/dashboard/state"] {
        for key in [None, Some("not-an-admin-key-0123456789"), Some("")] {
            let (status, _, body) = get(&server, path, key).await;
            assert_eq!(status, 401, "{path} with {key:?}");
            assert!(body.contains("admin"), "{path}: {body}");
        }
        for key in [ADMIN_KEY, ROTATED_KEY] {
            assert_eq!(get(&server, path, Some(key)).await.0, 200, "{path}");
        }
    }
    // The page holds no data: it is served without a key and asks for one;
    // with a valid key it carries it, so a proxy can sign the operator in.
    let (status, content_type, page) = get(&server, "/dashboard", None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(page.contains(r#"<meta name="roost-admin-key" content="">"#));
    assert!(!page.contains(ADMIN_KEY));
    let (_, _, page) = get(&server, "/dashboard", Some(ADMIN_KEY)).await;
    assert!(page.contains(&format!(r#"content="{ADMIN_KEY}""#)));
    assert_eq!(
        get(&server, "/dashboard", Some("not-an-admin-key-0123456789"))
            .await
            .0,
        401
    );
    let (status, content_type, _) = get(&server, "/dashboard/dashboard.js", None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    server.stop().await;
}

#[tokio::test]
async fn counters_move_when_clients_act() {
    let server = TestServer::with_config(&with_keys()).await;
    let mut client = server.connect_v2().await;
    client
        .call(
            r#"["1","1","ping","phx_join",{}]"#,
            r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    for n in 2..5 {
        client
            .send(&format!(r#"["1","{n}","ping","ping",{{}}]"#))
            .await;
        client.recv_text().await;
    }
    client
        .call(
            r#"["2","5","room:x","phx_join",{"username":"ada"}]"#,
            r#"["2","5","room:x","phx_reply",{"response":{"channel":"room:x"},"status":"ok"}]"#,
        )
        .await;
    // The room announces ada after its reply, from a timer: wait for it.
    while !client.recv_text().await.contains("presence_diff") {}
    let (_, _, text) = get(&server, "/metrics", Some(ADMIN_KEY)).await;
    let demo = r#"app="demo""#;
    assert_eq!(sample(&text, "roost_messages_in_total", demo), 5.0);
    assert!(sample(&text, "roost_messages_out_total", demo) >= 5.0);
    assert_eq!(
        sample(&text, "roost_joins_total", r#"app="demo",outcome="ok""#),
        2.0
    );
    assert_eq!(sample(&text, "roost_channels_joined", demo), 2.0);
    assert_eq!(
        sample(
            &text,
            "roost_sockets_active",
            r#"app="demo",transport="websocket""#
        ),
        1.0
    );
    // The join's presence diff is a broadcast that reached ada herself.
    assert!(sample(&text, "roost_broadcasts_total", demo) >= 1.0);
    assert_eq!(
        sample(
            &text,
            "roost_guest_call_duration_seconds_count",
            r#"app="demo",plugin="ping",callback="handle_in""#
        ),
        3.0
    );

    // A refused connect is counted by reason; a closed socket leaves the gauge.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket/websocket?vsn=9.9.9",
        server.addr
    ))
    .await;
    assert!(refused.is_err());
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, text) = get(&server, "/metrics", Some(ADMIN_KEY)).await;
        let open = sample(
            &text,
            "roost_sockets_active",
            r#"app="demo",transport="websocket""#,
        );
        if open == 0.0 {
            assert_eq!(sample(&text, "roost_channels_joined", demo), 0.0);
            assert_eq!(
                sample(
                    &text,
                    "roost_connect_refusals_total",
                    r#"app="demo",transport="websocket",reason="vsn""#
                ),
                1.0
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "socket still counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_state_lists_apps_plugins_and_topics() {
    let server = TestServer::with_config(&with_keys()).await;
    let mut client = server.connect_v2().await;
    client
        .call(
            r#"["1","1","room:lobby","phx_join",{"username":"ada"}]"#,
            r#"["1","1","room:lobby","phx_reply",{"response":{"channel":"room:lobby"},"status":"ok"}]"#,
        )
        .await;
    let (status, _, body) = get(&server, "/dashboard/state", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
    let state: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(state["nodes"][0]["name"], "roost@admin-test");
    let demo = &state["apps"][0];
    assert_eq!(demo["name"], "demo");
    assert_eq!(demo["sockets"], 1);
    assert_eq!(demo["channels"], 1);
    assert_eq!(demo["busiest"][0]["topic"], "room:lobby");
    assert_eq!(demo["busiest"][0]["subscribers"], 1);
    let plugins: Vec<&str> = demo["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["plugin"].as_str().expect("name"))
        .collect();
    assert_eq!(plugins, ["ping", "room_chat"]);
    assert_eq!(demo["plugins"][1]["routes"][0], "room:*");
    assert_eq!(demo["plugins"][1]["wit"], "roost:channel@0.2.0");
    server.stop().await;
}

#[tokio::test]
async fn the_live_feed_joins_with_the_admin_key_only() {
    let server = TestServer::with_config(&with_keys()).await;
    let mut admin = server.connect("/_roost/admin/websocket?vsn=2.0.0").await;
    admin
        .call(
            r#"["1","1","roost:dashboard","phx_join",{"key":"wrong-key-0123456789"}]"#,
            r#"["1","1","roost:dashboard","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#,
        )
        .await;
    admin
        .call(
            r#"["2","2","phoenix","heartbeat",{}]"#,
            r#"[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    admin
        .send(&format!(
            r#"["3","3","roost:dashboard","phx_join",{{"key":"{ADMIN_KEY}"}}]"#
        ))
        .await;
    admin
        .expect(r#"["3","3","roost:dashboard","phx_reply",{"response":{"node":"roost@admin-test"},"status":"ok"}]"#)
        .await;
    // A snapshot at once, then one a second.
    for _ in 0..2 {
        let frame: Value = serde_json::from_str(&admin.recv_text().await).expect("json");
        assert_eq!(frame[0], "3");
        assert_eq!(frame[2], "roost:dashboard");
        assert_eq!(frame[3], "snapshot");
        assert_eq!(frame[4]["apps"][0]["name"], "demo");
    }
    admin
        .call(
            r#"["3","4","roost:dashboard","phx_leave",{}]"#,
            r#"["3","4","roost:dashboard","phx_reply",{"response":{},"status":"ok"}]"#,
        )
        .await;
    admin
        .expect(r#"["3","3","roost:dashboard","phx_close",{}]"#)
        .await;
    admin
        .call(
            r#"["5","5","room:lobby","phx_join",{}]"#,
            r#"["5","5","room:lobby","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn admin_paths_are_reserved_for_web_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    for web_path in ["/dashboard", "/metrics"] {
        let text = format!(
            "[apps.a]\nmount = \"/s\"\nstatic = \".\"\nweb_path = \"{web_path}\"\nroutes = {{ x = \"x.wasm\" }}\n"
        );
        let error =
            roost_host::config::Config::parse(&text, dir.path()).expect_err("a reserved web path");
        assert!(
            format!("{error:#}").contains(&format!("is under `{web_path}`, which Roost serves")),
            "{error:#}"
        );
    }
    let error = roost_host::config::Config::parse(
        "[server]\nadmin_keys = [\"value:short\"]\n[apps.a]\nmount = \"/s\"\nroutes = { x = \"x.wasm\" }\n",
        dir.path(),
    )
    .expect_err("a short admin key");
    assert!(
        format!("{error:#}").contains("key `server.admin_keys`"),
        "{error:#}"
    );
}

#[tokio::test]
async fn refused_connections_are_counted_by_reason() {
    let text = with_keys()
        + r#"
        [apps.private]
        mount = "/private"
        secrets = ["value:private-secret-0123456789"]
        check_origin = ["https://private.example"]
        [apps.private.routes]
        "ping" = "PING"
        "#;
    let server =
        TestServer::with_config(&text.replace("PING", &plugin("ping").display().to_string())).await;
    let ws = |query: &str| format!("ws://{}/private/websocket?vsn=2.0.0{query}", server.addr);
    assert!(tokio_tungstenite::connect_async(ws("")).await.is_err());
    assert!(
        tokio_tungstenite::connect_async(ws("&token=garbage"))
            .await
            .is_err()
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws(""))
            .expect("request");
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("origin"));
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let longpoll = reqwest::get(server.url("/private/longpoll?vsn=2.0.0"))
        .await
        .expect("long-poll");
    assert_eq!(longpoll.status(), 200, "long-poll refuses in its body");
    let (_, _, text) = get(&server, "/metrics", Some(ADMIN_KEY)).await;
    for (transport, reason, count) in [
        ("websocket", "token_missing", 1.0),
        ("websocket", "token_malformed", 1.0),
        ("websocket", "origin", 1.0),
        ("websocket", "token_expired", 0.0),
        ("longpoll", "token_missing", 1.0),
    ] {
        let labels = format!(r#"app="private",transport="{transport}",reason="{reason}""#);
        assert_eq!(
            sample(&text, "roost_connect_refusals_total", &labels),
            count,
            "{labels}"
        );
    }
    server.stop().await;
}
