#!/usr/bin/env python3
"""Summarise act's JSON log (`act --json`) of one workflow run: one line per step the workflow defines
(act's own "Set up job"/"Complete job" left out), tab-separated:

    RUN  JOB  STEP  RESULT  HOW  SECONDS

RESULT is act's step result (success, failure, skipped) or "not run". HOW is "real" when the step printed
no "NIX TWIN:" line, else "twin: <the line's text after 'NIX TWIN: '>" (nix/deploy/nix-or-twin.sh prints one
when it runs a non-Nix twin). A job that act skipped (its `if:` was false) gives one line with step "-".
The last line is "RUN  -  -  JOBS  <job:result ...>".
"""

import json
import sys

INTERNAL = {"Set up job", "Complete job"}


def main():
    run, path = sys.argv[1], sys.argv[2]
    steps = {}  # (job, step) -> dict, in order of appearance
    jobs = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            job = d.get("jobID")
            if not job:
                continue
            if "jobResult" in d:
                jobs[job] = d["jobResult"]
                continue
            step = (d.get("step") or "").strip()
            if not step or step in INTERNAL:
                continue
            step = step.splitlines()[0]
            s = steps.setdefault((job, step), {"result": "not run", "twin": None, "ns": 0})
            msg = d.get("msg", "")
            if d.get("raw_output") and "NIX TWIN:" in msg:
                s["twin"] = msg.split("NIX TWIN:", 1)[1].strip()
            if "stepResult" in d:
                s["result"] = d["stepResult"]
                s["ns"] = d.get("executionTime", 0)
    seen_jobs = {job for job, _ in steps}
    for (job, step), s in steps.items():
        how = f"twin: {s['twin']}" if s["twin"] else "real"
        print(f"{run}\t{job}\t{step}\t{s['result']}\t{how}\t{s['ns'] / 1e9:.0f}")
    for job, result in jobs.items():
        if job not in seen_jobs:
            print(f"{run}\t{job}\t-\t{result}\t-\t0")
    print(f"{run}\t-\t-\tJOBS\t{' '.join(f'{j}:{r}' for j, r in jobs.items())}\t-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
