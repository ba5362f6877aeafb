# shellcheck shell=bash
# The decisions of nix/e2e/multinode.sh that need no Docker: tasks counted per node, the spread check, the
# node-loss window and its verdict, the ESP-less copy of the platform's PostgreSQL file. Sourced by
# multinode.sh; tested by nix/e2e/multinode-tests.sh.

# stdin: `docker service ps --format '{{.Node}} {{.CurrentState}}'` lines. stdout: "mn-w1=2 mn-w2=1", the
# Running tasks per node, sorted by node name; an empty line when none runs.
mn_count_by_node() {
  awk '$2 == "Running" {print $1}' | sort | uniq -c \
    | awk '{printf "%s%s=%s", (NR > 1 ? " " : ""), $2, $1} END {print ""}'
}

# mn_count_on COUNTS NODE: NODE's number in COUNTS (as mn_count_by_node prints them), 0 when absent.
mn_count_on() {
  awk -v s="$1" -v node="$2" 'BEGIN {
    n = split(s, kv, " "); c = 0
    for (i = 1; i <= n; i++) { split(kv[i], p, "="); if (p[1] == node) c = p[2] }
    print c
  }'
}

# mn_spread_ok COUNTS MIN NODE...: true when every NODE runs at least MIN tasks and no other node runs any.
mn_spread_ok() {
  local counts=$1 min=$2 node kv
  shift 2
  for node in "$@"; do
    [ "$(mn_count_on "$counts" "$node")" -ge "$min" ] || return 1
  done
  for kv in $counts; do
    case " $* " in *" ${kv%%=*} "*) ;; *) return 1 ;; esac
  done
}

# mn_seconds_between FROM TO: TO - FROM in seconds with one decimal (epoch seconds with fractions).
mn_seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f\n", b - a}'; }

# mn_loss_verdict KILL FIRST_DONE LAST_SENT BOUND: the node-loss window on the load generator's clock. KILL is
# when the node was killed, FIRST_DONE when the first failed request failed, LAST_SENT when the last failed
# request was sent ("null" when none failed), all in seconds from the start of the load. Prints "PASS|FAIL
# SEEN LAST": the first failure came SEEN s after the kill, the last failed request was sent LAST s after it
# ("- -" when none failed). PASS needs the first failure after the kill (one before it has another cause;
# requests in flight at the kill may have been sent before it) and the last one sent at most BOUND s after it.
mn_loss_verdict() {
  local kill=$1 first_done=$2 last_sent=$3 bound=$4
  if [ "$first_done" = null ] || [ -z "$first_done" ]; then
    echo "PASS - -"
    return 0
  fi
  awk -v k="$kill" -v f="$first_done" -v l="$last_sent" -v b="$bound" 'BEGIN {
    seen = f - k; last = l - k
    printf "%s %.2f %.2f\n", (seen >= 0 && last <= b) ? "PASS" : "FAIL", seen, last
  }'
}

# mn_strip_encryption IN OUT: OUT is IN without the `driver_opts: encrypted: "true"` of its one encrypted
# network (for kernels without IPsec ESP, where Docker creates the network but drops the traffic between
# nodes). Fails unless exactly that option and nothing else went.
mn_strip_encryption() {
  python3 - "$1" "$2" <<'PY'
import re, sys
src, dst = sys.argv[1], sys.argv[2]
lines = open(src, encoding="utf-8").read().split("\n")
hits = [i for i, line in enumerate(lines) if line.strip() == "driver_opts:"]
if len(hits) != 1 or not re.fullmatch(r'\s*encrypted: "true"(\s+#.*)?', lines[hits[0] + 1]):
    sys.exit(f"{src}: want exactly one 'driver_opts:' followed by 'encrypted: \"true\"'")
i = hits[0]
# driver_opts must hold nothing else: the next line after `encrypted` is back at driver_opts' indentation or less.
indent = len(lines[i]) - len(lines[i].lstrip())
rest = lines[i + 2:]
if rest and rest[0].strip() and len(rest[0]) - len(rest[0].lstrip()) > indent:
    sys.exit(f"{src}: driver_opts holds more than 'encrypted'")
del lines[i:i + 2]
open(dst, "w", encoding="utf-8").write("\n".join(lines))
PY
}
