//! `<mount>/longpoll` (the Phoenix long-poll transport): a session per
//! client, opened by a GET without a valid session token, fed by POSTs,
//! drained by GETs that wait up to the window for something to send.
//!
//! Every answer is HTTP 200 with the logical status in the JSON body. Each
//! session is one `socket::run` task over an [`LpConnection`], the adapter
//! whose stream is the messages POSTs hand over and whose sink is the buffer
//! GETs take from; a waiting GET is only a future on its HTTP connection,
//! parked on the session's `Notify`. Open sessions live in [`Sessions`],
//! this module's own registry.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::{Sink, Stream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Duration, Instant, Sleep};
use tracing::Instrument;

use super::Transports;
use crate::app::App;
use crate::auth;
use crate::mailbox::{Close, WireFrame};
use crate::metrics::AppMetrics;
use crate::protocol::{self, Message, Serializer};
use crate::socket::{self, Gone, Outgoing, Session};

/// Messages queued for one session's task before POSTs wait.
const POST_QUEUE: usize = 128;
const TOKEN_HEADER: &str = "x-phoenix-longpoll-token";
const AUTH_TOKEN_HEADER: &str = "x-phoenix-authtoken";

/// Open long-poll sessions by token. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sessions {
    by_token: Arc<Mutex<HashMap<String, Arc<Handle>>>>,
}

impl Sessions {
    fn get(&self, token: &str) -> Option<Arc<Handle>> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        // Single-step updates: a poisoned map is still consistent.
        self.by_token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the HTTP handlers hold of a session.
struct Handle {
    app: Arc<App>,
    serializer: Serializer,
    posts: mpsc::Sender<Post>,
    shared: Arc<Shared>,
}

/// State shared by a session's task and its GETs.
struct Shared {
    /// Encoded text frames waiting for a GET.
    waiting: Mutex<Waiting>,
    /// Woken when frames arrive or the session ends.
    arrived: Notify,
    /// When the last GET came; the session ends 1.5 windows after it.
    last_poll: Mutex<Instant>,
    closed: AtomicBool,
}

impl Shared {
    fn touch(&self) {
        *self.last_poll.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn last_poll(&self) -> Instant {
        *self.last_poll.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_frames(&self) -> Vec<String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.bytes = 0;
        std::mem::take(&mut waiting.frames)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.arrived.notify_waiters();
    }
}

/// Frames waiting for a GET, and their size.
#[derive(Default)]
struct Waiting {
    frames: Vec<String>,
    bytes: usize,
}

/// What a POST hands its session. Small, because the session's queue
/// allocates its first block of 32 slots when the session opens, before
/// any POST: with the message inline that block was ~4 KB of every session.
enum Post {
    /// Handle one message; acknowledged once handled.
    Message(Box<Message>, oneshot::Sender<()>),
    /// The body was malformed: end the session.
    Malformed,
}

/// Serves one long-poll request for `app`.
pub async fn handle(
    transports: &Transports,
    app: Arc<App>,
    method: Method,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    request: Body,
    client: Option<IpAddr>,
) -> Response {
    // As in Phoenix, the origin is checked first, for every method.
    if let Err(error) = auth::check_origin(app.state().config(), headers) {
        app.metrics().refused("longpoll", error.metric());
        tracing::warn!(app = %app.name(), transport = "longpoll", "refused: {error}");
        return body(403, None, None);
    }
    match method {
        Method::OPTIONS => preflight(headers),
        Method::GET => poll(transports, app, headers, params, client).await,
        Method::POST => publish(transports, app, headers, params, request).await,
        _ => with_cors(StatusCode::BAD_REQUEST.into_response()),
    }
}

fn session_token<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("token").map(String::as_str))
}

/// The session for a token, if it is open and belongs to this app.
fn find(
    transports: &Transports,
    app: &Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Option<Arc<Handle>> {
    let handle = transports.longpoll.get(session_token(headers, params)?)?;
    let open = Arc::ptr_eq(&handle.app, app) && !handle.shared.closed.load(Ordering::Acquire);
    open.then_some(handle)
}

async fn poll(
    transports: &Transports,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    client: Option<IpAddr>,
) -> Response {
    let token = session_token(headers, params).map(str::to_owned);
    let Some(handle) = find(transports, &app, headers, params) else {
        return open(transports, app, headers, params, client);
    };
    let token = token.unwrap_or_default();
    handle.shared.touch();
    let window = app.state().limits().longpoll_window();
    let deadline = Instant::now() + window;
    loop {
        let arrived = handle.shared.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let frames = handle.shared.take_frames();
        if !frames.is_empty() {
            return body(200, Some(&frames), Some(&token));
        }
        if handle.shared.closed.load(Ordering::Acquire) {
            return body(410, Some(&[]), Some(&token));
        }
        tokio::select! {
            () = arrived => {}
            () = tokio::time::sleep_until(deadline) => return body(204, Some(&[]), Some(&token)),
        }
    }
}

/// Opens a session: 410 with a new token, or 403 when refused (a bad vsn,
/// a refused token, or the app at its connection limit: the official client
/// then backs off and reconnects).
fn open(
    transports: &Transports,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    client: Option<IpAddr>,
) -> Response {
    // The official client sends its `authToken` in this header on GETs.
    let token = headers
        .get(AUTH_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(params.get("token").map(String::as_str));
    let vsn = params.get("vsn").map(String::as_str);
    let Ok(admission) = transports.apps.admit(&app, "longpoll", vsn, token, client) else {
        return body(403, None, None);
    };
    let serializer = admission.serializer;
    let token = new_token();
    let shared = Arc::new(Shared {
        waiting: Mutex::new(Waiting::default()),
        arrived: Notify::new(),
        last_poll: Mutex::new(Instant::now()),
        closed: AtomicBool::new(false),
    });
    let (posts, receiver) = mpsc::channel(POST_QUEUE);
    let limits = app.state().limits().clone();
    let metrics = app.metrics().clone();
    let session = Session::new(
        app.clone(),
        serializer,
        admission.identity,
        admission.permit,
    );
    let span = tracing::info_span!("socket", app = %app.name(), transport = "longpoll", vsn = serializer.vsn());
    transports.longpoll.lock().insert(
        token.clone(),
        Arc::new(Handle {
            app,
            serializer,
            posts,
            shared: shared.clone(),
        }),
    );
    let expiry = limits.longpoll_window() * 3 / 2;
    let conn = LpConnection {
        posts: receiver,
        acked: None,
        shared,
        buffer_limit: limits.outbox_bytes,
        expiry,
        expires: Box::pin(tokio::time::sleep(expiry)),
        sessions: transports.longpoll.clone(),
        token: token.clone(),
        metrics,
    };
    tracing::debug!(parent: &span, "long-poll session opened");
    // No idle timeout of its own: a session lives as long as GETs come.
    let task = socket::run(conn, session, transports.shutdown.clone(), None);
    transports.shutdown.spawn(task.instrument(span));
    body(410, Some(&[]), Some(&token))
}

async fn publish(
    transports: &Transports,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    request: Body,
) -> Response {
    let Some(handle) = find(transports, &app, headers, params) else {
        return body(410, None, None);
    };
    let limit = app.state().limits().longpoll_body_bytes;
    let Ok(bytes) = to_bytes(request, limit).await else {
        tracing::warn!(app = %app.name(), limit, "long-poll body too large or unreadable");
        return body(413, None, None);
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-ndjson");
    let messages = match protocol::decode_longpoll_body(handle.serializer, &bytes, ndjson) {
        Ok(messages) => messages,
        Err(error) => {
            // As a malformed WebSocket frame ends its socket, a malformed
            // batch ends its session.
            tracing::warn!(app = %app.name(), "closing long-poll session: malformed body: {error}");
            let _ = handle.posts.send(Post::Malformed).await;
            return body(400, None, None);
        }
    };
    let window = app.state().limits().longpoll_window();
    let deadline = Instant::now() + window;
    for message in messages {
        let (ack, acked) = oneshot::channel();
        let dispatched = tokio::time::timeout_at(deadline, async {
            handle
                .posts
                .send(Post::Message(Box::new(message), ack))
                .await
                .ok()?;
            acked.await.ok()
        })
        .await;
        match dispatched {
            Ok(Some(())) => {}
            Ok(None) => return body(410, None, None),
            // The rest of the batch is skipped, as in Phoenix.
            Err(_) => return body(408, None, None),
        }
    }
    body(200, None, None)
}

/// A long-poll session as a `socket::Connection`: its stream is what POSTs
/// hand over, its sink the buffer GETs take from. The stream ends when no
/// GET came for 1.5 windows; dropping the connection ends the session.
struct LpConnection {
    posts: mpsc::Receiver<Post>,
    /// The ack of the message handed out last: the socket loop asks for the
    /// next message only once it has handled the last, so the ack goes then.
    acked: Option<oneshot::Sender<()>>,
    shared: Arc<Shared>,
    /// Bytes waiting for a GET past which the client is too slow.
    buffer_limit: usize,
    /// 1.5 windows: how long a session lives without a GET.
    expiry: Duration,
    expires: Pin<Box<Sleep>>,
    sessions: Sessions,
    token: String,
    /// Counts the slow-consumer close, which a long-poll session makes
    /// here rather than through its mailbox.
    metrics: AppMetrics,
}

impl Stream for LpConnection {
    type Item = Result<Message, Close>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(ack) = self.acked.take() {
            let _ = ack.send(());
        }
        loop {
            if self.expires.as_mut().poll(cx).is_pending() {
                break;
            }
            let expiry = self.shared.last_poll() + self.expiry;
            if expiry <= Instant::now() {
                tracing::debug!("long-poll session expired");
                return Poll::Ready(None);
            }
            self.expires.as_mut().reset(expiry);
        }
        match self.posts.poll_recv(cx) {
            Poll::Ready(Some(Post::Message(message, ack))) => {
                self.acked = Some(ack);
                Poll::Ready(Some(Ok(*message)))
            }
            Poll::Ready(Some(Post::Malformed)) => Poll::Ready(Some(Err(Close::MalformedFrame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sink<Outgoing> for LpConnection {
    type Error = Gone;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Outgoing) -> Result<(), Gone> {
        let frame = match item {
            Outgoing::Frame(frame) => frame,
            // Long-poll has no close frame: the session simply ends.
            Outgoing::Close(_) => return Ok(()),
        };
        let mut waiting = self
            .shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match frame {
            WireFrame::Text(text) => {
                waiting.bytes += text.len();
                waiting.frames.push(text.as_str().to_owned());
            }
            // Long-poll delivers JSON strings only (as Phoenix does).
            WireFrame::Binary(_) => {
                tracing::debug!("binary frame not sent: long-poll carries text only");
            }
        }
        if waiting.bytes > self.buffer_limit {
            self.metrics.disconnected(Close::SlowConsumer.reason());
            tracing::info!(
                "closing long-poll session: {}",
                Close::SlowConsumer.reason()
            );
            return Err(Gone);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        self.shared.arrived.notify_waiters();
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        self.shared.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LpConnection {
    fn drop(&mut self) {
        self.shared.close();
        self.sessions.lock().remove(&self.token);
    }
}

/// An unguessable session token: 24 random bytes, base64url.
fn new_token() -> String {
    let mut bytes = [0u8; 24];
    // The OS random source failing is unrecoverable for a server.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `{"messages":[…],"status":N,"token":"…"}`, always HTTP 200.
fn body(status: u16, messages: Option<&[String]>, token: Option<&str>) -> Response {
    let mut json = serde_json::Map::new();
    if let Some(messages) = messages {
        json.insert("messages".into(), messages.into());
    }
    json.insert("status".into(), status.into());
    if let Some(token) = token {
        json.insert("token".into(), token.into());
    }
    let mut response = (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::Value::Object(json).to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_cors(response)
}

fn preflight(headers: &HeaderMap) -> Response {
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    with_cors(response)
}

fn with_cors(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}
