"""One real optimizer step of PAR at the paper configuration on this CPU: evidence that the
configuration trains at all, with its wall time and peak memory.

    .venv/bin/python benchmarks/par_paper_step.py [--context-steps 5] [--checkpointing 3] [--name ...]

Batch 1 in float32 (the training loop's precision on a CPU), 480x768 frames as NOVA-0.6B's
latents (4 x 60 x 96, as the feature cache holds them: training never runs the VAE), the
instruction's Phi states cached and Phi released, every trainable module at its paper shape
with random weights (``PARAdapter.without_pretrained``), AdamW with NOVA's settings. Times
model build, forward, backward and the optimizer step; peak RSS from the kernel (VmHWM).
Writes results/par_paper_step[_<name>].*.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402


def rss_gib() -> tuple[float, float]:
    """(current, peak) resident set of this process, GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = lambda k: int(fields[k].split()[0])  # noqa: E731
    return kib("VmRSS") / 2**20, kib("VmHWM") / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context-steps", type=int, default=None, help="default: the paper config's")
    p.add_argument("--checkpointing", type=int, default=None, help="gradient_checkpointing level (default: config's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from harness.adapter import DataInfo, resolve_config
    from methods.par import PARAdapter

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {}
    if args.context_steps is not None:
        overrides["context_steps"] = args.context_steps
    if args.checkpointing is not None:
        overrides["gradient_checkpointing"] = args.checkpointing
    cfg = PARAdapter.without_pretrained(resolve_config(PARAdapter, "paper", None, overrides))
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max", "q01", "q99")}
             for k, d in (("actions", 8), ("obs_qpos", 9))}
    data = DataInfo(8, 9, (512, 512), "Push the cube to the goal region.", stats)
    phases, rss = {}, {}

    start = time.perf_counter()
    adapter = PARAdapter(cfg, data).train()
    optimizer = torch.optim.AdamW(adapter.optim_groups(), lr=cfg.lr, betas=cfg.betas)
    phases["build_s"] = time.perf_counter() - start
    rss["after_build"] = rss_gib()
    n, (h, w) = cfg.context_steps, cfg.latent_size
    batch = {"latents": torch.randn(1, n + 1, cfg.latent_channels, h, w),
             "actions": torch.randn(1, n + 1, cfg.action_chunk_len, 8),
             "obs_is_pad": torch.zeros(1, n + 1, dtype=torch.bool),
             "action_is_pad": torch.zeros(1, n + 1, cfg.action_chunk_len, dtype=torch.bool),
             "instruction": [data.instruction]}
    batch["action_is_pad"][:, 0] = True  # the episode's start: BOA tokens

    start = time.perf_counter()
    loss, logs = adapter(batch)
    phases["forward_s"] = time.perf_counter() - start
    rss["after_forward"] = rss_gib()
    start = time.perf_counter()
    loss.backward()
    phases["backward_s"] = time.perf_counter() - start
    rss["after_backward"] = rss_gib()
    start = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.grad_clip_norm)
    optimizer.step()
    phases["optimizer_s"] = time.perf_counter() - start
    rss["after_step"] = rss_gib()
    trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    resident = adapter.model.frozen.resident
    result = {"command": "benchmarks/par_paper_step.py " + " ".join(argv or sys.argv[1:]),
              "context_steps": n, "gradient_checkpointing": cfg.gradient_checkpointing,
              "threads": args.threads, "trainable_parameters": trainable, "loss": float(loss.detach()), "logs": logs,
              "frozen_resident": resident, "phases": phases,
              "step_s": phases["forward_s"] + phases["backward_s"] + phases["optimizer_s"],
              "rss_gib": {k: {"current": round(c, 2), "peak": round(pk, 2)} for k, (c, pk) in rss.items()},
              "peak_rss_gib": round(rss_gib()[1], 2),
              "maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    lines = [f"# One optimizer step of PAR at the paper configuration on a CPU "
             f"({args.threads} threads, float32, batch 1)", "",
             f"{trainable / 1e6:.2f}M trainable parameters; {n} physical steps of context "
             f"({cfg.text_tokens} text + {n} x ({cfg.frame_tokens} frame + {cfg.action_chunk_len} action) tokens "
             f"in the causal transformer, {cfg.spatial_tokens} tokens per frame in the spatial encoder); "
             f"gradient_checkpointing {cfg.gradient_checkpointing}; frames as cached VAE latents; "
             f"Phi resident: {resident['phi']}, VAE resident: {resident['vae']}.", "",
             "| phase | wall s | RSS after, GiB | peak RSS so far, GiB |", "|---|---|---|---|",
             f"| build (random weights) + AdamW | {phases['build_s']:.1f} | {rss['after_build'][0]:.2f} | "
             f"{rss['after_build'][1]:.2f} |"]
    for phase, key in (("forward", "after_forward"), ("backward", "after_backward"), ("optimizer step", "after_step")):
        lines.append(f"| {phase} | {phases[phase.split()[0] + '_s']:.1f} | {rss[key][0]:.2f} | {rss[key][1]:.2f} |")
    lines += ["", f"One step (forward + backward + AdamW): **{result['step_s']:.0f} s**, "
              f"peak RSS **{result['peak_rss_gib']:.2f} GiB**; loss {float(loss.detach()):.3f}."]
    write_result("par_paper_step" + (f"_{args.name}" if args.name else ""), result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
