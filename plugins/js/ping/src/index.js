// The ping channel in JavaScript: a port of plugins/ping (Rust), for testing a
// client against Roost and for `bench guest --plugin` (the JS engines' call
// cost next to the Rust ping's). `ping` → `{"ping":"pong"}` (or the
// payload's `ack_phrase`); `ping:<p>` → `{"ping":"<p>"}`; `ding` replies,
// then closes; `param_ping` echoes, or errors on `{"error":true}`; `binary`
// echoes bytes; `request_ping` broadcasts go out as `send_ping` with the
// node's name.

import { noreply, reply } from "@roost/guest";

export default {
  intercepts: ["request_ping"],

  join() {
    return reply.ok({});
  },

  handleIn(event, payload) {
    if (event.startsWith("ping:")) return reply.ok({ ping: event.slice("ping:".length) });
    const fields = isObject(payload) ? payload : {};
    switch (event) {
      case "ping":
        return reply.ok({ ping: "ack_phrase" in fields ? fields.ack_phrase : "pong" });
      case "ding":
        return reply.ok({ msg: "shutting down" }).stop("normal");
      case "param_ping":
        if (fields.error === true) return reply.error({ reason: "You asked for this!" });
        return reply.ok(payload);
      case "binary":
        return reply.ok(payload);
      default:
        return noreply();
    }
  },

  handleOut(event, payload, socket) {
    if (event === "request_ping") {
      socket.push("send_ping", isObject(payload) ? { ...payload, from_node: socket.nodeName() } : payload);
    } else {
      socket.push(event, payload);
    }
    return noreply();
  },
};

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof Uint8Array);
}
