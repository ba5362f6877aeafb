#!/usr/bin/env bash
# The image of a Docker-in-Docker Swarm node for the multi-node test (nix/e2e/multinode.sh), built offline
# from Debian packages: debootstrap of the host's Debian release with docker.io and iptables, imported as an
# image whose entrypoint makes cgroups and /sys writable and starts dockerd. debootstrap runs into a tmpfs
# (dpkg's fsyncs cost minutes on a slow disk and nothing here needs durability), and the image is labelled
# with a hash of this recipe: a later run reuses it unless the recipe changed.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/node-image.sh --tag NAME:TAG [--rebuild]

Builds (debootstrap --variant=minbase --include=docker.io,iptables,iproute2,ca-certificates, then docker import)
the DinD node image unless an image with this tag and this recipe's hash exists. Run as root on Debian.
  --tag NAME:TAG   image tag (required)
  --rebuild        build even if the image exists
Environment: MN_DEBIAN_MIRROR (default: the first deb.debian.org-style URI configured for apt),
MN_DEBIAN_SUITE (default: this host's VERSION_CODENAME).
USAGE
}

tag="" rebuild=false
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    --rebuild) rebuild=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "node-image: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || { usage >&2; exit 2; }

suite=${MN_DEBIAN_SUITE:-$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)}
[ -n "$suite" ] || { echo "node-image: cannot tell the Debian release (set MN_DEBIAN_SUITE)" >&2; exit 1; }
mirror=${MN_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "node-image: no Debian mirror configured for apt (set MN_DEBIAN_MIRROR)" >&2; exit 1; }

packages=docker.io,iptables,iproute2,ca-certificates
# The entrypoint: Docker mounts /sys and the cgroup hierarchies read-only into a container that is not
# --privileged (which this host refuses: its bounding set lacks CAP_SYS_RESOURCE); dockerd needs them writable.
# shellcheck disable=SC2016 # a script for the image, expanded there
entrypoint='#!/bin/sh
set -eu
mount -o remount,rw /sys
mount -o remount,rw /sys/fs/cgroup
for d in /sys/fs/cgroup/*; do
  [ -L "$d" ] || mount -o remount,bind,rw "$d"
done
exec dockerd "$@"'
# What the image is made of; edits elsewhere in this script do not force a rebuild.
recipe=$(printf '%s\n' "$suite" "$packages" "$entrypoint" | sha256sum | cut -c1-16)
if [ "$rebuild" = false ] \
  && [ "$(docker image inspect --format '{{index .Config.Labels "devops-api.mn.recipe"}}' "$tag" 2>/dev/null)" = "$recipe" ]; then
  echo "node-image: $tag present (recipe $recipe)" >&2
  exit 0
fi
command -v debootstrap >/dev/null || { echo "node-image: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  mountpoint -q "$work/root" && umount "$work/root"
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/root"
mount -t tmpfs -o size=3g,mode=0755 mn-node-rootfs "$work/root"
t=$SECONDS
debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; echo "node-image: debootstrap failed" >&2; exit 1; }
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*

printf '%s\n' "$entrypoint" > "$work/root/usr/local/bin/mn-node-entrypoint"
chmod 0755 "$work/root/usr/local/bin/mn-node-entrypoint"
previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
tar -C "$work/root" -c . | docker import --change 'ENTRYPOINT ["/usr/local/bin/mn-node-entrypoint"]' \
  --change "LABEL devops-api.mn.recipe=$recipe" - "$tag" > /dev/null
# The image this one replaces lost its tag: remove it unless a container still uses it.
[ -z "$previous" ] || [ "$previous" = "$(docker image inspect --format '{{.Id}}' "$tag")" ] \
  || docker rmi "$previous" > /dev/null 2>&1 || true
echo "node-image: built $tag from $suite ($mirror) in $((SECONDS - t)) s" >&2
