//! The Phoenix presence wire formats: `phx_ref`s, metas, and the
//! `presence_state` and `presence_diff` payloads — pure code, no locks.
//!
//! The tracker (`presence/mod.rs`) keeps each meta as finished JSON text
//! (with its `phx_ref` in it), so a diff or a state is put together from
//! shared pieces of text without re-encoding anything
//! (`shared/phoenix-protocol.md` §6 is the spec).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::protocol::Payload;

/// A random number naming one node for as long as it runs, so refs made on
/// different nodes (or by a restarted node) never collide. In a cluster it
/// is also how the other nodes tell this node's entries and messages apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NodeId::LEN]);

impl NodeId {
    /// 48 bits: two of 1,000 nodes share an id with odds of about 2e-9.
    pub const LEN: usize = 6;

    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; Self::LEN];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: the clock still tells restarts apart.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes.copy_from_slice(&nanos.to_le_bytes()[..Self::LEN]);
        }
        Self(bytes)
    }

    /// A fixed id, for tests that assert exact refs (and for decoding).
    pub const fn from_bytes(bytes: [u8; 6]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> [u8; Self::LEN] {
        self.0
    }

    /// 12 lowercase hex digits: the id in Redis key names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The inverse of [`NodeId::hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 2 * Self::LEN || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; Self::LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

/// A `phx_ref`: the node that tracked, and the how-manieth track it was
/// there. Encoded like Phoenix's (12 bytes, URL-safe base64: 16 characters);
/// clients only compare refs for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ref {
    pub node: NodeId,
    /// Only the low 48 bits are encoded: 2.8e14 tracks per node run.
    pub seq: u64,
}

impl Ref {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 12];
        bytes[..NodeId::LEN].copy_from_slice(&self.node.0);
        bytes[NodeId::LEN..].copy_from_slice(&self.seq.to_be_bytes()[2..]);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// The meta as clients see it: the guest's object with `phx_ref` (and
/// `phx_ref_prev` for an update) set by the host, keys in order as Phoenix
/// encodes them. A guest's own `phx_ref*` keys are replaced: the refs are how
/// clients tell metas apart, so only the tracker may set them.
pub fn meta_json(mut meta: Map<String, Value>, phx_ref: Ref, prev: Option<Ref>) -> String {
    meta.insert("phx_ref".into(), phx_ref.encode().into());
    match prev {
        Some(prev) => meta.insert("phx_ref_prev".into(), prev.encode().into()),
        None => meta.remove("phx_ref_prev"),
    };
    Value::Object(meta).to_string()
}

/// Metas that joined and left a topic: one tracker operation's outcome,
/// broadcast as `presence_diff`. What a cluster would replicate, too.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// `(key, meta JSON)`, in the order they happened.
    pub joins: Vec<(Arc<str>, Arc<str>)>,
    pub leaves: Vec<(Arc<str>, Arc<str>)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// Adds `later`'s changes after this one's: one diff for both. An
    /// entry that both joined and left in between is dropped from both
    /// sides (a client that never saw it needs neither).
    pub fn merge(&mut self, later: Diff) {
        let Diff { joins, mut leaves } = later;
        self.joins.extend(joins);
        leaves.retain(|left| {
            match self
                .joins
                .iter()
                .position(|joined| Arc::ptr_eq(&joined.1, &left.1))
            {
                Some(at) => {
                    self.joins.remove(at);
                    false
                }
                None => true,
            }
        });
        self.leaves.extend(leaves);
    }

    /// `{"joins":{"key":{"metas":[…]}},"leaves":{…}}`, both always present.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str(r#"{"joins":"#);
        write_presences(&mut out, grouped(&self.joins));
        out.push_str(r#","leaves":"#);
        write_presences(&mut out, grouped(&self.leaves));
        out.push('}');
        out
    }

    pub fn to_payload(&self) -> Payload {
        Payload::json_raw(&self.to_json())
    }
}

/// Metas by key, keys sorted, metas in the order given.
fn grouped(metas: &[(Arc<str>, Arc<str>)]) -> BTreeMap<&str, Vec<&str>> {
    let mut keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, meta) in metas {
        keys.entry(key).or_default().push(meta);
    }
    keys
}

/// Writes `{"key":{"metas":[meta,…]},…}`: the `presence_state` payload, and
/// each half of a diff. Keys with no metas are left out.
pub fn write_presences<'a, K, M>(out: &mut String, keys: K)
where
    K: IntoIterator<Item = (&'a str, M)>,
    M: IntoIterator<Item = &'a str>,
{
    out.push('{');
    let mut first_key = true;
    for (key, metas) in keys {
        let mut metas = metas.into_iter().peekable();
        if metas.peek().is_none() {
            continue;
        }
        if !first_key {
            out.push(',');
        }
        first_key = false;
        // A &str always serializes.
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push_str(r#":{"metas":["#);
        for (i, meta) in metas.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(meta);
        }
        out.push_str("]}");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NODE: NodeId = NodeId([1, 2, 3, 4, 5, 6]);

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn pair(key: &str, meta: &str) -> (Arc<str>, Arc<str>) {
        (key.into(), meta.into())
    }

    #[test]
    fn merged_diffs_keep_order_and_drop_what_came_and_went() {
        let (ada, bob) = (
            pair("ada", r#"{"phx_ref":"1"}"#),
            pair("bob", r#"{"phx_ref":"2"}"#),
        );
        let mut batch = Diff {
            joins: vec![ada.clone(), bob.clone()],
            leaves: vec![],
        };
        // bob leaves (the same entry, so the same text), carol leaves (an
        // entry from before the batch).
        let carol = pair("carol", r#"{"phx_ref":"0"}"#);
        batch.merge(Diff {
            joins: vec![],
            leaves: vec![bob, carol.clone()],
        });
        assert_eq!(batch.joins, [ada]);
        assert_eq!(batch.leaves, [carol]);
        assert_eq!(
            batch.to_json(),
            r#"{"joins":{"ada":{"metas":[{"phx_ref":"1"}]}},"leaves":{"carol":{"metas":[{"phx_ref":"0"}]}}}"#
        );
    }

    #[test]
    fn refs_are_16_url_safe_characters_and_differ_by_node_and_seq() {
        let a = Ref { node: NODE, seq: 1 }.encode();
        assert_eq!(a, "AQIDBAUGAAAAAAAB");
        assert_eq!(a.len(), 16);
        let b = Ref { node: NODE, seq: 2 }.encode();
        let other_node = Ref {
            node: NodeId([9, 2, 3, 4, 5, 6]),
            seq: 1,
        }
        .encode();
        assert_ne!(a, b);
        assert_ne!(a, other_node);
        let big = Ref {
            node: NODE,
            seq: (1 << 48) - 1,
        }
        .encode();
        assert!(
            big.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn random_node_ids_differ() {
        assert_ne!(NodeId::random(), NodeId::random());
    }

    #[test]
    fn node_ids_round_trip_through_hex() {
        assert_eq!(NODE.hex(), "010203040506");
        assert_eq!(NodeId::from_hex(&NODE.hex()), Some(NODE));
        assert_eq!(NodeId::from_hex("01020304050"), None);
        assert_eq!(NodeId::from_hex("0102030405zz"), None);
    }

    #[test]
    fn meta_gets_phx_ref_in_sorted_key_order() {
        let meta = meta_json(
            object(json!({ "online_at": 5, "device": "phone" })),
            Ref { node: NODE, seq: 1 },
            None,
        );
        assert_eq!(
            meta,
            r#"{"device":"phone","online_at":5,"phx_ref":"AQIDBAUGAAAAAAAB"}"#
        );
    }

    #[test]
    fn an_update_carries_phx_ref_prev() {
        let meta = meta_json(
            object(json!({ "typing": true })),
            Ref { node: NODE, seq: 2 },
            Some(Ref { node: NODE, seq: 1 }),
        );
        assert_eq!(
            meta,
            r#"{"phx_ref":"AQIDBAUGAAAAAAAC","phx_ref_prev":"AQIDBAUGAAAAAAAB","typing":true}"#
        );
    }

    #[test]
    fn a_guest_cannot_set_its_own_refs() {
        let meta = meta_json(
            object(json!({ "phx_ref": "forged", "phx_ref_prev": "forged" })),
            Ref { node: NODE, seq: 3 },
            None,
        );
        assert_eq!(meta, r#"{"phx_ref":"AQIDBAUGAAAAAAAD"}"#);
    }

    #[test]
    fn an_empty_diff_has_both_halves() {
        let diff = Diff::default();
        assert!(diff.is_empty());
        assert_eq!(diff.to_json(), r#"{"joins":{},"leaves":{}}"#);
    }

    #[test]
    fn a_diff_groups_metas_by_key() {
        let diff = Diff {
            joins: vec![pair("b", r#"{"n":1}"#), pair("a", r#"{"n":2}"#)],
            leaves: vec![pair("b", r#"{"n":0}"#), pair("b", r#"{"n":3}"#)],
        };
        assert_eq!(
            diff.to_json(),
            r#"{"joins":{"a":{"metas":[{"n":2}]},"b":{"metas":[{"n":1}]}},"leaves":{"b":{"metas":[{"n":0},{"n":3}]}}}"#
        );
        let parsed: Value = serde_json::from_str(&diff.to_json()).unwrap();
        assert_eq!(parsed["leaves"]["b"]["metas"][1]["n"], 3);
    }

    #[test]
    fn state_escapes_keys_and_skips_empty_ones() {
        let mut out = String::new();
        let keys: Vec<(&str, Vec<&str>)> = vec![
            ("a\"b", vec![r#"{"x":1}"#, r#"{"x":2}"#]),
            ("empty", vec![]),
            ("é", vec!["{}"]),
        ];
        write_presences(&mut out, keys);
        assert_eq!(
            out,
            r#"{"a\"b":{"metas":[{"x":1},{"x":2}]},"é":{"metas":[{}]}}"#
        );
        let mut empty = String::new();
        write_presences(&mut empty, Vec::<(&str, Vec<&str>)>::new());
        assert_eq!(empty, "{}");
    }
}
