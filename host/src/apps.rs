//! The running apps: which app is mounted where, admission of new
//! connections (serializer, capacity, token), and applying a new set of app
//! configs while the server runs.
//!
//! In a cluster, the registry holds the server's broker and every app it
//! starts joins it ([`App::clustered`]).
//!
//! Capacity is taken, not checked: a connection holds a permit of the
//! server-wide semaphore (`server.max_connections`), one of its app's
//! (`limits.max_connections`) and one of its client address's (`clients`)
//! for its whole life, all inside its session, so concurrent connects can
//! never overshoot a limit. No app can starve another: each keeps
//! `limits.reserved_connections` places that the others cannot take, and
//! no client address can hold more than its share of any app.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::{App, AppPermit, AppState};
use crate::auth::{self, Identity};
use crate::clients::{ClientPermit, Clients, Refusal};
use crate::config::{AppConfig, ServerConfig};
use crate::mailbox::Close;
use crate::metrics::{ConnectionGauge, refusal};
use crate::protocol::Serializer;
use crate::pubsub::{ClusterStatus, RedisBroker};
use crate::runtime::Runtime;
use crate::storage::Storage;

/// Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Apps {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Runtime,
    storage: Storage,
    /// Apps by mount path; replaced whole when the config changes, read
    /// without a lock on every request.
    mounts: ArcSwap<HashMap<String, Arc<App>>>,
    /// Held while a config is applied, so two reloads never interleave.
    applying: tokio::sync::Mutex<()>,
    /// One permit per open connection, all apps together.
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// Held while a connection is admitted: the reservation check and the
    /// taking of a permit are one step.
    admitting: std::sync::Mutex<()>,
    /// Per-client-address limits.
    clients: Clients,
    /// This node's name (`server.node`).
    node: Arc<str>,
    /// The cluster's broker; none on a single node.
    broker: Option<RedisBroker>,
}

/// A connection let in: how to talk to it, who it is, and its place in the
/// server's and the app's connection limits (released when dropped).
pub struct Admission {
    pub serializer: Serializer,
    pub identity: Identity,
    pub permit: ConnectionPermit,
}

/// A connection's places in the server's, its app's and its client
/// address's limits.
pub struct ConnectionPermit {
    _server: OwnedSemaphorePermit,
    _app: AppPermit,
    _client: Option<ClientPermit>,
    /// Counts the connection in `roost_sockets_active` while it lives.
    _gauge: Option<ConnectionGauge>,
}

impl ConnectionPermit {
    pub fn new(server: OwnedSemaphorePermit, app: AppPermit) -> Self {
        Self {
            _server: server,
            _app: app,
            _client: None,
            _gauge: None,
        }
    }

    /// Also counts the connection in the app's socket gauge.
    fn counted(self, gauge: ConnectionGauge) -> Self {
        Self {
            _gauge: Some(gauge),
            ..self
        }
    }
}

impl Apps {
    /// The apps of the node `server` configures, in the cluster of `broker`
    /// if any.
    pub fn new(
        runtime: Runtime,
        storage: Storage,
        clients: Clients,
        server: &ServerConfig,
        broker: Option<RedisBroker>,
    ) -> Self {
        let max_connections = server.max_connections;
        Self {
            shared: Arc::new(Shared {
                admitting: std::sync::Mutex::new(()),
                clients,
                runtime,
                storage,
                mounts: ArcSwap::from_pointee(HashMap::new()),
                applying: tokio::sync::Mutex::new(()),
                connections: Arc::new(Semaphore::new(max_connections)),
                max_connections,
                node: server.node.as_str().into(),
                broker,
            }),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// The cluster's broker, if this node is in one.
    pub fn broker(&self) -> Option<&RedisBroker> {
        self.shared.broker.as_ref()
    }

    /// The cluster as this node sees it; none on a single node.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        self.shared.broker.as_ref().map(RedisBroker::status)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// The app mounted at `mount`, if any.
    pub fn by_mount(&self, mount: &str) -> Option<Arc<App>> {
        self.shared.mounts.load().get(mount).cloned()
    }

    /// The app called `name`, if any.
    pub fn by_name(&self, name: &str) -> Option<Arc<App>> {
        self.shared
            .mounts
            .load()
            .values()
            .find(|app| &**app.name() == name)
            .cloned()
    }

    /// Every app.
    pub fn all(&self) -> Vec<Arc<App>> {
        self.shared.mounts.load().values().cloned().collect()
    }

    /// Open connections, all apps together.
    pub fn connection_count(&self) -> usize {
        self.shared.max_connections - self.shared.connections.available_permits()
    }

    /// Admits a new connection to `app` on either transport: its `vsn`
    /// must match a serializer (403 otherwise), the server and the app must
    /// have room (503), and its token must pass (403). A refusal is logged
    /// with its reason, never with the token.
    pub fn admit(
        &self,
        app: &Arc<App>,
        transport: &str,
        vsn: Option<&str>,
        token: Option<&str>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Admission, StatusCode> {
        let refuse = |status, metric: &str, reason: &dyn std::fmt::Display| {
            app.metrics().refused(transport, metric);
            tracing::warn!(app = %app.name(), transport, "refused: {reason}");
            status
        };
        let Some(serializer) = Serializer::negotiate(vsn) else {
            let reason =
                format!("the client's transport version {vsn:?} does not match 1.0.0 or 2.0.0");
            return Err(refuse(StatusCode::FORBIDDEN, refusal::VSN, &reason));
        };
        let client = match client.map(|ip| (ip, self.shared.clients.socket(ip))) {
            None => None,
            Some((_, Ok(permit))) => Some(permit),
            Some((ip, Err(why))) => {
                let metric = match why {
                    Refusal::TooMany(_) => refusal::CLIENT_FULL,
                    Refusal::TooFast => refusal::CLIENT_RATE,
                };
                let reason = format!("{ip}: {why}");
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, metric, &reason));
            }
        };
        let server = {
            let _admitting = self
                .shared
                .admitting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // The places other apps have reserved and not used are not
            // this app's to take. All reservations together hold back at
            // most half of the server.
            let apps = self.all();
            let share = self.shared.max_connections / (2 * apps.len().max(1));
            let reserved: usize = apps
                .iter()
                .filter(|other| !Arc::ptr_eq(other, app))
                .map(|other| other.unused_reservation(share))
                .sum();
            let free = self.shared.connections.available_permits();
            match free > reserved {
                true => self.shared.connections.clone().try_acquire_owned().ok(),
                false => None,
            }
        };
        let Some(server) = server else {
            let reason = format!(
                "the server is at its limit of {} connections (the rest reserved for other apps)",
                self.shared.max_connections
            );
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                refusal::SERVER_FULL,
                &reason,
            ));
        };
        let Some(app_permit) = app.admit() else {
            let reason = format!(
                "app `{}` is at its limit of {} connections",
                app.name(),
                app.state().limits().max_connections
            );
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                refusal::APP_FULL,
                &reason,
            ));
        };
        let identity = auth::authenticate(app.state().config(), token)
            .map_err(|e| refuse(StatusCode::FORBIDDEN, e.metric(), &e))?;
        let permit = ConnectionPermit {
            _client: client,
            ..ConnectionPermit::new(server, app_permit)
        };
        Ok(Admission {
            serializer,
            identity,
            permit: permit.counted(app.metrics().connected(transport)),
        })
    }

    /// Makes `apps` the running set: new apps start, changed apps get their
    /// new routes and limits, removed apps close their sockets (1001).
    /// Every plugin that is new is loaded first; if any fails, nothing
    /// changes and the error says why.
    pub async fn apply(&self, apps: BTreeMap<String, AppConfig>) -> anyhow::Result<()> {
        let _applying = self.shared.applying.lock().await;
        let running: HashMap<Arc<str>, Arc<App>> = self
            .all()
            .into_iter()
            .map(|app| (app.name().clone(), app))
            .collect();
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for (name, config) in apps {
            let current = running.get(name.as_str());
            let state = AppState::load(
                self.runtime(),
                &self.shared.storage,
                &name,
                config,
                current.map(|a| a.state()).as_deref(),
            )
            .await
            .with_context(|| format!("app `{name}`"))?;
            match current {
                Some(app) => changed.push((app.clone(), state)),
                None => {
                    let metrics = self.runtime().metrics().app(&name);
                    added.push(match &self.shared.broker {
                        Some(broker) => App::clustered(&name, state, metrics, broker),
                        None => Arc::new(App::with_metrics(&name, state, metrics)),
                    });
                }
            }
        }
        let mut mounts = HashMap::new();
        for (app, state) in changed {
            app.replace_state(state);
            mounts.insert(app.state().config().mount.clone(), app);
        }
        for app in added {
            let state = app.state();
            let config = state.config();
            tracing::info!(app = %app.name(), mount = config.mount, "app ready");
            let sources = config.secret_sources.iter().chain(&config.api_key_sources);
            if sources.into_iter().any(|s| s.starts_with("value:")) {
                tracing::warn!(app = %app.name(), "inline `value:` secrets are for development: use `env:` or `file:` in production");
            }
            mounts.insert(config.mount.clone(), app.clone());
        }
        for (name, app) in &running {
            if !mounts.values().any(|a| Arc::ptr_eq(a, app)) {
                tracing::info!(app = %name, "app removed: closing its sockets");
                app.close_all(Close::GoingAway);
            }
        }
        self.shared.mounts.store(Arc::new(mounts));
        Ok(())
    }
}
