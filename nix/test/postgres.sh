#!/usr/bin/env bash
# Runs the PostgreSQL test suite (tests/postgres.rs) against a throwaway
# PostgreSQL cluster on loopback: installs Debian's `postgresql` if it is
# missing, creates the cluster with initdb in a temp dir, exports
# TEST_DATABASE_URL, runs `cargo nextest run --test postgres`, and removes the
# cluster on exit. A server that cannot start fails the run; nothing is skipped.
# The server offers TLS with a certificate for `localhost` signed by a CA made
# for the run (openssl): TEST_PG_CA_FILE is that CA, TEST_PG_WRONG_CA_FILE an
# unrelated one, for the TLS tests.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/test/postgres.sh [--port PORT] [--keep] [-- NEXTEST_ARGS...]
       nix/test/postgres.sh [--port PORT] --exec COMMAND [ARGS...]

Starts a throwaway PostgreSQL cluster on 127.0.0.1 and runs
`cargo nextest run --test postgres` against it (the storage contract suite and
the pg_* tests), or COMMAND with TEST_DATABASE_URL exported (nix/test/test.sh runs
the whole suite this way). Installs Debian's `postgresql` package with apt-get if the
server binaries are missing (needs root).

Options:
  --port PORT   port for the cluster (default: a free port chosen at random)
  --keep        leave the cluster running after a successful run (for debugging)
  --exec CMD    run CMD and its arguments instead of the PostgreSQL tests
  -h, --help    this help

Environment:
  PG_BINDIR         directory of initdb/pg_ctl (default: newest /usr/lib/postgresql/*/bin)
  CARGO_TARGET_DIR  honoured as usual
EOF
}

port=""
keep=0
nextest_args=()
exec_cmd=()
while (($#)); do
  case "$1" in
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --exec) shift; (($#)) || { echo "--exec needs a command" >&2; exit 2; }; exec_cmd=("$@"); break ;;
    --) shift; nextest_args=("$@"); break ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*" >&2; }

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    printf '%s\n' "$PG_BINDIR"
    return
  fi
  local d
  d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1 || true)
  printf '%s\n' "$d"
}

bindir=$(find_bindir)
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  log "installing PostgreSQL from Debian's packages"
  if [[ $(id -u) -ne 0 ]]; then
    echo "PostgreSQL is not installed and this is not root: install the postgresql package" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # Debian's package creates and starts a `main` cluster; this run uses its own.
  bindir=$(find_bindir)
fi
[[ -x "$bindir/initdb" ]] || { echo "initdb not found in '$bindir'" >&2; exit 1; }
export PG_BINDIR="$bindir"

if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

# The server refuses to run as root: as root, run it as the `postgres` user
# (created by Debian's package).
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_pg=(runuser -u postgres --)
fi

workdir=$(mktemp -d -t devops-pg-XXXXXX)
chmod 0755 "$workdir"
if [[ $(id -u) -eq 0 ]]; then
  chown postgres:postgres "$workdir"
fi
data="$workdir/data"

cleanup() {
  local rc=$?
  if ((keep)) && ((rc == 0)); then
    log "cluster kept: $data (stop with: ${as_pg[*]} $bindir/pg_ctl -D $data stop)"
    return
  fi
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$workdir"
  exit "$rc"
}
trap cleanup EXIT

# A CA for this run, the server's certificate for `localhost` only (no IP
# address: connecting to 127.0.0.1 with verify-full must fail), and an
# unrelated CA that must be refused.
certs="$workdir/certs"
mkdir -p "$certs"
command -v openssl >/dev/null || { echo "openssl is needed to make the test certificates" >&2; exit 1; }
new_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$1" -keyout "$certs/$2.key" -out "$certs/$2.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
new_ca "devops-api test CA" ca
new_ca "unrelated test CA" wrong-ca
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
  -keyout "$certs/server.key" -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  >"$certs/server.ext"
openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.pem" -CAkey "$certs/ca.key" -CAcreateserial \
  -days 2 -extfile "$certs/server.ext" -out "$certs/server.pem" 2>/dev/null
chmod 0600 "$certs/server.key"
if [[ $(id -u) -eq 0 ]]; then
  chown -R postgres:postgres "$certs"
fi
export TEST_PG_CA_FILE="$certs/ca.pem" TEST_PG_WRONG_CA_FILE="$certs/wrong-ca.pem"

log "initdb in $data"
"${as_pg[@]}" "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-sync >"$workdir/initdb.log" 2>&1 \
  || { cat "$workdir/initdb.log" >&2; exit 1; }

log "starting PostgreSQL on 127.0.0.1:$port"
# max_connections: parallel tests each hold a small pool; fsync off: throwaway data.
# TLS on; trust authentication (initdb -A trust) accepts plain and TLS connections.
if ! "${as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$workdir/server.log" -w -t 60 \
  -o "-p $port -c listen_addresses=127.0.0.1 -k $data -c max_connections=300 -c fsync=off -c ssl=on -c ssl_cert_file=$certs/server.pem -c ssl_key_file=$certs/server.key" start >/dev/null; then
  cat "$workdir/server.log" >&2
  exit 1
fi

# Plain TCP for the suite (it measures behaviour, and some tests race a pool's
# wait timeout on a loaded machine); the TLS tests set their own sslmode.
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
log "TEST_DATABASE_URL=$TEST_DATABASE_URL"
psql "$TEST_DATABASE_URL" -Atqc 'SELECT version()' >&2 || { echo "the server does not answer" >&2; exit 1; }

if ((${#exec_cmd[@]})); then
  "${exec_cmd[@]}"
else
  cargo nextest run --test postgres --no-fail-fast "${nextest_args[@]}"
fi
