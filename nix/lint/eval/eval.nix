# Evaluate flake.nix's real `outputs` function offline: the real nixpkgs lib, stand-ins for
# nixpkgs' packages and for crane (stubs.nix) that check every argument name against the
# recorded signatures. Every output of every declared system is forced, as instantiating it
# would; the result (JSON) describes each output and what the harness runs for the checks.
#
#   nix-instantiate --eval --strict --json --read-write-mode nix/lint/eval/eval.nix \
#     --arg root /path/to/flake/copy --arg libDir /path/to/nixpkgs-lib/lib --argstr advisoryDb DIR
#
# --read-write-mode: lib.fileset.toSource copies the selected files into the store, exactly
# the tree a check's `src` would be.
{
  root,
  libDir,
  advisoryDb,
}:
let
  # Debian's Nix 2.8 lacks builtins.readFileType (Nix 2.14), which lib.fileset uses. The same
  # answer comes from readDir of the parent. Imports are routed through scopedImport so that
  # every file of lib (and of the flake) sees the completed builtins; no file is edited.
  readFileType =
    path:
    let
      entries = builtins.readDir (dirOf path);
      base = baseNameOf path;
    in
    if entries ? ${base} then
      entries.${base}
    else
      throw "readFileType: ${toString path} does not exist";
  patchedBuiltins = builtins // {
    readFileType = builtins.readFileType or readFileType;
  };
  scoped =
    path:
    scopedImport {
      builtins = patchedBuiltins;
      import = scoped;
    } path;

  lib = scoped (libDir + "/default.nix");
  crane = builtins.fromJSON (builtins.readFile ./crane.json);
  nixpkgs = builtins.fromJSON (builtins.readFile ./nixpkgs.json);
  signatures = import ./signatures.nix { inherit lib crane nixpkgs; };
  stubs = import ./stubs.nix {
    inherit
      lib
      crane
      nixpkgs
      signatures
      ;
  };

  flake = scoped (root + "/flake.nix");
  lock = builtins.fromJSON (builtins.readFile (root + "/flake.lock"));
  declaredInputs = lib.attrNames lock.nodes.${lock.root}.inputs;

  sourceInfo = {
    outPath = root;
    dirtyRev = "0000000000000000000000000000000000000000-dirty";
    dirtyShortRev = "0000000-dirty";
    lastModified = 0;
    lastModifiedDate = "19700101000000";
  };
  inputs = {
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs systems stubs.legacyPackages;
      outPath = "/nix/store/00000000000000000000000000000000-nixpkgs";
    };
    crane = {
      inherit (stubs) mkLib;
      outPath = "/nix/store/00000000000000000000000000000000-crane";
    };
    advisory-db = {
      outPath = advisoryDb;
    };
  };
  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];

  # `outputs` must take exactly `self` and the locked inputs (Nix passes all of them).
  formals = builtins.functionArgs flake.outputs;
  inputsMatch =
    lib.assertMsg
      (
        lib.sort lib.lessThan (lib.attrNames formals)
        == lib.sort lib.lessThan (declaredInputs ++ [ "self" ])
      )
      "offline eval: outputs takes ${toString (lib.attrNames formals)}, flake.lock has ${toString declaredInputs}";
  inputsDeclared =
    lib.assertMsg
      (lib.sort lib.lessThan (lib.attrNames flake.inputs) == lib.sort lib.lessThan declaredInputs)
      "offline eval: flake.nix inputs ${toString (lib.attrNames flake.inputs)} differ from flake.lock's ${toString declaredInputs}";
  missingInputs = lib.filter (n: !(inputs ? ${n})) declaredInputs;

  self = outputs // sourceInfo // { inherit outputs; };
  outputs = flake.outputs (lib.getAttrs declaredInputs inputs // { inherit self; });

  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  describe =
    where: v:
    assert lib.assertMsg (isDrv v) "offline eval: ${where} is not a derivation";
    builtins.seq (stubs.forceDeep v) (
      v.__eval
      // {
        out = v.outPath;
      }
    );
  describeApp =
    where: app:
    assert lib.assertMsg (
      app.type or null == "app"
    ) "offline eval: ${where} is not an app (type = \"app\")";
    assert lib.assertMsg (
      builtins.isString app.program && lib.hasPrefix "/nix/store/" app.program
    ) "offline eval: ${where}.program is not a store path";
    {
      inherit (app) program;
      description = app.meta.description or null;
    };

  perSystemKinds = {
    packages = describe;
    checks = describe;
    devShells = describe;
    apps = describeApp;
  };
  known = lib.attrNames perSystemKinds ++ [ "formatter" ];

  # `nix fmt` with no file arguments runs the formatter with none: nixfmt then reads standard
  # input and waits. Only a tree formatter (nixfmt-tree, treefmt) formats the checkout.
  treeFormatter =
    system: f:
    lib.assertMsg (lib.elem (f.__eval.name or "") nixpkgs.formatters.tree)
      "offline eval: formatter.${system} is ${f.__eval.name or "?"}: `nix fmt` without file arguments would make it read standard input; use one of ${toString nixpkgs.formatters.tree}";
  badFormatters = lib.filter (s: !(treeFormatter s outputs.formatter.${s})) (
    lib.attrNames (outputs.formatter or { })
  );
  unknownOutputs = lib.filter (n: !(lib.elem n known)) (lib.attrNames outputs);

  evaluated = lib.mapAttrs (
    kind: byName:
    if kind == "formatter" then
      lib.mapAttrs (system: describe "formatter.${system}") byName
    else
      lib.mapAttrs (
        system: set: lib.mapAttrs (name: perSystemKinds.${kind} "${kind}.${system}.${name}") set
      ) byName
  ) outputs;

in
# The recorded signatures belong to the locked revisions: a bumped input needs fresh data.
assert lib.assertMsg (lock.nodes.crane.locked.rev == crane.source.commit)
  "offline eval: flake.lock's crane is ${lock.nodes.crane.locked.rev}, nix/lint/eval/crane.json was extracted from ${crane.source.commit}: run nix/lint/eval/extract-crane.py on the locked revision";
assert lib.assertMsg (lock.nodes.nixpkgs.locked.rev == nixpkgs.pinned.rev)
  "offline eval: flake.lock's nixpkgs is ${lock.nodes.nixpkgs.locked.rev}, nix/lint/eval/nixpkgs.json was recorded for ${nixpkgs.pinned.rev}: review it against the new revision";
assert inputsDeclared;
assert inputsMatch;
assert lib.assertMsg (
  missingInputs == [ ]
) "offline eval: no stand-in for input(s) ${toString missingInputs}";
assert lib.assertMsg (
  unknownOutputs == [ ]
) "offline eval: outputs not checked here: ${toString unknownOutputs}";
assert badFormatters == [ ];
{
  inherit systems evaluated;
  declared = lib.mapAttrs (_: lib.attrNames) outputs;
  libVersion = lib.version;
}
