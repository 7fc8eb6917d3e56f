//! The composition root: builds every part of a running server from the
//! config and wires them together — the metrics, the plugin runtime, the
//! storage, the cluster broker (with `[cluster]`), the apps registry, the
//! shutdown, the per-address limits, the transports, the HTTP API, the admin
//! side (dashboard, `/metrics`), the file watcher and the listener — then
//! serves HTTP until shut down. Only `main` and the tests use this module;
//! every other module is given just the parts it uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminSettings};
use crate::api;
use crate::app::App;
use crate::apps::Apps;
use crate::clients::Clients;
use crate::cluster::RedisLink;
use crate::config::{Config, ServerConfig};
use crate::listener;
use crate::metrics::Metrics;
use crate::presence::NodeId;
use crate::pubsub::RedisBroker;
use crate::reload;
use crate::runtime::Runtime;
use crate::shutdown::Shutdown;
use crate::storage::Storage;
use crate::transport::{Transports, longpoll};
use crate::web;

/// A server that is accepting connections.
pub struct Running {
    pub addr: SocketAddr,
    apps: Apps,
    transports: Transports,
    shutdown: Shutdown,
    drain_timeout: Duration,
    serve: JoinHandle<()>,
}

impl Running {
    /// The app mounted at `mount`, e.g. to broadcast as `Endpoint.broadcast` would.
    pub fn app(&self, mount: &str) -> Option<Arc<App>> {
        self.apps.by_mount(mount)
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn runtime(&self) -> &Runtime {
        self.apps.runtime()
    }

    /// The server's shutdown: tasks spawned through it end, and are waited
    /// for, when the server shuts down (`roost dev`'s rebuild loops).
    pub fn tasks(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn longpoll_sessions(&self) -> &longpoll::Sessions {
        self.transports.longpoll_sessions()
    }

    /// Closes every connection (1001, so clients reconnect elsewhere), lets
    /// every channel terminate, and waits for it all up to the config's
    /// `server.drain_timeout_ms`; what is still running then is abandoned.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        let left = self.shutdown.drain(self.drain_timeout).await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                "drain timed out after {:?}: exiting with tasks still running",
                self.drain_timeout
            );
        }
        // After the sockets: their channels' leaves still reach the other
        // nodes. The broker's tasks are not tracked for that reason.
        if let Some(broker) = self.apps.broker() {
            broker.stop().await;
        }
        // Once every connection is gone, the listener's own graceful
        // shutdown has nothing left to wait for.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.serve).await;
        tracing::info!(elapsed_ms = started.elapsed().as_millis(), "shut down");
    }
}

/// Loads every app, starts serving on `config.server.listen`, and watches
/// the config and plugin files unless `server.watch` is off.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let runtime = Runtime::with_metrics(
        &config.server.node,
        config.server.cache_dir(),
        metrics.clone(),
    )?;
    let clients = Clients::new(&config.server);
    let data_dir = config.server.data_dir.clone();
    // In a cluster, one link to Redis carries broadcasts, presence and
    // plugin storage alike.
    let (storage, broker) = match &config.cluster {
        Some(cluster) => {
            let link = RedisLink::new(cluster)?;
            let node = NodeId::random();
            let broker = RedisBroker::start(link.clone(), cluster, node, &config.server.node)?;
            (Storage::clustered(data_dir, link), Some(broker))
        }
        None => (Storage::new(data_dir), None),
    };
    let apps = Apps::new(runtime, storage, clients.clone(), &config.server, broker);
    let shutdown = Shutdown::default();
    apps.apply(config.apps).await?;
    if config.server.watch {
        reload::watch(apps.clone(), shutdown.clone(), config.source)?;
    }
    let transports = Transports::new(apps.clone(), shutdown.clone(), clients.clone());
    let admin = start_admin(&config.server, &apps, metrics, &shutdown, &transports);
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let rest = axum::Router::new().fallback(fallback).with_state(Fallback {
        apps: apps.clone(),
        transports: transports.clone(),
    });
    let router = api::routes()
        .with_state(apps.clone())
        .merge(admin::routes(admin))
        .fallback_service(rest);
    let serve = tokio::spawn(listener::serve(
        listener,
        router,
        shutdown.clone(),
        clients,
        config.server.header_read_timeout(),
    ));
    tracing::info!(%addr, "listening");
    if !config.server.admin_keys.is_empty() {
        tracing::info!("dashboard: http://{addr}/dashboard");
    }
    Ok(Running {
        addr,
        apps,
        transports,
        shutdown,
        drain_timeout: config.server.drain_timeout(),
        serve,
    })
}

/// The dashboard and `/metrics`, on when the config has admin keys.
fn start_admin(
    server: &ServerConfig,
    apps: &Apps,
    metrics: Metrics,
    shutdown: &Shutdown,
    transports: &Transports,
) -> Admin {
    if server.admin_keys.is_empty() {
        tracing::info!("no `server.admin_keys`: /dashboard is off");
    } else if server
        .admin_key_sources
        .iter()
        .any(|s| s.starts_with("value:"))
    {
        tracing::warn!(
            "inline `value:` admin keys are for development: use `env:` or `file:` in production"
        );
    }
    let sessions = transports.longpoll_sessions().clone();
    let settings = AdminSettings {
        keys: server.admin_keys.clone(),
        metrics_public: server.metrics_public,
        node: server.node.clone(),
    };
    Admin::new(
        apps.clone(),
        metrics,
        settings,
        shutdown.clone(),
        move || sessions.len(),
    )
}

/// What requests outside the API need.
#[derive(Clone)]
struct Fallback {
    apps: Apps,
    transports: Transports,
}

/// The app transports, then web pages (an app's static files, Roost's own
/// files), then the front page, then 404.
async fn fallback(State(fallback): State<Fallback>, request: Request) -> Response {
    let request = match fallback.transports.serve(request).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    let (parts, _) = request.into_parts();
    if let Some(response) = web::serve(&fallback.apps, &parts).await {
        return response;
    }
    if parts.method == Method::GET && parts.uri.path() == "/" {
        return front_page(&fallback.apps);
    }
    (StatusCode::NOT_FOUND, "no app is mounted here\n").into_response()
}

/// `GET /` when no app serves a page there: where the sockets are.
fn front_page(apps: &Apps) -> Response {
    let mut text = String::from("Roost is running. Connect a Phoenix client to:\n");
    let mut apps = apps.all();
    apps.sort_by(|a, b| a.name().cmp(b.name()));
    for app in apps {
        let mount = app.state().config().mount.clone();
        text.push_str(&format!(
            "  app {}: {mount}/websocket (WebSocket), {mount}/longpoll (long-poll)\n",
            app.name()
        ));
    }
    text.push_str("Health: /health. HTTP API: /api/apps/<app>/{broadcast,disconnect,status}.\n");
    text.push_str("Operators: /dashboard and /metrics (with an admin key).\n");
    (StatusCode::OK, text).into_response()
}
