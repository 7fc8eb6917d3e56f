//! Write Roost channel plugins in Rust.
//!
//! A Roost plugin is a WebAssembly component that serves the callbacks of a
//! Phoenix channel: `join`, `handle_in`, `handle_out`, `handle_info` and
//! `terminate`. This crate hides the component plumbing (the
//! `roost:channel@0.2.0` WIT world `plugin`, in `wit/`) behind a [`Channel`]
//! trait and one macro, [`export_channel!`]:
//!
//! ```
//! use roost_guest::prelude::*;
//!
//! struct Ping;
//!
//! impl Channel for Ping {
//!     fn join(_topic: &str, _payload: Payload, _socket: &mut Socket) -> JoinResult {
//!         Ok(Joined::default())
//!     }
//!
//!     fn handle_in(event: &str, payload: Payload, _socket: &mut Socket) -> Outcome {
//!         match event {
//!             "ping" => reply_ok(json!({ "ping": "pong" })),
//!             "echo" => reply_ok(payload),
//!             "bye" => reply_ok(json!({ "msg": "bye" })).stop("normal"),
//!             _ => noreply(),
//!         }
//!     }
//! }
//!
//! export_channel!(Ping);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`, which emits a component:
//! `cargo build --release --target wasm32-wasip2`.
//!
//! # Layout
//!
//! - [`Channel`] (`channel.rs`): the trait, and the adapter that serves it as
//!   the WIT `handler` export.
//! - [`Socket`] (`socket.rs`): one callback's context (topic, claims,
//!   assigns) and the host calls (`push`, `broadcast`, presence's `track`
//!   and `push_presence_state`, timers' `send_after`, …).
//! - [`Payload`] (`payload.rs`): a message body, JSON or binary.
//! - [`Outcome`], [`Joined`] (`outcome.rs`): what callbacks return.
//! - [`kv`]: the app's key-value storage.
//! - [`log`]: lines to the host's log.
//!
//! # State
//!
//! Channel functions take no `self`. One instance of a plugin serves every
//! channel routed to it and may be swapped for a new build between any two
//! calls, so a channel's state lives in its *assigns*, a JSON object that the
//! host stores per joined channel: set it with [`Socket::assign`], read it
//! with [`Socket::assigns`].
//!
//! # Presence
//!
//! Who is on a topic is host state too, as Phoenix.Presence keeps it:
//! [`Socket::track`] a key with a meta (after the join reply, from a
//! zero-delay timer, as Phoenix's `:after_join`), then
//! [`Socket::push_presence_state`]; the host broadcasts each change as
//! `presence_diff` and drops the channel's entries when it goes away. The
//! official JS client's `Presence` class syncs from the two events.
//!
//! # Timers and storage
//!
//! [`Socket::send_after`] sends the channel a message later (or right after
//! the current callback), delivered to [`Channel::handle_info`]; timers go
//! with their channel. [`kv`] keeps data beyond a channel's life (history,
//! counters), per app, when the app grants it.

mod channel;
pub mod kv;
pub mod log;
mod outcome;
mod payload;
mod socket;

#[doc(hidden)]
pub use channel::Adapter;
pub use channel::Channel;
pub use outcome::{
    JoinResult, Joined, Outcome, Reply, noreply, reply, reply_error, reply_ok, stop,
};
pub use payload::Payload;
pub use socket::{Socket, TimerId};

/// Everything a plugin needs: `use roost_guest::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Channel, JoinResult, Joined, Outcome, Payload, Socket, TimerId, export_channel, noreply,
        reply, reply_error, reply_ok, stop,
    };
    pub use crate::{kv, log};
    pub use serde_json::{Map, Value, json};
}

/// Exports a [`Channel`] implementation as this component's `handler`.
///
/// Use it once per plugin crate, at the top level: `export_channel!(Ping);`.
#[macro_export]
macro_rules! export_channel {
    ($channel:ty) => {
        const _: () = {
            // wit-bindgen's export macro (named for the world, `plugin`, and
            // exported at the crate root) takes a type name, not a path.
            type Exported = $crate::Adapter<$channel>;
            $crate::__export_plugin_impl! { Exported with_types_in $crate::bindings }
        };
    };
}

/// The WIT bindings, generated from `wit/channel.wit`. Plugins use them only
/// through [`export_channel!`].
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all, clippy::unwrap_used)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        // A copy of the repository's wit/channel.wit, so the crate builds on
        // its own (a test in the host checks the two are the same).
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "roost_guest::bindings",
    });
}
