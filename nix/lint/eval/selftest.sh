#!/usr/bin/env bash
# Negative controls for the offline flake evaluation: each mutates a copy of the flake in one way
# that a real `nix flake check` would catch (or, for a misspelt crane argument, silently ignore)
# and expects nix/lint/eval/eval.sh to fail with the matching message.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/lint/eval/selftest.sh [-h|--help]

Mutations, each on a fresh copy of the repository's tracked files (eval.sh must fail, naming it):
  misspelt-argument   checks.nix: cargoNextestExtraArgs -> cargoNextestExtraArg (crane takes `...`:
                      Nix itself would accept it and drop the test filter)
  missing-attribute   checks.nix: pkgs.deadnix -> pkgs.deadnixx
  source-filter       package.nix: the `sql` extension dropped from the source set; the crate
                      include_str!s its migrations: the nextest check's source-set check names the
                      file (before compiling), and clippy (which compiles every target) fails on it
  failing-command     a script under nix/ with a ShellCheck finding: checks.shellcheck fails
  stdin-formatter     flake.nix: formatter = pkgs.nixfmt (waits on stdin under `nix fmt`)
  app-guard           apps.nix: the build-image wrapper without its rustup guard
Prints one line per mutation and `selftest: N passed, M failed`.
EOF
}
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
eval_sh="$repo/nix/lint/eval/eval.sh"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

passed=0
failed=0
# mutation NAME EXPECTED ONLY SETUP...: copy, apply SETUP (a command run in the copy), run
# eval.sh --only ONLY, and require a failure whose output contains EXPECTED.
mutation() {
  local name="$1" expected="$2" only="$3"
  shift 3
  local copy="$work/$name" log="$work/$name.log" rc=0
  mkdir -p "$copy"
  (cd "$repo" && git ls-files -z --cached | while IFS= read -r -d '' f; do
    [[ -e "$f" ]] && printf '%s\0' "$f"
  done | xargs -0 -r cp -a --parents -t "$copy")
  (cd "$copy" && "$@")
  # The copy is no git checkout: eval.sh takes all of its files.
  "$eval_sh" --repo "$copy" --only "$only" >"$log" 2>&1 || rc=$?
  if [[ "$rc" != 0 ]] && grep -qF -- "$expected" "$log"; then
    printf 'selftest: %-18s ok (eval failed: %s)\n' "$name" "$expected"
    passed=$((passed + 1))
  else
    printf 'selftest: %-18s FAILED (exit %s, expected a failure mentioning %s)\n' "$name" "$rc" "$expected"
    sed 's/^/    /' "$log" | tail -n 30
    failed=$((failed + 1))
  fi
}

# replace FILE OLD NEW: literal replacement that must change the file.
replace() {
  python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if old not in text:
    sys.exit(f"selftest: {old!r} not found in {path}: update the mutation")
open(path, "w").write(text.replace(old, new))
PY
}

# A new script with an unquoted expansion (SC2086): lint checks cover every script under nix/.
add_finding() {
  cat >nix/selftest-finding.sh <<'SH'
#!/usr/bin/env bash
echo $1
SH
}

mutation misspelt-argument "\`cargoNextestExtraArg\` (did you mean \`cargoNextestExtraArgs\`?)" none \
  replace nix/checks.nix "cargoNextestExtraArgs =" "cargoNextestExtraArg ="
mutation missing-attribute "attribute 'deadnixx' missing" none \
  replace nix/checks.nix "pkgs.deadnix ]" "pkgs.deadnixx ]"
mutation source-filter "src/storage/postgres/migrations/0001_init.sql" nextest \
  replace nix/package.nix '"sql"' ''
mutation failing-command "SC2086" shellcheck \
  add_finding
mutation stdin-formatter "is nixfmt: \`nix fmt\` without file arguments" none \
  replace flake.nix "formatter = pkgs.nixfmt-tree;" "formatter = pkgs.nixfmt;"

mutation app-guard "explain that it is the non-Nix twin" apps \
  replace nix/apps.nix '++ lib.optional (guard != "") guard' ''

printf 'selftest: %d passed, %d failed\n' "$passed" "$failed"
[[ "$failed" == 0 ]]
