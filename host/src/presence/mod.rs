//! Presence: who is on each topic of an app, as Phoenix.Presence tracks it —
//! entries tracked by channels, grouped by key, with Phoenix's `phx_ref`s
//! and diffs, so the official JS `Presence` class syncs from them.
//!
//! # Layout
//! - [`Presence`] (this file): one app's tracker on this node, and its
//!   operations: `track` (which updates a key the owner already tracks),
//!   `untrack`, `untrack_all` and `list`.
//! - `diff`: the wire formats — refs, metas, `presence_state` and
//!   `presence_diff` payloads. Pure code.
//!
//! # Who owns an entry
//! An entry belongs to the channel that tracked it (an [`Owner`], made per
//! joined channel), so one key can hold several metas: a user with two tabs
//! is two channels tracking the same key. The socket session removes a
//! channel's entries with [`Presence::untrack_all`] at the single place a
//! channel leaves its table (leave, stop, crash, duplicate join, removed
//! route), when the connection closes (which includes a long-poll session
//! expiring), for a refused or crashed join, and in its `Drop` as a last
//! resort; each removal is broadcast as a `presence_diff` of leaves.
//!
//! # When a guest's calls take effect
//! The guest's `presence-track` and `presence-untrack` change the tracker
//! at once, during the import call, while the `presence_diff` they produce
//! is recorded as a broadcast effect, applied after the callback's other
//! effects. The tracker is host state, not I/O, so changing it at once
//! lets `presence-list` in the same callback see the channel's own entry: a
//! `join` that tracks and then pushes `presence_state` shows its own user.
//! The diff still reaches the wire as an effect: after the join reply, and
//! after that state push, which is the order a Phoenix app produces (its
//! tracker broadcasts diffs after the channel's own work). Either order
//! syncs the same in phoenix.js, which buffers diffs until the state and
//! applies a join it already has as a no-op. The app batches a topic's
//! diffs per `limits.presence_batch_ms` (`App::presence_changed`): a crowd
//! joining costs each member one diff per window, not one per join.
//!
//! A guest that traps after tracking loses its effects (the join diff) but
//! not the entry; the trap ends the channel, whose cleanup broadcasts the
//! leave — a leave of a ref a client never saw is a no-op in phoenix.js.
//!
//! A joining channel subscribes to its topic before its `join` runs (into
//! a holding outbox, released after the reply; see `Session::join`), so no
//! diff falls between the `presence_state` it lists and its subscription.
//!
//! # In a cluster
//! State is per app (one `Presence` per `App`). With a [`Replicator`] set
//! (the cluster broker), every change to this node's own entries is also
//! handed to it as a [`Change`] (see `replica` for how changes are
//! ordered), and the entries other nodes replicate are kept here too, apart
//! by node ([`Presence::apply_remote`], [`Presence::apply_fetched`]), so
//! `list` and `presence_state` show every node's users without asking the
//! broker. A node that goes away has its entries dropped
//! ([`Presence::drop_node`]). Refs carry the node's random [`NodeId`], so
//! refs made on different nodes, or before a restart, never collide.
//!
//! A node keeps other nodes' entries only for topics it has subscribers on
//! (the broker calls [`Presence::forget_remote`] when the last one leaves).
//!
//! # Cost
//! An entry is a few hundred bytes (its meta text, shared by the state and
//! diffs, plus two map slots); no task, no timer. Every operation is
//! O(log n) in the topic's entries plus the size of its own metas, so a
//! burst of joins never rebuilds anything; only `list` walks a topic.

mod diff;
mod replica;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use serde_json::{Map, Value};

pub use diff::{Diff, NodeId, Ref, meta_json, write_presences};
pub use replica::{Change, Entry, Gap, Replicator};

/// The channel an entry belongs to; made by [`Presence::owner`], one per
/// joined channel (a rejoin of the same topic is a new owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(u64);

/// One app's presence tracker on this node. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

struct Shared {
    node: NodeId,
    /// The seq of the next ref; also orders a key's metas by tracking time.
    next_ref: AtomicU64,
    next_owner: AtomicU64,
    /// Topics with at least one entry (or other nodes' state). One lock
    /// for the app: every operation under it is short (no I/O, no guest
    /// code, no encoding of anything but the one meta).
    topics: Mutex<HashMap<String, Topic>>,
    /// Where this node's changes go to reach other nodes; unset on a
    /// single node. Set once, right after the tracker is made.
    replicator: OnceLock<Arc<dyn Replicator>>,
}

/// Which entry a meta is: its seq, then its node (seqs order a key's metas
/// by tracking time on one node).
type EntryId = (u64, NodeId);

/// One topic's entries.
#[derive(Default)]
struct Topic {
    /// Key → its metas (as sent to clients, `phx_ref` included), this
    /// node's and other nodes' alike, as Phoenix groups them.
    keys: BTreeMap<Arc<str>, BTreeMap<EntryId, Arc<str>>>,
    /// Owner → the keys it tracks here and their seqs, so an update or an
    /// untrack finds its entry without scanning a crowded key.
    owners: HashMap<Owner, Vec<(Arc<str>, u64)>>,
    /// The op of this node's last replicated change here; 0 when it has
    /// no entries here.
    local_op: u64,
    /// What other nodes replicated here, by node.
    remote: HashMap<NodeId, Remote>,
}

/// Another node's entries on one topic, as far as this node knows them.
struct Remote {
    /// The op of the last of its changes applied (see `replica`).
    v: u64,
    /// Its entries: seq → key.
    entries: HashMap<u64, Arc<str>>,
    /// When its last change was applied here.
    at: Instant,
}

impl Default for Remote {
    fn default() -> Self {
        Self {
            v: 0,
            entries: HashMap::new(),
            at: Instant::now(),
        }
    }
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

impl Default for Presence {
    fn default() -> Self {
        Self::new(NodeId::random())
    }
}

impl Presence {
    /// A tracker whose refs carry `node`, counting seqs from 1.
    pub fn new(node: NodeId) -> Self {
        Self::starting_at(node, 1)
    }

    /// A tracker for one app on the node `node`: its seqs never meet those
    /// of the node's other trackers (another app, or this app before it was
    /// removed and added again), since they all share the node's id.
    pub fn for_node(node: NodeId) -> Self {
        Self::starting_at(node, replica::first_seq())
    }

    fn starting_at(node: NodeId, seq: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                node,
                next_ref: AtomicU64::new(seq),
                next_owner: AtomicU64::new(1),
                topics: Mutex::new(HashMap::new()),
                replicator: OnceLock::new(),
            }),
        }
    }

    /// The node whose refs this tracker makes.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// Sends every later change of this node's entries to `replicator`.
    /// Only the first call counts.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) {
        let _ = self.shared.replicator.set(replicator);
    }

    /// A new owner, for a channel about to join.
    pub fn owner(&self) -> Owner {
        Owner(self.shared.next_owner.fetch_add(1, Ordering::Relaxed))
    }

    /// Tracks `key` on `topic` for `owner` with `meta` (a JSON object). If
    /// the owner already tracks the key, this is Phoenix's `update`: the new
    /// meta gets a new ref and `phx_ref_prev`, and the diff has it in
    /// `joins` and the old meta in `leaves`.
    pub fn track(&self, topic: &str, owner: Owner, key: &str, meta: Map<String, Value>) -> Diff {
        let seq = self.shared.next_ref.fetch_add(1, Ordering::Relaxed);
        let node = self.shared.node;
        let mut topics = self.lock();
        if !topics.contains_key(topic) {
            topics.insert(topic.to_owned(), Topic::default());
        }
        let Some(state) = topics.get_mut(topic) else {
            return Diff::default();
        };
        let mut diff = Diff::default();
        let tracked = state.owners.entry(owner).or_default();
        let (key, prev) = match tracked.iter_mut().find(|(k, _)| &**k == key) {
            Some((key, old_seq)) => (key.clone(), Some(std::mem::replace(old_seq, seq))),
            None => {
                let key: Arc<str> = state
                    .keys
                    .get_key_value(key)
                    .map_or_else(|| key.into(), |(k, _)| k.clone());
                tracked.push((key.clone(), seq));
                (key, None)
            }
        };
        let metas = state.keys.entry(key.clone()).or_default();
        if let Some(old) = prev.and_then(|prev| metas.remove(&(prev, node))) {
            diff.leaves.push((key.clone(), old));
        }
        let meta: Arc<str> =
            meta_json(meta, self.make_ref(seq), prev.map(|s| self.make_ref(s))).into();
        metas.insert((seq, node), meta.clone());
        diff.joins.push((key.clone(), meta.clone()));
        let joins = vec![Entry { seq, key, meta }];
        self.replicate(topic, state, joins, prev.into_iter().collect());
        diff
    }

    /// Stops tracking `key` on `topic` for `owner`; an empty diff if it did
    /// not track it.
    pub fn untrack(&self, topic: &str, owner: Owner, key: &str) -> Diff {
        let mut diff = Diff::default();
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic) else {
            return diff;
        };
        if let Some(tracked) = state.owners.get_mut(&owner)
            && let Some(i) = tracked.iter().position(|(k, _)| &**k == key)
        {
            let (key, seq) = tracked.swap_remove(i);
            if tracked.is_empty() {
                state.owners.remove(&owner);
            }
            state.remove(key, (seq, self.shared.node), &mut diff);
            self.replicate(topic, state, Vec::new(), vec![seq]);
        }
        if state.is_empty() {
            topics.remove(topic);
        }
        diff
    }

    /// Stops tracking everything `owner` tracks on `topic`: its channel is
    /// gone.
    pub fn untrack_all(&self, topic: &str, owner: Owner) -> Diff {
        let mut diff = Diff::default();
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic) else {
            return diff;
        };
        let mut leaves = Vec::new();
        for (key, seq) in state.owners.remove(&owner).unwrap_or_default() {
            state.remove(key, (seq, self.shared.node), &mut diff);
            leaves.push(seq);
        }
        if !leaves.is_empty() {
            self.replicate(topic, state, Vec::new(), leaves);
        }
        if state.is_empty() {
            topics.remove(topic);
        }
        diff
    }

    /// The topic's `presence_state` payload: `{"key":{"metas":[…]},…}`,
    /// every node's entries.
    pub fn list(&self, topic: &str) -> String {
        let topics = self.lock();
        let mut out = String::new();
        let keys = topics.get(topic).into_iter().flat_map(|state| {
            state
                .keys
                .iter()
                .map(|(key, metas)| (&**key, metas.values().map(|meta| &**meta)))
        });
        write_presences(&mut out, keys);
        out
    }

    /// How many entries (metas) the topic has, on every node.
    pub fn count(&self, topic: &str) -> usize {
        self.lock()
            .get(topic)
            .map_or(0, |state| state.keys.values().map(BTreeMap::len).sum())
    }

    /// Topics where this node has entries of its own.
    pub fn local_topics(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, state)| !state.owners.is_empty())
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Replicates a snapshot of this node's entries on each of `topics`
    /// (an empty one where it has none): after the broker was unreachable,
    /// so other nodes replace whatever they last heard from this node.
    pub fn republish(&self, topics: &[String]) {
        if self.shared.replicator.get().is_none() {
            return;
        }
        let node = self.shared.node;
        let mut map = self.lock();
        for topic in topics {
            let joins: Vec<Entry> = map.get(topic).map_or_else(Vec::new, |state| {
                let mut joins = Vec::new();
                for (key, seq) in state.owners.values().flatten() {
                    if let Some(meta) = state.keys.get(key).and_then(|m| m.get(&(*seq, node))) {
                        joins.push(Entry {
                            seq: *seq,
                            key: key.clone(),
                            meta: meta.clone(),
                        });
                    }
                }
                joins
            });
            let op = replica::next_op();
            let empty = joins.is_empty();
            let change = Change {
                op,
                prev: 0,
                snapshot: true,
                joins,
                leaves: Vec::new(),
                empty,
            };
            if let Some(state) = map.get_mut(topic) {
                state.local_op = if empty { 0 } else { op };
            }
            if let Some(replicator) = self.shared.replicator.get() {
                replicator.replicate(topic, change);
            }
        }
    }

    /// Applies another node's change to `topic`; the diff is what this
    /// node's subscribers should be told. A [`Gap`] (changes lost) changes
    /// nothing: the caller refetches the topic.
    pub fn apply_remote(&self, topic: &str, node: NodeId, change: &Change) -> Result<Diff, Gap> {
        let mut topics = self.lock();
        let v = topics
            .get(topic)
            .and_then(|state| state.remote.get(&node))
            .map_or(0, |remote| remote.v);
        if change.op <= v {
            return Ok(Diff::default());
        }
        if !change.snapshot && change.prev != v {
            return Err(Gap);
        }
        let state = topics.entry(topic.to_owned()).or_default();
        let mut diff = Diff::default();
        if change.snapshot {
            state.replace_remote(node, change.op, &change.joins, &mut diff);
        } else {
            let remote = state.remote.entry(node).or_default();
            remote.v = change.op;
            remote.at = Instant::now();
            let mut removed = Vec::new();
            for seq in &change.leaves {
                if let Some(key) = remote.entries.remove(seq) {
                    removed.push((key, *seq));
                }
            }
            for entry in &change.joins {
                remote.entries.insert(entry.seq, entry.key.clone());
            }
            for (key, seq) in removed {
                state.remove(key, (seq, node), &mut diff);
            }
            for entry in &change.joins {
                state.insert(node, entry, &mut diff);
            }
        }
        if change.empty {
            state.clear_remote(node, &mut diff);
        }
        if state.is_empty() {
            topics.remove(topic);
        }
        Ok(diff)
    }

    /// Applies the state of `topic` read from the broker: each node's
    /// entries and the op they are as of. Where that is newer than what
    /// this node applied, it replaces it. `read_since`: the broker's data
    /// is intact and was read after this instant, so a node it had nothing
    /// for has no entries (its leave was missed) — unless one of its
    /// changes was applied here after that instant (it wrote after the
    /// read); without it, such nodes are left to their own snapshots and to
    /// liveness.
    pub fn apply_fetched(
        &self,
        topic: &str,
        fetched: &[(NodeId, u64, Vec<Entry>)],
        read_since: Option<Instant>,
    ) -> Diff {
        let mut diff = Diff::default();
        let mut topics = self.lock();
        let state = topics.entry(topic.to_owned()).or_default();
        for (node, v, entries) in fetched {
            if *node == self.shared.node {
                continue;
            }
            let current = state.remote.get(node).map_or(0, |remote| remote.v);
            if *v > current {
                state.replace_remote(*node, *v, entries, &mut diff);
            }
        }
        if let Some(since) = read_since {
            let gone: Vec<NodeId> = state
                .remote
                .iter()
                .filter(|(node, remote)| {
                    remote.at < since && !fetched.iter().any(|(n, _, _)| n == *node)
                })
                .map(|(node, _)| *node)
                .collect();
            for node in gone {
                state.clear_remote(node, &mut diff);
            }
        }
        if state.is_empty() {
            topics.remove(topic);
        }
        diff
    }

    /// Drops what other nodes replicated on `topic`, without a diff: this
    /// node has no subscribers there any more to tell.
    pub fn forget_remote(&self, topic: &str) {
        let mut topics = self.lock();
        let Some(state) = topics.get_mut(topic) else {
            return;
        };
        let mut ignored = Diff::default();
        let nodes: Vec<NodeId> = state.remote.keys().copied().collect();
        for node in nodes {
            state.clear_remote(node, &mut ignored);
        }
        if state.is_empty() {
            topics.remove(topic);
        }
    }

    /// Drops every entry of `node` (it went away): the leaves, by topic.
    pub fn drop_node(&self, node: NodeId) -> Vec<(String, Diff)> {
        let mut topics = self.lock();
        let mut diffs = Vec::new();
        topics.retain(|topic, state| {
            let mut diff = Diff::default();
            state.clear_remote(node, &mut diff);
            if !diff.is_empty() {
                diffs.push((topic.clone(), diff));
            }
            !state.is_empty()
        });
        diffs
    }

    /// Hands a change of this node's entries on `topic` to the replicator,
    /// if any, with the next op. Under the lock, so ops reach it in order.
    fn replicate(&self, topic: &str, state: &mut Topic, joins: Vec<Entry>, leaves: Vec<u64>) {
        let Some(replicator) = self.shared.replicator.get() else {
            return;
        };
        let op = replica::next_op();
        let empty = state.owners.is_empty();
        let change = Change {
            op,
            prev: state.local_op,
            snapshot: false,
            joins,
            leaves,
            empty,
        };
        state.local_op = if empty { 0 } else { op };
        replicator.replicate(topic, change);
    }

    fn make_ref(&self, seq: u64) -> Ref {
        Ref {
            node: self.shared.node,
            seq,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        // Each operation leaves the maps consistent before it could panic
        // (only allocation can), so a poisoned lock is still usable.
        self.shared.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Topic {
    /// Removes one entry, adding it to the diff's leaves.
    fn remove(&mut self, key: Arc<str>, id: EntryId, diff: &mut Diff) {
        let Some(metas) = self.keys.get_mut(&key) else {
            return;
        };
        if let Some(meta) = metas.remove(&id) {
            diff.leaves.push((key.clone(), meta));
        }
        if metas.is_empty() {
            self.keys.remove(&key);
        }
    }

    /// Adds another node's entry (replacing one with the same id),
    /// adding it to the diff's joins.
    fn insert(&mut self, node: NodeId, entry: &Entry, diff: &mut Diff) {
        let key = self
            .keys
            .get_key_value(&*entry.key)
            .map_or_else(|| entry.key.clone(), |(k, _)| k.clone());
        self.keys
            .entry(key.clone())
            .or_default()
            .insert((entry.seq, node), entry.meta.clone());
        diff.joins.push((key, entry.meta.clone()));
    }

    /// Makes `node`'s entries exactly `entries`, as of op `v`: leaves for
    /// what went, joins for what is new.
    fn replace_remote(&mut self, node: NodeId, v: u64, entries: &[Entry], diff: &mut Diff) {
        let old = self
            .remote
            .remove(&node)
            .map(|remote| remote.entries)
            .unwrap_or_default();
        for (seq, key) in &old {
            if !entries.iter().any(|e| e.seq == *seq) {
                self.remove(key.clone(), (*seq, node), diff);
            }
        }
        let mut remote = Remote {
            v,
            entries: HashMap::with_capacity(entries.len()),
            at: Instant::now(),
        };
        for entry in entries {
            if !old.contains_key(&entry.seq) {
                self.insert(node, entry, diff);
            }
            remote.entries.insert(entry.seq, entry.key.clone());
        }
        self.remote.insert(node, remote);
    }

    /// Forgets `node` here: its entries leave.
    fn clear_remote(&mut self, node: NodeId, diff: &mut Diff) {
        if let Some(remote) = self.remote.remove(&node) {
            for (seq, key) in remote.entries {
                self.remove(key, (seq, node), diff);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.owners.is_empty() && self.remote.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tracker() -> Presence {
        Presence::new(NodeId::from_bytes([0; 6]))
    }

    fn meta(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    /// Ref number `n` of the zero node, as encoded.
    fn r(n: u64) -> String {
        Ref {
            node: NodeId::from_bytes([0; 6]),
            seq: n,
        }
        .encode()
    }

    #[test]
    fn track_makes_a_join_diff_and_lists_it() {
        let p = tracker();
        let ada = p.owner();
        let diff = p.track("room:1", ada, "ada", meta(json!({ "online_at": 1 })));
        let m = format!(r#"{{"online_at":1,"phx_ref":"{}"}}"#, r(1));
        assert_eq!(
            diff.to_json(),
            format!(r#"{{"joins":{{"ada":{{"metas":[{m}]}}}},"leaves":{{}}}}"#)
        );
        assert_eq!(p.list("room:1"), format!(r#"{{"ada":{{"metas":[{m}]}}}}"#));
        assert_eq!(p.list("room:2"), "{}");
    }

    #[test]
    fn one_key_holds_the_metas_of_several_owners_in_tracking_order() {
        let p = tracker();
        let (tab1, tab2, bob) = (p.owner(), p.owner(), p.owner());
        p.track("t", tab1, "ada", meta(json!({ "tab": 1 })));
        p.track("t", bob, "bob", meta(json!({})));
        p.track("t", tab2, "ada", meta(json!({ "tab": 2 })));
        assert_eq!(
            p.list("t"),
            format!(
                r#"{{"ada":{{"metas":[{{"phx_ref":"{}","tab":1}},{{"phx_ref":"{}","tab":2}}]}},"bob":{{"metas":[{{"phx_ref":"{}"}}]}}}}"#,
                r(1),
                r(3),
                r(2)
            )
        );
        assert_eq!(p.count("t"), 3);

        // One tab leaves: only its meta goes.
        let diff = p.untrack_all("t", tab1);
        assert_eq!(
            diff.to_json(),
            format!(
                r#"{{"joins":{{}},"leaves":{{"ada":{{"metas":[{{"phx_ref":"{}","tab":1}}]}}}}}}"#,
                r(1)
            )
        );
        assert_eq!(p.count("t"), 2);
    }

    #[test]
    fn tracking_a_tracked_key_again_is_one_update_diff() {
        let p = tracker();
        let ada = p.owner();
        p.track("t", ada, "ada", meta(json!({ "typing": false })));
        let diff = p.track("t", ada, "ada", meta(json!({ "typing": true })));
        assert_eq!(
            diff.to_json(),
            format!(
                r#"{{"joins":{{"ada":{{"metas":[{{"phx_ref":"{two}","phx_ref_prev":"{one}","typing":true}}]}}}},"leaves":{{"ada":{{"metas":[{{"phx_ref":"{one}","typing":false}}]}}}}}}"#,
                one = r(1),
                two = r(2)
            )
        );
        // The state keeps one meta for the key: the new one.
        assert_eq!(p.count("t"), 1);
        assert!(p.list("t").contains(r#""typing":true"#));
        // Untracking removes the updated meta.
        let diff = p.untrack("t", ada, "ada");
        assert_eq!(diff.leaves.len(), 1);
        assert!(diff.leaves[0].1.contains(&r(2)));
        assert_eq!(p.list("t"), "{}");
    }

    #[test]
    fn untrack_of_what_the_owner_does_not_track_is_empty() {
        let p = tracker();
        let (ada, bob) = (p.owner(), p.owner());
        p.track("t", ada, "ada", meta(json!({})));
        assert!(p.untrack("t", bob, "ada").is_empty());
        assert!(p.untrack("t", ada, "nobody").is_empty());
        assert!(p.untrack("other", ada, "ada").is_empty());
        assert!(p.untrack_all("t", bob).is_empty());
        assert_eq!(p.count("t"), 1);
    }

    #[test]
    fn untrack_all_removes_every_key_of_the_owner_and_empties_the_topic() {
        let p = tracker();
        let ada = p.owner();
        p.track("t", ada, "ada", meta(json!({})));
        p.track("t", ada, "ada:typing", meta(json!({})));
        let diff = p.untrack_all("t", ada);
        assert_eq!(diff.joins.len(), 0);
        assert_eq!(diff.leaves.len(), 2);
        assert_eq!(p.list("t"), "{}");
        assert!(p.lock().is_empty(), "an empty topic is dropped");
    }

    #[test]
    fn topics_are_apart() {
        let p = tracker();
        let (a, b) = (p.owner(), p.owner());
        p.track("room:1", a, "ada", meta(json!({})));
        p.track("room:2", b, "ada", meta(json!({})));
        assert!(p.untrack_all("room:1", b).is_empty());
        assert_eq!(p.untrack_all("room:1", a).leaves.len(), 1);
        assert_eq!(p.count("room:2"), 1);
    }

    #[test]
    fn refs_differ_between_trackers() {
        let (a, b) = (Presence::default(), Presence::default());
        let da = a.track("t", a.owner(), "k", meta(json!({})));
        let db = b.track("t", b.owner(), "k", meta(json!({})));
        assert_ne!(da.joins[0].1, db.joins[0].1);
    }

    #[test]
    fn a_burst_of_joins_on_one_key_stays_cheap() {
        // Ten thousand anonymous users share one key: each join and leave
        // finds its own entry directly, so this runs in milliseconds.
        let p = tracker();
        let owners: Vec<Owner> = (0..10_000).map(|_| p.owner()).collect();
        for &owner in &owners {
            assert_eq!(
                p.track("t", owner, "anonymous", meta(json!({})))
                    .joins
                    .len(),
                1
            );
        }
        assert_eq!(p.count("t"), 10_000);
        for &owner in &owners {
            assert_eq!(p.untrack_all("t", owner).leaves.len(), 1);
        }
        assert_eq!(p.count("t"), 0);
    }

    /// Collects what a tracker replicates.
    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Change)>>);

    impl Replicator for Collect {
        fn replicate(&self, topic: &str, change: Change) {
            self.0.lock().unwrap().push((topic.to_owned(), change));
        }
    }

    impl Collect {
        fn take(&self) -> Vec<(String, Change)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Two nodes' trackers for one app, the first replicating into a log.
    fn pair() -> (Presence, Arc<Collect>, Presence) {
        let a = Presence::new(NodeId::from_bytes([1; 6]));
        let log = Arc::new(Collect::default());
        a.set_replicator(log.clone());
        (a, log, Presence::new(NodeId::from_bytes([2; 6])))
    }

    #[test]
    fn changes_replicate_in_order_and_rebuild_the_state_on_another_node() {
        let (a, log, b) = pair();
        let (ada, bob) = (a.owner(), a.owner());
        a.track("t", ada, "ada", meta(json!({})));
        a.track("t", bob, "bob", meta(json!({})));
        a.track("t", ada, "ada", meta(json!({ "typing": true })));
        a.untrack_all("t", bob);
        let changes = log.take();
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[0].1.prev, 0);
        for pair in changes.windows(2) {
            assert_eq!(pair[1].1.prev, pair[0].1.op, "each change follows the last");
        }
        for (topic, change) in &changes {
            b.apply_remote(topic, a.node(), change).unwrap();
        }
        assert_eq!(b.list("t"), a.list("t"));
        // Replays are ignored.
        assert!(
            b.apply_remote("t", a.node(), &changes[1].1)
                .unwrap()
                .is_empty()
        );
        assert_eq!(b.list("t"), a.list("t"));

        // The last entry leaves: the change says so, and b forgets the node.
        a.untrack_all("t", ada);
        let last = log.take().pop().unwrap().1;
        assert!(last.empty);
        let diff = b.apply_remote("t", a.node(), &last).unwrap();
        assert_eq!(diff.leaves.len(), 1);
        assert_eq!(b.list("t"), "{}");
        assert!(b.lock().is_empty());
        // A's next change starts afresh, and b takes it.
        a.track("t", a.owner(), "cy", meta(json!({})));
        let next = log.take().pop().unwrap().1;
        assert_eq!(next.prev, 0);
        assert_eq!(b.apply_remote("t", a.node(), &next).unwrap().joins.len(), 1);
    }

    #[test]
    fn a_lost_change_is_a_gap_and_a_snapshot_repairs_it() {
        let (a, log, b) = pair();
        let ada = a.owner();
        a.track("t", ada, "ada", meta(json!({})));
        a.track("t", a.owner(), "bob", meta(json!({})));
        let changes = log.take();
        b.apply_remote("t", a.node(), &changes[0].1).unwrap();
        a.untrack_all("t", ada);
        let after_loss = log.take().pop().unwrap().1;
        assert_eq!(b.apply_remote("t", a.node(), &after_loss), Err(Gap));
        // A republishes its state; b converges, with one diff for its clients.
        a.republish(&["t".to_owned()]);
        let snapshot = log.take().pop().unwrap().1;
        assert!(snapshot.snapshot);
        let diff = b.apply_remote("t", a.node(), &snapshot).unwrap();
        assert_eq!(b.list("t"), a.list("t"));
        assert_eq!(
            (diff.joins.len(), diff.leaves.len()),
            (1, 1),
            "bob joins, ada leaves"
        );
        // The next delta follows the snapshot.
        a.track("t", a.owner(), "cy", meta(json!({})));
        let next = log.take().pop().unwrap().1;
        assert!(b.apply_remote("t", a.node(), &next).is_ok());
        assert_eq!(b.count("t"), 2);
    }

    #[test]
    fn fetched_state_applies_by_op_and_authoritative_fetches_drop_absent_nodes() {
        let (a, log, b) = pair();
        a.track("t", a.owner(), "ada", meta(json!({})));
        let join = log.take().pop().unwrap().1;
        let fetched = vec![(a.node(), join.op, join.joins.clone())];
        let read = Instant::now();
        assert_eq!(b.apply_fetched("t", &fetched, Some(read)).joins.len(), 1);
        // The same change arriving after the fetch is not applied twice.
        assert!(b.apply_remote("t", a.node(), &join).unwrap().is_empty());
        assert_eq!(b.count("t"), 1);
        // An older fetch changes nothing; one without `read_since` neither.
        assert!(
            b.apply_fetched("t", &[(a.node(), 0, vec![])], Some(read))
                .is_empty()
        );
        assert!(b.apply_fetched("t", &[], None).is_empty());
        // Read before a's last change was applied here: a stays.
        assert!(b.apply_fetched("t", &[], Some(read)).is_empty());
        assert_eq!(b.count("t"), 1);
        // Read after it, and without a: a's entries leave.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = Instant::now();
        assert_eq!(b.apply_fetched("t", &[], Some(later)).leaves.len(), 1);
        assert_eq!(b.count("t"), 0);
    }

    #[test]
    fn a_node_that_goes_away_leaves_every_topic_and_local_entries_stay() {
        let (a, log, b) = pair();
        a.track("t1", a.owner(), "ada", meta(json!({})));
        a.track("t2", a.owner(), "ada", meta(json!({})));
        b.track("t1", b.owner(), "bob", meta(json!({})));
        for (topic, change) in log.take() {
            b.apply_remote(&topic, a.node(), &change).unwrap();
        }
        assert_eq!(b.count("t1"), 2);
        let mut left = b.drop_node(a.node());
        left.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(left.len(), 2);
        assert_eq!(left[0].1.leaves[0].0.as_ref(), "ada");
        assert_eq!(b.count("t1"), 1, "bob stays");
        assert_eq!(b.count("t2"), 0);
        assert_eq!(b.local_topics(), ["t1"]);
        b.forget_remote("t1");
        assert_eq!(b.count("t1"), 1, "forget_remote keeps local entries");
    }

    #[test]
    fn trackers_for_one_node_never_share_a_seq() {
        let node = NodeId::from_bytes([3; 6]);
        let (a, b) = (Presence::for_node(node), Presence::for_node(node));
        let da = a.track("t", a.owner(), "k", meta(json!({})));
        let db = b.track("t", b.owner(), "k", meta(json!({})));
        assert_ne!(da.joins[0].1, db.joins[0].1);
    }
}
