"""What a trained BC-T run predicts, per action dimension, on its own training windows.

Teacher-forced in evaluation mode (centre crop, no dropout) on every ``--stride``-th
training window: per joint, the MSE against the demo's action, the spread of targets and
predictions, and how many outputs sit in tanh's flat tail (|tanh| > 0.999, where its gradient
is below 0.002). A joint whose head saturated has a near-constant prediction and no gradient
left to recover: the tanh + MSE head's dead unit.

    .venv/bin/python benchmarks/bc_t_heads.py --run outputs/reduced/runs/bc_t/PushCube

Writes results/bc_t_heads[_<name>].json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import run_arguments, write_result  # noqa: E402
from harness.adapter import DataInfo  # noqa: E402
from harness.dataset import DemoDataset  # noqa: E402
from harness.runs import load_trained  # noqa: E402
from harness.train import BatchPreparer, collate  # noqa: E402
from harness.windows import WindowDataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    run_arguments(parser, "bc_t")
    parser.add_argument("--stride", type=int, default=50, help="every n-th training window")
    args = parser.parse_args()

    model, run_config = load_trained(args.run, weights=args.weights)
    if run_config["method"] != "bc_t" or model.config.head != "deterministic":
        sys.exit(f"error: {args.run} is not a bc_t run with the deterministic head")
    dataset = DemoDataset(run_config["dataset"])
    windows = WindowDataset(dataset, type(model).window_spec(model.config))
    prepare = BatchPreparer(DataInfo.from_dict(run_config["data_info"]), run_config["normalization"],
                            torch.device("cpu"))
    indices = list(range(0, len(windows), args.stride))
    pre, target = [], []
    with torch.no_grad():
        for start in range(0, len(indices), 32):
            batch = prepare(collate([windows[i] for i in indices[start:start + 32]]))
            hidden = model._last_hidden(model._features(batch["frames"], batch["qpos"]))
            pre.append(model.head.action(hidden))
            target.append(batch["actions"][:, 0, 0])
    pre, target = torch.cat(pre), torch.cat(target)
    pred = torch.tanh(pre)
    per_joint = []
    for j in range(pred.shape[1]):
        per_joint.append({
            "joint": j, "mse": float(((pred[:, j] - target[:, j]) ** 2).mean()),
            "target_std": float(target[:, j].std()), "prediction_std": float(pred[:, j].std()),
            "preactivation_mean": float(pre[:, j].mean()),
            "saturated_fraction": float((pred[:, j].abs() > 0.999).float().mean())})
    total = float(((pred - target) ** 2).mean())
    rows = "\n".join(f"| {r['joint']} | {r['mse']:.4f} | {r['target_std']:.3f} | {r['prediction_std']:.3f} | "
                     f"{r['preactivation_mean']:+.2f} | {100 * r['saturated_fraction']:.0f}% |" for r in per_joint)
    markdown = f"""# BC-T's predictions per action dimension: {args.run}, {args.weights}

{len(indices)} training windows (every {args.stride}th), teacher-forced in evaluation mode, actions
normalised to [-1, 1] as the model sees them. Mean MSE over all dimensions: {total:.4f}.

| dim | MSE | target std | prediction std | mean pre-tanh | saturated (abs(tanh) > 0.999) |
|---|---|---|---|---|---|
{rows}
"""
    write_result("bc_t_heads" + (f"_{args.name}" if args.name else ""),
                 {"run": args.run, "weights": args.weights, "windows": len(indices), "mse": total, "per_joint": per_joint}, markdown)


if __name__ == "__main__":
    main()
