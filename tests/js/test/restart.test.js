// The server goes away and comes back on the same port: the official client
// reconnects by itself and its channels rejoin by themselves, over WebSocket
// and over long-poll, whether the server was killed (connections just drop)
// or shut down gracefully (SIGINT: WebSockets are closed with 1001, long-poll
// sessions end).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { TRANSPORTS, body, nextEvent, outcome, uniq, waitFor } from "../lib/client.js";
import { RoostServer } from "../lib/server.js";

let server;
before(async () => {
  server = new RoostServer();
  await server.start();
});
after(async () => {
  if (server) await server.dispose();
});

for (const [name, transport] of TRANSPORTS) {
  describe(`over ${name}`, () => {
    for (const signal of ["SIGKILL", "SIGINT"]) {
      const how = signal === "SIGKILL" ? "killed" : "shut down gracefully";
      it(
        `server ${how} and restarted: the client reconnects and rejoins`,
        { timeout: 25_000 },
        body(
          () => server,
          async (c) => {
            const room = uniq("room:restart-");
            const socket = await c.connected(server.socketUrl, transport);
            let opens = 1;
            socket.onOpen(() => (opens += 1));
            const channel = socket.channel(room, { username: "phoenix" });
            let joins = 0;
            const errors = [];
            channel.join().receive("ok", () => (joins += 1));
            channel.onError((reason) => errors.push(reason));
            await waitFor(() => joins === 1, 5000, "the first join");
            assert.equal((await outcome(channel.push("new_msg", { body: "before" }))).status, "ok");

            c.note(`---- stopping the server (${signal})`);
            await server.stop(signal);
            await waitFor(() => channel.state === "errored", 5000, "the channel to notice the lost connection");
            assert.ok(errors.length >= 1, "the channel's onError fired");
            assert.ok(!socket.isConnected());

            c.note("---- starting the server again");
            await server.start();
            await waitFor(() => joins === 2 && channel.state === "joined", 10_000, "the channel to rejoin by itself");
            assert.ok(opens >= 2, "the socket reopened");
            assert.ok(socket.conn instanceof transport, `still on ${name}`);

            // The rejoined channel is live on the new server process.
            const heard = nextEvent(channel, "new_msg");
            assert.deepEqual(await outcome(channel.push("new_msg", { body: "after" })), {
              status: "ok",
              response: {},
            });
            assert.deepEqual(await heard, { body: "after" });
          },
        ),
      );
    }
  });
}
