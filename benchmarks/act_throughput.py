"""ACT training throughput: our adapter + training loop vs LeRobot's own training step
(``lerobot.scripts.train.update_policy``) on the same data, model and config.

    .venv/bin/python benchmarks/act_throughput.py [--steps 30] [--warmup 5] [--size 128]

Both loops draw the same batches from the same DataLoader (frame decoding included) and
train the same LeRobot ``ACTPolicy`` at the reduced-scale ACT config; what differs is what
wraps the policy: our adapter, normalisation, logging and checkpointing vs LeRobot's step.
Target: ours >= 0.95x LeRobot's. Writes results/act_throughput.*.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import small_dataset, write_result  # noqa: E402


def lerobot_steps_per_second(cls, cfg, dataset_path, steps, warmup, seed) -> float:
    import torch
    from lerobot.scripts.train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker

    from harness.adapter import DataInfo
    from harness.dataset import DemoDataset
    from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY
    from harness.train import BatchPreparer, StepBatchSampler, collate, seed_everything
    from harness.windows import WindowDataset

    ds = DemoDataset(dataset_path)
    data = DataInfo(int(ds.actions.shape[1]), int(ds.qpos.shape[1]), tuple(ds.meta["image_size"]),
                    ds.instruction, ds.stats)
    seed_everything(seed)
    policy = cls(cfg, data).policy
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = WindowDataset(ds, cls.window_spec(cfg))
    loader = torch.utils.data.DataLoader(
        windows, batch_sampler=StepBatchSampler(len(windows), cfg.batch_size, seed, 0, steps + warmup),
        num_workers=cfg.num_workers, collate_fn=collate)
    prepare = BatchPreparer(data, cls.normalization, torch.device("cpu"))
    meters = {"loss": AverageMeter("loss"), "grad_norm": AverageMeter("grdn"), "lr": AverageMeter("lr"),
              "update_s": AverageMeter("updt_s")}
    tracker = MetricsTracker(cfg.batch_size, len(windows), len(ds.seeds), meters, initial_step=0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    start = None
    for i, raw in enumerate(loader):
        if i == warmup:
            start = time.perf_counter()
        batch = prepare(raw)
        lr_batch = {IMAGE_KEY: batch["frames"][:, -1], STATE_KEY: batch["qpos"][:, -1],
                    ACTION_KEY: batch["actions"][:, 0], "action_is_pad": batch["action_is_pad"][:, 0]}
        update_policy(tracker, policy, lr_batch, optimizer, cfg.grad_clip_norm, grad_scaler=scaler)
    return steps / (time.perf_counter() - start)


def ours_steps_per_second(cls, cfg, dataset_path, steps, warmup, seed, run_dir) -> float:
    import csv

    from harness.train import train

    train(cls, cfg.replace(steps=steps + warmup, log_every=1, checkpoint_every=10**9), dataset_path,
          run_dir, seed=seed, device="cpu", progress=False)
    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    seconds = sum(float(r["seconds"]) for r in rows[warmup:])
    return steps / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)

    from harness.adapter import resolve_config
    from harness.registry import get_method

    cls = get_method("act").load()
    cfg = resolve_config(cls, "reduced")
    with tempfile.TemporaryDirectory(prefix="act-throughput-") as tmp:
        dataset = small_dataset("PushCube", 4, args.size, Path(tmp))
        theirs = lerobot_steps_per_second(cls, cfg, dataset, args.steps, args.warmup, seed=0)
        ours = ours_steps_per_second(cls, cfg, dataset, args.steps, args.warmup, 0, Path(tmp) / "run")
    ratio = ours / theirs
    md = (f"# ACT training throughput (reduced config: batch {cfg.batch_size}, chunk {cfg.chunk_size}, "
          f"dim {cfg.dim_model}; {args.size}x{args.size}; CPU)\n\n"
          f"| loop | steps/s |\n|---|---|\n| LeRobot `update_policy` | {theirs:.3f} |\n"
          f"| harness `train()` + ACT adapter | {ours:.3f} |\n\n"
          f"Ratio ours / LeRobot: {ratio:.3f} (target >= 0.95); {args.steps} timed steps after {args.warmup} warm-up steps.")
    write_result("act_throughput", {"command": "benchmarks/act_throughput.py " + " ".join(argv or sys.argv[1:]),
                                    "lerobot_steps_per_s": theirs, "ours_steps_per_s": ours, "ratio": ratio,
                                    "config": cfg.to_dict(), "steps": args.steps, "warmup": args.warmup}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
