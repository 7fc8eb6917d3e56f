// Serves a channel object (`export default { join, handleIn, ... }`) as the
// WIT `handler` export.
//
// Each call gets a fresh Socket (socket.js) over the context, a decoded
// payload (payload.js), calls the channel's function and turns what it
// returns (outcome.js) into the WIT value, with the assigns only if the
// callback changed them. The two contract versions differ in how the
// context arrives (0.2: the imported `context` interface, whose getters
// answer for the running call; 0.1: a record passed to each callback) and in
// the shape of `join`'s ok value; `version` picks. The build
// (bin/roost-js.js) wires this to the imports in host-0.2.js or host-0.1.js.

import { Outcome, noreply } from "./outcome.js";
import { decode, encode } from "./payload.js";
import { Socket } from "./socket.js";

const CALLBACKS = ["join", "handleIn", "handleOut", "handleInfo", "terminate"];

/**
 * @param {object} channel  the plugin's default export
 * @param {object} host     the imports (host-0.2.js / host-0.1.js)
 * @param {"0.2" | "0.1"} version
 */
export function handlerFor(channel, host, version = "0.2") {
  if (!channel || typeof channel !== "object") {
    throw new TypeError("a Roost plugin's default export must be an object: export default { join(topic, payload, socket) { ... } }");
  }
  for (const key of Object.keys(channel)) {
    if (key !== "intercepts" && !CALLBACKS.includes(key)) {
      throw new TypeError(`unknown channel callback "${key}" (known: ${CALLBACKS.join(", ")}, intercepts)`);
    }
  }
  if (typeof channel.join !== "function") throw new TypeError("a Roost channel needs a join(topic, payload, socket) function");
  const intercepts = (channel.intercepts ?? []).map(String);

  // A callback that throws ends the channel (phx_error), as a crashing
  // Phoenix channel process does: log why, then let the exception trap.
  const guarded = (name, fn) => {
    try {
      return fn();
    } catch (error) {
      host.log("error", `${name} threw: ${describe(error)}`);
      throw host.crash(error);
    }
  };

  const call = (name, ctx, run) => {
    const socket = new Socket(host, ctx);
    return guarded(name, () => toOutcome(name, run(socket), socket));
  };

  const join = (ctx, payload) => {
    const socket = new Socket(host, ctx);
    const outcome = guarded("join", () => {
      const result = channel.join(socket.topic, decode(payload), socket);
      if (result === undefined) return new Outcome({ status: "ok", response: {} });
      if (!(result instanceof Outcome) || result.reply === null) {
        throw new TypeError("join must return reply.ok(response), reply.error(response) or nothing");
      }
      return result;
    });
    // The WIT `err`: both engines lower an exception from a function that
    // returns `result` as its error value.
    if (outcome.reply.status !== "ok") throw encode(outcome.reply.response);
    const response = encode(outcome.reply.response);
    const assigns = socket.changedAssigns();
    return version === "0.1" ? { reply: { status: "ok", response }, assigns, stop: null } : { response, assigns };
  };

  const callbacks = {
    handleIn: (ctx, event, payload) =>
      call("handleIn", ctx, (socket) => (channel.handleIn ? channel.handleIn(event, decode(payload), socket) : noreply())),
    handleOut: (ctx, event, payload) =>
      call("handleOut", ctx, (socket) => {
        if (channel.handleOut) return channel.handleOut(event, decode(payload), socket);
        // Default, as the Rust SDK's: push the broadcast on as it came.
        host.push(event, payload);
        return noreply();
      }),
    handleInfo: (ctx, message) =>
      call("handleInfo", ctx, (socket) => (channel.handleInfo ? channel.handleInfo(fromJson(message), socket) : noreply())),
    terminate: (ctx, reason) => {
      if (channel.terminate) guarded("terminate", () => channel.terminate(reason, new Socket(host, ctx)));
    },
  };

  if (version === "0.1") {
    // 0.1 passes the context as a record, first argument of each callback.
    const record = (ctx) => ({
      app: () => ctx.app,
      topic: () => ctx.topic,
      socketId: () => ctx.socketId,
      claims: () => ctx.claims,
      assigns: () => ctx.assigns,
    });
    return {
      intercepts: () => intercepts,
      join: (ctx, payload) => join(record(ctx), payload),
      handleIn: (ctx, event, payload) => callbacks.handleIn(record(ctx), event, payload),
      handleOut: (ctx, event, payload) => callbacks.handleOut(record(ctx), event, payload),
      handleInfo: (ctx, message) => callbacks.handleInfo(record(ctx), message),
      terminate: (ctx, reason) => callbacks.terminate(record(ctx), reason),
    };
  }
  // 0.2: the context is the imported `context` interface, about the
  // running call; `join` gets the topic too.
  const ctx = host.context;
  return {
    intercepts: () => intercepts,
    join: (_topic, payload) => join(ctx, payload),
    handleIn: (event, payload) => callbacks.handleIn(ctx, event, payload),
    handleOut: (event, payload) => callbacks.handleOut(ctx, event, payload),
    handleInfo: (message) => callbacks.handleInfo(ctx, message),
    terminate: (reason) => callbacks.terminate(ctx, reason),
  };
}

function toOutcome(name, result, socket) {
  const outcome = result === undefined ? noreply() : result;
  if (!(outcome instanceof Outcome)) {
    throw new TypeError(`${name} must return reply.ok(...), reply.error(...), noreply(), stop(...) or nothing`);
  }
  return {
    reply: outcome.reply && { status: outcome.reply.status, response: encode(outcome.reply.response) },
    assigns: socket.changedAssigns(),
    stop: outcome.stopReason,
  };
}

function describe(error) {
  if (error instanceof Error) return error.stack ? `${error}\n${error.stack}` : String(error);
  try {
    return JSON.stringify(error);
  } catch {
    return String(error);
  }
}

/** A timer message as `sendAfter` sent it: JSON, as the Rust SDK's; other text as it is. */
function fromJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
