#!/usr/bin/env bash
# The workflows' Nix steps: `nix ARGS...`, or, only where DEVOPS_NIX_TWIN=1, that step's documented non-Nix
# twin. The end-to-end test (nix/e2e/e2e.sh) runs the workflows with act on a machine without nixpkgs and
# sets the switch there; a real runner never sets it, and then this script is exactly `exec nix "$@"`.
#
# The twins, and what they leave out:
#   nix flake check ...           nix/lint/lint.sh --no-eval-cargo --no-selftest and cargo fmt --check: the
#                                 flake evaluated offline and every check's command that needs no compile
#                                 (not clippy, the tests or the package build, and the image only evaluated:
#                                 .ci/run runs all of lint.sh, clippy and the tests before the e2e test)
#   nix build ... .#image -o OUT  nix/deploy/build-image.sh --out OUT (same nix/image.json, cargo + docker)
#   nix run .#push -- ARGS        nix/deploy/push.sh ARGS       (what the flake app wraps)
#   nix run .#deploy -- ARGS      nix/deploy/deploy.sh ARGS
#   nix run .#rollback [-- ARGS]  nix/deploy/rollback.sh ARGS
# Each twin run prints one line starting with "NIX TWIN:" that names both commands, so a log shows which
# steps ran for real. Any other nix command has no twin and fails when the switch is on.
set -euo pipefail

if [ "${DEVOPS_NIX_TWIN:-}" != 1 ]; then
  exec nix "$@"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
nix_cmd="nix $*"
twin=() shown=

# The app name and the arguments after `--` of `nix run [flags] .#NAME [-- ARGS]`.
app="" app_args=()
parse_run() {
  shift # run
  while [ $# -gt 0 ]; do
    case "$1" in
      .#*) app=${1#.#} ;;
      --) shift; app_args=("$@"); return 0 ;;
    esac
    shift
  done
}

case "${1:-}" in
  flake)
    [ "${2:-}" = check ] || { echo "NIX TWIN: no twin for: $nix_cmd" >&2; exit 2; }
    twin=(bash -c 'nix/lint/lint.sh --no-eval-cargo --no-selftest && cargo fmt --check')
    shown="nix/lint/lint.sh --no-eval-cargo --no-selftest && cargo fmt --check"
    ;;
  build)
    out="" want=false
    shift
    while [ $# -gt 0 ]; do
      case "$1" in
        .#image) want=true ;;
        -o|--out-link) out=$2; shift ;;
      esac
      shift
    done
    if [ "$want" != true ] || [ -z "$out" ]; then echo "NIX TWIN: no twin for: $nix_cmd (only .#image -o OUT)" >&2; exit 2; fi
    twin=(nix/deploy/build-image.sh --tag "devops-api:${GITHUB_SHA:-nix-twin}" --out "$out")
    ;;
  run)
    parse_run "$@"
    case "$app" in
      push|deploy|rollback)
        twin=("nix/deploy/$app.sh" "${app_args[@]}")
        shown="nix/deploy/$app.sh instead of nix run .#$app, with the same arguments"
        nix_cmd="" ;;
      *) echo "NIX TWIN: no twin for: $nix_cmd" >&2; exit 2 ;;
    esac
    ;;
  *) echo "NIX TWIN: no twin for: $nix_cmd" >&2; exit 2 ;;
esac

echo "NIX TWIN: ran ${shown:-${twin[*]}}${nix_cmd:+ instead of $nix_cmd}" >&2
[ ${#app_args[@]} -eq 0 ] || echo "nix-or-twin: arguments: ${app_args[*]}" >&2
cd "$root"
exec "${twin[@]}"
