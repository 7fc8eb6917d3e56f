//! Binds the listener, loads the apps, routes each request to its app's
//! transport, and drains every connection on shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::app::{App, AppState};
use crate::auth::{self, Identity};
use crate::config::{AppConfig, Config};
use crate::protocol::Serializer;
use crate::reload;
use crate::runtime::Runtime;
use crate::socket::Close;
use crate::transport::{longpoll, websocket};
use crate::web;

/// Shared server state, cheap to clone into handlers.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Runtime,
    /// Apps by mount path; replaced whole when the config changes.
    apps: RwLock<Arc<HashMap<String, Arc<App>>>>,
    /// Held while a config is applied, so two reloads never interleave.
    applying: tokio::sync::Mutex<()>,
    /// Cancelled when the server shuts down; connections close with 1001.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Open long-poll sessions.
    longpoll: longpoll::Sessions,
    /// Open sockets allowed across all apps (`server.max_connections`).
    max_connections: usize,
}

impl Server {
    /// The app mounted at `mount`, if any.
    pub fn app(&self, mount: &str) -> Option<Arc<App>> {
        self.mounts().get(mount).cloned()
    }

    /// Every app.
    pub fn apps(&self) -> Vec<Arc<App>> {
        self.mounts().values().cloned().collect()
    }

    fn mounts(&self) -> Arc<HashMap<String, Arc<App>>> {
        self.shared
            .apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Admits a new connection to `app` on either transport: its `vsn`
    /// must match a serializer, the app and the server must have room
    /// (503 otherwise), and its token must pass (403 otherwise). A refusal
    /// is logged with its reason, never with the token.
    pub fn admit(
        &self,
        app: &App,
        transport: &str,
        vsn: Option<&str>,
        token: Option<&str>,
    ) -> Result<(Serializer, Identity), StatusCode> {
        let refuse = |status, reason: &dyn std::fmt::Display| {
            tracing::warn!(app = %app.name, transport, "refused: {reason}");
            status
        };
        let Some(serializer) = Serializer::negotiate(vsn) else {
            let reason =
                format!("the client's transport version {vsn:?} does not match 1.0.0 or 2.0.0");
            return Err(refuse(StatusCode::FORBIDDEN, &reason));
        };
        let state = app.state();
        let app_limit = state.config.limits.max_connections;
        if app.socket_count() >= app_limit {
            let reason = format!(
                "app `{}` is at its limit of {app_limit} connections",
                app.name
            );
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, &reason));
        }
        let open: usize = self.apps().iter().map(|a| a.socket_count()).sum();
        let server_limit = self.shared.max_connections;
        if open >= server_limit {
            let reason = format!("the server is at its limit of {server_limit} connections");
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, &reason));
        }
        let identity = auth::authenticate(&state.config, token)
            .map_err(|e| refuse(StatusCode::FORBIDDEN, &e))?;
        Ok((serializer, identity))
    }

    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// Makes `apps` the running set: new apps start, changed apps get their
    /// new routes and limits, removed apps close their sockets (1001).
    /// Every plugin that is new is loaded first; if any fails, nothing
    /// changes and the error says why.
    pub async fn apply(&self, apps: BTreeMap<String, AppConfig>) -> anyhow::Result<()> {
        let _applying = self.shared.applying.lock().await;
        let running: HashMap<Arc<str>, Arc<App>> = self
            .apps()
            .into_iter()
            .map(|app| (app.name.clone(), app))
            .collect();
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for (name, config) in apps {
            let current = running.get(name.as_str());
            let state = AppState::load(
                self.runtime(),
                &name,
                config,
                current.map(|a| a.state()).as_deref(),
            )
            .await
            .with_context(|| format!("app `{name}`"))?;
            match current {
                Some(app) => changed.push((app.clone(), state)),
                None => added.push(Arc::new(App::new(&name, state))),
            }
        }
        let mut mounts = HashMap::new();
        for (app, state) in changed {
            app.replace_state(state);
            mounts.insert(app.state().config.mount.clone(), app);
        }
        for app in added {
            let state = app.state();
            tracing::info!(app = %app.name, mount = state.config.mount, "app ready");
            let sources = state
                .config
                .secret_sources
                .iter()
                .chain(&state.config.api_key_sources);
            if sources.into_iter().any(|s| s.starts_with("value:")) {
                tracing::warn!(app = %app.name, "inline `value:` secrets are for development: use `env:` or `file:` in production");
            }
            mounts.insert(state.config.mount.clone(), app.clone());
        }
        for (name, app) in &running {
            if !mounts.values().any(|a| Arc::ptr_eq(a, app)) {
                tracing::info!(app = %name, "app removed: closing its sockets");
                app.close_all(Close::GoingAway);
            }
        }
        *self.shared.apps.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(mounts);
        Ok(())
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

/// Loads every app, starts serving on `config.server.listen`, and watches
/// the config and plugin files unless `server.watch` is off.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let runtime = Runtime::new(&config.server.node, config.server.cache_dir())?;
    let server = Server {
        shared: Arc::new(Shared {
            runtime,
            apps: RwLock::new(Arc::new(HashMap::new())),
            applying: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            longpoll: longpoll::Sessions::default(),
            max_connections: config.server.max_connections,
        }),
    };
    server.apply(config.apps).await?;
    if config.server.watch {
        reload::watch(server.clone(), config.source)?;
    }
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let router = api::routes().fallback(endpoint).with_state(server.clone());
    let shutdown = server.shutdown_token();
    // Frames are small and latency matters: no Nagle delay on any socket.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {error}");
        }
    });
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

/// Routes `<mount>/websocket` and `<mount>/longpoll` to their app, and
/// anything else to the apps' static files. Mounts are looked up per request
/// so apps can come and go while the server runs.
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
    // Apps' static files and Roost's own (the phoenix client): host/src/web.
    if let Some(response) = web::serve(&server, &parts).await {
        return response;
    }
    (StatusCode::NOT_FOUND, "no app is mounted here\n").into_response()
}
