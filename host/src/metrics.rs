//! Every metric Roost exports, in one place: the names, their labels and
//! what they count, registered once in one [`Metrics`] registry that
//! `admin` serves at `/metrics` (Prometheus text format) and reads for the
//! dashboard.
//!
//! The parts that count are handed handles resolved once, never a label
//! lookup per event: an app gets its [`AppMetrics`] when it is created, a
//! plugin version its [`PluginMetrics`] when it loads, a connection its
//! [`ConnectionGauge`] when it is admitted. Counting is then one atomic add
//! (a guest call's latency: two clock reads and two atomic adds, in
//! [`CallHistogram`]), so the hot paths —
//! `socket`, `app::App::broadcast`, `runtime` — each carry a line or two.
//!
//! A leaf module: it depends on no other part of the host, so anything may
//! hold its handles. Labels that name a reason (a close, a refusal, a guest
//! failure) take the words the owning module already uses (`Close::reason`,
//! `PluginError::kind`), normalized here to `snake_case`.
//!
//! # The metrics
//! Every name starts with `roost_`; the README lists them too.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `roost_sockets_active` | gauge | `app`, `transport` |
//! | `roost_channels_joined` | gauge | `app` |
//! | `roost_joins_total` | counter | `app`, `outcome` |
//! | `roost_messages_in_total` | counter | `app` |
//! | `roost_messages_out_total` | counter | `app` |
//! | `roost_broadcasts_total` | counter | `app` |
//! | `roost_broadcast_deliveries_total` | counter | `app` |
//! | `roost_outbox_bytes` | gauge | `app` |
//! | `roost_disconnects_total` | counter | `app`, `reason` |
//! | `roost_rate_limited_total` | counter | `app`, `kind` |
//! | `roost_connect_refusals_total` | counter | `app`, `transport`, `reason` |
//! | `roost_longpoll_sessions` | gauge | |
//! | `roost_guest_call_duration_seconds` | histogram | `app`, `plugin`, `callback` |
//! | `roost_guest_failures_total` | counter | `app`, `plugin`, `kind` |
//! | `roost_plugin_reloads_total` | counter | `app`, `plugin`, `result` |
//! | `roost_plugin_warm_instances` | gauge | `app`, `plugin` |
//! | `roost_plugin_info` | gauge (always 1) | `app`, `plugin`, `version`, `wit` |
//! | `roost_node_info` | gauge (always 1) | `node`, `version` |
//! | `roost_uptime_seconds` | gauge | |
//! | `roost_resident_memory_bytes` | gauge | |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Recent plugin reloads kept for the dashboard: enough for a screen.
const RECENT_RELOADS: usize = 20;

/// Upper bounds of the guest call latency buckets, in nanoseconds (10 µs
/// to 5 s): a warm call takes microseconds, the deadline is a second
/// (`join` 5 s).
const CALL_BUCKETS_NS: [u64; 15] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// The transports a socket connects with (label `transport`).
pub const TRANSPORTS: [&str; 2] = ["websocket", "longpoll"];

/// Why a connection was refused (label `reason` of
/// `roost_connect_refusals_total`).
pub mod refusal {
    /// The `vsn` matched no serializer.
    pub const VSN: &str = "vsn";
    /// The server was at `server.max_connections`.
    pub const SERVER_FULL: &str = "server_full";
    /// The app was at its `max_connections`.
    pub const APP_FULL: &str = "app_full";
    /// The client address holds `server.max_connections_per_ip` sockets.
    pub const CLIENT_FULL: &str = "client_full";
    /// The client address opens sockets faster than
    /// `server.connections_per_ip_per_second`.
    pub const CLIENT_RATE: &str = "client_rate";
    /// The `Origin` is not allowed by `check_origin`.
    pub const ORIGIN: &str = "origin";
    /// Subprotocols offered without `phoenix`, or an undecodable `authToken`.
    pub const SUBPROTOCOL: &str = "subprotocol";
    /// No token, and the app takes no anonymous sockets.
    pub const TOKEN_MISSING: &str = "token_missing";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// Its `nbf` is in the future.
    pub const TOKEN_NOT_YET_VALID: &str = "token_not_yet_valid";
    /// Signed with none of the app's secrets.
    pub const TOKEN_SIGNATURE: &str = "token_signature";
    /// Not an HS256 JWT with `exp`.
    pub const TOKEN_MALFORMED: &str = "token_malformed";

    /// Every reason, resolved per app and transport up front.
    pub const ALL: [&str; 12] = [
        VSN,
        SERVER_FULL,
        APP_FULL,
        CLIENT_FULL,
        CLIENT_RATE,
        ORIGIN,
        SUBPROTOCOL,
        TOKEN_MISSING,
        TOKEN_EXPIRED,
        TOKEN_NOT_YET_VALID,
        TOKEN_SIGNATURE,
        TOKEN_MALFORMED,
    ];
}

/// Server-initiated closes (label `reason` of `roost_disconnects_total`),
/// as `mailbox::Close::reason` words them.
const DISCONNECT_REASONS: [&str; 8] = [
    "going away",
    "disconnected",
    "malformed frame",
    "slow consumer",
    "rate limited",
    "frame too large",
    "idle timeout",
    "internal error",
];

/// What was refused for its rate (label `kind` of
/// `roost_rate_limited_total`): a socket's message or join, or a broadcast
/// over the app's rate.
const RATE_LIMITED_KINDS: [&str; 3] = ["message", "join", "broadcast"];

/// Guest failures (label `kind`), as `runtime::PluginError::kind` names them.
const FAILURE_KINDS: [&str; 5] = ["trap", "deadline", "memory", "bad_output", "instantiate"];

/// How a join ended (label `outcome` of `roost_joins_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined.
    Ok,
    /// Refused by the plugin (an error reply).
    Error,
    /// The plugin's `join` failed (trap, deadline, …): `join crashed`.
    Crashed,
}

impl JoinOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::Error, Self::Crashed];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Crashed => "crashed",
        }
    }
}

/// A guest callback (label `callback` of the call histogram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Join,
    HandleIn,
    HandleOut,
    HandleInfo,
    Terminate,
}

impl Callback {
    const ALL: [Self; 5] = [
        Self::Join,
        Self::HandleIn,
        Self::HandleOut,
        Self::HandleInfo,
        Self::Terminate,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::HandleIn => "handle_in",
            Self::HandleOut => "handle_out",
            Self::HandleInfo => "handle_info",
            Self::Terminate => "terminate",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    app: String,
    transport: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    app: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    app: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    app: String,
    transport: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    app: String,
    plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    app: String,
    plugin: String,
    callback: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    app: String,
    plugin: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLabels {
    app: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    app: String,
    plugin: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    app: String,
    plugin: String,
    version: String,
    wit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    version: String,
}

/// A latency histogram over [`CALL_BUCKETS_NS`] whose observations take
/// no lock: two relaxed atomic adds. prometheus-client's own `Histogram`
/// takes a mutex per observation, which a guest call — the one histogram
/// on a hot path — would pay on every message; this one is encoded by the
/// same encoder.
#[derive(Debug, Clone, Default)]
pub struct CallHistogram {
    inner: Arc<CallBuckets>,
}

#[derive(Debug, Default)]
struct CallBuckets {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; CALL_BUCKETS_NS.len() + 1],
    sum_nanos: AtomicU64,
}

impl CallHistogram {
    fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = CALL_BUCKETS_NS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(CALL_BUCKETS_NS.len());
        self.inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for CallHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CallHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = CALL_BUCKETS_NS
            .iter()
            .map(|nanos| *nanos as f64 / 1e9)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The registry and every metric family in it. Cheap to clone; clones
/// share it.
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

struct Shared {
    /// Never changes after [`Metrics::new`]: encoding needs no lock.
    registry: Registry,
    families: Families,
    /// The last [`RECENT_RELOADS`] plugin reloads, newest last.
    reloads: Arc<Mutex<VecDeque<ReloadEvent>>>,
    started: Instant,
    started_at: SystemTime,
}

struct Families {
    sockets: Family<TransportLabels, Gauge>,
    channels: Family<AppLabels, Gauge>,
    joins: Family<OutcomeLabels, Counter>,
    messages_in: Family<AppLabels, Counter>,
    messages_out: Family<AppLabels, Counter>,
    broadcasts: Family<AppLabels, Counter>,
    deliveries: Family<AppLabels, Counter>,
    outbox_bytes: Family<AppLabels, Gauge>,
    disconnects: Family<ReasonLabels, Counter>,
    rate_limited: Family<RateLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    longpoll_sessions: Gauge,
    calls: Family<CallLabels, CallHistogram>,
    failures: Family<KindLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    warm_instances: Family<PluginLabels, Gauge>,
    plugin_info: Family<InfoLabels, Gauge>,
    node_info: Family<NodeLabels, Gauge>,
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered, none yet labelled.
    pub fn new() -> Self {
        let families = Families {
            sockets: Family::default(),
            channels: Family::default(),
            joins: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            broadcasts: Family::default(),
            deliveries: Family::default(),
            outbox_bytes: Family::default(),
            disconnects: Family::default(),
            rate_limited: Family::default(),
            refusals: Family::default(),
            longpoll_sessions: Gauge::default(),
            calls: Family::default(),
            failures: Family::default(),
            reloads: Family::default(),
            warm_instances: Family::default(),
            plugin_info: Family::default(),
            node_info: Family::default(),
            uptime: Gauge::default(),
            resident_memory: Gauge::default(),
        };
        let f = &families;
        let mut registry = Registry::with_prefix("roost");
        let r = &mut registry;
        r.register(
            "sockets_active",
            "Open sockets (connections), by transport",
            f.sockets.clone(),
        );
        r.register(
            "channels_joined",
            "Channels joined now, on all sockets",
            f.channels.clone(),
        );
        r.register(
            "joins",
            "Joins that reached a plugin, by outcome: ok, error (refused), crashed",
            f.joins.clone(),
        );
        r.register(
            "messages_in",
            "Messages received from clients, heartbeats included",
            f.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "Frames written to clients: replies, pushes, broadcasts",
            f.messages_out.clone(),
        );
        r.register(
            "broadcasts",
            "Broadcasts (from plugins, presence and the HTTP API)",
            f.broadcasts.clone(),
        );
        r.register(
            "broadcast_deliveries",
            "Subscribers the broadcasts reached",
            f.deliveries.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes queued for clients in socket mailboxes, at scrape time",
            f.outbox_bytes.clone(),
        );
        r.register(
            "disconnects",
            "Sockets the server closed, by reason (slow_consumer, idle_timeout, ...)",
            f.disconnects.clone(),
        );
        r.register(
            "rate_limited",
            "Messages refused for their socket's rate, by kind: message, join",
            f.rate_limited.clone(),
        );
        r.register(
            "connect_refusals",
            "Connections refused at connect, by reason (token_expired, origin, app_full, ...)",
            f.refusals.clone(),
        );
        r.register(
            "longpoll_sessions",
            "Open long-poll sessions",
            f.longpoll_sessions.clone(),
        );
        r.register(
            "guest_call_duration_seconds",
            "Plugin callback latency, by callback; _count is the number of calls",
            f.calls.clone(),
        );
        r.register(
            "guest_failures",
            "Failed plugin calls, by kind: trap, deadline, memory, bad_output, instantiate",
            f.failures.clone(),
        );
        r.register(
            "plugin_reloads",
            "Plugin hot reloads, by result: ok, failed",
            f.reloads.clone(),
        );
        r.register(
            "plugin_warm_instances",
            "Warm instances kept for a plugin, at scrape time",
            f.warm_instances.clone(),
        );
        r.register(
            "plugin_info",
            "The plugin version serving each app's routes (always 1)",
            f.plugin_info.clone(),
        );
        r.register(
            "node_info",
            "This node's name and Roost version (always 1)",
            f.node_info.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the server started",
            f.uptime.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "Resident memory of the server process",
            f.resident_memory.clone(),
        );
        Self {
            shared: Arc::new(Shared {
                registry,
                families,
                reloads: Arc::default(),
                started: Instant::now(),
                started_at: SystemTime::now(),
            }),
        }
    }

    /// The handles of app `app`, every label set resolved now, so each
    /// series exists (at 0) before anything happens.
    pub fn app(&self, app: &str) -> AppMetrics {
        let f = &self.shared.families;
        let labels = AppLabels {
            app: app.to_owned(),
        };
        let sockets = TRANSPORTS.map(|transport| {
            f.sockets.get_or_create_owned(&TransportLabels {
                app: app.to_owned(),
                transport: transport.to_owned(),
            })
        });
        let joins = JoinOutcome::ALL.map(|outcome| {
            f.joins.get_or_create_owned(&OutcomeLabels {
                app: app.to_owned(),
                outcome: outcome.label().to_owned(),
            })
        });
        let disconnects = DISCONNECT_REASONS.map(|reason| {
            f.disconnects.get_or_create_owned(&ReasonLabels {
                app: app.to_owned(),
                reason: snake_case(reason),
            })
        });
        let rate_limited = RATE_LIMITED_KINDS.map(|kind| {
            f.rate_limited.get_or_create_owned(&RateLabels {
                app: app.to_owned(),
                kind: kind.to_owned(),
            })
        });
        let refusals = TRANSPORTS.map(|transport| {
            refusal::ALL.map(|reason| {
                f.refusals.get_or_create_owned(&RefusalLabels {
                    app: app.to_owned(),
                    transport: transport.to_owned(),
                    reason: reason.to_owned(),
                })
            })
        });
        AppMetrics {
            handles: Arc::new(AppHandles {
                sockets,
                channels: f.channels.get_or_create_owned(&labels),
                joins,
                messages_in: f.messages_in.get_or_create_owned(&labels),
                messages_out: f.messages_out.get_or_create_owned(&labels),
                broadcasts: f.broadcasts.get_or_create_owned(&labels),
                deliveries: f.deliveries.get_or_create_owned(&labels),
                outbox_bytes: f.outbox_bytes.get_or_create_owned(&labels),
                disconnects,
                rate_limited,
                refusals,
            }),
        }
    }

    /// The handles of plugin `plugin` serving app `app`.
    pub fn plugin(&self, app: &str, plugin: &str) -> PluginMetrics {
        let f = &self.shared.families;
        let calls = Callback::ALL.map(|callback| {
            f.calls.get_or_create_owned(&CallLabels {
                app: app.to_owned(),
                plugin: plugin.to_owned(),
                callback: callback.label().to_owned(),
            })
        });
        let failures = FAILURE_KINDS.map(|kind| {
            f.failures.get_or_create_owned(&KindLabels {
                app: app.to_owned(),
                plugin: plugin.to_owned(),
                kind: kind.to_owned(),
            })
        });
        let reloads = ["ok", "failed"].map(|result| {
            f.reloads.get_or_create_owned(&ResultLabels {
                app: app.to_owned(),
                plugin: plugin.to_owned(),
                result: result.to_owned(),
            })
        });
        PluginMetrics {
            handles: Arc::new(PluginHandles {
                app: app.into(),
                plugin: plugin.into(),
                calls,
                failures,
                failure_family: f.failures.clone(),
                reloads,
                recent: self.shared.reloads.clone(),
            }),
        }
    }

    /// Open long-poll sessions, server-wide; set at scrape time.
    pub fn set_longpoll_sessions(&self, sessions: usize) {
        self.shared
            .families
            .longpoll_sessions
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
    }

    /// Replaces what is known of every plugin now (version, warm
    /// instances), from the apps' current routes; set at scrape time, so a
    /// plugin no longer routed stops being listed.
    pub fn set_plugins(&self, plugins: &[PluginState<'_>]) {
        let f = &self.shared.families;
        f.plugin_info.clear();
        f.warm_instances.clear();
        for plugin in plugins {
            f.plugin_info
                .get_or_create(&InfoLabels {
                    app: plugin.app.to_owned(),
                    plugin: plugin.plugin.to_owned(),
                    version: plugin.version.to_owned(),
                    wit: plugin.wit.to_owned(),
                })
                .set(1);
            f.warm_instances
                .get_or_create(&PluginLabels {
                    app: plugin.app.to_owned(),
                    plugin: plugin.plugin.to_owned(),
                })
                .set(i64::try_from(plugin.warm_instances).unwrap_or(i64::MAX));
        }
    }

    /// Sets the node's own gauges: name and version, uptime, memory.
    pub fn set_node(&self, node: &str, resident_memory: Option<u64>) {
        let f = &self.shared.families;
        f.node_info
            .get_or_create(&NodeLabels {
                node: node.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        f.uptime.set(self.uptime_seconds());
        if let Some(bytes) = resident_memory {
            f.resident_memory
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Seconds since this registry (the server) started.
    pub fn uptime_seconds(&self) -> f64 {
        self.shared.started.elapsed().as_secs_f64()
    }

    /// When the server started.
    pub fn started_at(&self) -> SystemTime {
        self.shared.started_at
    }

    /// The recent plugin reloads, oldest first.
    pub fn recent_reloads(&self) -> Vec<ReloadEvent> {
        lock(&self.shared.reloads).iter().cloned().collect()
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a metric, and half the text is still worth serving.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.shared.registry)
        {
            tracing::warn!("encoding metrics: {error}");
        }
        text
    }
}

/// One plugin as the scrape sees it, for [`Metrics::set_plugins`].
#[derive(Debug, Clone, Copy)]
pub struct PluginState<'a> {
    pub app: &'a str,
    pub plugin: &'a str,
    pub version: &'a str,
    pub wit: &'a str,
    pub warm_instances: usize,
}

/// A plugin reload, for the dashboard's list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEvent {
    /// Milliseconds since the Unix epoch.
    pub at: u64,
    pub app: String,
    pub plugin: String,
    /// The version now serving (for a failure, still the old one).
    pub version: String,
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// One app's handles. Cheap to clone.
#[derive(Clone)]
pub struct AppMetrics {
    handles: Arc<AppHandles>,
}

struct AppHandles {
    /// By [`TRANSPORTS`] index.
    sockets: [Gauge; 2],
    channels: Gauge,
    /// By [`JoinOutcome::ALL`] index.
    joins: [Counter; 3],
    messages_in: Counter,
    messages_out: Counter,
    broadcasts: Counter,
    deliveries: Counter,
    outbox_bytes: Gauge,
    /// By [`DISCONNECT_REASONS`] index.
    disconnects: [Counter; 8],
    /// By [`RATE_LIMITED_KINDS`] index.
    rate_limited: [Counter; 3],
    /// By [`TRANSPORTS`], then [`refusal::ALL`] index.
    refusals: [[Counter; refusal::ALL.len()]; 2],
}

/// What an app's counters say now, for the dashboard's rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AppTotals {
    pub websocket: i64,
    pub longpoll: i64,
    pub channels: i64,
    pub joins_ok: u64,
    pub joins_error: u64,
    pub joins_crashed: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub broadcasts: u64,
    pub deliveries: u64,
    pub slow_consumers: u64,
    pub disconnects: u64,
    pub refusals: u64,
}

impl AppMetrics {
    /// Handles registered nowhere, for an app made outside a server (tests).
    pub fn unregistered() -> Self {
        Metrics::new().app("-")
    }

    /// Counts an open socket on `transport` until the guard drops.
    pub fn connected(&self, transport: &str) -> ConnectionGauge {
        let index = TRANSPORTS.iter().position(|t| *t == transport).unwrap_or(0);
        let gauge = self.handles.sockets[index].clone();
        gauge.inc();
        ConnectionGauge { gauge }
    }

    /// A channel joined (`true`) or gone (`false`).
    pub fn channel(&self, joined: bool) {
        if joined {
            self.handles.channels.inc();
        } else {
            self.handles.channels.dec();
        }
    }

    pub fn join(&self, outcome: JoinOutcome) {
        let index = JoinOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handles.joins[index].inc();
    }

    /// A message from a client.
    pub fn message_in(&self) {
        self.handles.messages_in.inc();
    }

    /// `frames` written to a client in one flush.
    pub fn messages_out(&self, frames: usize) {
        self.handles.messages_out.inc_by(frames as u64);
    }

    /// A broadcast that reached `subscribers`.
    pub fn broadcast(&self, subscribers: usize) {
        self.handles.broadcasts.inc();
        self.handles.deliveries.inc_by(subscribers as u64);
    }

    /// A socket the server closed, for `reason` (`Close::reason`).
    pub fn disconnected(&self, reason: &str) {
        match DISCONNECT_REASONS.iter().position(|r| *r == reason) {
            Some(index) => {
                self.handles.disconnects[index].inc();
            }
            None => tracing::debug!(reason, "no disconnect metric for this reason"),
        }
    }

    /// A message refused for its socket's rate: a join, or another.
    pub fn rate_limited(&self, join: bool) {
        self.handles.rate_limited[usize::from(join)].inc();
    }

    /// A broadcast refused: the app was over `limits.broadcasts_per_second`.
    pub fn broadcast_rate_limited(&self) {
        self.handles.rate_limited[2].inc();
    }

    /// A connection refused on `transport` for `reason` (see [`refusal`]).
    pub fn refused(&self, transport: &str, reason: &str) {
        let by_transport = TRANSPORTS.iter().position(|t| *t == transport).unwrap_or(0);
        match refusal::ALL.iter().position(|r| *r == reason) {
            Some(index) => {
                self.handles.refusals[by_transport][index].inc();
            }
            None => tracing::debug!(reason, "no refusal metric for this reason"),
        }
    }

    /// Bytes queued in the app's mailboxes; set at scrape time.
    pub fn set_outbox_bytes(&self, bytes: usize) {
        self.handles
            .outbox_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The counters now.
    pub fn totals(&self) -> AppTotals {
        let h = &self.handles;
        let slow = DISCONNECT_REASONS
            .iter()
            .position(|r| *r == "slow consumer")
            .map_or(0, |i| h.disconnects[i].get());
        AppTotals {
            websocket: h.sockets[0].get(),
            longpoll: h.sockets[1].get(),
            channels: h.channels.get(),
            joins_ok: h.joins[0].get(),
            joins_error: h.joins[1].get(),
            joins_crashed: h.joins[2].get(),
            messages_in: h.messages_in.get(),
            messages_out: h.messages_out.get(),
            broadcasts: h.broadcasts.get(),
            deliveries: h.deliveries.get(),
            slow_consumers: slow,
            disconnects: h.disconnects.iter().map(Counter::get).sum(),
            refusals: h.refusals.iter().flatten().map(Counter::get).sum(),
        }
    }
}

/// An open socket, counted in `roost_sockets_active` until dropped.
pub struct ConnectionGauge {
    gauge: Gauge,
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One plugin's handles, for one app. Cheap to clone.
#[derive(Clone)]
pub struct PluginMetrics {
    handles: Arc<PluginHandles>,
}

struct PluginHandles {
    app: Arc<str>,
    plugin: Arc<str>,
    /// By [`Callback::ALL`] index.
    calls: [CallHistogram; Callback::ALL.len()],
    /// By [`FAILURE_KINDS`] index.
    failures: [Counter; 5],
    /// For a kind not in [`FAILURE_KINDS`] (rare by definition).
    failure_family: Family<KindLabels, Counter>,
    /// `ok`, `failed`.
    reloads: [Counter; 2],
    recent: Arc<Mutex<VecDeque<ReloadEvent>>>,
}

impl PluginMetrics {
    /// Handles registered nowhere, for a plugin made outside a server.
    pub fn unregistered() -> Self {
        Metrics::new().plugin("-", "-")
    }

    /// Times a call of `callback`: observed when the guard drops, however
    /// the call ends.
    pub fn time(&self, callback: Callback) -> CallTimer<'_> {
        let index = Callback::ALL
            .iter()
            .position(|c| *c == callback)
            .unwrap_or(0);
        CallTimer {
            histogram: &self.handles.calls[index],
            started: Instant::now(),
        }
    }

    /// A failed call of this kind (`PluginError::kind`).
    pub fn failed(&self, kind: &str) {
        match FAILURE_KINDS.iter().position(|k| *k == kind) {
            Some(index) => {
                self.handles.failures[index].inc();
            }
            None => {
                self.handles
                    .failure_family
                    .get_or_create(&KindLabels {
                        app: self.handles.app.to_string(),
                        plugin: self.handles.plugin.to_string(),
                        kind: kind.to_owned(),
                    })
                    .inc();
            }
        }
    }

    /// A reload that swapped in `version`.
    pub fn reloaded(&self, version: &str) {
        self.handles.reloads[0].inc();
        self.remember(version, None);
    }

    /// A reload that failed; `version` keeps serving.
    pub fn reload_failed(&self, version: &str, error: &str) {
        self.handles.reloads[1].inc();
        self.remember(version, Some(error));
    }

    fn remember(&self, version: &str, error: Option<&str>) {
        let event = ReloadEvent {
            at: unix_millis(SystemTime::now()),
            app: self.handles.app.to_string(),
            plugin: self.handles.plugin.to_string(),
            version: version.to_owned(),
            ok: error.is_none(),
            error: error.map(str::to_owned),
        };
        let mut recent = lock(&self.handles.recent);
        if recent.len() == RECENT_RELOADS {
            recent.pop_front();
        }
        recent.push_back(event);
    }
}

/// A running guest call; see [`PluginMetrics::time`].
pub struct CallTimer<'a> {
    histogram: &'a CallHistogram,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `slow consumer` → `slow_consumer`.
fn snake_case(words: &str) -> String {
    words.replace(' ', "_")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single-step updates: a poisoned list is still consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample line of `name` with exactly these labels, e.g.
    /// `value(&text, "roost_joins_total", r#"app="a",outcome="ok""#)`.
    fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn app_series_exist_at_zero_and_count() {
        let metrics = Metrics::new();
        let app = metrics.app("demo");
        let text = metrics.encode();
        assert_eq!(
            value(
                &text,
                "roost_joins_total",
                r#"app="demo",outcome="crashed""#
            ),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "roost_disconnects_total",
                r#"app="demo",reason="slow_consumer""#
            ),
            Some(0.0)
        );
        app.join(JoinOutcome::Ok);
        app.message_in();
        app.messages_out(3);
        app.broadcast(10);
        app.disconnected("slow consumer");
        app.refused("longpoll", refusal::TOKEN_EXPIRED);
        let socket = app.connected("websocket");
        app.channel(true);
        let text = metrics.encode();
        for (name, labels, want) in [
            ("roost_joins_total", r#"app="demo",outcome="ok""#, 1.0),
            ("roost_messages_in_total", r#"app="demo""#, 1.0),
            ("roost_messages_out_total", r#"app="demo""#, 3.0),
            ("roost_broadcasts_total", r#"app="demo""#, 1.0),
            ("roost_broadcast_deliveries_total", r#"app="demo""#, 10.0),
            (
                "roost_disconnects_total",
                r#"app="demo",reason="slow_consumer""#,
                1.0,
            ),
            (
                "roost_connect_refusals_total",
                r#"app="demo",transport="longpoll",reason="token_expired""#,
                1.0,
            ),
            (
                "roost_sockets_active",
                r#"app="demo",transport="websocket""#,
                1.0,
            ),
            ("roost_channels_joined", r#"app="demo""#, 1.0),
        ] {
            assert_eq!(value(&text, name, labels), Some(want), "{name}{{{labels}}}");
        }
        drop(socket);
        let totals = app.totals();
        assert_eq!((totals.websocket, totals.slow_consumers), (0, 1));
        assert!(
            metrics
                .encode()
                .contains("# TYPE roost_joins_total counter")
        );
    }

    #[test]
    fn plugin_calls_are_timed_and_reloads_remembered() {
        let metrics = Metrics::new();
        let plugin = metrics.plugin("demo", "ping");
        drop(plugin.time(Callback::HandleIn));
        plugin.handles.calls[0].observe(Duration::from_millis(3));
        plugin.handles.calls[0].observe(Duration::from_secs(60));
        plugin.failed("deadline");
        plugin.failed("something new");
        plugin.reloaded("abc");
        plugin.reload_failed("abc", "bad file");
        let text = metrics.encode();
        let labels = r#"app="demo",plugin="ping",callback="handle_in""#;
        assert_eq!(
            value(&text, "roost_guest_call_duration_seconds_count", labels),
            Some(1.0),
            "{text}"
        );
        let join = r#"app="demo",plugin="ping",callback="join""#;
        let bucket = |le: &str| {
            value(
                &text,
                "roost_guest_call_duration_seconds_bucket",
                &format!("{join},le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0.001"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0), "cumulative: 3 ms is under 5 ms");
        assert_eq!(bucket("5"), Some(1.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(2.0), "a minute is over every bound");
        assert_eq!(
            value(&text, "roost_guest_call_duration_seconds_sum", join),
            Some(60.003)
        );
        for (kind, want) in [("deadline", 1.0), ("trap", 0.0), ("something new", 1.0)] {
            let labels = format!(r#"app="demo",plugin="ping",kind="{kind}""#);
            assert_eq!(
                value(&text, "roost_guest_failures_total", &labels),
                Some(want)
            );
        }
        let reloads = metrics.recent_reloads();
        assert_eq!(reloads.len(), 2);
        assert!(reloads[0].ok && !reloads[1].ok);
        assert_eq!(reloads[1].error.as_deref(), Some("bad file"));
        assert_eq!(
            value(
                &text,
                "roost_plugin_reloads_total",
                r#"app="demo",plugin="ping",result="failed""#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn the_same_labels_share_one_series() {
        let metrics = Metrics::new();
        metrics.app("a").message_in();
        metrics.app("a").message_in();
        let text = metrics.encode();
        assert_eq!(
            value(&text, "roost_messages_in_total", r#"app="a""#),
            Some(2.0)
        );
    }

    #[test]
    fn plugin_state_is_replaced_at_each_scrape() {
        let metrics = Metrics::new();
        let state = |version| PluginState {
            app: "a",
            plugin: "p",
            version,
            wit: "roost:channel@0.1.0",
            warm_instances: 2,
        };
        metrics.set_plugins(&[state("v1")]);
        metrics.set_plugins(&[state("v2")]);
        let text = metrics.encode();
        assert!(!text.contains(r#"version="v1""#), "{text}");
        assert!(text.contains(r#"version="v2""#), "{text}");
    }
}
