"""``python -m harness``: every workflow step as a command of its own.

The Snakemake rules call these commands, so each step also runs without Snakemake.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from harness.config import DEFAULT_SCALE, ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default=DEFAULT_SCALE,
                   help=f"config scale: workflows/config/<scale>.yaml (default: {DEFAULT_SCALE})")
    p.add_argument("--config-file", default=None,
                   help="a config file to use instead of the scale's (validated the same way)")


def _config(args):
    return load_config(args.scale, args.config_file)


def cmd_tasks(args) -> int:
    from harness.tasks import TASKS

    for spec in TASKS.values():
        sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in spec.image_size.items())
        print(f"{spec.name:10s} {spec.env_id:14s} control={spec.control_mode} camera={spec.camera} "
              f"cap={spec.max_episode_steps} demo seeds=[{spec.demo_seed_start}, "
              f"{spec.demo_seed_limit}) images: {sizes}\n{'':10s} \"{spec.instruction}\"")
    return 0


def cmd_config(args) -> int:
    cfg = _config(args)
    resolved = dict(cfg.data, config_hash=cfg.config_hash(), source=cfg.source,
                    resolved_tasks={n: {"image_size": list(t.image_size), "camera": t.camera,
                                        "control_mode": t.control_mode,
                                        "max_episode_steps": t.max_episode_steps}
                                    for n in cfg.tasks for t in [cfg.task(n)]})
    print(json.dumps(resolved, indent=2))
    return 0


def cmd_plan_demos(args) -> int:
    from harness.demos import plan_demos

    cfg = _config(args)
    demos = cfg.demos
    plan_demos(cfg.task(args.task), args.out_dir, num_demos=demos["num_demos"],
               seed_start=demos["seed_start"], max_failed_seeds=demos["max_failed_seeds"],
               progress=not args.no_progress)
    return 0


def cmd_render_dataset(args) -> int:
    from harness.render import render_dataset

    cfg = _config(args)
    demos = cfg.demos
    plan_report = Path(args.trajectories).with_name("plan_report.json")
    failed = json.loads(plan_report.read_text())["failed_seeds"] if plan_report.exists() else {}
    render_dataset(cfg.task(args.task), args.trajectories, args.out, codec=demos["image_codec"],
                   quality=demos["jpeg_quality"], workers=args.workers or demos["render_workers"],
                   extra_meta={"scale": cfg.scale, "config_hash": cfg.config_hash(),
                               "failed_seeds": failed},
                   progress=not args.no_progress)
    return 0


def cmd_verify_render(args) -> int:
    from harness.render import verify_against_replay

    cfg = _config(args)
    count = args.episodes if args.episodes is not None else cfg.demos["verify_episodes"]
    report = {"skipped": True} if count == 0 else verify_against_replay(
        cfg.task(args.task), args.trajectories, count=count)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_dataset_info(args) -> int:
    from harness.dataset import DemoDataset

    ds = DemoDataset(args.path)
    if args.verify:
        ds.verify()
    meta = dict(ds.meta)
    meta["seeds"] = f"{len(meta['seeds'])} seeds, {min(meta['seeds'])}..{max(meta['seeds'])}"
    print(json.dumps(meta, indent=2))
    print(f"episodes={ds.num_episodes} steps={int(ds.num_steps.sum())} "
          f"actions{tuple(ds.actions.shape)} qpos{tuple(ds.qpos.shape)}"
          + (" checksums OK" if args.verify else ""))
    return 0


def cmd_check_device(args) -> int:
    from harness.compute import device_report

    ok, message = device_report(_config(args))
    print(message)
    return 0 if ok or args.allow_cpu else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="PAR reproducibility harness: each workflow step as a command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tasks", help="list the registered tasks and their protocol defaults")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("config", help="validate a scale's config and print it resolved")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("plan-demos", help="plan demonstrations with ManiSkill's motion planner")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--out-dir", required=True, help="folder for trajectories.h5/.json and plan_report.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plan_demos)

    p = sub.add_parser("render-dataset", help="render planned trajectories into a training dataset")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--trajectories", required=True, help="trajectories.h5 written by plan-demos")
    p.add_argument("--out", required=True, help="dataset file to write (.h5)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: config)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_render_dataset)

    p = sub.add_parser("verify-render",
                       help="compare rendering-from-states with ManiSkill's replay_trajectory")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--trajectories", required=True)
    p.add_argument("--episodes", type=int, default=None, help="default: demos.verify_episodes")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.set_defaults(func=cmd_verify_render)

    p = sub.add_parser("dataset-info", help="print a dataset's metadata (and verify checksums)")
    p.add_argument("path")
    p.add_argument("--verify", action="store_true", help="re-hash every array")
    p.set_defaults(func=cmd_dataset_info)

    p = sub.add_parser("check-device",
                       help="say whether this machine fits the scale (GPU) and the projected time")
    _add_config_args(p)
    p.add_argument("--allow-cpu", action="store_true", help="exit 0 even when a GPU is wanted but absent")
    p.set_defaults(func=cmd_check_device)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # readable one-line cause for known harness errors
        from harness.dataset import DatasetError
        from harness.demos import PlanningError
        from harness.tasks import UnknownTaskError

        if isinstance(exc, (DatasetError, PlanningError, UnknownTaskError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
