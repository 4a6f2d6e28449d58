"""Evaluation overhead: rollouts through the harness (trivial policy) vs raw env stepping
with the same observation rendering, on the same init-state seeds.

    .venv/bin/python benchmarks/eval_overhead.py [--rollouts 4] [--steps 60] [--size 128]

The raw loop is what any evaluation must do: reset(seed), then per step render the camera,
read qpos and step the env. The harness adds: the adapter call, (un)normalisation, tensor
conversion, bookkeeping. Target: <= 10% overhead per step. Writes results/eval_overhead.*.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import small_dataset, write_result  # noqa: E402


def raw_rollouts(env, seeds, steps, camera) -> float:
    from harness.sim import capture_rgb, robot_qpos

    total = 0.0
    for seed in seeds:
        env.reset(seed=seed)
        start = time.perf_counter()
        hold = None
        for _ in range(steps):
            capture_rgb(env, camera)
            qpos = robot_qpos(env)
            if hold is None:  # hold the initial joint positions, gripper open
                hold = np.concatenate([qpos[:7], [1.0]]).astype(np.float32)
            env.step(hold)
        total += time.perf_counter() - start
    return total / (len(seeds) * steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)

    import torch

    from harness.adapter import resolve_config
    from harness.evaluate import Observer, run_rollout
    from harness.protocol import Protocol
    from harness.registry import get_method
    from harness.sim import make_env
    from harness.runs import load_trained, run_normalizers
    from harness.train import train

    torch.set_num_threads(1)
    seeds = list(range(20241201, 20241201 + args.rollouts))
    with tempfile.TemporaryDirectory(prefix="eval-overhead-") as tmp:
        dataset = small_dataset("PushCube", 2, args.size, Path(tmp))
        cls = get_method("dummy").load()
        train(cls, resolve_config(cls, "smoke"), dataset, Path(tmp) / "run", device="cpu", progress=False)
        adapter, run_config = load_trained(Path(tmp) / "run")
        norms = run_normalizers(run_config)
        act_norm, qpos_norm = norms.actions, norms.qpos
        env = make_env("PushCube-v1", "pd_joint_pos", "render_camera", (args.size, args.size),
                       max_episode_steps=args.steps)
        env.reset(seed=0)
        from harness.sim import capture_rgb

        capture_rgb(env, "render_camera")  # first render compiles shaders: keep it out of both
        raw_per_step = raw_rollouts(env, seeds, args.steps, "render_camera")
        observe = Observer(env, "render_camera", qpos_norm, "push", "cpu")
        harness_time, harness_steps = 0.0, 0
        for seed in seeds:
            start = time.perf_counter()
            out = run_rollout(env, adapter, observe, act_norm, args.steps, 0, seed)
            harness_time += time.perf_counter() - start
            harness_steps += out["episode_len"]
        env.close()
        # the whole evaluate() path, worker process and model loading included, for context
        from harness.evaluate import evaluate

        start = time.perf_counter()
        evaluate(Path(tmp) / "run", Protocol(num_init_states=args.rollouts, policy_seeds=(0,),
                                             max_episode_steps=args.steps, workers=1),
                 Path(tmp) / "rows.csv", progress=False)
        full_seconds = time.perf_counter() - start
    harness_per_step = harness_time / harness_steps
    overhead = harness_per_step / raw_per_step - 1
    md = (f"# Evaluation overhead (PushCube, {args.size}x{args.size}, {args.rollouts} rollouts x "
          f"{args.steps} steps, 1 thread)\n\n"
          f"| loop | ms per step |\n|---|---|\n| raw env: render + qpos + step | {1000 * raw_per_step:.1f} |\n"
          f"| harness rollout, dummy policy | {1000 * harness_per_step:.1f} |\n\n"
          f"Overhead: {100 * overhead:+.1f}% (target <= 10%). Whole `evaluate()` incl. worker start, "
          f"model load and env creation: {full_seconds:.1f} s for {args.rollouts} rollouts.")
    write_result("eval_overhead", {"command": "benchmarks/eval_overhead.py " + " ".join(argv or sys.argv[1:]),
                                   "raw_seconds_per_step": raw_per_step,
                                   "harness_seconds_per_step": harness_per_step,
                                   "overhead_fraction": overhead, "evaluate_total_seconds": full_seconds,
                                   "rollouts": args.rollouts, "steps": args.steps, "image_size": args.size}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
