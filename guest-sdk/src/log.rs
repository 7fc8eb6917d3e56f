//! Writing to the host's log from a channel.
//!
//! Each function sends one line through the WIT `log` import; the host
//! tags it with the app, the plugin and the topic. Format the message first:
//! `log::info(format!("{user} joined"))`.

use crate::bindings::roost::channel::{log as host, types::Level};

/// Logs `message` at `trace` level.
pub fn trace(message: impl AsRef<str>) {
    host::log(Level::Trace, message.as_ref());
}

/// Logs `message` at `debug` level.
pub fn debug(message: impl AsRef<str>) {
    host::log(Level::Debug, message.as_ref());
}

/// Logs `message` at `info` level.
pub fn info(message: impl AsRef<str>) {
    host::log(Level::Info, message.as_ref());
}

/// Logs `message` at `warn` level.
pub fn warn(message: impl AsRef<str>) {
    host::log(Level::Warn, message.as_ref());
}

/// Logs `message` at `error` level.
pub fn error(message: impl AsRef<str>) {
    host::log(Level::Error, message.as_ref());
}
