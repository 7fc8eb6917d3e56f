//! The `ping` channel: echoes, replies, errors and stops on request, for
//! testing a client against Roost (routes `ping` and `ping:*`).

use roost_guest::prelude::*;

struct Ping;

impl Channel for Ping {
    const INTERCEPTS: &'static [&'static str] = &["request_ping"];

    fn join(_topic: &str, _payload: Payload, _socket: &mut Socket) -> JoinResult {
        Ok(Joined::default())
    }

    fn handle_in(event: &str, payload: Payload, _socket: &mut Socket) -> Outcome {
        if let Some(phrase) = event.strip_prefix("ping:") {
            return reply_ok(json!({ "ping": phrase }));
        }
        match event {
            "ping" => match payload.get("ack_phrase") {
                Some(phrase) => reply_ok(json!({ "ping": phrase })),
                None => reply_ok(json!({ "ping": "pong" })),
            },
            "ding" => reply_ok(json!({ "msg": "shutting down" })).stop("normal"),
            "param_ping" if payload["error"] == true => {
                reply_error(json!({ "reason": "You asked for this!" }))
            }
            // Echo: `binary` round-trips a binary payload byte for byte.
            "param_ping" | "binary" => reply_ok(payload),
            // `pong` and anything else: no reply.
            _ => noreply(),
        }
    }

    fn handle_out(event: &str, mut payload: Payload, socket: &mut Socket) -> Outcome {
        match event {
            "request_ping" => {
                if let Some(Value::Object(fields)) = payload.as_json_mut() {
                    fields.insert("from_node".into(), socket.node_name().into());
                }
                socket.push("send_ping", payload);
            }
            _ => socket.push(event, payload),
        }
        noreply()
    }
}

export_channel!(Ping);
