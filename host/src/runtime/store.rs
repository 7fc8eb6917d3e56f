//! What a guest call can reach: the per-instance store state, and the host
//! side of every import, shared by both contract versions (`world_v01` and
//! `world_v02` wrap these in the traits their bindings generate).
//!
//! Imports do no I/O but storage: `push`, `broadcast` and timers are
//! recorded as [`Effect`]s in call order, and the socket applies them once
//! the callback returns (after the reply for `join`). So a trap halfway
//! through a callback applies nothing.
//!
//! Presence changes the app's tracker during the import call (it is host
//! state, not I/O), so a `list` in the same callback sees them; the
//! `presence_diff` each one makes is recorded as a broadcast effect, queued
//! after the callback's other effects. Why that is safe is in the
//! `presence` module's docs.
//!
//! Storage (`kv`) is real I/O: each call awaits the store, bounded by the
//! callback's deadline — epoch interruption cannot stop a guest while it
//! waits on the host, so the wait itself is timed out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::presence::{Diff, Owner, Presence};
use crate::protocol::{self, Payload};
use crate::storage::{Kv, KvError};

/// Source of server-unique timer ids.
static NEXT_TIMER: AtomicU64 = AtomicU64::new(1);

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
    /// Call the channel's `handle_info(message)` after `delay`.
    SendAfter {
        id: u64,
        delay: Duration,
        message: String,
    },
    /// Cancel the channel's pending timer `id`.
    CancelTimer { id: u64 },
    /// Tell `topic`'s subscribers of a presence change (`presence_diff`,
    /// batched per tick by `App::presence_changed`).
    PresenceDiff { topic: String, diff: Diff },
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

/// A log line's level, as both contract versions name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// An app's pending timers, counted across its channels against
/// `limits.timers_per_app`. Shared by the app and its guest calls.
#[derive(Debug, Default)]
pub struct TimerBudget {
    pending: AtomicUsize,
}

impl TimerBudget {
    /// Takes one place, if fewer than `max` are taken.
    pub fn take(&self, max: usize) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives `n` places back (timers that fired, were cancelled or dropped).
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// The running call's channel timers: what `send-after` and
/// `cancel-timer` check against.
#[derive(Default)]
pub(super) struct CallTimers {
    /// The channel's pending timer ids, plus those this call scheduled,
    /// minus those it cancelled.
    pub pending: Vec<u64>,
    pub per_channel: usize,
    pub per_app: usize,
    pub budget: Option<Arc<TimerBudget>>,
    /// Places this call took from the app's budget: given back if the call
    /// fails (its effects are dropped), else owned by the scheduled timers.
    pub reserved: usize,
}

/// An instance's memory cap, and how much linear memory it holds: the
/// status API's memory per warm instance.
pub(super) struct MemoryLimits {
    /// The app's cap, replaced on each call (the app's limits may change).
    pub cap: StoreLimits,
    /// Bytes in the instance's linear memories: each memory's initial size
    /// (wasmtime asks the limiter when it creates one, from 0) plus every
    /// growth the cap allowed. Linear memories never shrink.
    pub bytes: usize,
    /// The last growth allowed, taken back if it then failed.
    last_growth: usize,
}

impl MemoryLimits {
    pub fn new(cap: StoreLimits) -> Self {
        Self {
            cap,
            bytes: 0,
            last_growth: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.cap.memory_growing(current, desired, maximum)?;
        if allowed {
            self.last_growth = desired.saturating_sub(current);
            self.bytes += self.last_growth;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.bytes -= std::mem::take(&mut self.last_growth);
        self.cap.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.cap.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.cap.instances()
    }

    fn tables(&self) -> usize {
        self.cap.tables()
    }

    fn memories(&self) -> usize {
        self.cap.memories()
    }
}

/// Per-instance store state.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: MemoryLimits,
    pub(super) node: Arc<str>,
    pub(super) app: Arc<str>,
    pub(super) plugin: Arc<str>,
    /// The running call's topic, for log lines (shared with the guest's
    /// stdout and stderr streams).
    pub(super) topic: Arc<Mutex<String>>,
    /// The running call's context, which 0.2 guests read on demand.
    pub(super) socket_id: Option<Arc<str>>,
    pub(super) claims: Arc<str>,
    pub(super) assigns: Arc<str>,
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
    pub(super) timers: CallTimers,
    /// The app's storage, if it grants the `kv` capability.
    pub(super) kv: Option<Kv>,
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
            limits: MemoryLimits::new(limits),
            node,
            app,
            plugin,
            topic,
            socket_id: None,
            claims: "{}".into(),
            assigns: "{}".into(),
            max_output: usize::MAX,
            deadline: Instant::now(),
            budget: Duration::ZERO,
            effects: Vec::new(),
            presence_diffs: Vec::new(),
            bad_import: None,
            presence: None,
            owner: None,
            timers: CallTimers::default(),
            kv: None,
        }
    }

    /// Takes the running call's effects, in the order they are applied.
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        let mut effects = std::mem::take(&mut self.effects);
        effects.append(&mut self.presence_diffs);
        effects
    }

    /// The call failed: its effects go, and so do the timer places it took.
    pub(super) fn abandon(&mut self) {
        self.effects.clear();
        self.presence_diffs.clear();
        if let Some(budget) = &self.timers.budget {
            budget.release(self.timers.reserved);
        }
        self.timers.reserved = 0;
    }

    pub(super) fn topic(&self) -> String {
        self.topic.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records the first bad thing the call handed an import; the call then
    /// fails as bad output.
    fn refuse(&mut self, problem: String) {
        self.bad_import.get_or_insert(problem);
    }

    /// A payload within the output limit, or `None` (and the call fails).
    pub(super) fn checked(
        &mut self,
        what: &str,
        payload: Result<Payload, serde_json::Error>,
    ) -> Option<Payload> {
        let problem = match payload {
            Ok(payload) if payload.len() <= self.max_output => return Some(payload),
            Ok(payload) => format!(
                "{what} of {} bytes, over the limit of {}",
                payload.len(),
                self.max_output
            ),
            Err(e) => format!("{what} with invalid JSON: {e}"),
        };
        self.refuse(problem);
        None
    }

    pub(super) fn push(&mut self, event: String, payload: Option<Payload>) {
        let Some(payload) = payload else {
            return;
        };
        if self.fits("push", &self.topic(), &event, &payload) {
            self.effects.push(Effect::Push { event, payload });
        }
    }

    pub(super) fn broadcast(
        &mut self,
        topic: String,
        event: String,
        payload: Option<Payload>,
        exclude_self: bool,
    ) {
        let Some(payload) = payload else {
            return;
        };
        if self.fits("broadcast", &topic, &event, &payload) {
            self.effects.push(Effect::Broadcast {
                topic,
                event,
                payload,
                exclude_self,
            });
        }
    }

    /// Whether the frame fits the frame limit once encoded, with its topic,
    /// event and envelope (a frame past a client's outbox would disconnect
    /// every subscriber); else the call fails.
    fn fits(&mut self, what: &str, topic: &str, event: &str, payload: &Payload) -> bool {
        // A push also carries its channel's join_ref (a short decimal).
        let len = protocol::broadcast_len(topic, event, payload) + 24;
        if len <= self.max_output {
            return true;
        }
        let problem = format!(
            "a {what} frame of {len} bytes, over the limit of {}",
            self.max_output
        );
        self.refuse(problem);
        false
    }

    pub(super) fn log(&self, level: LogLevel, message: &str) {
        let topic = self.topic();
        let (app, plugin, topic) = (&*self.app, &*self.plugin, topic.as_str());
        match level {
            LogLevel::Trace => {
                tracing::trace!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            LogLevel::Debug => {
                tracing::debug!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "roost::guest", app, plugin, topic, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "roost::guest", app, plugin, topic, "{message}")
            }
        }
    }

    pub(super) fn presence_track(&mut self, key: String, meta: String) {
        if key.len() + meta.len() > self.max_output {
            let problem = format!(
                "presence-track of {} bytes, over the limit of {}",
                key.len() + meta.len(),
                self.max_output
            );
            return self.refuse(problem);
        }
        let meta = match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&meta) {
            Ok(meta) => meta,
            Err(e) => {
                return self.refuse(format!(
                    "presence-track with a meta that is not a JSON object: {e}"
                ));
            }
        };
        let Some((presence, owner, topic)) = self.tracking() else {
            tracing::debug!(app = %self.app, plugin = %self.plugin, key, "presence-track ignored: no joined channel");
            return;
        };
        let diff = presence.track(&topic, owner, &key, meta);
        self.broadcast_diff(topic, diff);
    }

    pub(super) fn presence_untrack(&mut self, key: String) {
        let Some((presence, owner, topic)) = self.tracking() else {
            return;
        };
        let diff = presence.untrack(&topic, owner, &key);
        self.broadcast_diff(topic, diff);
    }

    pub(super) fn presence_list(&self) -> String {
        match &self.presence {
            Some(presence) => presence.list(&self.topic()),
            None => "{}".to_owned(),
        }
    }

    /// `send-after`: a timer id, or why there is none.
    pub(super) fn send_after(&mut self, delay_ms: u32, message: String) -> Result<u64, String> {
        if message.len() > self.max_output {
            let problem = format!(
                "a timer message of {} bytes, over the limit of {}",
                message.len(),
                self.max_output
            );
            self.refuse(problem.clone());
            return Err(problem);
        }
        if self.owner.is_none() {
            return Err("no channel to send to: the channel is going away".into());
        }
        let timers = &mut self.timers;
        if timers.pending.len() >= timers.per_channel {
            return Err(format!(
                "the channel has {} pending timers, its limit (limits.timers_per_channel)",
                timers.per_channel
            ));
        }
        if let Some(budget) = &timers.budget {
            if !budget.take(timers.per_app) {
                return Err(format!(
                    "the app has {} pending timers, its limit (limits.timers_per_app)",
                    timers.per_app
                ));
            }
            timers.reserved += 1;
        }
        let id = NEXT_TIMER.fetch_add(1, Ordering::Relaxed);
        timers.pending.push(id);
        self.effects.push(Effect::SendAfter {
            id,
            delay: Duration::from_millis(delay_ms.into()),
            message,
        });
        Ok(id)
    }

    /// `cancel-timer`: whether `id` was pending.
    pub(super) fn cancel_timer(&mut self, id: u64) -> bool {
        let Some(at) = self.timers.pending.iter().position(|&p| p == id) else {
            return false;
        };
        self.timers.pending.swap_remove(at);
        self.effects.push(Effect::CancelTimer { id });
        true
    }

    /// The app's storage and the time left for a storage call, or why the
    /// call cannot use storage.
    pub(super) fn storage(&self) -> Result<(Kv, tokio::time::Instant), KvError> {
        let kv = self
            .kv
            .clone()
            .ok_or_else(|| KvError::Invalid("the app does not grant the kv capability".into()))?;
        Ok((kv, tokio::time::Instant::from_std(self.deadline)))
    }

    /// The tracker, owner and topic for a presence change, if the running
    /// call may make one.
    fn tracking(&self) -> Option<(Presence, Owner, String)> {
        let presence = self.presence.clone()?;
        let owner = self.owner?;
        Some((presence, owner, self.topic()))
    }

    /// Records the broadcast of a presence change. Diffs go out after the
    /// callback's other effects, as Phoenix's tracker broadcasts them after
    /// the channel's own work: a callback that tracks and then pushes
    /// `presence_state` sends the state first, as Phoenix apps do.
    fn broadcast_diff(&mut self, topic: String, diff: Diff) {
        if !diff.is_empty() {
            self.presence_diffs
                .push(Effect::PresenceDiff { topic, diff });
        }
    }
}

/// What a storage call leaves of the callback's deadline: time for the
/// guest to act on a store that did not answer (log, carry on) before the
/// deadline stops it.
const LEFT_FOR_THE_GUEST: std::time::Duration = std::time::Duration::from_millis(100);

/// Awaits a storage call, ending it a little before the callback's
/// deadline (see [`LEFT_FOR_THE_GUEST`]).
pub(super) async fn within<T>(
    deadline: tokio::time::Instant,
    call: impl std::future::Future<Output = Result<T, KvError>>,
) -> Result<T, KvError> {
    let deadline = deadline.checked_sub(LEFT_FOR_THE_GUEST).unwrap_or(deadline);
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Unavailable(
                "the store did not answer within the call's deadline".into(),
            ))
        })
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
