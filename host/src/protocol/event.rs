//! Reserved topic and event names, verbatim from Phoenix.

/// The topic of socket-level messages such as heartbeats.
pub const PHOENIX: &str = "phoenix";
pub const HEARTBEAT: &str = "heartbeat";
pub const PHX_JOIN: &str = "phx_join";
pub const PHX_LEAVE: &str = "phx_leave";
pub const PHX_REPLY: &str = "phx_reply";
pub const PHX_CLOSE: &str = "phx_close";
pub const PHX_ERROR: &str = "phx_error";

/// Reply statuses.
pub const OK: &str = "ok";
pub const ERROR: &str = "error";

/// Presence events (`shared/phoenix-protocol.md` §6): the full state a
/// channel pushes after joining, and the diffs broadcast on every change.
pub const PRESENCE_STATE: &str = "presence_state";
pub const PRESENCE_DIFF: &str = "presence_diff";
