// A real `roost serve` for the browser suite, and a second tiny web server
// for pages on another origin.
//
// As tests/js/lib/server.js: the binary is $ROOST_BIN (default
// ../../target/debug/roost from tests/browser), the plugins come from
// $ROOST_PLUGIN_DIR (default ../../plugins/target/wasm32-wasip2/release),
// the config lives in a temp dir with absolute paths, and the server's log
// goes to a file there that `dumpLog()` prints when a test fails. The
// server has an admin key (ADMIN_KEY) for /metrics and /dashboard. The `demo`
// app serves the room chat's page (plugins/room-chat/www) at `/`, allows
// the two origins the suite uses, and routes `counter:*` to a copy of a
// hot-reload fixture that `installCounter` overwrites.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const suiteRoot = path.resolve(here, "..");
const fromEnv = (name, fallback) =>
  process.env[name] ? path.resolve(process.env[name]) : path.resolve(suiteRoot, fallback);

export const ROOST_BIN = fromEnv("ROOST_BIN", "../../target/debug/roost");
export const PLUGIN_DIR = fromEnv("ROOST_PLUGIN_DIR", "../../plugins/target/wasm32-wasip2/release");
export const WWW_DIR = path.resolve(suiteRoot, "../../plugins/room-chat/www");
export const API_KEY = "browser-suite-api-key-0123456789";
export const ADMIN_KEY = "browser-suite-admin-key-0123456789";

const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tcpReady(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => {
      sock.destroy();
      resolve(false);
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Server processes this test process started: killed if it exits early.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});

export class RoostServer {
  /** `allowedOrigins`: extra origins for `check_origin` (the page's own is always allowed). */
  constructor({ allowedOrigins = [] } = {}) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "roost-browser-"));
    this.configPath = path.join(this.dir, "roost.toml");
    this.logPath = path.join(this.dir, "server.log");
    this.counterPath = path.join(this.dir, "counter.wasm");
    this.allowedOrigins = allowedOrigins;
    this.port = null;
    this.proc = null;
    this.exited = null;
    this.installCounter("a");
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Replaces the `counter:*` plugin with fixture build `a` or `b`, by rename (as an editor saves). */
  installCounter(version) {
    const tmp = `${this.counterPath}.tmp`;
    fs.copyFileSync(path.join(PLUGIN_DIR, `version_${version}.wasm`), tmp);
    fs.renameSync(tmp, this.counterPath);
  }

  config() {
    const p = (file) => JSON.stringify(file);
    const origins = [this.origin, ...this.allowedOrigins].map((o) => JSON.stringify(o));
    return [
      "[server]",
      // Tests open many sockets at once from one address.
      "connections_per_ip_per_second = 1000000",
      'node = "roost@browser"',
      `data_dir = ${p(path.join(this.dir, "data"))}`,
      `admin_keys = [${p(`value:${ADMIN_KEY}`)}]`,
      "",
      "[apps.demo]",
      'mount = "/socket"',
      "capabilities = { kv = true }",
      `static = ${p(WWW_DIR)}`,
      `api_keys = [${p(`value:${API_KEY}`)}]`,
      `check_origin = [${origins.join(", ")}]`,
      "",
      "[apps.demo.routes]",
      `"room:*" = ${p(path.join(PLUGIN_DIR, "room_chat.wasm"))}`,
      `"counter:*" = ${p(this.counterPath)}`,
      "",
      "[apps.demo.limits]",
      // Short polls, so a closed long-poll page leaves the room quickly.
      "longpoll_window_ms = 1000",
      "",
    ].join("\n");
  }

  async start() {
    if (!fs.existsSync(ROOST_BIN)) {
      throw new Error(`roost binary not found at ${ROOST_BIN} (set ROOST_BIN)`);
    }
    if (this.port === null) this.port = await freePort();
    fs.writeFileSync(this.configPath, this.config());
    const log = fs.openSync(this.logPath, "a");
    const listen = `127.0.0.1:${this.port}`;
    const proc = spawn(ROOST_BIN, ["serve", "--config", this.configPath, "--listen", listen], {
      env: { ...process.env, ROOST_LOG: process.env.ROOST_LOG || "info", NO_COLOR: "1" },
      stdio: ["ignore", log, log],
    });
    fs.closeSync(log);
    this.proc = proc;
    running.add(proc);
    this.exited = new Promise((resolve) =>
      proc.once("exit", (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
      }),
    );
    let gone = null;
    this.exited.then((status) => (gone = status));
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (gone) throw new Error(`roost exited before listening (${JSON.stringify(gone)}):\n${this.log()}`);
      if (await tcpReady(this.port)) return;
      await sleep(50);
    }
    throw new Error(`roost did not listen on ${listen} within ${READY_TIMEOUT_MS} ms:\n${this.log()}`);
  }

  /** Broadcasts through the HTTP API, as a backend would. */
  async broadcast(topic, event, payload) {
    const response = await fetch(`${this.origin}/api/apps/demo/broadcast`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ topic, event, payload }),
      signal: AbortSignal.timeout(5000),
    });
    if (!response.ok) throw new Error(`broadcast: HTTP ${response.status} ${await response.text()}`);
    return response.json();
  }

  /** GETs `path` on Roost with `key` as the bearer (none if null); `{status, headers, text}`. */
  async get(path, key = ADMIN_KEY) {
    const headers = key === null ? {} : { authorization: `Bearer ${key}` };
    const response = await fetch(`${this.origin}${path}`, { headers, signal: AbortSignal.timeout(5000) });
    return { status: response.status, headers: response.headers, text: await response.text() };
  }

  /** Replaces the `counter:*` plugin file with bytes that are not a component (a failed reload). */
  breakCounter() {
    const tmp = `${this.counterPath}.tmp`;
    fs.writeFileSync(tmp, "this is not a wasm component");
    fs.renameSync(tmp, this.counterPath);
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, "utf8");
    } catch {
      return "(no server log)";
    }
  }

  dumpLog(title = "roost server log") {
    process.stderr.write(`\n==== ${title} (${this.logPath}) ====\n${this.log()}\n==== end of server log ====\n`);
  }

  /** Stops the server: SIGKILL drops every connection at once, SIGINT closes them with 1001. */
  async stop(signal = "SIGKILL") {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    }
    this.proc = null;
  }

  async dispose() {
    await this.stop("SIGINT");
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
};

/**
 * The chat page on another origin, as a team would host it on its own site:
 * the same files, with the page's socket pointed at Roost
 * (`ws://127.0.0.1:<port>/socket`), and the phoenix client fetched from
 * Roost once and served from here.
 */
export class OtherOrigin {
  /** `port`: chosen before Roost starts, so Roost's `check_origin` can list it. */
  constructor(roost, port) {
    this.roost = roost;
    this.port = port;
    this.server = null;
  }

  async start() {
    const client = await fetch(`${this.roost.origin}/_roost/phoenix.mjs`).then((r) => r.text());
    const socketUrl = `ws://127.0.0.1:${this.roost.port}/socket`;
    this.server = http.createServer((req, res) => {
      const url = new URL(req.url, "http://x");
      let file = url.pathname === "/" ? "/index.html" : url.pathname;
      if (file === "/_roost/phoenix.mjs") {
        res.writeHead(200, { "content-type": "text/javascript" }).end(client);
        return;
      }
      const name = path.basename(file);
      const full = path.join(WWW_DIR, name);
      if (!fs.existsSync(full)) {
        res.writeHead(404).end();
        return;
      }
      let body = fs.readFileSync(full, "utf8");
      if (name === "index.html") {
        body = body.replace('content="/socket"', `content="${socketUrl}"`);
      }
      res.writeHead(200, { "content-type": TYPES[path.extname(name)] || "text/plain" }).end(body);
    });
    await new Promise((resolve) => this.server.listen(this.port, "127.0.0.1", resolve));
  }

  /** The page's URL on this server, by `host` (the allowed `127.0.0.1`, or `localhost`, which is not). */
  url(host = "127.0.0.1") {
    return `http://${host}:${this.port}/`;
  }

  async dispose() {
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise((resolve) => this.server.close(resolve));
    }
  }
}
