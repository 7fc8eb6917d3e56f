// `longPollFallbackMs`: the official client falls back from WebSocket to
// long-poll when WebSocket is unavailable, through its own fallback code
// (socket.js connectWithFallback / replaceTransport), against a real Roost.
//
// WebSocket is made unavailable by handing the Socket a `transport` class
// that is the real `ws` WebSocket dialling somewhere that cannot work: a port
// nobody listens on, a path Roost answers with 404, or a TCP server that
// never answers the upgrade. The long-poll fallback itself goes to the real
// server, as the client derives its URL from the Socket's endpoint.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";

import { LongPoll, WebSocket, body, nextEvent, outcome, sleep, uniq } from "../lib/client.js";
import { RoostServer, freePort } from "../lib/server.js";
import { installSessionStorage } from "../lib/storage.js";

// Node has no sessionStorage; the client's fallback memory needs one.
const storage = installSessionStorage();
const FLAG = "phx:fallback:LongPoll";

let server;
before(async () => {
  server = new RoostServer();
  await server.start();
});
after(async () => {
  if (server) await server.dispose();
});
beforeEach(() => storage.clear());

/** A `ws` WebSocket class whose connections go to `rewrite(url)`; records the URLs it was given. */
function brokenWebSocket(rewrite) {
  const attempts = [];
  class BrokenWebSocket extends WebSocket {
    constructor(url, protocols) {
      attempts.push(url);
      super(rewrite(url), protocols);
    }
  }
  return { BrokenWebSocket, attempts };
}

/** Joins a room over `socket` and checks a broadcast round trip. */
async function roomWorks(c, socket) {
  const room = uniq("room:fallback-");
  const channel = await c.joined(socket, room, { username: "lp" });
  const heard = nextEvent(channel, "new_msg");
  assert.deepEqual(await outcome(channel.push("new_msg", { body: "over long-poll" })), { status: "ok", response: {} });
  assert.deepEqual(await heard, { body: "over long-poll" });
}

const it20 = (name, fn) => it(name, { timeout: 20_000 }, body(() => server, fn));

describe("longPollFallbackMs", () => {
  const variants = [
    {
      what: "WebSocket connection refused",
      rewrite: async () => {
        const deadPort = await freePort(); // bound and closed again: nothing listens there
        return (url) => url.replace(server.host, `127.0.0.1:${deadPort}`);
      },
    },
    {
      what: "WebSocket upgrade answered with HTTP 404",
      rewrite: async () => (url) => url.replace("/socket/websocket", "/no-such-mount/websocket"),
    },
  ];

  for (const { what, rewrite } of variants) {
    it20(`${what}: falls back to long-poll at once, remembers it, and the next socket starts on long-poll`, async (c) => {
      const { BrokenWebSocket, attempts } = brokenWebSocket(await rewrite());
      const socket = c.socket(server.socketUrl, BrokenWebSocket, { longPollFallbackMs: 4000, name: "first" });
      const started = Date.now();
      await c.connect(socket, 8000);
      const elapsed = Date.now() - started;

      assert.equal(attempts.length, 1, "one WebSocket attempt");
      assert.ok(attempts[0].startsWith(`ws://${server.host}/socket/websocket?`), attempts[0]);
      assert.ok(elapsed < 4000, `fell back on the WebSocket error (${elapsed} ms), not after longPollFallbackMs`);
      assert.equal(socket.transport, LongPoll);
      assert.ok(socket.conn instanceof LongPoll, "the connection is long-poll");
      assert.equal(storage.getItem(FLAG), "true", "the fallback is remembered in sessionStorage");
      await roomWorks(c, socket);

      // A new Socket with the same storage skips WebSocket entirely.
      const next = c.socket(server.socketUrl, BrokenWebSocket, { longPollFallbackMs: 4000, name: "next" });
      await c.connect(next, 8000);
      assert.equal(attempts.length, 1, "no new WebSocket attempt once the fallback is remembered");
      assert.ok(next.conn instanceof LongPoll);
      await roomWorks(c, next);
    });
  }

  it20("WebSocket that never opens: falls back after longPollFallbackMs", async (c) => {
    // Accepts TCP connections and never answers the upgrade request.
    const held = new Set();
    const blackhole = net.createServer((conn) => {
      held.add(conn);
      conn.on("error", () => {});
      conn.on("close", () => held.delete(conn));
    });
    await new Promise((resolve) => blackhole.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = blackhole.address();
      const { BrokenWebSocket, attempts } = brokenWebSocket((url) => url.replace(server.host, `127.0.0.1:${port}`));
      const socket = c.socket(server.socketUrl, BrokenWebSocket, { longPollFallbackMs: 600 });
      const started = Date.now();
      await c.connect(socket, 8000);
      const elapsed = Date.now() - started;

      assert.equal(attempts.length, 1);
      assert.ok(elapsed >= 550, `waited longPollFallbackMs before falling back (${elapsed} ms)`);
      assert.ok(socket.conn instanceof LongPoll, "the connection is long-poll");
      assert.equal(storage.getItem(FLAG), "true");
      await roomWorks(c, socket);
    } finally {
      for (const conn of held) conn.destroy();
      await new Promise((resolve) => blackhole.close(resolve));
    }
  });

  it20("a working WebSocket answers the health-check ping in time and is kept", async (c) => {
    const socket = c.socket(server.socketUrl, WebSocket, { longPollFallbackMs: 500 });
    await c.connect(socket);
    // Past the fallback threshold: the server answered the client's ping.
    await sleep(900);
    assert.ok(socket.conn instanceof WebSocket, "still on WebSocket");
    assert.equal(socket.transport, WebSocket);
    assert.equal(storage.getItem(FLAG), null, "no fallback remembered");
    const ping = await c.joined(socket, "ping");
    assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
  });
});
