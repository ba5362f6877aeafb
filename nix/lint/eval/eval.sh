#!/usr/bin/env bash
# Offline evaluation of the flake, then each check's command on the source set the flake gives it.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/lint/eval/eval.sh [--repo DIR] [--only NAME[,NAME...]] [--no-commands] [--no-cargo]
                            [--no-cargo-tests] [-h|--help]

1. Copies the flake's source as Nix sees it (git-tracked files; every file but .git and target/
   when DIR is not a git checkout).
2. Evaluates flake.nix's `outputs` with Debian's nix-instantiate (2.8 is enough), the real nixpkgs
   lib and stand-ins for nixpkgs' packages and crane (nix/lint/eval/stubs.nix) that check every
   argument name against the signatures of the pinned versions (crane.json, nixpkgs.json). Every
   output of every declared system is forced, as instantiating it would.
3. Runs the checks of this machine's system, each on exactly its `src` (lib.fileset.toSource,
   evaluated by the real lib and copied into /nix/store): runCommand checks run their own
   buildCommand with only their nativeBuildInputs (mapped to local tools) and stdenv's basic
   tools on PATH; crane checks run the cargo command crane would (fmt, audit, clippy, build,
   nextest) in a writable copy of their `src`. The image is evaluated, not built.
4. Runs the build-image app's wrapper on a PATH without rustup: it must stop with its explanation.

Options:
  --repo DIR        the flake to evaluate (default: this repository)
  --only NAMES      run only these checks' commands (names of checks.<system>.*, or `apps`)
  --no-commands     evaluate only
  --no-cargo        skip the crane checks that compile (clippy, package, nextest); says so
  --no-cargo-tests  skip the compiling and running of nextest and package, keep clippy (which
                    compiles every target of the same source set); says so. The nextest check's
                    source set is still checked to hold every file of src/ and tests/ (what the
                    tests read at run time). For CI, whose test step runs the same tests

Environment (each one is required; a missing one fails the run and says where to get it):
  NIXPKGS_LIB       nixpkgs' lib directory (default: ../shared/nix/nixpkgs-lib/lib beside the
                    checkout holding this script, then /work/shared/nix/nixpkgs-lib/lib)
  ADVISORY_DB       RustSec advisory database for checks.audit (default: ../shared/advisory-db,
                    then /work/shared/advisory-db)
  LINT_TOOLS        where nix/lint/lint.sh installed shellcheck, actionlint, cargo-audit
                    (default: target/lint-tools)
  EVAL_TARGET_DIR   cargo target directory for the crane checks (default: target/flake-eval,
                    kept between runs so dependencies compile once; never the checkout's own)
EOF
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
only=""
commands=1
cargo=1
cargo_tests=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) repo="$(cd "$2" && pwd)"; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    --no-commands) commands=0; shift ;;
    --no-cargo) cargo=0; shift ;;
    --no-cargo-tests) cargo_tests=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools_repo="$(cd "$here/../../.." && pwd)"
LINT_TOOLS="${LINT_TOOLS:-$tools_repo/target/lint-tools}"
# Its own target directory: cargo hashes a workspace member's artifacts independently of where
# the crate lives, and judges freshness by the files its dep-info names; in the checkout's
# target/ a build of the checkout itself would count as fresh for the flake's source set.
EVAL_TARGET_DIR="${EVAL_TARGET_DIR:-$tools_repo/target/flake-eval}"

say() { printf 'eval: %s\n' "$*"; }
die() { printf 'eval: %s\n' "$*" >&2; exit 1; }

# first_dir VAR CANDIDATE...: the first existing directory, or a loud failure.
first_dir() {
  local var="$1" d
  shift
  for d in "$@"; do
    [[ -n "$d" && -d "$d" ]] && { printf '%s\n' "$d"; return 0; }
  done
  die "$var not found (looked in: $*). Set $var, or provide the shared folder beside the repository."
}
# The shared folder beside this checkout (CI lays it there), whichever flake --repo names.
shared="$tools_repo/../shared"
# A variable that is set is the only place looked at.
if [[ -n "${NIXPKGS_LIB:-}" ]]; then
  NIXPKGS_LIB="$(first_dir NIXPKGS_LIB "$NIXPKGS_LIB")"
else
  NIXPKGS_LIB="$(first_dir NIXPKGS_LIB "$shared/nix/nixpkgs-lib/lib" /work/shared/nix/nixpkgs-lib/lib)"
fi
if [[ -n "${ADVISORY_DB:-}" ]]; then
  ADVISORY_DB="$(first_dir ADVISORY_DB "$ADVISORY_DB")"
else
  ADVISORY_DB="$(first_dir ADVISORY_DB "$shared/advisory-db" /work/shared/advisory-db)"
fi
[[ -f "$NIXPKGS_LIB/default.nix" ]] || die "NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix"
[[ -d "$ADVISORY_DB/crates" ]] || die "ADVISORY_DB=$ADVISORY_DB is not an advisory database (no crates/)"
command -v nix-instantiate >/dev/null || die "nix-instantiate not found (apt-get install nix-bin)"

work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# 1. The flake's source as Nix copies it: for a git checkout, the tracked files only.
src="$work/flake"
mkdir -p "$src"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$repo" && git ls-files -z --cached | while IFS= read -r -d '' f; do
    [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"
  done | xargs -0 -r cp -a --parents -t "$src")
else
  (cd "$repo" && tar -c --exclude=./.git --exclude=./target . | tar -x -C "$src")
fi

# 2. Evaluate.
eval_json="$work/eval.json"
if ! nix-instantiate --eval --strict --json --read-write-mode "$here/eval.nix" \
  --arg root "$src" --arg libDir "$NIXPKGS_LIB" --argstr advisoryDb "$ADVISORY_DB" \
  >"$eval_json" 2>"$work/eval.err"; then
  sed 's/^/    /' "$work/eval.err" >&2
  die "flake evaluation failed"
fi
jq -r '.evaluated | to_entries[] | .key as $kind | .value | to_entries[]
  | "\($kind).\(.key): \(if $kind == "formatter" then .value.name else (.value | keys | join(" ")) end)"' \
  "$eval_json" | sed 's/^/eval: evaluated /'
say "nixpkgs lib $(jq -r .libVersion "$eval_json") from $NIXPKGS_LIB"
[[ "$commands" == 1 ]] || exit 0

case "$(uname -m)" in
  x86_64) system=x86_64-linux ;;
  aarch64) system=aarch64-linux ;;
  *) die "no checks for $(uname -m)" ;;
esac
wanted() { [[ -z "$only" || "$only" == *",$1,"* ]]; }

# Local stand-ins for nixpkgs packages named in nativeBuildInputs / runtimeInputs.
debian_bins() {
  dpkg -L "$1" 2>/dev/null | grep -E '^(/usr)?/s?bin/[^/]+$' || true
}
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
# package_bins NAME: the executables that stand for nixpkgs package NAME here.
package_bins() {
  case "$1" in
    shellcheck | actionlint) printf '%s\n' "$LINT_TOOLS/bin/$1" ;;
    cargo-audit) printf '%s\n' "$LINT_TOOLS/bin/cargo-audit" ;;
    nixfmt | deadnix | jq | git | curl | openssl | skopeo | python3 | bash) command -v "$1" ;;
    docker-client) stack_docker ;;
    gnugrep) debian_bins grep ;;
    gnused) debian_bins sed ;;
    gzip | gawk | findutils | coreutils) debian_bins "$1" ;;
    binutils) debian_bins binutils-x86-64-linux-gnu; debian_bins binutils ;;
    openssh) debian_bins openssh-client ;;
    oha) command -v oha ;;
    *) return 1 ;;
  esac
}
# stdenv's basic tools (what every nixpkgs build has on PATH), listed once.
stdenv_bins="$work/stdenv-bins"
for pkg in coreutils findutils diffutils sed grep gawk tar gzip bzip2 xz-utils make bash patch; do
  debian_bins "$pkg"
done >"$stdenv_bins"
# make_path DIR PACKAGE...: DIR with stdenv's basic tools and the packages' executables.
make_path() {
  local dir="$1" pkg exe
  shift
  mkdir -p "$dir"
  while IFS= read -r exe; do
    [[ -x "$exe" ]] && ln -sf "$exe" "$dir/$(basename "$exe")"
  done <"$stdenv_bins"
  for pkg in "$@"; do
    local found=0
    while IFS= read -r exe; do
      [[ -n "$exe" && -x "$exe" ]] || continue
      ln -sf "$exe" "$dir/$(basename "$exe")"
      found=1
    done < <(package_bins "$pkg" || true)
    [[ "$found" == 1 ]] || { echo "no local stand-in for nixpkgs package '$pkg'"; return 1; }
  done
}

passed=0
failed=0
failures=()
result() {
  local name="$1" rc="$2" log="$3" took="$4"
  if [[ "$rc" == 0 ]]; then
    printf 'eval: check %-15s ok (%ds)\n' "$name" "$took"
    passed=$((passed + 1))
  else
    printf 'eval: check %-15s FAILED (%ds)\n' "$name" "$took"
    sed 's/^/    /' "$log" | tail -n 60
    failed=$((failed + 1))
    failures+=("$name")
  fi
}

# writable_copy STOREPATH DIR: the check's source where cargo may write. Not `cp -a`: store
# files carry mtime 1970, which cargo would take as older than any artifact.
writable_copy() {
  cp -r "$1" "$2"
  chmod -R u+w "$2"
}

run_runcommand() {
  local name="$1" json="$2"
  local dir="$work/run/$name" rc=0
  mkdir -p "$dir/build" "$dir/tmp"
  local -a inputs envs=()
  mapfile -t inputs < <(jq -r '.nativeBuildInputs[]' <<<"$json")
  make_path "$dir/path" "${inputs[@]}" >"$dir/log" 2>&1 || return 1
  while IFS= read -r kv; do envs+=("$kv"); done < <(jq -r '.env | to_entries[] | "\(.key)=\(.value)"' <<<"$json")
  (cd "$dir/build" && env -i PATH="$dir/path" HOME="$dir/tmp" TMPDIR="$dir/tmp" NIX_BUILD_TOP="$dir/build" \
    out="$dir/out" "${envs[@]}" bash -euo pipefail -c "$(jq -r .buildCommand <<<"$json")") >>"$dir/log" 2>&1 || rc=$?
  if [[ "$rc" == 0 && ! -e "$dir/out" ]]; then
    echo "the command did not create \$out" >>"$dir/log"
    rc=1
  fi
  return "$rc"
}

# crane's checks: the command crane's builder runs, in the check's own source. Profile: dev
# (crane builds with --profile release; the source set, not the optimiser, is what is checked).
run_crane() {
  local name="$1" json="$2"
  local dir="$work/run/$name" kind srcp
  kind="$(jq -r .kind <<<"$json")"
  srcp="$(jq -r .src <<<"$json")"
  arg() { jq -r --arg k "$1" --arg d "$2" '.args[$k] // $d' <<<"$json"; }
  mkdir -p "$dir"
  case "$kind" in
    crane.cargoAudit)
      [[ -x "$LINT_TOOLS/bin/cargo-audit" ]] || { echo "cargo-audit not installed in $LINT_TOOLS (run nix/lint/lint.sh)"; return 1; }
      local -a extra
      read -ra extra <<<"$(arg cargoAuditExtraArgs "--ignore yanked")"
      (cd "$(jq -r .auditSrc <<<"$json")" && echo "audited source: $(find . -type f | sort | tr '\n' ' ')" &&
        "$LINT_TOOLS/bin/cargo-audit" audit -n -d "$(jq -r .advisoryDb <<<"$json")" "${extra[@]}")
      ;;
    crane.cargoFmt)
      writable_copy "$srcp" "$dir/src"
      (cd "$dir/src" && bash -c "cargo fmt $(arg cargoExtraArgs "") -- --check $(arg rustFmtExtraArgs "")")
      ;;
    crane.cargoClippy)
      writable_copy "$srcp" "$dir/src"
      (cd "$dir/src" && CARGO_TARGET_DIR="$EVAL_TARGET_DIR" bash -c "cargo clippy $(arg cargoExtraArgs --locked) $(arg cargoClippyExtraArgs --all-targets)")
      ;;
    crane.buildPackage)
      if [[ "$cargo_tests" == 0 ]]; then
        echo "NOT RUN (--no-cargo-tests): clippy compiled every target of this source set"
        return 0
      fi
      # The nextest run compiled this source's bin target (integration tests run the binary);
      # a separate `cargo build` would only add a rebuild of dependencies without dev-features.
      if [[ "$(jq -r '.src' <<<"$json")" == "${nextest_src:-}" ]]; then
        echo "compiled by the nextest run of the same source ($srcp)"
        return 0
      fi
      writable_copy "$srcp" "$dir/src"
      (cd "$dir/src" && CARGO_TARGET_DIR="$EVAL_TARGET_DIR" bash -c "cargo build $(arg cargoExtraArgs --locked) $(arg cargoBuildExtraArgs "")")
      ;;
    crane.cargoNextest)
      # Tests read files at run time (golden files, fixtures) that no compiler sees: every file of
      # the crate's own trees must be in the source set the check gets.
      local missing
      missing="$(cd "$src" && find src tests build.rs Cargo.toml Cargo.lock .config/nextest.toml \
        -type f 2>/dev/null | sort | while IFS= read -r f; do [[ -e "$srcp/$f" ]] || echo "$f"; done)"
      if [[ -n "$missing" ]]; then
        echo "the check's source set lacks files of the crate the tests may read:"
        while IFS= read -r f; do echo "  $f"; done <<<"$missing"
        return 1
      fi
      echo "source set holds all $(cd "$src" && find src tests build.rs Cargo.toml Cargo.lock -type f 2>/dev/null | wc -l) files of src/, tests/ and the manifests"
      if [[ "$cargo_tests" == 0 ]]; then
        echo "NOT RUN (--no-cargo-tests): compiling and running the tests"
        return 0
      fi
      writable_copy "$srcp" "$dir/src"
      (cd "$dir/src" && CARGO_TARGET_DIR="$EVAL_TARGET_DIR" NEXTEST_HIDE_PROGRESS_BAR=1 \
        bash -c "cargo nextest run $(arg cargoExtraArgs "") $(arg cargoNextestExtraArgs "")")
      ;;
    *)
      echo "no runner for $kind"
      return 1
      ;;
  esac
}

# 3. Each check of this system, cheapest first; the build after nextest, which compiled it already.
mapfile -t checks < <(jq -r --arg s "$system" '.evaluated.checks[$s] | to_entries
  | sort_by(.value.kind as $k | if $k == "runCommand" then 0 elif $k == "crane.cargoNextest" then 2
            elif $k == "crane.buildPackage" then 3 elif $k == "crane.cargoClippy" then 4 else 1 end)[]
  | .key' "$eval_json")
for name in "${checks[@]}"; do
  wanted "$name" || continue
  json="$(jq -c --arg s "$system" --arg n "$name" '.evaluated.checks[$s][$n]' "$eval_json")"
  kind="$(jq -r .kind <<<"$json")"
  log="$work/$name.log"
  rc=0
  t0=$SECONDS
  if [[ "$cargo" == 0 && "$kind" =~ ^crane\.(cargoClippy|buildPackage|cargoNextest)$ ]]; then
    say "check $name NOT RUN (--no-cargo)"
    continue
  fi
  case "$kind" in
    runCommand) run_runcommand "$name" "$json" >"$log" 2>&1 || rc=$?; [[ -f "$work/run/$name/log" ]] && cat "$work/run/$name/log" >>"$log" ;;
    crane.*)
      run_crane "$name" "$json" >"$log" 2>&1 || rc=$?
      [[ "$kind" == crane.cargoNextest && "$rc" == 0 ]] && nextest_src="$(jq -r .src <<<"$json")"
      [[ "$kind" == crane.buildPackage && "$rc" == 0 ]] && grep -qE '^(compiled by the nextest run|NOT RUN)' "$log" &&
        say "check $name: $(cat "$log")"
      [[ "$kind" == crane.cargoNextest && "$rc" == 0 ]] && grep -q '^NOT RUN' "$log" &&
        say "check $name: $(paste -sd';' "$log")"
      ;;
    dockerTools.buildLayeredImage)
      say "check image         evaluated (arguments checked), not built: dockerTools needs nixpkgs"
      continue
      ;;
    *) echo "no runner for kind $kind" >"$log"; rc=1 ;;
  esac
  result "$name" "$rc" "$log" "$((SECONDS - t0))"
done

# 4. The build-image app is the non-Nix twin: without rustup it must stop and say so.
if wanted apps; then
  log="$work/app.log"
  rc=0
  t0=$SECONDS
  program="$(jq -r --arg s "$system" '.evaluated.apps[$s]["build-image"].program // empty' "$eval_json")"
  if [[ -z "$program" ]]; then
    echo "apps.$system.build-image is missing" >"$log"
    rc=1
  else
    wrapper="${program%/bin/*}"
    mapfile -t inputs < <(sed -n 's/^# runtimeInputs: //p' "$wrapper" | tr ' ' '\n' | grep -v '^$')
    pathdir="$work/app-path"
    mkdir -p "$pathdir"
    for pkg in "${inputs[@]}"; do
      while IFS= read -r exe; do
        # Neither rustup (the point of the check) nor docker (no side effects if the guard is gone).
        case "$(basename "$exe")" in rustup | cargo | docker) continue ;; esac
        [[ -n "$exe" && -x "$exe" ]] && ln -sf "$exe" "$pathdir/$(basename "$exe")"
      done < <(package_bins "$pkg" || true)
    done
    out=0
    env -i PATH="$pathdir" HOME="$work" bash "$wrapper" --tag devops-api:eval >"$log" 2>&1 || out=$?
    if [[ "$out" == 0 ]] || ! grep -q "non-Nix twin" "$log" || ! grep -q "rustup" "$log"; then
      echo "expected the wrapper to stop (non-zero) and explain that it is the non-Nix twin needing rustup; exit $out" >>"$log"
      rc=1
    fi
  fi
  result "app-build-image" "$rc" "$log" "$((SECONDS - t0))"
fi

printf 'eval: %d passed, %d failed\n' "$passed" "$failed"
[[ "$failed" == 0 ]] || { say "failed: ${failures[*]}"; exit 1; }
