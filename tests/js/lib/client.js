// Helpers around the official, unmodified `phoenix` client.
//
// Node 20 has no global WebSocket, XMLHttpRequest or sessionStorage:
// - WebSocket: the tests pass `transport: WebSocket` from the `ws` package.
// - Long-poll: phoenix's ajax.js falls back to `fetch` + `AbortController`
//   when there is no XMLHttpRequest; Node 20 has both natively, so no polyfill
//   is needed (see node_modules/phoenix/assets/js/phoenix/ajax.js).
// - sessionStorage: only the long-poll fallback uses it; fallback.test.js
//   installs a minimal in-memory one (lib/storage.js).

import { inspect } from "node:util";
import { Socket, LongPoll } from "phoenix";
import WebSocket from "ws";

export { Socket, LongPoll, WebSocket };

/** The transports every applicable test runs over. */
export const TRANSPORTS = [
  ["WebSocket", WebSocket],
  ["LongPoll", LongPoll],
];

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves with `promise`, or rejects after `ms` with a message naming `what`. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls `predicate` every 10 ms until it is truthy; rejects after `ms`. */
export async function waitFor(predicate, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * The outcome of a push (including a join push): `{status: "ok"|"error",
 * response}` or `{status: "timeout"}` when the client's own push timeout
 * fired. Rejects if none of them happened within `ms`.
 */
export function outcome(push, ms = 8000) {
  return withTimeout(
    new Promise((resolve) => {
      push
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => resolve({ status: "timeout" }));
    }),
    ms,
    `a reply to "${push.event}" on "${push.channel.topic}"`,
  );
}

/** The payload of the next `event` on `channel`. */
export function nextEvent(channel, event, ms = 5000) {
  let ref;
  return withTimeout(
    new Promise((resolve) => {
      ref = channel.on(event, (payload) => resolve(payload));
    }),
    ms,
    `event "${event}" on "${channel.topic}"`,
  ).finally(() => channel.off(event, ref));
}

/**
 * Per-test client bookkeeping: every socket made through it logs into a
 * shared trace (printed when the test fails) and is disconnected when the
 * test ends, so no reconnect timer outlives its test.
 */
export class Clients {
  constructor() {
    this.sockets = [];
    this.trace = [];
    this.t0 = Date.now();
  }

  note(line) {
    this.trace.push(`+${String(Date.now() - this.t0).padStart(5)}ms ${line}`);
  }

  /**
   * A Socket for `url` over `transport`, with short test timings: pushes and
   * joins time out after 5 s, reconnects after 100 ms and rejoins after 200 ms
   * (the defaults back off to seconds).
   */
  socket(url, transport, opts = {}) {
    const name = opts.name || `s${this.sockets.length + 1}`;
    const socket = new Socket(url, {
      transport,
      timeout: 5000,
      longpollerTimeout: 5000,
      reconnectAfterMs: () => 100,
      rejoinAfterMs: () => 200,
      logger: (kind, msg, data) => {
        const shown = data === undefined ? "" : " " + summarize(data);
        this.note(`[${name}] ${kind}: ${msg}${shown}`);
      },
      ...opts,
    });
    this.sockets.push(socket);
    return socket;
  }

  /** Connects `socket` and waits for its transport to open. */
  async connect(socket, ms = 5000) {
    const opened = new Promise((resolve) => {
      const ref = socket.onOpen(() => {
        socket.off([ref]);
        resolve();
      });
    });
    socket.connect();
    await withTimeout(opened, ms, "the socket to open");
  }

  /** A connected socket. */
  async connected(url, transport, opts = {}) {
    const socket = this.socket(url, transport, opts);
    await this.connect(socket);
    return socket;
  }

  /** Joins `topic` on `socket`; returns the channel and the join outcome. */
  async join(socket, topic, params = {}, joinTimeout) {
    const channel = socket.channel(topic, params);
    const result = await outcome(channel.join(joinTimeout), (joinTimeout || 5000) + 3000);
    return { channel, ...result };
  }

  /** Joins `topic` and asserts the join is ok; returns the channel. */
  async joined(socket, topic, params = {}) {
    const { channel, status, response } = await this.join(socket, topic, params);
    if (status !== "ok") {
      throw new Error(`join "${topic}" was ${status}: ${JSON.stringify(response)}`);
    }
    return channel;
  }

  /** Disconnects every socket and waits (briefly) for them to close. */
  async close() {
    const sockets = this.sockets;
    this.sockets = [];
    await Promise.all(
      sockets.map((socket) =>
        withTimeout(new Promise((resolve) => socket.disconnect(resolve)), 2000, "disconnect").catch(() => {}),
      ),
    );
  }

  dump(title) {
    process.stderr.write(`\n==== client trace: ${title} ====\n${this.trace.join("\n")}\n==== end of client trace ====\n`);
  }
}

/**
 * Wraps a test body: gives it a fresh `Clients`, prints the client trace and
 * the server log if it fails (the trace always with ROOST_JS_TRACE=1), and
 * disconnects its sockets afterwards.
 */
export function body(server, fn) {
  return async (t) => {
    const clients = new Clients();
    try {
      await fn(clients, t);
      // ROOST_JS_TRACE=1 prints the client trace of passing tests too.
      if (process.env.ROOST_JS_TRACE) clients.dump(t.name);
    } catch (error) {
      clients.dump(t.name);
      server().dumpLog(`roost server log for: ${t.name}`);
      throw error;
    } finally {
      await clients.close();
    }
  };
}

/** A one-line rendering of what the client logs; ws events are shortened. */
function summarize(data) {
  if (data && typeof data === "object") {
    if ("code" in data && "wasClean" in data) {
      return `close{code: ${data.code}, reason: ${JSON.stringify(data.reason)}, wasClean: ${data.wasClean}}`;
    }
    if (data.constructor && data.constructor.name === "ErrorEvent") return `ErrorEvent(${data.message})`;
  }
  return inspect(data, { depth: 4, breakLength: Infinity });
}

/** A unique suffix for topics, so tests never share a room. */
let counter = 0;
export function uniq(prefix) {
  counter += 1;
  return `${prefix}${process.pid}-${counter}`;
}
