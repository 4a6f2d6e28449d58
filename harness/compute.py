"""Does this machine fit the chosen scale? Said up front, before a multi-day CPU run starts."""

from __future__ import annotations

import json
import os

from harness.config import ScaleConfig
from harness.paths import REPO_ROOT

# Used only when benchmarks/results/render_speed.json is absent; the benchmark measures these.
FALLBACK_SECONDS_PER_DEMO = {"plan": 0.4, "render_per_frame": 0.08, "frames": 90}


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _measured_rates() -> tuple[dict, str]:
    path = REPO_ROOT / "benchmarks" / "results" / "render_speed.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["projection_inputs"], f"measured by benchmarks/render_speed.py ({path.name})"
    return FALLBACK_SECONDS_PER_DEMO, "rough defaults; run benchmarks/render_speed.py to measure"


def projected_demo_hours(cfg: ScaleConfig) -> tuple[float, str]:
    """Wall hours to plan and render all demos of ``cfg`` on this kind of CPU machine."""
    rates, source = _measured_rates()
    per_demo = rates["plan"] + rates["frames"] * rates["render_per_frame"]
    workers = max(1, min(cfg.demos["render_workers"], os.cpu_count() or 1))
    seconds = len(cfg.tasks) * cfg.demos["num_demos"] * per_demo / workers
    return seconds / 3600, source


def device_report(cfg: ScaleConfig) -> tuple[bool, str]:
    """(fits, message): ``fits`` is False when the scale wants a GPU and none is present."""
    demo_hours, source = projected_demo_hours(cfg)
    has_gpu = gpu_available()
    lines = [f"scale {cfg.scale!r}: GPU {'found' if has_gpu else 'not found'}; "
             f"demos: ~{demo_hours:.1f} h on CPU ({source})."]
    wants = cfg.data["compute"]["wants_gpu"]
    if wants and not has_gpu:
        cpu_hours = cfg.data["compute"].get("projected_cpu_hours")
        lines.append(
            f"This scale plans training for a GPU and none is present: training on this CPU "
            f"would take {'~%.0f h' % cpu_hours if cpu_hours else 'far longer than the paper'}"
            " (the paper fine-tunes PAR for up to 40 A100-hours). Demo planning and rendering "
            "run fine on CPU; run training on a GPU machine, or use --config scale=reduced.")
    return (not wants) or has_gpu, "\n".join(lines)
