"""Demo shards: one shard's wall time against the whole build, the merge overhead, and the
paper-scale demo wall time projected on k nodes from the measured per-shard CPU times.

    .venv/bin/python benchmarks/demo_shards.py [--task PushCube] [--demos 4] [--shard 2] [--size 512]

Builds the same demos twice through the CLI, each step its own process as in the workflow:
unsharded (``plan-demos``, ``render-dataset``) and sharded (``plan-demos --seed-range`` per
range, ``merge-plans``, ``render-dataset --episodes`` per block, ``merge-datasets``), at the
paper's image size and JPEG quality with one render process per job. Checks that the merged
dataset equals the unsharded one, then projects the paper scale (3 tasks x 1000 demos, the
paper config's shards of 50 and 8 render processes per job) from the measured CPU seconds per
planned seed and per rendered episode: a CPU projection, not a measurement of a cluster.
Writes results/demo_shards.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from harness.config import CONFIG_DIR  # noqa: E402
from harness.dataset import DemoDataset  # noqa: E402
from harness.shards import plan_shard_ranges, render_shard_ranges  # noqa: E402

PY = [sys.executable, "-m", "harness"]


def json_load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def timed(args: list[str]) -> dict:
    """Run one harness step as its own process: wall and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(PY + args, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="PushCube")
    p.add_argument("--demos", type=int, default=4)
    p.add_argument("--shard", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    paper = yaml.safe_load((CONFIG_DIR / "paper.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="demo_shards_"))
    cfg = dict(paper)
    cfg["demos"] = dict(paper["demos"], num_demos=args.demos, max_failed_seeds=2, shard_size=args.shard,
                        render_workers=1, verify_episodes=0)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    common = ["--config-file", str(config), "--task", args.task]
    steps = {}
    # unsharded: one planning job, one rendering job
    steps["plan (whole)"] = timed(["plan-demos", *common, "--out-dir", str(work / "whole"), "--no-progress"])
    steps["render (whole)"] = timed(["render-dataset", *common, "--trajectories", str(work / "whole" / "trajectories.h5"),
                                     "--out", str(work / "whole.h5"), "--workers", "1", "--no-progress"])
    # sharded
    plan_ranges = plan_shard_ranges(args.demos, 2, args.shard)
    dirs = []
    for a, b in plan_ranges:
        dirs.append(work / "plans" / f"seeds_{a}_{b}")
        steps[f"plan shard {a}:{b}"] = timed(["plan-demos", *common, "--seed-range", str(a), str(b),
                                              "--out-dir", str(dirs[-1]), "--no-progress"])
    steps["merge-plans"] = timed(["merge-plans", *common, "--shards", *map(str, dirs), "--out-dir", str(work / "merged")])
    parts = []
    for a, b in render_shard_ranges(args.demos, args.shard):
        parts.append(work / "blocks" / f"episodes_{a}_{b}.h5")
        steps[f"render shard {a}:{b}"] = timed(["render-dataset", *common, "--trajectories",
                                                str(work / "merged" / "trajectories.h5"), "--episodes", str(a), str(b),
                                                "--out", str(parts[-1]), "--workers", "1", "--no-progress"])
    steps["merge-datasets"] = timed(["merge-datasets", *map(str, parts), "--plan-report",
                                     str(work / "merged" / "plan_report.json"), "--out", str(work / "merged.h5")])
    whole, merged = DemoDataset(work / "whole.h5"), DemoDataset(work / "merged.h5")
    equal = (whole.seeds.tolist() == merged.seeds.tolist() and np.array_equal(whole.actions, merged.actions)
             and [e.frames for e in whole.episodes()] == [e.frames for e in merged.episodes()])
    frames = int((whole.num_steps + 1).sum())

    plan_shards = [v for k, v in steps.items() if k.startswith("plan shard")]
    render_shards = [v for k, v in steps.items() if k.startswith("render shard")]
    # CPU = start-up + units x CPU per unit, fitted from a whole job (all units) and the mean
    # shard (``shard`` units): the start-up is paid once per job, the rest scales
    def fit(whole_cpu, whole_units, shard_cpu, shard_units):
        per_unit = (whole_cpu - shard_cpu) / max(whole_units - shard_units, 1)
        return max(shard_cpu - shard_units * per_unit, 0.0), per_unit

    whole_plan = json_load(work / "whole" / "plan_report.json")
    whole_seeds = len(whole_plan["succeeded_seeds"]) + len(whole_plan["failed_seeds"])
    plan_startup, plan_cpu_per_seed = fit(steps["plan (whole)"]["cpu_s"], whole_seeds,
                                          np.mean([s["cpu_s"] for s in plan_shards]), args.shard)
    startup, render_cpu_per_episode = fit(steps["render (whole)"]["cpu_s"], args.demos,
                                          np.mean([s["cpu_s"] for s in render_shards]), args.shard)
    whole_wall = steps["plan (whole)"]["wall_s"] + steps["render (whole)"]["wall_s"]
    merge_wall = steps["merge-plans"]["wall_s"] + steps["merge-datasets"]["wall_s"]

    # the paper scale: 3 tasks x 1000 demos, max_failed_seeds 200, shards of 50, 8 render processes
    n, failed_cap, size, workers, tasks = 1000, paper["demos"]["max_failed_seeds"], paper["demos"]["shard_size"], \
        paper["demos"]["render_workers"], 3
    plan_jobs = tasks * len(plan_shard_ranges(n, failed_cap, size))
    render_jobs = tasks * len(render_shard_ranges(n, size))
    plan_job_wall = size * plan_cpu_per_seed + plan_startup
    render_job_wall = size * render_cpu_per_episode / workers + startup
    merge_per_task = merge_wall * n / args.demos  # both merges read and write every episode once
    one_process_h = tasks * (n * render_cpu_per_episode + (n + 40) * plan_cpu_per_seed) / 3600
    rows = []
    for k in (1, 8, 32):
        wall = (math.ceil(plan_jobs / k) * plan_job_wall + math.ceil(render_jobs / k) * render_job_wall
                + merge_per_task)  # the 3 tasks' merges run side by side
        rows.append({"nodes": k, "projected_wall_h": round(wall / 3600, 2)})
    result = {"task": args.task, "demos": args.demos, "shard": args.shard, "image_size": args.size,
              "frames": frames, "steps": steps, "merged_equals_unsharded": bool(equal),
              "whole_wall_s": round(whole_wall, 2), "merge_wall_s": round(merge_wall, 2),
              "plan_cpu_s_per_seed": round(plan_cpu_per_seed, 3),
              "render_cpu_s_per_episode": round(render_cpu_per_episode, 2),
              "job_startup_cpu_s": {"plan": round(plan_startup, 2), "render": round(startup, 2)},
              "projection": {"assumptions": f"3 tasks x {n} demos, shards of {size}, {plan_jobs} planning and "
                                            f"{render_jobs} rendering jobs, one job per node at a time with "
                                            f"{workers} render processes on {workers} cores, CPU seconds per "
                                            "unit as measured here, merges scaled linearly",
                             "unsharded_one_process_h": round(one_process_h, 1), "rows": rows}}
    lines = [f"# Demo shards ({args.task}, {args.demos} demos at {args.size}x{args.size}, shards of {args.shard})", "",
             f"Merged dataset equals the unsharded one: **{equal}** ({frames} frames).", "",
             "| step | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['cpu_s']} |" for k, v in steps.items()]
    lines += ["", f"- whole build (plan + render, one job each): {whole_wall:.1f} s wall; one render shard "
              f"of {args.shard} episodes: {render_shards[0]['wall_s']:.1f} s",
              f"- merge overhead (merge-plans + merge-datasets): {merge_wall:.1f} s "
              f"({100 * merge_wall / whole_wall:.1f}% of the whole build)",
              f"- measured: {plan_cpu_per_seed:.2f} CPU s per planned seed, {render_cpu_per_episode:.1f} CPU s "
              f"per rendered episode; start-up per job {plan_startup:.1f} s (plan), {startup:.1f} s (render), "
              "fitted from the whole job against the shards", "",
              "## Paper scale, projected from these CPU times (a CPU projection, not a cluster measurement)", "",
              result["projection"]["assumptions"] + ".", "",
              f"One process, unsharded: {one_process_h:.1f} h.", "", "| nodes | projected wall (h) |", "|---|---|"]
    lines += [f"| {r['nodes']} | {r['projected_wall_h']} |" for r in rows]
    write_result("demo_shards", result, "\n".join(lines))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
