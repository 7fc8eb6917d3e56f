// JavaScript plugins in a real Roost: the JS room chat (plugins/js/room-chat,
// routed at `jsroom:*`) sends the Rust room chat's frames byte for byte, its
// presence works with the official client's `Presence`; a JS guest
// (`jsfixture:*`, guest-sdk/js/test/fixtures/fixture.js) that throws, spins
// or eats memory is contained as a Rust one is, and its timers and storage
// work through the SDK. run.sh builds both with the JS SDK.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import WebSocketClient from "ws";
import { Presence } from "phoenix";

import { WebSocket, body, outcome, sleep, uniq, waitFor } from "../lib/client.js";
import { RoostServer } from "../lib/server.js";

let server;
before(async () => {
  server = new RoostServer();
  await server.start();
});
after(async () => {
  if (server) await server.dispose();
});

const it = (name, fn) => nodeIt(name, { timeout: 30_000 }, body(() => server, fn));

/** A raw V2 WebSocket client that keeps every text frame it receives. */
async function rawClient(name) {
  const ws = new WebSocketClient(`ws://${server.host}/socket/websocket?vsn=2.0.0`);
  const frames = [];
  ws.on("message", (data, isBinary) => frames.push(isBinary ? `binary ${Buffer.from(data).toString("hex")}` : data.toString()));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return { name, ws, frames, send: (frame) => ws.send(JSON.stringify(frame)) };
}

/**
 * Plays one room session on `topic`: ada and bob join by name, an anonymous
 * reader joins, they chat with both events (odd payloads included), bob
 * leaves. Returns each client's frames. Waits for each step's frames so that
 * every client sees them in one order whatever the plugin's speed.
 */
async function session(topic) {
  const clients = [await rawClient("ada"), await rawClient("bob"), await rawClient("anon")];
  const [ada, bob, anon] = clients;
  const total = () => clients.reduce((n, c) => n + c.frames.length, 0);
  const step = async (client, frame, expect) => {
    const before = total();
    client.send(frame);
    await waitFor(() => total() >= before + expect, 5000, `${client.name} ${frame[3]}: ${expect} frames`);
  };
  // A join: its reply, the history, the state, then a named joiner's diff
  // to everyone in the room.
  await step(ada, ["1", "1", topic, "phx_join", { username: "ada" }], 4);
  await step(bob, ["1", "1", topic, "phx_join", { username: "bob" }], 5);
  await step(anon, ["1", "1", topic, "phx_join", {}], 3);
  await step(ada, ["1", "2", topic, "message:add", { message: 'hé ☃ "q"\n\u0001' }], 4);
  await step(bob, ["1", "2", topic, "new_msg", { body: { nested: [1, 2.5, null, true, -0.125e-7] } }], 4);
  await step(bob, ["1", "3", topic, "new_msg", {}], 4);
  await step(anon, ["1", "2", topic, "message:add", { other: 1 }], 4);
  await step(anon, ["1", "3", topic, "unknown", {}], 0);
  await step(bob, ["1", "4", topic, "phx_leave", {}], 4);
  // Joiners after the chat get its history: all of it, and only what came
  // after their last seen id.
  const late = await rawClient("late");
  const caughtUp = await rawClient("caughtUp");
  clients.push(late, caughtUp);
  await step(late, ["1", "1", topic, "phx_join", { username: "late" }], 6);
  await step(caughtUp, ["1", "1", topic, "phx_join", { last_seen_id: 2 }], 3);
  await sleep(200);
  // Taken before the sockets close: the leaves their closing makes reach the
  // others in an order no plugin decides.
  const frames = Object.fromEntries(clients.map((c) => [c.name, [...c.frames]]));
  for (const c of clients) c.ws.close();
  return frames;
}

/**
 * Frames with what must differ between two runs made equal: the topic, the
 * room id (the two runs use two rooms, as both plugins keep a room's history
 * under the same keys of the app's storage), times and refs.
 */
function normalized(frames, topic) {
  const roomId = topic.slice(topic.indexOf(":") + 1);
  return frames.map((frame) =>
    frame
      .split(JSON.stringify(topic))
      .join('"TOPIC"')
      .split(roomId)
      .join("ROOM")
      .replace(/"online_at":\d+/g, '"online_at":0')
      .replace(/"at":\d+/g, '"at":0')
      .replace(/"phx_ref(_prev)?":"[^"]+"/g, '"phx_ref$1":"REF"'),
  );
}

describe("the JS room chat", () => {
  it("sends the Rust room chat's frames, byte for byte", async () => {
    const [rustId, jsId] = [uniq("rust-"), uniq("js-")];
    const rust = await session(`room:${rustId}`);
    const js = await session(`jsroom:${jsId}`);
    assert.equal(rust.ada.length, 12, `ada's frames from the Rust room chat: ${rust.ada.join("\n")}`);
    // The late joiner's history holds the four messages; the one caught up
    // from id 2, the last two.
    const history = (frames) => JSON.parse(frames.find((f) => f.includes('"history"')))[4].messages;
    assert.deepEqual(history(rust.late).map((m) => m.id), [1, 2, 3, 4]);
    assert.deepEqual(history(rust.caughtUp).map((m) => m.id), [3, 4]);
    for (const name of ["ada", "bob", "anon", "late", "caughtUp"]) {
      assert.deepEqual(normalized(js[name], `jsroom:${jsId}`), normalized(rust[name], `room:${rustId}`), `${name}'s frames`);
    }
    // Both name the event after the room id, whatever the topic's prefix.
    assert.ok(js.bob.some((f) => f.includes(`"room:${jsId}:new_message"`)), js.bob.join("\n"));
  });

  it("is shown by the official client's Presence", async (c) => {
    const topic = uniq("jsroom:presence-");
    const rooms = [];
    for (const name of ["ada", "bob"]) {
      const socket = await c.connected(server.socketUrl, WebSocket, { name });
      const channel = socket.channel(topic, { username: name });
      const presence = new Presence(channel);
      const joined = await outcome(channel.join());
      assert.deepEqual(joined, { status: "ok", response: { channel: topic } });
      rooms.push({ channel, presence });
    }
    const who = (p) => p.list((key, { metas }) => [key, metas.length, typeof metas[0].online_at]).sort();
    for (const { presence } of rooms) {
      await waitFor(() => who(presence).length === 2, 5000, "both users listed");
      assert.deepEqual(who(presence), [
        ["ada", 1, "number"],
        ["bob", 1, "number"],
      ]);
    }
    await outcome(rooms[1].channel.leave());
    await waitFor(() => who(rooms[0].presence).length === 1, 5000, "bob left");
    assert.deepEqual(who(rooms[0].presence), [["ada", 1, "number"]]);
  });
});

describe("a JS guest in the sandbox", () => {
  it("an exception, a spin and a memory bomb each end only their channel", async (c) => {
    const socket = await c.connected(server.socketUrl, WebSocket);
    const crashed = await c.join(socket, uniq("jsfixture:crash-"), { crash: true });
    assert.deepEqual([crashed.status, crashed.response], ["error", { reason: "join crashed" }]);

    for (const event of ["throw", "spin", "bomb"]) {
      const channel = await c.joined(socket, uniq(`jsfixture:${event}-`));
      const errored = new Promise((resolve) => channel.onError((reason) => resolve(reason)));
      channel.push(event, {});
      const reason = await Promise.race([errored, sleep(10_000).then(() => "no phx_error")]);
      assert.notEqual(reason, "no phx_error", `${event}: the channel errors`);
    }

    // The socket and the plugin carry on.
    const fine = await c.joined(socket, uniq("jsfixture:after-"));
    assert.deepEqual(await outcome(fine.push("ok", {})), { status: "ok", response: { fine: true } });
    const log = server.log();
    assert.match(log, /handleIn threw: Error: handleIn blew up/);
    assert.match(log, /deadline/);
    assert.match(log, /memory limit/);
  });
});

describe("a JS guest's timers and storage", () => {
  it("sendAfter calls handleInfo on the channel, with the assigns it left; a cancelled timer never fires", async (c) => {
    const socket = await c.connected(server.socketUrl, WebSocket);
    const channel = await c.joined(socket, uniq("jsfixture:timers-"));
    const infos = [];
    channel.on("info", (payload) => infos.push(payload));
    const cancel = await outcome(channel.push("cancel", {}));
    assert.deepEqual(cancel, { status: "ok", response: { cancelled: true, again: false } });
    const later = await outcome(channel.push("later", { ms: 0, message: "tick" }));
    assert.equal(later.status, "ok");
    assert.equal(typeof later.response.timer, "number");
    await waitFor(() => infos.length >= 1, 5000, "the first timer fired");
    // The second sees the assigns the first handleInfo left.
    await outcome(channel.push("later", { ms: 20, message: "tock" }));
    await waitFor(() => infos.length >= 2, 5000, "two timers fired");
    await sleep(400); // the cancelled one (200 ms) would have fired by now
    assert.deepEqual(infos, [
      { message: "tick", ticks: 1 },
      { message: "tock", ticks: 2 },
    ]);
  });

  it("kv: an app-wide counter and JSON values, shared by channels", async (c) => {
    const key = uniq("count-");
    const socket = await c.connected(server.socketUrl, WebSocket);
    const a = await c.joined(socket, uniq("jsfixture:kv-a-"));
    const b = await c.joined(socket, uniq("jsfixture:kv-b-"));
    assert.deepEqual(await outcome(a.push("count", { key })), { status: "ok", response: { count: 1 } });
    assert.deepEqual(await outcome(b.push("count", { key })), { status: "ok", response: { count: 2 } });
    const doc = uniq("doc-");
    await outcome(a.push("put", { key: doc, value: { title: "hé", tags: ["a", 1] } }));
    assert.deepEqual(await outcome(b.push("get", { key: doc })), {
      status: "ok",
      response: { value: { title: "hé", tags: ["a", 1] }, keys: [doc] },
    });
  });
});
