//! `roost:channel@0.1.0`, the first contract, still loaded unchanged: its
//! bindings, the host side of its one `host` interface (delegating to
//! `StoreData`), and conversions of its types.

use wasmtime::component::{HasSelf, Linker};

use super::store::{LogLevel, StoreData};
use crate::protocol::Payload;

wasmtime::component::bindgen!({
    path: "../wit/v0.1",
    world: "roost:channel/channel",
    exports: { default: async },
});

pub use roost::channel::types as wit;

/// Converts a guest payload, validating its JSON text.
pub fn from_wit(payload: wit::Payload) -> Result<Payload, serde_json::Error> {
    match payload {
        wit::Payload::Json(text) => Payload::from_json_text(text),
        wit::Payload::Binary(bytes) => Ok(Payload::Binary(bytes.into())),
    }
}

/// Converts a payload for a guest.
pub fn to_wit(payload: &Payload) -> wit::Payload {
    match payload {
        Payload::Json(raw) => wit::Payload::Json(raw.get().to_owned()),
        Payload::Binary(bytes) => wit::Payload::Binary(bytes.to_vec()),
    }
}

impl roost::channel::types::Host for StoreData {}

impl roost::channel::host::Host for StoreData {
    fn push(&mut self, event: String, payload: wit::Payload) {
        let payload = self.checked("push", from_wit(payload));
        StoreData::push(self, event, payload);
    }

    fn broadcast(&mut self, topic: String, event: String, payload: wit::Payload) {
        let payload = self.checked("broadcast", from_wit(payload));
        StoreData::broadcast(self, topic, event, payload, false);
    }

    fn broadcast_from(&mut self, topic: String, event: String, payload: wit::Payload) {
        let payload = self.checked("broadcast-from", from_wit(payload));
        StoreData::broadcast(self, topic, event, payload, true);
    }

    fn log(&mut self, level: wit::Level, message: String) {
        let level = match level {
            wit::Level::Trace => LogLevel::Trace,
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        };
        StoreData::log(self, level, &message);
    }

    fn node_name(&mut self) -> String {
        self.node.to_string()
    }

    fn presence_track(&mut self, key: String, meta: String) {
        StoreData::presence_track(self, key, meta);
    }

    fn presence_untrack(&mut self, key: String) {
        StoreData::presence_untrack(self, key);
    }

    fn presence_list(&mut self) -> String {
        StoreData::presence_list(self)
    }
}

/// Adds the 0.1 imports.
pub(super) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    Channel::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |data| data)
}
