//! Long-poll POST bodies (`shared/phoenix-protocol.md` §5.3).
//!
//! With `Content-Type: application/x-ndjson` the body is a batch: one frame
//! per line, a line starting with `[` being a JSON frame and any other the
//! base64 of a binary frame. Any other content type makes the whole body one
//! text frame (old clients, V1).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{Message, RawFrame, Serializer, decode};

/// Lines of an ndjson batch that are dispatched; the rest are ignored, as in
/// Phoenix 1.8.9+.
pub const MAX_BATCH_LINES: usize = 100;

/// Decodes a POST body into messages, in order. Any bad line fails the
/// whole body (Phoenix would crash the session on it).
pub fn decode_longpoll_body(
    serializer: Serializer,
    body: &[u8],
    ndjson: bool,
) -> Result<Vec<Message>, String> {
    fn text(bytes: &[u8]) -> Result<&str, String> {
        std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8".to_owned())
    }
    if !ndjson {
        return decode(serializer, RawFrame::Text(text(body)?))
            .map(|m| vec![m])
            .map_err(|e| e.to_string());
    }
    let mut messages = Vec::new();
    for line in body.split(|&b| b == b'\n').take(MAX_BATCH_LINES) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let message = if line.starts_with(b"[") {
            decode(serializer, RawFrame::Text(text(line)?))
        } else {
            let bytes = STANDARD
                .decode(line)
                .map_err(|e| format!("invalid base64 line: {e}"))?;
            decode(serializer, RawFrame::Binary(&bytes))
        };
        messages.push(message.map_err(|e| e.to_string())?);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_decodes_base64_binary() {
        let binary = STANDARD.encode([0, 0, 0, 1, 1, b't', b'e', 7]);
        let body =
            format!("[null,\"1\",\"t\",\"a\",{{}}]\r\n{binary}\n\n[null,\"2\",\"t\",\"b\",{{}}]");
        let messages = decode_longpoll_body(Serializer::V2, body.as_bytes(), true).unwrap();
        let events: Vec<&str> = messages.iter().map(|m| m.event.as_str()).collect();
        assert_eq!(events, ["a", "e", "b"]);
    }

    #[test]
    fn caps_a_batch_at_100_lines() {
        let body: Vec<String> = (0..150)
            .map(|i| format!("[null,\"{i}\",\"t\",\"e\",{{}}]"))
            .collect();
        let messages =
            decode_longpoll_body(Serializer::V2, body.join("\n").as_bytes(), true).unwrap();
        assert_eq!(messages.len(), MAX_BATCH_LINES);
    }

    #[test]
    fn a_plain_body_is_one_frame_and_bad_input_fails() {
        let v1 = br#"{"topic":"t","event":"e","payload":{},"ref":null}"#;
        assert_eq!(
            decode_longpoll_body(Serializer::V1, v1, false)
                .unwrap()
                .len(),
            1
        );
        assert!(decode_longpoll_body(Serializer::V2, b"[oops", true).is_err());
        assert!(decode_longpoll_body(Serializer::V2, b"!!not base64", true).is_err());
        assert!(decode_longpoll_body(Serializer::V2, &[0xff, 0xfe], false).is_err());
    }
}
