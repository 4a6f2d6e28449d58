"""Wall time of the whole smoke DAG (every task, every smoke method, every check), from an
empty working folder, with the per-rule job time and CPU time Snakemake's benchmark files
recorded.

    .venv/bin/python benchmarks/smoke_dag.py [--cores 2] [--keep DIR] [--warm-start on|off] [--brdf-cache on|off]

Target: <= 10 minutes on 2 cores (CI runs this DAG inside its test command). Writes
results/smoke_dag.json and results/smoke_dag.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402

from harness import brdf_lut  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.grid import machine as grid_machine  # noqa: E402
from harness.paths import REPO_ROOT  # noqa: E402

TARGET_SECONDS = 600


def per_rule(bench_root: Path) -> dict[str, dict]:
    """Jobs, summed wall seconds and summed CPU seconds per rule, from the benchmark TSVs."""
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "cpu_seconds": 0.0})
    for tsv in sorted(bench_root.rglob("*.tsv")):
        rule = tsv.relative_to(bench_root).parts[0].removesuffix(".tsv")
        rule = "table" if rule.startswith("table") else rule
        with tsv.open() as f:
            row = list(csv.DictReader(f, delimiter="\t"))[-1]
        rules[rule]["jobs"] += 1
        rules[rule]["seconds"] += float(row["s"])
        rules[rule]["cpu_seconds"] += float(row["cpu_time"]) if row["cpu_time"] not in ("", "NA") else 0.0
    return {k: {kk: round(vv, 1) if isinstance(vv, float) else vv for kk, vv in v.items()}
            for k, v in rules.items()}


def evaluation_startup(out: Path) -> dict:
    """Per evaluation job: its wall time (benchmark file) less the summed ``seconds`` of its
    rollout rows (each rollout's own time): the job's fixed start-up, as seconds and a fraction.
    A job of one (method, task) (rule evaluate) or of every method of a task (rule evaluate_task,
    evaluation.one_job_per_task: its rows are every method's of the task)."""
    import statistics

    jobs = [(tsv, [out / "eval" / tsv.parent.name / f"{tsv.stem}.csv"])
            for tsv in sorted((out / "benchmarks" / "evaluate").glob("*/*.tsv"))]
    jobs += [(tsv, sorted((out / "eval").glob(f"*/{tsv.stem}.csv")))
             for tsv in sorted((out / "benchmarks" / "evaluate_task").glob("*.tsv"))]
    fixed, fractions = [], []
    for tsv, row_files in jobs:
        if not row_files or not all(p.exists() for p in row_files):
            continue
        with tsv.open() as f:
            wall = float(list(csv.DictReader(f, delimiter="\t"))[-1]["s"])
        rollouts = 0.0
        for rows in row_files:
            with rows.open() as f:
                rollouts += sum(float(r["seconds"]) for r in csv.DictReader(f))
        fixed.append(max(0.0, wall - rollouts))
        fractions.append(fixed[-1] / wall if wall > 0 else 0.0)
    if not fixed:
        return {"jobs": 0, "median_startup_seconds": None, "median_startup_fraction": 0.0, "max_startup_fraction": 0.0}
    return {"jobs": len(fixed), "median_startup_seconds": round(statistics.median(fixed), 1),
            "median_startup_fraction": round(statistics.median(fractions), 3),
            "max_startup_fraction": round(max(fractions), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temp folder)")
    p.add_argument("--warm-start", choices=["config", "on", "off"], default="config",
                   help="compute.warm_start: as the smoke config says (default), or forced on/off")
    p.add_argument("--brdf-cache", choices=["on", "off"], default="on",
                   help=f"SAPIEN's BRDF table from the per-machine cache (on, the default) or computed by "
                        f"every rendering process (off: {brdf_lut.ENV_SWITCH}=0), harness/brdf_lut.py")
    args = p.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="smoke-dag-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config("smoke")
    config = ["scale=smoke"]
    if args.warm_start != "config":
        text = (REPO_ROOT / "workflows" / "config" / "smoke.yaml").read_text()
        want = "true" if args.warm_start == "on" else "false"
        text = re.sub(r"(?m)^  warm_start: \w+$", f"  warm_start: {want}", text)
        assert f"warm_start: {want}" in text
        (work / "smoke.yaml").write_text(text)
        config = [f"config_file={work / 'smoke.yaml'}"]
    warm = args.warm_start == "on" or (args.warm_start == "config" and cfg.data["compute"].get("warm_start", False))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(work),
           "--cores", str(args.cores), "--config", *config]
    measured_on = grid_machine()
    machine = {"cpu_model": measured_on["cpu"] or "unknown", "cpus": measured_on["cores"],
               "load_before": [round(x, 2) for x in os.getloadavg()]}
    start = time.perf_counter()
    env = dict(os.environ, **{brdf_lut.ENV_SWITCH: "1" if args.brdf_cache == "on" else "0"})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        return proc.returncode
    rules = per_rule(work / "outputs" / "smoke" / "benchmarks")
    jobs = sum(r["jobs"] for r in rules.values())
    startup = evaluation_startup(work / "outputs" / "smoke")
    result = {"cores": args.cores, "wall_seconds": round(wall, 1), "target_seconds": TARGET_SECONDS,
              "warm_start": warm, "brdf_cache": args.brdf_cache, "machine": machine,
              "jobs": jobs, "methods": cfg.data["methods"], "tasks": cfg.tasks,
              "rollouts_per_method_task": cfg.data["evaluation"]["num_init_states"]
              * len(cfg.data["evaluation"]["policy_seeds"]),
              "evaluation_workers": cfg.data["evaluation"]["workers"],
              "evaluation_one_job_per_task": cfg.data["evaluation"]["one_job_per_task"], "per_rule": rules,
              "evaluation_startup": startup}
    lines = [f"# Smoke DAG on {args.cores} cores: {wall / 60:.1f} min wall (target <= {TARGET_SECONDS // 60} min)",
             "", f"{jobs} jobs: {len(cfg.tasks)} tasks x {len(cfg.data['methods'])} methods "
             f"({', '.join(cfg.data['methods'])}), {result['rollouts_per_method_task']} "
             f"rollout{'' if result['rollouts_per_method_task'] == 1 else 's'} each; warm start "
             f"{'on' if warm else 'off'} (compute.warm_start, harness/warm.py); SAPIEN's BRDF table "
             f"{'from the per-machine cache' if args.brdf_cache == 'on' else 'computed by every process'} "
             "(harness/brdf_lut.py).", "",
             f"Machine: {machine['cpu_model']}, {machine['cpus']} CPUs; load average (1/5/15 min) "
             f"{machine['load_before']} before, {machine['load_after']} after.", "",
             f"Evaluation jobs: {startup['jobs']} ("
             f"{'one per task, every method in it' if cfg.data['evaluation']['one_job_per_task'] else 'one per cell'}"
             "; evaluation.one_job_per_task); start-up (job wall time less its rollouts' own "
             f"seconds) median {startup['median_startup_seconds']} s, a median "
             f"{startup['median_startup_fraction']:.0%} of the job's wall time (max "
             f"{startup['max_startup_fraction']:.0%}). A rollout's own seconds include the env's first "
             "render.", "",
             "| rule | jobs | job seconds (sum) | CPU seconds (sum) |", "|---|---|---|---|"]
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"| {name} | {r['jobs']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    if warm:
        lines += ["", "With warm start, Snakemake's benchmark files measure each job's client process: "
                      "the wall times are the jobs', the CPU seconds are not (the forked job's are not counted)."]
    write_result("smoke_dag", result, "\n".join(lines))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if wall > TARGET_SECONDS:
        print(f"over the target: {wall:.0f} s > {TARGET_SECONDS} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
