// A cluster: three `roost` processes (nodes a, b, c) on one redis-server,
// official phoenix clients on different nodes. They chat in one room and see
// each other's presence; an API broadcast on one node reaches a client on
// another; an API disconnect closes a user's sockets on every node; Redis
// restarted mid-test comes back by itself; a node killed with SIGKILL has
// its users leave everywhere within the node timeout.
//
// Skipped when redis-server is not installed (tests/run installs it).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it as nodeIt } from "node:test";

import { Presence } from "phoenix";

import { LongPoll, WebSocket, body, nextEvent, outcome, sleep, uniq, waitFor } from "../lib/client.js";
import { available, RedisServer } from "../lib/redis.js";
import { ROOST_BIN, RoostServer } from "../lib/server.js";

const API_KEY = "cluster-js-api-key-0123456789";
const SECRET = "cluster-js-token-secret-0123456789";
/** The liveness bound the nodes run with (`node_timeout_ms`). */
const NODE_TIMEOUT_MS = 3000;

const skip = !available() && "redis-server is not installed";
let redis;
let nodes = [];

before(async () => {
  if (skip) return;
  redis = new RedisServer();
  await redis.start();
  nodes = ["a", "b", "c"].map(
    (name) =>
      new RoostServer({
        node: `roost@${name}`,
        config: {
          server: ["watch = false"],
          app: [`secrets = ["value:${SECRET}"]`, "anonymous = true", `api_keys = ["value:${API_KEY}"]`],
          cluster: [`redis = "${redis.url}"`, `node_timeout_ms = ${NODE_TIMEOUT_MS}`],
        },
      }),
  );
  await Promise.all(nodes.map((node) => node.start()));
  // Every node sees the other two before the tests start.
  for (const node of nodes) {
    await until(async () => (await status(node)).cluster.nodes.length === 3, 10_000, `${node.node} to see three nodes`);
  }
});
after(async () => {
  for (const node of nodes) await node.dispose();
  if (redis) await redis.stop();
});

const [a, b, c] = [0, 1, 2].map((i) => () => nodes[i]);

/** Dumps every node's log when a test fails. */
const everyNode = {
  dumpLog(title) {
    for (const node of nodes) node.dumpLog(`${title} (${node.node})`);
  },
};
const it = (name, fn) => nodeIt(name, { timeout: 40_000, skip }, body(() => everyNode, fn));

async function api(node, call, payload) {
  const response = await fetch(node.url(`/api/apps/demo/${call}`), {
    method: payload ? "POST" : "GET",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: payload ? JSON.stringify(payload) : undefined,
  });
  return response.json();
}

const status = (node) => api(node, "status");

/** Polls the async `predicate` every 50 ms until it holds; rejects after `ms`. */
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await predicate()) return;
    } catch {
      // A node restarting: ask again.
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** A token for `sub` signed with the app's secret, by `roost token`. */
function token(node, sub) {
  return execFileSync(ROOST_BIN, ["token", "--config", node.configPath, "--app", "demo", "--sub", sub], {
    encoding: "utf8",
  }).trim();
}

/** Joins `topic` as `user` with a Presence attached; returns both. */
async function inRoom(clients, node, transport, topic, user) {
  const socket = await clients.connected(node.socketUrl, transport, { name: `${user}@${node.node}` });
  const channel = socket.channel(topic, { username: user });
  const presence = new Presence(channel);
  const joined = await outcome(channel.join());
  assert.equal(joined.status, "ok", JSON.stringify(joined));
  return { socket, channel, presence };
}

/** The users a Presence shows, sorted. */
const who = (presence) => presence.list((key) => key).sort();

async function shows(presence, users, what) {
  await waitFor(() => JSON.stringify(who(presence)) === JSON.stringify(users), 8000, `${what}: ${users}`).catch((error) => {
    throw new Error(`${error.message}; shows ${JSON.stringify(who(presence))}`);
  });
}

describe("a cluster of three nodes on one Redis", () => {
  it("clients on different nodes chat in one room and see each other's presence", async (clients) => {
    const topic = uniq("room:cluster-");
    const ada = await inRoom(clients, a(), WebSocket, topic, "ada");
    const bob = await inRoom(clients, b(), WebSocket, topic, "bob");
    const cy = await inRoom(clients, c(), LongPoll, topic, "cy");
    for (const user of [ada, bob, cy]) await shows(user.presence, ["ada", "bob", "cy"], "everyone");

    const event = `${topic}:new_message`;
    const heard = [nextEvent(bob.channel, event), nextEvent(cy.channel, event)];
    assert.equal((await outcome(ada.channel.push("message:add", { message: "hi from a" }))).status, "ok");
    for (const message of await Promise.all(heard)) {
      assert.deepEqual(message, { content: "hi from a", user: { username: "ada" } });
    }

    // bob leaves: the others see it.
    await outcome(bob.channel.leave());
    await shows(ada.presence, ["ada", "cy"], "ada after bob left");
    await shows(cy.presence, ["ada", "cy"], "cy after bob left");
  });

  it("an API broadcast on node a reaches a client on node c", async (clients) => {
    const topic = uniq("room:api-");
    const socket = await clients.connected(c().socketUrl, WebSocket);
    const channel = await clients.joined(socket, topic);
    const heard = nextEvent(channel, "new_msg");
    const answer = await api(a(), "broadcast", { topic, event: "new_msg", payload: { body: "from the API on a" } });
    assert.deepEqual(answer, { subscribers: 0 }, "a has no subscriber of its own");
    assert.deepEqual(await heard, { body: "from the API on a" });
  });

  it("an API disconnect by socket id closes the user's sockets on every node", async (clients) => {
    const closes = [];
    for (const node of [b(), c()]) {
      const socket = await clients.connected(node.socketUrl, WebSocket, {
        name: `dan@${node.node}`,
        params: { token: token(node, "dan") },
        reconnectAfterMs: () => 60_000,
      });
      socket.onClose((event) => closes.push([node.node, event.code]));
      await clients.joined(socket, "ping");
    }
    const answer = await api(a(), "disconnect", { socket_id: "users_socket:dan" });
    assert.deepEqual(answer, { sockets: 0, nodes: 2 });
    await waitFor(() => closes.length === 2, 5000, "both of dan's sockets to close");
    assert.deepEqual(closes.map(([, code]) => code), [1001, 1001]);
  });

  it("Redis restarted mid-test: the nodes recover by themselves and traffic resumes", async (clients) => {
    const topic = uniq("room:redis-");
    const ada = await inRoom(clients, a(), WebSocket, topic, "ada");
    const bob = await inRoom(clients, b(), WebSocket, topic, "bob");
    await shows(ada.presence, ["ada", "bob"], "ada before");

    clients.note("---- killing redis");
    await redis.stop();
    await until(async () => (await status(a())).cluster.degraded, 10_000, "a to say it is degraded");
    // Local service goes on: a's own subscribers hear a's messages.
    const local = nextEvent(ada.channel, `${topic}:new_message`);
    await outcome(ada.channel.push("message:add", { message: "while redis is down" }));
    assert.equal((await local).content, "while redis is down");
    const down = await status(a());
    assert.ok(down.cluster.not_replicated >= 1, JSON.stringify(down.cluster));

    clients.note("---- starting redis again (empty)");
    await redis.start();
    for (const node of nodes) {
      await until(
        async () => {
          const { cluster } = await status(node);
          return !cluster.degraded && cluster.resyncs >= 1 && cluster.nodes.length === 3;
        },
        15_000,
        `${node.node} to resync`,
      );
    }
    // Cross-node delivery resumes by itself.
    let got = false;
    bob.channel.on(`${topic}:new_message`, (message) => {
      if (message.content === "after") got = true;
    });
    await until(
      async () => {
        await outcome(ada.channel.push("message:add", { message: "after" }));
        await sleep(100);
        return got;
      },
      10_000,
      "bob to hear ada again",
    );
    // Presence resynced: a newcomer on c sees both.
    const cy = await inRoom(clients, c(), WebSocket, topic, "cy");
    await shows(cy.presence, ["ada", "bob", "cy"], "cy after the restart");
    await shows(ada.presence, ["ada", "bob", "cy"], "ada after the restart");
  });

  it("a node killed with SIGKILL has its users leave on the others within the node timeout", async (clients) => {
    const topic = uniq("room:kill-");
    const ada = await inRoom(clients, a(), WebSocket, topic, "ada");
    const bob = await inRoom(clients, b(), WebSocket, topic, "bob");
    await inRoom(clients, c(), WebSocket, topic, "eve");
    await shows(ada.presence, ["ada", "bob", "eve"], "ada before");
    await shows(bob.presence, ["ada", "bob", "eve"], "bob before");

    clients.note("---- kill -9 node c");
    const killed = Date.now();
    await c().stop("SIGKILL");
    await shows(ada.presence, ["ada", "bob"], "ada after c died");
    await shows(bob.presence, ["ada", "bob"], "bob after c died");
    const took = Date.now() - killed;
    clients.note(`---- eve left everywhere ${took} ms after the kill`);
    // The bound: the timeout, plus a check-in tick and a poll.
    assert.ok(took <= NODE_TIMEOUT_MS + 2000, `took ${took} ms`);
    await until(async () => (await status(a())).cluster.nodes.length === 2, 5000, "a to list two nodes");
  });
});
