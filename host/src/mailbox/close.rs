//! Why the server closes a connection, and the WebSocket close code for each
//! — the one table of them (README, "Close codes").
//!
//! The official client reconnects after any code but 1000, so 1000 is never
//! used for a close the client should recover from.

/// A server-initiated close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The server is shutting down, or the app was removed.
    GoingAway,
    /// The socket's id was disconnected through the API.
    Disconnected,
    /// A frame could not be decoded (invalid JSON, wrong shape, bad binary
    /// header, invalid UTF-8).
    MalformedFrame,
    /// The client did not read fast enough and its outbox overflowed.
    SlowConsumer,
    /// The client kept sending past its rate after being refused.
    RateLimited,
    /// A frame was larger than the app's `max_frame_bytes`.
    FrameTooLarge,
    /// Nothing arrived within the app's idle timeout.
    IdleTimeout,
    /// The server failed.
    InternalError,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway | Self::Disconnected => 1001,
            Self::MalformedFrame => 1007,
            Self::SlowConsumer | Self::RateLimited => 1008,
            Self::FrameTooLarge => 1009,
            Self::InternalError => 1011,
            Self::IdleTimeout => 4000,
        }
    }

    /// The close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            Self::GoingAway => "going away",
            Self::Disconnected => "disconnected",
            Self::MalformedFrame => "malformed frame",
            Self::SlowConsumer => "slow consumer",
            Self::RateLimited => "rate limited",
            Self::FrameTooLarge => "frame too large",
            Self::IdleTimeout => "idle timeout",
            Self::InternalError => "internal error",
        }
    }
}
