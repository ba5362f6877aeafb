#!/usr/bin/env bash
# The interactive docs in a real browser: starts the binary, then headless Debian chromium
# (driven by npm puppeteer-core, no browser download) loads /docs, sees the task operations,
# runs "Try it out" without a token (401) and after "Authorize" with one (200), with every
# request on the server's origin, other hosts unresolvable, and no page error under the docs'
# Content-Security-Policy. Saves the screenshot docs/swagger-ui.png (SCREENSHOT overrides).
# Installs chromium with apt-get and the npm tools into target/js-tools when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
# shellcheck source=nix/test/serve-lib.sh
source "$here/serve-lib.sh"
trap 'stop_server; rm -rf "$work"' EXIT
started=$SECONDS

if ! command -v chromium >/dev/null; then
  echo "installing chromium (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  }
fi
command -v node >/dev/null || { echo "docs-browser: node is needed (apt-get install nodejs npm)" >&2; exit 1; }
js_tools
build_binary
start_server RATE_LIMIT=0
echo "docs-browser: server at $BASE" >&2

JS_TOOLS="$JS_TOOLS" node "$here/docs-browser.cjs" "$BASE" "$TOKEN" "${SCREENSHOT:-$repo/docs/swagger-ui.png}"
echo "docs-browser: OK in $((SECONDS - started)) s" >&2
