//! The transports a client connects with. Both feed decoded messages to a
//! `socket::Session` and deliver what lands in its outbox.
//!
//! - `websocket`: `<mount>/websocket`, one task per connection.
//! - `longpoll`: `<mount>/longpoll`, one task per session, GETs parked on it.

pub mod longpoll;
pub mod websocket;
