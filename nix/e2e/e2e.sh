#!/usr/bin/env bash
# End-to-end test of the platform on this machine: a real single-node swarm, the real stack.yml, real Traefik,
# the real API image, a loopback registry and sshd, and the pipeline scripts (push, deploy, rollback) exactly
# as the Gitea workflow calls them. Every request goes to this machine's loopback address.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/e2e.sh [--rate N] [--keep]

Run as root on a Debian machine (CI runs it from .ci/run). It installs what is missing (docker.io,
docker-registry, skopeo, openssh-server, ...), starts dockerd if needed, and turns this machine into a
single-node swarm (left running afterwards), then:
  builds the API image (nix/deploy/build-image.sh) and a Traefik image (nix/e2e/traefik-image.sh),
  starts a registry on 127.0.0.1:5000 and sshd on 127.0.0.1:$E2E_SSH_PORT (throwaway keys, pinned host key),
  deploys stack.yml (Gitea and its runner at 0 replicas: their images cannot be obtained here),
  and runs the scenarios of the stack and pipeline issues under open-loop load (nix/e2e/loadgen.py):
    S1 endpoints, TLS, redirect, /metrics not routed     S2 rolling update of 3 replicas, 0 failures
    S2c control: drain 0 + Traefik's default 15 s poll + no retry must show failures
    S3 scale 3 -> 1 -> 3, 0 failures   S4 broken image rolls back by itself, 0 failures
    S5 kill -9 of a task: failures only within the window   S6 docker inspect: user, read-only, caps, limits
    P1 push.sh + deploy.sh of a good image, 0 failures, push-to-verified time
    P2 broken image: deploy.sh fails, old image keeps serving, 0 failures
    P3 wrong pinned host key: deploy.sh refuses to connect   P4 rollback.sh to the first SHA
Prints a summary table; exits non-zero if any scenario failed. Removes the stack, the secrets, the registry
and sshd it started; dockerd and the swarm stay.

  --rate N   load in requests/s (default 200)
  --keep     leave the stack, registry and sshd running (for debugging)
Environment: E2E_WORK (default /tmp/devops-e2e), E2E_STACK (default e2e), E2E_HTTP_PORT (18080),
E2E_HTTPS_PORT (18443), E2E_SSH_PORT (2222), CARGO_TARGET_DIR (passed to the image build).
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
HTTP_PORT=${E2E_HTTP_PORT:-18080}
HTTPS_PORT=${E2E_HTTPS_PORT:-18443}
SSH_PORT=${E2E_SSH_PORT:-2222}
REG=127.0.0.1:5000
DOMAIN=e2e.test
export ROOT W STACK RATE HTTPS_PORT SSH_PORT DOMAIN

# shellcheck source=nix/e2e/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (it installs packages, starts dockerd and sshd)"
rm -rf "$W"
mkdir -p "$W"
chmod 700 "$W"
run_started=$SECONDS
SECRETS=()

cleanup() {
  local rc=$? f
  for f in "$W"/*.pid; do
    [ -e "$f" ] || continue
    case "$f" in */registry.pid) continue ;; esac
    stop_pidfile "$f"
  done
  if [ "$KEEP" != true ]; then
    log "cleaning up (stack, secrets, volumes, registry, sshd; dockerd and the swarm stay)"
    docker stack rm "$STACK" >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] \
        && ! docker network inspect "$STACK-public" >/dev/null 2>&1 && break
      sleep 1
    done
    for f in "${SECRETS[@]}"; do docker secret rm "$f" >/dev/null 2>&1 || true; done
    docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK" | xargs -r docker volume rm >/dev/null 2>&1 || true
    stop_pidfile "$W/registry.pid"
    stop_pidfile "$W/ssh/sshd.pid"
  fi
  if [ ${#RESULTS[@]} -gt 0 ]; then
    print_summary
    printf 'total runtime %d s; logs in %s\n' "$((SECONDS - run_started))" "$W"
  fi
  [ "$rc" -ne 0 ] || [ "$FAILED" -eq 0 ] || rc=1
  exit "$rc"
}
trap cleanup EXIT

# --- machine --------------------------------------------------------------------------------------------------
log "machine: packages, dockerd, swarm, registry, sshd"
ensure_packages
ensure_dockerd
start_registry
start_sshd
note "docker $(docker version --format '{{.Server.Version}}') swarm $(docker info --format '{{.Swarm.LocalNodeState}}')"

# --- secrets (Docker secrets are immutable: unique names per run) ---------------------------------------------
suffix=$(date +%s)
umask 077
printf 'e2e:%s\n' "$(openssl rand -hex 24)" > "$W/tokens"
cut -d: -f2 "$W/tokens" > "$W/token"
printf 'admin:%s\n' "$(openssl passwd -apr1 "$(openssl rand -hex 12)")" > "$W/htpasswd"
openssl rand -hex 20 > "$W/runner-token"
umask 022
export API_TOKENS_SECRET=${STACK}_api_tokens_$suffix TRAEFIK_USERS_SECRET=${STACK}_dashboard_users_$suffix \
  RUNNER_TOKEN_SECRET=${STACK}_runner_token_$suffix
docker secret create "$API_TOKENS_SECRET" "$W/tokens" >/dev/null
SECRETS+=("$API_TOKENS_SECRET")
docker secret create "$TRAEFIK_USERS_SECRET" "$W/htpasswd" >/dev/null
SECRETS+=("$TRAEFIK_USERS_SECRET")
docker secret create "$RUNNER_TOKEN_SECRET" "$W/runner-token" >/dev/null
SECRETS+=("$RUNNER_TOKEN_SECRET")

# --- images ---------------------------------------------------------------------------------------------------
log "building the API image (nix/deploy/build-image.sh) and the Traefik image (nix/e2e/traefik-image.sh)"
t=$SECONDS
(cd "$ROOT" && nix/deploy/build-image.sh --tag devops-api:e2e --out "$W/api.tar") > "$W/build.log" 2>&1 \
  || { tail -n 30 "$W/build.log" >&2; die "nix/deploy/build-image.sh failed"; }
(cd "$ROOT" && nix/deploy/build-image.sh --tag devops-api:e2e-broken --healthcheck-url http://127.0.0.1:9/ready \
  --out "$W/api-broken.tar") >> "$W/build.log" 2>&1 || { tail -n 30 "$W/build.log" >&2; die "broken image build failed"; }
note "API images built in $((SECONDS - t)) s ($(du -h "$W/api.tar" | cut -f1) archive)"
"$ROOT/nix/e2e/traefik-image.sh" --tag traefik:v3.7.15 >&2
docker tag traefik:v3.7.15 "$REG/traefik:v3.7.15"
docker push -q "$REG/traefik:v3.7.15" >/dev/null
for tag in e2e-1 e2e-2 e2e-3; do
  "$ROOT/nix/deploy/push.sh" --archive "$W/api.tar" --image "$REG/devops-api" --tag "$tag" > /dev/null 2>> "$W/push.log"
done
"$ROOT/nix/deploy/push.sh" --archive "$W/api-broken.tar" --image "$REG/devops-api" --tag e2e-broken > /dev/null 2>> "$W/push.log"

# --- the stack ------------------------------------------------------------------------------------------------
export DOMAIN ACME_EMAIL=e2e@example.invalid ACME_CA_SERVER=https://127.0.0.1:9/directory \
  HTTP_PORT HTTPS_PORT PUBLIC_NETWORK=$STACK-public GITEA_REPLICAS=0 RUNNER_REPLICAS=0 \
  TRAEFIK_IMAGE=$REG/traefik:v3.7.15 API_REPLICAS=3 API_RATE_LIMIT=0 API_MAX_TASKS_PER_PRINCIPAL=10000000
log "docker stack config + deploy of stack.yml (stack $STACK)"
API_IMAGE=x docker stack config -c "$ROOT/stack.yml" > /dev/null
API_IMAGE=x API_PLACEMENT="node.role == worker" docker stack config -c "$ROOT/stack.yml" -c "$ROOT/nix/deploy/stack.postgres.yml" > /dev/null
t=$SECONDS
stack_deploy "$REG/devops-api:e2e-1" || die "stack deploy failed"
wait_api_ready 120 || die "the API did not become ready through Traefik (see docker service ps ${STACK}_api)"
note "stack up in $((SECONDS - t)) s"
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
control=(API_DRAIN_SECONDS=0 API_RETRY_ATTEMPTS=1 TRAEFIK_REFRESH_SECONDS=15)
stack_deploy "$REG/devops-api:e2e-2" "${control[@]}" || true
wait_update 300 >/dev/null
wait_api_ready 120 || true
sleep 20 # let Traefik's slower poll see the settled tasks
rollout s2c "$REG/devops-api:e2e-3" "${control[@]}"
if [ "$(jget s2c .failures)" -gt 0 ]; then v=PASS; else v=FAIL; fi
record "S2c control (no drain)" "$v" s2c "$DUR" "failures expected: $(jget s2c '.failure_kinds | to_entries | map("\(.key)=\(.value)") | join(" ")')"
log "restoring drain, poll and retry"
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
tc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_traefik" | head -n1)
got=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{range .Mounts}}{{if eq .Destination "/var/run/docker.sock"}}{{.RW}}{{end}}{{end}}' "$tc")
[ "$got" = "true|[ALL]|false" ] || s6+=("traefik=$got")
vols=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" \
  | xargs docker inspect --format '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}' | sort -u | wc -l)
[ "$vols" = 1 ] || s6+=("data-volumes=$vols")
if [ ${#s6[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "S6 docker inspect" "$v" - - "api: 65534:65534, ro rootfs, cap_drop ALL, 256M/1cpu, tmpfs /tmp, one shared /data volume; traefik: ro, no caps, socket ro ${s6[*]}"

# --- P: the pipeline scripts as the workflow calls them -------------------------------------------------------
export STACK_NAME=$STACK DEPLOY_HOST=127.0.0.1 DEPLOY_PORT=$SSH_PORT DEPLOY_USER=root \
  REGISTRY=$REG IMAGE_NAME=devops-api VERIFY_CONNECT=127.0.0.1:$HTTPS_PORT VERIFY_INSECURE=1
DEPLOY_SSH_KEY=$(cat "$W/ssh/client_key")
DEPLOY_KNOWN_HOSTS=$(cat "$W/ssh/known_hosts")
SMOKE_TOKEN=$(cat "$W/token")
export DEPLOY_SSH_KEY DEPLOY_KNOWN_HOSTS SMOKE_TOKEN
sha() { printf '%s-%s' "$1" "$suffix" | sha1sum | cut -c1-40; }
SHA_A=$(sha a) SHA_B=$(sha b) SHA_C=$(sha c)
push() { "$ROOT/nix/deploy/push.sh" --archive "$1" --image "$REGISTRY/$IMAGE_NAME" --tag "$2" --also-tag main 2>> "$W/push.log"; }
deploy() { (cd "$ROOT" && "$ROOT/nix/deploy/deploy.sh" --image "$1") >> "$W/$2.deploy.log" 2>&1; }
on_image() { case "$(svc_field '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" in "$REGISTRY/$IMAGE_NAME:$1"*) return 0 ;; esac; return 1; }

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
(cd "$ROOT" && "$ROOT/nix/deploy/rollback.sh" "$SHA_A") >> "$W/p4.deploy.log" 2>&1 || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p4
if [ "$rc" = 0 ] && on_image "$SHA_A" && load_ok p4; then v=PASS; else v=FAIL; fi
record "P4 rollback.sh to A" "$v" p4 "$DUR" "rollback.sh exit $rc"
