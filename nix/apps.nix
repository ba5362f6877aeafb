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

  # `nix run .#NAME` runs nix/DIR/NAME.sh.
  script =
    dir: name: extraInputs: env:
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
            text = lib.concatLines (exports ++ [ ''exec bash ${scriptsDir}/${dir}/${name}.sh "$@"'' ]);
          }
        );
        meta.description = "nix/${dir}/${name}.sh";
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
// script "deploy" "build-image" [ pkgs.binutils ] imageEnv
// script "deploy" "push" [ ] imageEnv
// script "deploy" "deploy" [ ] { }
// script "deploy" "rollback" [ ] { }
// script "e2e" "e2e" [ pkgs.oha ] imageEnv
