//! `roost:channel@0.2.0`: its bindings, the host side of its capability
//! interfaces (`context`, `channel`, `presence`, `log`, `timers`, `kv`,
//! delegating to `StoreData`), and conversions of its types. Only `kv`
//! does I/O, so only its functions are async.

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::store::{self, LogLevel, StoreData};
use crate::protocol::Payload;
use crate::storage::KvError;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "roost:channel/plugin",
    imports: { "roost:channel/kv": async },
    exports: { default: async },
});

pub use roost::channel::types as wit;
use roost::channel::kv::Error as WitKvError;

/// The interface a component imports for storage, as component imports name it.
pub const KV_INTERFACE: &str = "roost:channel/kv@0.2.0";

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

fn kv_error(error: KvError) -> WitKvError {
    match error {
        KvError::Quota(why) => WitKvError::Quota(why),
        KvError::Unavailable(why) => WitKvError::Unavailable(why),
        KvError::Invalid(why) => WitKvError::Invalid(why),
    }
}

impl roost::channel::types::Host for StoreData {}

impl roost::channel::context::Host for StoreData {
    fn app(&mut self) -> String {
        self.app.to_string()
    }

    fn topic(&mut self) -> String {
        StoreData::topic(self)
    }

    fn socket_id(&mut self) -> Option<String> {
        self.socket_id.as_deref().map(str::to_owned)
    }

    fn claims(&mut self) -> String {
        self.claims.to_string()
    }

    fn assigns(&mut self) -> String {
        self.assigns.to_string()
    }
}

impl roost::channel::channel::Host for StoreData {
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

    fn node_name(&mut self) -> String {
        self.node.to_string()
    }
}

impl roost::channel::presence::Host for StoreData {
    fn track(&mut self, key: String, meta: String) {
        self.presence_track(key, meta);
    }

    fn untrack(&mut self, key: String) {
        self.presence_untrack(key);
    }

    fn list(&mut self) -> String {
        self.presence_list()
    }
}

impl roost::channel::log::Host for StoreData {
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
}

impl roost::channel::timers::Host for StoreData {
    fn send_after(&mut self, delay_ms: u32, message: String) -> Result<u64, String> {
        StoreData::send_after(self, delay_ms, message)
    }

    fn cancel_timer(&mut self, id: u64) -> bool {
        StoreData::cancel_timer(self, id)
    }
}

impl roost::channel::kv::Host for StoreData {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        store::within(deadline, kv.get(key)).await.map_err(kv_error)
    }

    async fn get_many(
        &mut self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        store::within(deadline, kv.get_many(keys))
            .await
            .map_err(kv_error)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        let ttl = ttl_ms.map(Duration::from_millis);
        store::within(deadline, kv.set(key, value, ttl))
            .await
            .map_err(kv_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        store::within(deadline, kv.delete(key))
            .await
            .map_err(kv_error)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        store::within(deadline, kv.increment(key, delta))
            .await
            .map_err(kv_error)
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, WitKvError> {
        let (kv, deadline) = self.storage().map_err(kv_error)?;
        store::within(deadline, kv.list_keys(prefix, after, limit))
            .await
            .map_err(kv_error)
    }
}

/// Adds the 0.2 imports.
pub(super) fn add_to_linker(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<StoreData, HasSelf<StoreData>>(linker, |data| data)
}
