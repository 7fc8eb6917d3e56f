//! Fuzzes the long-poll POST body decoder (`decode_longpoll_body`, §5.3).
//!
//! The first input byte picks the serializer (bit 0: V2) and the content
//! type (bit 1: ndjson); the rest is the body. Checks:
//! - a plain body decodes exactly as one text frame would;
//! - an ndjson body decodes as its first 100 lines, each on its own (`[`:
//!   a JSON frame, else base64 of a binary frame; blank lines skipped), and
//!   fails whole if any of them fails;
//! - every decoded message passes `roost_fuzz::check_message`;
//! - a decoded V2 batch written back as ndjson (JSON lines, base64 binary
//!   lines) decodes to the same messages.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::protocol::{
    Frame, MAX_BATCH_LINES, Message, Outbound, Payload, RawFrame, Serializer, decode,
    decode_longpoll_body, encode,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let serializer = if flags & 1 == 0 {
        Serializer::V1
    } else {
        Serializer::V2
    };
    let ndjson = flags & 2 != 0;
    let decoded = decode_longpoll_body(serializer, body, ndjson);
    let expected = if ndjson {
        expected_batch(serializer, body)
    } else {
        std::str::from_utf8(body)
            .ok()
            .and_then(|text| decode(serializer, RawFrame::Text(text)).ok())
            .map(|message| vec![message])
    };
    match (&decoded, expected) {
        (Ok(messages), Some(expected)) => assert_eq!(messages, &expected, "body {body:?}"),
        (Ok(messages), None) => panic!("accepted a bad body {body:?} as {messages:?}"),
        (Err(error), Some(expected)) => {
            panic!("refused body {body:?} ({error}); expected {expected:?}")
        }
        (Err(_), None) => return,
    }
    let Ok(messages) = decoded else { return };
    assert!(
        messages.len() <= MAX_BATCH_LINES,
        "batch of {}",
        messages.len()
    );
    for message in &messages {
        roost_fuzz::check_message(serializer, message);
    }
    if ndjson && serializer == Serializer::V2 {
        let again = to_ndjson(&messages);
        let back = decode_longpoll_body(serializer, again.as_bytes(), true)
            .unwrap_or_else(|e| panic!("re-encoded batch {again:?} fails: {e}"));
        assert_eq!(back, messages, "re-encoded batch {again:?}");
    }
});

/// §5.3 read independently: split on `\n` (a preceding `\r` belongs to the
/// separator), keep 100 lines, skip blank ones, decode each on its own.
fn expected_batch(serializer: Serializer, body: &[u8]) -> Option<Vec<Message>> {
    let mut messages = Vec::new();
    let mut rest = body;
    for _ in 0..MAX_BATCH_LINES {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let line = match line.last() {
            Some(b'\r') => &line[..line.len() - 1],
            _ => line,
        };
        match line.first() {
            None => {}
            Some(b'[') => {
                let text = std::str::from_utf8(line).ok()?;
                messages.push(decode(serializer, RawFrame::Text(text)).ok()?);
            }
            Some(_) => {
                let bytes = STANDARD.decode(line).ok()?;
                messages.push(decode(serializer, RawFrame::Binary(&bytes)).ok()?);
            }
        }
        match tail {
            Some(tail) => rest = tail,
            None => break,
        }
    }
    Some(messages)
}

/// Writes V2 messages back as an ndjson batch, as the JS client sends one.
fn to_ndjson(messages: &[Message]) -> String {
    let lines: Vec<String> = messages
        .iter()
        .map(|m| match &m.payload {
            Payload::Json(_) => {
                let push = Outbound::Push {
                    join_ref: m.join_ref.clone(),
                    ref_: m.ref_.clone(),
                    topic: m.topic.clone(),
                    event: m.event.clone(),
                    payload: m.payload.clone(),
                };
                match encode(Serializer::V2, &push) {
                    Ok(Frame::Text(text)) => text,
                    other => panic!("{push:?} must encode to text, got {other:?}"),
                }
            }
            Payload::Binary(_) => {
                // A reply has the client push's layout; only the kind differs.
                let reply = Outbound::Reply {
                    join_ref: m.join_ref.clone(),
                    ref_: m.ref_.clone(),
                    topic: m.topic.clone(),
                    status: m.event.clone(),
                    response: m.payload.clone(),
                };
                let Ok(Frame::Binary(mut frame)) = encode(Serializer::V2, &reply) else {
                    panic!("{reply:?} must encode to a binary frame");
                };
                frame[0] = 0;
                STANDARD.encode(frame)
            }
        })
        .collect();
    lines.join("\n")
}
