// Presence with the official client's `Presence` class against a real
// Roost: the room chat tracks each user on join (key = username) and pushes
// `presence_state`; the server broadcasts `presence_diff` on every change.
// Each test runs over WebSocket and over long-poll.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import { Presence } from "phoenix";

import { LongPoll, TRANSPORTS, WebSocket, body, outcome, sleep, uniq, waitFor } from "../lib/client.js";
import { RoostServer } from "../lib/server.js";

let server;
before(async () => {
  server = new RoostServer();
  await server.start();
});
after(async () => {
  if (server) await server.dispose();
});

const url = () => server.socketUrl;
const it = (name, fn) => nodeIt(name, { timeout: 20_000 }, body(() => server, fn));

/**
 * A channel on `topic` with a `Presence` attached before the join (so it
 * sees the first `presence_state`), and a log of its callbacks.
 */
function presenceChannel(socket, topic, params) {
  const channel = socket.channel(topic, params);
  const presence = new Presence(channel);
  const log = { joins: [], leaves: [], syncs: 0 };
  presence.onJoin((key, _current, joined) => log.joins.push([key, joined.metas.map((m) => m.phx_ref)]));
  presence.onLeave((key, _current, left) => log.leaves.push([key, left.metas.map((m) => m.phx_ref)]));
  presence.onSync(() => (log.syncs += 1));
  return { channel, presence, log };
}

/** Joins (asserting ok) and returns the channel with its presence. */
async function joinWithPresence(c, socket, topic, params) {
  const room = presenceChannel(socket, topic, params);
  const result = await outcome(room.channel.join());
  assert.equal(result.status, "ok", `join ${topic}: ${JSON.stringify(result)}`);
  return room;
}

/** `[[key, number of metas], …]` sorted by key: what the client shows. */
function who(presence) {
  return presence.list((key, { metas }) => [key, metas.length]).sort(([a], [b]) => (a < b ? -1 : 1));
}

/** Waits until `presence` shows exactly `expected` (see `who`). */
async function shows(presence, expected, what) {
  await waitFor(() => JSON.stringify(who(presence)) === JSON.stringify(expected), 5000, `${what}: ${JSON.stringify(expected)}`).catch(
    (error) => {
      throw new Error(`${error.message}; shows ${JSON.stringify(who(presence))}`);
    },
  );
}

for (const [name, transport] of TRANSPORTS) {
  describe(`presence over ${name}`, () => {
    it("two clients in a room each see both users", async (c) => {
      const topic = uniq("room:both-");
      const adaSocket = await c.connected(url(), transport, { name: "ada" });
      const bobSocket = await c.connected(url(), transport, { name: "bob" });
      const ada = await joinWithPresence(c, adaSocket, topic, { username: "ada" });
      await shows(ada.presence, [["ada", 1]], "ada sees herself");
      const bob = await joinWithPresence(c, bobSocket, topic, { username: "bob" });

      const both = [
        ["ada", 1],
        ["bob", 1],
      ];
      await shows(ada.presence, both, "ada sees both");
      await shows(bob.presence, both, "bob sees both");
      assert.ok(ada.log.syncs >= 2 && bob.log.syncs >= 1, "onSync ran");
      assert.ok(
        ada.log.joins.some(([key]) => key === "bob"),
        `ada's onJoin saw bob: ${JSON.stringify(ada.log.joins)}`,
      );
      // The metas are the room chat's, with a server-made phx_ref.
      const meta = ada.presence.list((_key, { metas }) => metas[0])[0];
      assert.equal(typeof meta.phx_ref, "string");
      assert.ok(Math.abs(meta.online_at - Date.now()) < 60_000, `online_at is now: ${meta.online_at}`);
      // Both clients hold the same refs.
      const refs = (p) =>
        p
          .list((key, { metas }) => metas.map((m) => `${key}:${m.phx_ref}`))
          .flat()
          .sort();
      assert.deepEqual(refs(ada.presence), refs(bob.presence));
    });

    it("one leaves and the other sees onLeave", async (c) => {
      const topic = uniq("room:leave-");
      const adaSocket = await c.connected(url(), transport, { name: "ada" });
      const bobSocket = await c.connected(url(), transport, { name: "bob" });
      const ada = await joinWithPresence(c, adaSocket, topic, { username: "ada" });
      const bob = await joinWithPresence(c, bobSocket, topic, { username: "bob" });
      const both = [
        ["ada", 1],
        ["bob", 1],
      ];
      await shows(ada.presence, both, "ada sees both");
      // bob's own view may sync a moment later (long-poll): wait for it too.
      await shows(bob.presence, both, "bob sees both");
      const bobRef = bob.presence.list((key, { metas }) => (key === "bob" ? metas[0].phx_ref : null)).find(Boolean);

      assert.equal((await outcome(bob.channel.leave())).status, "ok");
      await shows(ada.presence, [["ada", 1]], "ada sees bob gone");
      assert.deepEqual(ada.log.leaves, [["bob", [bobRef]]]);
    });

    it("one user with two sockets is one key with two metas", async (c) => {
      const topic = uniq("room:tabs-");
      const tab1 = await c.connected(url(), transport, { name: "tab1" });
      const tab2 = await c.connected(url(), transport, { name: "tab2" });
      const watcherSocket = await c.connected(url(), transport, { name: "watcher" });
      const watcher = await joinWithPresence(c, watcherSocket, topic, { username: "watcher" });
      await joinWithPresence(c, tab1, topic, { username: "ada" });
      await joinWithPresence(c, tab2, topic, { username: "ada" });
      await shows(watcher.presence, [
        ["ada", 2],
        ["watcher", 1],
      ], "one key, two metas");

      // One tab goes: the key stays with one meta, and onLeave reports the meta.
      tab2.disconnect();
      await shows(watcher.presence, [
        ["ada", 1],
        ["watcher", 1],
      ], "one tab left");
      assert.equal(watcher.log.leaves.length, 1);
      assert.equal(watcher.log.leaves[0][0], "ada");
    });

    it("a socket disconnect removes its presence", async (c) => {
      const topic = uniq("room:gone-");
      const adaSocket = await c.connected(url(), transport, { name: "ada" });
      const bobSocket = await c.connected(url(), transport, { name: "bob" });
      const ada = await joinWithPresence(c, adaSocket, topic, { username: "ada" });
      await joinWithPresence(c, bobSocket, topic, { username: "bob" });
      await shows(ada.presence, [
        ["ada", 1],
        ["bob", 1],
      ], "ada sees both");

      // No leave: the connection just goes (long-poll: the session ends).
      bobSocket.disconnect();
      await shows(ada.presence, [["ada", 1]], "bob's presence went with his socket");
      assert.deepEqual(
        ada.log.leaves.map(([key]) => key),
        ["bob"],
      );
    });

    it("a channel crash removes its presence, and its rejoin tracks again", async (c) => {
      // The fixture tracks `track` on join and crashes on `boom`.
      const topic = uniq("fixture:presence-");
      const watcherSocket = await c.connected(url(), transport, { name: "watcher" });
      const victimSocket = await c.connected(url(), transport, { name: "victim" });
      const watcher = await joinWithPresence(c, watcherSocket, topic, { track: "watcher" });
      const victim = await joinWithPresence(c, victimSocket, topic, { track: "victim" });
      const both = [
        ["victim", 1],
        ["watcher", 1],
      ];
      await shows(watcher.presence, both, "the watcher sees the victim");
      const firstRef = watcher.presence.list((key, { metas }) => (key === "victim" ? metas[0].phx_ref : null)).find(Boolean);

      let errored = false;
      victim.channel.onError(() => (errored = true));
      victim.channel.push("boom", {}, 1000);
      await waitFor(() => errored, 5000, "the crash");
      await waitFor(
        () => watcher.log.leaves.some(([key, refs]) => key === "victim" && refs.includes(firstRef)),
        5000,
        "the watcher's onLeave for the crashed channel",
      );
      // The client rejoins by itself; the new join tracks a new meta, and
      // each side ends up with exactly one meta per key.
      await waitFor(() => victim.channel.state === "joined", 5000, "the automatic rejoin");
      await shows(watcher.presence, both, "the watcher sees the rejoined victim once");
      await shows(victim.presence, both, "the rejoined victim's state is consistent");
      const newRef = watcher.presence.list((key, { metas }) => (key === "victim" ? metas[0].phx_ref : null)).find(Boolean);
      assert.notEqual(newRef, firstRef, "the rejoin is a new meta");
    });

    it("a rejoin after a reconnect gets a consistent state", async (c) => {
      const topic = uniq("room:rejoin-");
      const adaSocket = await c.connected(url(), transport, { name: "ada" });
      const bobSocket = await c.connected(url(), transport, { name: "bob" });
      const ada = await joinWithPresence(c, adaSocket, topic, { username: "ada" });
      const bob = await joinWithPresence(c, bobSocket, topic, { username: "bob" });
      await shows(ada.presence, [
        ["ada", 1],
        ["bob", 1],
      ], "ada sees both");

      // Ada goes away; meanwhile bob leaves and carol comes.
      await new Promise((resolve) => adaSocket.disconnect(resolve));
      assert.equal((await outcome(bob.channel.leave())).status, "ok");
      const carolSocket = await c.connected(url(), transport, { name: "carol" });
      const carol = await joinWithPresence(c, carolSocket, topic, { username: "carol" });
      await shows(carol.presence, [["carol", 1]], "carol alone (ada's socket is gone)");

      // Ada reconnects: the channel rejoins and the new presence_state
      // replaces what she missed (bob left, carol came, her own old meta went).
      await c.connect(adaSocket);
      await waitFor(() => ada.channel.state === "joined", 5000, "ada's rejoin");
      await shows(ada.presence, [
        ["ada", 1],
        ["carol", 1],
      ], "ada's state after the rejoin");
      assert.ok(
        ada.log.leaves.some(([key]) => key === "bob"),
        `ada's onLeave saw bob go: ${JSON.stringify(ada.log.leaves)}`,
      );
      await shows(carol.presence, [
        ["ada", 1],
        ["carol", 1],
      ], "carol sees ada back");
      // Nothing arrives later that would change the picture.
      await sleep(300);
      assert.deepEqual(who(ada.presence), [
        ["ada", 1],
        ["carol", 1],
      ]);
    });
  });
}

describe("presence across transports", () => {
  it("a WebSocket client and a long-poll client see each other", async (c) => {
    const topic = uniq("room:mixed-presence-");
    const ws = await c.connected(url(), WebSocket, { name: "ws" });
    const lp = await c.connected(url(), LongPoll, { name: "lp" });
    const wsRoom = await joinWithPresence(c, ws, topic, { username: "ws" });
    const lpRoom = await joinWithPresence(c, lp, topic, { username: "lp" });
    const both = [
      ["lp", 1],
      ["ws", 1],
    ];
    await shows(wsRoom.presence, both, "the WebSocket client sees both");
    await shows(lpRoom.presence, both, "the long-poll client sees both");
    lp.disconnect();
    await shows(wsRoom.presence, [["ws", 1]], "the long-poll client's presence went");
  });
});
