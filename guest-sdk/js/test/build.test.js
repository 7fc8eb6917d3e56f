// Builds test/fixtures/echo.js with `roost-js build` for each engine and
// contract, and checks what each component imports (`jco wit`): the
// contract's interfaces, `kv` only when asked for, and no WASI the host
// does not link (no wasi:http). The 0.2 builds run with no network at all
// (`unshare -n`), which proves the toolchain downloads nothing.

import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const sdk = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const cli = path.join(sdk, "bin/roost-js.js");
const jco = path.join(sdk, "node_modules/.bin/jco");
const fixture = path.join(sdk, "test/fixtures/echo.js");
const out = fs.mkdtempSync(path.join(os.tmpdir(), "roost-js-test-"));
after(() => fs.rmSync(out, { recursive: true, force: true }));

function build(name, args, { offline = false, env = {} } = {}) {
  const output = path.join(out, `${name}.wasm`);
  const argv = [cli, "build", fixture, "-o", output, ...args];
  const [cmd, cmdArgs] = offline ? ["unshare", ["-n", process.execPath, ...argv]] : [process.execPath, argv];
  const run = spawnSync(cmd, cmdArgs, { cwd: sdk, encoding: "utf8", timeout: 120_000, env: { ...process.env, ...env } });
  assert.equal(run.status, 0, `roost-js build ${args.join(" ")} failed:\n${run.stdout}\n${run.stderr}`);
  return { output, stdout: run.stdout };
}

/** The component's imports and exports, as `jco wit` prints them. */
function surface(file) {
  const wit = execFileSync(jco, ["wit", file], { encoding: "utf8" });
  const names = (kind) => [...wit.matchAll(new RegExp(`^\\s*${kind} ([^;:]+:[^;@]+)(@[^;]+)?;`, "gm"))].map((m) => m[1]);
  return { imports: names("import"), exports: names("export") };
}

const canUnshare = spawnSync("unshare", ["-n", "true"]).status === 0;

describe("roost-js build", () => {
  it("QuickJS (the default), 0.2, offline: the plugin's interfaces, no kv, no wasi:http", { skip: !canUnshare && "unshare -n is not permitted here" }, () => {
    const qjs = build("qjs", [], { offline: true });
    assert.match(qjs.stdout, /\(quickjs, roost:channel@0\.2\.0\)/);
    const { imports, exports } = surface(qjs.output);
    assert.ok(exports.includes("roost:channel/handler"), `${exports}`);
    for (const i of ["roost:channel/context", "roost:channel/channel", "roost:channel/presence", "roost:channel/log", "roost:channel/timers"]) {
      assert.ok(imports.includes(i), `imports ${i}: ${imports}`);
    }
    assert.ok(!imports.includes("roost:channel/kv"), `no kv without --kv: ${imports}`);
    assert.ok(!imports.some((i) => i.startsWith("wasi:http")), `${imports}`);
  });

  it("StarlingMonkey, 0.2, offline: no WASI but the clocks and what they pull in", { skip: !canUnshare && "unshare -n is not permitted here" }, () => {
    const { imports, exports } = surface(build("sm", ["--engine", "starlingmonkey"], { offline: true }).output);
    assert.deepEqual(exports, ["roost:channel/handler"]);
    assert.ok(imports.includes("roost:channel/context") && !imports.includes("roost:channel/kv"), `${imports}`);
    assert.ok(imports.includes("wasi:clocks/wall-clock"), "Date.now() needs the wall clock");
    assert.deepEqual(
      imports.filter((i) => i.startsWith("wasi:") && !/^wasi:(clocks|io)\//.test(i) && i !== "wasi:cli/stderr"),
      [],
      `no other WASI: ${imports}`,
    );
  });

  it("--kv adds the kv import", () => {
    const { imports } = surface(build("qjs-kv", ["--kv"]).output);
    assert.ok(imports.includes("roost:channel/kv"), `${imports}`);
  });

  it("0.1 builds import the one host interface", () => {
    const v1 = build("qjs-01", ["--contract", "0.1"]);
    assert.match(v1.stdout, /\(quickjs, roost:channel@0\.1\.0\)/);
    assert.ok(surface(v1.output).imports.includes("roost:channel/host"));
  });

  it("refuses an unknown engine with a usage message", () => {
    const run = spawnSync(process.execPath, [cli, "build", fixture, "--engine", "v8"], { encoding: "utf8" });
    assert.equal(run.status, 2);
    assert.match(run.stderr, /unknown engine "v8"/);
  });
});
