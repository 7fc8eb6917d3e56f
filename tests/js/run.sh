#!/usr/bin/env bash
# The JS client suite: the official `phoenix` npm client (pinned in
# package.json) against a real Roost server process, over WebSocket and
# long-poll.
#
# Usage: tests/js/run.sh [node --test args...]
#   ROOST_BIN          the roost binary (default: target/debug/roost of this repo)
#   ROOST_PLUGIN_DIR   the built sample plugins (default: plugins/target/wasm32-wasip2/release)
#   ROOST_JS_TRACE=1   print the client trace of passing tests too
# Needs Node >= 20 and npm. Installs node_modules with `npm ci` when missing or
# when package-lock.json changed since the last install.
set -euo pipefail

# Relative paths in the environment are taken from the caller's directory.
for var in ROOST_BIN ROOST_PLUGIN_DIR; do
  if [[ -n "${!var:-}" && "${!var}" != /* ]]; then
    export "$var=$PWD/${!var}"
  fi
done

cd "$(dirname "$0")"

bin="${ROOST_BIN:-../../target/debug/roost}"
if [[ ! -x "$bin" ]]; then
  echo "tests/js: roost binary not found at $bin (build it, or set ROOST_BIN)" >&2
  exit 1
fi

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.roost-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi

# The JS plugins the suite routes (lib/server.js), built with the JS SDK
# (roost:channel@0.2.0, the default engine). Rebuilt only when the SDK or a
# plugin source is newer.
js_out="$PWD/.js-plugins"
sdk=../../guest-sdk/js
( cd "$sdk" && stamp=node_modules/.roost-lock-sha256 && hash="$(sha256sum package-lock.json | cut -d' ' -f1)" &&
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$hash" ]]; then npm ci --no-audit --no-fund && echo "$hash" > "$stamp"; fi )
build_js() { # build_js SOURCE OUTPUT [roost-js options]
  local out="$js_out/$2"
  if [[ -f "$out" && -z "$(find "$1" "$sdk/src" "$sdk/bin" "$sdk/wit" -newer "$out" -print -quit)" ]]; then return; fi
  node "$sdk/bin/roost-js.js" build "$1" -o "$out" "${@:3}"
}
build_js ../../plugins/js/room-chat/src/index.js room_chat_js.wasm --kv
build_js "$sdk/test/fixtures/fixture.js" fixture_js.wasm --kv
export ROOST_JS_PLUGIN_DIR="$js_out"

# The same command as `npm test`, run directly so that node's summary
# (# tests / # pass / # fail ...) is the last thing printed.
exec node --test --test-concurrency=1 --test-timeout=30000 "${@:-test/}"
