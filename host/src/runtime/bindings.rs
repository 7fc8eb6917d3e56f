//! The `roost:channel` world for wasmtime, and the host side of its imports.
//!
//! Imports do no I/O: `push` and `broadcast` are recorded as [`Effect`]s in
//! call order, and the socket applies them once the callback returns (after
//! the reply for `join`). So a guest cannot block on the host, and a trap
//! halfway through a callback applies nothing.
//!
//! The one exception is presence: `presence-track` and `presence-untrack`
//! change the app's tracker during the import call (it is host state, not
//! I/O), so `presence-list` in the same callback sees them; the
//! `presence_diff` each one makes is recorded as a broadcast effect, queued
//! after the callback's other effects. Why that is safe is in the `presence`
//! module's docs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::presence::{Diff, Owner, Presence};
use crate::protocol::{Payload, event};

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "roost:channel/channel",
    exports: { default: async },
});

pub use roost::channel::types::{Level, Payload as WitPayload};

/// Something a guest asked the host to do during a callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send an event to the calling channel's client.
    Push { event: String, payload: Payload },
    /// Send an event to every subscriber of `topic` in the app, or every
    /// subscriber but the calling channel when `exclude_self`.
    Broadcast {
        topic: String,
        event: String,
        payload: Payload,
        exclude_self: bool,
    },
}

/// What a callback decided, checked and converted from the guest's outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// `(status, response)` for a `phx_reply`.
    pub reply: Option<(String, Payload)>,
    /// The channel's new assigns (validated JSON text), if they changed.
    pub assigns: Option<String>,
    pub stop: Option<String>,
}

/// Per-instance store state.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) node: Arc<str>,
    pub(super) app: Arc<str>,
    pub(super) plugin: Arc<str>,
    /// The running call's topic, for log lines (shared with the guest's
    /// stdout and stderr streams).
    pub(super) topic: Arc<Mutex<String>>,
    /// Largest payload the running call may hand back.
    pub(super) max_output: usize,
    /// When the running call must have returned.
    pub(super) deadline: Instant,
    /// The running call's time budget, for error messages.
    pub(super) budget: Duration,
    /// Effects recorded by the running call.
    pub(super) effects: Vec<Effect>,
    /// The running call's `presence_diff` broadcasts, which follow its
    /// other effects.
    presence_diffs: Vec<Effect>,
    /// The first invalid thing the running call passed to an import.
    pub(super) bad_import: Option<String>,
    /// The running call's app presence tracker (none outside channel
    /// callbacks), and the channel that owns what it tracks (none in
    /// `terminate`: the channel is already gone).
    pub(super) presence: Option<Presence>,
    pub(super) owner: Option<Owner>,
}

impl StoreData {
    pub(super) fn new(
        wasi: WasiCtx,
        limits: StoreLimits,
        node: Arc<str>,
        app: Arc<str>,
        plugin: Arc<str>,
        topic: Arc<Mutex<String>>,
    ) -> Self {
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            node,
            app,
            plugin,
            topic,
            max_output: usize::MAX,
            deadline: Instant::now(),
            budget: Duration::ZERO,
            effects: Vec::new(),
            presence_diffs: Vec::new(),
            bad_import: None,
            presence: None,
            owner: None,
        }
    }

    /// Takes the running call's effects, in the order they are applied.
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        let mut effects = std::mem::take(&mut self.effects);
        effects.append(&mut self.presence_diffs);
        effects
    }

    /// The tracker, owner and topic for a presence change, if the running
    /// call may make one.
    fn tracking(&self) -> Option<(Presence, Owner, String)> {
        let presence = self.presence.clone()?;
        let owner = self.owner?;
        let topic = self.topic.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some((presence, owner, topic))
    }

    /// Records the broadcast of a presence change. Diffs go out after the
    /// callback's other effects, as Phoenix's tracker broadcasts them after
    /// the channel's own work: a join that tracks and then pushes
    /// `presence_state` sends the state first, as Phoenix apps do.
    fn broadcast_diff(&mut self, topic: String, diff: Diff) {
        if !diff.is_empty() {
            self.presence_diffs.push(Effect::Broadcast {
                topic,
                event: event::PRESENCE_DIFF.to_owned(),
                payload: diff.to_payload(),
                exclude_self: false,
            });
        }
    }

    fn payload(&mut self, what: &str, payload: WitPayload) -> Option<Payload> {
        let problem = match from_wit(payload) {
            Ok(payload) if payload.len() <= self.max_output => return Some(payload),
            Ok(payload) => format!(
                "{what} of {} bytes, over the limit of {}",
                payload.len(),
                self.max_output
            ),
            Err(e) => format!("{what} with invalid JSON: {e}"),
        };
        self.bad_import.get_or_insert(problem);
        None
    }
}

/// Converts a guest payload, validating its JSON text.
pub fn from_wit(payload: WitPayload) -> Result<Payload, serde_json::Error> {
    match payload {
        WitPayload::Json(text) => Payload::from_json_text(text),
        WitPayload::Binary(bytes) => Ok(Payload::Binary(bytes.into())),
    }
}

/// Converts a payload for a guest.
pub fn to_wit(payload: &Payload) -> WitPayload {
    match payload {
        Payload::Json(raw) => WitPayload::Json(raw.get().to_owned()),
        Payload::Binary(bytes) => WitPayload::Binary(bytes.to_vec()),
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl roost::channel::types::Host for StoreData {}

impl roost::channel::host::Host for StoreData {
    fn push(&mut self, event: String, payload: WitPayload) {
        if let Some(payload) = self.payload("push", payload) {
            self.effects.push(Effect::Push { event, payload });
        }
    }

    fn broadcast(&mut self, topic: String, event: String, payload: WitPayload) {
        if let Some(payload) = self.payload("broadcast", payload) {
            self.effects.push(Effect::Broadcast {
                topic,
                event,
                payload,
                exclude_self: false,
            });
        }
    }

    fn broadcast_from(&mut self, topic: String, event: String, payload: WitPayload) {
        if let Some(payload) = self.payload("broadcast-from", payload) {
            self.effects.push(Effect::Broadcast {
                topic,
                event,
                payload,
                exclude_self: true,
            });
        }
    }

    fn log(&mut self, level: Level, message: String) {
        let topic = self.topic.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (app, plugin, topic) = (&*self.app, &*self.plugin, topic.as_str());
        match level {
            Level::Trace => {
                tracing::trace!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            Level::Info => tracing::info!(target: "roost::guest", app, plugin, topic, "{message}"),
            Level::Warn => tracing::warn!(target: "roost::guest", app, plugin, topic, "{message}"),
            Level::Error => {
                tracing::error!(target: "roost::guest", app, plugin, topic, "{message}")
            }
        }
    }

    fn node_name(&mut self) -> String {
        self.node.to_string()
    }

    fn presence_track(&mut self, key: String, meta: String) {
        if key.len() + meta.len() > self.max_output {
            let problem = format!(
                "presence-track of {} bytes, over the limit of {}",
                key.len() + meta.len(),
                self.max_output
            );
            self.bad_import.get_or_insert(problem);
            return;
        }
        let meta = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&meta) {
            Ok(meta) => meta,
            Err(e) => {
                let problem = format!("presence-track with a meta that is not a JSON object: {e}");
                self.bad_import.get_or_insert(problem);
                return;
            }
        };
        let Some((presence, owner, topic)) = self.tracking() else {
            tracing::debug!(app = %self.app, plugin = %self.plugin, key, "presence-track ignored: no joined channel");
            return;
        };
        let diff = presence.track(&topic, owner, &key, meta);
        self.broadcast_diff(topic, diff);
    }

    fn presence_untrack(&mut self, key: String) {
        let Some((presence, owner, topic)) = self.tracking() else {
            return;
        };
        let diff = presence.untrack(&topic, owner, &key);
        self.broadcast_diff(topic, diff);
    }

    fn presence_list(&mut self) -> String {
        let Some(presence) = &self.presence else {
            return "{}".to_owned();
        };
        let topic = self.topic.lock().unwrap_or_else(|p| p.into_inner());
        presence.list(&topic)
    }
}

/// Adds WASI (with no ambient authority granted per store) and the
/// `roost:channel/host` imports.
pub(super) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Channel::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |data| data)
}
