{
  description = "devops-api: task-management REST API (axum + redb), its checks, dev shell and image";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane/v0.23.4";
    # RustSec advisories for checks.audit. Pinned in flake.lock from a single public lock file
    # (not cross-checked like the two inputs above); `nix flake update advisory-db` refreshes it.
    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
      advisory-db,
    }:
    let
      inherit (nixpkgs) lib;
      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      darwin = [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      root = ./.;
      spec = builtins.fromJSON (builtins.readFile ./nix/image.json);

      # Everything for one system. Nix evaluates lazily: an output costs nothing until asked for.
      perSystem =
        system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          craneLib = crane.mkLib pkgs;
          crate = import ./nix/package.nix {
            inherit
              pkgs
              lib
              craneLib
              root
              ;
          };
          image = import ./nix/image.nix {
            inherit pkgs lib spec;
            inherit (crate) package;
            inherit (crate.package) version;
            revision = self.rev or self.dirtyRev or "dirty";
          };
          checks = import ./nix/checks.nix {
            inherit
              pkgs
              lib
              craneLib
              crate
              advisory-db
              root
              ;
            image = if pkgs.stdenv.hostPlatform.isLinux then image else null;
          };
        in
        {
          packages = {
            default = crate.package;
          }
          // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
            inherit image;
            # LCOV of the hermetic tests (not a check: instrumented builds are slow).
            coverage = import ./nix/coverage.nix { inherit pkgs craneLib crate; };
          };
          inherit checks;
          devShells.default = import ./nix/shell.nix {
            inherit
              pkgs
              lib
              craneLib
              crate
              checks
              ;
          };
          apps = import ./nix/apps.nix {
            inherit pkgs lib root;
            inherit (crate) package;
          };
          # `nix fmt` passes no files when given none: nixfmt alone would wait on standard input.
          # nixfmt-tree is treefmt configured for nixfmt: it formats every .nix file of the tree.
          formatter = pkgs.nixfmt-tree;
        };

      bySystem = lib.genAttrs (linux ++ darwin) perSystem;
      outputsFor =
        systems: names:
        lib.genAttrs names (name: lib.genAttrs systems (system: bySystem.${system}.${name}));
      everything = [
        "packages"
        "checks"
        "devShells"
        "apps"
        "formatter"
      ];
    in
    # Linux gets every output; darwin the package, the dev shell and the formatter.
    lib.recursiveUpdate (outputsFor linux everything) (
      outputsFor darwin [
        "packages"
        "devShells"
        "formatter"
      ]
    );
}
