// The official phoenix client against a real Roost server: joins, pushes,
// broadcasts, leave/rejoin, duplicate joins, server-side closes and crashes,
// each over WebSocket and over long-poll.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import { LongPoll, TRANSPORTS, WebSocket, body, nextEvent, outcome, sleep, uniq, waitFor } from "../lib/client.js";
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
// Every test has its own timeout and gets a fresh `Clients` (lib/client.js).
const it = (name, fn) => nodeIt(name, { timeout: 20_000 }, body(() => server, fn));

for (const [name, transport] of TRANSPORTS) {
  describe(`over ${name}`, () => {
    // ---- joins ----------------------------------------------------------

    it("join ok", async (c) => {
      const socket = await c.connected(url(), transport);
      assert.ok(socket.conn instanceof transport, `the socket uses ${name}`);

      const ping = await c.join(socket, "ping");
      assert.deepEqual([ping.status, ping.response], ["ok", {}]);
      assert.equal(ping.channel.state, "joined");

      const room = uniq("room:join-");
      const joined = await c.join(socket, room, { username: "ada" });
      assert.deepEqual([joined.status, joined.response], ["ok", { channel: room }]);

      const wild = await c.join(socket, "wild:1:2");
      assert.deepEqual([wild.status, wild.response], ["ok", {}]);
    });

    it("join error", async (c) => {
      const socket = await c.connected(url(), transport);

      const wild = await c.join(socket, "wild:1:3");
      assert.deepEqual([wild.status, wild.response], ["error", {}]);
      assert.equal(wild.channel.state, "errored");

      const unmatched = await c.join(socket, uniq("nowhere:"));
      assert.deepEqual([unmatched.status, unmatched.response], ["error", { reason: "unmatched topic" }]);

      // The socket is still usable after refused joins.
      const ping = await c.joined(socket, "ping");
      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
    });

    it("join error from a refusing and from a crashing join", async (c) => {
      const socket = await c.connected(url(), transport);

      const refused = await c.join(socket, uniq("fixture:refuse-"), { refuse: true });
      assert.deepEqual([refused.status, refused.response], ["error", { reason: "refused" }]);

      const crashed = await c.join(socket, uniq("fixture:crash-"), { crash: true });
      assert.deepEqual([crashed.status, crashed.response], ["error", { reason: "join crashed" }]);
    });

    it("join timeout, then the client rejoins by itself", async (c) => {
      // The client rejoins 1 s after the timeout, once the server is done
      // with the slow join (the socket handles its messages in order, so an
      // earlier rejoin would wait behind it and time out as well).
      const socket = await c.connected(url(), transport, { rejoinAfterMs: () => 1000 });
      // The first join spins 800 ms on the server (below the 1000 ms
      // long-poll window, so the long-poll POST is still acknowledged);
      // later joins (the client's automatic rejoins) do not spin.
      const payloads = [];
      const params = () => {
        const p = payloads.length === 0 ? { spin_ms: 800 } : {};
        payloads.push(p);
        return p;
      };
      const channel = socket.channel(uniq("fixture:slow-"), params);
      const events = [];
      channel
        .join(300)
        .receive("timeout", () => events.push("timeout"))
        .receive("ok", () => events.push("ok"))
        .receive("error", () => events.push("error"));

      await waitFor(() => events.length > 0, 2000, "the join to time out");
      assert.deepEqual(events, ["timeout"], "the join timed out before any reply");
      assert.equal(channel.state, "errored");

      await waitFor(() => events.includes("ok"), 6000, "the automatic rejoin to succeed");
      assert.equal(channel.state, "joined");
      assert.ok(payloads.length >= 2, "the client sent a second join");
      // The late ok for the first (timed-out) join carries the old join_ref
      // and is dropped by the client; nothing but timeouts came before the ok.
      await sleep(300);
      assert.equal(events.at(-1), "ok");
      assert.ok(events.slice(0, -1).every((e) => e === "timeout"), `events: ${events}`);
      assert.equal(channel.state, "joined");
    });

    it("a push made during join arrives after the join reply", async (c) => {
      const socket = await c.connected(url(), transport);
      const channel = socket.channel(uniq("fixture:welcome-"), { welcome: true });
      const order = [];
      channel.on("welcome", (payload) => order.push(["welcome", payload]));
      // Recorded in the receive callback itself (a promise would run later).
      const join = channel.join().receive("ok", () => order.push(["join", "ok"]));
      assert.equal((await outcome(join)).status, "ok");
      await waitFor(() => order.length === 2, 3000, "the welcome push");
      assert.deepEqual(order, [
        ["join", "ok"],
        ["welcome", {}],
      ]);
    });

    // ---- pushes ---------------------------------------------------------

    it("push ok", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");

      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
      assert.deepEqual(await outcome(ping.push("ping", { ack_phrase: "hoorays..!" })), {
        status: "ok",
        response: { ping: "hoorays..!" },
      });
      const echoed = { a: 1, nested: { list: [1, "two", null, true], unicode: "héllo ✓" } };
      assert.deepEqual(await outcome(ping.push("param_ping", echoed)), { status: "ok", response: echoed });

      // Several pushes sent in one tick (one long-poll batch) each get their own reply.
      const replies = await Promise.all(
        ["a", "b", "c", "d"].map((p) => outcome(ping.push("ping", { ack_phrase: p }))),
      );
      assert.deepEqual(
        replies.map((r) => r.response.ping),
        ["a", "b", "c", "d"],
      );
    });

    it("push error", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");
      assert.deepEqual(await outcome(ping.push("param_ping", { error: true })), {
        status: "error",
        response: { reason: "You asked for this!" },
      });
      // An error reply does not affect the channel.
      assert.equal(ping.state, "joined");
      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
    });

    it("push timeout", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");
      const started = Date.now();
      assert.deepEqual(await outcome(ping.push("pong", {}, 300)), { status: "timeout" });
      assert.ok(Date.now() - started >= 290, "the timeout fired after the push's own timeout");
      // The channel still works after a timed-out push.
      assert.equal(ping.state, "joined");
      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
    });

    it("many pushes in one tick (more than one 100-line long-poll batch)", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");
      // 150: within a socket's burst of 200 messages (limits.messages_per_second).
      const phrases = Array.from({ length: 150 }, (_, i) => `p${i}`);
      const replies = await Promise.all(phrases.map((p) => outcome(ping.push("ping", { ack_phrase: p }), 15_000)));
      assert.deepEqual(
        replies.map((r) => [r.status, r.response && r.response.ping]),
        phrases.map((p) => ["ok", p]),
      );
    });

    it("pushes past the socket's rate get an error reply, and the channel carries on", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");
      const phrases = Array.from({ length: 260 }, (_, i) => `p${i}`);
      const replies = await Promise.all(phrases.map((p) => outcome(ping.push("ping", { ack_phrase: p }), 15_000)));
      // The burst (200, less the join and any heartbeat) passes, each its own
      // answer; the rest is refused, but for what the rate refilled meanwhile.
      const answered = replies.filter((r, i) => r.status === "ok" && r.response.ping === phrases[i]);
      const refused = replies.filter((r) => r.status === "error" && r.response.reason === "rate limited");
      assert.equal(answered.length + refused.length, replies.length, "only answers and refusals");
      assert.ok(answered.length >= 190, `${answered.length} answered`);
      assert.ok(refused.length >= 20, `${refused.length} refused`);
      // A second later the bucket has refilled.
      await sleep(1100);
      assert.equal(ping.state, "joined");
      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
    });

    it("a large payload round trip", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, "ping");
      const big = { text: "ünïcödé ✓ ".repeat(20_000), list: Array.from({ length: 2000 }, (_, i) => i) };
      const result = await outcome(ping.push("param_ping", big));
      assert.equal(result.status, "ok");
      assert.deepEqual(result.response, big);
    });

    it("connects with an authToken", async (c) => {
      // WebSocket: offered as the subprotocols ["phoenix", "base64url.bearer.phx.…"];
      // `ws` fails the handshake unless the server echoes "phoenix".
      // Long-poll: sent as the X-Phoenix-AuthToken header.
      const socket = await c.connected(url(), transport, { authToken: "a-secret-token" });
      if (transport === WebSocket) assert.equal(socket.conn.protocol, "phoenix");
      const ping = await c.joined(socket, "ping");
      assert.deepEqual(await outcome(ping.push("ping", {})), { status: "ok", response: { ping: "pong" } });
    });

    // ---- broadcasts -----------------------------------------------------

    it("broadcast between two clients in one room", async (c) => {
      const room = uniq("room:bc-");
      const id = room.slice("room:".length);
      const ada = await c.connected(url(), transport, { name: "ada" });
      const bob = await c.connected(url(), transport, { name: "bob" });
      const adaRoom = await c.joined(ada, room, { username: "ada" });
      const bobRoom = await c.joined(bob, room, { username: "bob" });

      const bothGet = (event) => Promise.all([nextEvent(adaRoom, event), nextEvent(bobRoom, event)]);

      let got = bothGet("new_msg");
      assert.deepEqual(await outcome(adaRoom.push("new_msg", { body: "hi bob" })), { status: "ok", response: {} });
      assert.deepEqual(await got, [{ body: "hi bob" }, { body: "hi bob" }]);

      got = bothGet("new_msg");
      assert.equal((await outcome(bobRoom.push("new_msg", { body: "hi ada" }))).status, "ok");
      assert.deepEqual(await got, [{ body: "hi ada" }, { body: "hi ada" }]);

      got = bothGet(`room:${id}:new_message`);
      assert.equal((await outcome(bobRoom.push("message:add", { message: "hello" }))).status, "ok");
      const expected = { content: "hello", user: { username: "bob" } };
      assert.deepEqual(await got, [expected, expected]);
    });

    // ---- leave, rejoin, duplicate join, server close ----------------------

    it("leave, then join again", async (c) => {
      const room = uniq("room:leave-");
      const s1 = await c.connected(url(), transport, { name: "leaver" });
      const s2 = await c.connected(url(), transport, { name: "talker" });
      const seen = [];
      s1.onMessage((msg) => {
        if (msg.topic === room) seen.push(msg);
      });
      const first = await c.joined(s1, room, { username: "leaver" });
      const other = await c.joined(s2, room, { username: "talker" });
      let closed = false;
      first.onClose(() => (closed = true));

      // The client closes the channel locally at once (it does not wait for
      // the server), so the server's answer is awaited on the raw stream:
      // the leave's ok reply, then phx_close, both with the left join_ref.
      const joinRef = first.joinRef();
      assert.deepEqual(await outcome(first.leave()), { status: "ok", response: {} });
      await waitFor(() => closed, 2000, "the left channel to close");
      assert.equal(first.state, "closed");
      assert.ok(!s1.channels.includes(first), "the left channel is removed from its socket");
      await waitFor(
        () => seen.some((m) => m.event === "phx_close" && m.join_ref === joinRef),
        3000,
        "the server's phx_close for the leave",
      );
      const leaveReply = seen.find((m) => m.event === "phx_reply" && m.join_ref === joinRef && m.ref !== joinRef);
      assert.deepEqual(leaveReply && leaveReply.payload, { response: {}, status: "ok" }, "the server replied ok to phx_leave");
      const mark = seen.length;

      // The server no longer delivers the room to the socket that left.
      const heard = nextEvent(other, "new_msg");
      assert.equal((await outcome(other.push("new_msg", { body: "after leave" }))).status, "ok");
      assert.deepEqual(await heard, { body: "after leave" });
      await sleep(300);
      assert.deepEqual(
        seen.slice(mark).map((m) => [m.event, m.payload]),
        [],
        "nothing on the room reaches a socket after it left",
      );

      // A new Channel on the same topic joins again and receives the room.
      const again = await c.joined(s1, room, { username: "leaver" });
      const back = nextEvent(again, "new_msg");
      assert.equal((await outcome(other.push("new_msg", { body: "after rejoin" }))).status, "ok");
      assert.deepEqual(await back, { body: "after rejoin" });
      assert.equal((await outcome(again.push("new_msg", { body: "i'm back" }))).status, "ok");
    });

    it("duplicate join: the second Channel joins and the first is closed", async (c) => {
      const room = uniq("room:dup-");
      const socket = await c.connected(url(), transport);
      const first = await c.joined(socket, room, { username: "one" });
      let firstClosed = false;
      const firstGot = [];
      first.onClose(() => (firstClosed = true));
      first.on("new_msg", (m) => firstGot.push(m));

      const second = socket.channel(room, { username: "two" });
      const secondGot = [];
      second.on("new_msg", (m) => secondGot.push(m));
      assert.deepEqual(await outcome(second.join()), { status: "ok", response: { channel: room } });
      await waitFor(() => firstClosed, 3000, "the first channel to close");
      assert.equal(first.state, "closed");
      assert.equal(second.state, "joined");
      assert.deepEqual(
        socket.channels.map((ch) => ch.topic),
        [room],
      );

      // Only the new join is subscribed: one broadcast arrives once.
      assert.equal((await outcome(second.push("new_msg", { body: "once" }))).status, "ok");
      await waitFor(() => secondGot.length >= 1, 3000, "the broadcast");
      await sleep(300);
      assert.deepEqual(secondGot, [{ body: "once" }]);
      assert.deepEqual(firstGot, []);
    });

    it("server closes the channel (ding: reply, then phx_close)", async (c) => {
      const socket = await c.connected(url(), transport);
      const ping = await c.joined(socket, uniq("ping:ding-"));
      let closed = false;
      let errored = false;
      ping.onClose(() => (closed = true));
      ping.onError(() => (errored = true));
      assert.deepEqual(await outcome(ping.push("ding", {})), { status: "ok", response: { msg: "shutting down" } });
      await waitFor(() => closed, 3000, "phx_close");
      assert.equal(ping.state, "closed");
      assert.equal(errored, false, "a normal stop is a close, not an error");
      assert.ok(!socket.channels.includes(ping));
      // The socket itself stays up.
      assert.ok(socket.isConnected());
      const again = await c.joined(socket, "ping");
      assert.equal((await outcome(again.push("ping", {}))).status, "ok");
    });

    it("channel crash (boom): phx_error, then an automatic rejoin", async (c) => {
      const socket = await c.connected(url(), transport);
      const channel = socket.channel(uniq("fixture:boom-"), { value: "kept" });
      let joins = 0;
      const errors = [];
      channel.join().receive("ok", () => (joins += 1));
      channel.onError((reason) => errors.push(reason));
      await waitFor(() => joins === 1, 5000, "the first join");

      for (let crash = 1; crash <= 2; crash++) {
        // No reply comes for the crashing push; keep its timeout short.
        channel.push("boom", {}, 1000);
        await waitFor(() => errors.length === crash, 5000, `phx_error #${crash}`);
        assert.deepEqual(errors[crash - 1], { reason: "channel_crash" });
        await waitFor(() => joins === crash + 1, 5000, `automatic rejoin #${crash}`);
        assert.equal(channel.state, "joined");
        // The rejoin is live on the server and ran join with the same params.
        const got = await outcome(channel.push("get", {}));
        assert.equal(got.status, "ok");
        assert.equal(got.response.value, "kept");
      }
      assert.ok(socket.isConnected(), "a channel crash leaves the socket up");
    });

    // ---- WebSocket only: binary frames and heartbeats (long-poll carries
    // text only server->client, and the client never heartbeats over it) ----

    if (transport === WebSocket) {
      it("binary push and binary reply", async (c) => {
        const socket = await c.connected(url(), transport);
        const echo = await c.joined(socket, uniq("fixture:echo-"));
        const bytes = new Uint8Array([0, 1, 2, 127, 128, 254, 255, 10, 13, 91, 34]);
        const result = await outcome(echo.push("echo", bytes.slice().buffer));
        assert.equal(result.status, "ok");
        assert.ok(result.response instanceof ArrayBuffer, "the reply payload is binary");
        assert.deepEqual(new Uint8Array(result.response), bytes);

        const big = new Uint8Array(64 * 1024).map((_, i) => (i * 31) & 0xff);
        const bigResult = await outcome(echo.push("echo", big.slice().buffer));
        assert.equal(bigResult.status, "ok");
        assert.deepEqual(new Uint8Array(bigResult.response), big);

        // JSON pushes still work on the same channel.
        assert.deepEqual(await outcome(echo.push("echo", { a: 1 })), { status: "ok", response: { a: 1 } });
      });

      it("heartbeats are answered, so the connection stays up", async (c) => {
        // The client sends the next heartbeat only once the previous one was
        // answered, and closes the connection if one is not answered in time.
        const socket = c.socket(url(), transport, { heartbeatIntervalMs: 150 });
        const replies = [];
        socket.onMessage((msg) => {
          if (msg.topic === "phoenix") replies.push([msg.event, msg.payload]);
        });
        let closes = 0;
        socket.onClose(() => (closes += 1));
        await c.connect(socket);
        await sleep(1000);
        assert.ok(replies.length >= 4, `the server answered a chain of heartbeats (${replies.length})`);
        for (const reply of replies) assert.deepEqual(reply, ["phx_reply", { response: {}, status: "ok" }]);
        assert.equal(closes, 0, "no heartbeat timeout closed the connection");
        assert.ok(socket.isConnected());
      });

      it("binary push from the server and binary reply (fixture binary_event)", async (c) => {
        const socket = await c.connected(url(), transport);
        const channel = await c.joined(socket, uniq("fixture:bin-"));
        const pushed = nextEvent(channel, "binary_event");
        const result = await outcome(channel.push("binary_event", new Uint8Array([1, 2]).buffer));
        assert.equal(result.status, "ok");
        assert.ok(result.response instanceof ArrayBuffer);
        assert.deepEqual([...new Uint8Array(result.response)], [1, 2, 3, 4]);
        const push = await pushed;
        assert.ok(push instanceof ArrayBuffer, "the server push is binary");
        assert.deepEqual([...new Uint8Array(push)], [0, 1]);
      });
    }
  });
}

describe("across transports", () => {
  it("a WebSocket client and a long-poll client share a room", async (c) => {
    const room = uniq("room:mixed-");
    const ws = await c.connected(url(), WebSocket, { name: "ws" });
    const lp = await c.connected(url(), LongPoll, { name: "lp" });
    const wsRoom = await c.joined(ws, room, { username: "ws" });
    const lpRoom = await c.joined(lp, room, { username: "lp" });

    let got = Promise.all([nextEvent(wsRoom, "new_msg"), nextEvent(lpRoom, "new_msg")]);
    assert.equal((await outcome(wsRoom.push("new_msg", { body: "from ws" }))).status, "ok");
    assert.deepEqual(await got, [{ body: "from ws" }, { body: "from ws" }]);

    got = Promise.all([nextEvent(wsRoom, "new_msg"), nextEvent(lpRoom, "new_msg")]);
    assert.equal((await outcome(lpRoom.push("new_msg", { body: "from lp" }))).status, "ok");
    assert.deepEqual(await got, [{ body: "from lp" }, { body: "from lp" }]);
  });
});
