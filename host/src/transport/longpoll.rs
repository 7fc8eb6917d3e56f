//! `<mount>/longpoll` (`shared/phoenix-protocol.md` §5): a session per
//! client, opened by a GET without a valid token, fed by POSTs, drained by
//! GETs that wait up to the window for something to send.
//!
//! Every answer is HTTP 200 with the logical status in the JSON body. Each
//! session is one task that owns its `socket::Session`; a waiting GET is only
//! a future on its HTTP connection, parked on the session's `Notify`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;
use crate::auth;
use crate::protocol::{self, Message, Serializer};
use crate::server::Server;
use crate::socket::{Close, Session, WireFrame};

/// Commands queued for one session's task before POSTs wait.
const COMMAND_QUEUE: usize = 128;
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
    commands: mpsc::Sender<Command>,
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
}

/// Frames waiting for a GET, and their size.
#[derive(Default)]
struct Waiting {
    frames: Vec<String>,
    bytes: usize,
}

enum Command {
    /// Handle one message; acknowledge when done.
    Dispatch(Message, oneshot::Sender<()>),
    /// End the session (malformed input).
    Close,
}

/// Serves one long-poll request for `app`.
pub async fn handle(
    server: &Server,
    app: Arc<App>,
    method: Method,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    request: Body,
) -> Response {
    // As in Phoenix, the origin is checked first, for every method.
    if let Err(error) = auth::check_origin(&app.state().config, headers) {
        tracing::warn!(app = %app.name, transport = "longpoll", "refused: {error}");
        return body(403, None, None);
    }
    match method {
        Method::OPTIONS => preflight(headers),
        Method::GET => poll(server, app, headers, params).await,
        Method::POST => publish(server, app, headers, params, request).await,
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
    server: &Server,
    app: &App,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Option<Arc<Handle>> {
    let handle = server.longpoll().get(session_token(headers, params)?)?;
    let open = handle.app.name == app.name && !handle.shared.closed.load(Ordering::Acquire);
    open.then_some(handle)
}

async fn poll(
    server: &Server,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    let token = session_token(headers, params).map(str::to_owned);
    let Some(handle) = find(server, &app, headers, params) else {
        return open(server, app, headers, params);
    };
    let token = token.unwrap_or_default();
    handle.shared.touch();
    let window = app.state().config.limits.longpoll_window();
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
    server: &Server,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    // The official client sends its `authToken` in this header on GETs.
    let token = headers
        .get(AUTH_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(params.get("token").map(String::as_str));
    let vsn = params.get("vsn").map(String::as_str);
    let Ok((serializer, identity)) = server.admit(&app, "longpoll", vsn, token) else {
        return body(403, None, None);
    };
    let token = new_token();
    let shared = Arc::new(Shared {
        waiting: Mutex::new(Waiting::default()),
        arrived: Notify::new(),
        last_poll: Mutex::new(Instant::now()),
        closed: AtomicBool::new(false),
    });
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
    let session = Session::new(app.clone(), serializer, identity);
    let span = tracing::info_span!("socket", app = %app.name, transport = "longpoll", vsn = serializer.vsn());
    server.longpoll().lock().insert(
        token.clone(),
        Arc::new(Handle {
            app,
            serializer,
            commands,
            shared: shared.clone(),
        }),
    );
    let task = run(
        session,
        shared,
        receiver,
        server.shutdown_token(),
        server.longpoll().clone(),
        token.clone(),
    );
    server.tracker().spawn(task.instrument(span));
    body(410, Some(&[]), Some(&token))
}

async fn publish(
    server: &Server,
    app: Arc<App>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    request: Body,
) -> Response {
    let Some(handle) = find(server, &app, headers, params) else {
        return body(410, None, None);
    };
    let limit = app.state().config.limits.longpoll_body_bytes;
    let Ok(bytes) = to_bytes(request, limit).await else {
        tracing::warn!(app = %app.name, limit, "long-poll body too large or unreadable");
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
            tracing::warn!(app = %app.name, "closing long-poll session: malformed body: {error}");
            let _ = handle.commands.send(Command::Close).await;
            return body(400, None, None);
        }
    };
    let window = app.state().config.limits.longpoll_window();
    let deadline = Instant::now() + window;
    for message in messages {
        let (ack, acked) = oneshot::channel();
        let dispatched = tokio::time::timeout_at(deadline, async {
            handle
                .commands
                .send(Command::Dispatch(message, ack))
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

/// The session's task: handles dispatched messages in order, moves outbound
/// frames to the poll buffer, and ends when no GET came for 1.5 windows.
async fn run(
    mut session: Session,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
    sessions: Sessions,
    token: String,
) {
    tracing::debug!("long-poll session opened");
    let outbox = session.outbox().clone();
    let limits = session.app().state().config.limits.clone();
    let (window, limit) = (limits.longpoll_window(), limits.outbox_bytes);
    let mut frames = Vec::new();
    loop {
        if let Err(close) = collect(&mut session, &shared, &mut frames, limit).await {
            tracing::info!("closing long-poll session: {}", close.reason());
            break;
        }
        let expiry = shared.last_poll() + window * 3 / 2;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::Dispatch(message, ack)) => {
                    Box::pin(session.handle(message)).await;
                    let _ = ack.send(());
                }
                Some(Command::Close) | None => break,
            },
            () = outbox.ready() => {}
            () = tokio::time::sleep_until(expiry) => {
                if shared.last_poll() + window * 3 / 2 <= Instant::now() {
                    tracing::debug!("long-poll session expired");
                    break;
                }
            }
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.arrived.notify_waiters();
    sessions.lock().remove(&token);
    Box::pin(session.close()).await;
}

/// Moves the outbox into the poll buffer. Fails when the session must end:
/// the client fell too far behind (outbox overflowed, or the buffer passed
/// `limit`), or the server closed it.
async fn collect(
    session: &mut Session,
    shared: &Shared,
    frames: &mut Vec<WireFrame>,
    limit: usize,
) -> Result<(), Close> {
    session.take_frames(frames).await?;
    if frames.is_empty() {
        return Ok(());
    }
    {
        let mut waiting = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for frame in frames.drain(..) {
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
        }
        if waiting.bytes > limit {
            return Err(Close::SlowConsumer);
        }
    }
    shared.arrived.notify_waiters();
    Ok(())
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
