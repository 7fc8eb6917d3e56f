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

# The same command as `npm test`, run directly so that node's summary
# (# tests / # pass / # fail ...) is the last thing printed.
exec node --test --test-concurrency=1 --test-timeout=30000 "${@:-test/}"
