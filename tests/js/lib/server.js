// Starts and stops a real Roost server process for the suite.
//
// The binary comes from $ROOST_BIN (default: ../../target/debug/roost from
// tests/js). The sample plugins come from $ROOST_PLUGIN_DIR (default:
// ../../plugins/target/wasm32-wasip2/release from tests/js), the JS ones from
// $ROOST_JS_PLUGIN_DIR (default: tests/js/.js-plugins, built by run.sh). The server's stderr goes to a log
// file in a temp dir; `dumpLog()` prints it, which the tests do only when one
// of them fails.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const jsRoot = path.resolve(here, "..");

// Set in the environment: relative to the current directory (run.sh makes
// them absolute); defaults: relative to tests/js.
const fromEnv = (name, fallback) =>
  process.env[name] ? path.resolve(process.env[name]) : path.resolve(jsRoot, fallback);
export const ROOST_BIN = fromEnv("ROOST_BIN", "../../target/debug/roost");
export const PLUGIN_DIR = fromEnv("ROOST_PLUGIN_DIR", "../../plugins/target/wasm32-wasip2/release");
// The JS plugins, built by run.sh (plugins/js/room-chat, guest-sdk/js's sandbox fixture).
export const JS_PLUGIN_DIR = fromEnv("ROOST_JS_PLUGIN_DIR", ".js-plugins");

const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;

/** A free TCP port on 127.0.0.1: bind port 0, read it, close. */
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

/**
 * The suite's config: the demo app with the sample plugins and the fixture.
 * `server`, `app` and `limits` are extra TOML lines for `[server]`,
 * `[apps.demo]` and `[apps.demo.limits]`; `cluster` lines make a
 * `[cluster]` section (e.g. `redis = "redis://127.0.0.1:6390"`).
 */
function configToml({ server = [], app = [], limits = [], cluster = [], dataDir } = {}) {
  const p = (name) => JSON.stringify(path.join(PLUGIN_DIR, name));
  const js = (name) => JSON.stringify(path.join(JS_PLUGIN_DIR, name));
  const routes = [
    `"ping" = ${p("ping.wasm")}`,
    `"ping:*" = ${p("ping.wasm")}`,
    `"wild:*" = ${p("wildcard.wasm")}`,
    `"room:*" = ${p("room_chat.wasm")}`,
    // plugins/fixtures/fixture: joins that spin, crash or refuse; `boom` crashes.
    `"fixture:*" = ${p("fixture.wasm")}`,
    // The JS room chat, and a JS guest that throws, spins, eats memory, sets
    // timers and uses storage (guest-sdk/js/test/fixtures/fixture.js).
    `"jsroom:*" = ${js("room_chat_js.wasm")}`,
    `"jsfixture:*" = ${js("fixture_js.wasm")}`,
  ];
  return [
    "[server]",
    // Tests open many sockets at once from one address.
    "connections_per_ip_per_second = 1000000",
    "max_connections_per_ip = 1000000",
    'node = "roost@js"',
    // The JS fixture's key-value storage, in this server's temp dir.
    ...(dataDir ? [`data_dir = ${JSON.stringify(dataDir)}`] : []),
    ...server,
    "",
    "[apps.demo]",
    'mount = "/socket"',
    ...app,
    "",
    "[apps.demo.capabilities]",
    "kv = true",
    "",
    "[apps.demo.routes]",
    ...routes,
    "",
    "[apps.demo.limits]",
    "longpoll_window_ms = 1000",
    ...limits,
    "",
    ...(cluster.length ? ["[cluster]", ...cluster, ""] : []),
  ].join("\n");
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

// The server processes this test process started: killed if it exits or is
// interrupted before its after() hooks ran, so no server outlives the suite.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const proc of running) proc.kill("SIGKILL");
    process.exit(130);
  });
}

export class RoostServer {
  /**
   * `config` adds TOML lines (see `configToml`); `log` is the server's
   * ROOST_LOG level (default: $ROOST_LOG or warn); `node` is passed as
   * `--node` (a cluster's nodes each have a name).
   */
  constructor({ config = {}, log, node } = {}) {
    this.logLevel = log;
    this.node = node;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "roost-js-"));
    this.configPath = path.join(this.dir, "roost.toml");
    this.logPath = path.join(this.dir, "server.log");
    this.port = null;
    this.proc = null;
    this.exited = null;
    fs.writeFileSync(this.configPath, configToml({ dataDir: path.join(this.dir, "data"), ...config }));
  }

  get host() {
    return `127.0.0.1:${this.port}`;
  }

  /** `http://<host><path>`. */
  url(path) {
    return `http://${this.host}${path}`;
  }

  /** The endpoint given to `new Socket(...)`: the client appends /websocket (or /longpoll). */
  get socketUrl() {
    return `ws://${this.host}/socket`;
  }

  /** Starts the server (on the same port as before, if it ran before) and waits until it accepts connections. */
  async start() {
    if (!fs.existsSync(ROOST_BIN)) {
      throw new Error(`roost binary not found at ${ROOST_BIN} (set ROOST_BIN)`);
    }
    if (this.port === null) this.port = await freePort();
    const log = fs.openSync(this.logPath, "a");
    fs.writeSync(log, `\n---- roost serve --listen ${this.host} (${new Date().toISOString()})\n`);
    const args = ["serve", "--config", this.configPath, "--listen", this.host];
    if (this.node) args.push("--node", this.node);
    const proc = spawn(ROOST_BIN, args, {
      env: { ...process.env, ROOST_LOG: this.logLevel || process.env.ROOST_LOG || "warn", NO_COLOR: "1" },
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
      if (gone) {
        throw new Error(`roost exited before listening (${JSON.stringify(gone)}):\n${this.log()}`);
      }
      if (await tcpReady(this.port)) return;
      await sleep(50);
    }
    throw new Error(`roost did not listen on ${this.host} within ${READY_TIMEOUT_MS} ms:\n${this.log()}`);
  }

  /**
   * Stops the server: SIGKILL (abrupt: connections drop) or SIGINT (graceful:
   * WebSockets are closed with 1001). Waits for the process to exit.
   */
  async stop(signal = "SIGINT") {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    const timedOut = Symbol("timeout");
    let timer;
    const result = await Promise.race([
      this.exited,
      new Promise((r) => (timer = setTimeout(() => r(timedOut), STOP_TIMEOUT_MS))),
    ]);
    clearTimeout(timer);
    if (result === timedOut) {
      proc.kill("SIGKILL");
      await this.exited;
    }
    this.proc = null;
  }

  /** Restarts the server on the same port. */
  async restart(signal = "SIGKILL") {
    await this.stop(signal);
    await this.start();
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

  /** Stops the server and removes the temp dir (keeps it if `keep`). */
  async dispose({ keep = false } = {}) {
    await this.stop("SIGKILL");
    if (!keep) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
