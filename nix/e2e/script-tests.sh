#!/usr/bin/env bash
# Tests of the pipeline scripts' input handling that need no Docker, registry or network: every value a CI
# variable or a workflow input carries into deploy.sh, rollback.sh and push.sh. Injection attempts carry a
# marker command (ssh's ProxyCommand, which runs a shell command): a test fails if the marker appears.
# Run by nix/e2e/e2e.sh (row T0) and on its own: nix/e2e/script-tests.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deploy_dir=$(cd "$here/../deploy" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); printf 'script-tests: ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'script-tests: FAIL %s\n' "$1"; sed 's/^/    /' "$tmp/out" 2>/dev/null | tail -n 5; }

# A key and known_hosts line that are well-formed; nothing listens where they are used.
ssh-keygen -q -t ed25519 -N '' -C script-tests -f "$tmp/key"
known="[127.0.0.1]:1 $(cut -d' ' -f1,2 "$tmp/key.pub")"

# run_deploy NAME WANT_RC GREP [VAR=VALUE...] -- [deploy.sh args]: run deploy.sh with a complete, valid
# environment overridden by the given variables; pass if it exits WANT_RC, prints GREP, and no marker exists.
run_deploy() {
  local name=$1 want_rc=$2 pattern=$3 rc=0
  shift 3
  local vars=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
  [ $# -eq 0 ] || shift
  [ $# -gt 0 ] || set -- --image 127.0.0.1:5000/devops-api:0123456789abcdef0123456789abcdef01234567
  rm -f "$tmp/marker"
  env -i PATH="$PATH" HOME="$tmp" DOMAIN=example.test SMOKE_TOKEN=t DEPLOY_HOST=127.0.0.1 DEPLOY_PORT=1 \
    DEPLOY_SSH_KEY_FILE="$tmp/key" DEPLOY_KNOWN_HOSTS="$known" "${vars[@]}" \
    timeout 60 "$deploy_dir/deploy.sh" --compose "$deploy_dir/../../stack.yml" "$@" > "$tmp/out" 2>&1 || rc=$?
  if [ -e "$tmp/marker" ]; then
    fail "$name: injected command ran"
  elif [ "$rc" != "$want_rc" ]; then
    fail "$name: exit $rc, want $want_rc"
  elif ! grep -q -- "$pattern" "$tmp/out"; then
    fail "$name: output lacks '$pattern'"
  else
    ok "$name"
  fi
}

inject="ProxyCommand sh -c 'touch $tmp/marker'"
# Positive control: a valid environment passes validation and fails only at the SSH connection.
run_deploy "deploy.sh valid host/port reach ssh" 1 "cannot reach 127.0.0.1 over SSH" --
run_deploy "DEPLOY_HOST with newline + ProxyCommand" 2 "invalid DEPLOY_HOST" DEPLOY_HOST=$'127.0.0.1\n  '"$inject" --
run_deploy "DEPLOY_HOST with space" 2 "invalid DEPLOY_HOST" "DEPLOY_HOST=127.0.0.1 $inject" --
run_deploy "DEPLOY_HOST as ssh option" 2 "invalid DEPLOY_HOST" "DEPLOY_HOST=-oProxyCommand=touch $tmp/marker" --
run_deploy "DEPLOY_HOST empty label" 2 "invalid DEPLOY_HOST" "DEPLOY_HOST=a..b" --
run_deploy "DEPLOY_PORT with newline + ProxyCommand" 2 "invalid DEPLOY_PORT" DEPLOY_PORT=$'22\n  '"$inject" --
run_deploy "DEPLOY_PORT 0" 2 "invalid DEPLOY_PORT" DEPLOY_PORT=0 --
run_deploy "DEPLOY_PORT 65536" 2 "invalid DEPLOY_PORT" DEPLOY_PORT=65536 --
run_deploy "DEPLOY_PORT not a number" 2 "invalid DEPLOY_PORT" DEPLOY_PORT=ssh --
run_deploy "DEPLOY_USER with newline + ProxyCommand" 2 "invalid DEPLOY_USER" DEPLOY_USER=$'deploy\n  '"$inject" --
run_deploy "STACK_NAME with space" 2 "invalid stack name" "STACK_NAME=devops --prune" --
run_deploy "--image with newline" 2 "invalid --image" -- --image $'127.0.0.1:5000/devops-api:abc\nfoo'
run_deploy "--image without registry host" 2 "invalid --image" -- --image devops-api:abc
run_deploy "--image latest" 1 "refusing to deploy the moving 'latest' tag" -- --image 127.0.0.1:5000/devops-api:latest
run_deploy "IPv6 DEPLOY_HOST passes validation" 1 "cannot reach ::1 over SSH" DEPLOY_HOST=::1 --

# deploy.sh --previous with a registry login: the login must go to the registry of the image Swarm
# recorded, which is known only after --previous resolved it (an empty image would mean Docker Hub).
# Stubs: ssh succeeds; docker answers as a manager whose API service's previous spec is $prev, records
# `login` and `stack deploy` calls in order, and fails every stack deploy (the test ends there). Its login
# reads the password from stdin like docker does (deploy.sh pipes it in; a reader that exits early would
# fail that pipe now and then).
mkdir -p "$tmp/stub"
prev="r.example:5000/team/devops-api:$(printf '%040d' 3)@sha256:$(printf '%064d' 3)"
printf '#!/bin/sh\nexit 0\n' > "$tmp/stub/ssh"
cat > "$tmp/stub/docker" <<STUB
#!/bin/sh
case "\$1 \$2" in
  "info --format") echo true ;;
  "login --username") cat > /dev/null; for a in "\$@"; do last=\$a; done; echo "login \$last" >> $tmp/docker-calls; [ -n "\$last" ] ;;
  "stack deploy") echo "stack deploy" >> $tmp/docker-calls; exit 1 ;;
  "service inspect")
    case "\$4" in
      *PreviousSpec*) echo "$prev" ;;
      *UpdateStatus.State*) echo completed ;;
      *UpdateStatus.StartedAt*) echo 2026-01-01T00:00:00Z ;;
      *ContainerSpec.Image*) echo "r.example:5000/team/devops-api:$(printf '%040d' 4)" ;;
      *Replicas*) echo 3 ;;
    esac ;;
  "service ps") ;;
  *) echo "docker stub: unexpected: \$*" >&2; exit 1 ;;
esac
STUB
chmod +x "$tmp/stub/ssh" "$tmp/stub/docker"
: > "$tmp/docker-calls"
rc=0
env -i PATH="$tmp/stub:$PATH" HOME="$tmp" DOMAIN=example.test SMOKE_TOKEN=t DEPLOY_HOST=127.0.0.1 \
  DEPLOY_SSH_KEY_FILE="$tmp/key" DEPLOY_KNOWN_HOSTS="$known" REGISTRY_USER=ci REGISTRY_PASSWORD=secret \
  timeout 60 "$deploy_dir/deploy.sh" --previous --timeout 4 --compose "$deploy_dir/../../stack.yml" > "$tmp/out" 2>&1 || rc=$?
first=$(head -n 1 "$tmp/docker-calls")
if [ "$first" = "login r.example:5000" ] && grep -qF "deploying $prev" "$tmp/out"; then
  ok "deploy.sh --previous logs in to the previous image's registry before deploying"
else
  fail "deploy.sh --previous: first docker call '$first' (want 'login r.example:5000'), exit $rc"
fi

# deploy.sh of the image the service already runs: Swarm clears UpdateStatus on that update and rolls nothing
# out. That is a deploy with nothing to do, not a failed rollout (which would "redeploy the previous image").
# Stub: the status has a StartedAt before the stack deploy and none after; three tasks run the image. The
# deploy then reaches the verification (nothing answers on port 1: exit 1 there).
mkdir -p "$tmp/stub2"
cur="r.example:5000/team/devops-api:$(printf '%040d' 5)@sha256:$(printf '%064d' 5)"
printf '#!/bin/sh\nexit 0\n' > "$tmp/stub2/ssh"
cat > "$tmp/stub2/docker" <<STUB
#!/bin/sh
case "\$1 \$2" in
  "info --format") echo true ;;
  "stack deploy") touch $tmp/deployed ;;
  "service inspect")
    case "\$4" in
      *UpdateStatus.StartedAt*) [ -e $tmp/deployed ] || echo 2026-01-01T00:00:00Z ;;
      *UpdateStatus.State*) [ -e $tmp/deployed ] || echo completed ;;
      *PreviousSpec*) echo "$cur" ;;
      *ContainerSpec.Image*) echo "$cur" ;;
      *Replicas*) echo 3 ;;
    esac ;;
  "service ps") for i in 1 2 3; do echo "Running 9 minutes ago ${cur%@*}@sha256:$(printf '%064d' 5)"; done ;;
  *) echo "docker stub: unexpected: \$*" >&2; exit 1 ;;
esac
STUB
chmod +x "$tmp/stub2/ssh" "$tmp/stub2/docker"
rm -f "$tmp/deployed"
rc=0
env -i PATH="$tmp/stub2:$PATH" HOME="$tmp" DOMAIN=example.test SMOKE_TOKEN=t DEPLOY_HOST=127.0.0.1 \
  DEPLOY_SSH_KEY_FILE="$tmp/key" DEPLOY_KNOWN_HOSTS="$known" VERIFY_CONNECT=127.0.0.1:1 VERIFY_TIMEOUT=1 \
  timeout 60 "$deploy_dir/deploy.sh" --image "$cur" --timeout 4 --compose "$deploy_dir/../../stack.yml" > "$tmp/out" 2>&1 || rc=$?
if [ "$rc" = 1 ] && grep -q 'rollout unchanged' "$tmp/out" && grep -q 'did not answer 200 (rollout completed' "$tmp/out" \
  && ! grep -q 'redeploying the previous image' "$tmp/out"; then
  ok "deploy.sh of the image that already runs: nothing to roll out, goes on to verify"
else
  fail "deploy.sh of the image that already runs: exit $rc, $(grep -o 'FAILED: .*' "$tmp/out" | sed -n 1p)"
fi

# deploy.sh after a completed rollout: once the previous image's tasks have exited (one still drains on the
# first look), it repairs the task index through a task on this node (`docker exec ... index check --repair`),
# then verifies (nothing answers on port 1: exit 1 there). Stub: a rollout whose StartedAt changes.
mkdir -p "$tmp/stub3"
printf '#!/bin/sh\nexit 0\n' > "$tmp/stub3/ssh"
cat > "$tmp/stub3/docker" <<STUB
#!/bin/sh
case "\$1 \$2" in
  "info --format") echo true ;;
  "stack deploy") touch $tmp/deployed3 ;;
  "service inspect")
    case "\$4" in
      *UpdateStatus.StartedAt*) if [ -e $tmp/deployed3 ]; then echo 2026-01-02T00:00:00Z; else echo 2026-01-01T00:00:00Z; fi ;;
      *UpdateStatus.State*) echo completed ;;
      *ContainerSpec.Image*) if [ -e $tmp/deployed3 ]; then echo "$cur"; else echo "${cur%@*}-old"; fi ;;
      *Replicas*) echo 3 ;;
    esac ;;
  "service ps")
    if [ ! -e $tmp/drained3 ]; then touch $tmp/drained3; echo "Running 20 seconds ago"; echo "Shutdown 1 minute ago"; fi ;;
  "ps --filter") echo c0ffee ;;
  "exec c0ffee") shift 2; echo "exec \$*" >> $tmp/docker-calls3; echo "index repaired: 3 entries added, 0 removed" ;;
  *) echo "docker stub: unexpected: \$*" >&2; exit 1 ;;
esac
STUB
chmod +x "$tmp/stub3/ssh" "$tmp/stub3/docker"
rm -f "$tmp/deployed3" "$tmp/drained3"
: > "$tmp/docker-calls3"
rc=0
env -i PATH="$tmp/stub3:$PATH" HOME="$tmp" DOMAIN=example.test SMOKE_TOKEN=t DEPLOY_HOST=127.0.0.1 \
  DEPLOY_SSH_KEY_FILE="$tmp/key" DEPLOY_KNOWN_HOSTS="$known" VERIFY_CONNECT=127.0.0.1:1 VERIFY_TIMEOUT=1 \
  timeout 60 "$deploy_dir/deploy.sh" --image "$cur" --timeout 20 --compose "$deploy_dir/../../stack.yml" > "$tmp/out" 2>&1 || rc=$?
if [ "$rc" = 1 ] && [ -e "$tmp/drained3" ] && [ "$(cat "$tmp/docker-calls3")" = "exec /bin/devops-api index check --repair" ] \
  && grep -q 'task index: index repaired: 3 entries added' "$tmp/out" && grep -q 'did not answer 200' "$tmp/out"; then
  ok "deploy.sh repairs the task index through a new task once the old tasks exited"
else
  fail "deploy.sh index repair: exit $rc, calls '$(paste -sd' ' "$tmp/docker-calls3")', $(grep -o 'deploy: .*' "$tmp/out" | paste -sd'|')"
fi

# rollback.sh, with stubs: deploy.sh records its arguments; skopeo answers as a registry that holds only
# the images listed in $tmp/registry (one REF per line).
mkdir -p "$tmp/rb" "$tmp/bin"
cp "$deploy_dir/rollback.sh" "$tmp/rb/rollback.sh"
printf '#!/bin/sh\nprintf "%%s\\n" "$@" > %s/deploy-args\n' "$tmp" > "$tmp/rb/deploy.sh"
cat > "$tmp/bin/skopeo" <<EOF
#!/bin/sh
# skopeo stand-in: inspect succeeds for references listed in $tmp/registry.
for a in "\$@"; do last=\$a; done
printf '%s\n' "\$@" > $tmp/skopeo-args
if grep -qxF "\${last#docker://}" $tmp/registry; then echo sha256:$(printf '%064d' 7); else echo "manifest unknown" >&2; exit 1; fi
EOF
chmod +x "$tmp/rb/deploy.sh" "$tmp/bin/skopeo"
sha=0123456789abcdef0123456789abcdef01234567
printf '%s\n' "r.example/team/devops-api:$sha" > "$tmp/registry"

run_rollback() { # NAME WANT_RC GREP WANT_DEPLOY_ARGS|- ARGS...
  local name=$1 want_rc=$2 pattern=$3 want_args=$4 rc=0 got
  shift 4
  rm -f "$tmp/deploy-args"
  env -i PATH="$tmp/bin:$PATH" HOME="$tmp" REGISTRY=r.example IMAGE_NAME=team/devops-api \
    "$tmp/rb/rollback.sh" "$@" > "$tmp/out" 2>&1 || rc=$?
  got=$(paste -sd' ' "$tmp/deploy-args" 2>/dev/null || echo -)
  if [ "$rc" != "$want_rc" ]; then
    fail "$name: exit $rc, want $want_rc"
  elif [ -n "$pattern" ] && ! grep -q -- "$pattern" "$tmp/out"; then
    fail "$name: output lacks '$pattern'"
  elif [ "$got" != "$want_args" ]; then
    fail "$name: deploy.sh got '$got', want '$want_args'"
  else
    ok "$name"
  fi
}
run_rollback "rollback full SHA in registry: deploy pinned by digest" 0 "redeploying" \
  "--image r.example/team/devops-api:$sha@sha256:$(printf '%064d' 7)" "$sha"
run_rollback "rollback full SHA not in registry: refused" 1 "is not in the registry" - \
  "fedcba9876543210fedcba9876543210fedcba98"
run_rollback "rollback short SHA: refused" 2 "not a full commit SHA" - "${sha:0:7}"
run_rollback "rollback 39 hex digits: refused" 2 "not a full commit SHA" - "${sha:0:39}"
run_rollback "rollback upper-case SHA: refused" 2 "not a full commit SHA" - "${sha^^}"
run_rollback "rollback image reference: refused" 2 "not a full commit SHA" - "evil.example/x:$sha"
run_rollback "rollback tag: refused" 2 "not a full commit SHA" - latest
run_rollback "rollback SHA with newline: refused" 2 "not a full commit SHA" - "$sha"$'\nx'
run_rollback "rollback without SHA: deploy.sh --previous" 0 "" "--previous"

# push.sh passes the repository's trust policy to skopeo, whatever /etc/containers holds.
printf '%s\n' "127.0.0.1:5000/devops-api:x" > "$tmp/registry"
cat > "$tmp/bin/skopeo" <<EOF
#!/bin/sh
printf '%s\n' "\$@" >> $tmp/skopeo-args
while [ \$# -gt 0 ]; do case \$1 in --digestfile) echo sha256:$(printf '%064d' 1) > "\$2"; shift ;; esac; shift; done
EOF
: > "$tmp/skopeo-args"
tar -cf "$tmp/image.tar" -C "$tmp" key.pub
rc=0
env -i PATH="$tmp/bin:$PATH" HOME="$tmp" "$deploy_dir/push.sh" --archive "$tmp/image.tar" \
  --image 127.0.0.1:5000/devops-api --tag "$sha" > "$tmp/out" 2>&1 || rc=$?
if [ "$rc" = 0 ] && [ "$(grep -c -- '^--policy$' "$tmp/skopeo-args")" = 1 ] \
  && grep -qxF "$deploy_dir/policy.json" "$tmp/skopeo-args" \
  && [ "$(jq -c '.default' "$deploy_dir/policy.json")" = '[{"type":"reject"}]' ]; then
  ok "push.sh passes --policy nix/deploy/policy.json (default: reject)"
else
  fail "push.sh trust policy (exit $rc): $(paste -sd' ' "$tmp/skopeo-args")"
fi

# nix-or-twin.sh: without DEVOPS_NIX_TWIN it is exactly `nix ARGS` (a stub nix records its arguments); with
# it, each Nix step of the workflows maps to its twin and says so, and anything else is refused.
twin=$deploy_dir/nix-or-twin.sh
printf '#!/bin/sh\nprintf "%%s\\n" "$@" > %s/nix-args\n' "$tmp" > "$tmp/bin/nix"
chmod +x "$tmp/bin/nix"
run_twin() { # NAME WANT_RC GREP [VAR=VALUE...] -- NIX-ARGS...
  local name=$1 want_rc=$2 pattern=$3 rc=0
  shift 3
  local vars=()
  while [ "$1" != -- ]; do vars+=("$1"); shift; done
  shift
  rm -f "$tmp/nix-args"
  env -i PATH="$tmp/bin:$PATH" HOME="$tmp" "${vars[@]}" "$twin" "$@" > "$tmp/out" 2>&1 || rc=$?
  if [ "$rc" != "$want_rc" ]; then
    fail "$name: exit $rc, want $want_rc"
  elif ! grep -qF -- "$pattern" "$tmp/out" "$tmp/nix-args" 2>/dev/null; then
    fail "$name: output lacks '$pattern'"
  else
    ok "$name"
  fi
}
run_twin "nix-or-twin without the switch runs nix itself" 0 ".#image" -- build -L .#image -o image
if [ "$(paste -sd' ' "$tmp/nix-args" 2>/dev/null)" = "build -L .#image -o image" ] && ! grep -q 'NIX TWIN' "$tmp/out"; then
  ok "nix-or-twin without the switch: the same arguments, no twin line"
else
  fail "nix-or-twin without the switch: nix got '$(paste -sd' ' "$tmp/nix-args" 2>/dev/null)'"
fi
run_twin "nix-or-twin: nix run .#push -> push.sh, logged" 0 \
  "NIX TWIN: ran nix/deploy/push.sh instead of nix run .#push, with the same arguments" DEVOPS_NIX_TWIN=1 -- run .#push -- --help
run_twin "nix-or-twin: nix run .#rollback -> rollback.sh" 0 "NIX TWIN: ran nix/deploy/rollback.sh instead of nix run .#rollback" \
  DEVOPS_NIX_TWIN=1 -- run .#rollback -- --help
run_twin "nix-or-twin: a nix command without a twin is refused" 2 "NIX TWIN: no twin for: nix develop" \
  DEVOPS_NIX_TWIN=1 -- develop
run_twin "nix-or-twin: nix build of another output is refused" 2 "no twin for: nix build .#package" \
  DEVOPS_NIX_TWIN=1 -- build .#package -o result
[ ! -e "$tmp/nix-args" ] || fail "nix-or-twin with the switch called nix"

# The twin of `nix flake check` (W1, W2's check job) is the offline evaluation without the checks that
# compile and without lint.sh's self-test: .ci/run runs all of lint.sh once before the e2e test, and each
# of those in every act job would add tens of minutes to CI. A copy of the script with stub lint.sh and cargo.
mkdir -p "$tmp/twin-root/nix/deploy" "$tmp/twin-root/nix/lint" "$tmp/twin-bin"
cp "$twin" "$tmp/twin-root/nix/deploy/"
printf '#!/bin/sh\necho "lint.sh $*" >> %s/twin-calls\n' "$tmp" > "$tmp/twin-root/nix/lint/lint.sh"
printf '#!/bin/sh\necho "cargo $*" >> %s/twin-calls\n' "$tmp" > "$tmp/twin-bin/cargo"
chmod +x "$tmp/twin-root/nix/lint/lint.sh" "$tmp/twin-bin/cargo"
rc=0
env -i PATH="$tmp/twin-bin:$tmp/bin:$PATH" HOME="$tmp" DEVOPS_NIX_TWIN=1 \
  "$tmp/twin-root/nix/deploy/nix-or-twin.sh" flake check -L --keep-going > "$tmp/out" 2>&1 || rc=$?
calls=$(paste -sd';' "$tmp/twin-calls" 2>/dev/null || true)
if [ "$rc" = 0 ] && [ "$calls" = "lint.sh --no-eval-cargo --no-selftest;cargo fmt --check" ] && grep -q '^NIX TWIN: ran .* instead of nix flake check' "$tmp/out"; then
  ok "nix-or-twin: nix flake check -> lint.sh without compiling checks or self-test, then cargo fmt --check"
else
  fail "nix-or-twin: nix flake check: exit $rc, calls '$calls'"
fi

# Under pipefail, a pipeline whose last command stops reading early (grep -q, head) fails whenever the
# writer is still writing: it dies of SIGPIPE (141). That made a passing e2e row (P4: act's log | grep -q)
# fail at random, and an assignment x=$(cmd | head -n1) would end a `set -e` script. The delivery scripts
# read whole streams instead (grep ... >/dev/null, sed -n 1p). The demonstration first, then the scan.
quiet=q # spelt apart, so that the scan below does not find the demonstration itself
rc=0
bash -c "set -o pipefail; seq 1 200000 | grep -$quiet '^1\$'" || rc=$?
rc_whole=0
bash -c "set -o pipefail; seq 1 200000 | grep '^1\$' >/dev/null" || rc_whole=$?
early=$(cd "$here/../.." && grep -nE '(^|[^|])\|[[:space:]]*(grep[[:space:]]+-[a-zA-Z]*q|head([[:space:]]|$))' \
  nix/e2e/*.sh nix/deploy/*.sh .ci/run | grep -vE '^[^:]+:[0-9]+:[[:space:]]*#' || true)
if [ "$rc" = 141 ] && [ "$rc_whole" = 0 ] && [ -z "$early" ]; then
  ok "no pipeline in nix/e2e, nix/deploy, .ci/run ends in grep -q or head (SIGPIPE under pipefail: exit 141)"
else
  fail "pipelines ending early (demo: grep -q exit $rc, whole read exit $rc_whole): $(printf '%s' "$early" | paste -sd';' - | cut -c1-300)"
fi

# platform.sh --acme-ca-certificates takes only a PEM certificate file (checked before Docker is asked).
printf 'not a certificate\n' > "$tmp/not-a-cert"
rc=0
env -i PATH="$PATH" HOME="$tmp" DOMAIN=example.test ACME_EMAIL=a@example.test DASHBOARD_SOURCE_RANGE=192.0.2.1/32 \
  "$deploy_dir/platform.sh" --acme-ca-certificates "$tmp/not-a-cert" > "$tmp/out" 2>&1 || rc=$?
if [ "$rc" = 1 ] && grep -q 'holds no PEM certificate' "$tmp/out"; then
  ok "platform.sh --acme-ca-certificates refuses a file without a PEM certificate"
else
  fail "platform.sh --acme-ca-certificates with a non-PEM file: exit $rc"
fi

printf 'script-tests: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
