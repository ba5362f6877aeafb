#!/usr/bin/env bash
# Push an image archive (what `nix build .#image` or nix/deploy/build-image.sh --out produces) to a registry with
# skopeo, tagged with the commit SHA (plus optional moving tags), and print the pinned reference.
#
# skopeo's trust policy comes from the repository (nix/deploy/policy.json, passed with --policy), never from
# /etc/containers/policy.json: the Nix job image has no /etc/containers, and a host file could say anything.
# The policy accepts only docker-archive sources, the archive this job built (there is no signature to
# check on it), and rejects every other transport.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/deploy/push.sh --archive FILE --image REGISTRY/NAME --tag SHA [--also-tag TAG]... [--insecure]

Pushes FILE (a docker-archive tar, gzipped or not, or a streamLayeredImage script that writes one) to
REGISTRY/NAME:SHA with skopeo, then to each --also-tag (a moving tag such as `main`; the SHA tag is always
pushed). Prints one line on stdout: REGISTRY/NAME:SHA@sha256:DIGEST (what nix/deploy/deploy.sh --image takes).

Environment (optional, from CI secrets; never printed):
  REGISTRY_USER, REGISTRY_PASSWORD   credentials (a token with package scope for Gitea's registry)
  POLICY_FILE                        skopeo trust policy (default: policy.json beside this script)
  --insecure                         plain HTTP / unverified TLS (implied for a registry on loopback)
USAGE
}

archive="" image="" tag="" insecure=false
also=()
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --also-tag) also+=("$2"); shift 2 ;;
    --insecure) insecure=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "push: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$archive" ] || [ -z "$image" ] || [ -z "$tag" ]; then usage >&2; exit 2; fi
[ -e "$archive" ] || { echo "push: archive not found: $archive" >&2; exit 1; }
case "$tag" in
  latest) echo "push: refusing to push only 'latest'; tag with the commit SHA" >&2; exit 2 ;;
esac

policy=${POLICY_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/policy.json}
[ -f "$policy" ] || { echo "push: trust policy not found: $policy" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

src=$archive
# A streamLayeredImage result is a script that writes the archive to stdout.
if [ -x "$archive" ] && ! tar -tf "$archive" >/dev/null 2>&1 && ! gzip -t "$archive" 2>/dev/null; then
  "$archive" > "$work/image.tar"
  src=$work/image.tar
fi

# Like Docker, a registry on loopback is spoken to without TLS (the end-to-end test's local registry).
case "${image%%/*}" in
  localhost|localhost:*|127.*) insecure=true ;;
esac
args=(--quiet)
if [ "$insecure" = true ]; then
  args+=(--dest-tls-verify=false)
fi
if [ -n "${REGISTRY_USER:-}" ]; then
  : "${REGISTRY_PASSWORD:?REGISTRY_USER is set but REGISTRY_PASSWORD is not}"
  # An auth file instead of --dest-creds keeps the password out of the process list.
  registry=${image%%/*}
  auth=$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASSWORD" | base64 -w0)
  umask 077
  printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$registry" "$auth" > "$work/auth.json"
  args+=(--dest-authfile "$work/auth.json")
fi

skopeo --policy "$policy" copy "${args[@]}" --digestfile "$work/digest" "docker-archive:$src" "docker://$image:$tag" >&2
digest=$(cat "$work/digest")
for t in "${also[@]}"; do
  skopeo --policy "$policy" copy "${args[@]}" "docker-archive:$src" "docker://$image:$t" >&2
done
echo "push: pushed $image:$tag ($digest)${also[*]:+ and ${also[*]}}" >&2
echo "$image:$tag@$digest"
