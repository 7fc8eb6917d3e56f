// A redis-server of the suite's own, for the cluster tests: on a free
// loopback port, without persistence (`--save '' --appendonly no`), so a
// restart comes back empty. tests/run installs Debian's redis-server when it
// is missing; without it, `available()` is false and the cluster tests skip.

import { spawn, spawnSync } from "node:child_process";
import net from "node:net";

import { freePort } from "./server.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Whether redis-server is installed (with ROOST_REQUIRE_REDIS set, it must be). */
export function available() {
  const probe = spawnSync("redis-server", ["--version"], { stdio: "ignore" });
  if (probe.status !== 0 && process.env.ROOST_REQUIRE_REDIS) {
    throw new Error("redis-server is not installed (apt-get install redis-server)");
  }
  return probe.status === 0;
}

// Killed if this process exits before after() hooks ran.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});

export class RedisServer {
  constructor() {
    this.port = null;
    this.proc = null;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Starts it (on the same port as before, if it ran) and waits until it accepts connections. */
  async start() {
    if (this.port === null) this.port = await freePort();
    const args = ["--bind", "127.0.0.1", "--port", String(this.port), "--save", "", "--appendonly", "no"];
    const proc = spawn("redis-server", args, { stdio: "ignore" });
    this.proc = proc;
    running.add(proc);
    this.exited = new Promise((resolve) => proc.once("exit", () => (running.delete(proc), resolve())));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (await listening(this.port)) return;
      await sleep(20);
    }
    throw new Error(`redis-server did not listen on ${this.port}`);
  }

  /** Kills it (SIGKILL: its data is gone) and waits for it to exit. */
  async stop() {
    if (!this.proc) return;
    this.proc.kill("SIGKILL");
    await this.exited;
    this.proc = null;
  }
}

function listening(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: "127.0.0.1", port });
    sock.once("connect", () => (sock.destroy(), resolve(true)));
    sock.once("error", () => (sock.destroy(), resolve(false)));
  });
}
