#!/usr/bin/env bash
# `redocly lint` (npm @redocly/cli, the `recommended` rules) on the OpenAPI document the real
# binary serves; any error or warning fails. Installs the npm tools into target/js-tools.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
# shellcheck source=nix/test/serve-lib.sh
source "$here/serve-lib.sh"
trap 'stop_server; rm -rf "$work"' EXIT

command -v node >/dev/null || { echo "openapi-lint: node is needed (apt-get install nodejs npm)" >&2; exit 1; }
js_tools
build_binary
start_server RATE_LIMIT=0
curl -fsS "$BASE/openapi.json" >"$work/openapi.json"
stop_server

redocly="$JS_TOOLS/node_modules/.bin/redocly"
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
  "$redocly" lint --extends=recommended --format=json "$work/openapi.json" >"$work/lint.json" 2>/dev/null || true
totals="$(jq -c '.totals' "$work/lint.json" 2>/dev/null || true)"
[[ -n "$totals" && "$totals" != null ]] || { "$redocly" lint --extends=recommended "$work/openapi.json" >&2 || true; echo "openapi-lint: redocly gave no result" >&2; exit 1; }
if [[ "$(jq '.errors + .warnings' <<<"$totals")" != 0 ]]; then
  REDOCLY_TELEMETRY=off "$redocly" lint --extends=recommended "$work/openapi.json" >&2 || true
  echo "openapi-lint: FAIL: $totals" >&2
  exit 1
fi
echo "openapi-lint: redocly lint (recommended): $totals" >&2
