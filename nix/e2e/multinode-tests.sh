#!/usr/bin/env bash
# Tests of nix/e2e/multinode-lib.sh, the decisions of the multi-node test that need no Docker: tasks counted
# per node from `docker service ps` lines, the spread check, the node-loss verdict, the ESP-less copy of
# platform.postgres.yml. Run by nix/e2e/multinode.sh (row T0) and on its own: nix/e2e/multinode-tests.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=nix/e2e/multinode-lib.sh
. "$here/multinode-lib.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); printf 'multinode-tests: ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'multinode-tests: FAIL %s\n' "$1"; }
# expect NAME WANT GOT
expect() { if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: want '$2', got '$3'"; fi; }
# holds NAME COMMAND...: the command succeeds; refutes NAME COMMAND...: it fails
holds() { local n=$1; shift; if "$@"; then ok "$n"; else fail "$n: expected to hold"; fi; }
refutes() { local n=$1; shift; if "$@"; then fail "$n: expected not to hold"; else ok "$n"; fi; }

# --- mn_count_by_node: only Running tasks count; nodes sorted; "Running 3 seconds ago" is one field further
ps_lines='mn-w2 Running 3 seconds ago
mn-w1 Running about a minute ago
mn-w2 Running 10 seconds ago
mn-w1 Starting 1 second ago
mn-w1 Preparing 2 seconds ago
mn-manager Shutdown 5 seconds ago'
expect "count: Running only, sorted" "mn-w1=1 mn-w2=2" "$(printf '%s\n' "$ps_lines" | mn_count_by_node)"
expect "count: nothing running" "" "$(printf 'mn-w1 Pending 2 seconds ago\n' | mn_count_by_node)"
expect "count: empty input" "" "$(printf '' | mn_count_by_node)"
expect "count: Running in another column is not Running" "" "$(printf 'mn-w1 Rejected "Running"\n' | mn_count_by_node)"
expect "count: 12 tasks on one node" "mn-w1=12" "$(for _ in $(seq 1 12); do echo 'mn-w1 Running now'; done | mn_count_by_node)"

# --- mn_count_on: a node whose name is a prefix of another's is not confused with it
expect "count_on: present" 2 "$(mn_count_on "mn-w1=1 mn-w2=2" mn-w2)"
expect "count_on: absent" 0 "$(mn_count_on "mn-w1=1 mn-w2=2" mn-db)"
expect "count_on: prefix of another name" 0 "$(mn_count_on "mn-w10=4" mn-w1)"
expect "count_on: empty counts" 0 "$(mn_count_on "" mn-w1)"

# --- mn_spread_ok COUNTS MIN NODE...
holds "spread: 3+3 at min 2" mn_spread_ok "mn-w1=3 mn-w2=3" 2 mn-w1 mn-w2
holds "spread: 2+1 at min 1" mn_spread_ok "mn-w1=2 mn-w2=1" 1 mn-w1 mn-w2
refutes "spread: 5+1 at min 2" mn_spread_ok "mn-w1=5 mn-w2=1" 2 mn-w1 mn-w2
refutes "spread: one node only" mn_spread_ok "mn-w1=6" 2 mn-w1 mn-w2
refutes "spread: a task on a node not listed" mn_spread_ok "mn-w1=2 mn-w2=2 mn-manager=1" 1 mn-w1 mn-w2
refutes "spread: nothing running" mn_spread_ok "" 1 mn-w1 mn-w2
refutes "spread: 10+1 at min 2 (no string comparison)" mn_spread_ok "mn-w1=10 mn-w2=1" 2 mn-w1 mn-w2

# --- mn_seconds_between
expect "seconds: fractions" 2.5 "$(mn_seconds_between 1764612000.250 1764612002.750)"
expect "seconds: negative" -1.0 "$(mn_seconds_between 10 9)"

# --- mn_loss_verdict KILL FIRST_DONE LAST_SENT BOUND
expect "loss: no failure" "PASS - -" "$(mn_loss_verdict 3.1 null null 5)"
expect "loss: inside the bound" "PASS 0.40 2.90" "$(mn_loss_verdict 3.1 3.5 6.0 5)"
expect "loss: last sent exactly at the bound" "PASS 0.00 5.00" "$(mn_loss_verdict 3 3 8 5)"
expect "loss: last sent past the bound" "FAIL 0.40 5.40" "$(mn_loss_verdict 3.1 3.5 8.5 5)"
expect "loss: a failure before the kill" "FAIL -1.10 0.90" "$(mn_loss_verdict 3.1 2.0 4.0 5)"
# A request in flight at the kill was sent before it and fails after it: that is the loss, not another cause.
expect "loss: in flight at the kill (sent before, failed after)" "PASS 0.20 -0.16" "$(mn_loss_verdict 10 10.2 9.84 5)"
expect "loss: window far later (a second outage)" "FAIL 20.00 21.00" "$(mn_loss_verdict 3 23 24 5)"

# --- mn_strip_encryption: on the repository's file, then on files it must refuse
src="$here/../deploy/platform.postgres.yml"
if mn_strip_encryption "$src" "$tmp/plain.yml" 2> "$tmp/err"; then
  expect "strip: exactly two lines go" 2 "$(diff "$src" "$tmp/plain.yml" | grep -c '^[<>]')"
  expect "strip: no encrypted option left" 0 "$(grep -c 'encrypted' "$tmp/plain.yml" || true)"
  expect "strip: the network stays internal" 1 "$(grep -c 'internal: true' "$tmp/plain.yml")"
else
  fail "strip: the repository's platform.postgres.yml: $(cat "$tmp/err")"
fi
printf 'networks:\n  internal:\n    driver_opts:\n      encrypted: "false"\n' > "$tmp/false.yml"
refutes "strip: refuses encrypted false" mn_strip_encryption "$tmp/false.yml" "$tmp/out.yml" 2>> "$tmp/err"
printf 'networks:\n  a:\n    driver_opts:\n      encrypted: "true"\n  b:\n    driver_opts:\n      encrypted: "true"\n' > "$tmp/two.yml"
refutes "strip: refuses two encrypted networks" mn_strip_encryption "$tmp/two.yml" "$tmp/out.yml" 2>> "$tmp/err"
printf 'networks:\n  a:\n    driver_opts:\n      encrypted: "true"\n      com.docker.network.driver.mtu: "1400"\n' > "$tmp/more.yml"
refutes "strip: refuses driver_opts with more options" mn_strip_encryption "$tmp/more.yml" "$tmp/out.yml" 2>> "$tmp/err"
printf 'networks:\n  a:\n    driver: overlay\n' > "$tmp/none.yml"
refutes "strip: refuses a file without encryption" mn_strip_encryption "$tmp/none.yml" "$tmp/out.yml" 2>> "$tmp/err"

# --- loadgen.py's failure times: M3 places failures on the load's clock by when they were sent. A server that
# answers 500 after 0.2 s to one connection at 20 requests/s falls behind, so requests go out later than due.
cat > "$tmp/slow.py" <<'PY'
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        if self.path != "/health":
            time.sleep(0.2)
        self.send_response(500 if self.path != "/health" else 200)
        self.send_header("content-length", "0")
        self.end_headers()
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
python3 "$tmp/slow.py" "$tmp/port" &
slow_pid=$!
for _ in $(seq 1 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
echo t > "$tmp/token"
if python3 "$here/loadgen.py" --url "http://127.0.0.1:$(cat "$tmp/port")" --token-file "$tmp/token" --rate 20 \
  --duration 1 --workers 1 --out "$tmp/load.json" 2> "$tmp/load.log"; then
  lg() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$tmp/load.json" "$1"; }
  expect "loadgen: every request failed" 20 "$(lg failures)"
  holds "loadgen: the last failure was sent later than due" \
    awk -v due="$(lg last_failure_s)" -v sent="$(lg last_failure_sent_s)" 'BEGIN {exit !(sent > due + 1)}'
  holds "loadgen: the first failure done after it was sent (0.2 s answer)" \
    awk -v sent="$(lg first_failure_sent_s)" -v done="$(lg first_failure_done_s)" 'BEGIN {exit !(done >= sent + 0.15)}'
  holds "loadgen: queue wait reported" awk -v lag="$(lg max_lag_s)" 'BEGIN {exit !(lag > 1)}'
  holds "loadgen: start on the wall clock" awk -v e="$(lg start_epoch)" -v now="$(date +%s)" 'BEGIN {exit !(e > now - 60 && e <= now)}'
else
  fail "loadgen.py against a slow server: $(tail -n 3 "$tmp/load.log")"
fi
kill "$slow_pid" 2> /dev/null || true
wait "$slow_pid" 2> /dev/null || true

printf 'multinode-tests: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
