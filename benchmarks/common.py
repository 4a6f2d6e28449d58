"""Shared helpers of the benchmark scripts: a small real dataset and a results writer."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import replace
from pathlib import Path

from harness.config import load_config
from harness.provenance import code_id, git_sha, package_versions, utc_now

RESULTS = Path(__file__).resolve().parent / "results"


def small_dataset(task_name: str, demos: int, size: int, workdir: Path) -> Path:
    """Plan and render ``demos`` demonstrations of a task at size x size into ``workdir``."""
    from harness.demos import plan_demos
    from harness.render import render_dataset

    task = replace(load_config("paper").task(task_name), image_size=(size, size))
    plan_demos(task, workdir / "plan", num_demos=demos, progress=False)
    return render_dataset(task, workdir / "plan" / "trajectories.h5", workdir / "dataset.h5",
                          progress=False)


def run_arguments(parser, method: str) -> None:
    """``--run``, ``--weights`` and ``--name`` of a benchmark that reads one trained run."""
    parser.add_argument("--run", required=True, help=f"a trained {method} run folder")
    parser.add_argument("--weights", default="model.safetensors",
                        help="weights file inside the run, e.g. checkpoints/step_000000400/model.safetensors")
    parser.add_argument("--name", default="", help="suffix of the result files")


def write_result(name: str, result: dict, markdown: str, folder: Path = RESULTS) -> Path:
    """Write ``<folder>/<name>.json`` (with machine and provenance) and ``<folder>/<name>.md``
    (``folder``: ``benchmarks/results/`` unless a script is told otherwise)."""
    result = {"benchmark": name, "created_utc": utc_now(), "git_sha": git_sha(), "code_id": code_id(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "versions": package_versions(), **result}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    (folder / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
    return path
