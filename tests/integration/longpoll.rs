//! The long-poll transport (`phoenix-protocol.md` §5), exact bodies.

use base64::Engine as _;
use roost_tests::{Refs, TestServer, WAIT};
use serde_json::{Value, json};

const WINDOW: &str = "longpoll_window_ms = 300";

/// A long-poll client that keeps its session token.
struct Poller {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Poller {
    fn new(server: &TestServer, query: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: server.url(&format!("/socket/longpoll?{query}")),
            token: None,
        }
    }

    fn with_token(&self) -> String {
        match &self.token {
            Some(token) => format!("{}&token={token}", self.url),
            None => self.url.clone(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let response = tokio::time::timeout(WAIT, request.send())
            .await
            .expect("no response within the timeout")
            .expect("request");
        assert_eq!(response.status(), 200, "every long-poll answer is HTTP 200");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        response
    }

    async fn get(&mut self) -> Value {
        let response = self.send(self.http.get(self.with_token())).await;
        let body: Value =
            serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body");
        if let Some(token) = body["token"].as_str() {
            self.token = Some(token.to_owned());
        }
        body
    }

    /// Opens a session: the first GET answers 410 with a token.
    async fn open(&mut self) {
        let body = self.get().await;
        assert_eq!(body["status"], 410, "{body}");
        assert_eq!(body["messages"], json!([]));
    }

    async fn post(&self, lines: &[&str]) -> Value {
        let request = self
            .http
            .post(self.with_token())
            .header("content-type", "application/x-ndjson")
            .body(lines.join("\n"));
        let response = self.send(request).await;
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body")
    }

    /// GETs until `n` messages have arrived; returns them.
    async fn messages(&mut self, n: usize) -> Vec<String> {
        let mut messages = Vec::new();
        while messages.len() < n {
            let body = self.get().await;
            assert!(body["status"] == 200 || body["status"] == 204, "{body}");
            for m in body["messages"].as_array().expect("messages") {
                messages.push(m.as_str().expect("messages are strings").to_owned());
            }
        }
        messages
    }
}

#[tokio::test]
async fn session_join_poll_and_empty_poll() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    let token = p.token.clone().expect("token");
    assert!(token.len() >= 32, "the token is unguessable: {token}");
    assert_eq!(
        p.post(&[
            r#"["1","1","ping","phx_join",{}]"#,
            r#"["1","2","ping","ping",{}]"#
        ])
        .await,
        json!({"status": 200})
    );
    let body = p.get().await;
    assert_eq!(
        body,
        json!({
            "messages": [
                r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
                r#"["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#,
            ],
            "status": 200,
            "token": token,
        })
    );
    // Nothing within the window: 204.
    assert_eq!(
        p.get().await,
        json!({"messages": [], "status": 204, "token": token})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_waiting_poll_returns_when_a_message_arrives() {
    let server = TestServer::demo_with("longpoll_window_ms = 5000").await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    let mut refs = Refs::default();
    p.open().await;
    p.post(&[r#"["1","1","room:lp","phx_join",{"username":"lp"}]"#])
        .await;
    let joined: Vec<String> = p.messages(4).await.iter().map(|m| refs.mask(m)).collect();
    assert_eq!(
        joined,
        [
            r#"["1","1","room:lp","phx_reply",{"response":{"channel":"room:lp"},"status":"ok"}]"#,
            r#"["1",null,"room:lp","history",{"messages":[]}]"#,
            r#"["1",null,"room:lp","presence_state",{"lp":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
            r#"[null,null,"room:lp","presence_diff",{"joins":{"lp":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#,
        ]
    );
    let mut ws = server.connect_v2().await;
    ws.call(
        r#"["1","1","room:lp","phx_join",{"username":"lp"}]"#,
        r#"["1","1","room:lp","phx_reply",{"response":{"channel":"room:lp"},"status":"ok"}]"#,
    )
    .await;
    ws.expect(r#"["1",null,"room:lp","history",{"messages":[]}]"#)
        .await;
    ws.expect_masked(
        &mut refs,
        r#"["1",null,"room:lp","presence_state",{"lp":{"metas":[{"online_at":T,"phx_ref":"ref1"},{"online_at":T,"phx_ref":"ref2"}]}}]"#,
    )
    .await;
    let ws_joined = r#"[null,null,"room:lp","presence_diff",{"joins":{"lp":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}]"#;
    ws.expect_masked(&mut refs, ws_joined).await;
    let heard: Vec<String> = p.messages(1).await.iter().map(|m| refs.mask(m)).collect();
    assert_eq!(heard, [ws_joined]);
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move { p.messages(1).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    ws.send(r#"["1","2","room:lp","new_msg",{"body":"to lp"}]"#)
        .await;
    let messages = poll.await.expect("poll");
    assert_eq!(
        messages,
        [r#"[null,null,"room:lp","new_msg",{"body":"to lp"}]"#]
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the poll did not wait out its window"
    );
    server.stop().await;
}

#[tokio::test]
async fn v1_session_and_unmatched_topics() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut p = Poller::new(&server, "vsn=1.0.0");
    p.open().await;
    // Without the ndjson content type the body is one frame (old clients, V1).
    let body = p
        .send(
            p.http
                .post(p.with_token())
                .body(r#"{"topic":"nowhere","event":"x","payload":{},"ref":"12300"}"#),
        )
        .await;
    assert_eq!(body.text().await.expect("body"), r#"{"status":200}"#);
    assert_eq!(
        p.messages(1).await,
        [
            r#"{"event":"phx_reply","payload":{"response":{"reason":"unmatched topic"},"status":"error"},"ref":"12300","topic":"nowhere"}"#
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn token_from_header_and_unknown_tokens() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    let token = p.token.clone().expect("token");
    // The header wins over a stale query token.
    let request = p
        .http
        .post(format!("{}&token=stale", p.url))
        .header("x-phoenix-longpoll-token", &token)
        .header("content-type", "application/x-ndjson")
        .body(r#"["1","1","ping","phx_join",{}]"#);
    let body: Value =
        serde_json::from_slice(&p.send(request).await.bytes().await.expect("body")).expect("json");
    assert_eq!(body, json!({"status": 200}));
    // An unknown token: POST 410; GET opens a new session (410, new token).
    p.token = Some("unknown".into());
    assert_eq!(
        p.post(&[r#"["1","2","ping","ping",{}]"#]).await,
        json!({"status": 410})
    );
    let body = p.get().await;
    assert_eq!(body["status"], 410);
    assert_ne!(body["token"], json!(token));
    server.stop().await;
}

#[tokio::test]
async fn refusals_preflight_and_bad_bodies() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut bad_vsn = Poller::new(&server, "vsn=123.1.1");
    assert_eq!(bad_vsn.get().await, json!({"status": 403}));

    let http = reqwest::Client::new();
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.url("/socket/longpoll"))
        .header("access-control-request-headers", "x-phoenix-longpoll-token")
        .send()
        .await
        .expect("options");
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(
        h["access-control-allow-headers"],
        "x-phoenix-longpoll-token"
    );
    assert_eq!(h["access-control-allow-methods"], "get, post, options");
    assert_eq!(h["access-control-max-age"], "3600");
    assert_eq!(h["access-control-allow-origin"], "*");

    // A garbage body ends the session with a status in the body.
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    assert_eq!(p.post(&["[not json"]).await, json!({"status": 400}));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        p.post(&[r#"["1","1","ping","phx_join",{}]"#]).await,
        json!({"status": 410})
    );
    server.stop().await;
}

#[tokio::test]
async fn ndjson_batches_are_capped_at_100_lines_and_carry_base64_binary() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    p.post(&[r#"["1","1","ping","phx_join",{}]"#]).await;
    p.messages(1).await;
    let lines: Vec<String> = (1..=101)
        .map(|i| format!(r#"["1","{i}","ping","ping:m{i}",{{}}]"#))
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert_eq!(p.post(&lines).await, json!({"status": 200}));
    let messages = p.messages(100).await;
    assert_eq!(messages.len(), 100);
    assert_eq!(
        messages[99],
        r#"["1","100","ping","phx_reply",{"response":{"ping":"m100"},"status":"ok"}]"#
    );
    assert_eq!(p.get().await["status"], 204, "line 101 was ignored");

    // A base64 binary frame line, then a JSON line, dispatched in order.
    let mut frame = vec![0, 1, 1, 4, 4];
    frame.extend_from_slice(b"1xpingpong");
    let binary = base64::engine::general_purpose::STANDARD.encode(&frame);
    let body = p
        .post(&[&binary, "\r", r#"["1","y","ping","ping",{}]"#])
        .await;
    assert_eq!(body, json!({"status": 200}));
    assert_eq!(
        p.messages(1).await,
        [r#"["1","y","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]"#]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_without_polls_expires_and_its_channels_terminate() {
    let server = TestServer::demo_with("longpoll_window_ms = 100").await;
    let mut refs = Refs::default();
    let mut ws = server.connect_v2().await;
    ws.call(
        r#"["1","1","room:exp","phx_join",{"username":"ws"}]"#,
        r#"["1","1","room:exp","phx_reply",{"response":{"channel":"room:exp"},"status":"ok"}]"#,
    )
    .await;
    ws.expect(r#"["1",null,"room:exp","history",{"messages":[]}]"#)
        .await;
    ws.expect_masked(
        &mut refs,
        r#"["1",null,"room:exp","presence_state",{"ws":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}}]"#,
    )
    .await;
    ws.expect_masked(
        &mut refs,
        r#"[null,null,"room:exp","presence_diff",{"joins":{"ws":{"metas":[{"online_at":T,"phx_ref":"ref1"}]}},"leaves":{}}]"#,
    )
    .await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    p.post(&[r#"["1","1","room:exp","phx_join",{"username":"lp"}]"#])
        .await;
    p.messages(1).await;
    ws.expect_masked(
        &mut refs,
        r#"[null,null,"room:exp","presence_diff",{"joins":{"lp":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}},"leaves":{}}]"#,
    )
    .await;
    // No GET for 1.5 windows: the session ends and leaves the room.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        p.post(&[r#"["1","2","room:exp","new_msg",{"body":"x"}]"#])
            .await,
        json!({"status": 410})
    );
    let app = server.app("/socket");
    let reached = app.broadcast(
        "room:exp",
        "ping",
        &roost_host::protocol::Payload::empty(),
        None,
    );
    assert_eq!(reached, Ok(1), "only the WebSocket subscriber is left");
    // The expired session's presence left the room with it.
    ws.expect_masked(
        &mut refs,
        r#"[null,null,"room:exp","presence_diff",{"joins":{},"leaves":{"lp":{"metas":[{"online_at":T,"phx_ref":"ref2"}]}}}]"#,
    )
    .await;
    ws.expect(r#"[null,null,"room:exp","ping",{}]"#).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_wait_and_all_get_a_broadcast() {
    let server = TestServer::demo_with("longpoll_window_ms = 5000").await;
    let sessions = 1000;
    let mut pollers = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let mut p = Poller::new(&server, "vsn=2.0.0");
        p.open().await;
        p.post(&[r#"["1","1","room:many","phx_join",{}]"#]).await;
        pollers.push(p);
    }
    // Drain each join's reply and presence state.
    for p in &mut pollers {
        p.messages(2).await;
    }
    assert_eq!(server.server().longpoll_sessions().len(), sessions);
    // Every session now parks a GET; one broadcast wakes them all.
    let waiting: Vec<_> = pollers
        .into_iter()
        .map(|mut p| tokio::spawn(async move { p.messages(1).await }))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let app = server.app("/socket");
    let reached = app.broadcast(
        "room:many",
        "news",
        &roost_host::protocol::Payload::json_raw(r#"{"n":1}"#),
        None,
    );
    assert_eq!(reached, Ok(sessions));
    for poll in waiting {
        assert_eq!(
            poll.await.expect("poll"),
            [r#"[null,null,"room:many","news",{"n":1}]"#]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_timer_push_reaches_the_next_poll_and_leaving_cancels() {
    let server = TestServer::demo_with(WINDOW).await;
    let mut p = Poller::new(&server, "vsn=2.0.0");
    p.open().await;
    p.post(&[
        r#"["1","1","ping","phx_join",{}]"#,
        r#"["1","2","ping","ping_after",{"delay_ms":100}]"#,
    ])
    .await;
    assert_eq!(
        p.messages(3).await,
        [
            r#"["1","1","ping","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","2","ping","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1",null,"ping","pong_later",{"delay_ms":100}]"#,
        ]
    );
    // A pending timer goes with its channel.
    p.post(&[
        r#"["1","3","ping","ping_after",{"delay_ms":200}]"#,
        r#"["1","4","ping","phx_leave",{}]"#,
    ])
    .await;
    assert_eq!(
        p.messages(3).await,
        [
            r#"["1","3","ping","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","4","ping","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","1","ping","phx_close",{}]"#,
        ]
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(p.get().await["status"], 204, "no pong after the leave");
    server.stop().await;
}
