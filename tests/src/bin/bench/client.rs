//! A minimal Phoenix V2 JSON client over WebSocket, shared by the scenarios:
//! connecting (loopback only, small buffers, `TCP_NODELAY`, a timeout),
//! encoding frames, decoding the frames a scenario looks at, joining a
//! topic, and opening many joined sockets at a fixed rate.
//!
//! Every network wait here takes a deadline or a timeout.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::stats::{Errors, Hist, RecordDuration, histogram};

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// How often an otherwise silent client sends a heartbeat (the official
/// client's default); servers close sockets idle for longer than ~60 s.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Read buffer of a socket that mostly idles (tungstenite allocates it
/// eagerly; its default of 128 KiB would dominate the generator's memory).
pub const SMALL_READ_BUFFER: usize = 4 << 10;
/// Read buffer of a socket that receives a stream of frames.
pub const LARGE_READ_BUFFER: usize = 16 << 10;

/// Why one operation failed; `kind` is what the reports count by.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: &'static str, detail: impl fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }

    fn timeout(what: &str) -> Self {
        Self::new("timeout", format!("no {what} within the timeout"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Where the server under test listens: a `ws://` URL on a loopback address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    addr: SocketAddr,
}

impl Endpoint {
    /// Parses `ws://HOST:PORT/PATH?QUERY`; HOST must be a loopback address
    /// or `localhost`, because the generator only ever talks to this machine.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let request = url.into_client_request()?;
        let uri = request.uri();
        anyhow::ensure!(
            uri.scheme_str() == Some("ws"),
            "{url}: only ws:// URLs are supported"
        );
        let host = uri.host().unwrap_or_default();
        let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
            "localhost" => Ipv4Addr::LOCALHOST.into(),
            other => other
                .parse()
                .map_err(|_| anyhow::anyhow!("{url}: the host must be an IP address"))?,
        };
        anyhow::ensure!(
            ip.is_loopback(),
            "{url}: bench only connects to loopback addresses (127.0.0.0/8, ::1)"
        );
        Ok(Self {
            url: url.to_owned(),
            addr: SocketAddr::new(ip, uri.port_u16().unwrap_or(80)),
        })
    }

    /// `ws://ADDR/socket/websocket?vsn=2.0.0`, Roost's demo mount.
    pub fn roost(addr: SocketAddr) -> Self {
        Self {
            url: format!("ws://{addr}/socket/websocket?vsn=2.0.0"),
            addr,
        }
    }

    /// This endpoint with `name=value` added to the URL's query; `value`
    /// must be URL-safe as it is (a JWT is).
    pub fn with_param(&self, name: &str, value: &str) -> Self {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        Self {
            url: format!("{}{separator}{name}={value}", self.url),
            addr: self.addr,
        }
    }

    /// The server's address (for its HTTP API).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connect and WebSocket handshake, within `timeout`.
    pub async fn connect(&self, timeout: Duration, read_buffer: usize) -> Result<Ws, Failure> {
        let connecting = async {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| Failure::new("connect", e))?;
            stream
                .set_nodelay(true)
                .map_err(|e| Failure::new("connect", e))?;
            let request = self
                .url
                .as_str()
                .into_client_request()
                .map_err(|e| Failure::new("handshake", e))?;
            let config = WebSocketConfig::default()
                .read_buffer_size(read_buffer)
                .write_buffer_size(4 << 10);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                    .map_err(|e| Failure::new("handshake", e))?;
            Ok(ws)
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Failure::timeout("connection"))?
    }
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A V2 frame `[join_ref, ref, topic, event, payload]`; `topic` is already
/// a JSON string literal (see [`json_string`]), `payload` a JSON object.
pub fn frame(
    join_ref: Option<&str>,
    r#ref: &str,
    topic: &str,
    event: &str,
    payload: &str,
) -> String {
    match join_ref {
        Some(join_ref) => format!(r#"["{join_ref}","{ref}",{topic},"{event}",{payload}]"#),
        None => format!(r#"[null,"{ref}",{topic},"{event}",{payload}]"#),
    }
}

/// The heartbeat frame, with a ref no scenario uses for anything else.
pub const HEARTBEAT_FRAME: &str = r#"[null,"hb","phoenix","heartbeat",{}]"#;

pub fn heartbeat() -> Message {
    Message::text(HEARTBEAT_FRAME)
}

/// A decoded server frame. Borrowed: refs, topics and events the scenarios
/// look for never contain JSON escapes.
#[derive(Debug, Deserialize)]
pub struct Frame<'a>(
    serde::de::IgnoredAny,
    Option<&'a str>,
    &'a str,
    &'a str,
    #[serde(borrow)] &'a RawValue,
);

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Result<Self, Failure> {
        serde_json::from_str(text).map_err(|e| Failure::new("protocol", format!("{e}: {text}")))
    }

    pub fn r#ref(&self) -> Option<&'a str> {
        self.1
    }

    pub fn topic(&self) -> &'a str {
        self.2
    }

    pub fn event(&self) -> &'a str {
        self.3
    }

    pub fn payload(&self) -> &'a RawValue {
        self.4
    }

    /// The reply's status if this is a `phx_reply`.
    pub fn reply_status(&self) -> Option<&'a str> {
        #[derive(Deserialize)]
        struct Reply<'a> {
            status: &'a str,
        }
        if self.event() != "phx_reply" {
            return None;
        }
        serde_json::from_str::<Reply>(self.payload().get())
            .ok()
            .map(|reply| reply.status)
    }
}

/// The next text frame; other data frames are skipped, a close or error
/// fails with kind `closed`.
pub async fn next_text<S>(stream: &mut S, deadline: Instant) -> Result<Utf8Bytes, Failure>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| Failure::timeout("frame"))?;
        match message {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => {
                return Err(Failure::new(
                    "closed",
                    format!("closed by the server: {frame:?}"),
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Failure::new("closed", e)),
            None => return Err(Failure::new("closed", "connection ended")),
        }
    }
}

/// Sends one text frame, within `timeout`.
pub async fn send<S>(sink: &mut S, text: String, timeout: Duration) -> Result<(), Failure>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    tokio::time::timeout(timeout, sink.send(Message::text(text)))
        .await
        .map_err(|_| Failure::timeout("send completion"))?
        .map_err(|e| Failure::new("send", e))
}

/// Waits for the `phx_reply` with `ref`, skipping other frames; fails unless
/// its status is `ok`.
pub async fn await_reply<S>(stream: &mut S, r#ref: &str, deadline: Instant) -> Result<(), Failure>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let text = next_text(stream, deadline).await?;
        let frame = Frame::parse(&text)?;
        if frame.r#ref() != Some(r#ref) {
            continue;
        }
        return match frame.reply_status() {
            Some("ok") => Ok(()),
            Some(_) => Err(Failure::new("reply_error", text.as_str())),
            None => continue,
        };
    }
}

/// Joins `topic` (a JSON string literal) with join_ref = ref = `join_ref`
/// and an empty payload; returns how long the reply took.
pub async fn join(
    ws: &mut Ws,
    join_ref: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let started = Instant::now();
    send(
        ws,
        frame(Some(join_ref), join_ref, topic, "phx_join", "{}"),
        timeout,
    )
    .await?;
    await_reply(ws, join_ref, started + timeout)
        .await
        .map_err(|failure| match failure.kind {
            "reply_error" => Failure::new("join_refused", failure.detail),
            _ => failure,
        })?;
    Ok(started.elapsed())
}

/// Connects and joins `topic` with join_ref "1"; returns the socket and
/// how long the connect and the join each took.
pub async fn connect_and_join(
    endpoint: &Endpoint,
    topic: &str,
    timeout: Duration,
    read_buffer: usize,
) -> Result<(Ws, Duration, Duration), Failure> {
    let started = Instant::now();
    let mut ws = endpoint.connect(timeout, read_buffer).await?;
    let connected = started.elapsed();
    let joined = join(&mut ws, "1", topic, timeout).await?;
    Ok((ws, connected, joined))
}

/// Sends a close frame and drops the socket, without waiting long.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// Closes as a browser does: sends a close frame, then reads until the
/// server ends the connection, for at most 1 s. The server, closing TCP
/// first, keeps the TIME_WAIT state, so this side's port is free at once:
/// a generator opening thousands of connections a second then does not
/// spend its time in `connect` looking for a free port.
pub async fn close_and_wait(mut ws: Ws) -> Result<(), Failure> {
    let closing = async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    };
    tokio::time::timeout(Duration::from_secs(1), closing)
        .await
        .map_err(|_| {
            Failure::new(
                "close",
                "the server did not end the connection within 1 s of the close frame",
            )
        })
}

/// Sockets opened by [`open_joined`], with connect and join latencies.
pub struct Opened {
    pub sockets: Vec<Ws>,
    pub connect: Hist,
    pub join: Hist,
    pub errors: Errors,
}

/// Opens `n` sockets joined to `topic` (a plain topic name), starting one
/// every 1/`rate` s (concurrently: a slow join does not delay the next).
/// Failures are counted, not fatal. Meant for setups that finish well within
/// a minute, since these sockets send no heartbeat until handed over.
pub async fn open_joined(
    endpoint: &Endpoint,
    topic: &str,
    n: u64,
    rate: f64,
    timeout: Duration,
    read_buffer: usize,
) -> Opened {
    let topic = Arc::new(json_string(topic));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    for i in 0..n {
        let (endpoint, topic, tx) = (endpoint.clone(), topic.clone(), tx.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
            let _ = tx.send(connect_and_join(&endpoint, &topic, timeout, read_buffer).await);
        });
    }
    drop(tx);
    let mut opened = Opened {
        sockets: Vec::with_capacity(n.try_into().unwrap_or(0)),
        connect: histogram(),
        join: histogram(),
        errors: Errors::default(),
    };
    // Every task answers within its own timeouts; this bound is a backstop.
    let deadline = t0 + Duration::from_secs_f64(n as f64 / rate) + 3 * timeout;
    while let Ok(Some(result)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match result {
            Ok((ws, connected, joined)) => {
                opened.connect.record_duration(connected);
                opened.join.record_duration(joined);
                opened.sockets.push(ws);
            }
            Err(failure) => opened.errors.add(&failure),
        }
    }
    let missing = n - opened.sockets.len() as u64 - opened.errors.total();
    for _ in 0..missing {
        opened.errors.add(&Failure::timeout("connect task result"));
    }
    opened
}
