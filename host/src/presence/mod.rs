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
//! applies a join it already has as a no-op.
//!
//! A guest that traps after tracking loses its effects (the join diff) but
//! not the entry; the trap ends the channel, whose cleanup broadcasts the
//! leave — a leave of a ref a client never saw is a no-op in phoenix.js.
//!
//! A joining channel subscribes to its topic before its `join` runs (into
//! a holding outbox, released after the reply; see `Session::join`), so no
//! diff falls between the `presence_state` it lists and its subscription.
//!
//! # Designed for a cluster
//! State is per node and per app (one `Presence` per `App`, no globals).
//! Each operation returns the [`Diff`] it made, which is what a
//! broker-backed replication would publish; another node would keep the
//! entries it hears about apart by node, and drop a node's entries when the
//! node goes away. Refs carry a random per-run [`NodeId`], so refs made on
//! different nodes, or before a restart, never collide. Today `list`
//! answers with this node's entries only.
//!
//! # Cost
//! An entry is a few hundred bytes (its meta text, shared by the state and
//! diffs, plus two map slots); no task, no timer. Every operation is
//! O(log n) in the topic's entries plus the size of its own metas, so a
//! burst of joins never rebuilds anything; only `list` walks a topic.

mod diff;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};

pub use diff::{Diff, NodeId, Ref, meta_json, write_presences};

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
    /// Topics with at least one entry. One lock for the app: every
    /// operation under it is short (no I/O, no guest code, no encoding of
    /// anything but the one meta).
    topics: Mutex<HashMap<String, Topic>>,
}

/// One topic's entries.
#[derive(Default)]
struct Topic {
    /// Key → its metas (as sent to clients, `phx_ref` included) by ref seq,
    /// i.e. in tracking order, as Phoenix groups them.
    keys: BTreeMap<Arc<str>, BTreeMap<u64, Arc<str>>>,
    /// Owner → the keys it tracks here and their seqs, so an update or an
    /// untrack finds its entry without scanning a crowded key.
    owners: HashMap<Owner, Vec<(Arc<str>, u64)>>,
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
    /// A tracker whose refs carry `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            shared: Arc::new(Shared {
                node,
                next_ref: AtomicU64::new(1),
                next_owner: AtomicU64::new(1),
                topics: Mutex::new(HashMap::new()),
            }),
        }
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
        if let Some(old) = prev.and_then(|prev| metas.remove(&prev)) {
            diff.leaves.push((key.clone(), old));
        }
        let meta: Arc<str> =
            meta_json(meta, self.make_ref(seq), prev.map(|s| self.make_ref(s))).into();
        metas.insert(seq, meta.clone());
        diff.joins.push((key, meta));
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
            state.remove(key, seq, &mut diff);
        }
        if state.keys.is_empty() {
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
        for (key, seq) in state.owners.remove(&owner).unwrap_or_default() {
            state.remove(key, seq, &mut diff);
        }
        if state.keys.is_empty() {
            topics.remove(topic);
        }
        diff
    }

    /// The topic's `presence_state` payload: `{"key":{"metas":[…]},…}`.
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

    /// How many entries (metas) the topic has.
    pub fn count(&self, topic: &str) -> usize {
        self.lock()
            .get(topic)
            .map_or(0, |state| state.keys.values().map(BTreeMap::len).sum())
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
    fn remove(&mut self, key: Arc<str>, seq: u64, diff: &mut Diff) {
        let Some(metas) = self.keys.get_mut(&key) else {
            return;
        };
        if let Some(meta) = metas.remove(&seq) {
            diff.leaves.push((key.clone(), meta));
        }
        if metas.is_empty() {
            self.keys.remove(&key);
        }
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
}
