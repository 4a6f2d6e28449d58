"""PAR's projected training memory at the paper configuration (batch 8, bf16 autocast, with
and without gradient checkpointing), and a check of the projection against passes measured
outside the points it was fitted on.

    .venv/bin/python benchmarks/par_memory.py [--checks 1x5 2x2]

The projection is ``python -m harness memory --method par --scale paper`` (harness/memory.py):
activations fitted through batch x context points (1, 1), (2, 1), (1, 2). Each ``BxN`` of
``--checks`` is measured with gradient checkpointing on (level 3) and compared with the fit's
prediction. Writes results/par_memory.*.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", nargs="*", default=["1x5", "2x2"], help="BxN points to measure and compare")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from harness import memory
    from harness.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config("paper")
    _, adapter_cls, par = cfg.method("par")
    image_size = cfg.task("PushCube").image_size
    device = torch.device("cpu")
    rows = []
    for level in (3, 0):
        print(f"gradient_checkpointing {level}:")
        rows.append(memory.project(adapter_cls, par.replace(gradient_checkpointing=level), image_size=image_size,
                                   device=device, bf16=True))
    checks = [tuple(int(x) for x in c.split("x")) for c in args.checks]
    print("checks, gradient_checkpointing 3:")
    measured, _ = memory.measure_points(adapter_cls, par.replace(gradient_checkpointing=3), checks,
                                        image_size=image_size, device=device, bf16=True)
    fit = rows[0]["activation_fit"]
    check_rows = [{"batch": m["batch"], "context_steps": m["context_steps"], "measured_bytes": m["activations_bytes"],
                   "predicted_bytes": memory.activations_at(fit, m["batch"], m["context_steps"])} for m in measured]
    mib = 2**20
    lines = ["# PAR's training memory at the paper configuration (projection from measured passes)", "",
             "`python -m harness memory --method par --scale paper` on this CPU: random weights of the paper "
             "shapes, 512x512 frames resized to 480x768 and read as cached NOVA-VAE latents, the instruction's "
             "Phi states cached, bf16 autocast, AdamW. Activations measured at (batch, context steps) = "
             "(1, 1), (2, 1), (1, 2) and fitted as fixed + B (per_sample + N per_step):", "",
             memory.summary(rows), "",
             "| checkpointing | fixed MiB | per sample MiB | per sample and step MiB | activations at batch 8, "
             "5 steps, GiB | parameters + buffers GiB | gradients GiB | AdamW moments GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["activation_fit"]
        lines.append(f"| {r['gradient_checkpointing']} | {f['fixed_bytes'] / mib:,.0f} | {f['per_sample_bytes'] / mib:,.0f} | "
                     f"{f['per_sample_per_step_bytes'] / mib:,.0f} | {r['activation_bytes'] / 2**30:.1f} | "
                     f"{r['parameter_and_buffer_bytes'] / 2**30:.2f} | {r['gradient_bytes'] / 2**30:.2f} | "
                     f"{r['adamw_state_bytes'] / 2**30:.2f} |")
    lines += ["", "Check of the fit (gradient checkpointing 3) at points it was not fitted on:", "",
              "| batch | context steps | measured activations MiB | predicted MiB | error |", "|---|---|---|---|---|"]
    for c in check_rows:
        err = c["predicted_bytes"] / c["measured_bytes"] - 1
        lines.append(f"| {c['batch']} | {c['context_steps']} | {c['measured_bytes'] / mib:,.0f} | "
                     f"{c['predicted_bytes'] / mib:,.0f} | {100 * err:+.1f}% |")
    lines += ["", "`fits` adds 10% + 1 GiB for the CUDA context and allocator slack (harness/memory.py, "
              "GPU_OVERHEAD): a margin, not a GPU measurement."]
    write_result("par_memory", {"command": "benchmarks/par_memory.py " + " ".join(argv or sys.argv[1:]),
                                "projections": rows, "checks": check_rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
