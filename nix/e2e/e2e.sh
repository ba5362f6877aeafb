#!/usr/bin/env bash
# End-to-end test of the platform on this machine: a real single-node swarm, the platform stack deployed the
# way an operator does (nix/deploy/platform.sh: socket proxy, real Traefik, Gitea and runner stand-ins), the
# application stack.yml with the real API image, a loopback registry and sshd, and the pipeline scripts (push,
# deploy, rollback) exactly as the Gitea workflows call them. Every request goes to this machine's loopback.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/e2e.sh [--rate N] [--keep]

Run as root on a Debian machine (CI runs it from .ci/run). It installs what is missing (docker.io,
docker-registry, skopeo, openssh-server, haproxy, busybox-static, ...), starts dockerd if needed, and turns
this machine into a single-node swarm (left running afterwards), then:
  T0 input tests of the pipeline scripts (nix/e2e/script-tests.sh)
  B0 build-image.sh on a fresh rustup without the musl target (nix/e2e/fresh-toolchain.sh)
  builds the API image (nix/deploy/build-image.sh), a Traefik image (nix/e2e/traefik-image.sh) and stand-ins
  for the socket proxy, Gitea and the runners (nix/e2e/standin-images.sh), starts a registry on
  127.0.0.1:5000 and sshd on 127.0.0.1:$E2E_SSH_PORT (throwaway keys, pinned host key),
  B2 pushes with skopeo where /etc/containers does not exist (as in the Nix job image),
  deploys the platform with nix/deploy/platform.sh and the application stack.yml, and runs under open-loop
  load (nix/e2e/loadgen.py):
    S1 endpoints, TLS, redirect, /metrics not routed     S2 rolling update of 3 replicas, 0 failures
    S2c control: drain 0 + Traefik's default 15 s poll + no retry must show failures
    S3 scale 3 -> 1 -> 3, 0 failures   S4 broken image rolls back by itself, 0 failures
    S5 kill -9 of a task: failures only within the window   S6 docker inspect: user, read-only, caps, limits
    PL platform: socket proxy answers only its read-only subset, dashboard by address + bcrypt password,
       runner configs mounted, Gitea route, encrypted overlay
    P0/P1 push.sh + deploy.sh of a good image, 0 failures, push-to-verified time
    P2 broken image: deploy.sh fails, old image keeps serving   P3 wrong pinned host key: refused
    P4 rollback.sh to the first SHA   P5 rollback.sh without SHA, registry login set
    P6 rollback.sh of a SHA the registry lacks: refused   P7 the platform's tasks are untouched by P0-P6
Prints a summary table; exits non-zero if any scenario failed. Whatever way it ends (failure, Ctrl-C,
SIGTERM), it removes the stacks, secrets, configs, volumes, registry and sshd it started; a run killed
outright is cleaned up by the next run before it starts. dockerd and the swarm stay; logs stay in E2E_WORK.

  --rate N   load in requests/s (default 200)
  --keep     leave the stacks, registry and sshd running (for debugging)
Environment: E2E_WORK (default /tmp/devops-e2e), E2E_STACK (default e2e; the platform stack is
E2E_STACK-platform), E2E_HTTP_PORT (18080), E2E_HTTPS_PORT (18443), E2E_SSH_PORT (2222), CARGO_TARGET_DIR
(passed to the image build).
USAGE
}

RATE=200 KEEP=false
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --keep) KEEP=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "e2e: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The checkout: the working directory when run as a flake app (scripts live in the store), else nix/..
if [ -f stack.yml ] && [ -f nix/deploy/build-image.sh ]; then ROOT=$PWD; else ROOT=$(cd "$here/../.." && pwd); fi
W=${E2E_WORK:-/tmp/devops-e2e}
STACK=${E2E_STACK:-e2e}
PSTACK=$STACK-platform
HTTP_PORT=${E2E_HTTP_PORT:-18080}
HTTPS_PORT=${E2E_HTTPS_PORT:-18443}
SSH_PORT=${E2E_SSH_PORT:-2222}
REG=127.0.0.1:5000
DOMAIN=e2e.test
export ROOT W STACK PSTACK RATE HTTPS_PORT SSH_PORT DOMAIN

# shellcheck source=nix/e2e/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts dockerd and sshd)"
run_started=$SECONDS
[ -d "$W" ] || mkdir -p "$W"

cleanup() {
  local rc=$?
  trap '' INT TERM
  stop_recorded_processes_loads
  if [ "$KEEP" != true ]; then
    log "cleaning up (stacks, secrets, configs, volumes, registry, sshd; dockerd and the swarm stay)"
    remove_docker_objects
    stop_recorded_processes
  fi
  if [ ${#RESULTS[@]} -gt 0 ]; then
    print_summary
    printf 'total runtime %d s; logs in %s\n' "$((SECONDS - run_started))" "$W"
  fi
  [ "$rc" -ne 0 ] || [ "$FAILED" -eq 0 ] || rc=1
  [ "$rc" -eq 0 ] || [ "$FAILED" -gt 0 ] || printf 'e2e: stopped before the end (exit %d)\n' "$rc"
  exit "$rc"
}
# Load generators only (for --keep, which leaves the services running).
stop_recorded_processes_loads() {
  local f
  for f in "$W"/*.pid; do
    [ -e "$f" ] || continue
    case "$f" in */registry.pid) ;; *) stop_pidfile "$f" loadgen.py ;; esac
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preflight: what an earlier run left (killed with -9, or --keep) -------------------------------------------
log "preflight: stopping what an earlier run left behind"
command -v docker >/dev/null && docker info >/dev/null 2>&1 && remove_docker_objects
stop_recorded_processes
rm -rf "$W"
mkdir -p "$W/tmp"
chmod 700 "$W"
# The scripts' own temporary directories (a whole toolchain for B0) go under $W: a run killed outright
# leaves them where the next run's preflight removes them.
export TMPDIR=$W/tmp

# --- machine --------------------------------------------------------------------------------------------------
log "machine: packages, dockerd, swarm, registry, sshd"
ensure_packages
ensure_dockerd
start_registry
start_sshd
note "docker $(docker version --format '{{.Server.Version}}') swarm $(docker info --format '{{.Swarm.LocalNodeState}}')"

# --- T0, B0: the scripts alone, and the image build on a fresh toolchain --------------------------------------
log "T0: input handling of deploy.sh, rollback.sh, push.sh (nix/e2e/script-tests.sh)"
t=$SECONDS
rc=0
"$ROOT/nix/e2e/script-tests.sh" > "$W/script-tests.log" 2>&1 || rc=$?
sed 's/^/    /' "$W/script-tests.log" >&2
if [ "$rc" = 0 ]; then v=PASS; else v=FAIL; fi
record "T0 script inputs" "$v" - "$((SECONDS - t))" "$(tail -n 1 "$W/script-tests.log")"

log "B0: build-image.sh with a fresh rustup that lacks the musl target (nix/e2e/fresh-toolchain.sh)"
t=$SECONDS
rc=0
"$ROOT/nix/e2e/fresh-toolchain.sh" > "$W/fresh-toolchain.log" 2>&1 || rc=$?
grep '^fresh-toolchain:' "$W/fresh-toolchain.log" | sed 's/^/    /' >&2 || true
if [ "$rc" = 0 ]; then v=PASS; else v=FAIL; fi
record "B0 fresh toolchain build" "$v" - "$((SECONDS - t))" "fresh rustup, host target only: $(grep -q 'rust target .* missing for toolchain' "$W/fresh-toolchain.log" && echo 'build-image.sh ran rustup target add' || echo 'no target added'), image runs: $(grep -q '^fresh-toolchain: OK' "$W/fresh-toolchain.log" && echo yes || echo no)"

# --- secrets (Docker secrets are immutable: unique names per run) ---------------------------------------------
suffix=$(date +%s)
umask 077
printf 'e2e:%s\n' "$(openssl rand -hex 24)" > "$W/tokens"
cut -d: -f2 "$W/tokens" > "$W/token"
openssl rand -hex 12 > "$W/dashboard-password"
htpasswd -nbB -C 10 admin "$(cat "$W/dashboard-password")" | sed '/^$/d' > "$W/htpasswd"
openssl rand -hex 20 > "$W/runner-token"
openssl rand -hex 20 > "$W/deploy-runner-token"
umask 022
export API_TOKENS_SECRET=${STACK}_api_tokens_$suffix TRAEFIK_USERS_SECRET=${PSTACK}_dashboard_users_$suffix \
  RUNNER_TOKEN_SECRET=${PSTACK}_runner_token_$suffix DEPLOY_RUNNER_TOKEN_SECRET=${PSTACK}_deploy_runner_token_$suffix
docker secret create "$API_TOKENS_SECRET" "$W/tokens" >/dev/null
docker secret create "$TRAEFIK_USERS_SECRET" "$W/htpasswd" >/dev/null
docker secret create "$RUNNER_TOKEN_SECRET" "$W/runner-token" >/dev/null
docker secret create "$DEPLOY_RUNNER_TOKEN_SECRET" "$W/deploy-runner-token" >/dev/null

# --- images ---------------------------------------------------------------------------------------------------
log "building the API image (nix/deploy/build-image.sh), Traefik (nix/e2e/traefik-image.sh), stand-ins"
t=$SECONDS
(cd "$ROOT" && nix/deploy/build-image.sh --tag devops-api:e2e --out "$W/api.tar") > "$W/build.log" 2>&1 \
  || { tail -n 30 "$W/build.log" >&2; die "nix/deploy/build-image.sh failed"; }
grep -E '^==> (rust target|built)' "$W/build.log" | sed 's/^/    /' >&2 || true
(cd "$ROOT" && nix/deploy/build-image.sh --tag devops-api:e2e-broken --healthcheck-url http://127.0.0.1:9/ready \
  --out "$W/api-broken.tar") >> "$W/build.log" 2>&1 || { tail -n 30 "$W/build.log" >&2; die "broken image build failed"; }
note "API images built in $((SECONDS - t)) s ($(du -h "$W/api.tar" | cut -f1) archive)"
"$ROOT/nix/e2e/traefik-image.sh" --tag traefik:v3.7.15 >&2
"$ROOT/nix/e2e/standin-images.sh" --socket-proxy tecnativa/docker-socket-proxy:v0.4.1 \
  --gitea e2e-standin/gitea:1.26.4 --runner e2e-standin/act_runner:0.6.1 --client e2e-standin/client:1 \
  2>&1 | grep '^standin-images' >&2
for img in traefik:v3.7.15 tecnativa/docker-socket-proxy:v0.4.1 e2e-standin/gitea:1.26.4 e2e-standin/act_runner:0.6.1; do
  docker tag "$img" "$REG/$img"
  docker push -q "$REG/$img" >/dev/null
done

# --- B2: pushes where /etc/containers does not exist ----------------------------------------------------------
log "B2: push.sh where /etc/containers does not exist (as in the nixos/nix job image)"
push_e2e() { # ARCHIVE TAG
  no_etc_containers "$ROOT/nix/deploy/push.sh" --archive "$1" --image "$REG/devops-api" --tag "$2" > /dev/null 2>> "$W/push.log"
}
rc=0
for tag in e2e-1 e2e-2 e2e-3; do push_e2e "$W/api.tar" "$tag" || rc=$?; done
push_e2e "$W/api-broken.tar" e2e-broken || rc=$?
# Control: skopeo without --policy in the same environment must fail, or the environment proves nothing.
control=0
no_etc_containers skopeo copy --quiet --dest-tls-verify=false "docker-archive:$W/api.tar" \
  "docker://$REG/devops-api:policy-control" > "$W/policy-control.log" 2>&1 || control=$?
if [ "$rc" = 0 ] && [ "$control" != 0 ] && grep -qi 'policy' "$W/policy-control.log"; then v=PASS; else v=FAIL; fi
record "B2 push w/o /etc/containers" "$v" - - "push.sh exit $rc; control without --policy: exit $control ($(grep -oi 'error loading trust policy[^:]*' "$W/policy-control.log" | head -n1))"
[ "$rc" = 0 ] || die "push.sh failed where /etc/containers does not exist (see $W/push.log)"

# --- the platform, as an operator deploys it ------------------------------------------------------------------
gw_subnet=$(docker network inspect docker_gwbridge --format '{{(index .IPAM.Config 0).Subnet}}')
export DOMAIN ACME_EMAIL=e2e@example.invalid ACME_CA_SERVER=https://127.0.0.1:9/directory \
  HTTP_PORT HTTPS_PORT PUBLIC_NETWORK=$STACK-public PLATFORM_STACK=$PSTACK \
  DASHBOARD_SOURCE_RANGE="$gw_subnet,127.0.0.1/32" \
  TRAEFIK_IMAGE=$REG/traefik:v3.7.15 SOCKET_PROXY_IMAGE=$REG/tecnativa/docker-socket-proxy:v0.4.1 \
  GITEA_IMAGE=$REG/e2e-standin/gitea:1.26.4 RUNNER_IMAGE=$REG/e2e-standin/act_runner:0.6.1 \
  API_REPLICAS=3 API_RATE_LIMIT=0 API_MAX_TASKS_PER_PRINCIPAL=10000000
platform_deploy() { # [VAR=VALUE...]: nix/deploy/platform.sh, as docs/platform.md says
  env "$@" "$ROOT/nix/deploy/platform.sh" > "$W/platform.log" 2>&1 || { tail -n 30 "$W/platform.log" >&2; return 1; }
}
log "platform: nix/deploy/platform.sh (stack $PSTACK), dashboard allowed from $DASHBOARD_SOURCE_RANGE"
(cd "$ROOT/nix/deploy" && API_IMAGE=x RUNNER_UNTRUSTED_CONFIG_HASH=x RUNNER_DEPLOY_CONFIG_HASH=x \
  docker stack config -c platform.yml -c platform.postgres.yml > /dev/null)
API_IMAGE=x API_PLACEMENT="node.role == worker" docker stack config -c "$ROOT/stack.yml" -c "$ROOT/nix/deploy/stack.postgres.yml" > /dev/null
t=$SECONDS
platform_deploy || die "nix/deploy/platform.sh failed"
grep '^platform:   ' "$W/platform.log" >&2 || true
note "platform up in $((SECONDS - t)) s"

log "application: docker stack deploy -c stack.yml (stack $STACK)"
API_IMAGE=x docker stack config -c "$ROOT/stack.yml" > /dev/null
t=$SECONDS
stack_deploy "$REG/devops-api:e2e-1" || die "stack deploy failed"
wait_api_ready 120 || die "the API did not become ready through Traefik (see docker service ps ${STACK}_api)"
note "application up in $((SECONDS - t)) s"
sleep 3

# --- S1: endpoints through Traefik ----------------------------------------------------------------------------
log "S1: endpoints, auth, /metrics, redirect, TLS"
s1=()
[ "$(api_curl /health)" = 200 ] || s1+=("health")
[ "$(api_curl /ready)" = 200 ] || s1+=("ready")
[ "$(api_curl /v1/tasks)" = 401 ] || s1+=("no-token-not-401")
printf 'Authorization: Bearer %s\n' "$(cat "$W/token")" > "$W/auth-header"
code=$(api_curl /v1/tasks -H @"$W/auth-header" -H 'Content-Type: application/json' --data '{"title":"e2e"}')
[ "$code" = 201 ] || s1+=("post=$code")
metrics=$(api_curl /metrics)
[ "$metrics" != 200 ] || s1+=("metrics-routed")
redirect=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: api.$DOMAIN" "http://127.0.0.1:$HTTP_PORT/health" || true)
case "$redirect" in 301|302|307|308) ;; *) s1+=("redirect=$redirect") ;; esac
curl -sk -D "$W/headers" -o /dev/null --connect-to "api.$DOMAIN:443:127.0.0.1:$HTTPS_PORT" "https://api.$DOMAIN/health" || true
grep -qi '^strict-transport-security:' "$W/headers" || s1+=("no-hsts")
# SECLEVEL=0 lets the client offer TLS 1.1, so a refusal is the server's.
tls_ok() { echo | timeout 10 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "api.$DOMAIN" "$@" 2>/dev/null | grep -q '^New, TLSv1'; }
if tls_ok -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'; then s1+=("tls1.1-accepted"); fi
tls_ok -tls1_2 || s1+=("tls1.2-refused")
# /metrics is served on the metrics port inside the network: reach one task over docker_gwbridge.
cid=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" | head -n1)
gw=$(docker network inspect docker_gwbridge --format '{{range $id, $c := .Containers}}{{$id}} {{$c.IPv4Address}}{{"\n"}}{{end}}' \
  | awk -v id="$cid" 'index($1, id) == 1 {sub("/.*", "", $2); print $2}')
internal=$( [ -n "$gw" ] && curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$gw:9090/metrics" || echo n/a)
if [ ${#s1[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "S1 endpoints+TLS" "$v" - - "metrics via Traefik=$metrics, on :9090 in-network=$internal, http->$redirect, TLS1.1 refused ${s1[*]}"

# --- S2: rolling update under load ----------------------------------------------------------------------------
load_ok() { # NAME: no failures, every acknowledged write read back, rate held
  [ "$(jget "$1" .failures)" = 0 ] && [ "$(jget "$1" .readback_missing)" = 0 ] \
    && [ "$(jget "$1" .readback_errors)" = 0 ] \
    && awk -v r="$(jget "$1" .rate)" -v want="$RATE" 'BEGIN {exit !(r >= 0.95 * want)}'
}
rollout() { # NAME IMAGE [VAR=VALUE...]: deploy under load; sets DUR and STATE
  local name=$1 image=$2
  shift 2
  load_start "$name"
  local t=$SECONDS
  stack_deploy "$image" "$@" || true
  STATE=$(wait_update 300)
  DUR=$((SECONDS - t))
  sleep 3
  load_stop "$name"
}

log "S2: rolling update of 3 replicas under $RATE req/s"
rollout s2 "$REG/devops-api:e2e-2"
if [ "$STATE" = completed ] && load_ok s2; then v=PASS; else v=FAIL; fi
record "S2 rolling update" "$v" s2 "$DUR" "UpdateStatus=$STATE, writes acked $(jget s2 .writes_acked), missing $(jget s2 .readback_missing)"

# --- S2c: control without the protections --------------------------------------------------------------------
log "S2c: control rollout with drain 0, Traefik's default 15 s poll, no retry (must show failures)"
# Traefik's poll is a platform setting: the operator's command changes it, and changes it back below.
platform_deploy TRAEFIK_REFRESH_SECONDS=15 || die "platform redeploy with a 15 s poll failed"
control=(API_DRAIN_SECONDS=0 API_RETRY_ATTEMPTS=1)
stack_deploy "$REG/devops-api:e2e-2" "${control[@]}" || true
wait_update 300 >/dev/null
wait_api_ready 120 || true
sleep 20 # let Traefik's slower poll see the settled tasks
rollout s2c "$REG/devops-api:e2e-3" "${control[@]}"
if [ "$(jget s2c .failures)" -gt 0 ]; then v=PASS; else v=FAIL; fi
record "S2c control (no drain)" "$v" s2c "$DUR" "failures expected: $(jget s2c '.failure_kinds | to_entries | map("\(.key)=\(.value)") | join(" ")')"
log "restoring drain, poll and retry"
platform_deploy || die "platform redeploy (restore) failed"
stack_deploy "$REG/devops-api:e2e-3" || true
wait_update 300 >/dev/null
wait_api_ready 120 || die "API not ready after restoring the configuration"
sleep 8

# --- S3: scale under load -------------------------------------------------------------------------------------
log "S3: docker service scale 3 -> 1 -> 3 under load"
load_start s3
t=$SECONDS
docker service scale --detach=false "${STACK}_api=1" > "$W/scale.log" 2>&1 || true
sleep 8
docker service scale --detach=false "${STACK}_api=3" >> "$W/scale.log" 2>&1 || true
sleep 8
DUR=$((SECONDS - t))
load_stop s3
if load_ok s3 && [ "$(running_tasks)" = 3 ]; then v=PASS; else v=FAIL; fi
record "S3 scale 3->1->3" "$v" s3 "$DUR" "running after: $(running_tasks)"

# --- S4: automatic rollback of a broken image -----------------------------------------------------------------
log "S4: an image whose healthcheck fails rolls back by itself"
rollout s4 "$REG/devops-api:e2e-broken"
img=$(svc_field '{{.Spec.TaskTemplate.ContainerSpec.Image}}')
case "$img" in "$REG/devops-api:e2e-3"*) back=yes ;; *) back=no ;; esac
if [ "$STATE" = rollback_completed ] && [ "$back" = yes ] && load_ok s4; then v=PASS; else v=FAIL; fi
record "S4 auto rollback" "$v" s4 "$DUR" "UpdateStatus=$STATE, back on previous image: $back"

# --- S5: kill -9 one task -------------------------------------------------------------------------------------
log "S5: kill -9 one API task under load"
load_start s5
sleep 5
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" | head -n1)
victim_task=$(docker inspect --format '{{index .Config.Labels "com.docker.swarm.task.id"}}' "$victim")
t=$SECONDS
docker kill --signal KILL "$victim" > /dev/null
replaced=timeout
for _ in $(seq 1 60); do
  sleep 1
  ids=$(docker service ps -q --filter desired-state=running "${STACK}_api")
  if [ "$(running_tasks)" = 3 ] && ! grep -q "^${victim_task:0:12}" <<<"$ids"; then replaced=$((SECONDS - t)); break; fi
done
sleep 10
load_stop s5
window=$(jget s5 .failure_window_s)
# Window = span of the send times of failed requests. Documented bound: Traefik's health check (every 2 s,
# 1 s timeout) marks the dead task down; requests already sent to it fail or are retried after the 2 s dial
# timeout; Swarm's replacement joins at the next poll (5 s + 2 s).
if awk -v w="$window" 'BEGIN {exit !(w <= 10)}' && [ "$(jget s5 .readback_missing)" = 0 ] && [ "$replaced" != timeout ]; then v=PASS; else v=FAIL; fi
record "S5 kill -9 one task" "$v" s5 "$replaced" "failure window ${window}s (bound 10 s), replaced in ${replaced}s, acked writes lost $(jget s5 .readback_missing)"

# --- S6: what the containers really got -----------------------------------------------------------------------
log "S6: docker inspect of the running containers"
s6=()
for c in $(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api"); do
  got=$(docker inspect --format '{{.Config.User}}|{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{range .Mounts}}{{.Type}}:{{.Destination}},{{end}}|{{index .Config.Healthcheck.Test 2}}' "$c")
  IFS='|' read -r user ro caps mem cpus mounts hc <<<"$got"
  [ "$user" = 65534:65534 ] || s6+=("user=$user")
  [ "$ro" = true ] || s6+=("rootfs-writable")
  [ "$caps" = "[ALL]" ] || s6+=("capdrop=$caps")
  [ "$mem" = 268435456 ] || s6+=("memory=$mem")
  [ "$cpus" = 1000000000 ] || s6+=("cpus=$cpus")
  case "$mounts" in *tmpfs:/tmp,*) ;; *) s6+=("no-tmpfs") ;; esac
  case "$mounts" in *volume:/data,*) ;; *) s6+=("no-data-volume") ;; esac
  [ "$hc" = healthcheck ] || s6+=("healthcheck=$hc")
done
# Traefik: no Docker socket at all; the socket proxy: read-only mount, read-only rootfs, no capabilities.
tc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_traefik" | head -n1)
got=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{range .Mounts}}{{.Destination}},{{end}}' "$tc")
case "$got" in "true|[ALL]|"*docker.sock*) s6+=("traefik-has-socket") ;; "true|[ALL]|"*) ;; *) s6+=("traefik=$got") ;; esac
pc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_socket-proxy" | head -n1)
got=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{range .Mounts}}{{if eq .Destination "/var/run/docker.sock"}}{{.RW}}{{end}}{{end}}' "$pc")
[ "$got" = "true|[ALL]|false" ] || s6+=("socket-proxy=$got")
vols=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" \
  | xargs docker inspect --format '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' | sort -u | wc -l)
[ "$vols" = 1 ] || s6+=("data-volumes=$vols")
if [ ${#s6[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "S6 docker inspect" "$v" - - "api: 65534:65534, ro rootfs, cap_drop ALL, 256M/1cpu, tmpfs /tmp, one shared /data volume; traefik: ro, no caps, no socket; socket proxy: ro, no caps, socket ro ${s6[*]}"

# --- PL: the platform's own guarantees ------------------------------------------------------------------------
log "PL: socket proxy subset, dashboard allow-list + bcrypt, Gitea route, runner configs, encrypted overlay"
# One-shot service from the client image on the given overlay networks; its output in $W/probe-NAME.log.
run_probe() { # NAME SCRIPT NETWORK...
  local id=$1 name=${STACK}-probe-$1 script=$2 state="" n
  shift 2
  local nets=()
  for n in "$@"; do nets+=(--network "$n"); done
  docker service create --detach --quiet --name "$name" --restart-condition none --no-resolve-image \
    "${nets[@]}" --entrypoint /bin/sh e2e-standin/client:1 -c "$script" > /dev/null
  for _ in $(seq 1 90); do
    state=$(docker service ps --format '{{.CurrentState}}' "$name" 2>/dev/null | head -n1)
    case "$state" in Complete*|Failed*|Rejected*) break ;; esac
    sleep 1
  done
  docker service logs --raw "$name" > "$W/probe-$id.log" 2>&1 || true
  docker service rm "$name" > /dev/null 2>&1 || true
  note "probe $id: $state; $(wc -l < "$W/probe-$id.log") lines in $W/probe-$id.log"
}
pl=()
pw=$(cat "$W/dashboard-password")
case "$(cat "$W/htpasswd")" in "admin:\$2y\$10\$"*) ;; *) pl+=("htpasswd-not-bcrypt") ;; esac
tc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_traefik" | head -n1)
tip=$(docker inspect --format "{{(index .NetworkSettings.Networks \"$STACK-public\").IPAddress}}" "$tc")
allowed=(/version /v1.41/services /v1.41/tasks /v1.41/networks /v1.41/nodes)
denied=(/v1.41/containers/json /v1.41/secrets /v1.41/configs /v1.41/info /v1.41/images/json /v1.41/events /v1.41/volumes)
probe="for p in ${allowed[*]} ${denied[*]}; do
  echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://socket-proxy:2375\$p) GET\$p\"
done
echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST http://socket-proxy:2375/v1.41/services/create) POST/v1.41/services/create\"
echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X DELETE http://socket-proxy:2375/v1.41/services/x) DELETE/v1.41/services/x\"
echo \"\$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 -u admin:$pw --resolve traefik.$DOMAIN:8443:$tip https://traefik.$DOMAIN:8443/dashboard/) dashboard-from-overlay\""
run_probe pl "$probe" "${PSTACK}_socket-proxy" "$STACK-public"
expect() { # CODE WHAT
  local got
  grep -qxF "$1 $2" "$W/probe-pl.log" && return 0
  got=$(awk -v w="$2" '$2 == w {print $1}' "$W/probe-pl.log" || true)
  pl+=("$2=${got:-none}(want $1)")
}
for p in "${allowed[@]}"; do expect 200 "GET$p"; done
for p in "${denied[@]}"; do expect 403 "GET$p"; done
expect 403 POST/v1.41/services/create
expect 403 DELETE/v1.41/services/x
expect 403 dashboard-from-overlay
dash() { curl -sk -o /dev/null -w '%{http_code}' --max-time 10 --connect-to "traefik.$DOMAIN:443:127.0.0.1:$HTTPS_PORT" "$@" "https://traefik.$DOMAIN/dashboard/" || echo 000; }
git_route() { curl -sk -o "$W/git-body" -w '%{http_code}' --max-time 10 --connect-to "git.$DOMAIN:443:127.0.0.1:$HTTPS_PORT" "https://git.$DOMAIN/" || echo 000; }
d_ok=$(dash -u "admin:$pw") d_none=$(dash) d_wrong=$(dash -u admin:wrong-password)
[ "$d_ok" = 200 ] || pl+=("dashboard-with-password=$d_ok")
[ "$d_none" = 401 ] || pl+=("dashboard-without-password=$d_none")
[ "$d_wrong" = 401 ] || pl+=("dashboard-wrong-password=$d_wrong")
g=$(git_route)
[ "$g" = 200 ] && grep -q 'gitea stand-in' "$W/git-body" || pl+=("git-route=$g")
for pair in runner:untrusted runner-deploy:deploy; do
  svc=${pair%%:*} file=$ROOT/nix/deploy/runner/${pair#*:}.yaml
  c=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_$svc" | head -n1)
  [ -n "$c" ] && docker exec "$c" cat /etc/act_runner/config.yaml | cmp -s - "$file" || pl+=("$svc-config-not-mounted")
  grep -q '^  docker_host: "-"' "$file" || pl+=("$svc-jobs-get-socket")
done
grep -q '^    - "nix:' "$ROOT/nix/deploy/runner/untrusted.yaml" && grep -q '^    - "deploy:' "$ROOT/nix/deploy/runner/deploy.yaml" \
  && ! grep -q '"deploy:' "$ROOT/nix/deploy/runner/untrusted.yaml" || pl+=("runner-labels")
enc=$(docker network inspect "${PSTACK}_socket-proxy" --format '{{json .Options}}' | jq -r 'has("encrypted")')
[ "$enc" = true ] || pl+=("socket-proxy-network-not-encrypted")
if [ ${#pl[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "PL platform guarantees" "$v" - - "proxy: ${#allowed[@]} GETs 200, ${#denied[@]} GETs+POST+DELETE 403; dashboard host $d_ok/$d_none/$d_wrong (pw/none/wrong), overlay 403; git route $g; runner configs mounted; encrypted overlay $enc ${pl[*]}"

# --- P: the pipeline scripts as the workflows call them, where /etc/containers does not exist -----------------
export STACK_NAME=$STACK DEPLOY_HOST=127.0.0.1 DEPLOY_PORT=$SSH_PORT DEPLOY_USER=root \
  REGISTRY=$REG IMAGE_NAME=devops-api VERIFY_CONNECT=127.0.0.1:$HTTPS_PORT VERIFY_INSECURE=1
DEPLOY_SSH_KEY=$(cat "$W/ssh/client_key")
DEPLOY_KNOWN_HOSTS=$(cat "$W/ssh/known_hosts")
SMOKE_TOKEN=$(cat "$W/token")
export DEPLOY_SSH_KEY DEPLOY_KNOWN_HOSTS SMOKE_TOKEN
sha() { printf '%s-%s' "$1" "$suffix" | sha1sum | cut -c1-40; }
SHA_A=$(sha a) SHA_B=$(sha b) SHA_C=$(sha c)
push() { no_etc_containers "$ROOT/nix/deploy/push.sh" --archive "$1" --image "$REGISTRY/$IMAGE_NAME" --tag "$2" --also-tag main 2>> "$W/push.log"; }
deploy() { (cd "$ROOT" && no_etc_containers "$ROOT/nix/deploy/deploy.sh" --image "$1") >> "$W/$2.deploy.log" 2>&1; }
rollback() { # LOGNAME [SHA]
  local name=$1
  shift
  (cd "$ROOT" && no_etc_containers "$ROOT/nix/deploy/rollback.sh" "$@") >> "$W/$name.deploy.log" 2>&1
}
on_image() { case "$(svc_field '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" in "$REGISTRY/$IMAGE_NAME:$1"*) return 0 ;; esac; return 1; }
# Every platform service with the ids of its running tasks: an application deploy must change none of them.
platform_tasks() {
  local s
  for s in $(docker stack services --format '{{.Name}}' "$PSTACK" | sort); do
    printf '%s %s\n' "$s" "$(docker service ps -q --filter desired-state=running "$s" | sort | paste -sd, -)"
  done
}
platform_tasks > "$W/platform-tasks-before.txt"
registry_pid=$(cat "$W/registry.pid" 2>/dev/null || echo external)
sed 's/^/    before: /' "$W/platform-tasks-before.txt" >&2

log "P0: first pipeline deploy (push.sh + deploy.sh over SSH) of commit A"
t=$SECONDS
ref_a=$(push "$W/api.tar" "$SHA_A")
rc=0
deploy "$ref_a" p0 || rc=$?
if [ "$rc" = 0 ] && on_image "$SHA_A"; then v=PASS; else v=FAIL; fi
record "P0 deploy commit A" "$v" - "$((SECONDS - t))" "deploy.sh exit $rc"

log "P1: good image through push.sh and deploy.sh under load"
load_start p1
t=$SECONDS
ref_b=$(push "$W/api.tar" "$SHA_B")
rc=0
deploy "$ref_b" p1 || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p1
if [ "$rc" = 0 ] && on_image "$SHA_B" && load_ok p1; then v=PASS; else v=FAIL; fi
record "P1 pipeline good image" "$v" p1 "$DUR" "push->verified ${DUR}s, deploy.sh exit $rc"

log "P2: broken image through the pipeline: deploy fails, old image keeps serving"
load_start p2
t=$SECONDS
ref_c=$(push "$W/api-broken.tar" "$SHA_C")
rc=0
deploy "$ref_c" p2 || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p2
if [ "$rc" != 0 ] && on_image "$SHA_B" && load_ok p2; then v=PASS; else v=FAIL; fi
record "P2 pipeline broken image" "$v" p2 "$DUR" "deploy.sh exit $rc ($(grep -o 'did not complete ([a-z_]*)' "$W/p2.deploy.log" | head -n1)), still on B: $(on_image "$SHA_B" && echo yes || echo no)"

log "P3: wrong pinned host key"
rc=0
DEPLOY_KNOWN_HOSTS=$(cat "$W/ssh/wrong_known_hosts") deploy "$ref_a" p3 || rc=$?
if [ "$rc" != 0 ] && grep -q 'does not match the pinned' "$W/p3.deploy.log" && on_image "$SHA_B"; then v=PASS; else v=FAIL; fi
record "P3 wrong host key refused" "$v" - - "deploy.sh exit $rc: $(grep -o 'FAILED: .*' "$W/p3.deploy.log" | head -n1 | cut -c1-60)"

log "P4: rollback.sh to commit A under load"
load_start p4
t=$SECONDS
rc=0
rollback p4 "$SHA_A" || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p4
if [ "$rc" = 0 ] && on_image "$SHA_A" && load_ok p4 && grep -q "redeploying $REG/devops-api:$SHA_A@sha256:" "$W/p4.deploy.log"; then v=PASS; else v=FAIL; fi
record "P4 rollback.sh to A" "$v" p4 "$DUR" "rollback.sh exit $rc, pinned by the registry's digest"

log "P5: rollback.sh without a SHA (the service's previous spec) with a registry login set, under load"
load_start p5
t=$SECONDS
rc=0
REGISTRY_USER=e2e REGISTRY_PASSWORD=e2e-password rollback p5 || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p5
if [ "$rc" = 0 ] && on_image "$SHA_B" && load_ok p5; then v=PASS; else v=FAIL; fi
record "P5 rollback previous+login" "$v" p5 "$DUR" "rollback.sh exit $rc, back on B: $(on_image "$SHA_B" && echo yes || echo no) $(grep -o 'FAILED: .*' "$W/p5.deploy.log" | head -n1 | cut -c1-60)"

log "P6: rollback.sh to a full SHA the registry does not hold"
rc=0
rollback p6 "$(sha never-pushed)" || rc=$?
if [ "$rc" = 1 ] && grep -q 'is not in the registry' "$W/p6.deploy.log" && on_image "$SHA_B"; then v=PASS; else v=FAIL; fi
record "P6 unknown SHA refused" "$v" - - "rollback.sh exit $rc: $(grep -o 'is not in the registry' "$W/p6.deploy.log" | head -n1), still on B"

log "P7: the platform after P0-P6: same tasks, same registry, routes answer"
platform_tasks > "$W/platform-tasks-after.txt"
p7=()
cmp -s "$W/platform-tasks-before.txt" "$W/platform-tasks-after.txt" \
  || p7+=("tasks-changed: $(diff "$W/platform-tasks-before.txt" "$W/platform-tasks-after.txt" | grep '^>' | cut -c3- | paste -sd';' -)")
[ "$(cat "$W/registry.pid" 2>/dev/null || echo external)" = "$registry_pid" ] || p7+=("registry-restarted")
curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ || p7+=("registry-down")
g=$(git_route)
[ "$g" = 200 ] || p7+=("git-route=$g")
d=$(dash -u "admin:$pw")
[ "$d" = 200 ] || p7+=("dashboard=$d")
if [ ${#p7[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "P7 platform untouched" "$v" - - "$(wc -l < "$W/platform-tasks-after.txt") services, running task ids unchanged; registry pid $registry_pid; git route $g, dashboard $d ${p7[*]}"
