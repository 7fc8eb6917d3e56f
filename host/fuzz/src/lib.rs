//! Invariants shared by the fuzz targets in `fuzz_targets/`, and the code
//! under test: `host/src/protocol`, compiled in as [`protocol`].
//!
//! The protocol module is pure (no tokio, no I/O, only `super::` paths), so
//! it builds here from source without the rest of roost-host; Cargo.toml
//! says why. Each target feeds hostile bytes to one of its decoders and then
//! calls the checks here on what came out. A check panics with a message
//! naming the broken invariant, which libFuzzer reports as a crash and saves
//! as an artifact (see README.md). The oracles are written without the
//! decoders' own code paths: a generic `serde_json::Value` parse for the
//! JSON frames, a hand-written reading of `shared/phoenix-protocol.md` §2.3
//! for binary frames.
//!
//! # Layout
//! - [`check_v1_text`], [`check_v2_text`]: a JSON frame against a `Value` parse.
//! - [`check_binary`]: a binary frame against the spec's layout.
//! - [`check_message`]: what every decoded message must satisfy, whatever
//!   it came from: its payload is strict JSON, and it survives encoding
//!   with every serializer that can carry it.

/// `roost_host::protocol`, the same source file.
#[path = "../../src/protocol/mod.rs"]
pub mod protocol;

use bytes::Bytes;
use protocol::{
    DecodeError, EncodeError, Frame, Message, Outbound, Payload, RawFrame, Serializer, decode,
    encode,
};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// Checks `decode(V1, text)` against a generic parse of `text`: a V1 frame
/// is an object with string `topic` and `event`, any `payload`, `ref` a
/// string or null, and optional `join_ref` a string or null
/// (`Phoenix.Socket.Message.from_map!`). Anything else is refused.
pub fn check_v1_text(text: &str) {
    let decoded = decode(Serializer::V1, RawFrame::Text(text));
    if let Ok(message) = &decoded {
        check_message(Serializer::V1, message);
    }
    // Past serde_json's nesting limit (or with lone surrogates, see
    // `escapes_are_unicode`) there is no oracle; `check_message` still ran.
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match (&decoded, expected_v1(&value)) {
        (Ok(message), Some(expected)) => assert_same(message, &expected, text),
        (Ok(message), None) => {
            panic!("V1 accepted a frame Phoenix refuses: {text:?} decoded as {message:?}")
        }
        // Phoenix's Jason keeps one of the duplicates; refusing them is the
        // stricter choice and allowed.
        (Err(_), Some(_)) if has_duplicate_keys(text) => {}
        (Err(error), Some(expected)) => {
            panic!("V1 refused a valid frame {text:?} ({error}); expected {expected:?}")
        }
        (Err(_), None) => {}
    }
}

/// Checks `decode(V2, text)` against a generic parse of `text`: a V2 frame
/// is an array of at least 5 elements `[join_ref, ref, topic, event,
/// payload | _]`, refs strings or null, topic and event strings.
pub fn check_v2_text(text: &str) {
    let decoded = decode(Serializer::V2, RawFrame::Text(text));
    if let Ok(message) = &decoded {
        check_message(Serializer::V2, message);
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match (&decoded, expected_v2(&value)) {
        (Ok(message), Some(expected)) => assert_same(message, &expected, text),
        (Ok(message), None) => {
            panic!("V2 accepted a frame Phoenix refuses: {text:?} decoded as {message:?}")
        }
        (Err(error), Some(expected)) => {
            panic!("V2 refused a valid frame {text:?} ({error}); expected {expected:?}")
        }
        (Err(_), None) => {}
    }
}

/// Checks `decode(V2, Binary(frame))` against the layout of §2.3 (kind 0,
/// four length bytes, the four fields, the payload), and that V1 refuses
/// every binary frame.
pub fn check_binary(frame: &[u8]) {
    assert_eq!(
        decode(Serializer::V1, RawFrame::Binary(frame)).err(),
        Some(DecodeError::BinaryOnV1),
        "V1 must refuse binary frames"
    );
    let decoded = decode(Serializer::V2, RawFrame::Binary(frame));
    match (&decoded, expected_binary(frame)) {
        (Ok(message), Some(expected)) => {
            assert_eq!(message, &expected, "binary frame {frame:?}");
            check_message(Serializer::V2, message);
            // A reply has the client push's layout with kind 1 and the
            // status where the event was: the frame comes back byte for
            // byte, which also checks that empty refs decode as null.
            let reply = Outbound::Reply {
                join_ref: message.join_ref.clone(),
                ref_: message.ref_.clone(),
                topic: message.topic.clone(),
                status: message.event.clone(),
                response: message.payload.clone(),
            };
            let Ok(Frame::Binary(bytes)) = encode(Serializer::V2, &reply) else {
                panic!("a binary reply must encode to a binary frame: {reply:?}");
            };
            assert_eq!(bytes.first(), Some(&1), "reply kind");
            assert_eq!(bytes[1..], frame[1..], "re-encoded reply of {frame:?}");
        }
        (Ok(message), None) => {
            panic!("accepted a binary frame Phoenix refuses: {frame:?} decoded as {message:?}")
        }
        (Err(error), Some(expected)) => {
            panic!("refused a valid binary frame {frame:?} ({error}); expected {expected:?}")
        }
        (Err(_), None) => {}
    }
}

/// What every decoded message must satisfy:
/// - a JSON payload is strict JSON (every `\u` escape is Unicode), since it
///   is handed to guests as validated JSON and Phoenix (Jason) refuses the rest;
/// - re-encoded as a push, a reply and a broadcast with each serializer that
///   can carry it, it gives a well-formed frame with the same topic, event,
///   refs and payload.
pub fn check_message(serializer: Serializer, message: &Message) {
    match &message.payload {
        Payload::Json(raw) => {
            let raw = raw.get();
            assert!(
                escapes_are_unicode(raw),
                "payload with a lone UTF-16 surrogate escape was accepted: {raw:?}"
            );
            assert_eq!(raw.trim(), raw, "payload text keeps surrounding whitespace");
            for serializer in [Serializer::V1, Serializer::V2] {
                check_json_round_trip(serializer, message);
            }
        }
        Payload::Binary(_) => {
            assert_eq!(serializer, Serializer::V2, "a binary payload from V1");
            check_binary_encodings(message);
            // Its strings must also survive a JSON frame (escaping of control
            // characters, quotes, U+2028…), which binary frames reach freely.
            let as_json = Message {
                payload: Payload::empty(),
                ..message.clone()
            };
            check_json_round_trip(Serializer::V2, &as_json);
            check_json_round_trip(Serializer::V1, &as_json);
        }
    }
}

/// Encodes `message` as a push (decoded back: the same message, minus
/// join_ref for V1, which never sends it), a reply and a broadcast (parsed
/// generically: the documented shapes).
fn check_json_round_trip(serializer: Serializer, message: &Message) {
    let push = Outbound::Push {
        join_ref: message.join_ref.clone(),
        ref_: message.ref_.clone(),
        topic: message.topic.clone(),
        event: message.event.clone(),
        payload: message.payload.clone(),
    };
    let text = encode_text(serializer, &push);
    let back = decode(serializer, RawFrame::Text(&text))
        .unwrap_or_else(|e| panic!("{serializer:?} push {text:?} does not decode back: {e}"));
    let expected = match serializer {
        Serializer::V1 => Message {
            join_ref: None,
            ..message.clone()
        },
        Serializer::V2 => message.clone(),
    };
    assert_eq!(back, expected, "{serializer:?} push {text:?}");

    // The generic parse has serde_json's nesting limit; past it, the round
    // trip above is the whole check.
    let Ok(payload) = payload_value(&message.payload) else {
        return;
    };
    let reply = Outbound::Reply {
        join_ref: message.join_ref.clone(),
        ref_: message.ref_.clone(),
        topic: message.topic.clone(),
        status: message.event.clone(),
        response: message.payload.clone(),
    };
    let text = encode_text(serializer, &reply);
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    let body = serde_json::json!({ "response": payload, "status": message.event });
    let fields = fields_of(serializer, &value, &text);
    let (join_ref, ref_) = match serializer {
        Serializer::V1 => (None, message.ref_.as_deref()),
        Serializer::V2 => (message.join_ref.as_deref(), message.ref_.as_deref()),
    };
    assert_eq!(
        fields,
        Fields {
            join_ref: opt_value(join_ref),
            ref_: opt_value(ref_),
            topic: Value::from(message.topic.as_str()),
            event: Value::from("phx_reply"),
            payload: body,
        },
        "{serializer:?} reply {text:?}"
    );

    let broadcast = Outbound::Broadcast {
        topic: message.topic.clone(),
        event: message.event.clone(),
        payload: message.payload.clone(),
    };
    let text = encode_text(serializer, &broadcast);
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    assert_eq!(
        fields_of(serializer, &value, &text),
        Fields {
            join_ref: Value::Null,
            ref_: Value::Null,
            topic: Value::from(message.topic.as_str()),
            event: Value::from(message.event.as_str()),
            payload,
        },
        "{serializer:?} broadcast {text:?}"
    );
}

/// The server's binary frames for a message with a binary payload, built by
/// hand from §2.3's table; V1 must refuse them all.
fn check_binary_encodings(message: &Message) {
    let Payload::Binary(data) = &message.payload else {
        return;
    };
    let join_ref = message.join_ref.as_deref().unwrap_or_default();
    let frame = |kind: u8, fields: &[&str]| -> Option<Vec<u8>> {
        let mut out = vec![kind];
        for field in fields {
            out.push(u8::try_from(field.len()).ok()?);
        }
        for field in fields {
            out.extend_from_slice(field.as_bytes());
        }
        out.extend_from_slice(data);
        Some(out)
    };
    let push = Outbound::Push {
        join_ref: message.join_ref.clone(),
        ref_: message.ref_.clone(),
        topic: message.topic.clone(),
        event: message.event.clone(),
        payload: message.payload.clone(),
    };
    let broadcast = Outbound::Broadcast {
        topic: message.topic.clone(),
        event: message.event.clone(),
        payload: message.payload.clone(),
    };
    let cases = [
        (push, frame(0, &[join_ref, &message.topic, &message.event])),
        (broadcast, frame(2, &[&message.topic, &message.event])),
    ];
    for (outbound, expected) in cases {
        assert_eq!(
            encode(Serializer::V1, &outbound),
            Err(EncodeError::BinaryOnV1),
            "V1 must refuse binary payloads"
        );
        match (encode(Serializer::V2, &outbound), expected) {
            (Ok(Frame::Binary(bytes)), Some(expected)) => {
                assert_eq!(bytes, expected, "binary {outbound:?}")
            }
            (Err(EncodeError::FieldTooLong(_)), None) => {}
            (got, expected) => panic!("binary {outbound:?}: got {got:?}, expected {expected:?}"),
        }
    }
}

/// The five fields of a message, as generic JSON values.
#[derive(Debug, PartialEq)]
struct Fields {
    join_ref: Value,
    ref_: Value,
    topic: Value,
    event: Value,
    payload: Value,
}

/// What the oracle expects of a JSON frame. The payload stays a generic
/// value: re-serializing it would not give back the same floats
/// (serde_json's default float parsing is not round-trip exact).
#[derive(Debug)]
struct Expected {
    join_ref: Option<String>,
    ref_: Option<String>,
    topic: String,
    event: String,
    payload: Value,
}

fn expected_v1(value: &Value) -> Option<Expected> {
    let object = value.as_object()?;
    let string = |key: &str| object.get(key)?.as_str().map(str::to_owned);
    let nullable = |key: &str| -> Option<Option<String>> {
        match object.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        }
    };
    if !object.contains_key("ref") {
        return None;
    }
    Some(Expected {
        join_ref: nullable("join_ref")?,
        ref_: nullable("ref")?,
        topic: string("topic")?,
        event: string("event")?,
        payload: object.get("payload")?.clone(),
    })
}

fn expected_v2(value: &Value) -> Option<Expected> {
    let array = value.as_array()?;
    let nullable = |v: &Value| -> Option<Option<String>> {
        match v {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            _ => None,
        }
    };
    let [join_ref, ref_, topic, event, payload, ..] = array.as_slice() else {
        return None;
    };
    Some(Expected {
        join_ref: nullable(join_ref)?,
        ref_: nullable(ref_)?,
        topic: topic.as_str()?.to_owned(),
        event: event.as_str()?.to_owned(),
        payload: payload.clone(),
    })
}

/// §2.3, client push: `0, len(join_ref), len(ref), len(topic), len(event),
/// join_ref, ref, topic, event, payload`; empty refs are null.
fn expected_binary(frame: &[u8]) -> Option<Message> {
    let (&[kind, jr, r, t, e], rest) = frame.split_first_chunk::<5>()?;
    if kind != 0 {
        return None;
    }
    let mut at = 0;
    let mut field = |len: u8| -> Option<String> {
        let end = at + usize::from(len);
        let text = std::str::from_utf8(rest.get(at..end)?).ok()?.to_owned();
        at = end;
        Some(text)
    };
    let (join_ref, ref_, topic, event) = (field(jr)?, field(r)?, field(t)?, field(e)?);
    let null_if_empty = |s: String| if s.is_empty() { None } else { Some(s) };
    Some(Message {
        join_ref: null_if_empty(join_ref),
        ref_: null_if_empty(ref_),
        topic,
        event,
        payload: Payload::Binary(Bytes::copy_from_slice(&rest[at..])),
    })
}

/// A decoded message equals the oracle's; the payload as a value.
fn assert_same(message: &Message, expected: &Expected, input: &str) {
    assert_eq!(
        (
            &message.join_ref,
            &message.ref_,
            &message.topic,
            &message.event
        ),
        (
            &expected.join_ref,
            &expected.ref_,
            &expected.topic,
            &expected.event
        ),
        "fields of {input:?}"
    );
    let payload = payload_value(&message.payload)
        .unwrap_or_else(|e| panic!("payload of {input:?} is not JSON ({e}): {message:?}"));
    assert_eq!(payload, expected.payload, "payload of {input:?}");
}

fn fields_of(serializer: Serializer, value: &Value, text: &str) -> Fields {
    let get = |v: Option<&Value>| {
        v.cloned()
            .unwrap_or_else(|| panic!("field missing in {text:?}"))
    };
    match serializer {
        Serializer::V2 => {
            let array = value
                .as_array()
                .unwrap_or_else(|| panic!("not an array: {text:?}"));
            assert_eq!(array.len(), 5, "V2 frame length: {text:?}");
            Fields {
                join_ref: get(array.first()),
                ref_: get(array.get(1)),
                topic: get(array.get(2)),
                event: get(array.get(3)),
                payload: get(array.get(4)),
            }
        }
        Serializer::V1 => {
            let object = value
                .as_object()
                .unwrap_or_else(|| panic!("not an object: {text:?}"));
            assert!(
                !object.contains_key("join_ref"),
                "V1 sent join_ref: {text:?}"
            );
            assert_eq!(object.len(), 4, "V1 frame keys: {text:?}");
            Fields {
                join_ref: Value::Null,
                ref_: get(object.get("ref")),
                topic: get(object.get("topic")),
                event: get(object.get("event")),
                payload: get(object.get("payload")),
            }
        }
    }
}

fn encode_text(serializer: Serializer, message: &Outbound) -> String {
    match encode(serializer, message) {
        Ok(Frame::Text(text)) => text,
        other => panic!("{serializer:?} {message:?} must encode to text, got {other:?}"),
    }
}

fn payload_value(payload: &Payload) -> serde_json::Result<Value> {
    match payload {
        Payload::Json(raw) => serde_json::from_str(raw.get()),
        Payload::Binary(_) => Ok(Value::Null),
    }
}

fn opt_value(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

/// Whether a top-level JSON object repeats one of the V1 frame's keys
/// (`serde_json::Value` keeps the last one silently, a derived `Deserialize`
/// refuses a known field twice).
fn has_duplicate_keys(text: &str) -> bool {
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeysVisitor;
            impl<'de> Visitor<'de> for KeysVisitor {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        keys.push(key);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(KeysVisitor)
        }
    }
    let Ok(Keys(mut keys)) = serde_json::from_str::<Keys>(text) else {
        return false;
    };
    keys.retain(|k| ["topic", "event", "payload", "ref", "join_ref"].contains(&k.as_str()));
    let count = keys.len();
    keys.sort_unstable();
    keys.dedup();
    keys.len() != count
}

/// Whether every `\uXXXX` escape in `json` (text serde_json already
/// accepted) is a scalar value or a high surrogate followed by a low one:
/// what a strict parser (Jason, `serde_json::Value`) demands. Iterative, so
/// any nesting depth is fine.
pub fn escapes_are_unicode(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    let hex = |at: usize| -> Option<u16> {
        let digits = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') if bytes.get(i + 1) == Some(&b'u') => {
                let Some(unit) = hex(i + 2) else {
                    return false;
                };
                i += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        let low = (bytes.get(i..i + 2) == Some(b"\\u"))
                            .then(|| hex(i + 2))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return false;
                        }
                        i += 6;
                    }
                    0xDC00..=0xDFFF => return false,
                    _ => {}
                }
                continue;
            }
            (true, b'\\') => i += 1,
            _ => {}
        }
        i += 1;
    }
    true
}
