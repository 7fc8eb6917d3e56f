//! The dashboard's view of the server: a snapshot (nodes, apps, plugins,
//! busiest topics, recent reloads) as one JSON object, with per-second
//! rates derived from the same counters `/metrics` exports.
//!
//! A ticker samples every app's counters once a second, keeps the last
//! minute of server-wide rates for the page's sparklines, and, while
//! anyone watches (an admin socket joined to `roost:dashboard`), builds a
//! snapshot and publishes it on a `watch` channel; `/dashboard/state`
//! builds one on demand. Counters are read, never reset: rates are
//! differences between two samples.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::apps::Apps;
use crate::metrics::{AppTotals, Metrics, PluginState, unix_millis};
use crate::shutdown::Shutdown;

/// How often counters are sampled and watchers get a snapshot.
pub const TICK: Duration = Duration::from_secs(1);

/// Seconds of server-wide rates kept for the sparklines.
const HISTORY: usize = 60;

/// Topics listed per app, busiest first.
const BUSIEST_TOPICS: usize = 10;

/// Per-second rates of one app (or of all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub joins: f64,
    pub messages_in: f64,
    pub messages_out: f64,
    pub broadcasts: f64,
    pub deliveries: f64,
}

impl Rates {
    fn between(before: &AppTotals, after: &AppTotals, seconds: f64) -> Self {
        let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        Self {
            joins: per_second(
                before.joins_ok + before.joins_error + before.joins_crashed,
                after.joins_ok + after.joins_error + after.joins_crashed,
            ),
            messages_in: per_second(before.messages_in, after.messages_in),
            messages_out: per_second(before.messages_out, after.messages_out),
            broadcasts: per_second(before.broadcasts, after.broadcasts),
            deliveries: per_second(before.deliveries, after.deliveries),
        }
    }

    fn add(&mut self, other: &Self) {
        self.joins += other.joins;
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.broadcasts += other.broadcasts;
        self.deliveries += other.deliveries;
    }
}

/// One second of server-wide activity, for the sparklines.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    /// Milliseconds since the Unix epoch.
    t: u64,
    sockets: i64,
    channels: i64,
    #[serde(flatten)]
    rates: Rates,
}

/// What the ticker remembers between samples.
#[derive(Default)]
struct Sampled {
    /// Each app's counters at the last tick.
    last: HashMap<Arc<str>, (Instant, AppTotals)>,
    /// Each app's rates over the last tick.
    rates: HashMap<Arc<str>, Rates>,
    history: VecDeque<Sample>,
}

/// The dashboard's state. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    shared: Arc<Shared>,
}

struct Shared {
    apps: Apps,
    metrics: Metrics,
    node: String,
    /// Open long-poll sessions now (the transport's registry).
    longpoll_sessions: Box<dyn Fn() -> usize + Send + Sync>,
    sampled: Mutex<Sampled>,
    /// The latest snapshot, JSON text, for the admin sockets.
    snapshots: watch::Sender<Arc<str>>,
}

impl Dashboard {
    pub fn new(
        apps: Apps,
        metrics: Metrics,
        node: &str,
        longpoll_sessions: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                apps,
                metrics,
                node: node.to_owned(),
                longpoll_sessions: Box::new(longpoll_sessions),
                sampled: Mutex::default(),
                snapshots: watch::Sender::new(Arc::from("{}")),
            }),
        }
    }

    /// Samples once a second until shutdown.
    pub fn run(&self, shutdown: &Shutdown) {
        let dashboard = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => dashboard.tick(),
                }
            }
        });
    }

    /// The latest snapshot, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<str>> {
        self.shared.snapshots.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Samples the counters; if anyone watches, publishes a snapshot.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut total = Rates::default();
        let (mut sockets, mut channels) = (0, 0);
        {
            let mut sampled = lock(&self.shared.sampled);
            let mut seen = Vec::new();
            for app in self.shared.apps.all() {
                let totals = app.metrics().totals();
                let name = app.name().clone();
                let rates = match sampled.last.get(&name) {
                    Some((at, before)) => {
                        let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
                        Rates::between(before, &totals, seconds)
                    }
                    None => Rates::default(),
                };
                total.add(&rates);
                sockets += totals.websocket + totals.longpoll;
                channels += totals.channels;
                sampled.rates.insert(name.clone(), rates);
                sampled.last.insert(name.clone(), (now, totals));
                seen.push(name);
            }
            // Removed apps leave the lists.
            sampled.last.retain(|name, _| seen.contains(name));
            sampled.rates.retain(|name, _| seen.contains(name));
            if sampled.history.len() == HISTORY {
                sampled.history.pop_front();
            }
            sampled.history.push_back(Sample {
                t: unix_millis(SystemTime::now()),
                sockets,
                channels,
                rates: total,
            });
        }
        if self.shared.snapshots.receiver_count() > 0 {
            let snapshot = self.snapshot().to_string();
            self.shared.snapshots.send_replace(Arc::from(snapshot));
        }
    }

    /// Sets the gauges that are read from the server's state rather than
    /// counted: outbox bytes, long-poll sessions, plugins, the node.
    pub fn refresh_gauges(&self) {
        let metrics = &self.shared.metrics;
        let mut plugins = Vec::new();
        let apps = self.shared.apps.all();
        for app in &apps {
            app.metrics().set_outbox_bytes(app.outbox_bytes());
            for slot in app.state().router().slots() {
                plugins.push((app.name().clone(), slot.status()));
            }
        }
        let states: Vec<PluginState<'_>> = plugins
            .iter()
            .map(|(app, status)| PluginState {
                app,
                plugin: &status.plugin,
                version: &status.version,
                wit: status.wit,
                warm_instances: status.warm_instances,
            })
            .collect();
        metrics.set_plugins(&states);
        metrics.set_longpoll_sessions((self.shared.longpoll_sessions)());
        metrics.set_node(&self.shared.node, resident_memory());
    }

    /// Everything the page shows, now.
    pub fn snapshot(&self) -> Value {
        let metrics = &self.shared.metrics;
        let sampled = lock(&self.shared.sampled);
        let mut apps: Vec<_> = self.shared.apps.all();
        apps.sort_by(|a, b| a.name().cmp(b.name()));
        let mut totals = AppTotals::default();
        let mut app_views = Vec::new();
        for app in &apps {
            let state = app.state();
            let config = state.config();
            let counted = app.metrics().totals();
            add_totals(&mut totals, &counted);
            let (topic_count, busiest) = app.pubsub().busiest(BUSIEST_TOPICS);
            let topics: Vec<Value> = busiest
                .into_iter()
                .map(|(topic, subscribers)| json!({ "topic": topic, "subscribers": subscribers }))
                .collect();
            let plugins: Vec<Value> = state
                .router()
                .slots()
                .map(|slot| {
                    let status = slot.status();
                    let routes: Vec<&String> = config
                        .routes
                        .iter()
                        .filter(|(_, path)| path.as_path() == slot.path())
                        .map(|(pattern, _)| pattern)
                        .collect();
                    let mut view = serde_json::to_value(&status).unwrap_or(Value::Null);
                    if let Value::Object(fields) = &mut view {
                        fields.insert("routes".into(), json!(routes));
                    }
                    view
                })
                .collect();
            app_views.push(json!({
                "name": &**app.name(),
                "mount": config.mount,
                "web_path": config.web_path,
                "sockets": counted.websocket + counted.longpoll,
                "transports": { "websocket": counted.websocket, "longpoll": counted.longpoll },
                "channels": counted.channels,
                "topics": topic_count,
                "outbox_bytes": app.outbox_bytes(),
                "totals": counted,
                "rates": sampled.rates.get(app.name()).copied().unwrap_or_default(),
                "busiest": topics,
                "plugins": plugins,
            }));
        }
        let total_rates = sampled.history.back().map(|s| s.rates).unwrap_or_default();
        let mut reloads = metrics.recent_reloads();
        reloads.reverse();
        let node = json!({
            "name": self.shared.node,
            "version": env!("CARGO_PKG_VERSION"),
            "self": true,
            "started_at": unix_millis(metrics.started_at()),
            "uptime_seconds": metrics.uptime_seconds(),
            "memory_bytes": resident_memory(),
            "sockets": totals.websocket + totals.longpoll,
            "channels": totals.channels,
        });
        json!({
            "at": unix_millis(SystemTime::now()),
            "tick_ms": TICK.as_millis() as u64,
            "nodes": [node],
            "totals": {
                "sockets": totals.websocket + totals.longpoll,
                "websocket": totals.websocket,
                "longpoll": totals.longpoll,
                "longpoll_sessions": (self.shared.longpoll_sessions)(),
                "channels": totals.channels,
                "counters": totals,
                "rates": total_rates,
            },
            "history": sampled.history,
            "apps": app_views,
            "reloads": reloads,
        })
    }
}

fn add_totals(sum: &mut AppTotals, app: &AppTotals) {
    sum.websocket += app.websocket;
    sum.longpoll += app.longpoll;
    sum.channels += app.channels;
    sum.joins_ok += app.joins_ok;
    sum.joins_error += app.joins_error;
    sum.joins_crashed += app.joins_crashed;
    sum.messages_in += app.messages_in;
    sum.messages_out += app.messages_out;
    sum.broadcasts += app.broadcasts;
    sum.deliveries += app.deliveries;
    sum.slow_consumers += app.slow_consumers;
    sum.disconnects += app.disconnects;
    sum.refusals += app.refusals;
}

/// This process's resident memory, from `/proc` (Linux); `None` elsewhere.
fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The ticker's state is rebuilt from counters each second: a panic
    // mid-update loses nothing that matters.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_per_second() {
        let before = AppTotals {
            messages_in: 10,
            joins_ok: 1,
            ..AppTotals::default()
        };
        let after = AppTotals {
            messages_in: 30,
            joins_ok: 2,
            joins_crashed: 1,
            ..AppTotals::default()
        };
        let rates = Rates::between(&before, &after, 2.0);
        assert_eq!(rates.messages_in, 10.0);
        assert_eq!(rates.joins, 1.0);
        assert_eq!(rates.deliveries, 0.0);
    }
}
