//! A compiled plugin version serving one app: its pool of warm instances,
//! and the channel callbacks run with the app's deadline and memory cap.
//!
//! Each instance has its own `Store`, so a trap poisons nothing but the
//! instance that trapped, which is dropped instead of going back to the pool.
//! Instances are per app, never shared: a guest's memory may hold what one
//! app's calls gave it, and another app must not see that.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::Runtime;
use super::compiled::{Compiled, Pre};
use super::guest_log::GuestLog;
use super::store::{CallTimers, Effect, Outcome, StoreData, TimerBudget};
use super::{world_v01 as v01, world_v02 as v02};
use crate::config::GuestLimits;
use crate::metrics::{self, PluginMetrics};
use crate::presence::{Owner, Presence};
use crate::protocol::Payload;
use crate::storage::Kv;

/// Warm instances kept per plugin version and app. Calls rarely overlap (one
/// per runtime thread, plus the few that yield at a deadline tick), so a few
/// is enough; more would only hold guest memory.
const MAX_WARM: usize = 4;

/// Why a guest call failed. Any of these ends the channel (or the join).
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest exceeded its {0:?} deadline")]
    Deadline(Duration),
    #[error("guest exceeded its memory limit")]
    MemoryLimit,
    #[error("guest returned invalid output: {0}")]
    BadOutput(String),
    #[error("could not instantiate the plugin: {0}")]
    Instantiate(String),
}

impl PluginError {
    /// A short word for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Trap(_) => "trap",
            Self::Deadline(_) => "deadline",
            Self::MemoryLimit => "memory",
            Self::BadOutput(_) => "bad_output",
            Self::Instantiate(_) => "instantiate",
        }
    }
}

/// Who a callback runs for, and what it may reach.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    pub topic: &'a str,
    pub socket_id: Option<&'a Arc<str>>,
    pub claims: &'a Arc<str>,
    pub assigns: &'a Arc<str>,
    /// The app's presence tracker, for the presence imports.
    pub presence: Option<&'a Presence>,
    /// The channel that owns what the call tracks and the timers it sets;
    /// `None` where the call may read presence but not change it, nor set
    /// timers (`terminate`).
    pub owner: Option<Owner>,
    /// The channel's pending timers, and the app's count of them.
    pub timers: Vec<u64>,
    pub timer_budget: Option<&'a Arc<TimerBudget>>,
    /// The app's storage, if it grants the `kv` capability.
    pub kv: Option<Kv>,
    /// The app's bounds on its guests.
    pub limits: GuestLimits,
    /// The app's bound on pending timers, all channels together.
    pub timers_per_app: usize,
}

/// A callback's result and the effects it recorded, in call order.
#[derive(Debug)]
pub struct Called<T> {
    pub value: T,
    pub effects: Vec<Effect>,
}

/// One compiled version serving one app.
pub struct Plugin {
    runtime: Runtime,
    compiled: Arc<Compiled>,
    app: Arc<str>,
    warm: Mutex<Vec<Warm>>,
    /// This plugin's call latencies, failures and reloads, for this app.
    metrics: PluginMetrics,
}

/// A guest instance of either contract version.
enum Guest {
    V01(v01::Channel),
    V02(v02::Plugin),
}

/// An instance and its store, ready for a call.
pub(super) struct Warm {
    store: Store<StoreData>,
    guest: Guest,
}

impl Plugin {
    pub fn new(runtime: Runtime, compiled: Arc<Compiled>, app: Arc<str>) -> Self {
        let metrics = runtime.metrics().plugin(&app, compiled.name());
        Self {
            runtime,
            compiled,
            app,
            warm: Mutex::new(Vec::new()),
            metrics,
        }
    }

    pub fn metrics(&self) -> &PluginMetrics {
        &self.metrics
    }

    /// The compiled version this serves.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }

    pub fn name(&self) -> &str {
        self.compiled.name()
    }

    pub fn version(&self) -> &str {
        self.compiled.version()
    }

    /// Broadcast events this plugin handles in `handle_out`.
    pub fn intercepts(&self, event: &str) -> bool {
        self.compiled.intercepts(event)
    }

    /// Warm instances held now.
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The linear memory each warm instance holds now, in bytes.
    pub fn warm_memory(&self) -> Vec<usize> {
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|warm| warm.store.data().limits.bytes)
            .collect()
    }

    /// `join`: `Ok` joins with the outcome, `Err` refuses with a response.
    pub async fn join(
        &self,
        ctx: CallContext<'_>,
        payload: &Payload,
    ) -> Result<Called<Result<Outcome, Payload>>, PluginError> {
        let _timer = self.metrics.time(metrics::Callback::Join);
        let mut lease = self.lease(&ctx, Deadline::Join).await?;
        let max = ctx.limits.output_bytes;
        let Warm { store, guest } = &mut lease;
        let result = match guest {
            Guest::V01(channel) => channel
                .roost_channel_handler()
                .call_join(&mut *store, &self.context_v01(&ctx), &v01::to_wit(payload))
                .await
                .map(|joined| {
                    joined
                        .map(|outcome| v01_outcome(outcome, max))
                        .map_err(refusal(v01::from_wit))
                }),
            Guest::V02(plugin) => plugin
                .roost_channel_handler()
                .call_join(&mut *store, ctx.topic, &v02::to_wit(payload))
                .await
                .map(|joined| {
                    joined
                        .map(|joined| {
                            let reply = Some(("ok".to_owned(), v02::from_wit(joined.response)));
                            checked_outcome(reply, joined.assigns, None, max)
                        })
                        .map_err(refusal(v02::from_wit))
                }),
        };
        let called = self.finish(lease, result)?;
        let value = match called.value {
            Ok(outcome) => Ok(outcome?),
            Err(refusal) => Err(refusal?),
        };
        Ok(Called {
            value,
            effects: called.effects,
        })
    }

    /// `handle_in`: an event from the channel's client.
    pub async fn handle_in(
        &self,
        ctx: CallContext<'_>,
        event: &str,
        payload: &Payload,
    ) -> Result<Called<Outcome>, PluginError> {
        self.handle(Event::In(event, payload), ctx).await
    }

    /// `handle_out`: an intercepted broadcast about to reach the client.
    pub async fn handle_out(
        &self,
        ctx: CallContext<'_>,
        event: &str,
        payload: &Payload,
    ) -> Result<Called<Outcome>, PluginError> {
        self.handle(Event::Out(event, payload), ctx).await
    }

    /// `handle_info`: one of the channel's timers fired. A 0.1 plugin has
    /// no timers, so this never reaches one.
    pub async fn handle_info(
        &self,
        ctx: CallContext<'_>,
        message: &str,
    ) -> Result<Called<Outcome>, PluginError> {
        self.handle(Event::Info(message), ctx).await
    }

    async fn handle(
        &self,
        event: Event<'_>,
        ctx: CallContext<'_>,
    ) -> Result<Called<Outcome>, PluginError> {
        let _timer = self.metrics.time(event.metric());
        let mut lease = self.lease(&ctx, Deadline::Call).await?;
        let max = ctx.limits.output_bytes;
        let Warm { store, guest } = &mut lease;
        let result = match guest {
            Guest::V01(channel) => {
                let handler = channel.roost_channel_handler();
                let context = self.context_v01(&ctx);
                let called = match event {
                    Event::In(event, payload) => {
                        handler
                            .call_handle_in(&mut *store, &context, event, &v01::to_wit(payload))
                            .await
                    }
                    Event::Out(event, payload) => {
                        handler
                            .call_handle_out(&mut *store, &context, event, &v01::to_wit(payload))
                            .await
                    }
                    Event::Info(_) => Ok(v01::wit::Outcome {
                        reply: None,
                        assigns: None,
                        stop: None,
                    }),
                };
                called.map(|outcome| v01_outcome(outcome, max))
            }
            Guest::V02(plugin) => {
                let handler = plugin.roost_channel_handler();
                let called = match event {
                    Event::In(event, payload) => {
                        handler
                            .call_handle_in(&mut *store, event, &v02::to_wit(payload))
                            .await
                    }
                    Event::Out(event, payload) => {
                        handler
                            .call_handle_out(&mut *store, event, &v02::to_wit(payload))
                            .await
                    }
                    Event::Info(message) => handler.call_handle_info(&mut *store, message).await,
                };
                called.map(|outcome| {
                    let reply = outcome
                        .reply
                        .map(|reply| (reply.status, v02::from_wit(reply.response)));
                    checked_outcome(reply, outcome.assigns, outcome.stop, max)
                })
            }
        };
        self.finish(lease, result)?.try_map(|outcome| outcome)
    }

    /// `terminate`: the channel is going away for `reason`.
    pub async fn terminate(
        &self,
        ctx: CallContext<'_>,
        reason: &str,
    ) -> Result<Called<()>, PluginError> {
        let _timer = self.metrics.time(metrics::Callback::Terminate);
        let mut lease = self.lease(&ctx, Deadline::Call).await?;
        let Warm { store, guest } = &mut lease;
        let result = match guest {
            Guest::V01(channel) => {
                channel
                    .roost_channel_handler()
                    .call_terminate(&mut *store, &self.context_v01(&ctx), reason)
                    .await
            }
            Guest::V02(plugin) => {
                plugin
                    .roost_channel_handler()
                    .call_terminate(&mut *store, reason)
                    .await
            }
        };
        self.finish(lease, result)
    }

    /// The 0.1 context record, copied whole into the guest on every call.
    fn context_v01(&self, ctx: &CallContext<'_>) -> v01::wit::Context {
        v01::wit::Context {
            app: self.app.to_string(),
            topic: ctx.topic.to_owned(),
            socket_id: ctx.socket_id.map(|id| id.to_string()),
            claims: ctx.claims.to_string(),
            assigns: ctx.assigns.to_string(),
        }
    }

    /// Takes a warm instance (or makes one), arms its deadline, and sets
    /// what the call may reach (context, presence, timers, storage).
    async fn lease(&self, ctx: &CallContext<'_>, deadline: Deadline) -> Result<Warm, PluginError> {
        let limits = ctx.limits;
        let deadline = match deadline {
            Deadline::Join => limits.join_deadline,
            Deadline::Call => limits.call_deadline,
        };
        let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => {
                Warm::new(
                    &self.runtime,
                    &self.compiled.pre,
                    &self.app,
                    self.compiled.name_arc(),
                    limits,
                )
                .await?
            }
        };
        let data = warm.store.data_mut();
        {
            let mut current = data.topic.lock().unwrap_or_else(|p| p.into_inner());
            current.clear();
            current.push_str(ctx.topic);
        }
        data.socket_id = ctx.socket_id.cloned();
        data.claims = ctx.claims.clone();
        data.assigns = ctx.assigns.clone();
        data.presence = ctx.presence.cloned();
        data.owner = ctx.owner;
        data.timers = CallTimers {
            pending: ctx.timers.clone(),
            per_channel: limits.timers_per_channel,
            per_app: ctx.timers_per_app,
            budget: ctx.timer_budget.cloned(),
            reserved: 0,
        };
        data.kv = ctx.kv.clone();
        data.max_output = limits.output_bytes;
        data.deadline = Instant::now() + deadline;
        data.budget = deadline;
        // Limits may have changed since this instance was made.
        data.limits.cap = memory_limits(limits.memory_bytes);
        data.effects.clear();
        data.bad_import = None;
        warm.store.set_epoch_deadline(1);
        Ok(warm)
    }

    /// Collects a call's effects; the instance goes back to the pool only if
    /// the call succeeded.
    fn finish<T>(&self, warm: Warm, result: wasmtime::Result<T>) -> Result<Called<T>, PluginError> {
        let (called, warm) = warm.finish(result)?;
        let mut pool = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_WARM {
            pool.push(warm);
        }
        Ok(called)
    }
}

impl Warm {
    /// Instantiates `pre` for `app`, bounded by `limits`.
    async fn new(
        runtime: &Runtime,
        pre: &Pre,
        app: &Arc<str>,
        plugin: &Arc<str>,
        limits: GuestLimits,
    ) -> Result<Self, PluginError> {
        let topic = Arc::new(std::sync::Mutex::new(String::new()));
        let log = |stream| GuestLog {
            app: app.clone(),
            plugin: plugin.clone(),
            topic: topic.clone(),
            stream,
        };
        // No preopened dirs, env, args or network: the guest gets nothing
        // ambient, only its output streams, which go to the host log.
        let wasi = WasiCtxBuilder::new()
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .build();
        let data = StoreData::new(
            wasi,
            memory_limits(limits.memory_bytes),
            runtime.node().clone(),
            app.clone(),
            plugin.clone(),
            topic,
        );
        let mut store = Store::new(runtime.engine(), data);
        // Instantiation runs guest start-up code: bound it like a join.
        store.data_mut().deadline = Instant::now() + limits.join_deadline;
        store.data_mut().budget = limits.join_deadline;
        store.limiter(|data| &mut data.limits);
        // Checked once per epoch tick: yield to other tasks until the
        // deadline, then trap. tokio's `yield_now` (rather than a plain
        // wake) lets the runtime poll its I/O driver first, so other
        // sockets' frames are read while a guest spins.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store.set_epoch_deadline(1);
        let instantiate = |e: wasmtime::Error| PluginError::Instantiate(format!("{e:#}"));
        let guest = match pre {
            Pre::V01(pre) => Guest::V01(
                pre.instantiate_async(&mut store)
                    .await
                    .map_err(instantiate)?,
            ),
            Pre::V02(pre) => Guest::V02(
                pre.instantiate_async(&mut store)
                    .await
                    .map_err(instantiate)?,
            ),
        };
        Ok(Self { store, guest })
    }

    /// Instantiates `pre` once, as a check that it starts, and reads its
    /// intercepts.
    pub(super) async fn intercepts(
        runtime: &Runtime,
        pre: &Pre,
        plugin: &Arc<str>,
    ) -> Result<Vec<String>, PluginError> {
        let limits = GuestLimits::default();
        let mut warm = Self::new(runtime, pre, &"-".into(), plugin, limits).await?;
        warm.store.data_mut().deadline = Instant::now() + limits.call_deadline;
        warm.store.data_mut().budget = limits.call_deadline;
        let Warm { store, guest } = &mut warm;
        let result = match guest {
            Guest::V01(channel) => {
                channel
                    .roost_channel_handler()
                    .call_intercepts(&mut *store)
                    .await
            }
            Guest::V02(plugin) => {
                plugin
                    .roost_channel_handler()
                    .call_intercepts(&mut *store)
                    .await
            }
        };
        Ok(warm.finish(result)?.0.value)
    }

    /// Collects a call's effects; gives the instance back only if the call
    /// succeeded (a trapped instance must not serve again). A failed call
    /// applies nothing.
    fn finish<T>(mut self, result: wasmtime::Result<T>) -> Result<(Called<T>, Self), PluginError> {
        let data = self.store.data_mut();
        let bad_import = data.bad_import.take();
        let value = match (result, bad_import) {
            (Ok(value), None) => value,
            (Err(error), _) => {
                data.abandon();
                return Err(classify(error, data.budget));
            }
            (Ok(_), Some(problem)) => {
                data.abandon();
                return Err(PluginError::BadOutput(problem));
            }
        };
        let effects = data.take_effects();
        Ok((Called { value, effects }, self))
    }
}

/// A callback that takes an event or a message.
#[derive(Clone, Copy)]
enum Event<'a> {
    In(&'a str, &'a Payload),
    Out(&'a str, &'a Payload),
    Info(&'a str),
}

impl Event<'_> {
    fn metric(self) -> metrics::Callback {
        match self {
            Self::In(..) => metrics::Callback::HandleIn,
            Self::Out(..) => metrics::Callback::HandleOut,
            Self::Info(_) => metrics::Callback::HandleInfo,
        }
    }
}

impl<T> Called<T> {
    fn try_map<U>(
        self,
        f: impl FnOnce(T) -> Result<U, PluginError>,
    ) -> Result<Called<U>, PluginError> {
        Ok(Called {
            value: f(self.value)?,
            effects: self.effects,
        })
    }
}

fn classify(error: wasmtime::Error, budget: Duration) -> PluginError {
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return PluginError::Deadline(budget);
    }
    let text = format!("{error:#}");
    // StoreLimits reports a refused memory.grow (with trap_on_grow_failure)
    // as a plain error whose text is the only marker.
    if text.contains("growing memory") {
        return PluginError::MemoryLimit;
    }
    PluginError::Trap(text)
}

/// Which of the app's deadlines a call runs under.
#[derive(Clone, Copy)]
enum Deadline {
    Join,
    Call,
}

/// A memory cap whose breach traps (and so ends the call) rather than
/// letting the guest see a failed `memory.grow`.
fn memory_limits(bytes: usize) -> wasmtime::StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(bytes)
        .trap_on_grow_failure(true)
        .build()
}

fn bad_output(error: serde_json::Error) -> PluginError {
    PluginError::BadOutput(error.to_string())
}

/// Converts a join refusal's payload, validating its JSON.
fn refusal<P>(
    from_wit: fn(P) -> Result<Payload, serde_json::Error>,
) -> impl Fn(P) -> Result<Payload, PluginError> {
    move |payload| from_wit(payload).map_err(bad_output)
}

fn v01_outcome(outcome: v01::wit::Outcome, max: usize) -> Result<Outcome, PluginError> {
    let reply = outcome
        .reply
        .map(|reply| (reply.status, v01::from_wit(reply.response)));
    checked_outcome(reply, outcome.assigns, outcome.stop, max)
}

/// Checks a guest's outcome: valid JSON, assigns an object, nothing larger
/// than `max` bytes.
fn checked_outcome(
    reply: Option<(String, Result<Payload, serde_json::Error>)>,
    assigns: Option<String>,
    stop: Option<String>,
    max: usize,
) -> Result<Outcome, PluginError> {
    let too_big = |what: &str, len: usize| {
        PluginError::BadOutput(format!("{what} of {len} bytes, over the limit of {max}"))
    };
    let reply = match reply {
        Some((status, response)) => {
            let response = response.map_err(bad_output)?;
            if response.len() > max {
                return Err(too_big("reply", response.len()));
            }
            Some((status, response))
        }
        None => None,
    };
    if let Some(text) = &assigns {
        if text.len() > max {
            return Err(too_big("assigns", text.len()));
        }
        // Checks it is a JSON object without building it.
        serde_json::from_str::<BTreeMap<String, IgnoredAny>>(text)
            .map_err(|e| PluginError::BadOutput(format!("assigns must be a JSON object: {e}")))?;
    }
    Ok(Outcome {
        reply,
        assigns,
        stop,
    })
}
