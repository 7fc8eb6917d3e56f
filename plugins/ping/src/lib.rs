//! The `ping` channel of the Phoenix channels tutorial (routes `ping` and
//! `ping:*`): echoes, replies, errors and stops on request. It handles
//! exactly the tutorial's events; any other event crashes the channel, as a
//! Phoenix channel with no matching `handle_in` clause does, so the client
//! sees `phx_error` and rejoins.

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
            "ding" => reply_ok(json!({ "msg": "shutting down" })).stop("shutdown"),
            "param_ping" if payload["error"] == true => {
                reply_error(json!({ "reason": "You asked for this!" }))
            }
            "param_ping" => reply_ok(payload),
            "pong" => noreply(),
            _ => panic!("no handle_in clause matches the event {event:?}"),
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
