//! Binds the listener, loads the apps, routes each request to its app's
//! transport, and drains every connection on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::transport::{longpoll, websocket};

/// Shared server state, cheap to clone into handlers.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    /// Apps by mount path.
    apps: RwLock<HashMap<String, Arc<App>>>,
    /// Cancelled when the server shuts down; connections close with 1001.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Open long-poll sessions.
    longpoll: longpoll::Sessions,
}

impl Server {
    /// The app mounted at `mount`, if any.
    pub fn app(&self, mount: &str) -> Option<Arc<App>> {
        self.shared
            .apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(mount)
            .cloned()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    pub fn tracker(&self) -> TaskTracker {
        self.shared.tracker.clone()
    }

    pub fn longpoll(&self) -> &longpoll::Sessions {
        &self.shared.longpoll
    }
}

/// A server that is accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    server: Server,
    serve: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The server's shared state, e.g. to broadcast as `Endpoint.broadcast` would.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Closes every connection (1001, so clients reconnect elsewhere) and
    /// waits for their tasks to finish.
    pub async fn shutdown(self) {
        let shared = &self.server.shared;
        shared.shutdown.cancel();
        shared.tracker.close();
        let _ = self.serve.await;
        shared.tracker.wait().await;
    }
}

/// Loads every app and starts serving on `config.server.listen`.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let runtime = Runtime::new(&config.server.node)?;
    let mut apps = HashMap::new();
    for (name, app_config) in config.apps {
        let mount = app_config.mount.clone();
        let app = App::load(&runtime, &name, app_config)
            .await
            .with_context(|| format!("app `{name}`"))?;
        tracing::info!(app = name, mount, "app ready");
        apps.insert(mount, Arc::new(app));
    }
    let server = Server {
        shared: Arc::new(Shared {
            apps: RwLock::new(apps),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            longpoll: longpoll::Sessions::default(),
        }),
    };
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let router = Router::new().fallback(endpoint).with_state(server.clone());
    let shutdown = server.shutdown_token();
    let serve = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%addr, "listening");
    Ok(Running {
        addr,
        server,
        serve,
    })
}

/// Routes `<mount>/websocket` and `<mount>/longpoll` to their app. Mounts
/// are looked up per request so apps can come and go while the server runs.
async fn endpoint(State(server): State<Server>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) else {
        return (StatusCode::BAD_REQUEST, "invalid query string\n").into_response();
    };
    let path = parts.uri.path().to_owned();
    if let Some(app) = path
        .strip_suffix("/websocket")
        .and_then(|mount| server.app(mount))
    {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &server).await {
            Ok(upgrade) => websocket::upgrade(&server, app, upgrade, &parts.headers, &params),
            Err(rejection) => rejection.into_response(),
        };
    }
    if let Some(app) = path
        .strip_suffix("/longpoll")
        .and_then(|mount| server.app(mount))
    {
        return longpoll::handle(&server, app, parts.method, &parts.headers, &params, body).await;
    }
    (StatusCode::NOT_FOUND, "no app is mounted here\n").into_response()
}
