#!/usr/bin/env bash
# The browser suite: the room chat page and the dashboard in Debian's headless Chromium, driven
# by playwright-core (pinned in package.json; it never downloads a browser),
# against a real Roost server process.
#
# Usage: tests/browser/run.sh [node --test args...]
#   ROOST_BIN          the roost binary (default: target/debug/roost of this repo)
#   ROOST_PLUGIN_DIR   the built sample plugins (default: plugins/target/wasm32-wasip2/release)
#   CHROMIUM           the browser (default: /usr/bin/chromium, installed with apt-get if missing)
# Screenshots go to tests/browser/artifacts/ (not committed); the README's are
# tests/browser/screenshots/chat.png and dashboard.png, refreshed by copying
# artifacts/chat.png and artifacts/dashboard.png.
set -euo pipefail

# Relative paths in the environment are taken from the caller's directory.
for var in ROOST_BIN ROOST_PLUGIN_DIR CHROMIUM; do
  if [[ -n "${!var:-}" && "${!var}" != /* ]]; then
    export "$var=$PWD/${!var}"
  fi
done

cd "$(dirname "$0")"

bin="${ROOST_BIN:-../../target/debug/roost}"
if [[ ! -x "$bin" ]]; then
  echo "tests/browser: roost binary not found at $bin (build it, or set ROOST_BIN)" >&2
  exit 1
fi

if [[ -z "${CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "tests/browser: needs Chromium at /usr/bin/chromium (Debian: apt-get install chromium), or set CHROMIUM" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.roost-lock-sha256
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund
  echo "$lock_hash" > "$stamp"
fi

exec node --test --test-concurrency=1 --test-timeout=60000 "${@:-test/}"
