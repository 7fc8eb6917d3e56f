// Debian's Chromium, headless, through playwright-core (which never
// downloads a browser), and the chat page as a person uses it.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = path.resolve(here, "../artifacts");

/** How long a test waits for something the page should show. */
export const WAIT_MS = 8_000;

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 20_000,
    args: [
      "--no-sandbox",
      "--disable-dev-shm-usage",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}

/**
 * A new browser profile (its own localStorage) whose pages already picked
 * `name`, unless `name` is null.
 */
export async function profile(browser, { name = null, viewport = { width: 1000, height: 640 } } = {}) {
  const context = await browser.newContext({ viewport, colorScheme: "light" });
  context.setDefaultTimeout(WAIT_MS);
  if (name !== null) {
    await context.addInitScript((chosen) => localStorage.setItem("roost-chat:name", chosen), name);
  }
  return context;
}

/**
 * Makes WebSocket unusable in `context`'s pages, as a proxy that drops the
 * upgrade would: every connection attempt fails at once.
 */
export async function blockWebSocket(context) {
  await context.addInitScript(() => {
    window.WebSocket = class BlockedWebSocket extends EventTarget {
      static CONNECTING = 0;
      static OPEN = 1;
      static CLOSING = 2;
      static CLOSED = 3;
      constructor(url) {
        super();
        this.url = url;
        this.readyState = 0;
        window.blockedWebSockets = (window.blockedWebSockets || 0) + 1;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror?.(new Event("error"));
          this.onclose?.(new CloseEvent("close", { code: 1006, wasClean: false }));
        }, 10);
      }
      send() {
        throw new Error("blocked");
      }
      close() {}
    };
  });
}

/** Opens the chat at `url` (with its `#room`) and waits until it is online. */
export async function openChat(context, url, { online = true } = {}) {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.problems = problems;
  await page.goto(url);
  if (online) await waitOnline(page);
  return page;
}

export async function waitOnline(page, transport = null) {
  const selector = transport
    ? `#status[data-state="online"][data-transport="${transport}"]`
    : '#status[data-state="online"]';
  await page.waitForSelector(selector);
}

/** Types `text` into the composer and sends it, as a person would. */
export async function say(page, text) {
  await page.fill("#message-input", text);
  await page.press("#message-input", "Enter");
}

/** The messages the page shows: `[[author, text], …]` (grouped ones carry their author too). */
export function messages(page) {
  return page.$$eval("#message-list .message", (items) =>
    items.map((item) => [item.dataset.user, item.querySelector(".text").textContent]),
  );
}

/** Waits until the page shows a message `text` from `author`. */
export async function waitMessage(page, author, text) {
  await page.waitForFunction(
    ([a, t]) =>
      [...document.querySelectorAll("#message-list .message")].some(
        (item) => item.dataset.user === a && item.querySelector(".text").textContent === t,
      ),
    [author, text],
  );
}

/** Who the online list shows: `[[name, tab count label or ""], …]`. */
export function online(page) {
  return page.$$eval("#online-list li", (items) =>
    items.map((item) => [item.dataset.user, item.querySelector(".tabs")?.textContent ?? ""]),
  );
}

/** Waits until the online list is exactly `expected` (see `online`). */
export async function waitOnlineList(page, expected) {
  try {
    await page.waitForFunction(
      (want) =>
        JSON.stringify(
          [...document.querySelectorAll("#online-list li")].map((item) => [
            item.dataset.user,
            item.querySelector(".tabs")?.textContent ?? "",
          ]),
        ) === JSON.stringify(want),
      expected,
    );
  } catch (error) {
    throw new Error(`online list is ${JSON.stringify(await online(page))}, want ${JSON.stringify(expected)}: ${error.message}`);
  }
}

export async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file });
  return file;
}

/** A fresh room name per test, so tests do not see each other. */
let rooms = 0;
export function uniqueRoom(prefix = "room") {
  rooms += 1;
  return `${prefix}-${process.pid}-${rooms}`;
}
