//! V2 binary frames (`shared/phoenix-protocol.md` §2.3): a kind byte, one
//! length byte per string field, the fields, then the raw payload.
//!
//! Clients send only kind 0 (push). The server sends push (0, no ref),
//! reply (1) and broadcast (2). Empty refs decode as null and null refs
//! encode as empty, as Phoenix does.

use bytes::Bytes;

use super::{DecodeError, EncodeError, Message, Outbound, Payload};

const PUSH: u8 = 0;
const REPLY: u8 = 1;
const BROADCAST: u8 = 2;

pub(super) fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    let (&kind, rest) = frame
        .split_first()
        .ok_or(DecodeError::Binary("empty frame"))?;
    if kind != PUSH {
        return Err(DecodeError::Binary("clients may only send kind 0 (push)"));
    }
    let [jr_len, ref_len, topic_len, event_len] = *rest
        .first_chunk::<4>()
        .ok_or(DecodeError::Binary("header shorter than 5 bytes"))?;
    let mut body = &rest[4..];
    let mut field = |len: u8| -> Result<String, DecodeError> {
        let len = usize::from(len);
        if body.len() < len {
            return Err(DecodeError::Binary("field lengths exceed the frame"));
        }
        let (head, tail) = body.split_at(len);
        body = tail;
        String::from_utf8(head.to_vec()).map_err(|_| DecodeError::Binary("field is not UTF-8"))
    };
    let join_ref = field(jr_len)?;
    let ref_ = field(ref_len)?;
    let topic = field(topic_len)?;
    let event = field(event_len)?;
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(Message {
        join_ref: non_empty(join_ref),
        ref_: non_empty(ref_),
        topic,
        event,
        payload: Payload::Binary(Bytes::copy_from_slice(body)),
    })
}

pub(super) fn encode(message: &Outbound) -> Result<Vec<u8>, EncodeError> {
    let (kind, fields, payload): (u8, Vec<(&'static str, &str)>, &Payload) = match message {
        Outbound::Push {
            join_ref,
            topic,
            event,
            payload,
            ..
        } => (
            PUSH,
            vec![
                ("join_ref", join_ref.as_deref().unwrap_or_default()),
                ("topic", topic),
                ("event", event),
            ],
            payload,
        ),
        Outbound::Reply {
            join_ref,
            ref_,
            topic,
            status,
            response,
        } => (
            REPLY,
            vec![
                ("join_ref", join_ref.as_deref().unwrap_or_default()),
                ("ref", ref_.as_deref().unwrap_or_default()),
                ("topic", topic),
                ("status", status),
            ],
            response,
        ),
        Outbound::Broadcast {
            topic,
            event,
            payload,
        } => (
            BROADCAST,
            vec![("topic", topic.as_str()), ("event", event.as_str())],
            payload,
        ),
    };
    let Payload::Binary(data) = payload else {
        unreachable!("protocol::encode sends only binary payloads here");
    };
    let strings: usize = fields.iter().map(|(_, s)| s.len()).sum();
    let mut out = Vec::with_capacity(1 + fields.len() + strings + data.len());
    out.push(kind);
    for (name, value) in &fields {
        out.push(u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong(name))?);
    }
    for (_, value) in &fields {
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        Frame, RawFrame, Serializer, decode as decode_frame, encode as encode_frame,
    };

    fn bin(s: &'static [u8]) -> Payload {
        Payload::Binary(Bytes::from_static(s))
    }

    fn encoded(message: &Outbound) -> Vec<u8> {
        match encode_frame(Serializer::V2, message) {
            Ok(Frame::Binary(bytes)) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_phoenix_example_push() {
        let frame = [
            0x00, 0x02, 0x03, 0x05, 0x05, 0x31, 0x32, 0x31, 0x32, 0x33, 0x74, 0x6f, 0x70, 0x69,
            0x63, 0x65, 0x76, 0x65, 0x6e, 0x74, 0x65, 0x66, 0x67,
        ];
        let m = decode_frame(Serializer::V2, RawFrame::Binary(&frame)).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("12"));
        assert_eq!(m.ref_.as_deref(), Some("123"));
        assert_eq!(m.topic, "topic");
        assert_eq!(m.event, "event");
        assert_eq!(m.payload, bin(&[0x65, 0x66, 0x67]));
    }

    #[test]
    fn decodes_the_js_client_example() {
        let frame = [0x00, 0x01, 0x01, 0x01, 0x01, 0x30, 0x31, 0x74, 0x65, 0x01];
        let m = decode_frame(Serializer::V2, RawFrame::Binary(&frame)).unwrap();
        assert_eq!(
            (
                m.join_ref.as_deref(),
                m.ref_.as_deref(),
                &*m.topic,
                &*m.event
            ),
            (Some("0"), Some("1"), "t", "e")
        );
        assert_eq!(m.payload, bin(&[1]));
    }

    #[test]
    fn rejects_bad_headers() {
        for bad in [
            &[][..],
            &[1, 0, 0, 0, 0],
            &[0, 1, 1],
            &[0, 9, 0, 0, 0, 1, 2],
            &[0, 1, 0, 0, 0, 0xff],
        ] {
            assert!(
                decode_frame(Serializer::V2, RawFrame::Binary(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn encodes_the_phoenix_examples() {
        let push = Outbound::Push {
            join_ref: Some("12".into()),
            ref_: None,
            topic: "topic".into(),
            event: "event".into(),
            payload: bin(b"efg"),
        };
        assert_eq!(encoded(&push), b"\x00\x02\x05\x0512topiceventefg");
        let reply = Outbound::Reply {
            join_ref: Some("12".into()),
            ref_: Some("123".into()),
            topic: "topic".into(),
            status: "ok".into(),
            response: bin(b"efg"),
        };
        assert_eq!(encoded(&reply), b"\x01\x02\x03\x05\x0212123topicokefg");
        let broadcast = Outbound::Broadcast {
            topic: "topic".into(),
            event: "event".into(),
            payload: bin(b"efg"),
        };
        assert_eq!(encoded(&broadcast), b"\x02\x05\x05topiceventefg");
    }

    #[test]
    fn null_refs_encode_as_empty_and_long_fields_are_refused() {
        let push = Outbound::Push {
            join_ref: None,
            ref_: None,
            topic: "t".into(),
            event: "e".into(),
            payload: bin(b""),
        };
        assert_eq!(encoded(&push), b"\x00\x00\x01\x01te");
        let long = Outbound::Broadcast {
            topic: "x".repeat(256),
            event: "e".into(),
            payload: bin(b""),
        };
        assert_eq!(
            encode_frame(Serializer::V2, &long),
            Err(EncodeError::FieldTooLong("topic"))
        );
    }
}
