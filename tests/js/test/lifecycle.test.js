// The edges of a connection's life, with raw frames where the official
// client would hide what the server sent: a client's close frame is
// answered, a channel that gets an event it has no clause for crashes as a
// Phoenix channel does, and SIGTERM drains the server like Ctrl-C — within
// `server.drain_timeout_ms` even when a guest hangs in `terminate`.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import { Clients, LongPoll, WebSocket, body, uniq, waitFor, withTimeout } from "../lib/client.js";
import { RoostServer } from "../lib/server.js";

let server;
before(async () => {
  server = new RoostServer();
  await server.start();
});
after(async () => {
  if (server) await server.dispose();
});

const it = (name, fn) => nodeIt(name, { timeout: 20_000 }, body(() => server, fn));

/** A raw V2 WebSocket to `srv` that queues the frames it receives. */
async function raw(srv) {
  const ws = new WebSocket(`ws://${srv.host}/socket/websocket?vsn=2.0.0`);
  const frames = [];
  const waiting = [];
  ws.on("message", (data) => {
    const text = data.toString();
    const next = waiting.shift();
    if (next) next(text);
    else frames.push(text);
  });
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  await withTimeout(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  }), 5000, "the raw socket to open");
  return {
    ws,
    closed,
    send: (frame) => ws.send(JSON.stringify(frame)),
    next: () => withTimeout(
      frames.length ? Promise.resolve(frames.shift()) : new Promise((resolve) => waiting.push(resolve)),
      5000,
      "a frame",
    ),
  };
}

describe("connection edges", () => {
  it("a client's close frame is answered with a close frame, not a 1006", async () => {
    const conn = await raw(server);
    conn.send(["1", "1", "ping", "phx_join", {}]);
    assert.equal(await conn.next(), '["1","1","ping","phx_reply",{"response":{},"status":"ok"}]');
    conn.ws.close(1000, "bye");
    const { code } = await withTimeout(conn.closed, 5000, "the close");
    assert.equal(code, 1000, "the server echoed the close (1006 would mean it just dropped the connection)");
  });

  it("the tutorial's crash transcript: an unknown event crashes only that channel", async () => {
    const conn = await raw(server);
    conn.send(["1", "1", "ping", "phx_join", {}]);
    assert.equal(await conn.next(), '["1","1","ping","phx_reply",{"response":{},"status":"ok"}]');
    conn.send(["2", "2", "wild:2:4", "phx_join", {}]);
    assert.equal(await conn.next(), '["2","2","wild:2:4","phx_reply",{"response":{},"status":"ok"}]');
    conn.send(["1", "3", "ping", "no_such_event", {}]);
    assert.equal(await conn.next(), '["1","1","ping","phx_error",{"reason":"channel_crash"}]');
    conn.send(["1", "4", "ping", "ping", {}]);
    assert.equal(
      await conn.next(),
      '[null,"4","ping","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]',
    );
    conn.send(["2", "5", "wild:2:4", "ping", {}]);
    assert.equal(await conn.next(), '["2","5","wild:2:4","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]');
    conn.ws.close(1000);
  });
});

describe("SIGTERM", () => {
  for (const hang of [false, true]) {
    const what = hang ? "gives up on a guest that hangs in terminate after the drain timeout" : "closes every socket with 1001, runs terminate, and exits";
    nodeIt(what, { timeout: 20_000 }, async () => {
      // A server of its own: this test stops it.
      const drainMs = 700;
      const own = new RoostServer({
        log: "info",
        config: {
          server: [`drain_timeout_ms = ${drainMs}`],
          limits: hang ? ["call_deadline_ms = 15000"] : [],
        },
      });
      const c = new Clients();
      try {
        await own.start();
        const topic = uniq("fixture:drain-");
        const ws = await c.connected(`ws://${own.host}/socket`, WebSocket);
        const closes = [];
        ws.onClose((event) => closes.push(event.code));
        await c.joined(ws, topic, hang ? { terminate_spin_ms: 10_000 } : {});
        const lp = await c.connected(`ws://${own.host}/socket`, LongPoll);
        const lpTopic = uniq("fixture:drain-lp-");
        const lpChannel = await c.joined(lp, lpTopic);
        let lpErrored = false;
        lpChannel.onError(() => (lpErrored = true));

        const started = Date.now();
        own.proc.kill("SIGTERM");
        const status = await withTimeout(own.exited, 10_000, "the server to exit");
        const tookMs = Date.now() - started;
        assert.equal(status.code, 0, `exit status ${JSON.stringify(status)}`);
        const log = own.log();
        assert.match(log, /shutting down.*SIGTERM/);
        await waitFor(() => closes.length > 0, 5000, "the WebSocket close");
        assert.equal(closes[0], 1001, "going away, so the client reconnects elsewhere");
        await waitFor(() => lpErrored, 5000, "the long-poll channel to notice");
        assert.match(log, new RegExp(`terminate ${lpTopic}: closed`), "terminate ran for the long-poll channel");
        if (hang) {
          assert.match(log, /drain timed out/);
          assert.ok(tookMs < drainMs + 3000, `exited ${tookMs} ms after SIGTERM despite the hanging guest`);
        } else {
          assert.match(log, new RegExp(`terminate ${topic}: closed`), "terminate ran for the WebSocket channel");
          assert.doesNotMatch(log, /drain timed out/);
        }
      } catch (error) {
        c.dump("SIGTERM");
        own.dumpLog("roost server log for the SIGTERM test");
        throw error;
      } finally {
        await c.close();
        await own.dispose();
      }
    });
  }
});
