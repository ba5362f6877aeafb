# `nix develop`: the toolchain of the checks (crane adds cargo, rustc, clippy, rustfmt and the
# checks' inputs) plus everything the README, the scripts under nix/ and the tests use.
{
  pkgs,
  lib,
  craneLib,
  crate,
  checks,
}:
craneLib.devShell {
  inherit checks;
  packages =
    with pkgs;
    [
      cargo-nextest
      cargo-audit
      jq
      git
      shellcheck
      nixfmt
      deadnix
      actionlint
      oha
      postgresql
      openssh
    ]
    ++ lib.optionals stdenv.hostPlatform.isLinux [
      docker-client
      skopeo
    ];
  # Same hermetic filter as the nextest check: `cargo nextest run -E "$NEXTEST_HERMETIC"`.
  NEXTEST_HERMETIC = crate.hermeticTests;
}
