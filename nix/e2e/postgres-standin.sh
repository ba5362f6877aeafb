#!/usr/bin/env bash
# A stand-in for the official PostgreSQL image (postgres:17.6-alpine in nix/deploy/platform.postgres.yml),
# which cannot be pulled here: FROM scratch out of this Debian host's own PostgreSQL (`postgresql` package,
# its binaries, their shared-library closure, its share directory and time zones), with an entrypoint that
# honours the part of the official image's interface the platform stack uses:
#   POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE; data in /var/lib/postgresql/data (PGDATA), initialised
#   on first start (scram-sha-256 for network clients); runs as the unprivileged user postgres; stops on SIGINT
#   (fast shutdown: a pooled client cannot hold it up); pg_isready, psql, pg_dump and pg_restore on PATH.
# The server is Debian's version (15 on bookworm), not 17.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/postgres-standin.sh --tag NAME:TAG

Builds the image (docker import of a FROM-scratch root file system) from the host's PostgreSQL installation
(apt-get install postgresql busybox-static). Tag it as the stack names the image where it is used.
USAGE
}

tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "postgres-standin: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || { usage >&2; exit 2; }

pgbin=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[ -x "$pgbin/postgres" ] || { echo "postgres-standin: no PostgreSQL server (apt-get install postgresql)" >&2; exit 1; }
pgdir=${pgbin%/bin}
version=${pgdir##*/}
ldd /bin/busybox >/dev/null 2>&1 && { echo "postgres-standin: /bin/busybox is not static (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/var/run/postgresql" "$root/var/lib/postgresql/data"
chmod 1777 "$root/tmp"

copy() { # DIR...: copied with modes and symlinks, at the same paths
  local d
  for d in "$@"; do
    mkdir -p "$root${d%/*}"
    cp -a "$d" "$root${d%/*}/"
  done
}
closure() { # FILE...: each file and every shared library it loads, at the same paths
  local f lib
  for f in "$@"; do
    while read -r lib; do
      [ -e "$root$lib" ] || cp --parents -L "$lib" "$root"
    done < <(ldd "$f" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)
  done
}
copy "$pgdir" "/usr/share/postgresql/$version"
# No JIT: llvmjit and its bitcode pull in LLVM (~150 MB); the server runs without them (jit is then off).
rm -rf "$root$pgdir/lib/llvmjit"* "$root$pgdir/lib/bitcode"
[ ! -d /usr/share/zoneinfo ] || copy /usr/share/zoneinfo
[ ! -d /usr/lib/locale/C.utf8 ] || copy /usr/lib/locale/C.utf8
closure "$pgdir"/bin/* "$root$pgdir"/lib/*.so
cp /bin/busybox "$root/bin/busybox"
for applet in sh cat chmod chown mkdir rm sed su test ls id env tr; do ln -s busybox "$root/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"

cat > "$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# The official image's start-up, reduced to what this project's stack uses.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec su -p -s /bin/sh postgres -c 'exec "$0" "$@"' "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=${POSTGRES_PASSWORD_FILE:-}
  [ -n "$pwfile" ] && [ -r "$pwfile" ] || { echo "postgres stand-in: POSTGRES_PASSWORD_FILE unset or unreadable" >&2; exit 1; }
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C -D "$PGDATA" >/dev/null
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "postgres stand-in: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
chmod 0755 "$root/usr/local/bin/docker-entrypoint.sh"

# docker import takes no STOPSIGNAL: a one-line build on top sets it (no context, no new layer).
tar -C "$root" -c . | docker import --change "ENV PATH=/usr/local/bin:$pgbin:/bin" \
  --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'ENV LANG=C.UTF-8' --change 'EXPOSE 5432' \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' - "$tag-rootfs" > /dev/null
previous=$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$tag-rootfs" | docker build --quiet -t "$tag" - > /dev/null
docker rmi "$tag-rootfs" > /dev/null
# The build before this one lost its tag: remove it unless a container still uses it (each run rebuilds).
[ -z "$previous" ] || [ "$previous" = "$(docker image inspect --format '{{.Id}}' "$tag")" ] \
  || docker rmi "$previous" > /dev/null 2>&1 || true
echo "postgres-standin: built $tag (PostgreSQL $version from this host's Debian packages)" >&2
