# `nix run .#NAME`: the service and the pipeline scripts under nix/. Each script is wrapped with
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

  script =
    name: extraInputs: env:
    let
      exports = lib.mapAttrsToList (k: v: "export ${k}=\"\${${k}:-${v}}\"") env;
    in
    lib.optionalAttrs (lib.pathExists (scriptsDir + "/${name}.sh")) {
      ${name} = {
        type = "app";
        program = lib.getExe (
          pkgs.writeShellApplication {
            name = "devops-api-${name}";
            runtimeInputs = pipelineTools ++ extraInputs;
            # The scripts act on the checkout in the working directory; nix/ is copied whole so
            # that a script finds its siblings (image.json, helpers).
            text = lib.concatLines (exports ++ [ ''exec bash ${scriptsDir}/${name}.sh "$@"'' ]);
          }
        );
        meta.description = "nix/${name}.sh";
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
// script "build-image" [ pkgs.binutils ] imageEnv
// script "push" [ ] imageEnv
// script "deploy" [ ] { }
// script "rollback" [ ] { }
// script "e2e" [ pkgs.oha ] imageEnv
