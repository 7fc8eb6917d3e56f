//! The operator's side: Prometheus metrics at `/metrics` and the live
//! dashboard at `/dashboard`, both behind the admin keys
//! (`server.admin_keys`, sent as `Authorization: Bearer <key>`).
//!
//! # Layout
//! - this file: the routes and the admin-key check.
//! - [`dashboard`]: the snapshot the page shows, and the once-a-second
//!   ticker that derives rates from the `metrics` counters.
//! - [`socket`]: `/_roost/admin/websocket`, where the page joins
//!   `roost:dashboard` with the official client and gets a snapshot a second.
//! - `www/`: the page itself (HTML, CSS, one JS module), embedded in the
//!   binary.
//!
//! Routes:
//! - `GET /metrics`: every metric in the Prometheus text format; open when
//!   `server.metrics_public = true`.
//! - `GET /dashboard`: the page. It holds no data, so it is served without a
//!   key and asks for one (kept in the tab's sessionStorage); a request that
//!   carries a valid bearer key (say, from a proxy) gets the page with the
//!   key in it, and a wrong one gets 401.
//! - `GET /dashboard/state`: the snapshot as JSON.
//! - `/_roost/admin/websocket`: the live feed.
//!
//! With no admin key configured, all of them answer 404 with a body saying
//! how to turn them on (except `/metrics` when public): Roost never makes up
//! a default key.

mod dashboard;
mod socket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use dashboard::{Dashboard, Rates, TICK};
pub use socket::{SNAPSHOT, TOPIC};

use crate::apps::Apps;
use crate::config::Secret;
use crate::metrics::{self, Metrics};
use crate::shutdown::Shutdown;

/// Admin sockets open at once: a few operators' tabs. Bounded, because a
/// socket may be opened before its join proves the key.
const MAX_SOCKETS: usize = 32;

/// Where the live feed is mounted (`<mount>/websocket`).
pub const SOCKET_MOUNT: &str = "/_roost/admin";

const INDEX_HTML: &str = include_str!("www/index.html");
const DASHBOARD_JS: &str = include_str!("www/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("www/dashboard.css");

/// What the body of a 404 says when no admin key is configured.
const NOT_CONFIGURED: &str = "the dashboard and /metrics are off: no `server.admin_keys` is configured.\n\
     Add one to the config and restart, e.g.\n\n\
     [server]\n\
     admin_keys = [\"env:ROOST_ADMIN_KEY\"]   # or \"file:admin.key\"; at least 16 bytes\n\
     metrics_public = false                  # true serves /metrics without a key\n";

/// The admin side's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

struct Shared {
    keys: Vec<Secret>,
    metrics_public: bool,
    node: String,
    dashboard: Dashboard,
    shutdown: Shutdown,
    sockets: Arc<Semaphore>,
}

impl Admin {
    /// The admin side over `apps`, counting into `metrics`; its ticker runs
    /// until `shutdown`. `longpoll_sessions` says how many long-poll
    /// sessions are open.
    pub fn new(
        apps: Apps,
        metrics: Metrics,
        settings: AdminSettings,
        shutdown: Shutdown,
        longpoll_sessions: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        let dashboard = Dashboard::new(apps, metrics, &settings.node, longpoll_sessions);
        dashboard.run(&shutdown);
        Self {
            shared: Arc::new(Shared {
                keys: settings.keys,
                metrics_public: settings.metrics_public,
                node: settings.node,
                dashboard,
                shutdown,
                sockets: Arc::new(Semaphore::new(MAX_SOCKETS)),
            }),
        }
    }

    pub fn dashboard(&self) -> &Dashboard {
        &self.shared.dashboard
    }

    fn node(&self) -> &str {
        &self.shared.node
    }

    fn enabled(&self) -> bool {
        !self.shared.keys.is_empty()
    }

    /// Whether `key` is one of the admin keys (constant time per key).
    fn key_is_valid(&self, key: Option<&str>) -> bool {
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return false;
        };
        // Every key is compared, so timing says nothing about which matched.
        self.shared.keys.iter().fold(false, |found, k| {
            found | bool::from(k.bytes().ct_eq(key.as_bytes()))
        })
    }

    /// `None` if the request carries a valid admin key; else the refusal
    /// to answer with (404 when no key is configured, else 401).
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        if !self.enabled() {
            return Some(not_configured());
        }
        match bearer(headers) {
            None => Some(unauthorized("missing `Authorization: Bearer <admin key>`")),
            Some(key) if self.key_is_valid(Some(key)) => None,
            Some(_) => Some(unauthorized(
                "the key is not one of the server's `admin_keys`",
            )),
        }
    }
}

/// What the admin side takes from the config.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub keys: Vec<Secret>,
    pub metrics_public: bool,
    /// This node's name.
    pub node: String,
}

/// The admin routes, for the server's router.
pub fn routes(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/dashboard.js", get(script))
        .route("/dashboard/dashboard.css", get(style))
        .route("/dashboard/state", get(state))
        .route(&format!("{SOCKET_MOUNT}/websocket"), get(live))
        .with_state(admin)
}

async fn serve_metrics(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.shared.metrics_public
        && let Some(refused) = admin.refusal(&headers)
    {
        return refused;
    }
    let dashboard = admin.dashboard();
    dashboard.refresh_gauges();
    let text = dashboard.metrics().encode();
    (
        [
            (header::CONTENT_TYPE, metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

async fn page(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.enabled() {
        return not_configured();
    }
    // A request that brings its key (a proxy adding the header, say) gets
    // the page with the key in it, so nobody has to type it.
    let html = match bearer(&headers) {
        None => INDEX_HTML.replace("{{ADMIN_KEY}}", ""),
        Some(key) if admin.key_is_valid(Some(key)) => {
            INDEX_HTML.replace("{{ADMIN_KEY}}", &escape_attribute(key))
        }
        Some(_) => {
            return unauthorized("the key is not one of the server's `admin_keys`");
        }
    };
    let html = html.replace("{{NODE}}", &escape_attribute(admin.node()));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn script(State(admin): State<Admin>) -> Response {
    asset(&admin, DASHBOARD_JS, "text/javascript; charset=utf-8")
}

async fn style(State(admin): State<Admin>) -> Response {
    asset(&admin, DASHBOARD_CSS, "text/css; charset=utf-8")
}

fn asset(admin: &Admin, body: &'static str, content_type: &'static str) -> Response {
    if !admin.enabled() {
        return not_configured();
    }
    // Embedded in the binary: they change only with Roost itself.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn state(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refused) = admin.refusal(&headers) {
        return refused;
    }
    let snapshot = admin.dashboard().snapshot();
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(snapshot)).into_response()
}

async fn live(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !admin.enabled() {
        return not_configured();
    }
    match upgrade {
        Ok(upgrade) => socket::upgrade(&admin, upgrade, &headers, &params),
        Err(rejection) => rejection.into_response(),
    }
}

/// The key of `Authorization: Bearer <key>`, if the header is there.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn not_configured() -> Response {
    (StatusCode::NOT_FOUND, NOT_CONFIGURED).into_response()
}

fn unauthorized(why: &str) -> Response {
    tracing::warn!("admin request refused: {why}");
    let mut response = (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"roost admin\""),
    );
    response
}

/// Text made safe inside a double-quoted HTML attribute.
fn escape_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_escaped() {
        assert_eq!(
            escape_attribute(r#"a"b<c>&'d"#),
            "a&quot;b&lt;c&gt;&amp;&#39;d"
        );
    }
}
