//! What presence replication exchanges between nodes: one node's [`Change`]
//! to one topic's entries, and the [`Replicator`] a tracker hands its
//! changes to (the cluster broker, in `pubsub`). Pure data, no I/O.
//!
//! # Ordering without a shared clock
//! Every change a node makes gets an `op` number from one counter of the
//! node (all its apps), and carries `prev`, the op of that node's previous
//! change to the same topic (0 when the node had no entries there). A
//! receiver keeps, per node and topic, the op it applied last, `v`:
//!
//! - `op <= v`: already applied (a replay, or older than a snapshot): ignored;
//! - `prev == v`: the next change: applied;
//! - otherwise a [`Gap`]: changes were lost in between, so the receiver
//!   refetches the topic's entries from the broker (which stores each
//!   node's entries and its `v`).
//!
//! A snapshot (a node's whole set of entries on a topic, sent after the
//! broker was unreachable) replaces what a receiver had iff its op is newer.
//! The broker is written before the change is published, and a receiver
//! subscribes before it fetches, so applying fetched state and published
//! changes in any order converges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One of a node's entries: its ref seq (unique on the node), key and meta
/// (finished JSON text, `phx_ref` included).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub key: Arc<str>,
    pub meta: Arc<str>,
}

/// One node's change to one topic's entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change {
    /// This change's number on its node (see the module docs).
    pub op: u64,
    /// The op of the node's previous change to the topic; 0 if none.
    pub prev: u64,
    /// The node's whole set of entries on the topic rather than a delta.
    pub snapshot: bool,
    /// Entries added (for a snapshot: all of them).
    pub joins: Vec<Entry>,
    /// Seqs of entries removed.
    pub leaves: Vec<u64>,
    /// The node has no entries left on the topic after this change.
    pub empty: bool,
}

/// A change that does not follow the last one applied: some were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

/// Takes a tracker's changes to the other nodes. Called under the
/// tracker's lock, so changes arrive in op order: it must not block.
pub trait Replicator: Send + Sync {
    fn replicate(&self, topic: &str, change: Change);
}

/// The node's op counter. Process-wide rather than per tracker: an app
/// removed and added again gets a new tracker, and its ops must still be
/// newer than the old one's (the node id stays the same).
static NEXT_OP: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_op() -> u64 {
    NEXT_OP.fetch_add(1, Ordering::Relaxed)
}

/// Where each new tracker's ref seqs start: 2^32 apart, so an app added
/// again on the same node never reuses a ref of its previous tracker.
static NEXT_TRACKER: AtomicU64 = AtomicU64::new(0);

pub(super) fn first_seq() -> u64 {
    1 + (NEXT_TRACKER.fetch_add(1, Ordering::Relaxed) << 32)
}
