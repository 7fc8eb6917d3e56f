//! The HTTP API, per app, authenticated with one of the app's API keys
//! (`Authorization: Bearer <key>`):
//!
//! - `POST /api/apps/<app>/broadcast` `{"topic", "event", "payload"}`: as a
//!   plugin's broadcast (`Endpoint.broadcast` in Phoenix), `handle_out`
//!   interception included; answers how many subscribers it reached.
//! - `POST /api/apps/<app>/disconnect` `{"socket_id": "users_socket:<sub>"}`:
//!   closes all of that user's sockets with a code that makes them
//!   reconnect, on every node of a cluster; answers how many sockets closed
//!   here and how many other nodes were told.
//! - `GET /api/apps/<app>/status`: the node that answered, plugins
//!   (version, load time, last reload error), sockets and channels (this
//!   node's), and in a cluster its view of the cluster (Redis reachable or
//!   degraded, the nodes alive, messages published, dropped, received).
//!
//! In a cluster, broadcasts and disconnects reach every node; the counts
//! in answers are this node's.
//!
//! And `GET /health` for load balancers, unauthenticated.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::{App, RateLimited};
use crate::apps::Apps;
use crate::protocol::{self, Payload};

pub fn routes() -> Router<Apps> {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/apps/{app}/broadcast", post(broadcast))
        .route("/api/apps/{app}/disconnect", post(disconnect))
        .route("/api/apps/{app}/status", get(status))
}

/// An API error: a status and a JSON `{"error": …}` body.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The app named in the path, if the request carries one of its API keys.
fn authorized(apps: &Apps, name: &str, headers: &HeaderMap) -> Result<Arc<App>, ApiError> {
    let unauthorized = |why: &str| {
        tracing::warn!(app = name, "api request refused: {why}");
        ApiError(StatusCode::UNAUTHORIZED, why.to_owned())
    };
    // An unknown app answers as a wrong key does, so the API does not tell
    // anyone without a key which app names exist.
    let Some(app) = apps.by_name(name) else {
        return Err(unauthorized(
            "the API key is not one of the app's `api_keys`",
        ));
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer <api key>`"))?;
    let valid = app
        .state()
        .config()
        .api_keys
        .iter()
        .any(|k| bool::from(k.bytes().ct_eq(key.as_bytes())));
    if valid {
        Ok(app)
    } else {
        Err(unauthorized(
            "the API key is not one of the app's `api_keys`",
        ))
    }
}

/// A body that could not be read as the request: 413 when it is past the
/// body limit, 400 for anything else about it.
fn rejected(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    let status = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError(status, rejection.body_text())
}

#[derive(Deserialize)]
struct BroadcastRequest {
    topic: String,
    event: String,
    #[serde(default = "empty_object")]
    payload: Value,
}

fn empty_object() -> Value {
    json!({})
}

async fn broadcast(
    State(apps): State<Apps>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<BroadcastRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let app = authorized(&apps, &name, &headers)?;
    let Json(request) = body.map_err(rejected)?;
    if !request.payload.is_object() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "`payload` must be a JSON object".into(),
        ));
    }
    let payload = Payload::from_value(&request.payload);
    // Refused whole rather than sent: a frame past the app's frame limit
    // would overflow every subscriber's outbox and disconnect them all.
    let len = protocol::broadcast_len(&request.topic, &request.event, &payload);
    let limit = app.state().limits().max_frame_bytes;
    if len > limit {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the broadcast is {len} bytes as a frame, over the app's max_frame_bytes of {limit}"
            ),
        ));
    }
    let subscribers = app
        .broadcast(&request.topic, &request.event, &payload, None)
        .map_err(|RateLimited| {
            ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited: the app is over its limits.broadcasts_per_second".to_owned(),
            )
        })?;
    Ok(Json(json!({ "subscribers": subscribers })))
}

#[derive(Deserialize)]
struct DisconnectRequest {
    socket_id: String,
}

async fn disconnect(
    State(apps): State<Apps>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<DisconnectRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let app = authorized(&apps, &name, &headers)?;
    let Json(request) = body.map_err(rejected)?;
    let (sockets, nodes) = app.disconnect_everywhere(&request.socket_id).await;
    tracing::info!(
        app = name,
        socket_id = request.socket_id,
        sockets,
        nodes,
        "disconnected through the api"
    );
    if apps.broker().is_some() {
        return Ok(Json(json!({ "sockets": sockets, "nodes": nodes })));
    }
    Ok(Json(json!({ "sockets": sockets })))
}

async fn status(
    State(apps): State<Apps>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let app = authorized(&apps, &name, &headers)?;
    let state = app.state();
    let plugins: Vec<_> = state.router().slots().map(|slot| slot.status()).collect();
    let mut status = json!({
        "app": &**app.name(),
        "node": apps.node(),
        "mount": state.config().mount,
        "sockets": app.socket_count(),
        "channels": app.channel_count(),
        "plugins": plugins,
    });
    if let (Some(cluster), Value::Object(map)) = (apps.cluster_status(), &mut status) {
        map.insert(
            "cluster".into(),
            serde_json::to_value(cluster).unwrap_or(Value::Null),
        );
    }
    Ok(Json(status))
}
