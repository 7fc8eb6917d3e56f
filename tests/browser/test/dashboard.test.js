// The operator's side in a real headless Chromium against a real Roost:
// /metrics parses as Prometheus text and its counters move as people chat;
// the dashboard at /dashboard asks for the admin key, goes live over its
// own phoenix channel, and shows counters moving, busiest topics and a
// plugin hot reload (good and bad) without a page reload.

import assert from "node:assert/strict";
import { after, before, describe, it as nodeIt } from "node:test";

import { WAIT_MS, launch, openChat, profile, say, screenshot, uniqueRoom, waitMessage } from "../lib/browser.js";
import { checkHistograms, parse, value } from "../lib/prometheus.js";
import { ADMIN_KEY, RoostServer } from "../lib/server.js";

let roost;
let browser;
let contexts = [];

before(async () => {
  roost = new RoostServer();
  await roost.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await roost?.dispose();
});

/** A test that closes its pages, and on failure prints the server log and the pages' errors. */
function it(name, fn) {
  nodeIt(name, { timeout: 45_000 }, async () => {
    contexts = [];
    try {
      await fn();
    } catch (error) {
      roost.dumpLog(`roost log for "${name}"`);
      for (const context of contexts) {
        for (const page of context.pages()) {
          process.stderr.write(`page ${page.url()} errors:\n${(page.problems ?? []).join("\n") || "(none)"}\n`);
        }
      }
      throw error;
    } finally {
      await Promise.all(contexts.map((context) => context.close()));
    }
  });
}

async function person(name, options = {}) {
  const context = await profile(browser, { name, ...options });
  contexts.push(context);
  return context;
}

const chatAt = (room) => `${roost.origin}/#${encodeURIComponent(room)}`;

async function scrape() {
  const response = await roost.get("/metrics");
  assert.equal(response.status, 200, response.text);
  return parse(response.text);
}

/** Opens /dashboard in a new profile and signs in with `key` (unless `null`). */
async function openDashboard({ key = ADMIN_KEY, viewport = { width: 1280, height: 860 } } = {}) {
  const context = await person(null, { viewport });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") page.problems.push(`console: ${message.text()}`);
  });
  await page.goto(`${roost.origin}/dashboard`);
  await page.waitForSelector("#key-dialog[open]");
  if (key !== null) await signIn(page, key);
  return page;
}

async function signIn(page, key) {
  await page.fill("#key-input", key);
  await page.press("#key-input", "Enter");
}

/** The number a dashboard cell shows (`1,234` → 1234). */
async function shown(page, selector) {
  const text = await page.textContent(selector);
  return Number(text.replace(/[^\d.]/g, ""));
}

async function waitShownAbove(page, selector, floor) {
  await page.waitForFunction(
    ([sel, min]) => {
      const node = document.querySelector(sel);
      return node && Number(node.textContent.replace(/[^\d.]/g, "")) > min;
    },
    [selector, floor],
  );
}

describe("/metrics", () => {
  it("is refused without the admin key", async () => {
    for (const key of [null, "not-the-admin-key-at-all"]) {
      const response = await roost.get("/metrics", key);
      assert.equal(response.status, 401, `key ${key}`);
      assert.match(response.headers.get("www-authenticate"), /^Bearer/);
    }
    assert.equal((await roost.get("/dashboard/state", null)).status, 401);
  });

  it("parses as Prometheus text, and its counters move when messages flow", async () => {
    const response = await roost.get("/metrics");
    assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const before = parse(response.text);
    checkHistograms(before);
    for (const [name, type] of [
      ["roost_sockets_active", "gauge"],
      ["roost_channels_joined", "gauge"],
      ["roost_joins_total", "counter"],
      ["roost_messages_in_total", "counter"],
      ["roost_messages_out_total", "counter"],
      ["roost_broadcasts_total", "counter"],
      ["roost_broadcast_deliveries_total", "counter"],
      ["roost_disconnects_total", "counter"],
      ["roost_connect_refusals_total", "counter"],
      ["roost_guest_call_duration_seconds", "histogram"],
      ["roost_plugin_info", "gauge"],
    ]) {
      assert.equal(before.families.get(name)?.type, type, name);
      assert.ok(before.families.get(name).help, `${name} has help`);
    }
    const app = { app: "demo" };
    const inBefore = value(before, "roost_messages_in_total", app);
    const deliveriesBefore = value(before, "roost_broadcast_deliveries_total", app);

    const room = uniqueRoom();
    const ada = await openChat(await person("ada"), chatAt(room));
    const bob = await openChat(await person("bob"), chatAt(room));
    for (const text of ["one", "two", "three"]) await say(ada, text);
    await waitMessage(bob, "ada", "three");

    const after = await scrape();
    checkHistograms(after);
    assert.ok(value(after, "roost_messages_in_total", app) >= inBefore + 5, "3 messages + 2 joins at least");
    assert.ok(value(after, "roost_broadcast_deliveries_total", app) >= deliveriesBefore + 6, "3 messages × 2 people");
    assert.equal(value(after, "roost_sockets_active", { ...app, transport: "websocket" }), 2);
    assert.ok(value(after, "roost_channels_joined", app) >= 2);
    assert.ok(value(after, "roost_joins_total", { ...app, outcome: "ok" }) >= 2);
    const calls = { ...app, plugin: "room_chat", callback: "handle_in" };
    assert.ok(value(after, "roost_guest_call_duration_seconds_count", calls) >= 3);
    assert.ok(value(after, "roost_guest_call_duration_seconds_sum", calls) > 0);
    assert.equal(value(after, "roost_plugin_info", { ...app, plugin: "room_chat", wit: "roost:channel@0.2.0" }), 1);
    assert.equal(value(after, "roost_node_info", { node: "roost@browser" }), 1);
  });
});

describe("the dashboard", () => {
  it("asks for the key, refuses a wrong one, then shows live counters moving", async () => {
    const page = await openDashboard({ key: null });
    await signIn(page, "a-wrong-admin-key-0123456789");
    await page.waitForSelector("#key-error:text-matches('not one of the server')");
    await signIn(page, ADMIN_KEY);
    await page.waitForSelector('#status[data-state="live"]');
    assert.equal(await page.isVisible("#key-dialog"), false);
    await page.waitForSelector('#apps-body tr[data-app="demo"]');
    const cell = '#apps-body tr[data-app="demo"] [data-field="messages_in"]';
    const before = await shown(page, cell);

    const room = uniqueRoom("busy");
    const ada = await openChat(await person("ada"), chatAt(room));
    const bob = await openChat(await person("bob"), chatAt(room));
    await say(ada, "is the dashboard watching?");
    await say(bob, "every second");
    await waitMessage(ada, "bob", "every second");
    // No reload: the next snapshot pushes arrive over the admin channel.
    await waitShownAbove(page, cell, before + 3);
    await waitShownAbove(page, '[data-metric="sockets"]', 1);
    await page.waitForSelector(`#topics-list li[data-topic="room:${room}"] .subs:text-is("2")`);
    await waitShownAbove(page, '#apps-body tr[data-app="demo"] [data-field="channels"]', 1);
    assert.equal(await page.textContent("#node-name"), "roost@browser");

    // Remembered for the tab: a reload goes straight back to live.
    await page.reload();
    await page.waitForSelector('#status[data-state="live"]');
    assert.equal(await page.isVisible("#key-dialog"), false);
    // The wrong key's 401 is the only thing the browser complained about.
    assert.deepEqual(page.problems.filter((p) => !p.includes("status of 401")), []);
  });

  it("shows a plugin hot reload, and a failed one, as they happen", async () => {
    const page = await openDashboard();
    await page.waitForSelector('#status[data-state="live"]');
    const row = '#plugins-body tr[data-plugin="counter"]';
    const before = await page.textContent(`${row} [data-field="version"]`);
    assert.equal(await page.isVisible('#reloads-list li[data-plugin="counter"]'), false);

    roost.installCounter("b");
    await page.waitForSelector('#reloads-list li.ok[data-plugin="counter"]');
    await page.waitForFunction(
      ([sel, old]) => document.querySelector(sel)?.textContent !== old,
      [`${row} [data-field="version"]`, before],
    );
    assert.equal(await page.textContent(`${row} [data-field="reloads"]`), "1");

    // A file that does not load: the list says so, the old version serves on.
    const serving = await page.textContent(`${row} [data-field="version"]`);
    roost.breakCounter();
    await page.waitForSelector('#reloads-list li.failed[data-plugin="counter"]');
    await page.waitForSelector("#plugins-body tr.error-line");
    assert.equal(await page.textContent(`${row} [data-field="version"]`), serving);
    roost.installCounter("a");
    await page.waitForFunction(
      (sel) => document.querySelectorAll(sel).length === 2,
      '#reloads-list li.ok[data-plugin="counter"]',
      { timeout: WAIT_MS },
    );
    assert.deepEqual(page.problems, []);
  });

  it("looks like something an operator wants to use (screenshot)", async () => {
    const page = await openDashboard();
    await page.waitForSelector('#status[data-state="live"]');
    // A little life: two rooms, a few people, a steady trickle of messages.
    const lobby = uniqueRoom("lobby");
    const rust = uniqueRoom("rust");
    const people = [];
    for (const [name, room] of [["ada", lobby], ["bob", lobby], ["grace", lobby], ["alan", rust], ["linus", rust]]) {
      people.push(await openChat(await person(name, { viewport: { width: 600, height: 400 } }), chatAt(room)));
    }
    for (let i = 0; i < 12; i += 1) {
      await say(people[i % people.length], `message ${i}`);
      await page.waitForTimeout(150);
    }
    await waitShownAbove(page, '[data-metric="sockets"]', 4);
    await page.waitForSelector('#topics-list li .subs:text-is("3")');
    await screenshot(page, "dashboard.png");
    await page.setViewportSize({ width: 420, height: 900 });
    await screenshot(page, "dashboard-narrow.png");
    assert.deepEqual(page.problems, []);
  });
});
