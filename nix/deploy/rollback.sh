#!/usr/bin/env bash
# Roll the API back by redeploying a previous image through the same path as a deploy (nix/deploy/deploy.sh):
# pinned SSH host key, stack deploy, rollout check, HTTPS verification.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/deploy/rollback.sh [SHA | IMAGE_REF] [deploy.sh options...]

  SHA         redeploy $REGISTRY/$IMAGE_NAME:SHA (a commit that was pushed by the pipeline)
  IMAGE_REF   redeploy this exact reference (contains '/' or ':'), e.g. one printed by nix/deploy/push.sh
  (nothing)   redeploy the image of the service's previous spec as Swarm recorded it

Takes the same environment as nix/deploy/deploy.sh (DEPLOY_HOST, DEPLOY_SSH_KEY, DEPLOY_KNOWN_HOSTS, DOMAIN,
SMOKE_TOKEN, ...). Swarm's own `docker service rollback` only goes back one spec; redeploying a known-good
SHA is the real rollback, and it leaves the stack file and the running service in agreement.
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|-*) exec "$here/deploy.sh" --previous "$@" ;;
  */*|*:*) ref=$1 ;;
  *)
    [[ "$1" =~ ^[0-9a-fA-F]{7,64}$ ]] || { echo "rollback: not a commit SHA: $1" >&2; exit 2; }
    ref="${REGISTRY:?set REGISTRY}/${IMAGE_NAME:?set IMAGE_NAME}:$1" ;;
esac
shift
echo "rollback: redeploying $ref" >&2
exec "$here/deploy.sh" --image "$ref" "$@"
