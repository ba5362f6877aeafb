# Argument checking against recorded signatures (crane.json, nixpkgs.json).
#
# A signature is "formals (name -> has default) + ellipsis + delegates": a function with `...`
# passes unknown names on (to mkCargoDerivation, mkShell, stdenv.mkDerivation), where they
# become environment variables of the build. So an unknown name is only an error when no
# function along the delegation chain accepts it, or when it is one edit away from a name
# the chain knows (a misspelt argument would otherwise be silently ignored).
{
  lib,
  crane,
  nixpkgs,
}:
let
  inherit (builtins)
    attrNames
    elem
    filter
    stringLength
    substring
    ;

  craneSig =
    name:
    let
      f = crane.functions.${name};
    in
    {
      formals = f.formals;
      ellipsis = f.ellipsis;
      reads = f.reads ++ f.documented;
      consults = map (c: "crane.${c}") f.consults;
      delegates = if f ? delegates then qualify f.delegates else null;
    };

  # crane's delegation targets: mkCargoDerivation stays in crane, mkShell and mkDerivation are nixpkgs.
  qualify = name: if crane.functions ? ${name} then "crane.${name}" else name;

  nixpkgsSig =
    name:
    let
      f = nixpkgs.functions.${name};
    in
    {
      formals = f.formals or { };
      ellipsis = f.ellipsis or true;
      reads = f.known or [ ];
      consults = [ ];
      delegates = f.delegates or null;
    };

  sig =
    name:
    if lib.hasPrefix "crane." name then
      craneSig (lib.removePrefix "crane." name)
    else if nixpkgs.functions ? ${name} then
      nixpkgsSig name
    else
      throw "offline eval: no signature recorded for ${name}";

  # Names a function or anything it hands its arguments to gives a meaning to.
  knownNames =
    name:
    let
      go =
        seen: n:
        if elem n seen || n == null then
          [ ]
        else
          let
            s = sig n;
            seen' = seen ++ [ n ];
          in
          attrNames s.formals ++ s.reads ++ lib.concatMap (go seen') s.consults ++ go seen' s.delegates;
    in
    lib.unique (go [ ] name);

  # Names accepted at all: everything when the whole chain ends in `...`, else the formals.
  acceptsAny =
    name:
    let
      s = sig name;
    in
    s.ellipsis && (s.delegates == null || acceptsAny s.delegates);
  acceptedNames =
    name:
    let
      s = sig name;
    in
    attrNames s.formals ++ lib.optionals (s.delegates != null) (acceptedNames s.delegates);

  chars = s: lib.genList (i: substring i 1 s) (stringLength s);

  # Damerau-Levenshtein distance at most 1 (one substitution, insertion, deletion or swap of
  # neighbours), or the same name in another case.
  oneEditApart =
    a: b:
    let
      la = stringLength a;
      lb = stringLength b;
      ca = chars a;
      cb = chars b;
      diffs = filter (i: lib.elemAt ca i != lib.elemAt cb i) (lib.range 0 (la - 1));
      dropOne =
        long: short:
        lib.any (i: substring 0 i long + substring (i + 1) (stringLength long) long == short) (
          lib.range 0 (stringLength long - 1)
        );
      swapped =
        lib.length diffs == 2
        && lib.elemAt diffs 1 == lib.elemAt diffs 0 + 1
        && lib.elemAt ca (lib.elemAt diffs 0) == lib.elemAt cb (lib.elemAt diffs 1)
        && lib.elemAt ca (lib.elemAt diffs 1) == lib.elemAt cb (lib.elemAt diffs 0);
    in
    a != b
    && (
      lib.toLower a == lib.toLower b
      || (la == lb && (lib.length diffs == 1 || swapped))
      || (la == lb + 1 && dropOne a b)
      || (lb == la + 1 && dropOne b a)
    );

  # check NAME WHERE ARGS: ARGS unchanged, or an evaluation error that names every problem.
  check =
    name: where: args:
    let
      s = sig name;
      given = attrNames args;
      known = knownNames name;
      missing = filter (n: !s.formals.${n} && !(args ? ${n})) (attrNames s.formals);
      unknown = filter (n: !(elem n known)) given;
      misspelt = lib.concatMap (
        n:
        let
          near = filter (oneEditApart n) known;
        in
        lib.optional (near != [ ]) "`${n}` (did you mean `${lib.head near}`?)"
      ) unknown;
      rejected = lib.optionals (!acceptsAny name) (filter (n: !(elem n (acceptedNames name))) given);
      problems =
        lib.optional (missing != [ ]) "missing required argument(s): ${lib.concatStringsSep ", " missing}"
        ++ lib.optional (misspelt != [ ]) "misspelt argument(s): ${lib.concatStringsSep ", " misspelt}"
        ++ lib.optional (
          rejected != [ ]
        ) "argument(s) the function does not take (no `...`): ${lib.concatStringsSep ", " rejected}";
    in
    if problems == [ ] then
      args
    else
      throw "offline eval: ${name} called from ${where}: ${lib.concatStringsSep "; " problems}";
in
{
  inherit check knownNames oneEditApart;
}
