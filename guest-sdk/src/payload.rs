//! The body of a message: a JSON value, or raw bytes from a V2 binary frame.
//!
//! On the wire (the WIT `payload` variant) JSON travels as text; this module
//! parses it on the way in and serializes it on the way out, so channel code
//! only ever sees a [`serde_json::Value`].

use std::ops::Index;

use serde_json::Value;

use crate::bindings::roost::channel::types as wit;

/// A message body, as a channel callback receives it and as it replies or
/// pushes it.
///
/// Build one from a [`Value`] (`json!({...}).into()`) or from bytes
/// (`vec![1, 2, 3].into()`); functions that send a payload take
/// `impl Into<Payload>`, so the conversion is usually implicit.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value: what the official client sends for any non-binary push.
    Json(Value),
    /// Raw bytes: a V2 binary frame (`ArrayBuffer` in the JS client).
    Binary(Vec<u8>),
}

/// What `payload["missing"]` returns, as `serde_json` does for a missing key.
static NULL: Value = Value::Null;

impl Payload {
    /// The JSON value, or `None` for a binary payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Self::Json(value) => Some(value),
            Self::Binary(_) => None,
        }
    }

    /// The JSON value, mutably (e.g. to add a key before pushing it on), or
    /// `None` for a binary payload.
    pub fn as_json_mut(&mut self) -> Option<&mut Value> {
        match self {
            Self::Json(value) => Some(value),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, or `None` for a JSON payload.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Self::Json(_) => None,
            Self::Binary(bytes) => Some(bytes),
        }
    }

    /// Whether this is a binary payload.
    pub fn is_binary(&self) -> bool {
        matches!(self, Self::Binary(_))
    }

    /// The value under `key` when the payload is a JSON object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_json()?.get(key)
    }
}

/// `payload["key"]`: the value under `key`, or `Value::Null` when the payload
/// is not a JSON object or has no such key (as `serde_json::Value` indexes).
impl Index<&str> for Payload {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        self.get(key).unwrap_or(&NULL)
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::Json(value)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes)
    }
}

impl From<wit::Payload> for Payload {
    /// Parses JSON text; text that is not JSON (the host validates frames, so
    /// this should not happen) becomes `Value::Null` rather than a trap.
    fn from(payload: wit::Payload) -> Self {
        match payload {
            wit::Payload::Json(text) => Self::Json(parse_or_null(&text)),
            wit::Payload::Binary(bytes) => Self::Binary(bytes),
        }
    }
}

impl From<Payload> for wit::Payload {
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::Json(value) => Self::Json(value.to_string()),
            Payload::Binary(bytes) => Self::Binary(bytes),
        }
    }
}

/// Parses JSON text from the host, `Value::Null` if it is not JSON.
pub(crate) fn parse_or_null(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_text_from_the_host_is_parsed() {
        let payload = Payload::from(wit::Payload::Json(r#"{"a":[1,true]}"#.into()));
        assert_eq!(payload, Payload::Json(json!({ "a": [1, true] })));
    }

    #[test]
    fn unparsable_json_from_the_host_becomes_null() {
        let payload = Payload::from(wit::Payload::Json("{not json".into()));
        assert_eq!(payload, Payload::Json(Value::Null));
    }

    #[test]
    fn binary_passes_through_both_ways() {
        let payload = Payload::from(wit::Payload::Binary(vec![0, 1, 255]));
        assert_eq!(payload.as_binary(), Some(&[0, 1, 255][..]));
        assert!(matches!(wit::Payload::from(payload), wit::Payload::Binary(b) if b == [0, 1, 255]));
    }

    #[test]
    fn json_is_sent_as_compact_text() {
        let wire = wit::Payload::from(Payload::from(json!({ "ping": "pong" })));
        assert!(matches!(wire, wit::Payload::Json(text) if text == r#"{"ping":"pong"}"#));
    }

    #[test]
    fn get_and_index_look_into_json_objects_only() {
        let payload = Payload::from(json!({ "body": "hi" }));
        assert_eq!(payload.get("body"), Some(&json!("hi")));
        assert_eq!(payload["body"], "hi");
        assert_eq!(payload.get("missing"), None);
        assert_eq!(payload["missing"], Value::Null);

        let binary = Payload::from(vec![1]);
        assert_eq!(binary.get("body"), None);
        assert_eq!(binary["body"], Value::Null);
        assert_eq!(Payload::from(json!([1]))["body"], Value::Null);
    }
}
