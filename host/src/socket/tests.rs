//! The socket loop and its session, driven through a connection made of two
//! channels and through the mailbox, as `socket::run` sees any transport.
//! Timing tests run on tokio's paused clock; the tests that need guest code
//! use the `fixture` test plugin (plugins/fixtures/fixture), the others need
//! no wasmtime engine at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use super::{Gone, Outgoing, Session, run};
use crate::app::{App, AppState};
use crate::apps::ConnectionPermit;
use crate::auth::Identity;
use crate::channel::Router;
use crate::config::Config;
use crate::mailbox::{Close, Command, Mailbox, WireFrame};
use crate::protocol::{self, Message, RawFrame, Serializer};
use crate::runtime::Runtime;
use crate::shutdown::Shutdown;

/// How long a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(5);

/// The server side: a `Connection` over two unbounded channels.
struct ChannelConn {
    inbound: mpsc::UnboundedReceiver<Result<Message, Close>>,
    outbound: mpsc::UnboundedSender<Outgoing>,
}

impl Stream for ChannelConn {
    type Item = Result<Message, Close>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<Outgoing> for ChannelConn {
    type Error = Gone;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Outgoing) -> Result<(), Gone> {
        self.outbound.send(item).map_err(|_| Gone)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }
}

/// The client side of a [`ChannelConn`], speaking V2 JSON text.
struct Client {
    to_server: Option<mpsc::UnboundedSender<Result<Message, Close>>>,
    from_server: mpsc::UnboundedReceiver<Outgoing>,
}

impl Client {
    fn send(&self, text: &str) {
        let message = protocol::decode(Serializer::V2, RawFrame::Text(text)).expect("valid frame");
        if let Some(to_server) = &self.to_server {
            to_server.send(Ok(message)).expect("the loop is running");
        }
    }

    async fn next(&mut self) -> Option<Outgoing> {
        tokio::time::timeout(WAIT, self.from_server.recv())
            .await
            .expect("the loop wrote nothing in time")
    }

    async fn recv(&mut self) -> String {
        match self.next().await {
            Some(Outgoing::Frame(WireFrame::Text(text))) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn expect(&mut self, expected: &str) {
        assert_eq!(self.recv().await, expected);
    }

    async fn call(&mut self, frame: &str, expected: &str) {
        self.send(frame);
        self.expect(expected).await;
    }

    /// The next frame's event and payload.
    async fn event(&mut self) -> (String, Value) {
        let frame: Value = serde_json::from_str(&self.recv().await).expect("JSON frame");
        (
            frame[3].as_str().unwrap_or_default().to_owned(),
            frame[4].clone(),
        )
    }

    async fn expect_close(&mut self) -> Close {
        match self.next().await {
            Some(Outgoing::Close(close)) => close,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release/fixture.wasm")
}

fn config(limits: &str) -> crate::config::AppConfig {
    let text = format!(
        "[apps.t]\nmount = \"/t\"\nroutes = {{ \"fixture:*\" = \"{}\" }}\n[apps.t.limits]\n{limits}\n",
        fixture().display()
    );
    Config::parse(&text, "/".as_ref()).unwrap().apps["t"].clone()
}

/// An app with no routes: every join is unmatched. No engine.
fn bare_app(limits: &str) -> Arc<App> {
    Arc::new(App::new(
        "t",
        AppState::new(config(limits), Router::default()),
    ))
}

/// An app routing `fixture:*` to the fixture plugin.
async fn fixture_app() -> Arc<App> {
    let runtime = Runtime::new("roost@test", None).unwrap();
    let storage = crate::storage::Storage::new(std::env::temp_dir().join("roost-socket-tests"));
    let state = AppState::load(&runtime, &storage, "t", config(""), None)
        .await
        .unwrap();
    Arc::new(App::new("t", state))
}

/// Starts `socket::run` for a new session of `app`; returns the client,
/// the session's mailbox, and the loop's task.
fn connect(app: &Arc<App>, shutdown: &Shutdown) -> (Client, Mailbox, tokio::task::JoinHandle<()>) {
    let semaphore = Arc::new(Semaphore::new(10));
    let permit =
        ConnectionPermit::new(semaphore.try_acquire_owned().unwrap(), app.admit().unwrap());
    let identity = Identity {
        socket_id: Some("users_socket:ada".into()),
        claims: "{}".into(),
    };
    let session = Session::new(app.clone(), Serializer::V2, identity, permit);
    let mailbox = session.mailbox().clone();
    let idle = session.limits().idle_timeout();
    let (to_server, inbound) = mpsc::unbounded_channel();
    let (outbound, from_server) = mpsc::unbounded_channel();
    let conn = ChannelConn { inbound, outbound };
    let task = tokio::spawn(run(conn, session, shutdown.clone(), Some(idle)));
    let client = Client {
        to_server: Some(to_server),
        from_server,
    };
    (client, mailbox, task)
}

#[tokio::test]
async fn heartbeats_are_answered_and_unrouted_joins_unmatched() {
    let app = bare_app("");
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.call(
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.call(
        r#"["2","2","nowhere","phx_join",{}]"#,
        r#"[null,"2","nowhere","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    assert_eq!(app.socket_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_from_the_last_inbound_message_only() {
    let app = bare_app("idle_timeout_ms = 1000");
    let (mut c, mailbox, task) = connect(&app, &Shutdown::default());
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.call(
        r#"[null,"1","phoenix","heartbeat",{}]"#,
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    // Outbound traffic does not keep the socket alive.
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        mailbox.post_frame(WireFrame::Text("tick".into()));
        assert_eq!(c.recv().await, "tick");
    }
    let started = tokio::time::Instant::now();
    assert_eq!(c.expect_close().await, Close::IdleTimeout);
    // 1000 ms after the heartbeat, which came 900 ms ago.
    let waited = started.elapsed();
    assert!(
        (100..110).contains(&waited.as_millis()),
        "closed {waited:?} after the last tick"
    );
    task.await.unwrap();
    assert_eq!(app.socket_count(), 0, "the permit went with the session");
}

#[tokio::test]
async fn a_close_command_closes_with_its_code() {
    let app = bare_app("");
    let (mut c, _, task) = connect(&app, &Shutdown::default());
    assert_eq!(app.disconnect("users_socket:ada"), 1);
    assert_eq!(c.expect_close().await, Close::Disconnected);
    task.await.unwrap();
    assert_eq!(c.next().await, None, "the connection is closed after");
}

#[tokio::test]
async fn an_overflowing_mailbox_closes_as_a_slow_consumer() {
    let app = bare_app("outbox_bytes = 100");
    let (mut c, mailbox, task) = connect(&app, &Shutdown::default());
    // Posted faster than written: the loop is not polled in between.
    assert!(mailbox.post_frame(WireFrame::Text("x".repeat(60).into())));
    assert!(!mailbox.post_frame(WireFrame::Text("y".repeat(60).into())));
    assert_eq!(c.expect_close().await, Close::SlowConsumer);
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_with_going_away() {
    let app = bare_app("");
    let shutdown = Shutdown::default();
    let (mut c, _, _) = connect(&app, &shutdown);
    let drained = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.drain(WAIT).await }
    });
    assert_eq!(c.expect_close().await, Close::GoingAway);
    // The loop's task is not tracked here, so nothing is left to wait for.
    assert_eq!(drained.await.unwrap(), 0);
}

#[tokio::test]
async fn a_client_that_goes_ends_the_loop_without_a_close_frame() {
    let app = bare_app("");
    let (mut c, _, task) = connect(&app, &Shutdown::default());
    c.to_server = None;
    task.await.unwrap();
    assert_eq!(c.next().await, None);
    assert_eq!(app.socket_count(), 0);
}

#[tokio::test]
async fn a_malformed_frame_closes_with_its_code() {
    let app = bare_app("");
    let (mut c, _, task) = connect(&app, &Shutdown::default());
    if let Some(to_server) = &c.to_server {
        to_server.send(Err(Close::MalformedFrame)).unwrap();
    }
    assert_eq!(c.expect_close().await, Close::MalformedFrame);
    task.await.unwrap();
}

#[tokio::test]
async fn a_tracking_join_answers_then_pushes_the_state_then_the_diff() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.send(r#"["1","1","fixture:p","phx_join",{"track":"ada"}]"#);
    let (event, response) = c.event().await;
    assert_eq!(
        (event.as_str(), response["status"].as_str()),
        ("phx_reply", Some("ok"))
    );
    let (event, state) = c.event().await;
    assert_eq!(event, "presence_state");
    assert!(state["ada"]["metas"][0]["phx_ref"].is_string(), "{state}");
    let (event, diff) = c.event().await;
    assert_eq!(event, "presence_diff");
    assert_eq!(diff["joins"]["ada"], state["ada"]);
    assert_eq!(app.presence().count("fixture:p"), 1);
    assert_eq!(app.channel_count(), 1);
}

#[tokio::test]
async fn a_crash_errors_the_channel_and_releases_what_it_held() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.send(r#"["1","1","fixture:c","phx_join",{"track":"ada"}]"#);
    for _ in 0..3 {
        c.recv().await; // reply, presence_state, presence_diff
    }
    c.call(
        r#"["1","2","fixture:c","boom",{}]"#,
        r#"["1","1","fixture:c","phx_error",{"reason":"channel_crash"}]"#,
    )
    .await;
    c.call(
        r#"["1","3","fixture:c","get",{}]"#,
        r#"[null,"3","fixture:c","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#,
    )
    .await;
    assert_eq!(app.presence().count("fixture:c"), 0);
    assert_eq!(app.channel_count(), 0);
}

#[tokio::test]
async fn stop_reasons_close_or_error_after_terminate() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    for (n, (reason, notice)) in [
        ("normal", "phx_close"),
        ("shutdown:x", "phx_close"),
        ("oops", "phx_error"),
    ]
    .into_iter()
    .enumerate()
    {
        let jr = format!("{}", n + 10);
        c.call(
            &format!(r#"["{jr}","{jr}","fixture:s","phx_join",{{}}]"#),
            &format!(
                r#"["{jr}","{jr}","fixture:s","phx_reply",{{"response":{{}},"status":"ok"}}]"#
            ),
        )
        .await;
        c.call(
            &format!(r#"["{jr}","2","fixture:s","stop",{{"reason":"{reason}"}}]"#),
            &format!(r#"["{jr}","2","fixture:s","phx_reply",{{"response":{{}},"status":"ok"}}]"#),
        )
        .await;
        c.expect(&format!(
            r#"["{jr}",null,"fixture:s","you_left",{{"reason":"{reason}"}}]"#
        ))
        .await;
        let payload = if notice == "phx_error" {
            r#"{"reason":"channel_crash"}"#
        } else {
            "{}"
        };
        c.expect(&format!(
            r#"["{jr}","{jr}","fixture:s","{notice}",{payload}]"#
        ))
        .await;
    }
}

#[tokio::test]
async fn a_removed_route_errors_its_channels() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.call(
        r#"["1","1","fixture:r","phx_join",{}]"#,
        r#"["1","1","fixture:r","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    app.replace_state(AppState::new(config(""), Router::default()));
    c.expect(r#"["1","1","fixture:r","phx_error",{"reason":"channel_crash"}]"#)
        .await;
    assert_eq!(app.channel_count(), 0);
}

#[tokio::test]
async fn intercepted_broadcasts_run_handle_out_from_the_mailbox() {
    let app = fixture_app().await;
    let (mut c, mailbox, _) = connect(&app, &Shutdown::default());
    c.call(
        r#"["1","1","fixture:i","phx_join",{}]"#,
        r#"["1","1","fixture:i","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    // The fixture intercepts nothing, so its default handle_out pushes the
    // event as is, with the channel's join_ref.
    let intercepted = crate::mailbox::Intercepted {
        topic: "fixture:i".into(),
        event: "hello".into(),
        payload: crate::protocol::Payload::json_raw(r#"{"n":1}"#),
    };
    assert!(mailbox.post_command(Command::Intercept(Arc::new(intercepted))));
    c.expect(r#"["1",null,"fixture:i","hello",{"n":1}]"#).await;
}

#[tokio::test]
async fn a_zero_delay_timer_fires_after_the_reply_and_before_the_next_message() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.call(
        r#"["1","1","fixture:t","phx_join",{}]"#,
        r#"["1","1","fixture:t","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["1","2","fixture:t","defer",{}]"#);
    c.send(r#"["1","3","fixture:t","get",{}]"#);
    c.expect(r#"["1",null,"fixture:t","immediate",{}]"#).await;
    c.expect(r#"["1","2","fixture:t","phx_reply",{"response":{"deferred":true},"status":"ok"}]"#)
        .await;
    c.expect(r#"["1",null,"fixture:t","deferred",{"assigns":{}}]"#)
        .await;
    c.expect(r#"["1","3","fixture:t","phx_reply",{"response":{},"status":"ok"}]"#)
        .await;
    assert_eq!(app.timers().pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_timer_fires_on_time_and_goes_with_its_channel() {
    let app = fixture_app().await;
    let (mut c, _, _) = connect(&app, &Shutdown::default());
    c.call(
        r#"["1","1","fixture:d","phx_join",{}]"#,
        r#"["1","1","fixture:d","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.send(r#"["1","2","fixture:d","after",{"delay_ms":500,"message":{"push":"late"}}]"#);
    c.recv().await;
    let set = tokio::time::Instant::now();
    c.expect(r#"["1",null,"fixture:d","late",{"assigns":{}}]"#)
        .await;
    assert!(
        set.elapsed() >= Duration::from_millis(499),
        "{:?}",
        set.elapsed()
    );
    c.send(r#"["1","3","fixture:d","after",{"delay_ms":500,"message":{"push":"never"}}]"#);
    c.recv().await;
    assert_eq!(app.timers().pending(), 1);
    c.call(
        r#"["1","4","fixture:d","phx_leave",{}]"#,
        r#"["1","4","fixture:d","phx_reply",{"response":{},"status":"ok"}]"#,
    )
    .await;
    c.expect(r#"["1",null,"fixture:d","you_left",{"reason":"leave"}]"#)
        .await;
    c.expect(r#"["1","1","fixture:d","phx_close",{}]"#).await;
    assert_eq!(app.timers().pending(), 0);
}

#[tokio::test]
async fn the_loop_of_an_idle_connection_stays_small() {
    // An idle connection holds this future for its whole life: plugin calls
    // are boxed while they run, so their state is not part of it.
    let app = bare_app("");
    let semaphore = Arc::new(Semaphore::new(1));
    let permit =
        ConnectionPermit::new(semaphore.try_acquire_owned().unwrap(), app.admit().unwrap());
    let session = Session::new(app.clone(), Serializer::V2, Identity::anonymous(), permit);
    let (_to_server, inbound) = mpsc::unbounded_channel();
    let (outbound, _from_server) = mpsc::unbounded_channel();
    let conn = ChannelConn { inbound, outbound };
    let shutdown = Shutdown::default();
    let task = run(conn, session, shutdown, None);
    let size = std::mem::size_of_val(&task);
    println!(
        "socket::run future: {size} bytes (session {} bytes)",
        std::mem::size_of::<Session>()
    );
    assert!(size < 2048, "the loop's future grew to {size} bytes");
}
