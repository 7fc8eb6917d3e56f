//! Test support: a real Roost server on `127.0.0.1:0` with the sample
//! plugins, and a WebSocket client that asserts exact frames.
//!
//! Every network wait has a timeout, so a broken server fails a test instead
//! of hanging it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roost_host::config::Config;
use roost_host::server::{self, Running};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test listens to be sure a frame does not come.
pub const QUIET: Duration = Duration::from_millis(300);

/// Where the sample plugins are built (by roost-host's build script).
pub fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// The sample `demo` app on `/socket`: ping, wildcard and room chat, plus
/// the `fixture` test plugin on `fixture:*` and the `store` one (key-value
/// storage on request) on `store:*`; the app grants storage.
pub fn demo_config() -> String {
    demo_config_with("")
}

/// [`demo_config`] with extra lines in `[apps.demo.limits]`.
pub fn demo_config_with(limits: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        node = "roost@test"

        [apps.demo]
        mount = "/socket"
        [apps.demo.routes]
        "ping" = "{ping}"
        "ping:*" = "{ping}"
        "wild:*" = "{wild}"
        "room:*" = "{room}"
        "fixture:*" = "{fixture}"
        "store:*" = "{store}"

        [apps.demo.capabilities]
        kv = true

        [apps.demo.limits]
        {limits}
        "#,
        fixture = plugin("fixture").display(),
        store = plugin("store").display(),
        ping = plugin("ping").display(),
        wild = plugin("wildcard").display(),
        room = plugin("room_chat").display(),
    )
}

/// A running server, shut down when dropped with [`TestServer::stop`] or at
/// the end of the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    running: Option<Running>,
    /// The server's `data_dir` (its key-value store), removed with it.
    data: tempfile::TempDir,
}

impl TestServer {
    /// Starts the demo app.
    pub async fn demo() -> Self {
        Self::with_config(&demo_config()).await
    }

    /// Starts a server from a config file, which it then watches.
    pub async fn from_file(path: &std::path::Path) -> Self {
        Self::start(Config::load(path).expect("test config is valid")).await
    }

    /// Starts a server from a config, with a fresh `data_dir` of its own
    /// (so no test sees another's stored data) and the per-address limits
    /// raised (tests open many sockets at once from one address).
    pub async fn start(mut config: Config) -> Self {
        config.server.connections_per_ip_per_second = 1_000_000;
        config.server.max_connections_per_ip = 1_000_000;
        Self::start_as_configured(config).await
    }

    /// [`TestServer::start`], leaving the per-address limits as configured.
    pub async fn start_as_configured(mut config: Config) -> Self {
        let data = tempfile::tempdir().expect("a temp dir");
        config.server.data_dir = data.path().to_owned();
        let running = server::start(config).await.expect("server starts");
        Self {
            addr: running.addr,
            running: Some(running),
            data,
        }
    }

    /// Where the server's key-value store lives.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// The running server's shared state.
    pub fn server(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Starts a server from config text (plugin paths absolute).
    pub async fn with_config(text: &str) -> Self {
        Self::start(Config::parse(text, ".".as_ref()).expect("test config is valid")).await
    }

    /// Connects a WebSocket client to `path` (with its query).
    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&format!("ws://{}{}", self.addr, path)).await
    }

    /// Starts the demo app with extra limits (TOML lines).
    pub async fn demo_with(limits: &str) -> Self {
        Self::with_config(&demo_config_with(limits)).await
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects with the V2 serializer to the demo mount.
    pub async fn connect_v2(&self) -> Client {
        self.connect("/socket/websocket?vsn=2.0.0").await
    }

    /// The app mounted at `mount`, to broadcast from the server side.
    pub fn app(&self, mount: &str) -> std::sync::Arc<roost_host::app::App> {
        self.running
            .as_ref()
            .and_then(|running| running.app(mount))
            .expect("app is mounted")
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A WebSocket client speaking raw frames.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Wraps a connection made some other way (custom headers, say).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self { ws }
    }

    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Self { ws }
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends any message, including raw frames.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .expect("send");
    }

    /// The next message of any kind, close frames included; `None` when the
    /// connection is gone.
    pub async fn next_message(&mut self) -> Option<Message> {
        self.ws.next().await.and_then(Result::ok)
    }

    /// The next data frame; panics on close or timeout.
    pub async fn recv(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the timeout")
                .expect("connection closed")
                .expect("read error");
            match message {
                Message::Text(_) | Message::Binary(_) => return message,
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, which must be text.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame is exactly `expected`.
    pub async fn expect(&mut self, expected: &str) {
        assert_eq!(self.recv_text().await, expected);
    }

    /// Asserts the next frame is exactly `expected` once `refs` has masked
    /// its presence refs and clock readings (see [`Refs`]).
    pub async fn expect_masked(&mut self, refs: &mut Refs, expected: &str) {
        let frame = self.recv_text().await;
        assert_eq!(refs.mask(&frame), expected, "unmasked: {frame}");
    }

    /// Sends `frame` and asserts the next frame is exactly `expected`.
    pub async fn call(&mut self, frame: &str, expected: &str) {
        self.send(frame).await;
        self.expect(expected).await;
    }

    /// Asserts no data frame arrives for a while.
    pub async fn expect_silence(&mut self) {
        if let Ok(Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))) =
            tokio::time::timeout(QUIET, self.ws.next()).await
        {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Waits for the server to close the connection; returns its close frame.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("not closed within the timeout")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Names the parts of presence frames a test cannot know in advance, so it
/// can still assert whole frames: each distinct `phx_ref` (or
/// `phx_ref_prev`) value becomes `ref1`, `ref2`, … in order of first
/// appearance across every frame masked with the same `Refs` (a ref seen
/// again keeps its name, so a leave must name the ref its join had), and
/// each `online_at`, checked to be this minute's clock in milliseconds,
/// becomes `T`.
#[derive(Debug, Default)]
pub struct Refs {
    seen: Vec<String>,
}

impl Refs {
    pub fn mask(&mut self, frame: &str) -> String {
        let mut out = String::with_capacity(frame.len());
        let mut rest = frame;
        loop {
            let next = [r#""phx_ref":""#, r#""phx_ref_prev":""#, r#""online_at":"#]
                .into_iter()
                .filter_map(|marker| rest.find(marker).map(|at| (at, marker)))
                .min();
            let Some((at, marker)) = next else {
                out.push_str(rest);
                return out;
            };
            let value_at = at + marker.len();
            out.push_str(&rest[..value_at]);
            rest = &rest[value_at..];
            if marker.ends_with('"') {
                let end = rest.find('"').expect("a ref ends with a quote");
                out.push_str(&self.name(&rest[..end]));
                rest = &rest[end..];
            } else {
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                let ms: u128 = rest[..end].parse().expect("online_at is a number");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_millis();
                assert!(
                    ms.abs_diff(now) < 60_000,
                    "online_at {ms} is not now ({now})"
                );
                out.push('T');
                rest = &rest[end..];
            }
        }
    }

    /// `refN` for the ref, N its order of first appearance.
    fn name(&mut self, phx_ref: &str) -> String {
        let n = match self.seen.iter().position(|seen| seen == phx_ref) {
            Some(i) => i + 1,
            None => {
                self.seen.push(phx_ref.to_owned());
                self.seen.len()
            }
        };
        format!("ref{n}")
    }
}

/// A `redis-server` of the test's own, on a free loopback port, without
/// persistence (`--save '' --appendonly no`); killed when dropped.
/// `tests/run` installs Debian's `redis-server` when it is missing.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    /// Starts one, or returns `None` (after saying why) when
    /// `redis-server` is not installed and `ROOST_REQUIRE_REDIS` is unset,
    /// so `cargo test` works on a machine without Redis; `tests/run` sets
    /// it, so there a missing Redis fails.
    pub async fn start() -> Option<Self> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var_os("ROOST_REQUIRE_REDIS").is_none(),
                "redis-server is not installed (apt-get install redis-server)"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.restart().await;
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits for it.
    pub async fn restart(&mut self) {
        self.kill();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
