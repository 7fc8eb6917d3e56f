//! The app's key-value storage: one namespace per app, shared by its
//! plugins (and, in a cluster, by all nodes). Values are bytes; the `_json`
//! helpers store JSON. The app must grant the capability
//! (`[apps.<name>.capabilities] kv = true`), or the plugin does not load.
//!
//! Every call is bounded by the callback's deadline; a failure is an
//! [`Error`] the channel can handle (a full quota, say), not a crash.
//!
//! ```no_run
//! use roost_guest::kv;
//! use roost_guest::prelude::*;
//!
//! let visits = kv::increment("visits", 1)?;
//! kv::set_json("last", &json!({ "visits": visits }))?;
//! assert_eq!(kv::get_json("last")?, Some(json!({ "visits": visits })));
//! # Ok::<(), kv::Error>(())
//! ```

use std::time::Duration;

use serde_json::Value;

use crate::bindings::roost::channel::kv as wit;

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Over one of the app's quotas (value size, key count, key length).
    Quota(String),
    /// The store failed or did not answer within the callback's deadline.
    Unavailable(String),
    /// The request itself is wrong (an empty key, a non-integer increment).
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quota(why) => write!(f, "over quota: {why}"),
            Self::Unavailable(why) => write!(f, "storage unavailable: {why}"),
            Self::Invalid(why) => write!(f, "invalid storage request: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Quota(why) => Self::Quota(why),
            wit::Error::Unavailable(why) => Self::Unavailable(why),
            wit::Error::Invalid(why) => Self::Invalid(why),
        }
    }
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(wit::get(key)?)
}

/// The values of several keys, in order.
pub fn get_many(keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
    Ok(wit::get_many(keys)?)
}

/// Sets `key` to `value`, with no expiry.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    Ok(wit::set(key, value, None)?)
}

/// Sets `key` to `value`, expiring `ttl` from now.
pub fn set_with_ttl(key: &str, value: &[u8], ttl: Duration) -> Result<(), Error> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    Ok(wit::set(key, value, Some(ttl_ms))?)
}

/// Deletes `key`; `true` if it was set.
pub fn delete(key: &str) -> Result<bool, Error> {
    Ok(wit::delete(key)?)
}

/// Adds `delta` to the integer at `key` (0 if unset) and returns the sum,
/// atomically: two channels incrementing at once both count.
pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
    Ok(wit::increment(key, delta)?)
}

/// Up to `limit` keys starting with `prefix`, in byte order, after `after`
/// (to page through).
pub fn list_keys(prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<String>, Error> {
    Ok(wit::list_keys(prefix, after, limit)?)
}

/// The JSON value at `key`; a value that is not JSON reads as a string.
pub fn get_json(key: &str) -> Result<Option<Value>, Error> {
    Ok(get(key)?.map(|bytes| from_bytes(&bytes)))
}

/// Stores `value` as JSON text.
pub fn set_json(key: &str, value: &Value) -> Result<(), Error> {
    set(key, value.to_string().as_bytes())
}

/// A stored value as JSON: parsed if it is JSON, else the text as a string.
pub fn from_bytes(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stored_bytes_read_back_as_json_or_text() {
        assert_eq!(from_bytes(br#"{"a":1}"#), json!({ "a": 1 }));
        assert_eq!(from_bytes(b"plain"), json!("plain"));
    }
}
