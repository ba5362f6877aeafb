#!/usr/bin/env bash
# Proves that nix/deploy/build-image.sh brings what it needs on a machine that has only a fresh rustup: a new
# RUSTUP_HOME and CARGO_HOME with the stable toolchain's minimal profile (host target only, no musl standard
# library). build-image.sh builds a tiny crate named devops-api with them; it must add the musl target
# itself, say so, and produce an image whose binary runs. Run by nix/e2e/e2e.sh (row B0) and on its own.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: nix/e2e/fresh-toolchain.sh [--toolchain NAME]

Needs rustup on PATH (its proxies honour RUSTUP_HOME/CARGO_HOME), network access to the Rust toolchain
server, and Docker. Removes the toolchain, the crate and the image afterwards.
  --toolchain NAME   toolchain to install fresh (default stable)
USAGE
}

toolchain=stable
while [ $# -gt 0 ]; do
  case "$1" in
    --toolchain) toolchain=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fresh-toolchain: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-musl
tag=devops-api-fresh-toolchain:$$
command -v rustup >/dev/null || { echo "fresh-toolchain: rustup not on PATH" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  docker image rm -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export RUSTUP_HOME=$work/rustup CARGO_HOME=$work/cargo CARGO_TARGET_DIR=$work/target
export PATH="$CARGO_HOME/bin:$PATH"
unset RUSTUP_TOOLCHAIN RUSTC CARGO

t=$SECONDS
rustup toolchain install "$toolchain" --profile minimal --no-self-update >"$work/install.log" 2>&1 \
  || { tail -n 20 "$work/install.log" >&2; echo "fresh-toolchain: rustup toolchain install failed" >&2; exit 1; }
rustup default "$toolchain" >/dev/null 2>&1
if rustup target list --installed | grep -x "$target" >/dev/null; then
  echo "fresh-toolchain: the fresh toolchain already has $target; nothing to prove" >&2
  exit 1
fi
echo "fresh-toolchain: $(rustc --version) installed in $((SECONDS - t)) s, targets: $(rustup target list --installed | paste -sd' ')" >&2

# The crate: the binary name and Cargo.toml version the image builder expects, a lock file for --locked.
mkdir -p "$work/crate/src"
cat > "$work/crate/Cargo.toml" <<'EOF'
[package]
name = "devops-api"
version = "0.0.1"
edition = "2021"

[profile.release]
opt-level = 1
EOF
cat > "$work/crate/src/main.rs" <<'EOF'
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("fresh-toolchain crate: {}", args.join(" "));
}
EOF
(cd "$work/crate" && cargo generate-lockfile --offline >/dev/null 2>&1)

rc=0
REPO_ROOT=$work/crate "$here/../deploy/build-image.sh" --tag "$tag" --revision fresh-toolchain \
  >"$work/build.log" 2>&1 || rc=$?
sed 's/^/    /' "$work/build.log" | grep -v -e DEPRECATED -e buildx -e '^    *$' >&2 || true
[ "$rc" = 0 ] || { echo "fresh-toolchain: build-image.sh failed (exit $rc)" >&2; exit 1; }
grep -q "rust target $target missing for toolchain .*: rustup target add" "$work/build.log" \
  || { echo "fresh-toolchain: build-image.sh did not say it added $target" >&2; exit 1; }
rustup target list --installed | grep -x "$target" >/dev/null \
  || { echo "fresh-toolchain: $target still not installed" >&2; exit 1; }
out=$(docker run --rm "$tag")
[ "$out" = "fresh-toolchain crate: serve" ] || { echo "fresh-toolchain: image printed '$out'" >&2; exit 1; }
echo "fresh-toolchain: OK: build-image.sh added $target and built a working image in $((SECONDS - t)) s" >&2
