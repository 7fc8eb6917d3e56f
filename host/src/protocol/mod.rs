//! The Phoenix Channels wire protocol: messages, serializers, event names.
//!
//! Pure code — no tokio, no I/O — so it can be unit-tested and fuzzed. The
//! socket layer decodes every inbound frame with [`decode`] and encodes every
//! outbound one with [`encode`]; `shared/phoenix-protocol.md` §2 is the spec.
//!
//! # Layout
//! - [`event`]: the reserved topic and event names, verbatim from Phoenix.
//! - `json`: the V1 (object) and V2 (array) JSON serializers.
//! - `binary`: V2 binary frames (§2.3).
//! - `longpoll`: long-poll POST bodies (§5.3): ndjson batches of frames.
//! - `topic`: topic patterns of the config's routes (`ping`, `room:*`).

mod binary;
pub mod event;
mod json;
mod longpoll;
mod topic;

pub use longpoll::{MAX_BATCH_LINES, decode_longpoll_body};
pub use topic::{PatternError, TopicPattern};

use bytes::Bytes;
use serde_json::value::RawValue;

/// The body of a message: JSON kept as validated raw text (it is passed to
/// guests and re-embedded in frames without being re-encoded), or the raw
/// bytes of a V2 binary frame.
#[derive(Debug, Clone)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

impl PartialEq for Payload {
    /// JSON payloads are equal when their texts are.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Json(a), Self::Json(b)) => a.get() == b.get(),
            (Self::Binary(a), Self::Binary(b)) => a == b,
            _ => false,
        }
    }
}

impl Payload {
    /// The empty JSON object `{}`.
    pub fn empty() -> Self {
        Self::json_raw("{}")
    }

    /// A JSON payload from text known to be valid JSON.
    ///
    /// # Panics
    /// If `text` is not valid JSON; use [`Payload::from_json_text`] for text
    /// from outside.
    pub fn json_raw(text: &str) -> Self {
        #[allow(clippy::expect_used)] // callers pass literals or serde_json output
        Self::Json(RawValue::from_string(text.to_owned()).expect("valid JSON literal"))
    }

    /// A JSON payload from untrusted text, validated.
    pub fn from_json_text(text: String) -> Result<Self, serde_json::Error> {
        let raw = RawValue::from_string(text)?;
        if !surrogates_paired(raw.get()) {
            return Err(serde::de::Error::custom("a \\u escape is a lone surrogate"));
        }
        Ok(Self::Json(raw))
    }

    /// A JSON payload from a parsed value.
    pub fn from_value(value: &serde_json::Value) -> Self {
        #[allow(clippy::expect_used)] // a `Value` always serializes
        Self::Json(serde_json::value::to_raw_value(value).expect("a Value serializes"))
    }

    /// Bytes on the wire, for limits and accounting.
    pub fn len(&self) -> usize {
        match self {
            Self::Json(raw) => raw.get().len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether every `\u` escape in valid JSON text is a well-formed UTF-16
/// unit. serde_json's `RawValue` lets a lone surrogate (`"\ud800"`) through,
/// which no parser downstream (Phoenix's Jason, a guest's serde_json) takes.
/// In valid JSON a backslash only occurs inside strings, so no string
/// tracking is needed.
pub fn surrogates_paired(json: &str) -> bool {
    let bytes = json.as_bytes();
    let unit = |at: usize| {
        let hex = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut i = 0;
    while let Some(offset) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        i += offset;
        if bytes.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        match unit(i + 2) {
            Some(0xD800..=0xDBFF) => {
                let low = (bytes.get(i + 6..i + 8) == Some(&b"\\u"[..]))
                    .then(|| unit(i + 8))
                    .flatten();
                if !matches!(low, Some(0xDC00..=0xDFFF)) {
                    return false;
                }
                i += 12;
            }
            Some(0xDC00..=0xDFFF) | None => return false,
            Some(_) => i += 6,
        }
    }
    true
}

/// A message from a client (`%Phoenix.Socket.Message{}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// `phx_reply` to the message with `ref_`.
    Reply {
        join_ref: Option<String>,
        ref_: Option<String>,
        topic: String,
        status: String,
        response: Payload,
    },
    /// A push from a channel to its own client (`join_ref` set, ref null),
    /// and the control pushes `phx_close` / `phx_error` (ref = join_ref).
    Push {
        join_ref: Option<String>,
        ref_: Option<String>,
        topic: String,
        event: String,
        payload: Payload,
    },
    /// A fastlane broadcast: join_ref and ref are both null.
    Broadcast {
        topic: String,
        event: String,
        payload: Payload,
    },
}

/// A frame as it crosses the transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// A frame as read from the transport, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum RawFrame<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// The wire format a client negotiated with `vsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.0` or no vsn: JSON objects, no join_ref on the wire.
    V1,
    /// `vsn=2.0.0`: JSON arrays and binary frames.
    V2,
}

impl Serializer {
    /// Negotiates from the `vsn` query parameter as Phoenix does: missing
    /// means 1.0.0, and `~> 1.0.0` / `~> 2.0.0` (same major and minor, any
    /// patch) select V1 / V2. Anything else is refused.
    pub fn negotiate(vsn: Option<&str>) -> Option<Self> {
        let Some(vsn) = vsn else {
            return Some(Self::V1);
        };
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || patch.is_empty() || !patch.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        match (major, minor) {
            ("1", "0") => Some(Self::V1),
            ("2", "0") => Some(Self::V2),
            _ => None,
        }
    }

    /// The `vsn` this serializer answers to, for logs.
    pub fn vsn(self) -> &'static str {
        match self {
            Self::V1 => "1.0.0",
            Self::V2 => "2.0.0",
        }
    }
}

/// Why an inbound frame could not be decoded. Phoenix crashes the socket on
/// any of these; Roost closes it with a documented code and logs the reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("expected {0}")]
    Shape(&'static str),
    #[error("binary frames need the V2 serializer")]
    BinaryOnV1,
    #[error("binary frame: {0}")]
    Binary(&'static str),
}

/// Why an outbound message could not be encoded for a client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("binary payloads need the V2 serializer")]
    BinaryOnV1,
    #[error("binary frame field `{0}` is longer than 255 bytes")]
    FieldTooLong(&'static str),
}

/// Decodes one inbound frame.
pub fn decode(serializer: Serializer, frame: RawFrame<'_>) -> Result<Message, DecodeError> {
    match (serializer, frame) {
        (Serializer::V1, RawFrame::Text(text)) => json::decode_v1(text),
        (Serializer::V2, RawFrame::Text(text)) => json::decode_v2(text),
        (Serializer::V2, RawFrame::Binary(bytes)) => binary::decode(bytes),
        (Serializer::V1, RawFrame::Binary(_)) => Err(DecodeError::BinaryOnV1),
    }
}

/// The most bytes `message` takes on the wire, whichever serializer a
/// client speaks: what limits are checked against before a message is
/// queued (a frame past a client's outbox cap would disconnect it).
pub fn encoded_len(message: &Outbound) -> usize {
    let (Outbound::Reply { response: p, .. }
    | Outbound::Push { payload: p, .. }
    | Outbound::Broadcast { payload: p, .. }) = message;
    match p {
        // V2 binary: a kind byte, a length byte per field, the fields, the
        // payload; its fields are at most what the JSON forms spell out.
        Payload::Binary(_) => json::encoded_len(Serializer::V2, message),
        Payload::Json(_) => json::encoded_len(Serializer::V1, message)
            .max(json::encoded_len(Serializer::V2, message)),
    }
}

/// [`encoded_len`] of a broadcast, from its parts.
pub fn broadcast_len(topic: &str, event: &str, payload: &Payload) -> usize {
    match payload {
        Payload::Binary(_) => json::broadcast_len(Serializer::V2, topic, event, payload),
        Payload::Json(_) => json::broadcast_len(Serializer::V1, topic, event, payload),
    }
}

/// Encodes one outbound message. A binary payload makes a V2 binary frame.
pub fn encode(serializer: Serializer, message: &Outbound) -> Result<Frame, EncodeError> {
    let binary = match message {
        Outbound::Reply { response: p, .. }
        | Outbound::Push { payload: p, .. }
        | Outbound::Broadcast { payload: p, .. } => matches!(p, Payload::Binary(_)),
    };
    match (serializer, binary) {
        (_, false) => Ok(Frame::Text(json::encode(serializer, message))),
        (Serializer::V2, true) => binary::encode(message).map(Frame::Binary),
        (Serializer::V1, true) => Err(EncodeError::BinaryOnV1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_vsn_like_phoenix() {
        assert_eq!(Serializer::negotiate(None), Some(Serializer::V1));
        assert_eq!(Serializer::negotiate(Some("1.0.0")), Some(Serializer::V1));
        assert_eq!(Serializer::negotiate(Some("2.0.0")), Some(Serializer::V2));
        assert_eq!(Serializer::negotiate(Some("2.0.7")), Some(Serializer::V2));
        for refused in [
            "123.1.1", "2.1.0", "2", "2.0", "", "2.0.0.0", "2.0.x", "3.0.0",
        ] {
            assert_eq!(Serializer::negotiate(Some(refused)), None, "{refused}");
        }
    }

    #[test]
    fn binary_payload_cannot_go_to_v1() {
        let message = Outbound::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Binary(Bytes::from_static(b"x")),
        };
        assert_eq!(
            encode(Serializer::V1, &message),
            Err(EncodeError::BinaryOnV1)
        );
    }
}
