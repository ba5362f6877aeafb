#!/usr/bin/env python3
"""Checks that every metric name used by the alert rules and the Grafana dashboard exists in a scrape.

Usage: promql_names.py SCRAPE_FILE RULES_YAML DASHBOARD_JSON [EXTRA_EXPR...]

SCRAPE_FILE is the text exposition of a live /metrics. Names are taken from each PromQL expression by
removing strings, label matchers, range selectors and grouping clauses; what remains that is an identifier
not followed by `(` and not a keyword is a metric name. `up` is written by Prometheus itself and allowed.
Exits 1 listing every unknown name, also when an expression yields no name at all (the extractor failed).
"""
import json
import re
import sys

import yaml

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2"}
SYNTHETIC = {"up"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    found = set()
    for m in IDENT.finditer(e):
        word = m.group(0)
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # the exponent or a unit of a number
        if e[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if word.lower() in KEYWORDS or word.startswith("$"):
            continue
        found.add(word)
    return found


def expressions(rules_path, dashboard_path):
    with open(rules_path) as f:
        for group in yaml.safe_load(f)["groups"]:
            for rule in group["rules"]:
                yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                yield f"panel {p['title']!r}", t["expr"]
            yield from walk(p.get("panels", []))

    with open(dashboard_path) as f:
        yield from walk(json.load(f)["panels"])


def scraped(path):
    out = set()
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    have = scraped(argv[1]) | SYNTHETIC
    exprs = list(expressions(argv[2], argv[3]))
    exprs += [("extra", e) for e in argv[4:]]
    bad = []
    used = set()
    for where, expr in exprs:
        n = names(expr)
        if not n:
            bad.append(f"{where}: no metric name found in {expr!r}")
        for name in sorted(n - have):
            bad.append(f"{where}: {name} is not in the scrape")
        used |= n
    for b in bad:
        print(b, file=sys.stderr)
    print(f"{len(exprs)} expressions, {len(used)} metric names, {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
