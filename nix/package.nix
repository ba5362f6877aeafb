# The crate, built with crane. One source set and one dependency build (`cargoArtifacts`) are
# shared by the package, every check and the coverage report, so dependencies compile once.
{
  pkgs,
  lib,
  craneLib,
  root,
  # The flake's `self.rev`, `self.dirtyRev` (`<commit>-dirty`) or "unknown": build.rs carries it
  # into the binary (`--version`, the ready log line, build_info), as the sandbox has no git.
  revision,
}:
let
  # crane's default filter keeps only Cargo files, *.rs and *.toml; tests also read snapshots and
  # fixtures, the crate may embed SQL (include_str!), and the image spec is data the tests may read.
  optionalTree = path: lib.optional (lib.pathExists path) path;
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions (
      [
        (craneLib.fileset.commonCargoSources root)
        (lib.fileset.fileFilter (
          file:
          lib.any file.hasExt [
            "sql"
            "json"
            "snap"
            "txt"
          ]
        ) (root + "/src"))
      ]
      ++ optionalTree (root + "/tests")
      ++ optionalTree (root + "/nix/image.json")
      ++ optionalTree (root + "/.config/nextest.toml")
    );
  };

  commonArgs = {
    inherit src;
    strictDeps = true;
    buildInputs = lib.optionals pkgs.stdenv.hostPlatform.isDarwin [ pkgs.libiconv ];
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  # nextest filter for the tests that run anywhere, the Nix sandbox included. The rest need
  # PostgreSQL (test binary `postgres`, tests named pg_*) or Docker, and run in CI (.ci/run).
  hermeticTests = "not (binary(postgres) | test(/^pg_/) | test(/needs_docker|needs_postgres/))";

  package = craneLib.buildPackage (
    commonArgs
    // {
      inherit cargoArtifacts;
      # Only here, not in commonArgs: the dependency build stays the same from commit to commit.
      DEVOPS_API_REVISION = revision;
      # Tests run in the nextest check (hermetic subset), not a second time here.
      doCheck = false;
      # Completions and man pages come from the binary's own clap definition, so they cannot
      # drift from its flags (the flake builds natively: the binary runs on the build machine).
      postInstall = ''
        mkdir -p $out/share/bash-completion/completions $out/share/zsh/site-functions \
          $out/share/fish/vendor_completions.d
        $out/bin/devops-api completions bash >$out/share/bash-completion/completions/devops-api
        $out/bin/devops-api completions zsh >$out/share/zsh/site-functions/_devops-api
        $out/bin/devops-api completions fish >$out/share/fish/vendor_completions.d/devops-api.fish
        $out/bin/devops-api man --dir $out/share/man/man1
      '';
      meta = {
        description = "Task-management REST API (axum + redb)";
        mainProgram = "devops-api";
        license = lib.licenses.mit;
      };
    }
  );
in
{
  inherit
    src
    commonArgs
    cargoArtifacts
    hermeticTests
    package
    ;
}
