//! The cluster broker on Redis: the nodes that share a Redis serve as one
//! server. One [`RedisBroker`] per server; each app gets a view of it
//! ([`RedisBroker::join_app`]) as its [`Broker`] and presence
//! [`Replicator`].
//!
//! # Channels: one per topic with subscribers here
//! A node `SUBSCRIBE`s to `<prefix>:<app>:t:<topic>` when the topic gets
//! its first local subscriber and `UNSUBSCRIBE`s when it loses its last
//! (as centrifuge does), so a node receives only the topics it serves. A
//! broadcast is one `PUBLISH` to its topic's channel whatever the number of
//! nodes or subscribers; each node decodes it once and fans it out locally
//! (encoded once per serializer, or through `handle_out`, decided by that
//! node's routes). Each app also has `<prefix>:<app>:ctl` (API disconnects).
//! Channel changes are batched (512 channels per command) by one task.
//!
//! # Publishing is bounded
//! Broadcasts and presence writes wait in one queue (`publish_queue`) for
//! one publisher task, which sends them in pipelines, in order: so a
//! channel's broadcasts reach every node in the order it made them. A full
//! queue, or a Redis that is down, drops messages (counted as not
//! replicated) instead of buffering them; local subscribers already have
//! them.
//!
//! # Presence through Redis
//! Each node writes its own entries of a topic to a hash
//! `<prefix>:<app>:presence:<node>:<topic>` (`seq → entry`, plus `v`, the op
//! of its last change, see `presence::replica`), listed in
//! `<prefix>:<app>:presence-nodes:<topic>` (and, for cleanup, in
//! `<prefix>:<app>:presence-topics:<node>`), then publishes the change on
//! the topic's channel. A node that subscribes to a topic reads those
//! hashes after its subscription is confirmed, before the join that caused
//! it runs (`Broker::ready`), so `presence_state` lists every node's users.
//! A change updates the other nodes' copies silently: subscribers get its
//! `presence_diff` as the ordinary broadcast the tracking node made of it
//! (published right after, so in order with the channel's other
//! broadcasts). Only differences no broadcast carried — a reread after lost
//! changes, a snapshot after an outage, a node gone — are sent as diffs by
//! the receiving node itself.
//!
//! # Liveness
//! Every tick (a fifth of `node_timeout_ms`, at most 1 s) a node rewrites
//! its field in `<prefix>:nodes` and reads the others (`nodes::View`). A
//! node gone for the timeout has its entries dropped here, with
//! `presence_diff` leaves to local subscribers, and its keys removed from
//! Redis.
//!
//! # When Redis fails
//! Calls fail fast (`cluster::RedisLink`): the link is marked degraded,
//! local service goes on, publishes are dropped and counted, joins do not
//! wait. The managers reconnect with backoff. On the first good tick
//! after, the node resyncs: subscribes again to every topic it serves,
//! writes and publishes a snapshot of its own presence, and rereads
//! everyone else's, sending its subscribers the differences.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::nodes::{Beat, View};
use super::wire::{self, Message};
use super::{BoxFuture, Broker, Inbound, Ready};
use crate::cluster::RedisLink;
use crate::config::ClusterConfig;
use crate::presence::{Change, Entry, NodeId, Presence, Replicator};
use crate::protocol::{Payload, event};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command, as centrifuge batches
/// them: few round trips for a burst, no huge command.
const CHANNEL_BATCH: usize = 512;

/// Jobs per publish pipeline: one round trip carries many broadcasts.
const PIPELINE_BATCH: usize = 256;

/// Pushes (messages from Redis) waiting for the inbound task; beyond it
/// they are dropped and counted rather than buffered without limit.
const INBOUND_QUEUE: usize = 65_536;

/// The server's broker on Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    shared: Arc<Shared>,
}

struct Shared {
    link: RedisLink,
    node: NodeId,
    /// Our id in key names.
    me: String,
    name: Arc<str>,
    /// The connection that subscribes (its pushes feed the inbound task).
    subscriber: ConnectionManager,
    apps: Mutex<HashMap<Arc<str>, Registration>>,
    /// Redis channel → what this node wants of it.
    channels: Mutex<HashMap<String, Channel>>,
    work: Mutex<Work>,
    work_ready: Notify,
    queue: mpsc::Sender<Job>,
    /// Topics whose presence writes were dropped, by app: republished on
    /// the next resync.
    dirty: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    view: Mutex<View>,
    stats: Stats,
    tick: Duration,
    stop: CancellationToken,
    next_registration: AtomicU64,
}

/// An app that joined the broker. Weak: the app owns its broker, not the
/// other way round.
#[derive(Clone)]
struct Registration {
    id: u64,
    inbound: Weak<dyn Inbound>,
}

/// A Redis channel this node subscribes to, or did.
struct Channel {
    app: Arc<str>,
    /// The topic; none for the app's control channel.
    topic: Option<String>,
    /// Local subscribers (or the app) want it.
    wanted: bool,
    /// Redis confirmed the subscription.
    subscribed: bool,
    /// Subscribed, and the other nodes' presence read.
    ready: bool,
    /// Joins waiting for `ready`.
    waiters: Vec<oneshot::Sender<()>>,
    /// A join went on without the other nodes' presence (Redis was
    /// down): the first read must tell subscribers what it finds.
    unsynced: bool,
}

/// What the maintenance task has to do.
#[derive(Default)]
struct Work {
    /// Channels whose `wanted` changed.
    changed: Vec<String>,
    /// Topic channels whose presence must be read again (a gap).
    refetch: Vec<String>,
    /// Resubscribe, republish and reread everything; `Some(intact)`,
    /// where `intact` says Redis kept its data.
    resync: Option<bool>,
    /// Republish the dirty topics (the queue overflowed, Redis is up).
    republish: bool,
}

enum Job {
    Publish {
        channel: String,
        message: Vec<u8>,
    },
    Presence {
        app: Arc<str>,
        topic: String,
        change: Change,
    },
}

#[derive(Default)]
struct Stats {
    published: AtomicU64,
    not_replicated: AtomicU64,
    received: AtomicU64,
    inbound_dropped: AtomicU64,
    resyncs: AtomicU64,
    nodes_gone: AtomicU64,
}

/// The cluster as this node sees it, for the status API (and metrics).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub redis: String,
    /// Redis is unreachable: local service only.
    pub degraded: bool,
    pub problem: Option<String>,
    /// This node and every other node alive.
    pub nodes: Vec<NodeStatus>,
    /// Messages published to Redis (broadcasts and presence changes).
    pub published: u64,
    /// Messages not published: queue full or Redis down.
    pub not_replicated: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Messages from Redis dropped because this node fell behind.
    pub inbound_dropped: u64,
    /// Times this node resynced after Redis came back.
    pub resyncs: u64,
    /// Nodes this node found gone.
    pub nodes_gone: u64,
    /// Redis channels subscribed.
    pub channels: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub id: String,
    /// The node that answered.
    #[serde(rename = "self")]
    pub this: bool,
}

impl RedisBroker {
    /// Starts the broker's tasks (publisher, inbound, maintenance,
    /// liveness) for the node `node` called `name`. Redis need not be up.
    pub fn start(
        link: RedisLink,
        config: &ClusterConfig,
        node: NodeId,
        name: &str,
    ) -> anyhow::Result<Self> {
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(INBOUND_QUEUE);
        let (queue, jobs) = mpsc::channel(config.publish_queue);
        let stats = Stats::default();
        let dropped_link = link.clone();
        let shared_slot: Arc<std::sync::OnceLock<Weak<Shared>>> = Arc::default();
        let slot = shared_slot.clone();
        // Runs on the connection's reading task: never blocks.
        let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            if info.kind == PushKind::Disconnection {
                dropped_link.down("subscriptions", &"connection lost");
                return Ok(());
            }
            if push_tx.try_send(info).is_err()
                && let Some(shared) = slot.get().and_then(Weak::upgrade)
            {
                shared.stats.inbound_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        };
        let subscriber = link.subscriber(push)?;
        let tick =
            (config.node_timeout() / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let shared = Arc::new(Shared {
            me: node.hex(),
            view: Mutex::new(View::new(node, config.node_timeout())),
            link,
            node,
            name: name.into(),
            subscriber,
            apps: Mutex::default(),
            channels: Mutex::default(),
            work: Mutex::default(),
            work_ready: Notify::new(),
            queue,
            dirty: Mutex::default(),
            stats,
            tick,
            stop: CancellationToken::new(),
            next_registration: AtomicU64::new(1),
        });
        let _ = shared_slot.set(Arc::downgrade(&shared));
        tokio::spawn(publisher(shared.clone(), jobs));
        tokio::spawn(inbound(shared.clone(), push_rx));
        tokio::spawn(maintain(shared.clone()));
        tokio::spawn(liveness(shared.clone()));
        tracing::info!(
            redis = shared.link.url(),
            node = name,
            id = shared.me,
            "cluster broker started"
        );
        Ok(Self { shared })
    }

    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// The Redis link, for other users of the cluster's Redis.
    pub fn link(&self) -> &RedisLink {
        &self.shared.link
    }

    /// Registers an app: returns its broker, and makes `presence`
    /// replicate through it. Messages for the app go to `inbound` while it
    /// lives.
    pub fn join_app(
        &self,
        app: &str,
        presence: &Presence,
        inbound: Weak<dyn Inbound>,
    ) -> Arc<dyn Broker> {
        // `inbound` is the app that owns `presence`: presence is reached
        // through it, so the registry holds nothing of the app strongly.
        let app: Arc<str> = app.into();
        let id = self
            .shared
            .next_registration
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.apps).insert(app.clone(), Registration { id, inbound });
        let broker = Arc::new(AppBroker {
            app: app.clone(),
            shared: self.shared.clone(),
            registration: id,
        });
        presence.set_replicator(broker.clone());
        self.shared.want(&app, None, true);
        broker
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let shared = &self.shared;
        let mut nodes = vec![NodeStatus {
            name: shared.name.to_string(),
            id: shared.me.clone(),
            this: true,
        }];
        nodes.extend(lock(&shared.view).alive().map(|(id, name)| NodeStatus {
            name: name.to_owned(),
            id: id.hex(),
            this: false,
        }));
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let stats = &shared.stats;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ClusterStatus {
            redis: shared.link.url().to_owned(),
            degraded: shared.link.is_degraded(),
            problem: shared.link.problem(),
            nodes,
            published: get(&stats.published),
            not_replicated: get(&stats.not_replicated),
            received: get(&stats.received),
            inbound_dropped: get(&stats.inbound_dropped),
            resyncs: get(&stats.resyncs),
            nodes_gone: get(&stats.nodes_gone),
            channels: lock(&shared.channels)
                .values()
                .filter(|c| c.subscribed)
                .count(),
        }
    }

    /// On shutdown, after the sockets are gone: lets the queue drain (at
    /// most 1 s, so the last leaves reach the other nodes), takes this node
    /// out of the registry and stops the tasks.
    pub async fn stop(&self) {
        let shared = &self.shared;
        let deadline = Instant::now() + Duration::from_secs(1);
        while shared.queue.capacity() < shared.queue.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut commands = shared.link.commands();
        let registry = shared.link.key("nodes");
        let _: Option<()> = shared
            .link
            .call(
                "leave",
                redis::cmd("HDEL")
                    .arg(&registry)
                    .arg(&shared.me)
                    .query_async(&mut commands),
            )
            .await;
        shared.stop.cancel();
    }
}

/// One app's view of the broker.
struct AppBroker {
    app: Arc<str>,
    shared: Arc<Shared>,
    registration: u64,
}

impl Broker for AppBroker {
    fn subscribe(&self, topic: &str) {
        self.shared.want(&self.app, Some(topic), true);
    }

    fn unsubscribe(&self, topic: &str) {
        self.shared.want(&self.app, Some(topic), false);
    }

    fn ready(&self, topic: &str) -> Ready {
        let channel = self.shared.topic_channel(&self.app, topic);
        let degraded = self.shared.link.is_degraded();
        let mut channels = lock(&self.shared.channels);
        let Some(state) = channels.get_mut(&channel) else {
            return Ready::now();
        };
        if state.ready {
            return Ready::now();
        }
        if degraded {
            state.unsynced = true;
            return Ready::now();
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push(tx);
        Ready::on(rx)
    }

    fn publish(&self, topic: &str, event: &str, payload: &Payload) {
        let message = wire::broadcast(self.shared.node, event, payload);
        let channel = self.shared.topic_channel(&self.app, topic);
        if self
            .shared
            .queue
            .try_send(Job::Publish { channel, message })
            .is_err()
        {
            self.shared
                .stats
                .not_replicated
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn disconnect<'a>(&'a self, socket_id: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let shared = &self.shared;
            let channel = shared.link.app_key(&self.app, "ctl");
            let message = wire::disconnect(shared.node, socket_id);
            let mut commands = shared.link.commands();
            let heard: Option<usize> = shared
                .link
                .call(
                    "disconnect",
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(message)
                        .query_async(&mut commands),
                )
                .await;
            let subscribed = lock(&shared.channels)
                .get(&channel)
                .is_some_and(|c| c.subscribed);
            // This node hears its own message too; it is not "another node".
            heard.map_or(0, |n| n.saturating_sub(usize::from(subscribed)))
        })
    }
}

impl Replicator for AppBroker {
    fn replicate(&self, topic: &str, change: Change) {
        let job = Job::Presence {
            app: self.app.clone(),
            topic: topic.to_owned(),
            change,
        };
        if self.shared.queue.try_send(job).is_err() {
            self.shared
                .stats
                .not_replicated
                .fetch_add(1, Ordering::Relaxed);
            self.shared.mark_dirty(&self.app, topic);
        }
    }
}

impl Drop for AppBroker {
    /// The app is gone (removed from the config, its last socket closed).
    fn drop(&mut self) {
        let mut apps = lock(&self.shared.apps);
        if apps
            .get(&self.app)
            .is_some_and(|r| r.id == self.registration)
        {
            apps.remove(&self.app);
            drop(apps);
            self.shared.want(&self.app, None, false);
        }
    }
}

impl Shared {
    fn topic_channel(&self, app: &str, topic: &str) -> String {
        self.link.app_key(app, &format!("t:{topic}"))
    }

    /// Records that a channel is wanted or not, for the maintenance task.
    fn want(&self, app: &Arc<str>, topic: Option<&str>, wanted: bool) {
        let channel = match topic {
            Some(topic) => self.topic_channel(app, topic),
            None => self.link.app_key(app, "ctl"),
        };
        {
            let mut channels = lock(&self.channels);
            let state = channels.entry(channel.clone()).or_insert_with(|| Channel {
                app: app.clone(),
                topic: topic.map(str::to_owned),
                wanted: false,
                subscribed: false,
                ready: false,
                waiters: Vec::new(),
                unsynced: false,
            });
            if state.wanted == wanted {
                return;
            }
            state.wanted = wanted;
        }
        lock(&self.work).changed.push(channel);
        self.work_ready.notify_one();
    }

    fn mark_dirty(&self, app: &Arc<str>, topic: &str) {
        lock(&self.dirty)
            .entry(app.clone())
            .or_default()
            .insert(topic.to_owned());
        if !self.link.is_degraded() {
            lock(&self.work).republish = true;
            self.work_ready.notify_one();
        }
    }

    /// The live app called `app`.
    fn inbound(&self, app: &str) -> Option<Arc<dyn Inbound>> {
        lock(&self.apps).get(app)?.inbound.upgrade()
    }

    /// Every live app.
    fn inbounds(&self) -> Vec<(Arc<str>, Arc<dyn Inbound>)> {
        lock(&self.apps)
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), r.inbound.upgrade()?)))
            .collect()
    }

    /// `<prefix>:<app>:` + `t:<topic>` or `ctl` → the app and the topic
    /// (none for `ctl`).
    fn parse_channel<'a>(&self, channel: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let rest = channel
            .strip_prefix(self.link.prefix())?
            .strip_prefix(':')?;
        let (app, rest) = rest.split_once(':')?;
        match rest {
            "ctl" => Some((app, None)),
            _ => Some((app, Some(rest.strip_prefix("t:")?))),
        }
    }
}

/// Sends queued jobs to Redis in pipelines, in order.
async fn publisher(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(PIPELINE_BATCH);
    let mut commands = shared.link.commands();
    loop {
        let received = tokio::select! {
            () = shared.stop.cancelled() => return,
            n = jobs.recv_many(&mut batch, PIPELINE_BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let count = batch.len() as u64;
        let sent = !shared.link.is_degraded() && {
            let mut pipe = redis::pipe();
            for job in &batch {
                add_job(&shared, &mut pipe, job);
            }
            shared
                .link
                .call("publish", pipe.query_async::<()>(&mut commands))
                .await
                .is_some()
        };
        if sent {
            shared.stats.published.fetch_add(count, Ordering::Relaxed);
        } else {
            shared
                .stats
                .not_replicated
                .fetch_add(count, Ordering::Relaxed);
            for job in &batch {
                if let Job::Presence { app, topic, .. } = job {
                    shared.mark_dirty(app, topic);
                }
            }
        }
        batch.clear();
    }
}

/// The commands of one job: a PUBLISH, after the presence writes if any.
fn add_job(shared: &Shared, pipe: &mut redis::Pipeline, job: &Job) {
    match job {
        Job::Publish { channel, message } => {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        Job::Presence { app, topic, change } => {
            let link = &shared.link;
            let hash = link.app_key(app, &format!("presence:{}:{topic}", shared.me));
            let nodes = link.app_key(app, &format!("presence-nodes:{topic}"));
            let index = link.app_key(app, &format!("presence-topics:{}", shared.me));
            if change.snapshot || change.empty {
                pipe.cmd("DEL").arg(&hash).ignore();
            }
            if change.empty {
                pipe.cmd("SREM").arg(&nodes).arg(&shared.me).ignore();
                pipe.cmd("SREM").arg(&index).arg(topic).ignore();
            } else {
                if !change.snapshot && !change.leaves.is_empty() {
                    pipe.cmd("HDEL").arg(&hash).arg(&change.leaves).ignore();
                }
                let hset = pipe.cmd("HSET").arg(&hash).arg("v").arg(change.op);
                for entry in &change.joins {
                    hset.arg(entry.seq)
                        .arg(wire::entry_value(&entry.key, &entry.meta));
                }
                hset.ignore();
                pipe.cmd("SADD").arg(&nodes).arg(&shared.me).ignore();
                pipe.cmd("SADD").arg(&index).arg(topic).ignore();
            }
            let message = wire::presence(shared.node, change);
            pipe.cmd("PUBLISH")
                .arg(shared.topic_channel(app, topic))
                .arg(message)
                .ignore();
        }
    }
}

/// Hands what other nodes publish to the apps.
async fn inbound(shared: Arc<Shared>, mut pushes: mpsc::Receiver<PushInfo>) {
    loop {
        let push = tokio::select! {
            () = shared.stop.cancelled() => return,
            push = pushes.recv() => push,
        };
        let Some(push) = push else { return };
        if push.kind != PushKind::Message {
            continue;
        }
        let mut data = push.data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(bytes))) =
            (data.next(), data.next())
        else {
            continue;
        };
        let Ok(channel) = String::from_utf8(channel) else {
            continue;
        };
        receive(&shared, &channel, &bytes);
    }
}

fn receive(shared: &Shared, channel: &str, bytes: &[u8]) {
    let Some((app, topic)) = shared.parse_channel(channel) else {
        return;
    };
    let (origin, message) = match wire::decode(bytes) {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::warn!(channel, "message from redis not understood: {error}");
            return;
        }
    };
    if origin == shared.node {
        return;
    }
    // A topic this node no longer serves (its unsubscribe is on the way).
    if topic.is_some()
        && !lock(&shared.channels)
            .get(channel)
            .is_some_and(|c| c.wanted)
    {
        return;
    }
    let Some(inbound) = shared.inbound(app) else {
        return;
    };
    shared.stats.received.fetch_add(1, Ordering::Relaxed);
    match (message, topic) {
        (Message::Broadcast { event, payload }, Some(topic)) => {
            inbound.deliver(topic, &event, &payload);
        }
        (Message::Presence(change), Some(topic)) => {
            match inbound.presence().apply_remote(topic, origin, &change) {
                // A delta's `presence_diff` reaches subscribers as the
                // broadcast the origin made of it, right behind this; a
                // snapshot (after Redis was unreachable) has none, and its
                // difference is what subscribers here missed.
                Ok(diff) if change.snapshot && !diff.is_empty() => {
                    inbound.deliver(topic, event::PRESENCE_DIFF, &diff.to_payload());
                }
                Ok(_) => {}
                Err(_gap) => {
                    tracing::debug!(app, topic, "presence changes were lost: reading them again");
                    lock(&shared.work).refetch.push(channel.to_owned());
                    shared.work_ready.notify_one();
                }
            }
        }
        (Message::Disconnect { socket_id }, None) => inbound.disconnect(&socket_id),
        _ => {}
    }
}

/// Subscribes and unsubscribes channels, reads presence, resyncs.
async fn maintain(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = shared.work_ready.notified() => {}
        }
        let work = std::mem::take(&mut *lock(&shared.work));
        if let Some(intact) = work.resync {
            resync(&shared, intact).await;
        } else if work.republish && !shared.link.is_degraded() {
            // The queue was full a moment ago: give it time to drain.
            tokio::time::sleep(Duration::from_millis(100)).await;
            republish(&shared, false);
        }
        let mut changed = work.changed;
        changed.sort();
        changed.dedup();
        update_subscriptions(&shared, changed).await;
        let mut refetch = work.refetch;
        refetch.sort();
        refetch.dedup();
        let refetch: Vec<String> = {
            let channels = lock(&shared.channels);
            refetch
                .into_iter()
                .filter(|c| channels.get(c).is_some_and(|c| c.subscribed && c.wanted))
                .collect()
        };
        if !refetch.is_empty() {
            read_presence(&shared, &refetch, true, false).await;
        }
    }
}

/// Brings Redis subscriptions in line with what is wanted.
async fn update_subscriptions(shared: &Shared, changed: Vec<String>) {
    let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
    {
        let mut channels = lock(&shared.channels);
        for channel in changed {
            let Some(state) = channels.get_mut(&channel) else {
                continue;
            };
            match (state.wanted, state.subscribed) {
                (true, false) => subscribe.push(channel),
                (false, true) => unsubscribe.push(channel),
                (false, false) => {
                    state.ready = false;
                    release(state);
                    channels.remove(&channel);
                }
                (true, true) => {}
            }
        }
    }
    let mut subscriber = shared.subscriber.clone();
    for chunk in unsubscribe.chunks(CHANNEL_BATCH) {
        if shared
            .link
            .call("unsubscribe", subscriber.unsubscribe(chunk))
            .await
            .is_none()
        {
            // The resync after Redis is back sets things right.
            break;
        }
        let mut forget = Vec::new();
        {
            let mut channels = lock(&shared.channels);
            for channel in chunk {
                let Some(state) = channels.get_mut(channel) else {
                    continue;
                };
                state.subscribed = false;
                state.ready = false;
                if state.wanted {
                    // Wanted again meanwhile: subscribe again.
                    lock(&shared.work).changed.push(channel.clone());
                    shared.work_ready.notify_one();
                } else {
                    if let Some(topic) = &state.topic {
                        forget.push((state.app.clone(), topic.clone()));
                    }
                    channels.remove(channel);
                }
            }
        }
        for (app, topic) in forget {
            if let Some(inbound) = shared.inbound(&app) {
                inbound.presence().forget_remote(&topic);
            }
        }
    }
    for chunk in subscribe.chunks(CHANNEL_BATCH) {
        let ok = !shared.link.is_degraded()
            && shared
                .link
                .call("subscribe", subscriber.subscribe(chunk))
                .await
                .is_some();
        if !ok {
            // Joins go on without waiting; the resync subscribes later.
            let mut channels = lock(&shared.channels);
            for channel in chunk {
                if let Some(state) = channels.get_mut(channel) {
                    state.unsynced |= !state.waiters.is_empty();
                    release(state);
                }
            }
            continue;
        }
        {
            let mut channels = lock(&shared.channels);
            for channel in chunk {
                if let Some(state) = channels.get_mut(channel) {
                    state.subscribed = true;
                    if !state.wanted {
                        lock(&shared.work).changed.push(channel.clone());
                        shared.work_ready.notify_one();
                    }
                }
            }
        }
        read_presence(shared, chunk, true, true).await;
    }
}

/// Reads the other nodes' presence on these topic channels from Redis and
/// applies it; then the channels are ready. `initial`: first read after
/// subscribing, whose differences only joins waiting for it would see (they
/// list the state themselves), so they are not sent unless a join went on
/// without it.
async fn read_presence(shared: &Shared, channels: &[String], authoritative: bool, initial: bool) {
    let topics: Vec<(String, Arc<str>, String)> = {
        let map = lock(&shared.channels);
        channels
            .iter()
            .filter_map(|c| {
                let state = map.get(c)?;
                Some((c.clone(), state.app.clone(), state.topic.clone()?))
            })
            .collect()
    };
    let read_since = Instant::now();
    let fetched = if topics.is_empty() {
        Some(Vec::new())
    } else {
        fetch_presence(shared, &topics).await
    };
    let mut diffs = Vec::new();
    if let Some(fetched) = &fetched {
        for ((channel, app, topic), nodes) in topics.iter().zip(fetched) {
            let Some(inbound) = shared.inbound(app) else {
                continue;
            };
            let diff =
                inbound
                    .presence()
                    .apply_fetched(topic, nodes, authoritative.then_some(read_since));
            diffs.push((channel.clone(), inbound, topic.clone(), diff));
        }
    }
    let mut channels_map = lock(&shared.channels);
    let mut deliver = Vec::new();
    for channel in channels {
        if let Some(state) = channels_map.get_mut(channel) {
            let mut quiet = initial && !state.unsynced;
            for waiter in state.waiters.drain(..) {
                // A join that stopped waiting listed an incomplete state.
                quiet &= waiter.send(()).is_ok();
            }
            if fetched.is_some() {
                state.ready = state.subscribed && state.wanted;
                state.unsynced = false;
            } else {
                state.unsynced = true;
            }
            if let Some(i) = diffs.iter().position(|(c, ..)| c == channel) {
                let (_, inbound, topic, diff) = diffs.swap_remove(i);
                if !quiet && !diff.is_empty() {
                    deliver.push((inbound, topic, diff));
                }
            }
        }
    }
    drop(channels_map);
    for (inbound, topic, diff) in deliver {
        inbound.deliver(&topic, event::PRESENCE_DIFF, &diff.to_payload());
    }
}

type Fetched = Vec<(NodeId, u64, Vec<Entry>)>;

/// Each topic's entries by node (but this node's and gone nodes'), in
/// two round trips; `None` if Redis failed.
async fn fetch_presence(
    shared: &Shared,
    topics: &[(String, Arc<str>, String)],
) -> Option<Vec<Fetched>> {
    let mut commands = shared.link.commands();
    let mut pipe = redis::pipe();
    for (_, app, topic) in topics {
        pipe.cmd("SMEMBERS")
            .arg(shared.link.app_key(app, &format!("presence-nodes:{topic}")));
    }
    let members: Vec<Vec<String>> = shared
        .link
        .call("presence", pipe.query_async(&mut commands))
        .await?;
    let mut wanted: Vec<(usize, NodeId)> = Vec::new();
    {
        let view = lock(&shared.view);
        for (i, nodes) in members.iter().enumerate() {
            for node in nodes.iter().filter_map(|n| NodeId::from_hex(n)) {
                if node != shared.node && !view.is_gone(node) {
                    wanted.push((i, node));
                }
            }
        }
    }
    let mut fetched: Vec<Fetched> = vec![Vec::new(); topics.len()];
    if wanted.is_empty() {
        return Some(fetched);
    }
    let mut pipe = redis::pipe();
    for (i, node) in &wanted {
        let (_, app, topic) = &topics[*i];
        pipe.cmd("HGETALL").arg(
            shared
                .link
                .app_key(app, &format!("presence:{}:{topic}", node.hex())),
        );
    }
    let hashes: Vec<HashMap<Vec<u8>, Vec<u8>>> = shared
        .link
        .call("presence", pipe.query_async(&mut commands))
        .await?;
    for ((i, node), hash) in wanted.into_iter().zip(hashes) {
        if let Some((v, entries)) = parse_presence_hash(&hash) {
            fetched[i].push((node, v, entries));
        }
    }
    Some(fetched)
}

/// A node's hash for a topic: `v` and its entries; `None` if empty or
/// unreadable.
fn parse_presence_hash(hash: &HashMap<Vec<u8>, Vec<u8>>) -> Option<(u64, Vec<Entry>)> {
    let v = std::str::from_utf8(hash.get(b"v".as_slice())?)
        .ok()?
        .parse()
        .ok()?;
    let mut entries = Vec::with_capacity(hash.len());
    for (field, value) in hash {
        let Some(seq) = std::str::from_utf8(field)
            .ok()
            .and_then(|f| f.parse::<u64>().ok())
        else {
            continue;
        };
        if let Ok((key, meta)) = wire::decode_entry_value(value) {
            entries.push(Entry { seq, key, meta });
        }
    }
    Some((v, entries))
}

/// After Redis came back: subscribe again to everything wanted, republish
/// this node's presence, reread everyone else's.
async fn resync(shared: &Shared, intact: bool) {
    shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
    let wanted: Vec<String> = {
        let mut channels = lock(&shared.channels);
        channels
            .iter_mut()
            .filter(|(_, state)| state.wanted)
            .map(|(channel, state)| {
                // Resubscribing an already subscribed channel is harmless.
                state.subscribed = false;
                channel.clone()
            })
            .collect()
    };
    tracing::info!(
        channels = wanted.len(),
        intact,
        "cluster resync: subscribing again and republishing presence"
    );
    republish(shared, true);
    // Subscribing reads the other nodes' presence again too.
    for channel in &wanted {
        if let Some(state) = lock(&shared.channels).get_mut(channel) {
            state.unsynced = true;
        }
    }
    update_subscriptions_all(shared, wanted, intact).await;
    // Unsubscribes that failed while Redis was away (a reconnect would
    // subscribe to them again).
    let unwanted: Vec<String> = lock(&shared.channels)
        .iter()
        .filter(|(_, state)| !state.wanted)
        .map(|(channel, _)| channel.clone())
        .collect();
    update_subscriptions(shared, unwanted).await;
}

/// Like `update_subscriptions` for a resync: every channel is subscribed
/// again and its presence reread (authoritative only if Redis kept its
/// data).
async fn update_subscriptions_all(shared: &Shared, wanted: Vec<String>, intact: bool) {
    let mut subscriber = shared.subscriber.clone();
    for chunk in wanted.chunks(CHANNEL_BATCH) {
        if shared
            .link
            .call("subscribe", subscriber.subscribe(chunk))
            .await
            .is_none()
        {
            return;
        }
        {
            let mut channels = lock(&shared.channels);
            for channel in chunk {
                if let Some(state) = channels.get_mut(channel) {
                    state.subscribed = true;
                }
            }
        }
        read_presence(shared, chunk, intact, false).await;
    }
}

/// Snapshots of this node's presence: of every topic it has entries on
/// (`all`) or only of those whose writes were dropped.
fn republish(shared: &Shared, all: bool) {
    let dirty = std::mem::take(&mut *lock(&shared.dirty));
    for (name, inbound) in shared.inbounds() {
        let presence = inbound.presence();
        let mut topics: HashSet<String> = dirty.get(&name).cloned().unwrap_or_default();
        if all {
            topics.extend(presence.local_topics());
        }
        if !topics.is_empty() {
            let topics: Vec<String> = topics.into_iter().collect();
            presence.republish(&topics);
        }
    }
}

/// Checks in every tick, finds nodes gone, notices Redis coming back.
async fn liveness(shared: Arc<Shared>) {
    let registry = shared.link.key("nodes");
    let epoch_key = shared.link.key("epoch");
    let mut candidate = NodeId::random().hex();
    let mut epoch: Option<String> = None;
    let mut beat: u64 = 0;
    let mut first = true;
    let mut interval = tokio::time::interval(shared.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands = shared.link.commands();
    let mut subscriber = shared.subscriber.clone();
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        beat += 1;
        let me = Beat {
            name: shared.name.to_string(),
            beat,
        };
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&registry)
            .arg(&shared.me)
            .arg(serde_json::to_string(&me).unwrap_or_default());
        pipe.cmd("SET")
            .arg(&epoch_key)
            .arg(&candidate)
            .arg("NX")
            .arg("GET");
        pipe.cmd("HGETALL").arg(&registry);
        let answer: Option<(u64, Option<String>, HashMap<String, String>)> = shared
            .link
            .call("check-in", pipe.query_async(&mut commands))
            .await;
        // The subscribing connection reconnects only when used: keep it used.
        let _: Option<()> = shared
            .link
            .call(
                "subscriptions",
                redis::cmd("PING").query_async(&mut subscriber),
            )
            .await;
        let Some((added, existing, nodes)) = answer else {
            continue;
        };
        let current = match existing {
            Some(current) => current,
            // We made it: a fresh epoch, so a later one is told apart.
            None => std::mem::replace(&mut candidate, NodeId::random().hex()),
        };
        let intact = epoch.as_ref().is_none_or(|e| *e == current);
        epoch = Some(current);
        // Something failed since the last look (messages may be lost), our
        // field was missing (Redis lost its data, or we were found gone
        // while cut off), or Redis is another one: resync.
        let lost = shared.link.take_lost();
        if lost || (!first && (added == 1 || !intact)) {
            let mut work = lock(&shared.work);
            let previous = work.resync.unwrap_or(true);
            work.resync = Some(previous && intact);
            drop(work);
            shared.work_ready.notify_one();
        }
        first = false;
        let gone = {
            let mut view = lock(&shared.view);
            let gone = view.observe(Instant::now(), &nodes);
            view.prune(&nodes);
            gone
        };
        for node in gone {
            node_gone(&shared, node).await;
        }
    }
}

/// A node stopped checking in: its presence leaves, here and in Redis.
async fn node_gone(shared: &Shared, node: NodeId) {
    shared.stats.nodes_gone.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        node = node.hex(),
        "cluster node gone: removing its presence"
    );
    let mut commands = shared.link.commands();
    let id = node.hex();
    for (app, inbound) in shared.inbounds() {
        for (topic, diff) in inbound.presence().drop_node(node) {
            inbound.deliver(&topic, event::PRESENCE_DIFF, &diff.to_payload());
        }
        // Its keys in Redis, so nodes that subscribe later do not read them.
        let index = shared.link.app_key(&app, &format!("presence-topics:{id}"));
        let topics: Option<Vec<String>> = shared
            .link
            .call(
                "cleanup",
                redis::cmd("SMEMBERS")
                    .arg(&index)
                    .query_async(&mut commands),
            )
            .await;
        let mut pipe = redis::pipe();
        for topic in topics.unwrap_or_default() {
            pipe.cmd("DEL")
                .arg(shared.link.app_key(&app, &format!("presence:{id}:{topic}")))
                .ignore();
            pipe.cmd("SREM")
                .arg(
                    shared
                        .link
                        .app_key(&app, &format!("presence-nodes:{topic}")),
                )
                .arg(&id)
                .ignore();
        }
        pipe.cmd("DEL").arg(&index).ignore();
        let _: Option<()> = shared
            .link
            .call("cleanup", pipe.query_async(&mut commands))
            .await;
    }
    let _: Option<()> = shared
        .link
        .call(
            "cleanup",
            redis::cmd("HDEL")
                .arg(shared.link.key("nodes"))
                .arg(&id)
                .query_async(&mut commands),
        )
        .await;
}

/// Wakes a channel's waiting joins.
fn release(state: &mut Channel) {
    for waiter in state.waiters.drain(..) {
        let _ = waiter.send(());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a single step: a poisoned value is still consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
