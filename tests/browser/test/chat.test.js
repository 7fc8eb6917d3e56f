// The room chat page (plugins/room-chat/www) in a real headless Chromium,
// served by a real Roost with the phoenix client it embeds: people chat,
// see who is online, survive a blocked WebSocket, load the page from another
// origin, and keep their page through a plugin hot reload.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import {
  WAIT_MS,
  blockWebSocket,
  launch,
  messages,
  online,
  openChat,
  profile,
  say,
  screenshot,
  uniqueRoom,
  waitMessage,
  waitOnline,
  waitOnlineList,
} from "../lib/browser.js";
import { OtherOrigin, RoostServer, freePort } from "../lib/server.js";

let roost;
let other;
let browser;
/** Profiles opened by the running test, closed when it ends. */
let contexts = [];

before(async () => {
  const otherPort = await freePort();
  roost = new RoostServer({ allowedOrigins: [`http://127.0.0.1:${otherPort}`] });
  await roost.start();
  other = new OtherOrigin(roost, otherPort);
  await other.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await other?.dispose();
  await roost?.dispose();
});

/** A test that closes its pages, and on failure prints the server log and the pages' errors. */
function it(name, fn) {
  nodeIt(name, { timeout: 30_000 }, async () => {
    contexts = [];
    try {
      await fn();
    } catch (error) {
      roost.dumpLog(`roost log for "${name}"`);
      for (const context of contexts) {
        for (const page of context.pages()) {
          const problems = page.problems?.length ? page.problems.join("\n") : "(none)";
          process.stderr.write(`page ${page.url()} errors:\n${problems}\n`);
        }
      }
      throw error;
    } finally {
      await Promise.all(contexts.map((context) => context.close()));
    }
  });
}

/** A browser profile for `name`, closed at the end of the test. */
async function person(name, options = {}) {
  const context = await profile(browser, { name, ...options });
  contexts.push(context);
  return context;
}

const at = (room) => `${roost.origin}/#${encodeURIComponent(room)}`;

describe("the chat page", () => {
  it("people in a room see each other's messages and presence", async () => {
    const ada = await openChat(await person("ada"), at("lobby"));
    const bob = await openChat(await person("bob"), at("lobby"));
    await waitOnlineList(ada, [["ada", ""], ["bob", ""]]);
    await waitOnlineList(bob, [["ada", ""], ["bob", ""]]);
    assert.equal(await ada.textContent("#online-count"), "2");

    await say(ada, "Morning! Is the new build out?");
    await waitMessage(bob, "ada", "Morning! Is the new build out?");
    await say(bob, "Yes, the room plugin was hot-reloaded a minute ago.");
    await say(bob, "Nobody was disconnected, and presence carried on.");
    const grace = await person("Grace Hopper");
    const grace1 = await openChat(grace, at("lobby"));
    await openChat(grace, at("lobby"));
    await say(grace1, "I have two tabs open and I'm listed once.");
    const conversation = [
      ["ada", "Morning! Is the new build out?"],
      ["bob", "Yes, the room plugin was hot-reloaded a minute ago."],
      ["bob", "Nobody was disconnected, and presence carried on."],
      ["Grace Hopper", "I have two tabs open and I'm listed once."],
    ];
    for (const page of [ada, bob]) {
      await waitMessage(page, "Grace Hopper", "I have two tabs open and I'm listed once.");
      assert.deepEqual(await messages(page), conversation);
      await waitOnlineList(page, [["ada", ""], ["bob", ""], ["Grace Hopper", "2 tabs"]]);
    }
    // Grace joined after the first messages: the room's history shows them.
    assert.deepEqual(await messages(grace1), conversation);
    // Bob's two messages share one header.
    assert.equal(await ada.locator('#message-list .message.grouped[data-user="bob"]').count(), 1);
    // The composer keeps focus after sending.
    assert.equal(await ada.evaluate(() => document.activeElement?.id), "message-input");
    assert.equal(await ada.textContent("#status-text"), "online · WebSocket");

    await ada.fill("#message-input", "Let's ship it");
    await screenshot(ada, "chat.png");
    await bob.setViewportSize({ width: 390, height: 700 });
    await screenshot(bob, "chat-narrow.png");
    assert.deepEqual(ada.problems, []);
  });

  it("shows user text as text, never as markup", async () => {
    const room = uniqueRoom();
    const page = await openChat(await person("<i>mallory</i>"), at(room));
    const nasty = "<b>bold?</b> & <img src=x onerror=\"window.pwned=1\">";
    await say(page, nasty);
    await waitMessage(page, "<i>mallory</i>", nasty);
    await waitOnlineList(page, [["<i>mallory</i>", ""]]);
    assert.equal(await page.locator("#message-list img, #message-list b, #message-list i, #online-list i").count(), 0);
    assert.equal(await page.textContent("#online-list .who"), "<i>mallory</i>");
    assert.equal(await page.evaluate(() => window.pwned), undefined);
  });

  it("closing a page shows the leave to the others", async () => {
    const room = uniqueRoom();
    const ada = await openChat(await person("ada"), at(room));
    const bobProfile = await person("bob");
    const bob = await openChat(bobProfile, at(room));
    await waitOnlineList(ada, [["ada", ""], ["bob", ""]]);
    await bob.close();
    await waitOnlineList(ada, [["ada", ""]]);
    await ada.waitForSelector("#message-list .notice:text-is('bob left')");
    assert.equal(await ada.textContent("#online-count"), "1");
  });

  it("one person with two tabs is listed once, with a tab count", async () => {
    const room = uniqueRoom();
    const adaProfile = await person("ada");
    const ada1 = await openChat(adaProfile, at(room));
    const ada2 = await openChat(adaProfile, at(room));
    const bob = await openChat(await person("bob"), at(room));
    await waitOnlineList(bob, [["ada", "2 tabs"], ["bob", ""]]);
    await waitOnlineList(ada1, [["ada", "2 tabs"], ["bob", ""]]);
    assert.equal(await bob.textContent("#online-count"), "2");
    await ada2.close();
    await waitOnlineList(bob, [["ada", ""], ["bob", ""]]);
    // Ada is still here in her other tab: no leave notice.
    assert.equal(await bob.locator("#message-list .notice").count(), 0);
  });

  it("asks for a name once, remembers it, and takes the room from the URL hash", async () => {
    const context = await person(null);
    const page = await openChat(context, at("first"), { online: false });
    await page.waitForSelector("#name-dialog[open]");
    await page.fill("#name-input", "Grace Hopper");
    await page.press("#name-input", "Enter");
    await waitOnline(page);
    await waitOnlineList(page, [["Grace Hopper", ""]]);
    assert.equal(await page.textContent("#room-name"), "first");
    assert.equal(await page.textContent("#me"), "Grace Hopper");
    await say(page, "in first");
    await waitMessage(page, "Grace Hopper", "in first");

    // A new hash is a new room: its own messages and people.
    const watcher = await openChat(await person("watcher"), at("second"));
    await page.evaluate(() => (location.hash = "#second"));
    await page.waitForSelector("#room-name:text-is('second')");
    await waitOnlineList(watcher, [["Grace Hopper", ""], ["watcher", ""]]);
    assert.deepEqual(await messages(page), []);
    await say(page, "in second");
    await waitMessage(watcher, "Grace Hopper", "in second");

    await page.reload();
    await waitOnline(page);
    assert.equal(await page.isVisible("#name-dialog"), false, "the name is remembered");
    assert.equal(await page.textContent("#me"), "Grace Hopper");
    assert.equal(await page.textContent("#room-name"), "second");
  });

  it("a room's history replaces the list, then live messages follow", async () => {
    const room = uniqueRoom();
    const page = await openChat(await person("ada"), at(room));
    await say(page, "live before history");
    await waitMessage(page, "ada", "live before history");
    // What a server that stores messages pushes after each join reply; sent
    // here through the HTTP API, so the page's side is tested now.
    const t = Date.UTC(2026, 0, 5, 9, 30);
    await roost.broadcast(`room:${room}`, "history", {
      messages: [
        { id: 1, content: "first", user: { username: "grace" }, at: t },
        { id: 2, content: "second", user: { username: "alan" }, at: t + 60_000 },
      ],
    });
    await page.waitForFunction(() => document.querySelectorAll("#message-list .message").length === 2);
    assert.deepEqual(await messages(page), [
      ["grace", "first"],
      ["alan", "second"],
    ]);
    const stamp = await page.getAttribute("#message-list .message time", "datetime");
    assert.equal(stamp, new Date(t).toISOString(), "history keeps its own times");
    await say(page, "live after history");
    await waitMessage(page, "ada", "live after history");
    assert.equal((await messages(page)).length, 3);
  });
});

describe("transports and origins", () => {
  it("a page whose WebSocket is blocked, or missing, chats over long-poll", async () => {
    const room = uniqueRoom();
    const ws = await openChat(await person("ws"), at(room));
    // Blocked: every WebSocket fails at once, so phoenix.js falls back.
    const blocked = await person("blocked");
    await blockWebSocket(blocked);
    const lp = await openChat(blocked, at(room), { online: false });
    await waitOnline(lp, "long-poll");
    assert.ok((await lp.evaluate(() => window.blockedWebSockets)) >= 1, "it tried WebSocket first");
    // Missing: a browser without WebSocket starts on long-poll.
    const bare = await person("bare");
    await bare.addInitScript(() => {
      delete window.WebSocket;
    });
    const none = await openChat(bare, at(room), { online: false });
    await waitOnline(none, "long-poll");

    await waitOnlineList(ws, [["bare", ""], ["blocked", ""], ["ws", ""]]);
    await say(lp, "from a blocked WebSocket");
    await waitMessage(ws, "blocked", "from a blocked WebSocket");
    await waitMessage(none, "blocked", "from a blocked WebSocket");
    await say(none, "from no WebSocket at all");
    await waitMessage(lp, "bare", "from no WebSocket at all");
    await say(ws, "from WebSocket");
    await waitMessage(lp, "ws", "from WebSocket");
    await waitMessage(none, "ws", "from WebSocket");
    assert.equal(await lp.textContent("#status-text"), "online · long-poll");
  });

  it("a page from another allowed origin works over both transports", async () => {
    const room = uniqueRoom();
    const wsPage = await openChat(await person("far-ws"), `${other.url()}#${room}`);
    assert.equal(await wsPage.getAttribute("#status", "data-transport"), "WebSocket");
    const blocked = await person("far-lp");
    await blockWebSocket(blocked);
    // Cross-origin long-poll POSTs ndjson, which needs a CORS preflight first.
    const lpPage = await openChat(blocked, `${other.url()}#${room}`, { online: false });
    await waitOnline(lpPage, "long-poll");
    await waitOnlineList(wsPage, [["far-lp", ""], ["far-ws", ""]]);
    await say(lpPage, "over long-poll, cross-origin");
    await waitMessage(wsPage, "far-lp", "over long-poll, cross-origin");
    await say(wsPage, "over WebSocket, cross-origin");
    await waitMessage(lpPage, "far-ws", "over WebSocket, cross-origin");
    assert.equal(new URL(wsPage.url()).port, String(other.port), "served by the other server");
  });

  it("a page from an origin the app does not allow never gets online", async () => {
    const room = uniqueRoom();
    const watcher = await openChat(await person("watcher"), at(room));
    // Same server, but `localhost` is not in the app's `check_origin` list.
    const refused = await openChat(await person("intruder"), `${other.url("localhost")}#${room}`, { online: false });
    // Past the long-poll fallback (2.5 s): both transports were refused.
    await refused.waitForTimeout(3_500);
    assert.notEqual(await refused.getAttribute("#status", "data-state"), "online");
    assert.deepEqual(await online(watcher), [["watcher", ""]]);
    assert.match(roost.log(), /refused: origin `http:\/\/localhost:\d+` is not allowed/);
  });
});

describe("hot reload", () => {
  it("a plugin swapped under an open page answers the next push, with no page reload", async () => {
    const room = uniqueRoom();
    const page = await openChat(await person("ada"), at(room));
    await page.evaluate(() => (window.loadedOnce = true));
    // The counter fixture, on the page's own socket, next to the chat.
    const count = () =>
      page.evaluate(
        () =>
          new Promise((resolve, reject) => {
            const { socket } = window.roostChat;
            window.counter ||= socket.channel("counter:1", {});
            const channel = window.counter;
            const push = () =>
              channel
                .push("count", {})
                .receive("ok", resolve)
                .receive("error", reject)
                .receive("timeout", () => reject(new Error("timeout")));
            if (channel.state === "joined") push();
            else channel.join().receive("ok", push).receive("error", reject);
          }),
      );
    assert.deepEqual(await count(), { version: "a", count: 1 });
    roost.installCounter("b");
    const deadline = Date.now() + WAIT_MS;
    let reply;
    do {
      reply = await count();
    } while (reply.version !== "b" && Date.now() < deadline && (await page.waitForTimeout(50), true));
    assert.equal(reply.version, "b", `still ${JSON.stringify(reply)} after the swap`);
    assert.ok(reply.count > 1, "the channel's assigns survived the swap");
    assert.equal(await page.evaluate(() => window.loadedOnce), true, "the page was not reloaded");
    // The chat on the same socket carries on.
    await say(page, "still here");
    await waitMessage(page, "ada", "still here");
    await waitOnline(page);
  });
});

describe("connection state", () => {
  it("shows reconnecting while the server is away, then rejoins", async () => {
    const room = uniqueRoom();
    const page = await openChat(await person("ada"), at(room));
    await waitOnlineList(page, [["ada", ""]]);
    await roost.stop("SIGKILL");
    await page.waitForSelector('#status[data-state="reconnecting"]');
    assert.equal(await page.textContent("#status-text"), "reconnecting…");
    assert.equal(await page.isDisabled("#send"), true, "nothing to send to");
    await roost.start();
    // Over either transport: phoenix.js's fallback counts the refused
    // reconnects while the server was down as a blocked WebSocket, and
    // stays on long-poll for the rest of the page's life.
    await waitOnline(page);
    // Rejoined with the same name: listed again, and the room works.
    await waitOnlineList(page, [["ada", ""]]);
    await say(page, "back again");
    await waitMessage(page, "ada", "back again");
  });
});
