#!/usr/bin/env bash
# Clients that nobody here wrote, generated from the document the real binary serves:
#   - Python: PyPI openapi-python-client, in a venv under target/py-tools;
#   - TypeScript: npm openapi-typescript types, compiled with `tsc --strict`, run with node.
# Each runs nix/test/clients/scenario.{py,ts} against its own fresh server (RATE_LIMIT=20, so
# the 429 step is reached quickly): create (with Idempotency-Key and its replay), conditional
# GET (304 + ETag), PATCH with If-Match, a stale If-Match (412 problem), paging through a list
# with next_cursor, and a 429 whose Retry-After it waits out.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
# shellcheck source=nix/test/serve-lib.sh
source "$here/serve-lib.sh"
trap 'stop_server; rm -rf "$work"' EXIT
started=$SECONDS
PY_TOOLS="${PY_TOOLS:-$repo/target/py-tools}"
PY_PIN="openapi-python-client==0.29.1"

command -v node >/dev/null || { echo "clients: node is needed (apt-get install nodejs npm)" >&2; exit 1; }
js_tools
have="$("$PY_TOOLS/bin/pip" show openapi-python-client 2>/dev/null || true)"
if ! grep -qx "Version: ${PY_PIN#*==}" <<<"$have"; then
  echo "installing $PY_PIN into $PY_TOOLS" >&2
  python3 -m venv "$PY_TOOLS"
  "$PY_TOOLS/bin/pip" install --quiet --disable-pip-version-check "$PY_PIN"
fi
build_binary

# Python
start_server RATE_LIMIT=20
curl -fsS "$BASE/openapi.json" >"$work/openapi.json"
printf 'post_hooks: []\npackage_name_override: devops_api_client\n' >"$work/gen.yaml"
"$PY_TOOLS/bin/openapi-python-client" generate --path "$work/openapi.json" --config "$work/gen.yaml" \
  --meta none --output-path "$work/py/devops_api_client" >"$work/py-gen.log" 2>&1 \
  || { cat "$work/py-gen.log" >&2; echo "clients: openapi-python-client failed" >&2; exit 1; }
if grep -q -i 'warning' "$work/py-gen.log"; then
  cat "$work/py-gen.log" >&2
  echo "clients: openapi-python-client warned about the document" >&2
  exit 1
fi
PYTHONPATH="$work/py" "$PY_TOOLS/bin/python" "$here/clients/scenario.py" "$BASE" "$TOKEN"
stop_server

# TypeScript
rm -rf "$work/data"
start_server RATE_LIMIT=20
mkdir -p "$work/ts"
cp "$here/clients/scenario.ts" "$here/clients/tsconfig.json" "$work/ts/"
"$JS_TOOLS/node_modules/.bin/openapi-typescript" "$BASE/openapi.json" -o "$work/ts/schema.d.ts" >"$work/ts-gen.log" 2>&1 \
  || { cat "$work/ts-gen.log" >&2; echo "clients: openapi-typescript failed" >&2; exit 1; }
(cd "$work/ts" && "$JS_TOOLS/node_modules/.bin/tsc" --strict -p tsconfig.json) \
  || { echo "clients: tsc --strict failed" >&2; exit 1; }
node "$work/ts/out/scenario.js" "$BASE" "$TOKEN"
stop_server
echo "clients: OK in $((SECONDS - started)) s" >&2
