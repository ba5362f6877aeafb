# Stand-ins for the flake's inputs: `nixpkgs` (the real lib, a `legacyPackages` per system whose
# attributes are exactly the names recorded in nixpkgs.json) and `crane` (mkLib with the
# craneLib attributes of crane.json). Every function checks its argument names (signatures.nix)
# and returns a stand-in derivation: an attribute set with type = "derivation" whose outPath
# forces every argument, as instantiating a real derivation would, and whose `__eval` records
# what the harness (eval.sh) needs to run the check's command.
{
  lib,
  crane,
  nixpkgs,
  signatures,
}:
let
  inherit (signatures) check;

  # Evaluate everything a derivation would: each argument, deeply; a derivation or a source
  # (anything with outPath) through its outPath, which for a lib.fileset source copies it.
  forceDeep =
    v:
    if builtins.isAttrs v then
      (
        if v ? outPath then builtins.seq (toString v.outPath) true else lib.all forceDeep (lib.attrValues v)
      )
    else if builtins.isList v then
      lib.all forceDeep v
    else
      builtins.seq v true;

  mkDrv =
    {
      kind,
      name,
      args ? { },
      info ? { },
      meta ? { },
      extra ? { },
      path ? null,
    }:
    {
      type = "derivation";
      inherit name meta;
      outPath = builtins.seq (forceDeep args) (
        if path != null then
          path
        else
          "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" "${kind}:${name}")}-${name}"
      );
      drvPath = "/nix/store/${
        builtins.substring 0 32 (builtins.hashString "sha1" "${kind}:${name}")
      }-${name}.drv";
      outputs = [ "out" ];
      outputName = "out";
      __eval = {
        inherit kind name;
      }
      // info;
    }
    // extra;

  # A package from nixpkgs: only its name and main program matter here.
  mkPackage =
    name:
    mkDrv {
      kind = "package";
      inherit name;
      meta.mainProgram = name;
      extra.pname = name;
    };

  # The harness needs names of tool packages and plain values of the other arguments.
  nameOf = p: p.__eval.name or (toString p);
  plain = lib.filterAttrs (
    _: v: builtins.isString v || builtins.isBool v || builtins.isInt v || builtins.isPath v
  );

  attributeNames = lib.attrNames nixpkgs.attributes.names;

  legacyPackages =
    system:
    let
      platform = lib.systems.elaborate system;
      self = lib.genAttrs attributeNames mkPackage // special;
      special = {
        inherit lib;
        stdenv = {
          hostPlatform = platform;
          buildPlatform = platform;
          targetPlatform = platform;
          inherit (platform) isLinux isDarwin system;
          mkDerivation =
            args:
            mkDrv {
              kind = "mkDerivation";
              name = args.name or "${args.pname}-${args.version}";
              args = check "mkDerivation" (args.name or args.pname or "?") args;
            };
        };
        dockerTools = lib.genAttrs nixpkgs.attributes.nested.dockerTools mkPackage // {
          buildLayeredImage = image "dockerTools.buildLayeredImage";
          streamLayeredImage = image "dockerTools.streamLayeredImage";
        };
        llvmPackages = lib.genAttrs nixpkgs.attributes.nested.llvmPackages mkPackage;
        writeShellApplication =
          args:
          let
            a = check "writeShellApplication" (args.name or "?") args;
            runtimeInputs = map nameOf (a.runtimeInputs or [ ]);
            # The wrapper itself, written to the store: its path stands for the package, so an
            # app's program (PATH/bin/NAME) leads the harness to the script it would run.
            script = builtins.toFile a.name ''
              #!/usr/bin/env bash
              # runtimeInputs: ${toString runtimeInputs}
              set -o errexit
              set -o nounset
              set -o pipefail
              ${a.text}
            '';
          in
          mkDrv {
            kind = "writeShellApplication";
            inherit (a) name;
            path = script;
            args = a;
            meta = (a.meta or { }) // {
              mainProgram = a.name;
            };
            info = {
              inherit (a) text;
              inherit runtimeInputs script;
            };
          };
        writeTextDir =
          path: text:
          mkDrv {
            kind = "writeTextDir";
            name = baseNameOf path;
            args = { inherit path text; };
            info = { inherit path text; };
          };
        runCommand =
          name: env: buildCommand:
          let
            e = check "runCommand" name env;
          in
          mkDrv {
            kind = "runCommand";
            inherit name;
            args = e // {
              inherit buildCommand;
            };
            info = {
              inherit buildCommand;
              nativeBuildInputs = map nameOf (e.nativeBuildInputs or [ ]);
              env = lib.mapAttrs (_: toString) (
                plain (removeAttrs e [ "nativeBuildInputs" ])
                // lib.optionalAttrs (e ? src) { src = toString e.src; }
              );
            };
          };
        mkShell =
          args:
          mkDrv {
            kind = "mkShell";
            name = args.name or "nix-shell";
            args = check "mkShell" (args.name or "nix-shell") args;
          };
      };
      image =
        fn: args:
        let
          a = check fn (args.name or "?") args;
        in
        mkDrv {
          kind = fn;
          name = "${baseNameOf a.name}.tar.gz";
          args = a;
          info = {
            inherit (a) name;
            tag = a.tag or null;
          };
        };
    in
    assert lib.assertMsg (lib.all (n: lib.elem n attributeNames) (
      lib.attrNames special
    )) "offline eval: a special stand-in is not in nixpkgs.json's attribute names";
    self;

  # crane.mkLib: every craneLib attribute of crane.json exists; the functions the flake may call
  # check their arguments, the rest fail loudly when used.
  mkLib =
    pkgs:
    let
      notModelled =
        name:
        throw "offline eval: craneLib.${name} exists in crane v0.23.4 but is not modelled by nix/lint/eval/stubs.nix";
      toml = src: builtins.fromTOML (builtins.readFile "${toString src}/Cargo.toml");
      crateName =
        args:
        let
          package = (toml args.src).package or { };
        in
        {
          pname = args.pname or package.name or "cargo-package";
          version = args.version or package.version or "0.0.1";
        };
      cargoFn =
        fn: suffix: info: args:
        let
          a = check "crane.${fn}" (args.pname or (crateName args).pname) args;
          n = crateName a;
        in
        mkDrv {
          kind = "crane.${fn}";
          name = "${n.pname}${suffix}-${n.version}";
          args = a // {
            # what crane puts on PATH: the toolchain from the same pkgs
            toolchain = [
              pkgs.cargo
              pkgs.rustc
            ];
          };
          meta = a.meta or { };
          extra = {
            inherit (n) pname version;
          };
          info = {
            src = toString a.src;
            args = lib.mapAttrs (_: toString) (plain (removeAttrs a [ "src" ]));
          }
          // info a;
        };
      fileset = {
        # crane's lib/fileset/*.nix, restated with the real lib.fileset.
        cargoTomlAndLock = lib.fileset.fileFilter (
          file:
          lib.elem file.name [
            "Cargo.toml"
            "Cargo.lock"
          ]
        );
        configToml = lib.fileset.fileFilter (file: file.name == "config.toml");
        rust = lib.fileset.fileFilter (file: file.hasExt "rs");
        toml = lib.fileset.fileFilter (file: file.hasExt "toml");
        commonCargoSources =
          path:
          lib.fileset.unions [
            (fileset.cargoTomlAndLock path)
            (fileset.rust path)
            (fileset.toml path)
          ];
      };
      modelled = {
        buildDepsOnly = cargoFn "buildDepsOnly" "-deps" (_: { });
        buildPackage = cargoFn "buildPackage" "" (_: { });
        cargoClippy = cargoFn "cargoClippy" "-clippy" (_: { });
        cargoFmt = cargoFn "cargoFmt" "-fmt" (_: { });
        cargoNextest = cargoFn "cargoNextest" "-nextest" (_: { });
        cargoLlvmCov = cargoFn "cargoLlvmCov" "-llvm-cov" (_: { });
        cargoAudit = cargoFn "cargoAudit" "-audit" (a: {
          # crane audits a source filtered down to Cargo.lock and audit.toml files.
          auditSrc = toString (
            lib.cleanSourceWith {
              inherit (a) src;
              filter =
                path: type:
                type == "directory" || lib.hasSuffix "Cargo.lock" path || lib.hasSuffix "audit.toml" path;
            }
          );
          advisoryDb = toString a.advisory-db;
        });
        devShell =
          args:
          let
            a = check "crane.devShell" "devShell" args;
          in
          mkDrv {
            kind = "crane.devShell";
            name = "devShell";
            args = a // {
              toolchain = with pkgs; [
                rustc
                cargo
                clippy
                rustfmt
              ];
            };
            info.packages = map nameOf (a.packages or [ ]);
          };
        inherit fileset;
      };
    in
    assert lib.assertMsg (lib.all (n: lib.elem n crane.attributes) (
      lib.attrNames modelled
    )) "offline eval: a modelled crane function is not a craneLib attribute of crane v0.23.4";
    assert lib.assertMsg (lib.all (n: lib.elem n crane.nested.fileset) (
      lib.attrNames fileset
    )) "offline eval: a modelled craneLib.fileset function is not in crane v0.23.4";
    lib.genAttrs crane.attributes notModelled // modelled;
in
{
  inherit legacyPackages mkLib forceDeep;
}
