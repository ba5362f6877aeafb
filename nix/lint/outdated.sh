#!/usr/bin/env bash
# Direct dependencies a major version behind what crates.io serves (cargo info). A major is the
# first non-zero component (1.x -> 2.x, 0.17 -> 0.18); newer minors and patches are not
# reported. A major kept on purpose is listed with its reason in nix/lint/majors-kept.json and
# reported as kept; any other major behind fails the check, so an upgrade is a decision.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kept_file="${MAJORS_KEPT:-$repo/nix/lint/majors-kept.json}"
cd "$repo"

# name<TAB>resolved version of each direct dependency (normal, dev, build; per target too).
deps="$(cargo metadata --format-version 1 --locked 2>/dev/null | jq -r '
  (.resolve.root) as $root
  | (.packages | map({key: .id, value: .version}) | from_entries) as $ver
  | .resolve.nodes[] | select(.id == $root) | .deps[]
  | "\(.pkg | sub("^.*[#/]"; "") | sub("@.*$"; "") | sub(":.*$"; ""))\t\($ver[.pkg])"' | sort -u)"

major() { # 1.2.3 -> 1, 0.17.2 -> 0.17, 0.0.3 -> 0.0.3
  local v="${1%%[-+]*}" a b c
  IFS=. read -r a b c <<<"$v"
  if [[ "$a" != 0 ]]; then echo "$a"; elif [[ "$b" != 0 ]]; then echo "0.$b"; else echo "0.0.$c"; fi
}

behind=0 kept=0 checked=0
while IFS=$'\t' read -r name version; do
  [[ -n "$name" ]] || continue
  # Outside the workspace, so cargo info reports the registry's newest, not the locked version.
  info="$(cd / && { cargo info --quiet "$name" 2>/dev/null || true; })"
  latest="$(sed -n 's/^version: \([^ ]*\).*/\1/p' <<<"$info" | head -n 1)"
  if [[ -z "$latest" ]]; then
    echo "outdated: $name: no answer from crates.io" >&2
    exit 1
  fi
  checked=$((checked + 1))
  if [[ "$latest" == *-* ]]; then
    # cargo info names the newest version, a pre-release too: that is no major to move to.
    printf 'pre     %-32s %-10s newest is the pre-release %s (not counted)\n' "$name" "$version" "$latest"
    continue
  fi
  [[ "$(major "$version")" == "$(major "$latest")" ]] && continue
  # Only newer majors count (a locked version above the registry's is not "behind").
  [[ "$(printf '%s\n%s\n' "$version" "$latest" | sort -V | tail -n 1)" == "$latest" ]] || continue
  reason="$(jq -r --arg n "$name" '.[$n] // empty' "$kept_file" 2>/dev/null || true)"
  if [[ -n "$reason" ]]; then
    kept=$((kept + 1))
    printf 'kept    %-32s %-10s latest %-10s %s\n' "$name" "$version" "$latest" "$reason"
  else
    behind=$((behind + 1))
    printf 'BEHIND  %-32s %-10s latest %-10s (upgrade, or give the reason in %s)\n' "$name" "$version" "$latest" "${kept_file#"$repo"/}"
  fi
done <<<"$deps"
echo "outdated: $checked direct dependencies checked: $behind majors behind, $kept kept on purpose" >&2
[[ "$behind" == 0 ]]
