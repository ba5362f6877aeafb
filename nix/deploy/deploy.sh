#!/usr/bin/env bash
# Deploy one API image to the swarm over SSH (host key pinned), wait for the rolling update, check its
# outcome, then verify the public endpoints over HTTPS. On failure the service is left on the last good image.
# It deploys the application stack (stack.yml) only; the platform (nix/deploy/platform.yml) is the operator's.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/deploy/deploy.sh --image REF|--previous [--stack NAME] [--compose FILE]... [--timeout SECONDS]

Runs, against DOCKER_HOST=ssh://DEPLOY_USER@DEPLOY_HOST (host key checked against the pinned line):
  docker stack deploy --with-registry-auth --detach=false -c stack.yml STACK   (API_IMAGE=REF)
stack.yml is the application only: this never touches the platform stack (Traefik, Gitea, runners).
then requires the API service's UpdateStatus to be `completed` (not rollback_completed/paused), and checks
GET /health, GET /ready and an authenticated POST+GET /v1/tasks on https://api.$DOMAIN.
If the rollout fails and Swarm did not roll back by itself, the previous image is redeployed.
Exit status: 0 deployed and verified; 1 failed (message says why); 2 usage or an invalid value.

  --image REF      image to run, e.g. git.example.com/team/devops-api:SHA@sha256:... (from nix/deploy/push.sh)
  --previous       redeploy the image of the API service's previous spec (what Swarm recorded); the registry
                   login (REGISTRY_USER) then goes to that image's registry
  --stack NAME     stack name (default: $STACK_NAME or devops)
  --compose FILE   compose file(s), repeatable (default: ./stack.yml, the checkout being deployed)
  --timeout SEC    limit for the rollout (default 600)

Environment (CI variables and secrets; secrets are never printed):
  DEPLOY_HOST, DEPLOY_USER (default deploy), DEPLOY_PORT (default 22)   swarm manager reached over SSH;
                   checked (host name/IPv4/IPv6, 1-65535, user name) before the ssh config is written
  DEPLOY_SSH_KEY or DEPLOY_SSH_KEY_FILE          private key (secret)
  DEPLOY_KNOWN_HOSTS or DEPLOY_KNOWN_HOSTS_FILE  pinned known_hosts line(s) of the manager
  DOMAIN, ACME_EMAIL, and any other stack.yml variable (API_REPLICAS, HTTPS_PORT, ...)
  REGISTRY_USER, REGISTRY_PASSWORD   optional: registry login forwarded to the swarm (--with-registry-auth)
  SMOKE_TOKEN                        API token for the smoke request (secret)
  VERIFY_URL                         default https://api.$DOMAIN
  VERIFY_CONNECT=HOST:PORT           connect there instead of resolving the URL (tests)
  VERIFY_INSECURE=1                  do not verify TLS (tests against Traefik's default certificate only)
  DEPLOY_RESOLVE_IMAGE               --resolve-image mode (default always)
USAGE
}

die() { echo "deploy: FAILED: $*" >&2; exit 1; }
say() { echo "deploy: $*" >&2; }

image="" previous=false stack=${STACK_NAME:-devops} timeout=600
compose=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image=$2; shift 2 ;;
    --previous) previous=true; shift ;;
    --stack) stack=$2; shift 2 ;;
    --compose) compose+=("$2"); shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "deploy: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$image" ] || [ "$previous" = true ] || { usage >&2; exit 2; }
ref=${image%@*}
[ "${ref##*:}" != latest ] || die "refusing to deploy the moving 'latest' tag; deploy the commit SHA"
# stack.yml of the checkout in the working directory (flake apps run from the store), else beside nix/.
if [ ${#compose[@]} -eq 0 ]; then
  if [ -f stack.yml ]; then compose=("$PWD/stack.yml"); else compose=("$(dirname "${BASH_SOURCE[0]}")/../../stack.yml"); fi
fi
for f in "${compose[@]}"; do [ -f "$f" ] || die "compose file not found: $f"; done
: "${DEPLOY_HOST:?set DEPLOY_HOST (swarm manager)}"
: "${DOMAIN:?set DOMAIN}"
: "${SMOKE_TOKEN:?set SMOKE_TOKEN (API token for the smoke request)}"

# Values that end up in the generated ssh config or on docker's command line: a newline or a space in
# DEPLOY_HOST would add ssh directives (ProxyCommand runs a command), so each is checked against its
# grammar before it is used anywhere.
invalid() { echo "deploy: invalid $1: $2" >&2; exit 2; }
deploy_port=${DEPLOY_PORT:-22}
deploy_user=${DEPLOY_USER:-deploy}
host_re='^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'
ipv6_re='^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$'
if ! [[ "$DEPLOY_HOST" =~ $host_re ]] && ! [[ "$DEPLOY_HOST" =~ $ipv6_re ]] || [ ${#DEPLOY_HOST} -gt 253 ]; then
  invalid DEPLOY_HOST "$(printf %q "$DEPLOY_HOST") (a host name, IPv4 or IPv6 address)"
fi
if ! [[ "$deploy_port" =~ ^[0-9]{1,5}$ ]] || [ "$deploy_port" -lt 1 ] || [ "$deploy_port" -gt 65535 ]; then
  invalid DEPLOY_PORT "$(printf %q "$deploy_port") (1-65535)"
fi
[[ "$deploy_user" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || invalid DEPLOY_USER "$(printf %q "$deploy_user") (a POSIX user name)"
[[ "$stack" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || invalid "stack name" "$(printf %q "$stack")"
[[ "$timeout" =~ ^[0-9]+$ ]] || invalid --timeout "$(printf %q "$timeout") (seconds)"
# An image reference: [REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST], no whitespace or shell/ssh syntax.
ref_re='^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$'
if [ -n "$image" ] && ! [[ "$image" =~ $ref_re ]]; then
  invalid --image "$(printf %q "$image") (REGISTRY/NAME:TAG[@sha256:DIGEST])"
fi

work=$(mktemp -d)
cleanup() {
  if [ -S "$work/ssh/cm" ]; then ssh -O exit deploy-target >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- SSH with a pinned host key -------------------------------------------------------------------------
# The docker CLI runs `ssh HOST docker system dial-stdio`; a wrapper first on PATH gives it our config.
umask 077
mkdir -p "$work/ssh" "$work/bin" "$work/docker"
if [ -n "${DEPLOY_SSH_KEY:-}" ]; then
  printf '%s\n' "$DEPLOY_SSH_KEY" > "$work/ssh/key"
elif [ -n "${DEPLOY_SSH_KEY_FILE:-}" ]; then
  cp "$DEPLOY_SSH_KEY_FILE" "$work/ssh/key"
else
  die "set DEPLOY_SSH_KEY or DEPLOY_SSH_KEY_FILE"
fi
chmod 600 "$work/ssh/key"
if [ -n "${DEPLOY_KNOWN_HOSTS:-}" ]; then
  printf '%s\n' "$DEPLOY_KNOWN_HOSTS" > "$work/ssh/known_hosts"
elif [ -n "${DEPLOY_KNOWN_HOSTS_FILE:-}" ]; then
  cp "$DEPLOY_KNOWN_HOSTS_FILE" "$work/ssh/known_hosts"
else
  die "set DEPLOY_KNOWN_HOSTS (the manager's pinned known_hosts line); host key checking is never disabled"
fi
cat > "$work/ssh/config" <<EOF
Host deploy-target
  HostName $DEPLOY_HOST
  Port $deploy_port
  User $deploy_user
  IdentityFile $work/ssh/key
  IdentitiesOnly yes
  UserKnownHostsFile $work/ssh/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 15
  ControlMaster auto
  ControlPath $work/ssh/cm
  ControlPersist 120
EOF
real_ssh=$(command -v ssh) || die "ssh client not found"
printf '#!/bin/sh\nexec %s -F %s "$@"\n' "$real_ssh" "$work/ssh/config" > "$work/bin/ssh"
chmod 700 "$work/bin/ssh"
export PATH="$work/bin:$PATH" DOCKER_HOST=ssh://deploy-target DOCKER_CONFIG=$work/docker
umask 022

if ! out=$(ssh deploy-target true 2>&1); then
  case "$out" in
    *"Host key verification failed"*|*"REMOTE HOST IDENTIFICATION HAS CHANGED"*)
      die "SSH host key of ${DEPLOY_HOST} does not match the pinned DEPLOY_KNOWN_HOSTS; refusing to connect" ;;
    *) die "cannot reach ${DEPLOY_HOST} over SSH: $out" ;;
  esac
fi
docker info --format '{{.Swarm.ControlAvailable}}' | grep -x true >/dev/null || die "${DEPLOY_HOST} is not a swarm manager"

# --- Roll out --------------------------------------------------------------------------------------------
svc=${stack}_api
inspect() { docker service inspect --format "$1" "$svc" 2>/dev/null || true; }
prev_image=$(inspect '{{.Spec.TaskTemplate.ContainerSpec.Image}}')
if [ "$previous" = true ]; then
  # After Swarm's own rollback the previous spec is the failed one: make the operator name the image.
  [ "$(inspect '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')" != rollback_completed ] \
    || die "Swarm already rolled $svc back; it runs ${prev_image}. Name the commit SHA to go further back"
  image=$(inspect '{{if .PreviousSpec}}{{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}{{end}}')
  [ -n "$image" ] || die "service $svc has no previous spec to return to; name the image (rollback SHA)"
  [[ "$image" =~ $ref_re ]] || die "the previous spec's image $(printf %q "$image") is not a registry reference"
fi
# Only now is the image known (for --previous it comes from the service): log in to its registry.
if [ -n "${REGISTRY_USER:-}" ]; then
  : "${REGISTRY_PASSWORD:?REGISTRY_USER is set but REGISTRY_PASSWORD is not}"
  registry=${image%%/*}
  case "$registry" in
    *.*|*:*|localhost) ;;
    *) die "image ${image} names no registry host; refusing to send the registry password to Docker Hub" ;;
  esac
  printf '%s' "$REGISTRY_PASSWORD" | docker login --username "$REGISTRY_USER" --password-stdin "$registry" >/dev/null \
    || die "registry login to ${registry} failed"
fi
prev_started=$(inspect '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}')
say "previous image: ${prev_image:-none (first deploy)}"
say "deploying ${image} to stack ${stack} on ${DEPLOY_HOST}"

stack_deploy() { # IMAGE
  local files=()
  for f in "${compose[@]}"; do files+=(-c "$f"); done
  API_IMAGE=$1 timeout "$timeout" docker stack deploy --with-registry-auth --detach=false \
    --resolve-image "${DEPLOY_RESOLVE_IMAGE:-always}" "${files[@]}" "$stack" >&2
}

# Terminal UpdateStatus of the API service after a deploy: completed, rollback_completed, paused, ...
wait_rollout() {
  local deadline=$((SECONDS + timeout)) state
  while :; do
    state=$(inspect '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')
    case "$state" in
      updating|rollback_started) ;;
      *) echo "$state"; return 0 ;;
    esac
    [ $SECONDS -lt $deadline ] || { echo "timeout($state)"; return 0; }
    sleep 2
  done
}

# Desired replicas all running the given image.
converged() { # IMAGE
  local want have
  want=$(inspect '{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{end}}')
  have=$(docker service ps --filter desired-state=running --format '{{.CurrentState}} {{.Image}}' "$svc" \
    | awk -v img="$1" '$1 == "Running" && ($NF == img || index($NF, img "@") == 1)' | wc -l)
  [ -n "$want" ] && [ "$have" -eq "$want" ]
}

started=$SECONDS
deploy_rc=0
stack_deploy "$image" || deploy_rc=$?
state=$(wait_rollout)
now_started=$(inspect '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}')
cur_image=$(inspect '{{.Spec.TaskTemplate.ContainerSpec.Image}}')
ok=false
if [ -n "$now_started" ] && [ "$now_started" != "$prev_started" ]; then
  [ "$state" = completed ] && ok=true
else
  # No rolling update happened: a first deploy, or the service already runs these tasks. Swarm clears
  # UpdateStatus on every service update, also on one that changes no task (a redeploy of what runs), so an
  # empty status after the deploy means "nothing to roll out", not a failed rollout.
  for _ in $(seq 1 $((timeout / 2))); do
    if converged "${cur_image%@*}"; then ok=true; break; fi
    sleep 2
  done
  if [ -z "$state" ]; then
    if [ -n "$prev_image" ]; then state=unchanged; else state=created; fi
  fi
fi
case "$cur_image" in "$image"|"$image"@*) ;; *) ok=false ;; esac
if [ "$ok" != true ]; then
  say "rollout of ${image} failed: UpdateStatus=${state:-none}, stack deploy exit ${deploy_rc}, service image now ${cur_image}"
  if [ "$state" = rollback_completed ]; then
    say "Swarm rolled back by itself; the service runs ${cur_image}"
  elif [ -n "$prev_image" ]; then
    say "redeploying the previous image ${prev_image}"
    stack_deploy "$prev_image" || true
    say "after redeploy: UpdateStatus=$(wait_rollout), image $(inspect '{{.Spec.TaskTemplate.ContainerSpec.Image}}')"
  fi
  die "deploy of ${image} did not complete (${state:-none})"
fi
say "rollout ${state} in $((SECONDS - started)) s"

# --- Repair the task index (redb) ------------------------------------------------------------------------
# During a start-first rollout, tasks of the previous image shared the redb file (multi-writer); a release
# from before the filter index writes tasks without index entries, so filtered lists miss them until the
# index is repaired. Every task repairs by itself after opening and every 5 minutes; this ends the window
# right after the rollout: once the old tasks have exited (they keep serving, and writing, while they drain),
# one new task repairs the index through its control socket. Best effort: a failure is reported, never fatal
# (the tasks' own repair still runs), and a task on another node than the manager cannot be reached here.
old_tasks_running() { # tasks told to stop that have not exited yet
  docker service ps --filter desired-state=shutdown --format '{{.CurrentState}}' "$svc" 2>/dev/null \
    | awk '$1 == "Running" { n++ } END { print n + 0 }'
}
repair_index() {
  local deadline=$((SECONDS + timeout)) cid out
  while [ "$(old_tasks_running)" -gt 0 ]; do
    if [ $SECONDS -ge $deadline ]; then
      say "warning: tasks of the previous image still run; the index repair may miss their last writes"
      break
    fi
    sleep 2
  done
  cid=$(docker ps --filter "label=com.docker.swarm.service.name=${svc}" --filter status=running \
    --format '{{.ID}}' 2>/dev/null | sed -n 1p) || cid=""
  if [ -z "$cid" ]; then
    say "warning: no task of ${svc} runs on ${DEPLOY_HOST}; the tasks repair the index themselves within 5 minutes"
    return 0
  fi
  if out=$(docker exec "$cid" /bin/devops-api index check --repair 2>&1); then
    say "task index: ${out##*$'\n'}"
  else
    say "warning: index repair in ${cid} failed (the tasks repair it themselves within 5 minutes): ${out##*$'\n'}"
  fi
}
repair_index

# --- Verify through the public entrypoint ----------------------------------------------------------------
url=${VERIFY_URL:-https://api.${DOMAIN}}
hostport=${url#https://}
hostport=${hostport%%/*}
case "$hostport" in *:*) ;; *) hostport=$hostport:443 ;; esac
curl_args=(--silent --show-error --max-time 10 --output "$work/body" --write-out '%{http_code}')
[ "${VERIFY_INSECURE:-0}" = 1 ] && curl_args+=(--insecure)
[ -n "${VERIFY_CONNECT:-}" ] && curl_args+=(--connect-to "$hostport:$VERIFY_CONNECT")
( umask 077; printf 'Authorization: Bearer %s\n' "$SMOKE_TOKEN" > "$work/auth-header" )

http() { # METHOD PATH [curl args...] -> status code on stdout, body in $work/body
  local method=$1 path=$2
  shift 2
  curl "${curl_args[@]}" -X "$method" "$@" "$url$path" 2>/dev/null || echo 000
}
verify_deadline=$((SECONDS + ${VERIFY_TIMEOUT:-60}))
for path in /health /ready; do
  until [ "$(http GET "$path")" = 200 ]; do
    [ $SECONDS -lt $verify_deadline ] || die "GET $url$path did not answer 200 (rollout completed; check Traefik)"
    sleep 2
  done
done
code=$(http POST /v1/tasks -H @"$work/auth-header" -H 'Content-Type: application/json' \
  --data '{"title":"deploy smoke test","tags":["smoke"]}')
[ "$code" = 201 ] || [ "$code" = 200 ] || die "smoke POST /v1/tasks answered $code"
id=$(grep -o '"id":[^,}]*' "$work/body" | sed -n 1p | cut -d: -f2- | tr -d '" ')
[ -n "$id" ] || die "smoke POST /v1/tasks returned no id"
code=$(http GET "/v1/tasks/$id" -H @"$work/auth-header")
[ "$code" = 200 ] || die "smoke GET /v1/tasks/$id answered $code"
http DELETE "/v1/tasks/$id" -H @"$work/auth-header" >/dev/null
say "OK: ${image} deployed and verified at ${url} in $((SECONDS - started)) s"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  printf 'Deployed %s to stack %s (previous: %s), verified at %s\n' \
    "$image" "$stack" "${prev_image:-none}" "$url" >> "$GITHUB_STEP_SUMMARY"
fi
