//! A client connection, whatever its transport: the Phoenix socket state
//! machine ([`Session`]), its bounded [`Outbox`], and the close reasons.
//!
//! A transport (`transport::websocket`, `transport::longpoll`) owns one
//! session per connection, feeds it decoded messages in order, and writes
//! out what lands in its outbox.

mod close;
mod outbox;
mod session;

pub use close::Close;
pub use outbox::{Intercepted, Item, Outbox, WireFrame};
pub use session::Session;
