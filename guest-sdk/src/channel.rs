//! The [`Channel`] trait a plugin implements, and the adapter that serves it
//! as the WIT `handler` interface.
//!
//! [`export_channel!`](crate::export_channel) exports `Adapter<YourChannel>`:
//! each WIT call makes a [`Socket`] (which reads the call's context from the
//! host only as the callback asks for it), converts the payload, calls the
//! matching `Channel` function, and turns its answer into the WIT outcome,
//! with the assigns only if the callback changed them.

use std::marker::PhantomData;

use serde_json::Value;

use crate::bindings::exports::roost::channel::handler::Guest;
use crate::bindings::roost::channel::types as wit;
use crate::outcome::{JoinResult, Outcome, noreply};
use crate::payload::Payload;
use crate::socket::Socket;

/// A channel's callbacks, named as in `Phoenix.Channel`.
///
/// The functions take no `self`: a plugin instance serves every channel
/// routed to it and may be replaced between any two calls, so whatever a
/// channel must remember goes in its assigns ([`Socket::assign`]).
pub trait Channel {
    /// Broadcast events that go through [`handle_out`](Self::handle_out) for
    /// each subscriber. Others skip it and are encoded once for all
    /// subscribers (Phoenix's fastlane), which is much cheaper.
    const INTERCEPTS: &'static [&'static str] = &[];

    /// A client joins `topic`: `Ok` lets it in (the [`Joined`](crate::Joined)
    /// carries the reply), `Err(response)` refuses it.
    fn join(topic: &str, payload: Payload, socket: &mut Socket) -> JoinResult;

    /// An event from the client. By default, no reply.
    fn handle_in(_event: &str, _payload: Payload, _socket: &mut Socket) -> Outcome {
        noreply()
    }

    /// An intercepted broadcast (see [`INTERCEPTS`](Self::INTERCEPTS)) about
    /// to reach this channel's client. By default it is pushed as it is.
    fn handle_out(event: &str, payload: Payload, socket: &mut Socket) -> Outcome {
        socket.push(event, payload);
        noreply()
    }

    /// A message this channel sent itself with
    /// [`Socket::send_after`] — Phoenix's `handle_info`. Any reply is
    /// ignored (no client message to answer); pushes, broadcasts, assigns
    /// and stops apply as in [`handle_in`](Self::handle_in). By default,
    /// nothing.
    fn handle_info(_message: Value, _socket: &mut Socket) -> Outcome {
        noreply()
    }

    /// The channel is going away (`leave`, `closed`, `normal`, …). Best effort:
    /// not called if the server dies. By default, nothing.
    fn terminate(_reason: &str, _socket: &mut Socket) {}
}

/// Serves a [`Channel`] as the WIT `handler` export; used by
/// [`export_channel!`](crate::export_channel), not meant to be named directly.
#[doc(hidden)]
pub struct Adapter<C>(PhantomData<fn() -> C>);

impl<C: Channel> Guest for Adapter<C> {
    fn intercepts() -> Vec<String> {
        C::INTERCEPTS
            .iter()
            .map(|event| event.to_string())
            .collect()
    }

    fn join(topic: String, payload: wit::Payload) -> Result<wit::Joined, wit::Payload> {
        let mut socket = Socket::joining(topic.clone());
        match C::join(&topic, payload.into(), &mut socket) {
            Ok(joined) => Ok(joined.into_wit(socket.changed_assigns())),
            Err(response) => Err(Payload::Json(response).into()),
        }
    }

    fn handle_in(event: String, payload: wit::Payload) -> wit::Outcome {
        let mut socket = Socket::joined();
        C::handle_in(&event, payload.into(), &mut socket).into_wit(socket.changed_assigns())
    }

    fn handle_out(event: String, payload: wit::Payload) -> wit::Outcome {
        let mut socket = Socket::joined();
        C::handle_out(&event, payload.into(), &mut socket).into_wit(socket.changed_assigns())
    }

    fn handle_info(message: String) -> wit::Outcome {
        let mut socket = Socket::joined();
        // The SDK sends JSON; anything else arrives as a string.
        let message = serde_json::from_str(&message).unwrap_or(Value::String(message));
        C::handle_info(message, &mut socket).into_wit(socket.changed_assigns())
    }

    fn terminate(reason: String) {
        C::terminate(&reason, &mut Socket::joined());
    }
}
