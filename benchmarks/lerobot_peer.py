"""The peer check (issue 31): ACT trained by LeRobot's own ``lerobot-train`` on the task's dataset
exported as a LeRobot dataset, at the harness's ``act`` preset (steps, batch, lr, model sizes),
judged through ``lerobot_pretrained`` under the harness's protocol and compared with the
harness's own ``act`` rows: Fisher's exact test on the two success counts (two-sided) and the
paired exact McNemar test (same initial states and seeds).

    python benchmarks/lerobot_peer.py --scale reduced --task PushCube --work outputs/peer \\
        --ours results/measured/reduced/grid/PushCube/act/rollouts.csv

Each step is skipped when its output exists, so an interrupted check continues where it
stopped (``lerobot-train`` resumes from its last checkpoint):

1. ``python -m harness export-lerobot`` of ``outputs/<scale>/datasets/<Task>.h5``;
2. ``lerobot-train --policy.type=act`` with the preset's values (printed in the result);
3. ``python -m harness train`` / ``evaluate`` for ``lerobot_pretrained`` on the last checkpoint;
4. the comparison, into ``benchmarks/results/lerobot_peer_<scale>_<Task>.{json,md}``.

What differs between the two trainings besides the trainer: LeRobot normalises ACT's images
with the dataset's own mean/std (the harness's ``act``: ImageNet's), and LeRobot's ACT
normalises a dimension whose std is 0 by 1e-8 (the harness leaves it unscaled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402,F401
from common import write_result  # noqa: E402

from harness.adapter import resolve_config  # noqa: E402
from harness.paths import REPO_ROOT  # noqa: E402


def lerobot_train_args(scale: str, steps: int | None) -> dict:
    """lerobot-train's ACT flags equal to the harness's ``act`` preset at ``scale``."""
    from methods.act import ACTAdapter

    cfg = resolve_config(ACTAdapter, scale)
    policy = {name: getattr(cfg, name) for name in (
        "chunk_size", "n_action_steps", "dim_model", "n_heads", "dim_feedforward", "n_encoder_layers",
        "n_decoder_layers", "n_vae_encoder_layers", "latent_dim", "use_vae", "dropout", "kl_weight",
        "vision_backbone", "temporal_ensemble_coeff")}
    policy.update(optimizer_lr=cfg.lr, optimizer_lr_backbone=cfg.lr, optimizer_weight_decay=cfg.weight_decay)
    if cfg.backbone_weights_path is not None:
        raise SystemExit(f"the {scale} act preset loads ImageNet weights from {cfg.backbone_weights_path}; "
                         "lerobot-train would download them: compare at a scale that trains from scratch")
    return {"policy": policy, "steps": steps or cfg.steps, "batch_size": cfg.batch_size,
            "grad_clip_norm": cfg.grad_clip_norm}


def _flag(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def run(cmd: list[str], log: Path, env: dict) -> None:
    print("$", " ".join(cmd), f"> {log}", flush=True)
    with log.open("a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="reduced")
    p.add_argument("--task", default="PushCube")
    p.add_argument("--work", default="outputs/peer", help="export, LeRobot run, harness run and rollouts")
    p.add_argument("--ours", required=True, help="the harness act rollouts to compare with (same protocol)")
    p.add_argument("--steps", type=int, default=None, help="default: the act preset's (a smaller number only to try)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import yaml

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf_datasets"),
               OMP_NUM_THREADS=str(args.threads))
    harness_cmd = [sys.executable, "-m", "harness"]
    dataset = Path(f"outputs/{args.scale}/datasets/{args.task}.h5")
    exported = work / "lerobot" / args.task
    if not (exported / "meta" / "info.json").exists():
        shutil.rmtree(exported, ignore_errors=True)
        run(harness_cmd + ["export-lerobot", "--dataset", str(dataset), "--out", str(exported), "--no-progress"],
            work / "export.log", env)

    preset = lerobot_train_args(args.scale, args.steps)
    train_dir = work / "lerobot_train"
    checkpoint = train_dir / "checkpoints" / "last" / "pretrained_model"
    done = checkpoint.exists() and json.loads((checkpoint / "train_config.json").read_text())["steps"] == preset["steps"] \
        and (train_dir / "checkpoints" / f"{preset['steps']:06d}").exists()
    started = time.time()
    if not done:
        train_bin = str(Path(sys.executable).parent / "lerobot-train")
        if checkpoint.exists():  # interrupted: LeRobot resumes from its last checkpoint
            cmd = [train_bin, f"--config_path={checkpoint / 'train_config.json'}", "--resume=true"]
        else:
            cmd = [train_bin, f"--dataset.repo_id=local/{args.task}", f"--dataset.root={exported}",
                   "--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
                   "--policy.pretrained_backbone_weights=null",
                   *(f"--policy.{k}={_flag(v)}" for k, v in preset["policy"].items()),
                   f"--steps={preset['steps']}", f"--batch_size={preset['batch_size']}", "--num_workers=1",
                   "--seed=0", f"--save_freq={max(1, min(1000, preset['steps']))}", "--log_freq=100",
                   "--wandb.enable=false", f"--output_dir={train_dir}"]
        run(cmd, work / "lerobot_train.log", env)
    train_seconds = round(time.time() - started, 1)

    config = yaml.safe_load((REPO_ROOT / "workflows" / "config" / f"{args.scale}.yaml").read_text())
    config["methods"] = ["lerobot_pretrained"]
    config["method_overrides"] = {"lerobot_pretrained": {"path": str(checkpoint.resolve())}}
    config_file = work / "peer.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir, rollouts = work / "run", work / f"rollouts_lerobot_act_{args.task}.csv"
    if not rollouts.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run(harness_cmd + ["train", "--config-file", str(config_file), "--method", "lerobot_pretrained",
                           "--task", args.task, "--dataset", str(dataset), "--out", str(run_dir), "--no-progress"],
            work / "harness_train.log", env)
        run(harness_cmd + ["evaluate", "--config-file", str(config_file), "--run", str(run_dir), "--task", args.task,
                           "--out", str(rollouts), "--workers", str(args.threads), "--require-same-code",
                           "--no-progress"], work / "evaluate.log", env)

    from scipy.stats import fisher_exact

    from harness.reproduction import paired_comparison
    from harness.rollouts import read_rollouts

    theirs, ours = read_rollouts(rollouts), read_rollouts(args.ours)
    k_theirs, k_ours = int(theirs["success"].eq("1").sum()), int(ours["success"].eq("1").sum())
    n_theirs, n_ours = len(theirs), len(ours)
    fisher_p = float(fisher_exact([[k_theirs, n_theirs - k_theirs], [k_ours, n_ours - k_ours]])[1])
    paired = paired_comparison(theirs, ours)
    result = {"scale": args.scale, "task": args.task, "lerobot_train": preset,
              "lerobot_train_seconds_this_call": train_seconds,
              "lerobot_act": {"k": k_theirs, "n": n_theirs, "rollouts": str(rollouts)},
              "harness_act": {"k": k_ours, "n": n_ours, "rollouts": args.ours,
                              "method_id": sorted(set(ours.get("method_id", [])))},
              "fisher_two_sided_p": fisher_p, "paired": paired,
              "verdict": "no difference detected (p >= 0.05)" if fisher_p >= 0.05 else "the trainers differ (p < 0.05)"}
    md = [f"# Peer check: ACT by lerobot-train vs the harness's act ({args.task}, {args.scale})", "",
          f"- lerobot-train, judged through `lerobot_pretrained`: {k_theirs}/{n_theirs}",
          f"- the harness's `act`: {k_ours}/{n_ours} ({args.ours})",
          f"- Fisher's exact test, two-sided: p = {fisher_p:.3g}; paired McNemar: {json.dumps(paired)}",
          f"- verdict: {result['verdict']}", "",
          "lerobot-train's ACT flags (the harness act preset): `" + json.dumps(preset) + "`"]
    write_result(f"lerobot_peer_{args.scale}_{args.task}", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
