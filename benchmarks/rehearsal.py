"""The paper scale rehearsed on a CPU: the whole DAG of ``workflows/config/rehearsal.yaml``
(every method's paper-preset shapes, the paper's image size, the pretrained loaders reading
stand-ins in the releases' layouts), with what each job took and what failed.

    .venv/bin/python scripts/standin_weights.py --out weights-standin --nova-upstream <NOVA checkout>
    .venv/bin/python benchmarks/rehearsal.py [--cores 1]

Runs Snakemake in the repository (outputs under ``outputs/rehearsal/``, tables under
``results/rehearsal/``) with ``--keep-going``, so one method's failure does not hide another's.
Writes ``benchmarks/results/rehearsal.{json,md}``: per job its rule, wildcards, state (done,
up to date from an earlier run, failed, not run), wall seconds and peak RSS (Snakemake's
benchmark files) against the ``mem_mb`` it asks the scheduler for (a job over it would be killed
under a cluster's memory limit), and for each failed job the end of its log. An interrupted rehearsal resumes
where it stopped; delete ``outputs/rehearsal/`` for a run from scratch. Exit status 1 when a job
failed or passed its memory. What the rehearsals found and how each was fixed: docs/rehearsal.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402

from harness.grid import machine as grid_machine  # noqa: E402
from harness.paths import REPO_ROOT  # noqa: E402
from harness.provenance import CodeState  # noqa: E402

CONFIG = REPO_ROOT / "workflows" / "config" / "rehearsal.yaml"
WEIGHTS = REPO_ROOT / "weights-standin"  # where the config's weight paths point
OUT = REPO_ROOT / "outputs" / "rehearsal"


def _jobs_in(snakemake_output: str) -> list[dict]:
    """Every job block Snakemake printed (a dry run's or a run's): rule, wildcards, log and
    benchmark files, and the mem_mb it asks for (a run prints a projection-sized job's own)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", snakemake_output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) == "all":
            continue
        fields = dict(re.findall(r"^\s+(wildcards|log|benchmark|resources): (.+)$", block, flags=re.M))
        mem = re.search(r"\bmem_mb=(\d+)", fields.get("resources", ""))
        jobs.append({"rule": head.group(1), "wildcards": fields.get("wildcards", ""),
                     "log": fields.get("log"), "benchmark": fields.get("benchmark"),
                     "declared_mem_mb": int(mem.group(1)) if mem else None})
    return jobs


def planned_jobs(cores: int) -> list[dict]:
    """Every job of the DAG, from a dry run."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-F", "--cores", str(cores), "--config",
                           f"config_file={CONFIG}"], capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode:
        raise SystemExit(f"the rehearsal DAG does not plan:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return _jobs_in(proc.stdout)


def _benchmark(path: str | None, since: float) -> dict | None:
    """The job's benchmark row and whether this run wrote it (``since``: the run's start)."""
    if not path or not (REPO_ROOT / path).exists():
        return None
    with (REPO_ROOT / path).open() as f:
        row = list(csv.DictReader(f, delimiter="\t"))[-1]
    rss = row.get("max_rss", "NA")
    return {"seconds": round(float(row["s"]), 1), "max_rss_mb": None if rss in ("", "NA") else round(float(rss)),
            "this_run": (REPO_ROOT / path).stat().st_mtime >= since}


def _failed_logs(snakemake_log: str) -> set[str]:
    """The log files of the jobs Snakemake reports as failed."""
    failed = set()
    for block in snakemake_log.split("Error in rule ")[1:]:
        match = re.search(r"^\s+log: (\S+)", block, flags=re.M)
        if match:
            failed.add(match.group(1))
    return failed


def _tail(path: str | None, lines: int = 15) -> str:
    if not path or not (REPO_ROOT / path).exists():
        return "(no log)"
    text = (REPO_ROOT / path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=1, help="Snakemake's cores (1: one job at a time, the "
                   "least memory; the paper presets' jobs take several GB each). The jobs that ask for a GPU "
                   "run one at a time whatever the cores")
    p.add_argument("--mem-mb", type=int, default=int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.85 / 2**20),
                   help="the most memory the jobs running together may ask for (default: 85%% of this machine's)")
    args = p.parse_args(argv)
    record = WEIGHTS / "STANDIN.json"
    if not record.exists():
        raise SystemExit(f"no stand-in weights at {WEIGHTS} ({record} is missing): write them with\n"
                         "  .venv/bin/python scripts/standin_weights.py --out weights-standin "
                         "--nova-upstream <a checkout of baaivision/NOVA>")
    # every job must run at one code: shards planned before and after an edit do not merge
    # (merge-plans refuses them, as the first rehearsal found), and the numbers name one commit
    code = CodeState().code().id
    if "-dirty-" in code:
        raise SystemExit("the checkout has uncommitted code changes: commit them, or rehearse from a worktree pinned "
                         "at one commit (git worktree add --detach ../rehearsal HEAD), and edit nothing that decides "
                         "results while it runs")
    jobs = planned_jobs(args.cores)
    machine = grid_machine()
    machine["load_before"] = [round(x, 2) for x in os.getloadavg()]
    # the jobs that ask for a GPU (memory, features, train) run one at a time, as on a one-GPU
    # machine: with --cores 2 the lighter jobs (demos, evaluation blocks) run beside them
    # and the jobs running together ask for at most --mem-mb (a job asking for more runs alone)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--resources", "gpu=1",
           f"mem_mb={args.mem_mb}", "--keep-going", "--rerun-incomplete", "--config", f"config_file={CONFIG}"]
    start, started_at = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    code_after = CodeState().code().id
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rehearsal.snakemake.log").write_text(proc.stdout + proc.stderr)
    failed_logs = _failed_logs(proc.stdout + proc.stderr)
    # the mem_mb each job asked for as it ran: a training or evaluation job's comes from its
    # method's memory projection, which the dry run before it did not have yet
    asked = {j["log"]: j["declared_mem_mb"] for j in _jobs_in(proc.stdout + proc.stderr) if j["declared_mem_mb"]}
    rows = []
    for job in jobs:
        bench = _benchmark(job["benchmark"], started_at)
        if job["log"] in failed_logs:
            state = "failed"
        elif bench is None:
            state = "not run"
        else:  # a job done by an earlier run of the rehearsal is up to date, its times that run's
            state = "done" if bench.pop("this_run") else "up to date"
        row = dict(job, state=state, **(bench or {"seconds": None, "max_rss_mb": None}),
                   log_tail=_tail(job["log"]) if state == "failed" else "")
        row["declared_mem_mb"] = asked.get(job["log"], job["declared_mem_mb"])
        # a job whose peak RSS passed the memory it asks the scheduler for would be killed
        # under a cluster's memory limit (SLURM's --mem) at the paper scale
        row["over_declared_mem"] = bool(row["max_rss_mb"] and row["declared_mem_mb"]
                                        and row["max_rss_mb"] > row["declared_mem_mb"])
        rows.append(row)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "up to date", "failed", "not run")}
    over = [r for r in rows if r["over_declared_mem"]]
    result = {"code_id": code, "code_changed_during_run": code_after != code,
              "config": str(CONFIG.relative_to(REPO_ROOT)), "cores": args.cores, "mem_mb": args.mem_mb, "wall_seconds": round(wall, 1),
              "snakemake_returncode": proc.returncode, "machine": machine, "standin_weights": json.loads(record.read_text()),
              "jobs": rows, "counts": counts}
    lines = [f"# Paper-scale rehearsal on a CPU: {wall / 60:.0f} min, {counts['done']} jobs done, "
             f"{counts['up to date']} up to date from an earlier run, {counts['failed']} failed, "
             f"{counts['not run']} not run, {len(over)} over the memory they ask for", "",
             f"`{result['config']}` (the paper presets' shapes, 512x512 frames, stand-in weights in the "
             f"releases' layouts: `scripts/standin_weights.py`), Snakemake `--cores {args.cores} --resources gpu=1 mem_mb={args.mem_mb} --keep-going`. "
             f"Machine: {machine['cpu'] or 'unknown'}, {machine['cores']} CPUs; load average {machine['load_before']} "
             f"before, {machine['load_after']} after. Code {code}"
             + (f", **changed during the run** (now {code_after})" if code_after != code else "")
             + ". What the rehearsals found: docs/rehearsal.md.", "",
             "| rule | wildcards | state | wall s | peak RSS MB | asks mem_mb |", "|---|---|---|---|---|---|"]
    for r in rows:
        rss = "" if r["max_rss_mb"] is None else f"{r['max_rss_mb']}" + (" **over**" if r["over_declared_mem"] else "")
        lines.append(f"| {r['rule']} | {r['wildcards'] or '-'} | {r['state']} | "
                     f"{'' if r['seconds'] is None else r['seconds']} | {rss} | {r['declared_mem_mb'] or ''} |")
    for r in rows:
        if r["state"] == "failed":
            lines += ["", f"## Failed: {r['rule']} ({r['wildcards']})", "", "```", r["log_tail"], "```"]
    write_result("rehearsal", result, "\n".join(lines))
    return 0 if proc.returncode == 0 and not counts["failed"] and not over else 1


if __name__ == "__main__":
    sys.exit(main())
