"""Demos per minute: ManiSkill's replay_trajectory (-o rgb --use-env-states) vs our
rendering from states, on the same planned trajectories, side by side in one run; plus the
projected time and disk size of 1000 demos per task at the paper resolution.

    .venv/bin/python benchmarks/render_speed.py [--demos 5] [--size 128] [--tasks PushCube ...]

Writes benchmarks/results/render_speed.json and .md (figures, machine, versions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401  (runtime settings)
from common import write_result  # noqa: E402
from harness.config import load_config  # noqa: E402
from harness.demos import plan_demos  # noqa: E402
from harness.render import render_dataset, replay_with_maniskill  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_task(name: str, demos: int, size: int, paper_size: int, workdir: Path) -> dict:
    cfg = load_config("paper")
    task = cfg.task(name)
    small = replace(task, image_size=(size, size))
    traj_dir = workdir / name
    report, plan_s = timed(plan_demos, task, traj_dir, num_demos=demos, progress=False)
    traj = traj_dir / "trajectories.h5"
    frames = sum(report["episode_lengths"]) + demos

    # ManiSkill: steps physics, restores each recorded state, renders its sensor camera(s)
    _, replay_s = timed(replay_with_maniskill, traj, demos, "base_camera", (size, size),
                        workdir / f"{name}-replay")
    # ours: sets each recorded state and renders only the observation camera
    _, ours_s = timed(render_dataset, small, traj, workdir / f"{name}-ours.h5", workers=1,
                      progress=False)
    cores = os.cpu_count() or 1
    _, ours_par_s = timed(render_dataset, small, traj, workdir / f"{name}-ours-par.h5",
                          workers=cores, progress=False)
    # paper resolution, one demo: time per frame and JPEG bytes per frame
    one = workdir / f"{name}-one"
    plan_demos(task, one, num_demos=1, progress=False)
    paper = replace(task, image_size=(paper_size, paper_size))
    out, paper_s = timed(render_dataset, paper, one / "trajectories.h5", workdir / f"{name}-paper.h5",
                         workers=1, progress=False)
    from harness.dataset import DemoDataset

    ds = DemoDataset(out)
    paper_frames = int(ds.num_steps.sum()) + 1
    bytes_per_frame = int(ds.frame_offsets[-1]) / paper_frames
    per_demo_frames = frames / demos
    plan_per_demo = plan_s / demos
    render_per_frame_paper = paper_s / paper_frames
    demo_seconds_1000 = 1000 * (plan_per_demo + per_demo_frames * render_per_frame_paper)
    return {
        "task": name,
        "demos": demos,
        "frames": frames,
        "image_size": size,
        "replay_trajectory": {"seconds": round(replay_s, 2), "demos_per_min": round(60 * demos / replay_s, 2)},
        "ours_1_process": {"seconds": round(ours_s, 2), "demos_per_min": round(60 * demos / ours_s, 2)},
        f"ours_{cores}_processes": {"seconds": round(ours_par_s, 2),
                                    "demos_per_min": round(60 * demos / ours_par_s, 2)},
        "speedup_1_process": round(replay_s / ours_s, 2),
        f"speedup_{cores}_processes": round(replay_s / ours_par_s, 2),
        "plan_seconds_per_demo": round(plan_per_demo, 3),
        "paper_resolution": paper_size,
        "paper_render_seconds_per_frame": round(render_per_frame_paper, 4),
        "paper_jpeg_bytes_per_frame": round(bytes_per_frame),
        "projected_1000_demos": {
            "hours_1_process": round(demo_seconds_1000 / 3600, 2),
            f"hours_{cores}_processes": round(demo_seconds_1000 / 3600 / cores, 2),
            "dataset_gb": round(1000 * per_demo_frames * bytes_per_frame / 1e9, 2),
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demos", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--paper-size", type=int, default=512)
    p.add_argument("--tasks", nargs="+", default=["PushCube", "PickCube", "StackCube"])
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
        for name in args.tasks:
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            rows.append(bench_task(name, args.demos, args.size, args.paper_size, Path(tmp)))
    frames = sum(r["frames"] for r in rows)
    result = {
        "command": "benchmarks/render_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "vulkan_icd": os.environ.get("VK_ICD_FILENAMES", ""),
        "tasks": rows,
        # read by harness/compute.py for the paper-scale time projection
        "projection_inputs": {
            "plan": sum(r["plan_seconds_per_demo"] for r in rows) / len(rows),
            "render_per_frame": sum(r["paper_render_seconds_per_frame"] for r in rows) / len(rows),
            "frames": frames / sum(r["demos"] for r in rows),
        },
    }
    cores = os.cpu_count() or 1
    lines = [f"# Render speed ({cores} CPUs)", "",
             f"Demos per minute at {args.size}x{args.size}, {args.demos} demos per task, same trajectories.", "",
             f"| task | replay_trajectory -o rgb | ours, 1 process | ours, {cores} processes | speedup (1 / {cores}) "
             f"| 1000 demos at {args.paper_size}px: hours (1 / {cores} proc) | GB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        proj = r["projected_1000_demos"]
        lines.append(
            f"| {r['task']} | {r['replay_trajectory']['demos_per_min']} | {r['ours_1_process']['demos_per_min']} "
            f"| {r[f'ours_{cores}_processes']['demos_per_min']} | {r['speedup_1_process']}x / "
            f"{r[f'speedup_{cores}_processes']}x | {proj['hours_1_process']} / {proj[f'hours_{cores}_processes']} "
            f"| {proj['dataset_gb']} |")
    write_result("render_speed", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
