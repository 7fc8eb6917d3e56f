//! The `ping` channel of the Phoenix channels tutorial (routes `ping` and
//! `ping:*`): echoes, replies, errors and stops on request, plus a timer.
//! It handles exactly these events; any other event crashes the channel, as
//! a Phoenix channel with no matching `handle_in` clause does, so the
//! client sees `phx_error` and rejoins.
//!
//! Timers: `ping_after {"delay_ms": D}` replies `{}` at once and pushes
//! `pong_later {"delay_ms": D}` D ms later; `cancel_pings` cancels every
//! pending one (`{"cancelled": n}`). The pending timers are kept in the
//! assigns (`pings`: ping number → timer), so a hot reload keeps them.

use std::time::Duration;

use roost_guest::prelude::*;

struct Ping;

impl Channel for Ping {
    const INTERCEPTS: &'static [&'static str] = &["request_ping"];

    fn join(_topic: &str, _payload: Payload, _socket: &mut Socket) -> JoinResult {
        Ok(Joined::default())
    }

    fn handle_in(event: &str, payload: Payload, socket: &mut Socket) -> Outcome {
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
            "ping_after" => ping_after(&payload, socket),
            "cancel_pings" => cancel_pings(socket),
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

    fn handle_info(message: Value, socket: &mut Socket) -> Outcome {
        let (Some(n), Some(delay_ms)) = (message["ping"].as_u64(), message["delay_ms"].as_u64())
        else {
            return noreply();
        };
        let mut pings = pending(socket);
        pings.remove(&n.to_string());
        socket.assign("pings", pings);
        socket.push("pong_later", json!({ "delay_ms": delay_ms }));
        noreply()
    }
}

/// Sets a timer for `pong_later`, remembered in the assigns under its number.
fn ping_after(payload: &Payload, socket: &mut Socket) -> Outcome {
    let delay_ms = payload["delay_ms"].as_u64().unwrap_or(0);
    let n = socket.assigns()["next_ping"].as_u64().unwrap_or(1);
    let message = json!({ "ping": n, "delay_ms": delay_ms });
    match socket.send_after(Duration::from_millis(delay_ms), message) {
        Ok(timer) => {
            let mut pings = pending(socket);
            pings.insert(n.to_string(), json!(timer.to_raw()));
            socket.assign("pings", pings);
            socket.assign("next_ping", n + 1);
            reply_ok(json!({}))
        }
        Err(reason) => reply_error(json!({ "reason": reason })),
    }
}

fn cancel_pings(socket: &mut Socket) -> Outcome {
    let cancelled = pending(socket)
        .values()
        .filter_map(Value::as_u64)
        .filter(|&raw| socket.cancel_timer(TimerId::from_raw(raw)))
        .count();
    socket.assign("pings", Map::new());
    reply_ok(json!({ "cancelled": cancelled }))
}

/// The pending pings: number → timer id.
fn pending(socket: &Socket) -> Map<String, Value> {
    match &socket.assigns()["pings"] {
        Value::Object(pings) => pings.clone(),
        _ => Map::new(),
    }
}

export_channel!(Ping);
