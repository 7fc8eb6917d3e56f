//! What nodes publish to each other on Redis, encoded: a broadcast, a
//! presence change, a disconnect. Pure code, no I/O; the Redis broker
//! (`redis_broker`) is the only user.
//!
//! A message is compact binary, since payloads are JSON text or raw bytes
//! that must not be re-escaped. The topic is not in it: the Redis channel
//! names it.
//!
//! ```text
//! version (1) | kind (1) | origin node (6) | body
//! broadcast:  event length (u16) | event | payload kind (0 json, 1 binary) | payload
//! presence:   op (u64) | prev (u64) | flags (1: snapshot, 2: empty)
//!             | joins (u32) × [seq (u64) | key (u32 + bytes) | meta (u32 + bytes)]
//!             | leaves (u32) × seq (u64)
//! disconnect: socket id
//! ```
//!
//! Integers are little-endian. A presence entry stored in Redis (a field of
//! the node's hash for the topic) is `key (u32 + bytes) | meta`.

use std::sync::Arc;

use bytes::Bytes;

use crate::presence::{Change, Entry, NodeId};
use crate::protocol::Payload;

const VERSION: u8 = 1;
const BROADCAST: u8 = 1;
const PRESENCE: u8 = 2;
const DISCONNECT: u8 = 3;

const SNAPSHOT: u8 = 1;
const EMPTY: u8 = 2;

/// A decoded message.
#[derive(Debug, PartialEq)]
pub enum Message {
    Broadcast { event: String, payload: Payload },
    Presence(Change),
    Disconnect { socket_id: String },
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the message is truncated")]
    Truncated,
    #[error("unknown message version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("a text field is not UTF-8")]
    Utf8,
    #[error("a JSON payload does not parse")]
    Json,
}

fn header(kind: u8, origin: NodeId, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + capacity);
    out.extend_from_slice(&[VERSION, kind]);
    out.extend_from_slice(&origin.bytes());
    out
}

/// A broadcast of `event` with `payload`, from `origin`.
pub fn broadcast(origin: NodeId, event: &str, payload: &Payload) -> Vec<u8> {
    let (kind, body): (u8, &[u8]) = match payload {
        Payload::Json(raw) => (0, raw.get().as_bytes()),
        Payload::Binary(bytes) => (1, bytes),
    };
    // Event names are bounded by `max_event_bytes` (default 256), far
    // below u16; a longer one is cut rather than mis-framed.
    let event = &event.as_bytes()[..event.len().min(usize::from(u16::MAX))];
    let mut out = header(BROADCAST, origin, 3 + event.len() + body.len());
    out.extend_from_slice(&(event.len() as u16).to_le_bytes());
    out.extend_from_slice(event);
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// A presence change of `origin`'s entries.
pub fn presence(origin: NodeId, change: &Change) -> Vec<u8> {
    let size: usize = change
        .joins
        .iter()
        .map(|e| 16 + e.key.len() + e.meta.len())
        .sum();
    let mut out = header(PRESENCE, origin, 25 + size + 8 * change.leaves.len());
    out.extend_from_slice(&change.op.to_le_bytes());
    out.extend_from_slice(&change.prev.to_le_bytes());
    let flags = if change.snapshot { SNAPSHOT } else { 0 } | if change.empty { EMPTY } else { 0 };
    out.push(flags);
    out.extend_from_slice(&len32(change.joins.len()));
    for entry in &change.joins {
        out.extend_from_slice(&entry.seq.to_le_bytes());
        put_str(&mut out, &entry.key);
        put_str(&mut out, &entry.meta);
    }
    out.extend_from_slice(&len32(change.leaves.len()));
    for seq in &change.leaves {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out
}

/// Closes the sockets with `socket_id` on every node.
pub fn disconnect(origin: NodeId, socket_id: &str) -> Vec<u8> {
    let mut out = header(DISCONNECT, origin, socket_id.len());
    out.extend_from_slice(socket_id.as_bytes());
    out
}

/// Decodes a message: who sent it, and what.
pub fn decode(bytes: &[u8]) -> Result<(NodeId, Message), WireError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8()?;
    let mut node = [0u8; NodeId::LEN];
    node.copy_from_slice(r.take(NodeId::LEN)?);
    let origin = NodeId::from_bytes(node);
    let message = match kind {
        BROADCAST => {
            let len = usize::from(u16::from_le_bytes(r.array()?));
            let event = r.string(len)?;
            let payload = match r.u8()? {
                0 => Payload::from_json_text(r.string(r.0.len())?).map_err(|_| WireError::Json)?,
                1 => Payload::Binary(Bytes::copy_from_slice(r.0)),
                other => return Err(WireError::Kind(other)),
            };
            Message::Broadcast { event, payload }
        }
        PRESENCE => {
            let op = u64::from_le_bytes(r.array()?);
            let prev = u64::from_le_bytes(r.array()?);
            let flags = r.u8()?;
            let joins = (0..r.u32()?)
                .map(|_| {
                    Ok(Entry {
                        seq: u64::from_le_bytes(r.array()?),
                        key: r.str32()?,
                        meta: r.str32()?,
                    })
                })
                .collect::<Result<Vec<_>, WireError>>()?;
            let leaves = (0..r.u32()?)
                .map(|_| r.array().map(u64::from_le_bytes))
                .collect::<Result<Vec<_>, WireError>>()?;
            Message::Presence(Change {
                op,
                prev,
                snapshot: flags & SNAPSHOT != 0,
                joins,
                leaves,
                empty: flags & EMPTY != 0,
            })
        }
        DISCONNECT => Message::Disconnect {
            socket_id: r.string(r.0.len())?,
        },
        other => return Err(WireError::Kind(other)),
    };
    Ok((origin, message))
}

/// A presence entry as stored in Redis: `key (u32 + bytes) | meta`.
pub fn entry_value(key: &str, meta: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + meta.len());
    put_str(&mut out, key);
    out.extend_from_slice(meta.as_bytes());
    out
}

/// The inverse of [`entry_value`]: key and meta.
pub fn decode_entry_value(bytes: &[u8]) -> Result<(Arc<str>, Arc<str>), WireError> {
    let mut r = Reader(bytes);
    let key = r.str32()?;
    let meta = r.string(r.0.len())?;
    Ok((key, meta.into()))
}

fn len32(len: usize) -> [u8; 4] {
    // Keys, metas and entry counts are bounded by frame limits, far below 4 GiB.
    u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes()
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&len32(text.len()));
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    fn string(&mut self, n: usize) -> Result<String, WireError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::Utf8)
    }

    fn str32(&mut self) -> Result<Arc<str>, WireError> {
        let n = usize::try_from(self.u32()?).map_err(|_| WireError::Truncated)?;
        Ok(self.string(n)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeId = NodeId::from_bytes([7, 6, 5, 4, 3, 2]);

    #[test]
    fn broadcasts_round_trip_json_and_binary() {
        let json = Payload::json_raw(r#"{"body":"hé"}"#);
        let (origin, message) = decode(&broadcast(NODE, "new_msg", &json)).unwrap();
        assert_eq!(origin, NODE);
        assert_eq!(
            message,
            Message::Broadcast {
                event: "new_msg".into(),
                payload: json
            }
        );
        let binary = Payload::Binary(Bytes::from_static(&[0, 1, 2, 255]));
        let (_, message) = decode(&broadcast(NODE, "bin", &binary)).unwrap();
        assert_eq!(
            message,
            Message::Broadcast {
                event: "bin".into(),
                payload: binary
            }
        );
    }

    #[test]
    fn presence_changes_round_trip() {
        let change = Change {
            op: 9,
            prev: 4,
            snapshot: true,
            joins: vec![Entry {
                seq: 3,
                key: "ada".into(),
                meta: r#"{"phx_ref":"x"}"#.into(),
            }],
            leaves: vec![1, 2],
            empty: false,
        };
        let (_, message) = decode(&presence(NODE, &change)).unwrap();
        assert_eq!(message, Message::Presence(change));
        let (_, message) = decode(&disconnect(NODE, "users_socket:ada")).unwrap();
        assert_eq!(
            message,
            Message::Disconnect {
                socket_id: "users_socket:ada".into()
            }
        );
        let (key, meta) = decode_entry_value(&entry_value("a\0b", "{}")).unwrap();
        assert_eq!((&*key, &*meta), ("a\0b", "{}"));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let good = broadcast(NODE, "e", &Payload::empty());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&[2, 1]), Err(WireError::Version(2)));
        let mut bad_json = broadcast(NODE, "e", &Payload::empty());
        bad_json.pop();
        assert_eq!(decode(&bad_json), Err(WireError::Json));
        let mut huge = presence(NODE, &Change::default());
        huge.truncate(8 + 17);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(WireError::Truncated));
    }
}
