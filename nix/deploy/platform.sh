#!/usr/bin/env bash
# Deploy the platform stack (nix/deploy/platform.yml: socket proxy, Traefik, Gitea, runners; optionally
# PostgreSQL). An operator runs this on a manager (or with DOCKER_HOST pointing at one); the pipeline never
# does: it deploys only the application (stack.yml, nix/deploy/deploy.sh).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/deploy/platform.sh [--stack NAME] [--postgres] [--acme-ca-certificates FILE] [--timeout SECONDS]

  docker stack deploy --with-registry-auth --detach=false -c nix/deploy/platform.yml \
    [-c platform.postgres.yml] [-c platform.acme-ca.yml] NAME

after checking what the stack file cannot: Gitea's version (>= 1.26, the workflows use `concurrency`), and
naming the runner configs (nix/deploy/runner/*.yaml) and the ACME CA file by their content hash, so that an
edited file becomes a new Docker config and its service is updated to it. Waits until every service runs its desired
replicas, prints them, and removes this stack's configs that no service uses any more.

  --stack NAME     stack name (default: $PLATFORM_STACK or devops-platform)
  --postgres       also deploy PostgreSQL (nix/deploy/platform.postgres.yml)
  --acme-ca-certificates FILE
                   PEM file of the CA(s) that signed the ACME server's HTTPS certificate, for a private ACME
                   server set in ACME_CA_SERVER (nix/deploy/platform.acme-ca.yml); not for Let's Encrypt
  --timeout SEC    limit for the deploy and convergence (default 600)

Environment: DOMAIN, ACME_EMAIL, DASHBOARD_SOURCE_RANGE (required), and any other variable of platform.yml
(docs/platform.md lists them). PLATFORM_RESOLVE_IMAGE: --resolve-image mode (default always).
USAGE
}

die() { echo "platform: FAILED: $*" >&2; exit 1; }
say() { echo "platform: $*" >&2; }

stack=${PLATFORM_STACK:-devops-platform} postgres=false timeout=600 acme_ca=""
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack=$2; shift 2 ;;
    --postgres) postgres=true; shift ;;
    --acme-ca-certificates) acme_ca=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "platform: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$stack" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] || { echo "platform: invalid stack name: $stack" >&2; exit 2; }
[[ "$timeout" =~ ^[0-9]+$ ]] || { echo "platform: invalid --timeout: $timeout" >&2; exit 2; }
: "${DOMAIN:?set DOMAIN}" "${ACME_EMAIL:?set ACME_EMAIL}"
: "${DASHBOARD_SOURCE_RANGE:?set DASHBOARD_SOURCE_RANGE (CIDR list of addresses allowed to the Traefik dashboard)}"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
files=(-c "$here/platform.yml")
[ "$postgres" = false ] || files+=(-c "$here/platform.postgres.yml")
if [ -n "$acme_ca" ]; then
  [ -f "$acme_ca" ] || die "--acme-ca-certificates: no such file: $acme_ca"
  grep -q -- '-----BEGIN CERTIFICATE-----' "$acme_ca" || die "--acme-ca-certificates: $acme_ca holds no PEM certificate"
  files+=(-c "$here/platform.acme-ca.yml")
fi

# Gitea >= 1.26: older versions ignore `concurrency` and may cancel a deploy halfway through.
gitea_image=${GITEA_IMAGE:-gitea/gitea:1.26.4}
gitea_tag=${gitea_image##*:}
if [[ "$gitea_tag" =~ ^v?([0-9]+)\.([0-9]+) ]]; then
  major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
  if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 26 ]; }; then
    die "GITEA_IMAGE $gitea_image: the workflows need Gitea >= 1.26 (concurrency groups serialise deploys)"
  fi
else
  say "GITEA_IMAGE $gitea_image has no version tag; make sure it is Gitea >= 1.26"
fi

# Docker configs are immutable: name them by content.
hash() { sha256sum "$1" | cut -c1-12; }
export STACK_CONFIG_PREFIX=$stack
RUNNER_UNTRUSTED_CONFIG_HASH=$(hash "$here/runner/untrusted.yaml")
RUNNER_DEPLOY_CONFIG_HASH=$(hash "$here/runner/deploy.yaml")
export RUNNER_UNTRUSTED_CONFIG_HASH RUNNER_DEPLOY_CONFIG_HASH
if [ -n "$acme_ca" ]; then
  ACME_CA_CERTIFICATES_FILE=$(cd "$(dirname "$acme_ca")" && pwd)/$(basename "$acme_ca")
  ACME_CA_CONFIG_HASH=$(hash "$acme_ca")
  export ACME_CA_CERTIFICATES_FILE ACME_CA_CONFIG_HASH
fi

docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null | grep -x true >/dev/null \
  || die "this Docker engine is not a swarm manager (run on a manager or set DOCKER_HOST)"
# When each service's last update started: afterwards only services whose update is new are judged.
update_started() { # SERVICE...
  local s
  for s in "$@"; do
    printf '%s %s\n' "$s" "$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$s")"
  done
}
services() { docker stack services --format '{{.Name}}' "$stack" 2>/dev/null | sort; }
mapfile -t before_services < <(services)
before=$(update_started "${before_services[@]}")
say "deploying stack $stack (runner configs untrusted=$RUNNER_UNTRUSTED_CONFIG_HASH deploy=$RUNNER_DEPLOY_CONFIG_HASH${acme_ca:+, ACME CA $ACME_CA_CONFIG_HASH})"
timeout "$timeout" docker stack deploy --with-registry-auth --detach=false \
  --resolve-image "${PLATFORM_RESOLVE_IMAGE:-always}" "${files[@]}" "$stack" >&2 \
  || die "docker stack deploy of $stack failed"

# Converged: every replicated service runs its desired number of tasks, and every update this deploy
# started has completed (an update Swarm rolled back leaves the old spec running: the change did not happen).
deadline=$((SECONDS + timeout))
while :; do
  pending=() failed=()
  while read -r name mode replicas; do
    if [ "$mode" = replicated ] && [ "${replicas%%/*}" != "${replicas#*/}" ]; then pending+=("$name $replicas"); fi
    started=$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.StartedAt}}{{end}}' "$name")
    if [ -z "$started" ] || grep -qxF "$name $started" <<<"$before"; then continue; fi
    state=$(docker service inspect --format '{{.UpdateStatus.State}}' "$name")
    case "$state" in
      completed) ;;
      updating|rollback_started) pending+=("$name $state") ;;
      *) failed+=("$name $state") ;;
    esac
  done < <(docker stack services --format '{{.Name}} {{.Mode}} {{.Replicas}}' "$stack")
  [ ${#failed[@]} -eq 0 ] || die "update did not complete: ${failed[*]} (docker service ps --no-trunc NAME)"
  [ ${#pending[@]} -gt 0 ] || break
  [ $SECONDS -lt $deadline ] || die "not converged after ${timeout}s: ${pending[*]}"
  sleep 2
done
docker stack services --format '{{.Name}} {{.Replicas}} {{.Image}}' "$stack" | sort | sed 's/^/platform:   /' >&2

# Configs an earlier run created for this stack and no service uses now.
in_use=$(docker service ls -q --filter "label=com.docker.stack.namespace=$stack" \
  | xargs -r docker service inspect --format '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}}{{"\n"}}{{end}}')
docker config ls --format '{{.Name}}' \
  | awk -v p="${stack}_" 'index($0, p "runner_") == 1 || index($0, p "acme_ca_") == 1' | while read -r c; do
  grep -qxF "$c" <<<"$in_use" || { docker config rm "$c" >/dev/null && say "removed unused config $c"; }
done
say "OK: platform stack $stack deployed"
