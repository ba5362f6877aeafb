# shellcheck shell=bash
# Helpers for nix/e2e/e2e.sh and nix/e2e/multinode.sh: machine setup (Docker, swarm, registry, sshd), load runs
# and the result table. Sourced, not run. Expects: W (work dir), ROOT (repository), and the variables e2e.sh
# sets; TARGET_ADDR is where Traefik's HTTPS port listens (default 127.0.0.1), LOAD_WORKERS the load
# generator's connections (default 256).

log() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }

# --- the machine --------------------------------------------------------------------------------------------
ensure_packages() {
  local missing=() pair
  for pair in dockerd:docker.io docker-registry:docker-registry skopeo:skopeo sshd:openssh-server \
    curl:curl jq:jq openssl:openssl python3:python3 ssh:openssh-client haproxy:haproxy busybox:busybox-static \
    htpasswd:apache2-utils unshare:util-linux ss:iproute2; do
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
  if ! docker info --format '{{.Swarm.LocalNodeState}}' | grep -qx active; then
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
  if [ -n "${2:-}" ] && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$2"; then return 0; fi
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do
    [ -e "/proc/$pid" ] || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# Stop every process a run (this one or an earlier, killed one) recorded under $W.
stop_recorded_processes() {
  local f
  for f in "$W"/*.pid; do
    [ -e "$f" ] || continue
    case "$f" in
      */registry.pid) stop_pidfile "$f" docker-registry ;;
      *) stop_pidfile "$f" loadgen.py ;;
    esac
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

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

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
