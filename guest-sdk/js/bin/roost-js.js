#!/usr/bin/env node
// roost-js: builds a JavaScript channel plugin into a Roost component.
//
//   npx roost-js build [src/index.js] [-o plugin.wasm] [--engine quickjs|starlingmonkey]
//                      [--contract 0.2|0.1] [--kv]
//
// Steps: (1) a WIT world for this plugin (the vendored contract in ../wit,
// plus a world that imports `kv` only if the plugin asks for it: a
// component imports every interface of its world, and `kv` needs the app's
// grant); (2) one ES module bundled with rolldown from an entry that serves
// the plugin's default export through ../src/adapter.js; (3) the component,
// from componentize-js (StarlingMonkey) or componentize-qjs (QuickJS). All
// offline: nothing is downloaded (no `--aot`, whose weval binary would be).
//
// Defaults come from the plugin's package.json `"roost"` field:
// `{ "entry": "src/index.js", "output": "plugin.wasm", "engine": "quickjs",
//   "contract": "0.2", "capabilities": ["kv"] }`.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const sdk = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

// QuickJS is the default: a seventh of the size and of the compile time, a
// third of the call cost and a fifth of the memory of StarlingMonkey, whose
// heap also grows until the host's memory cap stops it.
const ENGINES = ["quickjs", "starlingmonkey"];
const CONTRACTS = ["0.2", "0.1"];

// StarlingMonkey's WASI features a channel never needs. `clocks` stays:
// without it `Date.now()` is frozen at build time (the Wizer snapshot's).
const SM_DISABLED = ["http", "fetch-event", "stdio", "random"];

function usage(message) {
  if (message) console.error(`roost-js: ${message}`);
  console.error(
    "usage: roost-js build [ENTRY] [-o OUT.wasm] [--engine quickjs|starlingmonkey] [--contract 0.2|0.1] [--kv]",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  if (command !== "build") usage(command ? `unknown command "${command}"` : "no command");
  const opts = { capabilities: [] };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    const value = () => rest[++i] ?? usage(`${arg} needs a value`);
    if (arg === "-o" || arg === "--out") opts.output = value();
    else if (arg === "--engine") opts.engine = value();
    else if (arg === "--contract") opts.contract = value();
    else if (arg === "--kv") opts.capabilities.push("kv");
    else if (arg === "-h" || arg === "--help") usage();
    else if (arg.startsWith("-")) usage(`unknown option ${arg}`);
    else if (opts.entry) usage(`one entry only (got ${opts.entry} and ${arg})`);
    else opts.entry = arg;
  }
  return opts;
}

/** The plugin's package.json "roost" field, or {} (looked up from the current directory). */
function projectConfig(dir) {
  const file = path.join(dir, "package.json");
  if (!fs.existsSync(file)) return {};
  return JSON.parse(fs.readFileSync(file, "utf8")).roost ?? {};
}

// The contract's WIT: the vendored copy, or a draft to try (ROOST_JS_WIT, a
// 0.2 channel.wit file).
const witFile = (contract) =>
  contract === "0.1" ? path.join(sdk, "wit/v0.1/channel.wit") : process.env.ROOST_JS_WIT || path.join(sdk, "wit/channel.wit");

/** Writes the WIT for this build into `dir`; returns the world's name. */
function writeWit(dir, contract, capabilities) {
  if (contract === "0.1") {
    fs.copyFileSync(witFile(contract), path.join(dir, "channel.wit"));
    return "channel";
  }
  const kv = capabilities.includes("kv");
  const world = kv ? "roost-js-kv" : "roost-js";
  const imports = ["context", "channel", "presence", "log", "timers", ...(kv ? ["kv"] : [])];
  // In the contract's own file: parsers take one package per directory and
  // refuse a second doc-commented `package` line.
  fs.writeFileSync(
    path.join(dir, "channel.wit"),
    fs.readFileSync(witFile(contract), "utf8") +
      `\n// Written by roost-js: the plugin world with only the imports this plugin uses.\n` +
      `world ${world} {\n${imports.map((i) => `  import ${i};\n`).join("")}  export handler;\n}\n`,
  );
  return world;
}

/** Bundles the plugin and the SDK into one ES module; returns its path. */
async function bundle(dir, entry, contract, engine, capabilities) {
  const { rolldown } = await import("rolldown");
  const src = (file) => path.join(sdk, "src", file);
  fs.writeFileSync(
    path.join(dir, "engine.js"),
    `export const bigints = ${engine === "starlingmonkey"};\n`,
  );
  fs.writeFileSync(
    path.join(dir, "entry.js"),
    [
      `import channel from ${JSON.stringify(entry)};`,
      `import { handlerFor } from ${JSON.stringify(src("adapter.js"))};`,
      `import { host } from "roost-guest:host";`,
      `export const handler = handlerFor(channel, host, ${JSON.stringify(contract)});`,
      "",
    ].join("\n"),
  );
  const aliases = {
    "@roost/guest": src("index.js"),
    "roost-guest:host": src(contract === "0.1" ? "host-0.1.js" : "host-0.2.js"),
    "roost-guest:kv": src(capabilities.includes("kv") ? "kv-0.2.js" : "kv-none.js"),
    "roost-guest:engine": path.join(dir, "engine.js"),
  };
  const build = await rolldown({
    input: path.join(dir, "entry.js"),
    platform: "neutral",
    logLevel: "warn",
    plugins: [
      {
        name: "roost-guest",
        resolveId(source) {
          if (source in aliases) return aliases[source];
          // The component's imports: left for the engine to bind.
          if (/^(roost|wasi):/.test(source)) return { id: source, external: true };
          return null;
        },
      },
    ],
  });
  const out = path.join(dir, "plugin.js");
  await build.write({ file: out, format: "esm" });
  await build.close();
  return out;
}

async function componentize(engine, jsPath, witDir, world) {
  if (engine === "quickjs") {
    const { componentize } = await import("componentize-qjs");
    const { component } = await componentize({
      witPath: witDir,
      jsSource: fs.readFileSync(jsPath, "utf8"),
      jsPath,
      world,
      // The host runs components without the component-model async ABI.
      sync: true,
    });
    return component;
  }
  const { componentize } = await import("@bytecodealliance/componentize-js");
  const { component } = await componentize({
    sourcePath: jsPath,
    witPath: witDir,
    worldName: world,
    disableFeatures: SM_DISABLED,
  });
  return component;
}

export async function build(opts, cwd = process.cwd()) {
  const config = projectConfig(cwd);
  const entry = path.resolve(cwd, opts.entry ?? config.entry ?? "src/index.js");
  const output = path.resolve(cwd, opts.output ?? config.output ?? "plugin.wasm");
  const contract = opts.contract ?? config.contract ?? "0.2";
  const engine = opts.engine ?? config.engine ?? ENGINES[0];
  const capabilities = [...new Set([...(config.capabilities ?? []), ...(opts.capabilities ?? [])])];
  if (!ENGINES.includes(engine)) usage(`unknown engine "${engine}" (${ENGINES.join(", ")})`);
  if (!CONTRACTS.includes(contract)) usage(`unknown contract "${contract}" (${CONTRACTS.join(", ")})`);
  if (!fs.existsSync(entry)) usage(`no entry file ${entry}`);
  const started = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "roost-js-"));
  try {
    const world = writeWit(dir, contract, capabilities);
    const js = await bundle(dir, entry, contract, engine, capabilities);
    const component = await componentize(engine, js, dir, world);
    fs.mkdirSync(path.dirname(output), { recursive: true });
    // Written whole, then renamed: a watching server never loads half a file.
    fs.writeFileSync(`${output}.tmp`, component);
    fs.renameSync(`${output}.tmp`, output);
    return { output, bytes: component.length, ms: Date.now() - started, engine, contract };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const opts = parseArgs(process.argv.slice(2));
  try {
    const done = await build(opts);
    console.log(
      `roost-js: ${path.relative(process.cwd(), done.output)} (${done.engine}, roost:channel@${done.contract}.0): ` +
        `${done.bytes} bytes in ${(done.ms / 1000).toFixed(1)} s`,
    );
  } catch (error) {
    console.error(`roost-js: build failed: ${error && error.message ? error.message : error}`);
    process.exit(1);
  }
}
