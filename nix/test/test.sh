#!/usr/bin/env bash
# The project's test command (README): every test, PostgreSQL included, under
# coverage with a gate, on a fresh machine. Installs what is missing
# (cargo-nextest, llvm-tools, cargo-llvm-cov, PostgreSQL) and starts a
# throwaway PostgreSQL cluster on loopback for the run.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/test/test.sh [--no-coverage] [--html] [-- NEXTEST_ARGS...]

Runs the whole test suite with cargo-nextest: unit, integration, process,
storage contract (redb and PostgreSQL) and property tests. By default under
cargo-llvm-cov: prints line, region and function coverage and fails below the gate
(COVERAGE_MIN_LINES, default in this script).

Options:
  --no-coverage   plain `cargo nextest run` (faster while developing)
  --html          also write an HTML report to target/llvm-cov/html
  -h, --help      this help

Environment:
  COVERAGE_MIN_LINES  line coverage gate in percent
  TEST_DATABASE_URL   use this PostgreSQL server instead of a throwaway cluster
USAGE
}

coverage=1
html=0
extra=()
while (($#)); do
  case "$1" in
    --no-coverage) coverage=0; shift ;;
    --html) html=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/../.."
log() { printf '==> %s\n' "$*" >&2; }

# First honest measurement: 92.0 % of lines (README, Coverage). Raise it, never lower it quietly.
min_lines="${COVERAGE_MIN_LINES:-90}"

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

if ((coverage)); then
  if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
    log "installing the llvm-tools component"
    rustup component add llvm-tools-preview
  fi
  if ! cargo llvm-cov --version >/dev/null 2>&1; then
    log "installing cargo-llvm-cov (once)"
    cargo install --locked cargo-llvm-cov
  fi
  # Lines, regions and functions. Branch coverage needs the unstable
  # `-Z coverage-options=branch`, and with rustc 1.95 the llvm-cov it ships
  # crashes (SIGSEGV) reading such objects, so it is not measured (README).
  run=(cargo llvm-cov nextest --locked --fail-under-lines "$min_lines")
  ((html)) && run+=(--html)
else
  run=(cargo nextest run --locked)
fi
run+=(--workspace "${extra[@]}")

if [[ -n "${TEST_DATABASE_URL:-}" ]]; then
  log "PostgreSQL: using TEST_DATABASE_URL"
  "${run[@]}"
else
  # A throwaway cluster for the PostgreSQL tests; they fail (never skip) without one.
  nix/test/postgres.sh --exec "${run[@]}"
fi
