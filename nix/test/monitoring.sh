#!/usr/bin/env bash
# Monitoring as code, checked against the real binary (CI: nix/test/monitoring.sh):
#   1. promtool check config / check rules / test rules on nix/deploy/monitoring/;
#   2. starts devops-api on loopback, drives a few requests, scrapes /metrics and runs
#      `promtool check metrics` on the scrape (must print nothing);
#   3. checks that every metric name in the alert rules and the Grafana dashboard is in that scrape,
#      with a negative control (a name that does not exist must fail the check).
# Installs Debian's `prometheus` (for promtool) and python3-yaml when missing (as root).
# DEVOPS_API_BIN: a built binary to use instead of `cargo build --bin devops-api`.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'monitoring.sh: %s\n' "$*" >&2; exit 1; }

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
  ((EUID == 0)) || die "missing ${need[*]} and not root: install them (apt-get install ${need[*]})"
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mon=nix/deploy/monitoring
log "promtool check config / rules / test rules"
promtool check config "$mon/prometheus.yml"
promtool check rules "$mon/alerts.yml"
promtool test rules "$mon/alerts.test.yml"
jq -e '.panels | length > 0' "$mon/dashboard.json" >/dev/null || die "dashboard.json has no panels"

bin="${DEVOPS_API_BIN:-}"
if [[ -z "$bin" ]]; then
  log "cargo build --bin devops-api"
  cargo build --quiet --bin devops-api
  bin=target/debug/devops-api
fi

tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

log "starting $bin on loopback"
"$bin" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-format json --rate-limit 0 \
  >"$tmp/stdout" 2>"$tmp/stderr" &
pid=$!
addr=
for _ in $(seq 100); do
  addr=$(jq -Rr 'fromjson? | select(.message == "ready") | .addr' "$tmp/stderr" 2>/dev/null | head -n1)
  [[ -n "$addr" ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/stderr" >&2; die "the server exited"; }
  sleep 0.1
done
[[ -n "$addr" ]] || { cat "$tmp/stderr" >&2; die "the server did not report ready"; }
token=$(grep -Eo '^  dapi_[A-Za-z0-9_-]+$' "$tmp/stdout" | tr -d ' ' | head -n1)
[[ -n "$token" ]] || die "no bootstrap token on standard output"

base="http://$addr"
auth=(-H "Authorization: Bearer $token")
id=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d '{"title":"monitoring"}' "$base/v1/tasks" | jq -r .id)
curl -fsS "${auth[@]}" "$base/v1/tasks/$id" >/dev/null
curl -fsS "${auth[@]}" "$base/v1/tasks" >/dev/null
curl -sS -o /dev/null "$base/no/such/route"
curl -sS -o /dev/null "$base/v1/tasks" # 401
curl -fsS "$base/ready" >/dev/null
curl -fsS "$base/metrics" >"$tmp/scrape.txt"

log "promtool check metrics on a live scrape ($(grep -c '^# TYPE' "$tmp/scrape.txt") families)"
lint=$(promtool check metrics <"$tmp/scrape.txt" 2>&1) || { printf '%s\n' "$lint" >&2; die "promtool check metrics failed"; }
[[ -z "$lint" ]] || { printf '%s\n' "$lint" >&2; die "promtool check metrics reported problems"; }

log "metric names of every alert and dashboard expression exist in the scrape"
python3 nix/test/promql_names.py "$tmp/scrape.txt" "$mon/alerts.yml" "$mon/dashboard.json"
# Negative control: the check must catch a name the binary does not export.
if python3 nix/test/promql_names.py "$tmp/scrape.txt" "$mon/alerts.yml" "$mon/dashboard.json" \
  'sum(rate(tasks_total[5m]))' >/dev/null 2>&1; then
  die "negative control: an unknown metric name passed the check"
fi
log "monitoring: all checks passed"
