#!/usr/bin/env python3
"""Extract crane's function signatures from a crane checkout into crane.json.

Usage: nix/lint/eval/extract-crane.py CRANE_CHECKOUT [OUT.json]

CRANE_CHECKOUT is a directory holding crane's tree at the commit pinned in flake.lock (for
example `git clone https://github.com/ipetkov/crane && git -C crane checkout <rev>`, or
`git archive <rev> | tar -x`). Needs nix-instantiate (any Nix >= 2.4) and python3.

What is recorded for every function file lib/*.nix and lib/fileset/*.nix:
  formals     the argument names of the function a caller gets (the inner function of the
              callPackage-style file), with whether each has a default (builtins.functionArgs)
  ellipsis    whether the formals end in `...` (unknown names are then accepted and, for
              mkCargoDerivation-based functions, become environment variables of the build)
  reads       names the function reads from its argument set without declaring them
              (`args.NAME`, `args ? NAME`, names listed in removeAttrs)
  documented  names docs/API.md lists under the function's Required/Optional/Input attributes
  delegates   the function the remaining arguments are passed to (mkCargoDerivation,
              mkDerivation for mkCargoDerivation itself, mkShell for devShell)
  consults    other crane functions that receive the same argument set (vendorCargoDeps,
              crateNameFromCargoToml, ...): their names count as known here too
The craneLib attribute names come from lib/default.nix.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_'-]*"


def nix_formals(path: Path):
    """Formals of the function a caller gets from a callPackage-style file, or None."""
    expr = f"""
      let
        f = import {path};
        stubs = builtins.mapAttrs (n: _: throw "extract-crane: ${{n}} is a stub") (builtins.functionArgs f);
        inner = f stubs;
        ok = builtins.isFunction f && (builtins.tryEval (builtins.isFunction inner)).value or false;
      in
      # A positional function (`path: ...`) has no formals: functionArgs gives an empty set.
      if ok && builtins.functionArgs inner != {{ }} then builtins.functionArgs inner else null
    """
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def nix_ellipsis(path: Path, formals: dict) -> bool:
    """Whether the caller-facing function accepts unknown names: call it with one and see."""
    expr = f"""
      let
        f = import {path};
        stubs = builtins.mapAttrs (n: _: throw "stub") (builtins.functionArgs f);
        inner = f stubs;
        required = builtins.mapAttrs (n: _: throw "stub") (builtins.removeAttrs {json_to_nix(formals)} [ ]);
      in
      builtins.seq (inner (required // {{ extractCraneProbe = 1; }})) true
    """
    run = subprocess.run(
        ["nix-instantiate", "--eval", "-E", expr], capture_output=True, text=True
    )
    return "unexpected argument 'extractCraneProbe'" not in run.stderr


def json_to_nix(formals: dict) -> str:
    """The required formals (no default) as a Nix attribute set of nulls."""
    return "{ " + " ".join(f'"{k}" = null;' for k, has_default in formals.items() if not has_default) + " }"


def reads(text: str):
    names = set()
    for m in re.finditer(rf"\b(?:args|origArgs|attrs)\s*(?:\.|\?\s*)({IDENT})", text):
        names.add(m.group(1))
    for m in re.finditer(r"removeAttrs\s+\w+\s*\[([^\]]*)\]", text, re.S):
        names.update(re.findall(r'"([^"]+)"', m.group(1)))
    return names


def documented(api: str):
    """Names under Required/Optional/Input attribute headings of each `craneLib.X` section."""
    docs = {}
    section = None
    collecting = False
    for line in api.splitlines():
        m = re.match(r"^### `craneLib\.([\w.]+)`", line)
        if m:
            section = m.group(1)
            docs.setdefault(section, set())
            collecting = False
            continue
        if line.startswith("#### "):
            collecting = section is not None and re.search(r"Required|Optional|Input", line) is not None
            continue
        if line.startswith("## ") or line.startswith("### "):
            section = None
            collecting = False
            continue
        if collecting:
            m = re.match(r"^\* `([A-Za-z_][A-Za-z0-9_'-]*)`", line)
            if m:
                docs[section].add(m.group(1))
    return docs


def lib_attributes(default_nix: str):
    """craneLib attribute names: the scope's attributes and the nested fileset/filters sets."""
    scope = default_nix.split("scopeFn =", 1)[1].split("craneSpliced =", 1)[0]
    top = sorted(set(re.findall(rf"^      ({IDENT})\s*=", scope, re.M)))
    nested = {}
    for name in ("fileset", "filters"):
        m = re.search(rf"^      {name} = \{{(.*?)^      \}};", scope, re.M | re.S)
        nested[name] = sorted(set(re.findall(rf"^        ({IDENT})\s*=", m.group(1), re.M))) if m else []
    return top, nested


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    root = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).with_name("crane.json")
    api = (root / "docs/API.md").read_text()
    docs = documented(api)
    top, nested = lib_attributes((root / "lib/default.nix").read_text())

    files = sorted((root / "lib").glob("*.nix")) + sorted((root / "lib/fileset").glob("*.nix"))
    functions = {}
    texts = {}
    for path in files:
        if path.name == "default.nix":
            continue
        rel = path.relative_to(root / "lib").with_suffix("")
        name = str(rel).replace("/", ".")
        text = path.read_text()
        formals = nix_formals(path)
        texts[name] = text
        entry = {"file": f"lib/{rel}.nix"}
        if formals is None:
            entry["positional"] = True
        else:
            entry["formals"] = dict(sorted(formals.items()))
            entry["ellipsis"] = nix_ellipsis(path, formals)
            entry["reads"] = sorted(reads(text) - set(formals))
        entry["documented"] = sorted(docs.get(name, set()))
        functions[name] = entry

    callable_names = [n for n, e in functions.items() if "formals" in e]
    for name, entry in functions.items():
        if "formals" not in entry:
            continue
        text = texts[name]
        if name == "mkCargoDerivation":
            entry["delegates"] = "mkDerivation"
        elif name == "devShell":
            entry["delegates"] = "mkShell"
        elif re.search(r"\bmkCargoDerivation\s*\(", text):
            entry["delegates"] = "mkCargoDerivation"
        entry["consults"] = sorted(
            other
            for other in callable_names
            if other not in (name, "mkCargoDerivation")
            and re.search(rf"\b{re.escape(other)}\s+\(?\s*(?:args|origArgs|argsMaybeDummySrcOverride)\b", text)
        )

    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    data = {
        "source": {
            "repository": "ipetkov/crane",
            "commit": commit or "unknown (not a git checkout)",
            "paths": ["lib/default.nix", "lib/*.nix", "lib/fileset/*.nix", "docs/API.md"],
            "generator": "nix/lint/eval/extract-crane.py",
        },
        "attributes": top,
        "nested": nested,
        "functions": functions,
    }
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(functions)} functions, {len(top)} attributes")


if __name__ == "__main__":
    main()
