"""What a one-step action predictor must beat on its own training windows: the mean squared
error, in the min-max units BC-T trains in (``harness.windows.Normalizer``, ``min_max`` over
the dataset's action statistics), of two predictors that read no image:

- **hold last**: the previous step's action (every step of an episode but its first);
- **copy qpos**: the current joint positions as the next joint target (the arm's joints; the
  gripper's target has no joint position to copy and is left out).

Written for BC-T's controlled runs (results/measured/reduced/bc_t_controlled/), whose training
loss is compared with these numbers.

    python benchmarks/action_baselines.py --dataset outputs/reduced/datasets/PushCube.h5 --name action_baselines_reduced_PushCube
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import write_result  # noqa: E402

from harness.dataset import DemoDataset  # noqa: E402
from harness.grid import dataset_hash  # noqa: E402
from harness.windows import Normalizer  # noqa: E402


def baselines(dataset: DemoDataset) -> dict:
    """The two predictors' MSE (all dimensions / the arm's) over the dataset's episodes."""
    norm = Normalizer(dataset.stats["actions"], "min_max")
    arm = dataset.actions.shape[1] - 1  # the last action dimension is the gripper's
    hold, copy = [], []
    for e in range(dataset.num_episodes):
        a0, o0, steps = dataset.act_start[e], dataset.obs_start[e], dataset.num_steps[e]
        actions = norm.normalize(dataset.actions[a0:a0 + steps].astype(np.float64))
        joints = dataset.qpos[o0:o0 + steps, :arm].astype(np.float64)
        hold.append(actions[1:] - actions[:-1])
        copy.append(actions[:, :arm] - (joints - norm.center[:arm]) / norm.scale[:arm])
    hold, copy = np.concatenate(hold), np.concatenate(copy)
    return {"hold_last_mse": float((hold ** 2).mean()), "hold_last_mse_per_dim": (hold ** 2).mean(0).tolist(),
            "copy_qpos_mse_arm": float((copy ** 2).mean()), "windows": int(len(copy))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="a harness dataset (.h5)")
    parser.add_argument("--name", required=True, help="the result's file name in benchmarks/results/")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results/")
    args = parser.parse_args(argv)
    dataset = DemoDataset(args.dataset)
    result = {"dataset": args.dataset, "dataset_hash": dataset_hash(args.dataset), **baselines(dataset)}
    dataset.close()
    text = (f"Action baselines on {args.dataset} (hash {result['dataset_hash']}, {result['windows']} windows), "
            "MSE in min-max units:\n\n| predictor | MSE |\n|---|---|\n"
            f"| hold the last action (all dims) | {result['hold_last_mse']:.5f} |\n"
            f"| copy the current joint positions (arm dims) | {result['copy_qpos_mse_arm']:.5f} |\n")
    kwargs = {"folder": Path(args.out_dir)} if args.out_dir else {}
    write_result(args.name, result, text, **kwargs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
