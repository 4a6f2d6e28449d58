"""Two runs of the same DAG (e.g. through SLURM and locally) must give the same results.

    python scripts/compare_runs.py RUN_A RUN_B [--out report.json] [--meta key=value ...]

RUN_A and RUN_B are Snakemake working folders of the same scale. Checks that both hold the same
rollout files (outputs/<scale>/eval/**.csv), each with equal rows in every column but the
timing one (`seconds`), and the same trained weights (outputs/<scale>/runs/**/model.safetensors,
by SHA-256). Exits 1 and says what differs otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

TIMING_COLUMNS = ["seconds"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compare(a: Path, b: Path) -> dict:
    problems = []
    rollouts = {p.relative_to(a) for p in a.glob("outputs/*/eval/**/*.csv")}
    other = {p.relative_to(b) for p in b.glob("outputs/*/eval/**/*.csv")}
    if rollouts != other:
        problems.append(f"rollout files differ: only in {a}: {sorted(map(str, rollouts - other))}; "
                        f"only in {b}: {sorted(map(str, other - rollouts))}")
    rows = 0
    for rel in sorted(rollouts & other):
        x = pd.read_csv(a / rel, dtype=str, keep_default_na=False).drop(columns=TIMING_COLUMNS)
        y = pd.read_csv(b / rel, dtype=str, keep_default_na=False).drop(columns=TIMING_COLUMNS)
        if not x.equals(y):
            diff = [c for c in x.columns if c not in y or not x[c].equals(y[c])]
            problems.append(f"{rel}: columns {diff} differ")
        rows += len(x)
    weights = {p.relative_to(a): sha256(p) for p in a.glob("outputs/*/runs/**/model.safetensors")}
    other_weights = {p.relative_to(b): sha256(p) for p in b.glob("outputs/*/runs/**/model.safetensors")}
    if set(weights) != set(other_weights):
        problems.append("the two runs trained different sets of runs")
    different = sorted(str(k) for k in set(weights) & set(other_weights) if weights[k] != other_weights[k])
    if different:
        problems.append(f"weights differ (SHA-256): {different}")
    return {"rollout_files": len(rollouts & other), "rollout_rows": rows, "weights_files": len(weights),
            "weights_equal": not different and set(weights) == set(other_weights),
            "rows_equal_but_timing": not any("columns" in p or "rollout files" in p for p in problems),
            "problems": problems}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--meta", nargs="*", default=[], metavar="KEY=VALUE", help="recorded beside the result")
    args = p.parse_args(argv)
    result = {"a": str(args.a), "b": str(args.b), **compare(args.a, args.b),
              **dict(item.split("=", 1) for item in args.meta)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
