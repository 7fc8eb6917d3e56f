//! Roost: a Phoenix Channels server whose channel logic runs as WebAssembly
//! components.
//!
//! # Layout
//! - [`config`]: the TOML config, validated before anything starts.
//! - [`server`]: listener, per-request routing to apps, shutdown.
//! - [`auth`]: origin checks and token verification at connect.
//! - [`api`]: the per-app HTTP API (broadcast, disconnect, status) and health.
//! - [`app`]: one app's routes, limits and pub/sub.
//! - [`transport`]: WebSocket (and long-poll) endpoints.
//! - [`socket`]: the per-connection Phoenix state machine and its outbox.
//! - [`protocol`]: the wire formats — pure code, no I/O.
//! - [`channel`]: topic patterns and routing.
//! - [`pubsub`]: per-app subscriptions and encode-once fan-out.
//! - [`presence`]: per-app presence tracking and Phoenix presence diffs.
//! - [`runtime`]: wasmtime, plugins, warm instances, host imports.
//! - [`reload`]: watches plugin files and the config, swaps in new versions.
//! - [`scaffold`]: `roost new`, a new plugin project in Rust or JavaScript.
//!
//! # How a message flows
//! 1. A client connects to `<mount>/websocket?vsn=2.0.0`; the server finds
//!    the app by mount, negotiates the serializer and starts a socket task.
//! 2. The task decodes each frame with [`protocol`] and hands it to its
//!    [`socket::Session`], strictly in order.
//! 3. `phx_join` is routed by topic pattern to a plugin; the guest's `join`
//!    runs with a context (app, topic, socket id, claims, assigns).
//! 4. Events go to `handle_in`. The guest's host calls (`push`,
//!    `broadcast`) are recorded and applied in order when it returns; the
//!    reply follows them, and the channel's new assigns are stored.
//! 5. A broadcast is encoded once per serializer and the same bytes are
//!    queued on every subscriber's outbox, unless the plugin intercepts the
//!    event, in which case each subscriber's session runs `handle_out`.
//! 6. The socket task writes its outbox out, several frames per flush; a
//!    client too slow to keep its outbox under the cap is disconnected.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod app;
pub mod auth;
pub mod channel;
pub mod config;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod socket;
pub mod transport;
