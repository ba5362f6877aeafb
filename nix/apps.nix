# `nix run .#NAME`: the service and the pipeline scripts under nix/deploy and nix/e2e. Each script is wrapped with
# writeShellApplication, which puts its tools on PATH; the scripts themselves are shellchecked by
# checks.shellcheck. A script that does not exist (yet) simply yields no app.
{
  pkgs,
  lib,
  package,
  root,
}:
let
  scriptsDir = root + "/nix";
  pipelineTools = with pkgs; [
    bash
    coreutils
    gnused
    gnugrep
    gawk
    findutils
    gzip
    curl
    git
    jq
    openssh
    openssl
    python3
    docker-client
    skopeo
  ];

  # `nix run .#NAME` runs nix/DIR/NAME.sh. `guard` is shell run before it (empty for most).
  script =
    dir: name: extraInputs: env:
    {
      description ? "nix/${dir}/${name}.sh",
      guard ? "",
    }:
    let
      exports = lib.mapAttrsToList (k: v: "export ${k}=\"\${${k}:-${v}}\"") env;
    in
    lib.optionalAttrs (lib.pathExists (scriptsDir + "/${dir}/${name}.sh")) {
      ${name} = {
        type = "app";
        program = lib.getExe (
          pkgs.writeShellApplication {
            name = "devops-api-${name}";
            runtimeInputs = pipelineTools ++ extraInputs;
            # The scripts act on the checkout in the working directory; nix/ is copied whole so
            # that a script finds its siblings (image.json, helpers).
            text = lib.concatLines (
              exports
              ++ lib.optional (guard != "") guard
              ++ [ ''exec bash ${scriptsDir}/${dir}/${name}.sh "$@"'' ]
            );
          }
        );
        meta.description = description;
      };
    };

  imageEnv = {
    IMAGE_JSON = "${scriptsDir}/image.json";
    CA_BUNDLE = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
  };
in
{
  default = {
    type = "app";
    program = lib.getExe package;
    meta.description = "Run devops-api (default subcommand: serve)";
  };
}
// script "deploy" "build-image" [ pkgs.binutils ] imageEnv {
  # The Nix image is `nix build .#image`. This app is its non-Nix twin: it compiles a static
  # musl binary with the host's rustup toolchain (the script adds the musl target) and runs
  # `docker build`, so it cannot bring its toolchain from nixpkgs and says so instead.
  description = "nix/deploy/build-image.sh: the non-Nix twin of `nix build .#image`; needs rustup (cargo, the musl target) and a Docker daemon on the host";
  guard = ''
    if ! command -v rustup >/dev/null 2>&1; then
      echo "nix run .#build-image is the non-Nix twin of 'nix build .#image': it builds with the host's rustup toolchain (it adds the x86_64-unknown-linux-musl target) and a Docker daemon. rustup is not on PATH: use 'nix build .#image', or install rustup." >&2
      exit 69
    fi
  '';
}
// script "deploy" "push" [ ] imageEnv { }
// script "deploy" "deploy" [ ] { } { }
// script "deploy" "rollback" [ ] { } { }
// script "deploy" "platform" [ ] { } { }
// script "e2e" "e2e" [ pkgs.oha ] imageEnv { }
