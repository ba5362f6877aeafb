#!/usr/bin/env bash
# Fuzzes the API against its own OpenAPI document with schemathesis: every
# check, stateful link sequences included, authenticated as two principals.
# Starts the debug binary on a free loopback port with a throwaway data dir.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/test/fuzz-api.sh [--examples N]

Builds devops-api, starts it on 127.0.0.1 with two principals (alice, bob),
validates GET /openapi.json as OpenAPI 3.1 (openapi-spec-validator) and runs
schemathesis with all checks and at least N examples per operation (default
100) once per principal. Installs both tools from PyPI into a venv under
target/ if they are missing. Exits non-zero on any failure.
USAGE
}

examples=100
while (($#)); do
  case "$1" in
    --examples) examples="${2:?--examples needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
log() { printf '==> %s\n' "$*" >&2; }

venv=target/fuzz-venv
if [[ ! -x "$venv/bin/schemathesis" || ! -x "$venv/bin/openapi-spec-validator" ]]; then
  log "installing schemathesis and openapi-spec-validator into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis openapi-spec-validator
fi

cargo build --locked -q
work=$(mktemp -d)
server_pid=""
# shellcheck disable=SC2317,SC2329 # invoked by the EXIT trap (0.9/0.10 report SC2317, 0.11 SC2329)
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

token() { python3 -c 'import secrets; print("dapi_" + secrets.token_urlsafe(32))'; }
alice=$(token)
bob=$(token)
umask 077
printf 'alice:%s\nbob:%s\n' "$alice" "$bob" >"$work/tokens"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

LISTEN_ADDR="127.0.0.1:$port" DATA_DIR="$work/data" TOKENS_FILE="$work/tokens" \
  RATE_LIMIT=0 AUTH_FAILURE_LIMIT=0 LOG_LEVEL=warn target/debug/devops-api serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  curl -fsS "$base/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/ready" >/dev/null || { cat "$work/server.log" >&2; exit 1; }

log "validating $base/openapi.json as OpenAPI 3.1"
curl -fsS "$base/openapi.json" >"$work/openapi.json"
"$venv/bin/openapi-spec-validator" "$work/openapi.json"

status=0
for who in alice bob; do
  tok=$alice
  [[ $who == bob ]] && tok=$bob
  log "schemathesis as $who: all checks, $examples examples per operation, stateful links"
  "$venv/bin/schemathesis" --config-file nix/test/schemathesis.toml run "$base/openapi.json" \
    --checks all \
    --max-examples "$examples" \
    --header "Authorization: Bearer $tok" \
    --seed 1 \
    --suppress-health-check all \
    --no-color || status=1
done
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "the server died during fuzzing:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
if grep -q '"level":"ERROR"\|ERROR' "$work/server.log"; then
  echo "the server logged errors during fuzzing:" >&2
  grep 'ERROR' "$work/server.log" | head -20 >&2
  status=1
fi
exit "$status"
