//! What a callback decides: Phoenix's `{:reply, …}`, `{:noreply, …}` and
//! `{:stop, …}` tuples, and `{:ok, …}` / `{:error, …}` for `join`.
//!
//! Built with the free functions [`reply_ok`], [`reply_error`], [`noreply`]
//! and [`stop`], combined as `reply_ok(json!({...})).stop("normal")`. The
//! adapter in `channel.rs` turns them into the WIT `outcome`, adding the
//! assigns when the callback changed them.

use serde_json::{Map, Value};

use crate::bindings::roost::channel::types as wit;
use crate::payload::Payload;

/// The result of [`Channel::join`](crate::Channel::join): `Ok` joins the
/// channel, `Err(response)` refuses the join and sends `response` in the error
/// reply (e.g. `Err(json!({ "reason": "unauthorized" }))`).
pub type JoinResult = Result<Joined, Value>;

/// A successful join and the response the client receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    response: Payload,
}

impl Joined {
    /// Joins with `response` as the join reply.
    pub fn reply(response: impl Into<Payload>) -> Self {
        Self {
            response: response.into(),
        }
    }

    /// The join reply the client receives.
    pub fn response(&self) -> &Payload {
        &self.response
    }

    /// The WIT result of a successful join.
    pub(crate) fn into_wit(self, assigns: Option<String>) -> wit::Joined {
        wit::Joined {
            response: self.response.into(),
            assigns,
        }
    }
}

impl Default for Joined {
    /// Joins with an empty object, `{}`, as the join reply.
    fn default() -> Self {
        Self::reply(Value::Object(Map::new()))
    }
}

/// The reply part of an [`Outcome`]: Phoenix's `{:reply, {status, response}, socket}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// `ok` or `error` for the official client; any other string is passed through.
    pub status: String,
    /// The reply's body.
    pub response: Payload,
}

/// What [`Channel::handle_in`](crate::Channel::handle_in) and
/// [`Channel::handle_out`](crate::Channel::handle_out) decide: reply or not,
/// and whether the channel stops afterwards.
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "an Outcome does nothing unless it is returned from a callback"]
pub struct Outcome {
    reply: Option<Reply>,
    stop: Option<String>,
}

impl Outcome {
    /// Also stops the channel after the reply: `normal` and `shutdown` close
    /// it (`phx_close`), any other reason errors it (`phx_error`).
    pub fn stop(mut self, reason: impl Into<String>) -> Self {
        self.stop = Some(reason.into());
        self
    }

    /// The reply, if any.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// The stop reason, if the channel stops.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop.as_deref()
    }

    /// The WIT outcome, with `assigns` from the socket (`None` if unchanged).
    pub(crate) fn into_wit(self, assigns: Option<String>) -> wit::Outcome {
        wit::Outcome {
            reply: self.reply.map(|reply| wit::Reply {
                status: reply.status,
                response: reply.response.into(),
            }),
            assigns,
            stop: self.stop,
        }
    }
}

/// Replies with any `status`: [`reply_ok`] and [`reply_error`] give the two
/// the official client knows.
pub fn reply(status: impl Into<String>, response: impl Into<Payload>) -> Outcome {
    Outcome {
        reply: Some(Reply {
            status: status.into(),
            response: response.into(),
        }),
        stop: None,
    }
}

/// Replies `ok` with `response`: `{:reply, {:ok, response}, socket}`.
pub fn reply_ok(response: impl Into<Payload>) -> Outcome {
    reply("ok", response)
}

/// Replies `error` with `response`: `{:reply, {:error, response}, socket}`.
pub fn reply_error(response: impl Into<Payload>) -> Outcome {
    reply("error", response)
}

/// Sends no reply: `{:noreply, socket}`.
pub fn noreply() -> Outcome {
    Outcome::default()
}

/// Stops the channel without a reply: `{:stop, reason, socket}`. See
/// [`Outcome::stop`] for what the reason means.
pub fn stop(reason: impl Into<String>) -> Outcome {
    noreply().stop(reason)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn json_text(payload: &wit::Payload) -> &str {
        match payload {
            wit::Payload::Json(text) => text,
            wit::Payload::Binary(_) => panic!("expected JSON, got {payload:?}"),
        }
    }

    #[test]
    fn reply_ok_becomes_an_ok_reply_that_keeps_assigns() {
        let wire = reply_ok(json!({ "ping": "pong" })).into_wit(None);
        let reply = wire.reply.expect("a reply");
        assert_eq!(reply.status, "ok");
        assert_eq!(json_text(&reply.response), r#"{"ping":"pong"}"#);
        assert_eq!(wire.assigns, None);
        assert_eq!(wire.stop, None);
    }

    #[test]
    fn reply_error_has_the_error_status() {
        let outcome = reply_error(json!({ "reason": "nope" }));
        let reply = outcome.reply().expect("a reply");
        assert_eq!(reply.status, "error");
        assert_eq!(reply.response, Payload::Json(json!({ "reason": "nope" })));
    }

    #[test]
    fn noreply_has_neither_reply_nor_stop() {
        let wire = noreply().into_wit(Some("{}".into()));
        assert!(wire.reply.is_none());
        assert_eq!(wire.assigns.as_deref(), Some("{}"));
        assert_eq!(wire.stop, None);
    }

    #[test]
    fn a_reply_can_also_stop_the_channel() {
        let outcome = reply_ok(json!({ "msg": "shutting down" })).stop("normal");
        assert_eq!(outcome.stop_reason(), Some("normal"));
        let wire = outcome.into_wit(None);
        assert_eq!(wire.reply.expect("a reply").status, "ok");
        assert_eq!(wire.stop.as_deref(), Some("normal"));
    }

    #[test]
    fn stop_alone_sends_no_reply() {
        assert_eq!(stop("shutdown"), noreply().stop("shutdown"));
        assert!(stop("shutdown").reply().is_none());
    }

    #[test]
    fn binary_replies_stay_binary() {
        let wire = reply_ok(vec![1, 2, 3]).into_wit(None);
        let response = wire.reply.expect("a reply").response;
        assert!(matches!(response, wit::Payload::Binary(b) if b == [1, 2, 3]));
    }

    #[test]
    fn default_join_replies_with_an_empty_object() {
        let wire = Joined::default().into_wit(Some(r#"{"a":1}"#.into()));
        assert_eq!(json_text(&wire.response), "{}");
        assert_eq!(wire.assigns.as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(Joined::default(), Joined::reply(json!({})));
    }
}
