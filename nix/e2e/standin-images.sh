#!/usr/bin/env bash
# Stand-in images for the platform services whose real images cannot be pulled on a machine without a
# registry connection, built FROM scratch out of Debian binaries and their shared-library closure:
#
#   socket-proxy  tecnativa/docker-socket-proxy:v0.4.1 behaviour: Debian's haproxy with that image's own
#                 haproxy.cfg and entrypoint steps (nix/e2e/socket-proxy/), same environment defaults
#   gitea         an HTTP server on :3000 (busybox httpd): gives Traefik's git.DOMAIN route a backend
#   runner        checks that its config and registration token are mounted where act_runner reads them,
#                 then idles: gives the runner services task ids and mounts to inspect
#   client        curl and busybox, for requests from inside the overlay networks (one-shot services)
#
# Only the socket proxy stands in for behaviour the test relies on; Gitea and act_runner do not run here.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/standin-images.sh --socket-proxy TAG --gitea TAG --runner TAG --client TAG

Builds the four images (docker build), each tagged as given. Needs haproxy, busybox-static and curl
installed on this Debian host (nix/e2e/e2e.sh installs them).
USAGE
}

declare -A tags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --socket-proxy|--gitea|--runner|--client) tags[${1#--}]=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "standin-images: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for k in socket-proxy gitea runner client; do
  [ -n "${tags[$k]:-}" ] || { usage >&2; exit 2; }
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for bin in /usr/sbin/haproxy /bin/busybox /usr/bin/curl; do
  [ -x "$bin" ] || { echo "standin-images: $bin missing (apt-get install haproxy busybox-static curl)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/tmp" "$root/www" "$root/etc" "$root/usr/local/etc/haproxy/errors" "$root/var/lib/haproxy"
chmod 1777 "$root/tmp"

# A binary and every shared library it loads, at the same paths.
closure() { # BINARY
  local lib
  cp --parents -L "$1" "$root"
  while read -r lib; do
    cp --parents -L "$lib" "$root"
  done < <(ldd "$1" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)
}
closure /usr/sbin/haproxy
closure /usr/bin/curl
cp /bin/busybox "$root/bin/busybox"
for applet in sh sed tr cat wc test sleep httpd echo ls; do ln -s busybox "$root/bin/$applet"; done
ln -s /usr/sbin/haproxy "$root/bin/haproxy"
cp /etc/haproxy/errors/*.http "$root/usr/local/etc/haproxy/errors/"
cp "$here/socket-proxy/haproxy.cfg" "$root/usr/local/etc/haproxy/haproxy.cfg.template"
install -m 0755 "$here/socket-proxy/entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$root/etc/group"
printf '<!doctype html><title>Gitea stand-in</title><p>gitea stand-in (e2e)\n' > "$root/www/index.html"

cat > "$root/usr/local/bin/gitea-standin" <<'EOF'
#!/bin/sh
# Stand-in for Gitea: serve a page on :3000 until SIGTERM.
trap 'kill "$pid" 2>/dev/null; exit 0' TERM INT
httpd -f -p 3000 -h /www &
pid=$!
wait "$pid"
EOF
cat > "$root/usr/local/bin/runner-standin" <<'EOF'
#!/bin/sh
# Stand-in for act_runner: fail unless the config and the registration token are where run.sh reads them.
set -e
test -r "$CONFIG_FILE" || { echo "runner stand-in: CONFIG_FILE $CONFIG_FILE not readable" >&2; exit 1; }
test -r "$GITEA_RUNNER_REGISTRATION_TOKEN_FILE" || { echo "runner stand-in: token file missing" >&2; exit 1; }
echo "runner stand-in: config $CONFIG_FILE ($(wc -c < "$CONFIG_FILE") bytes), instance $GITEA_INSTANCE_URL"
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
EOF
chmod 0755 "$root/usr/local/bin/gitea-standin" "$root/usr/local/bin/runner-standin"

common='FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin'
build() { # TAG DOCKERFILE-TAIL
  printf '%s\n%s\n' "$common" "$2" > "$work/Dockerfile"
  docker build --quiet -t "$1" "$work" >/dev/null
  echo "standin-images: built $1" >&2
}
# The environment defaults of tecnativa/docker-socket-proxy v0.4.1's Dockerfile.
build "${tags[socket-proxy]}" 'ENV ALLOW_RESTARTS=0 ALLOW_STOP=0 ALLOW_START=0 AUTH=0 BUILD=0 COMMIT=0 CONFIGS=0 \
    CONTAINERS=0 DISABLE_IPV6=0 DISTRIBUTION=0 EVENTS=1 EXEC=0 GRPC=0 IMAGES=0 INFO=0 LOG_LEVEL=info \
    NETWORKS=0 NODES=0 PING=1 PLUGINS=0 POST=0 SECRETS=0 SERVICES=0 SESSION=0 \
    SOCKET_PATH=/var/run/docker.sock SWARM=0 SYSTEM=0 TASKS=0 VERSION=1 VOLUMES=0
EXPOSE 2375
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["haproxy", "-f", "/tmp/haproxy.cfg"]'
build "${tags[gitea]}" 'EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/gitea-standin"]'
build "${tags[runner]}" 'ENTRYPOINT ["/usr/local/bin/runner-standin"]'
build "${tags[client]}" 'ENTRYPOINT ["/usr/bin/curl"]'
