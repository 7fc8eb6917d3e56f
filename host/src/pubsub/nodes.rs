//! The cluster's nodes as one node sees them: who is alive, who went away.
//! Pure bookkeeping over what the Redis broker reads from the registry
//! (`<prefix>:nodes`, a hash of node id → [`Beat`] as JSON); the broker
//! does the I/O and acts on what [`View::observe`] finds.
//!
//! Each node rewrites its own field every tick with its beat count one
//! higher. A node is alive while its count keeps changing; one whose count
//! has not changed for the node timeout (measured on this node's monotonic
//! clock, so clocks of different machines never matter) is gone, even if
//! its field is still there (a kill -9 leaves it). A node missing from the
//! registry counts the same way, so a Redis restart (which empties it) is
//! not mistaken for every node dying: they write their fields again within
//! a tick.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::presence::NodeId;

/// What a node writes about itself, every tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    /// The node's name (`server.node`).
    pub name: String,
    /// Goes up by one every tick.
    pub beat: u64,
}

/// Another node, as last seen.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    beat: u64,
    /// When its beat last changed.
    at: Instant,
}

/// The other nodes, alive and gone.
#[derive(Debug)]
pub struct View {
    me: NodeId,
    timeout: Duration,
    alive: BTreeMap<NodeId, Seen>,
    /// Nodes found gone, with the beat they stopped at (until they beat
    /// again): what the broker reads of them (presence) is ignored.
    gone: HashMap<NodeId, u64>,
}

impl View {
    pub fn new(me: NodeId, timeout: Duration) -> Self {
        Self {
            me,
            timeout,
            alive: BTreeMap::new(),
            gone: HashMap::new(),
        }
    }

    /// Takes in the registry as read at `now`; returns the nodes found gone
    /// by this reading (each once).
    pub fn observe(&mut self, now: Instant, registry: &HashMap<String, String>) -> Vec<NodeId> {
        for (id, beat) in registry {
            let (Some(id), Ok(beat)) = (NodeId::from_hex(id), serde_json::from_str::<Beat>(beat))
            else {
                continue;
            };
            if id == self.me {
                continue;
            }
            match self.alive.get_mut(&id) {
                Some(seen) if seen.beat == beat.beat => {}
                Some(seen) => {
                    seen.beat = beat.beat;
                    seen.at = now;
                }
                // A gone node's field left behind (a kill -9 leaves it).
                None if self.gone.get(&id) == Some(&beat.beat) => {}
                // New, or back after being found gone: a full timeout from now.
                None => {
                    self.gone.remove(&id);
                    self.alive.insert(
                        id,
                        Seen {
                            name: beat.name,
                            beat: beat.beat,
                            at: now,
                        },
                    );
                }
            }
        }
        let timeout = self.timeout;
        let dead: Vec<NodeId> = self
            .alive
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.at) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(seen) = self.alive.remove(id) {
                self.gone.insert(*id, seen.beat);
            }
        }
        dead
    }

    /// Whether `node` was found gone (and has not beaten since).
    pub fn is_gone(&self, node: NodeId) -> bool {
        self.gone.contains_key(&node)
    }

    /// The other nodes alive: id and name.
    pub fn alive(&self) -> impl Iterator<Item = (NodeId, &str)> {
        self.alive
            .iter()
            .map(|(id, seen)| (*id, seen.name.as_str()))
    }

    /// Forgets a gone node's record once the registry no longer lists it.
    pub fn prune(&mut self, registry: &HashMap<String, String>) {
        self.gone.retain(|id, _| registry.contains_key(&id.hex()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(entries: &[(NodeId, &str, u64)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(id, name, beat)| {
                let beat = Beat {
                    name: (*name).into(),
                    beat: *beat,
                };
                (id.hex(), serde_json::to_string(&beat).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_node_whose_beat_stops_is_gone_after_the_timeout_and_back_when_it_beats() {
        let (me, a, b) = (
            NodeId::from_bytes([0; 6]),
            NodeId::from_bytes([1; 6]),
            NodeId::from_bytes([2; 6]),
        );
        let t0 = Instant::now();
        let timeout = Duration::from_secs(3);
        let mut view = View::new(me, timeout);
        assert!(
            view.observe(t0, &registry(&[(me, "me", 1), (a, "a", 1), (b, "b", 5)]))
                .is_empty()
        );
        assert_eq!(view.alive().count(), 2, "itself is not listed");
        // a keeps beating, b stops.
        let t1 = t0 + Duration::from_secs(2);
        assert!(
            view.observe(t1, &registry(&[(a, "a", 2), (b, "b", 5)]))
                .is_empty()
        );
        let t2 = t0 + Duration::from_secs(4);
        assert_eq!(
            view.observe(t2, &registry(&[(a, "a", 3), (b, "b", 5)])),
            [b]
        );
        assert!(view.is_gone(b));
        assert_eq!(view.alive().map(|(_, n)| n).collect::<Vec<_>>(), ["a"]);
        // Found once only, and its field left behind does not bring it back.
        let t25 = t0 + Duration::from_secs(9);
        assert!(
            view.observe(t25, &registry(&[(a, "a", 4), (b, "b", 5)]))
                .is_empty()
        );
        assert!(view.is_gone(b));
        // b beats again: alive.
        let t3 = t0 + Duration::from_secs(10);
        assert!(
            view.observe(t3, &registry(&[(a, "a", 5), (b, "b", 6)]))
                .is_empty()
        );
        assert!(!view.is_gone(b));
        assert_eq!(view.alive().count(), 2);
    }

    #[test]
    fn a_registry_emptied_for_a_moment_kills_nobody() {
        let (me, a) = (NodeId::from_bytes([0; 6]), NodeId::from_bytes([1; 6]));
        let t0 = Instant::now();
        let mut view = View::new(me, Duration::from_secs(3));
        view.observe(t0, &registry(&[(a, "a", 7)]));
        // Redis restarted: nothing listed for a second, then a's next beat.
        assert!(
            view.observe(t0 + Duration::from_secs(1), &HashMap::new())
                .is_empty()
        );
        assert!(
            view.observe(t0 + Duration::from_secs(2), &registry(&[(a, "a", 1)]))
                .is_empty()
        );
        assert!(
            view.observe(t0 + Duration::from_secs(4), &registry(&[(a, "a", 3)]))
                .is_empty()
        );
        assert_eq!(view.alive().count(), 1);
    }
}
