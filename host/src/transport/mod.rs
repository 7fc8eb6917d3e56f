//! The transports a client connects with, on each app's mount:
//! `<mount>/websocket` and `<mount>/longpoll`. Each adapts its connection to
//! a `socket::Connection` and runs it with `socket::run`.
//!
//! - `websocket`: the upgrade, and the WebSocket adapter.
//! - `longpoll`: sessions opened by GET, fed by POST, drained by GET; the
//!   long-poll adapter and this transport's registry of sessions.
//!
//! Mounts are looked up per request, so apps can come and go while the
//! server runs.

pub mod longpoll;
pub mod websocket;

use std::collections::HashMap;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use std::net::SocketAddr;

use axum::extract::ConnectInfo;

use crate::apps::Apps;
use crate::clients::Clients;
use crate::shutdown::Shutdown;

/// What the transports need of the server. Cheap to clone.
#[derive(Clone)]
pub struct Transports {
    apps: Apps,
    shutdown: Shutdown,
    longpoll: longpoll::Sessions,
    clients: Clients,
}

impl Transports {
    pub fn new(apps: Apps, shutdown: Shutdown, clients: Clients) -> Self {
        Self {
            apps,
            shutdown,
            longpoll: longpoll::Sessions::default(),
            clients,
        }
    }

    /// Open long-poll sessions.
    pub fn longpoll_sessions(&self) -> &longpoll::Sessions {
        &self.longpoll
    }

    /// Serves `request` if it is for an app's `/websocket` or `/longpoll`;
    /// hands it back otherwise.
    pub async fn serve(&self, request: Request) -> Result<Response, Request> {
        let path = request.uri().path();
        let (app, websocket) = match (
            path.strip_suffix("/websocket"),
            path.strip_suffix("/longpoll"),
        ) {
            (Some(mount), _) => (self.apps.by_mount(mount), true),
            (_, Some(mount)) => (self.apps.by_mount(mount), false),
            _ => (None, false),
        };
        let Some(app) = app else {
            return Err(request);
        };
        let (mut parts, body) = request.into_parts();
        let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) else {
            return Ok((StatusCode::BAD_REQUEST, "invalid query string\n").into_response());
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let client = self.clients.address(&parts.headers, peer);
        if !websocket {
            let (method, headers) = (parts.method, &parts.headers);
            return Ok(longpoll::handle(self, app, method, headers, &params, body, client).await);
        }
        Ok(
            match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(upgrade) => {
                    websocket::upgrade(self, app, upgrade, &parts.headers, &params, client)
                }
                Err(rejection) => rejection.into_response(),
            },
        )
    }
}
