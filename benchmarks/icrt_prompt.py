"""Does a trained ICRT use its prompt? Teacher-forced chunk error on demos, with and without one.

For each of ``--targets`` demos of the run's training dataset, the model reads a sequence as
training and rollouts build it (evaluation crop, no augmentation) and predicts a chunk at every
step of the target demo. Conditions:

- ``prompted``: another demo (the next one in the dataset) first, as a rollout's prompt;
- ``no prompt``: the target demo alone, from position 0;
- ``same demo``: the target demo itself as its prompt, so copying would be exact.

The L1 (normalised units, all 16 x A values) on the target's steps says how much the prompt
helps: if ``prompted`` is no better than ``no prompt``, the model acts from the current
episode alone; if ``same demo`` is far better, it learned to copy. The target demos are
training demos, so these are training errors, not a generalisation measure.

    .venv/bin/python benchmarks/icrt_prompt.py --run outputs/reduced/runs/icrt/PushCube

Writes results/icrt_prompt[_<name>].json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import run_arguments, write_result  # noqa: E402
from harness.evaluate import Prompter  # noqa: E402
from harness.runs import load_trained  # noqa: E402


def chunk_targets(actions: torch.Tensor, length: int) -> torch.Tensor:
    """(T, L, A): the L actions from each step on, the last repeated past the end (as training)."""
    T = actions.shape[0]
    index = torch.clamp(torch.arange(T)[:, None] + torch.arange(length)[None], max=T - 1)
    return actions[index]


def target_error(model, prompt: dict | None, target: dict) -> float:
    parts = ([prompt] if prompt is not None else []) + [target]
    frames = torch.cat([p["frames"][:-1] for p in parts])[None]  # the last observation has no action
    qpos = torch.cat([p["qpos"][:-1] for p in parts])[None]
    actions = torch.cat([p["actions"] for p in parts])[None]
    with torch.no_grad():
        pred = model._predict(frames, qpos, actions, model._eval_thetas(frames.shape[1], "cpu"))[0]
    T = target["actions"].shape[0]
    truth = chunk_targets(target["actions"], model.config.num_pred_steps)
    return float((pred[-T:] - truth).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run_arguments(parser, "icrt")
    parser.add_argument("--targets", type=int, default=20, help="demos to score (the first n)")
    args = parser.parse_args()

    torch.set_num_threads(2)
    model, run_config = load_trained(args.run, weights=args.weights)
    if run_config["method"] != "icrt":
        sys.exit(f"error: {args.run} is not an icrt run")
    model.eval()
    prompter = Prompter(run_config, k=1)
    n = min(args.targets, prompter.dataset.num_episodes)
    rows = []
    for e in range(n):
        target, other = prompter.demo(e), prompter.demo((e + 1) % prompter.dataset.num_episodes)
        rows.append({"episode": e, "prompted": target_error(model, other, target),
                     "no prompt": target_error(model, None, target),
                     "same demo": target_error(model, target, target)})
    conditions = ("prompted", "no prompt", "same demo")
    mean = {c: float(np.mean([r[c] for r in rows])) for c in conditions}
    result = {"run": args.run, "weights": args.weights, "targets": n, "mean_l1": mean, "per_demo": rows,
              "train_git_sha": run_config.get("git_sha", "")}
    lines = [f"# ICRT: chunk L1 on {n} training demos, with and without a prompt", "",
             f"Run `{args.run}`, `{args.weights}` (trained at {run_config.get('git_sha', '?')[:7]}); teacher-forced, "
             "evaluation crop; L1 in normalised units over each target step's 16-action chunk.", "",
             "| condition | mean L1 |", "|---|---|"]
    lines += [f"| {c} | {mean[c]:.4f} |" for c in conditions]
    path = write_result("icrt_prompt" + (f"_{args.name}" if args.name else ""), result, "\n".join(lines))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
