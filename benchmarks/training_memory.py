"""Every configured method's projected peak training memory at a scale's config (what the
workflow's ``memory`` rule computes to size the GPU training jobs), in one table.

    .venv/bin/python benchmarks/training_memory.py [--scale paper] [--methods act dp ...]

Each row is ``python -m harness memory --method M --scale S`` (harness/memory.py), measured on
this machine's CPU in the scale's training precision; a method with ``gradient_checkpointing``
gets a row for its own level and one for the other end (``memory.project_method``). PAR's projection is checked against extra measured points by
benchmarks/par_memory.py. Writes results/training_memory_<scale>.*.
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
    p.add_argument("--scale", default="paper")
    p.add_argument("--methods", nargs="*", default=None, help="default: the scale's methods")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from harness import memory
    from harness.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.scale)
    bf16 = cfg.data["compute"]["wants_gpu"]
    image_size = cfg.task("PushCube").image_size
    rows = []
    for name in args.methods or cfg.data["methods"]:
        _, adapter_cls, method_cfg = cfg.method(name)
        rows += memory.project_method(adapter_cls, method_cfg, name, image_size=image_size,
                                      device=torch.device("cpu"), bf16=bf16)
    lines = [f"# Projected peak training memory per method ({args.scale} scale)", "",
             f"`python -m harness memory --scale {args.scale} --method <M>` for each method: measured passes on "
             f"this CPU ({'bf16 autocast' if bf16 else 'float32'}, {image_size[0]}x{image_size[1]} frames, random "
             "weights of the config's shapes), activations fitted over batch (and context) and projected to the "
             "config's batch size, plus parameters, gradients and AdamW's moments (harness/memory.py).", "",
             memory.summary(rows), "",
             "| method | trainable parameters | measured points (batch, context): activations MiB |", "|---|---|---|"]
    for r in rows:
        points = "; ".join(f"({m['batch']}, {m['context_steps'] or '-'}): {m['activations_bytes'] / 2**20:,.0f}"
                           for m in r["measured"])
        lines.append(f"| {r['method']}{'' if r['gradient_checkpointing'] is None else ' ckpt ' + str(r['gradient_checkpointing'])}"
                     f" | {r['trainable_parameters'] / 1e6:.1f}M | {points} |")
    write_result(f"training_memory_{args.scale}", {"command": "benchmarks/training_memory.py " + " ".join(argv or sys.argv[1:]),
                                                   "scale": args.scale, "projections": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
