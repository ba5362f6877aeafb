#!/usr/bin/env bash
# Multi-node end-to-end test: a Swarm of Docker-in-Docker nodes on this one machine (a manager and three
# workers, built offline from Debian packages), the platform stack with PostgreSQL deployed by
# nix/deploy/platform.sh and the application stack with its PostgreSQL overlay deployed with the documented
# `docker stack deploy`, both against the DinD manager through DOCKER_HOST. Under open-loop load through
# Traefik it updates, scales, loses a node, drains a node and restarts PostgreSQL; then it shows what the
# redb mode cannot do across nodes.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/multinode.sh [--rate N] [--api-image REF] [--keep] [--rebuild]

Run as root on a Debian machine whose dockerd runs or can be started (it is left running; a swarm it is part
of is not touched). Builds the DinD node image (nix/e2e/node-image.sh: debootstrap, cached by recipe), the
API image (nix/deploy/build-image.sh), Traefik (nix/e2e/traefik-image.sh), the socket-proxy stand-in
(nix/e2e/standin-images.sh) and a PostgreSQL stand-in from Debian's postgresql (nix/e2e/postgres-standin.sh);
starts four node containers on their own bridge network (mn-manager; mn-db, labelled devops.postgres; mn-w1
and mn-w2, labelled devops.api, zones a and b), `docker swarm init --dispatcher-heartbeat` + joins inside
them, loads each node's images into it, then, with DOCKER_HOST pointing at the manager:
  platform: nix/deploy/platform.sh --postgres (Traefik on the manager, PostgreSQL pinned to mn-db)
  application: docker stack deploy -c stack.yml -c nix/deploy/stack.postgres.yml (API on mn-w1 and mn-w2)
and, under open-loop load through Traefik (nix/e2e/loadgen.py; every acknowledged write read back):
  T0 the script's decisions (nix/e2e/multinode-tests.sh)
  M0 placement: API tasks in both zones, none on the manager or the database node
  M1 rolling update across nodes, 0 failed        M2 docker service scale 3 -> 6 -> 2 -> 3, 0 failed
  M3 a worker node lost (its container killed): failures only inside the bounded window, Swarm reschedules
  M4a the node back: docker service update --force spreads the tasks again, 0 failed
  M4 a node drained: its tasks move, 0 failed     M5 PostgreSQL restarted: only 503 + Retry-After, API recovers
  M6 pg_dump of the live database restores into a new database with every task
  R1 redb mode (stack.yml alone): every API task on the volume's node, none elsewhere, drain = no API
Prints a table and exits non-zero if a scenario failed. Whatever way it ends, it removes the node
containers, their network and volumes (all named mn-*, labelled devops-api.mn); a run killed outright is
cleaned up by the next one. Images stay (the node image is reused while its recipe is unchanged).

  --rate N          load in requests/s (default 200)
  --api-image REF   use this local API image (e.g. devops-api:e2e, built by nix/e2e/e2e.sh from the same tree)
                    instead of running nix/deploy/build-image.sh
  --keep            leave the nodes running (DOCKER_HOST=unix://$MN_WORK/manager/docker.sock reaches the swarm)
  --rebuild         rebuild the node image even if its recipe is unchanged
Environment: MN_WORK (default /tmp/devops-multinode), MN_HEARTBEAT (Swarm dispatcher heartbeat, default 2s),
MN_LOSS_SLACK (seconds M3 allows beyond Traefik's health check interval + timeout, default 2),
E2E_LOAD_LOCK (a file: the scenarios hold an flock on it, so load tests of other runs never overlap),
CARGO_TARGET_DIR (passed to the image build).
USAGE
}

RATE=200 KEEP=false REBUILD=false API_IMAGE_GIVEN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --api-image) API_IMAGE_GIVEN=$2; shift 2 ;;
    --keep) KEEP=true; shift ;;
    --rebuild) REBUILD=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "multinode: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "multinode: invalid --rate: $RATE" >&2; exit 2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -f stack.yml ] && [ -f nix/deploy/build-image.sh ]; then ROOT=$PWD; else ROOT=$(cd "$here/../.." && pwd); fi
W=${MN_WORK:-/tmp/devops-multinode}
HEARTBEAT=${MN_HEARTBEAT:-2s}
[[ "$HEARTBEAT" =~ ^[0-9]+s$ ]] || { echo "multinode: MN_HEARTBEAT must be whole seconds, e.g. 2s" >&2; exit 2; }
# Inside the throwaway swarm everything carries the documented default names.
STACK=devops
PSTACK=devops-platform
DOMAIN=mn.test
HTTPS_PORT=443
MARK=devops-api.mn # label of every host object this test creates (containers, network, volumes)
NET=mn-net
NODES=(manager db w1 w2)
API_NODE_IMAGE=devops-api:mn # tagged devops-api:mn-1 and :mn-2 inside the nodes (two specs, one build)
# 128 connections are plenty for 200 req/s here and open in half the time of 256 (TLS handshakes on 2 cores).
LOAD_WORKERS=${LOAD_WORKERS:-128}
export ROOT W STACK PSTACK RATE HTTPS_PORT DOMAIN LOAD_WORKERS

# shellcheck source=nix/e2e/lib.sh
. "$here/lib.sh"
# shellcheck source=nix/e2e/multinode-lib.sh
. "$here/multinode-lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts dockerd and mounts a tmpfs)"
run_started=$SECONDS
mkdir -p "$W"

# The host's engine, whatever DOCKER_HOST says (from the deploy on, DOCKER_HOST is the DinD manager).
hd() { env -u DOCKER_HOST docker "$@"; }
node_ip() { hd inspect --format "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "mn-$1"; }
in_node() { local n=$1; shift; hd exec "mn-$n" "$@"; }

remove_nodes() {
  hd ps -aq --filter "label=$MARK" 2>/dev/null | xargs -r env -u DOCKER_HOST docker rm -f > /dev/null 2>&1 || true
  hd volume ls -q --filter "label=$MARK" 2>/dev/null | xargs -r env -u DOCKER_HOST docker volume rm > /dev/null 2>&1 || true
  hd network ls -q --filter "label=$MARK" 2>/dev/null | xargs -r env -u DOCKER_HOST docker network rm > /dev/null 2>&1 || true
}
unmount_work() { # tmpfs mounts a killed image build left under $W
  local m
  findmnt -rn -o TARGET 2>/dev/null | { grep -F "$W/" || true; } | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap '' INT TERM
  local f
  for f in "$W"/*.pid; do if [ -e "$f" ]; then stop_pidfile "$f" loadgen.py; fi; done
  if [ "$KEEP" != true ]; then
    log "cleaning up (node containers, their network and volumes; images and dockerd stay)"
    remove_nodes
    unmount_work
  else
    note "--keep: DOCKER_HOST=unix://$W/manager/docker.sock docker node ls"
  fi
  if [ ${#RESULTS[@]} -gt 0 ]; then
    print_summary
    printf 'total runtime %d s (setup %s s); logs in %s\n' "$((SECONDS - run_started))" "${SETUP_S:--}" "$W"
  fi
  [ "$rc" -ne 0 ] || [ "$FAILED" -eq 0 ] || rc=1
  [ "$rc" -eq 0 ] || [ "$FAILED" -gt 0 ] || printf 'multinode: stopped before the end (exit %d)\n' "$rc"
  exit "$rc"
}
print_summary() {
  local total=${#RESULTS[@]}
  {
    printf '\n%-26s %-5s %8s %8s %8s %9s %8s  %s\n' scenario ok requests failures p50_ms p99_ms dur_s notes
    printf '%s\n' "${RESULTS[@]}"
    [ -z "${LOSS_WINDOW:-}" ] || printf '\nnode-loss window (M3): %s; bound %s s\n' "$LOSS_WINDOW" "$BOUND"
    printf '\nmultinode: %d passed, %d failed\n' "$((total - FAILED))" "$FAILED"
  } | tee "$W/summary.txt"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preflight: what an earlier run left (killed with -9, or --keep) -------------------------------------------
log "preflight: removing what an earlier run left behind"
if command -v docker > /dev/null && hd info > /dev/null 2>&1; then remove_nodes; fi
for f in "$W"/*.pid; do if [ -e "$f" ]; then stop_pidfile "$f" loadgen.py; fi; done
unmount_work
rm -rf "$W"
mkdir -p "$W/tmp" "$W/manager"
chmod 700 "$W"
export TMPDIR=$W/tmp

# --- T0: the script's own decisions -----------------------------------------------------------------------------
log "T0: nix/e2e/multinode-tests.sh (task counts, spread, node-loss verdict, ESP-less copy)"
t=$SECONDS
if "$ROOT/nix/e2e/multinode-tests.sh" > "$W/multinode-tests.log" 2>&1; then v=PASS; else v=FAIL; cat "$W/multinode-tests.log" >&2; fi
record "T0 script decisions" "$v" - "$((SECONDS - t))" "$(tail -n 1 "$W/multinode-tests.log")"

# --- machine --------------------------------------------------------------------------------------------------
log "machine: packages, dockerd"
ensure_packages
need=()
command -v debootstrap > /dev/null || need+=(debootstrap)
compgen -G '/usr/lib/postgresql/*/bin/postgres' > /dev/null || need+=(postgresql)
command -v findmnt > /dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /dev/null
fi
if ! hd info > /dev/null 2>&1; then
  log "starting dockerd"
  setsid /usr/sbin/dockerd > /var/log/dockerd.log 2>&1 < /dev/null &
  for i in $(seq 1 60); do
    hd info > /dev/null 2>&1 && break
    [ "$i" -lt 60 ] || die "dockerd did not come up (see /var/log/dockerd.log)"
    sleep 1
  done
fi

# --- images (in parallel; each writes its own log) ------------------------------------------------------------
log "images: node (debootstrap), API (build-image.sh), Traefik, socket-proxy and PostgreSQL stand-ins"
t=$SECONDS
rebuild=()
[ "$REBUILD" = false ] || rebuild=(--rebuild)
"$ROOT/nix/e2e/node-image.sh" --tag mn-node:bookworm "${rebuild[@]}" > "$W/node-image.log" 2>&1 &
pid_node=$!
if [ -n "$API_IMAGE_GIVEN" ]; then
  { hd image inspect "$API_IMAGE_GIVEN" > /dev/null && hd tag "$API_IMAGE_GIVEN" "$API_NODE_IMAGE" \
    && echo "==> built $API_NODE_IMAGE: reused $API_IMAGE_GIVEN"; } > "$W/build.log" 2>&1 &
else
  (cd "$ROOT" && nix/deploy/build-image.sh --tag "$API_NODE_IMAGE") > "$W/build.log" 2>&1 &
fi
pid_api=$!
{
  "$ROOT/nix/e2e/traefik-image.sh" --tag traefik:v3.7.15
  "$ROOT/nix/e2e/standin-images.sh" --socket-proxy mn-standin/socket-proxy:v0.4.1 --gitea mn-standin/gitea:1 \
    --runner mn-standin/runner:1 --client mn-standin/client:1
  "$ROOT/nix/e2e/postgres-standin.sh" --tag mn-postgres:debian
} > "$W/standins.log" 2>&1 &
pid_standins=$!
wait "$pid_node" || { cat "$W/node-image.log" >&2; die "node image build failed"; }
wait "$pid_api" || { tail -n 30 "$W/build.log" >&2; die "nix/deploy/build-image.sh failed"; }
wait "$pid_standins" || { tail -n 30 "$W/standins.log" >&2; die "stand-in images failed"; }
grep -hE '^(node-image|traefik-image|standin-images|postgres-standin):|^==> built' "$W/node-image.log" "$W/standins.log" "$W/build.log" \
  | sed 's/^/    /' >&2 || true
note "images ready in $((SECONDS - t)) s"

# --- nodes ----------------------------------------------------------------------------------------------------
log "nodes: ${NODES[*]} on bridge $NET, swarm init --dispatcher-heartbeat $HEARTBEAT, joins"
t=$SECONDS
# Fixed node addresses (below) need a subnet given at creation: take the one Docker picks as free.
hd network create --label "$MARK" "$NET" > /dev/null
subnet=$(hd network inspect --format '{{(index .IPAM.Config 0).Subnet}}' "$NET")
hd network rm "$NET" > /dev/null
hd network create --label "$MARK" --subnet "$subnet" "$NET" > /dev/null
declare -A IP
i=10
for n in "${NODES[@]}"; do
  i=$((i + 1))
  # A node that is stopped and started again keeps its address (the manager's is every worker's join address);
  # /run is a tmpfs, so a node killed outright leaves no pid files that would stop its dockerd from starting.
  IP[$n]=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_network(sys.argv[1]).network_address + int(sys.argv[2]))' "$subnet" "$i")
  hd volume create --label "$MARK" "mn-$n-docker" > /dev/null
  extra=()
  sockets=(--host unix:///var/run/docker.sock)
  if [ "$n" = manager ]; then
    # The host reaches the manager's engine through a socket in a bind-mounted directory (no TCP port).
    extra=(-v "$W/manager:/run/mn-host")
    sockets+=(--host unix:///run/mn-host/docker.sock)
  fi
  hd run -d --name "mn-$n" --hostname "mn-$n" --label "$MARK" --network "$NET" --ip "${IP[$n]}" \
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' --init --tmpfs /run \
    -v "mn-$n-docker:/var/lib/docker" "${extra[@]}" mn-node:bookworm "${sockets[@]}" > /dev/null
done
wait_node_engine() { # NODE
  local i
  for i in $(seq 1 60); do
    in_node "$1" docker info > /dev/null 2>&1 && return 0
    sleep 1
  done
  hd logs --tail 20 "mn-$1" >&2
  die "dockerd in mn-$1 did not come up"
}
for n in "${NODES[@]}"; do wait_node_engine "$n"; done
in_node manager docker swarm init --advertise-addr "${IP[manager]}" --dispatcher-heartbeat "$HEARTBEAT" > /dev/null
token=$(in_node manager docker swarm join-token -q worker)
for n in db w1 w2; do
  in_node "$n" docker swarm join --token "$token" --advertise-addr "${IP[$n]}" "${IP[manager]}:2377" > /dev/null &
done
wait
export DOCKER_HOST=unix://$W/manager/docker.sock
docker node update --label-add devops.traefik=true --label-add devops.gitea=true --label-add devops.runner=true mn-manager > /dev/null
docker node update --label-add devops.postgres=true mn-db > /dev/null
docker node update --label-add devops.api=true --label-add devops.zone=a mn-w1 > /dev/null
docker node update --label-add devops.api=true --label-add devops.zone=b mn-w2 > /dev/null
docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}' | sed 's/^/    /' >&2
note "swarm of ${#NODES[@]} nodes in $((SECONDS - t)) s"

log "images into the nodes (docker save | docker load, in parallel), under the names the stacks use"
t=$SECONDS
load_into() { # NODE IMAGE [TAG...]: load IMAGE and tag it TAG... inside NODE
  local n=$1 img=$2 tag
  shift 2
  hd save "$img" | hd exec -i "mn-$n" docker load -q > /dev/null
  for tag in "$@"; do in_node "$n" docker tag "$img" "$tag"; done
}
load_into manager traefik:v3.7.15 &
load_into manager mn-standin/socket-proxy:v0.4.1 tecnativa/docker-socket-proxy:v0.4.1 &
load_into db mn-postgres:debian postgres:17.6-alpine &
load_into w1 "$API_NODE_IMAGE" devops-api:mn-1 devops-api:mn-2 &
load_into w2 "$API_NODE_IMAGE" devops-api:mn-1 devops-api:mn-2 &
for job in $(jobs -p); do wait "$job" || die "loading images into the nodes failed"; done
note "loaded in $((SECONDS - t)) s"

# --- the platform, as an operator deploys it ------------------------------------------------------------------
# Encrypted overlay networks need IPsec ESP (AES-GCM) in the kernel between nodes. Where the kernel lacks it,
# the `internal` network of platform.postgres.yml is deployed without `encrypted` (the only change, checked).
deploy_dir=$ROOT/nix/deploy
if unshare --net sh -c 'ip link set lo up && ip xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x100 mode transport aead "rfc4106(gcm(aes))" 0x0102030405060708090a0b0c0d0e0f1011121314 128' 2> "$W/esp-check.log"; then
  ESP=yes
else
  ESP="no ($(head -c 60 "$W/esp-check.log"))"
  mkdir -p "$W/deploy"
  cp -a "$ROOT/nix/deploy/." "$W/deploy/"
  mn_strip_encryption "$ROOT/nix/deploy/platform.postgres.yml" "$W/deploy/platform.postgres.yml" \
    || die "cannot make the ESP-less copy of platform.postgres.yml"
  deploy_dir=$W/deploy
fi
note "IPsec ESP in this kernel: $ESP"

log "secrets, then the platform: nix/deploy/platform.sh --postgres (stack $PSTACK)"
umask 077
printf 'mn:%s\n' "$(openssl rand -hex 24)" > "$W/tokens"
cut -d: -f2 "$W/tokens" > "$W/token"
openssl rand -hex 16 > "$W/postgres-password"
printf 'postgres://devops:%s@postgres:5432/devops\n' "$(cat "$W/postgres-password")" > "$W/database-url"
htpasswd -nbB -C 10 admin "$(openssl rand -hex 12)" | sed '/^$/d' > "$W/htpasswd"
umask 022
docker secret create devops_api_tokens "$W/tokens" > /dev/null
docker secret create api_database_url "$W/database-url" > /dev/null
docker secret create postgres_password "$W/postgres-password" > /dev/null
docker secret create traefik_dashboard_users "$W/htpasswd" > /dev/null
openssl rand -hex 20 | docker secret create gitea_runner_token - > /dev/null
openssl rand -hex 20 | docker secret create gitea_deploy_runner_token - > /dev/null
# Gitea and the runners at 0 replicas (docs/platform.md, step 6: before Gitea exists); images resolve locally.
t=$SECONDS
(export ACME_EMAIL=mn@example.invalid ACME_CA_SERVER=https://127.0.0.1:9/directory DASHBOARD_SOURCE_RANGE=127.0.0.1/32 \
  GITEA_REPLICAS=0 RUNNER_REPLICAS=0 DEPLOY_RUNNER_REPLICAS=0 PLATFORM_RESOLVE_IMAGE=never
  "$deploy_dir/platform.sh" --postgres --timeout 300) > "$W/platform.log" 2>&1 \
  || { tail -n 30 "$W/platform.log" >&2; die "nix/deploy/platform.sh --postgres failed"; }
grep '^platform:   ' "$W/platform.log" >&2 || true
note "platform up in $((SECONDS - t)) s"

# --- the application in PostgreSQL mode, as docs/multinode.md says ---------------------------------------------
API_PLACEMENT='node.labels.devops.api == true'
app_deploy() { # IMAGE [VAR=VALUE...]: stack.yml + the PostgreSQL overlay
  local image=$1
  shift
  env API_IMAGE="$image" API_PLACEMENT="$API_PLACEMENT" API_RATE_LIMIT=0 API_MAX_TASKS_PER_PRINCIPAL=10000000 "$@" \
    docker stack deploy --detach=false --with-registry-auth --resolve-image never \
    -c "$ROOT/stack.yml" -c "$ROOT/nix/deploy/stack.postgres.yml" "$STACK" > "$W/stack-deploy.log" 2>&1 || {
    cat "$W/stack-deploy.log" >&2
    return 1
  }
}
log "application: docker stack deploy -c stack.yml -c nix/deploy/stack.postgres.yml $STACK (API_PLACEMENT='$API_PLACEMENT')"
t=$SECONDS
TARGET_ADDR=${IP[manager]}
export TARGET_ADDR
app_deploy devops-api:mn-1 || die "application deploy failed"
wait_api_ready 120 || die "the API did not become ready through Traefik on ${IP[manager]}:443"
note "application up in $((SECONDS - t)) s"
SETUP_S=$((SECONDS - run_started))

# --- helpers for the scenarios --------------------------------------------------------------------------------
# "mn-w1=2 mn-w2=1": running API tasks per node.
tasks_by_node() { # [SERVICE]
  docker service ps --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' "${1:-${STACK}_api}" | mn_count_by_node
}
tasks_on() { mn_count_on "$(tasks_by_node)" "$1"; } # NODE: running API tasks on NODE
load_ok() { # NAME: no failures, every acknowledged write read back, rate held
  [ "$(jget "$1" .failures)" = 0 ] && readback_ok "$1" \
    && awk -v r="$(jget "$1" .rate)" -v want="$RATE" 'BEGIN {exit !(r >= 0.95 * want)}'
}
readback_ok() { [ "$(jget "$1" .readback_missing)" = 0 ] && [ "$(jget "$1" .readback_errors)" = 0 ]; }
kinds() { jget "$1" '.failure_kinds | to_entries | map("\(.key)=\(.value)") | join(" ")'; }
ACKED=0
count_acked() { ACKED=$((ACKED + $(jget "$1" .writes_acked))); }
node_state() { docker node inspect --format '{{.Status.State}}' "$1"; }

if [ -n "${E2E_LOAD_LOCK:-}" ]; then
  log "waiting for the load lock $E2E_LOAD_LOCK"
  exec 9>> "$E2E_LOAD_LOCK"
  flock 9
fi

# --- M0: placement ----------------------------------------------------------------------------------------------
log "M0: where the tasks run"
sleep 3
m0=()
api_nodes=$(tasks_by_node)
[ "$(tasks_on mn-w1)" -ge 1 ] && [ "$(tasks_on mn-w2)" -ge 1 ] || m0+=("not-in-both-zones")
[ "$(tasks_on mn-manager)" = 0 ] && [ "$(tasks_on mn-db)" = 0 ] || m0+=("api-on-manager-or-db")
pg_node=$(tasks_by_node "${PSTACK}_postgres")
traefik_node=$(tasks_by_node "${PSTACK}_traefik")
[ "$pg_node" = mn-db=1 ] || m0+=("postgres=$pg_node")
[ "$traefik_node" = mn-manager=1 ] || m0+=("traefik=$traefik_node")
prefs=$(docker service inspect --format '{{range .Spec.TaskTemplate.Placement.Preferences}}{{.Spread.SpreadDescriptor}}{{end}}' "${STACK}_api")
[ "$prefs" = node.labels.devops.zone ] || m0+=("spread=$prefs")
if [ ${#m0[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "M0 placement" "$v" - - "api $api_nodes (spread over $prefs); postgres $pg_node; traefik $traefik_node; internal overlay encrypted: $ESP ${m0[*]}"

# --- M1: rolling update across nodes ----------------------------------------------------------------------------
log "M1: rolling update of the API across nodes under $RATE req/s"
load_start m1
t=$SECONDS
app_deploy devops-api:mn-2 || true
state=$(wait_update 300)
DUR=$((SECONDS - t))
sleep 3
load_stop m1
count_acked m1
after=$(tasks_by_node)
if [ "$state" = completed ] && load_ok m1 && [ "$(tasks_on mn-w1)" -ge 1 ] && [ "$(tasks_on mn-w2)" -ge 1 ]; then v=PASS; else v=FAIL; fi
record "M1 rolling update" "$v" m1 "$DUR" "UpdateStatus=$state, after: $after, acked $(jget m1 .writes_acked), missing $(jget m1 .readback_missing) $(kinds m1)"

# --- M2: scale up and down across nodes -------------------------------------------------------------------------
log "M2: docker service scale 3 -> 6 -> 2 -> 3 under load"
load_start m2
t=$SECONDS
docker service scale --detach=false "${STACK}_api=6" > "$W/scale.log" 2>&1 || true
at6=$(tasks_by_node)
docker service scale --detach=false "${STACK}_api=2" >> "$W/scale.log" 2>&1 || true
at2=$(tasks_by_node)
docker service scale --detach=false "${STACK}_api=3" >> "$W/scale.log" 2>&1 || true
DUR=$((SECONDS - t))
sleep 8
load_stop m2
count_acked m2
at3=$(tasks_by_node)
if load_ok m2 && mn_spread_ok "$at6" 2 mn-w1 mn-w2 && [ "$(running_tasks)" = 3 ]; then v=PASS; else v=FAIL; fi
record "M2 scale 3->6->2->3" "$v" m2 "$DUR" "6: $at6; 2: $at2; 3: $at3 $(kinds m2)"

# --- M3: a worker node lost -------------------------------------------------------------------------------------
# What bounds the failures: Traefik health-checks every task (/health, every HC_INTERVAL s, HC_TIMEOUT s timeout)
# and takes a server out of its load balancer at the first failed check, so requests go to the lost node's tasks
# for at most HC_INTERVAL + HC_TIMEOUT s after the loss (those on kept-alive connections hang, new connections
# fail to dial within the 2 s dial timeout). A failed request counts at the time it was sent. The test allows
# LOSS_SLACK s more for this loaded 2-core machine. Swarm's heartbeat does not bound the failures: the node is
# declared down after about 3 x MN_HEARTBEAT, then Swarm starts replacements on the surviving API node.
HC_INTERVAL=2 HC_TIMEOUT=1 LOSS_SLACK=${MN_LOSS_SLACK:-2}
BOUND=$((HC_INTERVAL + HC_TIMEOUT + LOSS_SLACK))
victim=mn-w1
[ "$(tasks_on mn-w1)" -ge "$(tasks_on mn-w2)" ] || victim=mn-w2
survivor=mn-w2
[ "$victim" = mn-w1 ] || survivor=mn-w1
log "M3: node $victim lost (docker kill of its container) under load"
load_start m3
sleep 3
lost=$(tasks_on "$victim")
kill_epoch=$(date +%s.%N)
hd kill "$victim" > /dev/null
down=timeout restored=timeout
for _ in $(seq 1 120); do
  sleep 0.5
  now=$(date +%s.%N)
  if [ "$down" = timeout ] && [ "$(node_state "$victim")" = down ]; then down=$(mn_seconds_between "$kill_epoch" "$now"); fi
  if [ "$down" != timeout ] && [ "$(tasks_on "$survivor")" = 3 ] && [ "$(running_tasks)" = 3 ]; then
    restored=$(mn_seconds_between "$kill_epoch" "$now")
    break
  fi
done
sleep 8 # Traefik's poll (5 s + 2 s) sees the replacements
load_stop m3
count_acked m3
kill_s=$(mn_seconds_between "$(jget m3 .start_epoch)" "$kill_epoch")
# Send times, not due times: when the machine cannot keep up, requests due before the kill go out after it. The
# first failure counts by when it failed: requests in flight at the kill were sent before it.
read -r loss_v loss_seen loss_last <<< "$(mn_loss_verdict "$kill_s" "$(jget m3 .first_failure_done_s)" "$(jget m3 .last_failure_sent_s)" "$BOUND")"
LOSS_WINDOW="$(jget m3 .failures) failed, the first ${loss_seen} s after the kill, the last sent ${loss_last} s after it"
if [ "$loss_v" = PASS ] && readback_ok m3 && [ "$restored" != timeout ]; then v=PASS; else v=FAIL; fi
record "M3 node lost" "$v" m3 "$restored" "lost $victim with $lost tasks; $LOSS_WINDOW (bound ${BOUND} s: health check ${HC_INTERVAL}+${HC_TIMEOUT} s + ${LOSS_SLACK}); node down after ${down} s (heartbeat $HEARTBEAT); 3 running on $survivor after ${restored} s; acked lost $(jget m3 .readback_missing); longest queue wait $(jget m3 .max_lag_s) s; $(kinds m3)"
log "M3: the lost node comes back (docker start)"
hd start "$victim" > /dev/null
wait_node_engine "${victim#mn-}"
for _ in $(seq 1 60); do [ "$(node_state "$victim")" = ready ] && break; sleep 1; done
[ "$(node_state "$victim")" = ready ] || die "$victim did not rejoin the swarm"

# --- M4: rebalance, then drain a node ------------------------------------------------------------------------------
# Swarm does not move tasks back to a node that returns. Draining the node that runs every API task would stop
# them all at once: tasks replacing those of a drained node start only after the old ones stopped (swarmkit's
# restart supervisor waits for the old task), so no task serves for drain + start + health check. So first a
# forced rolling update (start-first, one at a time) spreads the tasks again, as docs/multinode.md tells
# operators to do after a node is back; then the drained node's tasks stop while the other node's keep serving.
log "M4a: docker service update --force ${STACK}_api (rebalance after $victim came back) under load"
load_start m4a
t=$SECONDS
docker service update --force --detach=false "${STACK}_api" > "$W/rebalance.log" 2>&1 || true
state=$(wait_update 300)
DUR=$((SECONDS - t))
sleep 3
load_stop m4a
count_acked m4a
spread=$(tasks_by_node)
if [ "$state" = completed ] && load_ok m4a && mn_spread_ok "$spread" 1 mn-w1 mn-w2; then v=PASS; else v=FAIL; fi
record "M4a rebalance" "$v" m4a "$DUR" "UpdateStatus=$state, after: $spread $(kinds m4a)"

drained=mn-w1
[ "$(tasks_on mn-w1)" -ge "$(tasks_on mn-w2)" ] || drained=mn-w2
target=mn-w2
[ "$drained" = mn-w1 ] || target=mn-w1
log "M4: docker node update --availability drain $drained (it runs $(tasks_on "$drained") of the API tasks) under load"
before=$(tasks_by_node)
load_start m4
t=$SECONDS
docker node update --availability drain "$drained" > /dev/null
for _ in $(seq 1 120); do
  [ "$(tasks_on "$drained")" = 0 ] && [ "$(tasks_on "$target")" = 3 ] && break
  sleep 1
done
DUR=$((SECONDS - t))
sleep 14 # the drained tasks finish their 10 s drain; Traefik's poll sees the new ones
load_stop m4
count_acked m4
moved=$(tasks_by_node)
docker node update --availability active "$drained" > /dev/null
if load_ok m4 && [ "$moved" = "$target=3" ]; then v=PASS; else v=FAIL; fi
record "M4 node drained" "$v" m4 "$DUR" "drained $drained; before: $before, after: $moved $(kinds m4)"

# --- M5: PostgreSQL restarted -----------------------------------------------------------------------------------
log "M5: docker service update --force ${PSTACK}_postgres under load"
api_tasks_before=$(docker service ps -q --filter desired-state=running "${STACK}_api" | sort | paste -sd, -)
load_start m5
sleep 3
t=$SECONDS
docker service update --force --detach=false "${PSTACK}_postgres" > "$W/pg-restart.log" 2>&1 || true
pg_dur=$((SECONDS - t))
recovered=timeout
for _ in $(seq 1 120); do
  if [ "$(api_curl /ready)" = 200 ]; then recovered=$((SECONDS - t)); break; fi
  sleep 0.5
done
sleep 5
load_stop m5
count_acked m5
api_tasks_after=$(docker service ps -q --filter desired-state=running "${STACK}_api" | sort | paste -sd, -)
same=no
[ "$api_tasks_before" != "$api_tasks_after" ] || same=yes
fails=$(jget m5 .failures) clear=$(jget m5 .failures_clear_503)
if [ "$fails" = "$clear" ] && readback_ok m5 && [ "$recovered" != timeout ] && [ "$same" = yes ]; then v=PASS; else v=FAIL; fi
record "M5 PostgreSQL restart" "$v" m5 "$pg_dur" "failed $fails, of them 503+Retry-After+problem $clear, window $(jget m5 .failure_window_s)s; ready again ${recovered}s after the restart began; API tasks unchanged: $same; acked lost $(jget m5 .readback_missing) $(kinds m5)"

# --- M6: backup of the live database -----------------------------------------------------------------------------
log "M6: pg_dump -Fc of the live database, pg_restore into a new database, counts compared"
pg_cid=$(in_node db docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_postgres" | sed -n 1p)
pg() { in_node db docker exec "$pg_cid" "$@"; }
t=$SECONDS
m6=()
pg sh -c 'pg_dump -U devops -Fc devops > /tmp/devops.dump' || m6+=("pg_dump-failed")
size=$(pg sh -c 'wc -c < /tmp/devops.dump' 2>/dev/null || echo 0)
pg createdb -U devops restorecheck || m6+=("createdb-failed")
pg pg_restore -U devops -d restorecheck --no-owner /tmp/devops.dump || m6+=("pg_restore-failed")
live=$(pg psql -U devops -d devops -tAc 'SELECT count(*) FROM tasks' || echo -1)
restored_n=$(pg psql -U devops -d restorecheck -tAc 'SELECT count(*) FROM tasks' || echo -2)
pg dropdb -U devops restorecheck || true
DUR=$((SECONDS - t))
[ "$live" = "$restored_n" ] || m6+=("restored=$restored_n")
[ "$live" -ge "$ACKED" ] || m6+=("fewer-than-acked")
if [ ${#m6[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "M6 pg_dump + restore" "$v" - "$DUR" "dump $((size / 1024)) KiB, $live tasks live = $restored_n restored (>= $ACKED acknowledged by M1-M5) ${m6[*]}"

# The API's warnings and errors in PostgreSQL mode (the cause behind any 503), kept in $W: the service goes at R1.
# Read from each worker's engine, container by container (the API logs to stderr, hence 2>&1): `docker service
# logs` through the manager streams every request line of every task and did not finish in two minutes.
for n in w1 w2; do
  # shellcheck disable=SC2016 # expanded by the node's shell
  in_node "$n" sh -c 'for c in $(docker ps -aq --filter "label=com.docker.swarm.service.name=$1"); do
      docker logs "$c" 2>&1; done' sh "${STACK}_api" 2>> "$W/api-logs.err" || true
done | grep -E '"level":"(WARN|ERROR)"' > "$W/api-warnings.log" || true
note "$(wc -l < "$W/api-warnings.log") warning/error lines of the API in PostgreSQL mode ($W/api-warnings.log); most frequent causes:"
grep -oE '"cause":"[^"]{0,120}' "$W/api-warnings.log" | sed 's/[0-9a-f-]\{36\}/ID/g' | sort | uniq -c | sort -rn | sed -n 1,5p | sed 's/^/      /' >&2 || true

# --- R1: the redb mode's limit ------------------------------------------------------------------------------------
log "R1: redb mode (stack.yml alone): the API stays on the node that holds its volume"
docker stack rm "$STACK" > /dev/null
for _ in $(seq 1 60); do
  docker service inspect "${STACK}_api" > /dev/null 2>&1 || break
  sleep 1
done
docker node update --label-add devops.api-data=true mn-w1 > /dev/null
t=$SECONDS
r1=()
env API_IMAGE=devops-api:mn-2 API_RATE_LIMIT=0 docker stack deploy --detach=false --with-registry-auth \
  --resolve-image never -c "$ROOT/stack.yml" "$STACK" > "$W/redb-deploy.log" 2>&1 || r1+=("deploy-failed")
wait_api_ready 120 || r1+=("not-ready")
placed=$(tasks_by_node)
[ "$placed" = mn-w1=3 ] || r1+=("placed=$placed")
docker node update --availability drain mn-w1 > /dev/null
pending=""
for _ in $(seq 1 30); do
  sleep 1
  pending=$(docker service ps --filter desired-state=running --format '{{.CurrentState}}|{{.Error}}' "${STACK}_api" | grep -c 'Pending.*no suitable node' || true)
  [ "$(running_tasks)" = 0 ] && [ "$pending" = 3 ] && break
done
elsewhere=$(tasks_by_node)
[ -z "$elsewhere" ] && [ "$pending" = 3 ] || r1+=("after-drain: running=$elsewhere pending=$pending")
docker node update --availability active mn-w1 > /dev/null
DUR=$((SECONDS - t))
if [ ${#r1[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "R1 redb stays on its node" "$v" - "$DUR" "constraint node.labels.devops.api-data == true: $placed, mn-w2 none; mn-w1 drained: 0 running, $pending pending (no suitable node) ${r1[*]}"
