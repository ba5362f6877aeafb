#!/usr/bin/env bash
# Roll the API back by redeploying the image of an earlier commit through the same path as a deploy
# (nix/deploy/deploy.sh): pinned SSH host key, stack deploy, rollout check, HTTPS verification.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/deploy/rollback.sh [SHA] [deploy.sh options...]

  SHA         full commit SHA (40 or 64 lowercase hex digits) whose image the pipeline pushed:
              $REGISTRY/$IMAGE_NAME:SHA must exist in the registry (checked with skopeo inspect);
              the deploy pins that image by the digest the registry reports
  (nothing)   redeploy the image of the service's previous spec as Swarm recorded it

Nothing else is accepted: no short SHA, no tag, no image reference from elsewhere.

Takes the same environment as nix/deploy/deploy.sh (DEPLOY_HOST, DEPLOY_SSH_KEY, DEPLOY_KNOWN_HOSTS, DOMAIN,
SMOKE_TOKEN, ...) plus REGISTRY and IMAGE_NAME, and REGISTRY_USER/REGISTRY_PASSWORD for a private registry
(the same read credentials the swarm gets). Swarm's own `docker service rollback` only goes back one spec;
redeploying a known-good SHA is the real rollback, and it leaves the stack file and the running service in
agreement.
USAGE
}

die() { echo "rollback: $*" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|-*) exec "$here/deploy.sh" --previous "$@" ;;
esac
sha=$1
shift
[[ "$sha" =~ ^([0-9a-f]{40}|[0-9a-f]{64})$ ]] \
  || die "not a full commit SHA (40 or 64 lowercase hex digits): $(printf %q "$sha")"
: "${REGISTRY:?set REGISTRY}" "${IMAGE_NAME:?set IMAGE_NAME}"
[[ "$REGISTRY" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?$ ]] || die "invalid REGISTRY: $(printf %q "$REGISTRY")"
[[ "$IMAGE_NAME" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] \
  || die "invalid IMAGE_NAME: $(printf %q "$IMAGE_NAME")"
ref="$REGISTRY/$IMAGE_NAME:$sha"

# The registry must hold the image: a SHA that was never pushed (or a typo of one) stops here, before
# anything is deployed.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=()
case "$REGISTRY" in localhost|localhost:*|127.*) args+=(--tls-verify=false) ;; esac
if [ -n "${REGISTRY_USER:-}" ]; then
  : "${REGISTRY_PASSWORD:?REGISTRY_USER is set but REGISTRY_PASSWORD is not}"
  auth=$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64 -w0)
  (umask 077; printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$REGISTRY" "$auth" > "$work/auth.json")
  args+=(--authfile "$work/auth.json")
fi
if ! digest=$(skopeo inspect "${args[@]}" --format '{{.Digest}}' "docker://$ref" 2> "$work/err"); then
  echo "rollback: $ref is not in the registry (skopeo inspect: $(tail -n 1 "$work/err"))" >&2
  exit 1
fi
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "rollback: unexpected digest for $ref: $digest" >&2; exit 1; }
echo "rollback: redeploying $ref@$digest" >&2
rm -rf "$work"
trap - EXIT
exec "$here/deploy.sh" --image "$ref@$digest" "$@"
