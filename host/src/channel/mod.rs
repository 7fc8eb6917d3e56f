//! Channels: routing a topic to the plugin that runs it.
//!
//! A joined channel itself is plain data owned by its socket (see
//! `socket::session`); this module only decides which plugin serves a topic.

mod router;

pub use router::{Router, TopicPattern};
