# `nix flake check`: everything here builds in the sandbox (no network, no Docker daemon, no
# PostgreSQL). Names say what is checked.
{
  pkgs,
  lib,
  craneLib,
  crate,
  image,
  advisory-db,
  root,
}:
let
  inherit (crate)
    src
    commonArgs
    cargoArtifacts
    hermeticTests
    ;

  # A check that runs a linter over some files of the repository.
  lint =
    name: files: nativeBuildInputs: command:
    pkgs.runCommand "devops-api-${name}"
      {
        inherit nativeBuildInputs;
        src = lib.fileset.toSource {
          inherit root;
          fileset = files;
        };
      }
      ''
        cd "$src"
        export HOME="$TMPDIR"
        ${command}
        touch "$out"
      '';

  nixFiles = lib.fileset.fileFilter (file: file.hasExt "nix") root;
  shellScripts = lib.fileset.fileFilter (file: file.hasExt "sh") (root + "/nix");
  workflows = root + "/.gitea/workflows";
  actionlintConfig = root + "/nix/lint/actionlint.yaml";
  yamlFiles = lib.fileset.fileFilter (file: file.hasExt "yml" || file.hasExt "yaml") root;
in
{
  package = crate.package;

  clippy = craneLib.cargoClippy (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    }
  );

  fmt = craneLib.cargoFmt { inherit src; };

  nextest = craneLib.cargoNextest (
    commonArgs
    // {
      inherit cargoArtifacts;
      cargoNextestExtraArgs = "--no-tests=pass -E '${hermeticTests}'";
    }
  );

  audit = craneLib.cargoAudit { inherit src advisory-db; };

  nix-fmt = lint "nix-fmt" nixFiles [ pkgs.nixfmt ] ''
    find . -name '*.nix' -print0 | xargs -0 nixfmt --check
  '';

  deadnix = lint "deadnix" nixFiles [ pkgs.deadnix ] ''
    deadnix --fail .
  '';

  shellcheck = lint "shellcheck" shellScripts [ pkgs.shellcheck ] ''
    find nix -name '*.sh' -print0 | sort -z | xargs -0 shellcheck
  '';
}
// lib.optionalAttrs (image != null) { inherit image; }
// lib.optionalAttrs (lib.pathExists workflows) {
  # Gitea keeps no .github/: the config (self-hosted runner labels) lives in nix/lint/actionlint.yaml.
  actionlint =
    lint "actionlint"
      (lib.fileset.unions (
        [ workflows ] ++ lib.optional (lib.pathExists actionlintConfig) actionlintConfig
      ))
      [ pkgs.actionlint pkgs.shellcheck ]
      ''
        actionlint ${lib.optionalString (lib.pathExists actionlintConfig) "-config-file nix/lint/actionlint.yaml"} .gitea/workflows/*.y*ml
      '';
}
// {
  # `docker stack config` validates each stack file (YAML whose top level has `services:`,
  # anywhere in the repository) against the compose schema without a daemon. Variables get
  # placeholder values (numbers for *_PORT / *REPLICAS*).
  stack-config = lint "stack-config" yamlFiles [ pkgs.docker-client pkgs.gnugrep pkgs.findutils ] ''
    mapfile -t stacks < <(find . -name '*.y*ml' -exec grep -l '^services:' {} + | sort)
    [ "''${#stacks[@]}" -gt 0 ] || { echo "no stack file"; exit 1; }
    for var in $(cat "''${stacks[@]}" | grep -oE '\$\{[A-Za-z_][A-Za-z0-9_]*' | cut -c3- | sort -u); do
      case "$var" in
        *PORT | *REPLICAS*) export "$var=1" ;;
        *) export "$var=placeholder" ;;
      esac
    done
    for f in "''${stacks[@]}"; do
      echo "docker stack config -c $f"
      docker stack config -c "$f" >/dev/null
    done
  '';
}
