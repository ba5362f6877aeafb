# shellcheck shell=bash
# Sourced by the test scripts that drive the real binary from outside (browser, generated
# clients): builds it, starts it on a free port with a fresh data directory, and installs the
# pinned npm tools. Callers set `set -euo pipefail` and a `work` directory first.

: "${work:?set work (a temporary directory) before sourcing serve-lib.sh}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# npm tools at fixed versions, per checkout (like nix/lint's target/lint-tools).
JS_TOOLS="${JS_TOOLS:-$repo/target/js-tools}"
NPM_PINS=(puppeteer-core@24.43.1 openapi-typescript@7.13.0 typescript@5.9.3 @redocly/cli@2.77.0)

# js_tools: installs NPM_PINS into $JS_TOOLS unless they are there at those versions.
js_tools() {
  local pin name version have
  for pin in "${NPM_PINS[@]}"; do
    name="${pin%@*}" version="${pin##*@}"
    have="$(node -p "require('$JS_TOOLS/node_modules/$name/package.json').version" 2>/dev/null || true)"
    if [[ "$have" != "$version" ]]; then
      echo "installing ${NPM_PINS[*]} into $JS_TOOLS" >&2
      mkdir -p "$JS_TOOLS"
      [[ -f "$JS_TOOLS/package.json" ]] || echo '{"private": true}' >"$JS_TOOLS/package.json"
      (cd "$JS_TOOLS" && npm install --no-audit --no-fund --save-exact --loglevel=error "${NPM_PINS[@]}" >&2)
      return
    fi
  done
}

# build_binary: the debug binary of this checkout (BIN overrides, e.g. a release build).
build_binary() {
  if [[ -z "${BIN:-}" ]]; then
    (cd "$repo" && cargo build --locked --quiet --bin devops-api)
    BIN="$(cd "$repo" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/devops-api"
  fi
  [[ -x "$BIN" ]] || { echo "no binary at $BIN" >&2; exit 1; }
}

# start_server [VAR=VALUE...]: starts the binary on a free port with a fresh data directory under
# $work; sets ADDR (host:port), BASE (http://ADDR), TOKEN (the bootstrap token) and SERVER_PID.
# shellcheck disable=SC2034 # BASE and TOKEN are for the caller
start_server() {
  local i
  mkdir -p "$work/data"
  env LISTEN_ADDR=127.0.0.1:0 DATA_DIR="$work/data" LOG_FORMAT=json "$@" \
    "$BIN" serve >"$work/server.out" 2>"$work/server.log" &
  SERVER_PID=$!
  for ((i = 0; i < 200; i++)); do
    ADDR="$(jq -r 'select(.message == "ready") | .addr' "$work/server.log" 2>/dev/null | head -n 1)"
    [[ -n "$ADDR" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$work/server.log" >&2; echo "the server exited" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n "$ADDR" ]] || { cat "$work/server.log" >&2; echo "the server did not log ready" >&2; exit 1; }
  BASE="http://$ADDR"
  TOKEN="$(grep -o 'dapi_[A-Za-z0-9_-]*' "$work/server.out" | head -n 1 || true)"
  [[ -n "$TOKEN" ]] || { cat "$work/server.out" >&2; echo "no bootstrap token printed" >&2; exit 1; }
}

stop_server() {
  if [[ -n "${SERVER_PID:-}" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
