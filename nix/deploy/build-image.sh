#!/usr/bin/env bash
# Build the devops-api container image without Nix: the CI twin of `nix build .#image`.
#
# Both builders read nix/image.json, so user, paths, env, ports, volumes, labels, entrypoint,
# cmd and healthcheck cannot drift apart. This one compiles a static musl binary with cargo and
# packs it FROM scratch with `docker build` (generated Dockerfile in a temporary context). It installs
# what it needs that rustup can install (the musl standard library of the active toolchain).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: nix/deploy/build-image.sh --tag NAME:TAG [options]

Build the devops-api image (FROM scratch, static musl binary) with the config of nix/image.json.

Options:
  --tag NAME:TAG           image name and tag (required)
  --out FILE               also write a docker-archive (`docker load < FILE`); gzipped if FILE ends in .gz
  --binary PATH            use this (static) binary instead of running cargo build
  --healthcheck-url URL    healthcheck runs `devops-api healthcheck --url URL` instead of the default
                           (the end-to-end test uses it to build an image whose healthcheck fails)
  --target TRIPLE          cargo target (default x86_64-unknown-linux-musl); added to the active
                           toolchain with `rustup target add` when missing
  --revision REV           value of org.opencontainers.image.revision, and the revision built into the
                           binary when it is a commit (default: git rev-parse HEAD, with `-dirty`
                           when tracked files differ from it)
  -h, --help               show this help

Environment:
  REPO_ROOT    repository to build (default: the checkout holding this script, else the git
               toplevel of the working directory)
  IMAGE_JSON   image description (default: nix/image.json beside this script, else in REPO_ROOT)
  CA_BUNDLE    CA bundle copied to the image's CA path (default /etc/ssl/certs/ca-certificates.crt)
EOF
}

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'build-image: error: %s\n' "$*" >&2
  exit 1
}

tag=""
out=""
binary=""
healthcheck_url=""
target="x86_64-unknown-linux-musl"
revision=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a value}"; shift 2 ;;
    --healthcheck-url) healthcheck_url="${2:?--healthcheck-url needs a value}"; shift 2 ;;
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --revision) revision="${2:?--revision needs a value}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$tag" ]] || { usage >&2; die "--tag is required"; }
for tool in docker jq; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${REPO_ROOT:-}" ]]; then
  if [[ -f "$script_dir/../../Cargo.toml" ]]; then
    REPO_ROOT="$(cd "$script_dir/../.." && pwd)"
  else
    REPO_ROOT="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  fi
fi
[[ -f "$REPO_ROOT/Cargo.toml" ]] || die "no Cargo.toml in $REPO_ROOT (set REPO_ROOT)"
if [[ -z "${IMAGE_JSON:-}" ]]; then
  if [[ -f "$script_dir/../image.json" ]]; then
    IMAGE_JSON="$script_dir/../image.json"
  else
    IMAGE_JSON="$REPO_ROOT/nix/image.json"
  fi
fi
[[ -f "$IMAGE_JSON" ]] || die "image description not found: $IMAGE_JSON"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -f "$CA_BUNDLE" ]] || die "CA bundle not found: $CA_BUNDLE (install ca-certificates or set CA_BUNDLE)"

spec() { jq -r "$1" "$IMAGE_JSON"; }

# The standard library for $target must exist for the toolchain cargo will use in $REPO_ROOT (a
# rust-toolchain file there may pick another one). A fresh rustup has only the host target: add it.
ensure_rust_target() {
  local toolchain sysroot
  if command -v rustup >/dev/null; then
    toolchain="$(cd "$REPO_ROOT" && rustup show active-toolchain 2>/dev/null | awk 'NR == 1 {print $1}')"
    [[ -n "$toolchain" ]] || die "rustup has no active toolchain in $REPO_ROOT (rustup default stable)"
    if rustup target list --installed --toolchain "$toolchain" | grep -x "$target" >/dev/null; then
      log "rust target $target present for toolchain $toolchain"
    else
      log "rust target $target missing for toolchain $toolchain: rustup target add --toolchain $toolchain $target"
      rustup target add --toolchain "$toolchain" "$target" >&2 \
        || die "rustup target add $target failed (toolchain $toolchain)"
    fi
  else
    command -v rustc >/dev/null || die "neither rustup nor rustc found on PATH"
    sysroot="$(cd "$REPO_ROOT" && rustc --print sysroot)"
    [[ -d "$sysroot/lib/rustlib/$target/lib" ]] \
      || die "no standard library for $target in $sysroot and no rustup to add it; install it, pass --binary, or build with nix build .#image"
    log "rust target $target present in $sysroot"
  fi
}

# 1. The revision, as the flake gives it: the commit, `<commit>-dirty` when tracked files differ
# from it, `unknown` outside a checkout. The binary built below carries the same value (build.rs
# reads DEVOPS_API_REVISION), so `--version`, build_info and the image label agree.
if [[ -z "$revision" ]]; then
  revision="$(git -C "$REPO_ROOT" rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)"
  if [[ "$revision" != unknown && -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    revision+="-dirty"
  fi
fi

# ring (the cryptography under rustls, for TLS to PostgreSQL) compiles C and assembly for the
# target: for a musl target that needs a compiler that targets musl. cc-rs looks for
# x86_64-linux-musl-gcc; Debian's musl-tools provides musl-gcc instead (installed when missing,
# as root). An explicit CC_<target> from the caller wins.
ensure_c_compiler() {
  [[ "$target" == *-linux-musl ]] || return 0
  local var="CC_${target//-/_}"
  if [[ -n "${!var:-}" ]]; then
    log "C compiler for $target: ${!var} (from $var)"
    return 0
  fi
  if command -v "${target%%-*}-linux-musl-gcc" >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v musl-gcc >/dev/null 2>&1; then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
      die "no C compiler for $target (ring needs one): install musl-tools (musl-gcc) or set $var"
    fi
    log "installing musl-tools (musl-gcc) for ring's C code"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; } \
      || die "apt-get install musl-tools failed"
  fi
  export "$var=musl-gcc"
  log "C compiler for $target: musl-gcc"
}

# 2. The binary.
if [[ -z "$binary" ]]; then
  ensure_rust_target
  ensure_c_compiler
  # A --revision that is not a commit (a label of the caller's) stays a label: the binary then
  # carries what git says.
  build_env=()
  [[ "$revision" =~ ^[0-9a-f]{7,64}(-dirty)?$ ]] && build_env=(DEVOPS_API_REVISION="$revision")
  log "${build_env[*]:+${build_env[*]} }cargo build --release --locked --target $target"
  (cd "$REPO_ROOT" && env "${build_env[@]}" cargo build --release --locked --target "$target")
  target_dir="$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
  binary="$target_dir/$target/release/devops-api"
fi
[[ -x "$binary" ]] || die "binary not found or not executable: $binary"
if command -v readelf >/dev/null; then
  if readelf -l "$binary" | grep 'Requesting program interpreter' >/dev/null; then
    die "$binary is dynamically linked; a FROM-scratch image needs a static binary"
  fi
  log "binary is static: $binary ($(du -h "$binary" | cut -f1))"
else
  log "readelf not found: skipping the static-linking check of $binary"
fi
log "binary says: $(timeout 5 "$binary" --version 2>&1 | sed -n 1p || true)"

# 3. Labels the builders compute: version from Cargo.toml (revision: see above).
version="$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$REPO_ROOT/Cargo.toml" | sed -n 1p)"

# 4. The final config: image.json plus computed labels and the optional healthcheck override.
config="$(jq -c \
  --arg version "$version" \
  --arg revision "$revision" \
  --arg hc "$healthcheck_url" \
  --arg bin "$(spec .binary)" '
  .config
  | .Labels += {"org.opencontainers.image.version": $version,
                "org.opencontainers.image.revision": $revision}
  | if $hc != "" then .Healthcheck.Test = ["CMD", $bin, "healthcheck", "--url", $hc] else . end
' "$IMAGE_JSON")"

# 5. The build context: root filesystem files, CA bundle, data dir and binary.
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs" "$ctx/data"
while IFS= read -r rel; do
  mkdir -p "$(dirname "$ctx/rootfs/$rel")"
  jq -j --arg f "$rel" '.files[$f]' "$IMAGE_JSON" >"$ctx/rootfs/$rel"
  chmod 0644 "$ctx/rootfs/$rel"
done < <(jq -r '.files | keys[]' "$IMAGE_JSON")
ca_path="$(spec .caBundle)"
mkdir -p "$(dirname "$ctx/rootfs$ca_path")"
cp -L "$CA_BUNDLE" "$ctx/rootfs$ca_path"
chmod 0644 "$ctx/rootfs$ca_path"
bin_path="$(spec .binary)"
mkdir -p "$(dirname "$ctx/rootfs$bin_path")"
cp "$binary" "$ctx/rootfs$bin_path"
chmod 0555 "$ctx/rootfs$bin_path"
chmod 0755 "$ctx/data"

# 6. The Dockerfile, generated from the config (durations: nanoseconds -> milliseconds).
jq -r \
  --arg data "$(spec .dataDir)" \
  --arg owner "$(spec '"\(.uid):\(.gid)"')" '
  def dur: if . % 1000000000 == 0 then "\(. / 1000000000)s" else "\(. / 1000000 | floor)ms" end;
  "FROM scratch",
  "COPY rootfs/ /",
  "COPY --chown=\($owner) data/ \($data)/",
  (.Env // [] | .[] | capture("^(?<k>[^=]+)=(?<v>.*)$") | "ENV \(.k)=\(.v | @json)"),
  (.Labels // {} | to_entries[] | "LABEL \(.key | @json)=\(.value | @json)"),
  (.ExposedPorts // {} | keys[] | "EXPOSE \(.)"),
  (if .Volumes then "VOLUME \(.Volumes | keys | @json)" else empty end),
  (if .WorkingDir then "WORKDIR \(.WorkingDir)" else empty end),
  (if .StopSignal then "STOPSIGNAL \(.StopSignal)" else empty end),
  (if .Healthcheck then
     (.Healthcheck as $h
      | if $h.Test[0] == "NONE" then "HEALTHCHECK NONE"
        else "HEALTHCHECK"
          + (if $h.Interval then " --interval=\($h.Interval | dur)" else "" end)
          + (if $h.Timeout then " --timeout=\($h.Timeout | dur)" else "" end)
          + (if $h.StartPeriod then " --start-period=\($h.StartPeriod | dur)" else "" end)
          + (if $h.Retries then " --retries=\($h.Retries)" else "" end)
          + (if $h.Test[0] == "CMD-SHELL" then " CMD \($h.Test[1])"
             else " CMD \($h.Test[1:] | @json)" end)
        end)
   else empty end),
  (if .User then "USER \(.User)" else empty end),
  (if .Entrypoint then "ENTRYPOINT \(.Entrypoint | @json)" else empty end),
  (if .Cmd then "CMD \(.Cmd | @json)" else empty end)
' <<<"$config" >"$ctx/Dockerfile"
log "generated Dockerfile:"
sed 's/^/    /' "$ctx/Dockerfile" >&2

# 7. Build, then check that the image carries exactly the config we meant.
log "docker build --tag $tag"
docker build --quiet --tag "$tag" "$ctx" >/dev/null
actual="$(docker image inspect "$tag" --format '{{json .Config}}')"
compare='{User, WorkingDir, Entrypoint, Cmd, Env, ExposedPorts, Volumes, StopSignal, Healthcheck}'
want="$(jq -cS "$compare + {Labels: .Labels}" <<<"$config")"
# Env in the built image may carry PATH from the builder; compare only the keys we set.
got="$(jq -cS --argjson want "$want" "$compare"' + {Labels: (.Labels // {} | with_entries(select(.key as $k | $want.Labels | has($k))))}
  | .Env |= map(select(. as $e | $want.Env | index($e)))' <<<"$actual")"
if [[ "$want" != "$got" ]]; then
  printf 'wanted: %s\ngot:    %s\n' "$want" "$got" >&2
  die "image config of $tag differs from $IMAGE_JSON"
fi
size_bytes="$(docker image inspect "$tag" --format '{{.Size}}')"
log "built $tag: $((size_bytes / 1024)) KiB ($size_bytes bytes), revision $revision, version $version"
log "config matches $IMAGE_JSON"

# 8. Optional docker-archive, like the result of `nix build .#image`.
if [[ -n "$out" ]]; then
  if [[ "$out" == *.gz ]]; then
    docker save "$tag" | gzip -n >"$out"
  else
    docker save --output "$out" "$tag"
  fi
  log "wrote $out ($(du -h "$out" | cut -f1))"
fi
