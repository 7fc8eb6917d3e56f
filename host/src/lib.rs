//! Roost: a Phoenix Channels server whose channel logic runs as WebAssembly
//! components.
//!
//! # Layout
//! - [`server`]: the composition root — builds the parts below from the
//!   config, wires them, serves HTTP. Only `main` and tests use it.
//! - [`shutdown`]: the cancellation token and task tracker, `drain(timeout)`.
//! - [`config`]: the TOML config, validated before anything starts.
//! - [`apps`]: the running apps by mount, connection admission and limits,
//!   applying a changed config.
//! - [`app`]: one app — its state (config, routes), pub/sub, presence,
//!   sockets — and [`app::App::broadcast`], the one way to broadcast.
//! - [`listener`]: accepting HTTP connections (header-read timeout, peer
//!   address, per-address cap on HTTP connections).
//! - [`clients`]: limits per client address (open sockets, connection rate).
//! - [`auth`]: origin checks and token verification at connect.
//! - [`transport`]: the WebSocket and long-poll adapters onto the socket loop.
//! - [`socket`]: the per-connection actor ([`socket::run`]) and its Phoenix
//!   state machine ([`socket::Session`]).
//! - [`mailbox`]: a socket's two-lane inbox (frames, commands) and the close
//!   codes.
//! - [`channel`]: which plugin serves a topic.
//! - [`runtime`]: wasmtime, compiled plugins, warm instances, host imports.
//! - [`pubsub`]: per-app subscriptions and encode-once fan-out, and the
//!   broker that carries broadcasts and presence to the other nodes of a
//!   cluster (in-process by default, Redis with `[cluster]`).
//! - [`cluster`]: the link to the cluster's Redis, shared by its users.
//! - [`presence`]: per-app presence tracking and Phoenix presence diffs.
//! - [`storage`]: plugins' key-value storage, one namespace per app.
//! - [`protocol`]: the wire formats and topic patterns — pure code, no I/O.
//! - [`reload`]: watches plugin files and the config, swaps in new versions.
//! - [`scaffold`]: `roost new`, a new plugin project in Rust or JavaScript.
//! - [`dev`]: `roost dev` — rebuilds a plugin when its sources change (the
//!   server's hot reload then swaps it in).
//! - [`api`]: the per-app HTTP API (broadcast, disconnect, status) and health.
//! - [`web`]: each app's static files and the official phoenix client, over
//!   plain HTTP.
//! - [`admin`]: the operator's side — `/metrics`, the live `/dashboard` and
//!   its feed, behind the admin keys.
//! - [`metrics`]: every metric name in one place; the others count through
//!   handles it gives them.
//!
//! No module imports one that imports it back (a test checks the `use
//! crate::` lines); `protocol`, `config`, `mailbox`, `shutdown` and
//! `metrics` are leaves.
//!
//! # How a message flows
//! 1. **socket** — a client connects to `<mount>/websocket?vsn=2.0.0` (or
//!    `/longpoll`); the transport admits it (`apps`: serializer, capacity,
//!    token) and runs [`socket::run`] over an adapter for its connection.
//!    The loop reads decoded messages and the socket's mailbox, in order.
//! 2. **session** — each message goes to the [`socket::Session`]:
//!    heartbeats, joins, leaves; `phx_join` is routed by topic pattern
//!    ([`channel`]) to a plugin.
//! 3. **runtime** — the guest's `join` / `handle_in` runs on a warm instance
//!    with a context (topic, socket id, claims, assigns) and a deadline; its
//!    host calls (`push`, `broadcast`, presence) are recorded and applied by
//!    the session in order when it returns, after the reply for `join`.
//! 4. **pubsub** — a broadcast goes through [`app::App::broadcast`]:
//!    encoded once per serializer, the same bytes posted to every
//!    subscriber's mailbox, unless the plugin intercepts the event, in which
//!    case each subscriber's session gets a command to run `handle_out`. In
//!    a cluster it is then published to Redis once, and every other node
//!    with subscribers on the topic fans it out the same way.
//! 5. **subscribers** — each socket's loop writes what its mailbox holds,
//!    several frames per flush; a client too slow to keep its mailbox under
//!    the cap is disconnected (1008).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod api;
pub mod app;
pub mod apps;
pub mod auth;
pub mod channel;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod pubsub;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod server;
pub mod shutdown;
pub mod socket;
pub mod storage;
pub mod transport;
pub mod web;
