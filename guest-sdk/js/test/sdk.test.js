// Unit tests of the SDK's JS side in plain Node: the adapter (adapter.js)
// over a fake host that records imports, as the Roost host does. No engine
// and no component: build.test.js covers those.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { handlerFor } from "../src/adapter.js";
import { noreply, reply, stop } from "../src/outcome.js";
import { KvError } from "../src/socket.js";

const here = path.dirname(fileURLToPath(import.meta.url));

/** A fake host: records every import call; `kv` is a Map store. */
function fakeHost({ kv = false } = {}) {
  const calls = [];
  const store = new Map();
  const record = (name) => (...args) => calls.push([name, ...args]);
  const host = {
    calls,
    push: record("push"),
    broadcast: record("broadcast"),
    broadcastFrom: record("broadcastFrom"),
    nodeName: () => "roost@test",
    track: record("track"),
    untrack: record("untrack"),
    list: () => '{"ada":{"metas":[{"online_at":1,"phx_ref":"R"}]}}',
    log: record("log"),
    sendAfter: (ms, message) => (calls.push(["sendAfter", ms, message]), 7),
    cancelTimer: (id) => id === 7,
    kv: kv && {
      get: (key) => store.get(key),
      getMany: (keys) => keys.map((k) => store.get(k)),
      set: (key, value) => {
        if (key === "") throw { tag: "invalid", val: "empty key" };
        store.set(key, value);
      },
      delete: (key) => store.delete(key),
      increment: (key, delta) => {
        const next = Number(new TextDecoder().decode(store.get(key) ?? new TextEncoder().encode("0"))) + Number(delta);
        store.set(key, new TextEncoder().encode(String(next)));
        return next;
      },
      listKeys: (prefix) => [...store.keys()].filter((k) => k.startsWith(prefix)).sort(),
      u64: Number,
      s64: Number,
    },
    crash: (error) => error,
    // The 0.2 `context` interface answers for the running call: here,
    // whatever `current` holds.
    current: context(),
    context: {
      app: () => host.current.app(),
      topic: () => host.current.topic(),
      socketId: () => host.current.socketId(),
      claims: () => host.current.claims(),
      assigns: () => host.current.assigns(),
    },
  };
  return host;
}

/** What the 0.2 `context` interface answers, counting how often each getter is read. */
function context({ topic = "room:lobby", claims = "{}", assigns = "{}", socketId = undefined } = {}) {
  const reads = {};
  const read = (name, value) => () => ((reads[name] = (reads[name] ?? 0) + 1), value);
  return { reads, app: read("app", "demo"), topic: read("topic", topic), socketId: read("socketId", socketId), claims: read("claims", claims), assigns: read("assigns", assigns) };
}

const json = (value) => ({ tag: "json", val: JSON.stringify(value) });

describe("the adapter", () => {
  it("joins with the reply and the assigns the join set", () => {
    const host = fakeHost();
    const handler = handlerFor(
      {
        join(topic, payload, socket) {
          socket.assign("user", payload.username);
          return reply.ok({ channel: topic });
        },
      },
      host,
    );
    assert.deepEqual(handler.join("room:lobby", json({ username: "ada" })), {
      response: json({ channel: "room:lobby" }),
      assigns: '{"user":"ada"}',
    });
  });

  it("a join that returns nothing joins with {} and no assigns", () => {
    const handler = handlerFor({ join() {} }, fakeHost());
    assert.deepEqual(handler.join("room:lobby", json({})), { response: { tag: "json", val: "{}" }, assigns: null });
  });

  it("reply.error refuses the join: the WIT err is thrown", () => {
    const handler = handlerFor({ join: () => reply.error({ reason: "unauthorized" }) }, fakeHost());
    assert.throws(() => handler.join("room:lobby", json({})), (thrown) => {
      assert.deepEqual(thrown, json({ reason: "unauthorized" }));
      return true;
    });
  });

  it("sends assigns back only when the callback assigned", () => {
    const host = fakeHost();
    const handler = handlerFor(
      {
        join: () => reply.ok({}),
        handleIn(event, _payload, socket) {
          if (event === "read") return reply.ok({ count: socket.assigns.count });
          socket.assign("count", socket.assigns.count + 1);
          return noreply();
        },
      },
      host,
    );
    host.current = context({ assigns: '{"count":1,"room":"lobby"}' });
    assert.deepEqual(handler.handleIn("read", json({})), { reply: { status: "ok", response: json({ count: 1 }) }, assigns: null, stop: null });
    assert.deepEqual(handler.handleIn("inc", json({})), { reply: null, assigns: '{"count":2,"room":"lobby"}', stop: null });
  });

  it("reads the context only when asked, once per call", () => {
    const host = fakeHost();
    const handler = handlerFor(
      {
        join: () => reply.ok({}),
        handleIn: (_e, _p, socket) => reply.ok({ a: socket.topic, b: socket.topic, c: socket.claims.sub }),
      },
      host,
    );
    const ctx = context({ claims: '{"sub":"42"}' });
    host.current = ctx;
    handler.handleIn("x", json({}));
    assert.deepEqual(ctx.reads, { topic: 1, claims: 1 });
  });

  it("stop, reply().stop and custom statuses become the WIT outcome", () => {
    const handler = handlerFor(
      {
        join: () => reply.ok({}),
        handleIn(event) {
          if (event === "ding") return reply.ok({ msg: "bye" }).stop("normal");
          if (event === "quit") return stop("shutdown");
          return reply("accepted", { n: 1 });
        },
      },
      fakeHost(),
    );
    assert.deepEqual(handler.handleIn("ding", json({})), { reply: { status: "ok", response: json({ msg: "bye" }) }, assigns: null, stop: "normal" });
    assert.deepEqual(handler.handleIn("quit", json({})), { reply: null, assigns: null, stop: "shutdown" });
    assert.equal(handler.handleIn("x", json({})).reply.status, "accepted");
  });

  it("binary payloads arrive as Uint8Array and go back as binary", () => {
    const handler = handlerFor({ join: () => reply.ok({}), handleIn: (_e, payload) => reply.ok(payload) }, fakeHost());
    const out = handler.handleIn("bin", { tag: "binary", val: [0, 1, 255] });
    assert.equal(out.reply.response.tag, "binary");
    assert.deepEqual([...out.reply.response.val], [0, 1, 255]);
  });

  it("host calls go out in call order with JSON-encoded payloads", () => {
    const host = fakeHost();
    const handler = handlerFor(
      {
        join(_t, _p, socket) {
          socket.track("ada", { online_at: 1 });
          socket.pushPresenceState();
          socket.broadcast("hello", { who: "ada" });
          socket.broadcastFrom("other", new Uint8Array([9]));
          socket.push("you", { ok: true });
          return reply.ok({});
        },
      },
      host,
    );
    handler.join("room:lobby", json({}));
    assert.deepEqual(host.calls, [
      ["track", "ada", '{"online_at":1}'],
      ["push", "presence_state", { tag: "json", val: '{"ada":{"metas":[{"online_at":1,"phx_ref":"R"}]}}' }],
      ["broadcast", "room:lobby", "hello", json({ who: "ada" })],
      ["broadcastFrom", "room:lobby", "other", { tag: "binary", val: new Uint8Array([9]) }],
      ["push", "you", json({ ok: true })],
    ]);
  });

  it("an unknown callback name or a missing join is refused at build time", () => {
    assert.throws(() => handlerFor({ join() {}, handle_in() {} }, fakeHost()), /unknown channel callback "handle_in"/);
    assert.throws(() => handlerFor({ handleIn() {} }, fakeHost()), /needs a join/);
  });

  it("a callback that throws is logged, then the exception ends the call", () => {
    const host = fakeHost();
    const handler = handlerFor({ join: () => reply.ok({}), handleIn: () => { throw new TypeError("boom"); } }, host);
    assert.throws(() => handler.handleIn("x", json({})), /boom/);
    assert.equal(host.calls[0][0], "log");
    assert.equal(host.calls[0][1], "error");
    assert.match(host.calls[0][2], /handleIn threw: TypeError: boom/);
  });

  it("a callback returning something else than an outcome is a crash, not a silent noreply", () => {
    const handler = handlerFor({ join: () => reply.ok({}), handleIn: () => ({ ping: "pong" }) }, fakeHost());
    assert.throws(() => handler.handleIn("x", json({})), /must return reply.ok/);
  });

  it("handleOut pushes the broadcast on by default, and handleInfo gets the timer's message", () => {
    const host = fakeHost();
    const seen = [];
    const handler = handlerFor({ join: () => reply.ok({}), handleInfo: (message, socket) => (seen.push(message), socket.assign("ticks", 1), noreply()) }, host);
    assert.deepEqual(handler.handleOut("new_msg", json({ body: "x" })), { reply: null, assigns: null, stop: null });
    assert.deepEqual(host.calls, [["push", "new_msg", json({ body: "x" })]]);
    assert.equal(handler.handleInfo("tick").assigns, '{"ticks":1}');
    assert.deepEqual(seen, ["tick"]);
  });

  it("the 0.1 contract reads a context record and joins with an outcome", () => {
    const handler = handlerFor({ intercepts: ["a"], join: (topic, _p, socket) => (socket.assign("t", topic), reply.ok({})) }, fakeHost(), "0.1");
    const ctx = { app: "demo", topic: "ping", socketId: undefined, claims: "{}", assigns: "{}" };
    assert.deepEqual(handler.intercepts(), ["a"]);
    assert.deepEqual(handler.join(ctx, json({})), { reply: { status: "ok", response: { tag: "json", val: "{}" } }, assigns: '{"t":"ping"}', stop: null });
  });
});

describe("the socket", () => {
  it("timers: sendAfter returns the id, cancelTimer takes it back", () => {
    const host = fakeHost();
    let result;
    const handler = handlerFor({ join: () => reply.ok({}), handleIn: (_e, _p, socket) => ((result = [socket.sendAfter(10, "tick"), socket.cancelTimer(7), socket.cancelTimer(8)]), noreply()) }, host);
    handler.handleIn("x", json({}));
    assert.deepEqual(result, [7, true, false]);
    assert.deepEqual(host.calls, [["sendAfter", 10, '"tick"']]);
  });

  it("kv: bytes, text, JSON, increment, list, and errors as KvError", () => {
    const host = fakeHost({ kv: true });
    let result;
    const handler = handlerFor(
      {
        join: () => reply.ok({}),
        handleIn(_e, _p, { kv }) {
          kv.setJson("room:1", { n: [1, "é"] });
          kv.set("raw", new Uint8Array([1, 2]));
          kv.increment("count");
          const count = kv.increment("count", 2);
          let error;
          try {
            kv.set("", "x");
          } catch (e) {
            error = e;
          }
          result = { json: kv.getJson("room:1"), raw: [...kv.get("raw")], missing: kv.get("nope"), count, keys: kv.listKeys("r"), error, deleted: kv.delete("raw") };
          return noreply();
        },
      },
      host,
    );
    handler.handleIn("x", json({}));
    assert.deepEqual(result.json, { n: [1, "é"] });
    assert.deepEqual(result.raw, [1, 2]);
    assert.equal(result.missing, null);
    assert.equal(result.count, 3);
    assert.deepEqual(result.keys, ["raw", "room:1"]);
    assert.ok(result.error instanceof KvError);
    assert.equal(result.error.kind, "invalid");
    assert.equal(result.deleted, true);
  });

  it("kv without the capability says how to enable it", () => {
    const handler = handlerFor({ join: () => reply.ok({}), handleIn: (_e, _p, socket) => socket.kv.get("a") }, fakeHost());
    assert.throws(() => handler.handleIn("x", json({})), /add "roost": \{ "capabilities": \["kv"\] \}/);
  });
});

describe("the vendored WIT", () => {
  // The SDK ships its own copy of the contract (users have no wit/ dir);
  // it must be the repository's, byte for byte.
  for (const file of ["channel.wit", "v0.1/channel.wit"]) {
    it(`wit/${file} is the repository's wit/${file}`, () => {
      const vendored = fs.readFileSync(path.join(here, "../wit", file), "utf8");
      const original = fs.readFileSync(path.join(here, "../../../wit", file), "utf8");
      assert.equal(vendored, original, `guest-sdk/js/wit/${file} differs: copy wit/${file} over it`);
    });
  }
});
