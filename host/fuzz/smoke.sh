#!/usr/bin/env bash
# Fuzz smoke run: builds the four decoder fuzz targets and runs each one for
# a bounded time from its committed seed corpus (which also replays every
# regression input kept there). Exits non-zero if any target crashes or
# breaks an invariant. Installs cargo-fuzz if it is missing.
#
# Usage: host/fuzz/smoke.sh   (from anywhere)
# Env:   FUZZ_SECONDS    time per target       (default 10)
#        FUZZ_RUNS       input cap per target  (default 2000000)
#        ROOST_FUZZ_TARGET_DIR  build cache    (default ~/.cache/roost/fuzz-target)
# Long sessions: see host/fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")"

targets=(decode_v1 decode_v2_json decode_v2_binary decode_longpoll)
seconds="${FUZZ_SECONDS:-10}"
runs="${FUZZ_RUNS:-2000000}"

# cargo-fuzz drives rustc with -Z flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, so no nightly has to be installed.
export RUSTC_BOOTSTRAP=1
# A cache of its own: instrumented builds would evict the main target dir's.
export CARGO_TARGET_DIR="${ROOST_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/roost/fuzz-target}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --version '^0.13' --locked
fi

# No sanitizer: the code under test is safe Rust (the workspace forbids
# unsafe), so ASan would only slow each run down; overflow checks and debug
# assertions stay on.
cargo fuzz build --sanitizer none --debug-assertions

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" artifacts/"$target"
  dict=()
  [[ $target == decode_v2_binary ]] || dict=(-dict=json.dict)
  log="$work/$target.log"
  # New inputs go to the scratch dir, so the committed corpus stays as is.
  if "$CARGO_TARGET_DIR/$triple/release/$target" \
    "$work/$target" "corpus/$target" "${dict[@]}" \
    -max_total_time="$seconds" -runs="$runs" -max_len=4096 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "$target: ok ($(grep -Eo '^(#[0-9]+|Done [0-9]+ runs in [0-9]+ second\(s\))' "$log" | tail -1))"
  else
    failed=$((failed + 1))
    echo "$target: FAILED"
    tail -n 40 "$log"
    echo "reproduce: (cd host/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $target artifacts/$target/<file>)"
  fi
done

# Alone on the last line, in the "N passed, N failed" form test runners print.
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
