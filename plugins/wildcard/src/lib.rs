//! The `wildcard` channel (routes `wild:*`): joins only topics `wild:<a>:<b>`
//! where `a` and `b` are integers and `b = 2a`, e.g. `wild:20:40`.

use roost_guest::prelude::*;

struct Wildcard;

impl Channel for Wildcard {
    fn join(topic: &str, _payload: Payload, _socket: &mut Socket) -> JoinResult {
        if doubles(topic) {
            Ok(Joined::default())
        } else {
            Err(json!({}))
        }
    }

    fn handle_in(event: &str, _payload: Payload, _socket: &mut Socket) -> Outcome {
        match event {
            "ping" => reply_ok(json!({ "ping": "pong" })),
            _ => noreply(),
        }
    }
}

/// Whether `topic` is `wild:<a>:<b>` with integers `b = 2a`.
fn doubles(topic: &str) -> bool {
    let Some((a, b)) = topic
        .strip_prefix("wild:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return false;
    };
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(a), Ok(b)) => a.checked_mul(2) == Some(b),
        _ => false,
    }
}

export_channel!(Wildcard);
