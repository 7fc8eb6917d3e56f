//! The JSON serializers: V2 frames are arrays `[join_ref, ref, topic, event,
//! payload]`, V1 frames are objects without join_ref on the way out.
//!
//! Encoding writes the frame text directly around the payload's raw JSON, so a
//! payload is never parsed or re-serialized on its way through the host.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{DecodeError, Message, Outbound, Payload, Serializer, event};

/// `[join_ref, ref, topic, event, payload | _]`: trailing elements are
/// ignored, as Phoenix's pattern match does.
pub(super) fn decode_v2(text: &str) -> Result<Message, DecodeError> {
    struct ArrayVisitor;

    impl<'de> Visitor<'de> for ArrayVisitor {
        type Value = Message;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array [join_ref, ref, topic, event, payload]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message, A::Error> {
            let short = || de::Error::custom("an array of 5 elements");
            let join_ref = seq.next_element::<Option<String>>()?.ok_or_else(short)?;
            let ref_ = seq.next_element::<Option<String>>()?.ok_or_else(short)?;
            let topic = seq.next_element::<String>()?.ok_or_else(short)?;
            let event = seq.next_element::<String>()?.ok_or_else(short)?;
            let payload = seq.next_element::<Box<RawValue>>()?.ok_or_else(short)?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Message {
                join_ref,
                ref_,
                topic,
                event,
                payload: Payload::Json(payload),
            })
        }
    }

    struct Frame(Message);
    impl<'de> Deserialize<'de> for Frame {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_seq(ArrayVisitor).map(Frame)
        }
    }

    let message = serde_json::from_str::<Frame>(text)
        .map(|frame| frame.0)
        .map_err(|e| DecodeError::Json(e.to_string()))?;
    checked(message)
}

/// Refuses a payload with a lone surrogate escape (see `surrogates_paired`).
fn checked(message: Message) -> Result<Message, DecodeError> {
    match &message.payload {
        Payload::Json(raw) if !super::surrogates_paired(raw.get()) => {
            Err(DecodeError::Json("a \\u escape is a lone surrogate".into()))
        }
        _ => Ok(message),
    }
}

/// `{"topic", "event", "payload", "ref", "join_ref"?}`: the first four keys
/// are required (`ref` may be null), as in `Phoenix.Socket.Message.from_map!`.
pub(super) fn decode_v1(text: &str) -> Result<Message, DecodeError> {
    #[derive(Deserialize)]
    struct Object {
        topic: String,
        event: String,
        payload: Box<RawValue>,
        // Required even when null, so it is read raw and typed below.
        #[serde(rename = "ref")]
        ref_: Box<RawValue>,
        #[serde(default)]
        join_ref: Option<String>,
    }

    // serde would also read the struct from an array of its fields.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(DecodeError::Shape("a JSON object"));
    }
    let object: Object =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let ref_ = serde_json::from_str::<Option<String>>(object.ref_.get())
        .map_err(|_| DecodeError::Shape("`ref` to be a string or null"))?;
    checked(Message {
        join_ref: object.join_ref,
        ref_,
        topic: object.topic,
        event: object.event,
        payload: Payload::Json(object.payload),
    })
}

/// Encodes a message whose payload is JSON. Binary payloads never reach here
/// (see `protocol::encode`); should one, it is written as `null`.
pub(super) fn encode(serializer: Serializer, message: &Outbound) -> String {
    let (join_ref, ref_, topic, event, body) = parts(message);
    let mut out = String::with_capacity(64 + topic.len() + event.len() + body.len());
    match serializer {
        Serializer::V2 => {
            out.push('[');
            push_json_str(&mut out, join_ref);
            out.push(',');
            push_json_str(&mut out, ref_);
            out.push(',');
            push_json_str(&mut out, Some(topic));
            out.push(',');
            push_json_str(&mut out, Some(event));
            out.push(',');
            body.write(&mut out);
            out.push(']');
        }
        Serializer::V1 => {
            // Jason's key order; the client does not depend on it.
            out.push_str("{\"event\":");
            push_json_str(&mut out, Some(event));
            out.push_str(",\"payload\":");
            body.write(&mut out);
            out.push_str(",\"ref\":");
            push_json_str(&mut out, ref_);
            out.push_str(",\"topic\":");
            push_json_str(&mut out, Some(topic));
            out.push('}');
        }
    }
    out
}

/// The bytes `encode` writes for `message`, computed without writing them.
pub(super) fn encoded_len(serializer: Serializer, message: &Outbound) -> usize {
    parts_len(serializer, parts(message))
}

/// `encoded_len` of a broadcast, from its parts.
pub(super) fn broadcast_len(
    serializer: Serializer,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> usize {
    parts_len(serializer, (None, None, topic, event, Body::Plain(payload)))
}

fn parts_len(serializer: Serializer, (join_ref, ref_, topic, event, body): Parts<'_>) -> usize {
    let strings = json_str_len(ref_) + json_str_len(Some(topic)) + json_str_len(Some(event));
    match serializer {
        // `[` `,` `,` `,` `,` `]`
        Serializer::V2 => 6 + json_str_len(join_ref) + strings + body.len(),
        // `{"event":` `,"payload":` `,"ref":` `,"topic":` `}`
        Serializer::V1 => 37 + strings + body.len(),
    }
}

/// The length of `push_json_str`'s output.
fn json_str_len(value: Option<&str>) -> usize {
    let Some(s) = value else {
        return 4;
    };
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The payload part of a frame: a plain payload, or a reply's
/// `{"response": …, "status": …}` wrapper.
enum Body<'a> {
    Plain(&'a Payload),
    Reply(&'a str, &'a Payload),
}

impl Body<'_> {
    fn len(&self) -> usize {
        match self {
            Body::Plain(p) => p.len(),
            // `{"response":` payload `,"status":` status `}`
            Body::Reply(status, p) => 23 + json_str_len(Some(status)) + p.len(),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Body::Plain(payload) => push_payload(out, payload),
            Body::Reply(status, response) => {
                out.push_str("{\"response\":");
                push_payload(out, response);
                out.push_str(",\"status\":");
                push_json_str(out, Some(status));
                out.push('}');
            }
        }
    }
}

type Parts<'a> = (Option<&'a str>, Option<&'a str>, &'a str, &'a str, Body<'a>);

fn parts(message: &Outbound) -> Parts<'_> {
    match message {
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response,
        } => (
            join_ref.as_deref(),
            ref_.as_deref(),
            topic,
            event::PHX_REPLY,
            Body::Reply(status, response),
        ),
        Outbound::Push {
            join_ref,
            ref_,
            topic,
            event,
            payload,
        } => (
            join_ref.as_deref(),
            ref_.as_deref(),
            topic,
            event,
            Body::Plain(payload),
        ),
        Outbound::Broadcast {
            topic,
            event,
            payload,
        } => (None, None, topic, event, Body::Plain(payload)),
    }
}

fn push_payload(out: &mut String, payload: &Payload) {
    match payload {
        Payload::Json(raw) => out.push_str(raw.get()),
        Payload::Binary(_) => out.push_str("null"),
    }
}

/// Writes a JSON string literal, or `null`.
fn push_json_str(out: &mut String, value: Option<&str>) {
    match value {
        None => out.push_str("null"),
        Some(s) if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        // Serializing a &str to a String cannot fail.
        Some(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, RawFrame, decode, encode as encode_frame};

    #[test]
    fn encoded_len_is_what_encode_writes() {
        let messages = [
            Outbound::Broadcast {
                topic: "room:\"q\"\n\u{1}".into(),
                event: "e\\".into(),
                payload: Payload::json_raw(r#"{"a":"\u00e9"}"#),
            },
            Outbound::Reply {
                join_ref: Some("1".into()),
                ref_: None,
                topic: "t".into(),
                status: "ok".into(),
                response: Payload::empty(),
            },
            Outbound::Push {
                join_ref: None,
                ref_: Some("7".into()),
                topic: "t\t".into(),
                event: "phx_error".into(),
                payload: Payload::json_raw("[1,2]"),
            },
        ];
        for message in &messages {
            for serializer in [Serializer::V1, Serializer::V2] {
                assert_eq!(
                    encoded_len(serializer, message),
                    encode(serializer, message).len(),
                    "{serializer:?} {message:?}"
                );
            }
        }
    }

    fn text(serializer: Serializer, message: &Outbound) -> String {
        match encode_frame(serializer, message) {
            Ok(Frame::Text(text)) => text,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    fn reply(join_ref: Option<&str>, ref_: &str, response: &str) -> Outbound {
        Outbound::Reply {
            join_ref: join_ref.map(Into::into),
            ref_: Some(ref_.into()),
            topic: "room:lobby".into(),
            status: "ok".into(),
            response: Payload::json_raw(response),
        }
    }

    #[test]
    fn v2_decodes_a_join_and_a_heartbeat() {
        let m = decode(
            Serializer::V2,
            RawFrame::Text(r#"["3","3","room:lobby","phx_join",{"user":"x"}]"#),
        )
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("3"));
        assert_eq!(m.ref_.as_deref(), Some("3"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload, Payload::json_raw(r#"{"user":"x"}"#));

        let hb = decode(
            Serializer::V2,
            RawFrame::Text(r#"[null,"6","phoenix","heartbeat",{}]"#),
        )
        .unwrap();
        assert_eq!(hb.join_ref, None);
        assert_eq!(hb.ref_.as_deref(), Some("6"));
    }

    #[test]
    fn v2_ignores_trailing_elements() {
        let m = decode(
            Serializer::V2,
            RawFrame::Text(r#"[null,"1","t","e",{},1,2]"#),
        )
        .unwrap();
        assert_eq!(m.event, "e");
    }

    #[test]
    fn v2_rejects_malformed_frames() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"[null,"1","t","e"]"#,
            r#"[1,"1","t","e",{}]"#,
            r#"[null,"1",7,"e",{}]"#,
            r#"[null,"1","t",null,{}]"#,
            r#"[null,"1","t","e",{}"#,
        ] {
            assert!(
                decode(Serializer::V2, RawFrame::Text(bad)).is_err(),
                "{bad:?} decoded"
            );
        }
    }

    #[test]
    fn v2_encodes_exact_frames() {
        assert_eq!(
            text(Serializer::V2, &reply(Some("3"), "3", "{}")),
            r#"["3","3","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
        );
        let push = Outbound::Push {
            join_ref: Some("3".into()),
            ref_: None,
            topic: "room:lobby".into(),
            event: "joined".into(),
            payload: Payload::json_raw(r#"{"status":"connected"}"#),
        };
        assert_eq!(
            text(Serializer::V2, &push),
            r#"["3",null,"room:lobby","joined",{"status":"connected"}]"#
        );
        let broadcast = Outbound::Broadcast {
            topic: "room:lobby".into(),
            event: "user_entered".into(),
            payload: Payload::json_raw(r#"{"user":null}"#),
        };
        assert_eq!(
            text(Serializer::V2, &broadcast),
            r#"[null,null,"room:lobby","user_entered",{"user":null}]"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let push = Outbound::Broadcast {
            topic: "a\"b".into(),
            event: "line\nbreak\\".into(),
            payload: Payload::empty(),
        };
        let encoded = text(Serializer::V2, &push);
        assert_eq!(encoded, r#"[null,null,"a\"b","line\nbreak\\",{}]"#);
        let round: serde_json::Value = serde_json::from_str(&encoded).unwrap();
        assert_eq!(round[2], "a\"b");
    }

    #[test]
    fn v1_requires_topic_event_payload_and_ref() {
        let m = decode(
            Serializer::V1,
            RawFrame::Text(r#"{"topic":"t","event":"e","payload":{"a":1},"ref":null}"#),
        )
        .unwrap();
        assert_eq!((m.join_ref, m.ref_), (None, None));
        let m = decode(
            Serializer::V1,
            RawFrame::Text(r#"{"topic":"t","event":"e","payload":{},"ref":"2","join_ref":"1"}"#),
        )
        .unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.ref_.as_deref(), Some("2"));
        for bad in [
            r#"{"topic":"t","event":"e","payload":{}}"#,
            r#"{"event":"e","payload":{},"ref":null}"#,
            r#"["1","1","t","e",{}]"#,
            r#"{"topic":"t","event":"e","payload":{},"ref":5}"#,
        ] {
            assert!(
                decode(Serializer::V1, RawFrame::Text(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn v1_encodes_objects_without_join_ref() {
        assert_eq!(
            text(Serializer::V1, &reply(Some("1"), "1", "{}")),
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}"#
        );
        let broadcast = Outbound::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::empty(),
        };
        assert_eq!(
            text(Serializer::V1, &broadcast),
            r#"{"event":"e","payload":{},"ref":null,"topic":"t"}"#
        );
    }

    #[test]
    fn v1_refuses_arrays() {
        for bad in [
            r#"["room:lobby","phx_join",{},"1"]"#,
            r#"["t","e",{},null,"1"]"#,
            r#" [ "t" , "e" , {} , null ] "#,
        ] {
            assert!(
                decode(Serializer::V1, RawFrame::Text(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn payloads_with_lone_surrogates_are_refused() {
        for bad in [
            r#"[null,"1","t","e",{"a":"\ud800"}]"#,
            r#"[null,"1","t","e",["\udc00"]]"#,
            r#"[null,"1","t","e","\ud83dx"]"#,
        ] {
            assert!(
                decode(Serializer::V2, RawFrame::Text(bad)).is_err(),
                "{bad}"
            );
        }
        let v1 = r#"{"topic":"t","event":"e","payload":{"a":"\ud800"},"ref":null}"#;
        assert!(decode(Serializer::V1, RawFrame::Text(v1)).is_err());
        let pair = r#"[null,"1","t","e",{"a":"\ud83d\ude00","b":"\\ud800"}]"#;
        assert!(decode(Serializer::V2, RawFrame::Text(pair)).is_ok());
    }
}
