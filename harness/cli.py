"""``python -m harness``: every workflow step as a command of its own.

The Snakemake rules call these commands, so each step also runs without Snakemake.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from harness.config import DEFAULT_SCALE, ConfigError, load_config
from harness.errors import HarnessError
from harness.tasks import EVAL_INIT_STATE_SEED_START

TABLE_NAMES = ("table2", "table3")
"""The tables compiled from rollout rows (results/paper_reference.csv has their paper numbers)."""


def _count(least: int):
    """An argparse type: an integer of at least ``least`` (argparse names the argument when not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def _range(option: str, pair, stop_limit: int | None = None, what: str = "") -> None:
    """Refuse an empty or inverted [START, STOP) range, or one past ``stop_limit``, naming the
    option, before any work."""
    a, b = pair
    if not 0 <= a < b or (stop_limit is not None and b > stop_limit):
        bound = f" <= {stop_limit}" if stop_limit is not None else ""
        raise ConfigError(f"{option} {a} {b}: the range [START, STOP) must hold something, 0 <= START < STOP{bound}"
                          f"{what}")


def _add_config_args(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """``grid``: a results-grid command, whose scale defaults to the one its grid.json records."""
    p.add_argument("--scale", default=None if grid else DEFAULT_SCALE,
                   help="config scale: workflows/config/<scale>.yaml (default: "
                        + ("the grid's, from its grid.json; " + DEFAULT_SCALE + " for a new grid)" if grid
                           else f"{DEFAULT_SCALE})"))
    p.add_argument("--config-file", default=None,
                   help="a config file to use instead of the scale's (validated the same way)")


def _set_threads(args) -> None:
    """torch's CPU threads from ``--threads``, when given."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _config(args, check_methods: bool = False):
    """The step's config; its ``method_overrides:`` are checked, the ``methods:`` list (which
    no single step uses) only by the workflow and ``config``."""
    return load_config(args.scale, args.config_file, check_methods=check_methods)


def _grid_config(args, folder):
    """A grid command's config: ``--scale`` or ``--config-file`` where given, else the scale the
    grid folder's grid.json records (so ``grid-status FOLDER`` needs no flag)."""
    if args.scale is None and args.config_file is None:
        from harness.grid import read_grid

        args.scale = (read_grid(folder) or {}).get("scale") or DEFAULT_SCALE
    return _config(args)


def cmd_tasks(args) -> int:
    from harness.tasks import TASKS

    for spec in TASKS.values():
        sizes = ", ".join(f"{k} {h}x{w}" for k, (h, w) in spec.image_size.items())
        print(f"{spec.name:10s} {spec.env_id:14s} control={spec.control_mode} camera={spec.camera} "
              f"cap={spec.max_episode_steps} demo seeds=[{spec.demo_seed_start}, "
              f"{spec.demo_seed_limit}) images: {sizes}\n{'':10s} \"{spec.instruction}\"")
    return 0


def cmd_config(args) -> int:
    cfg = _config(args, check_methods=True)
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
    demos, task = cfg.demos, cfg.task(args.task)
    if args.seed_range:
        limit = task.spec.seed_limit("train")
        _range("--seed-range", args.seed_range, limit,
               f" ({task.name}'s demo seeds stay below {limit}, where its validation seeds start)")
    if args.split == "validation":
        if args.seed_range:
            raise ConfigError("plan-demos --split validation plans from the task's val_seed_start; "
                           "drop --seed-range")
        if not demos["num_val_demos"]:
            raise ConfigError(f"the {cfg.scale} config asks for no validation demos "
                           "(demos.num_val_demos: 0); set it to plan some")
        num_demos, (seed_start, seed_stop) = demos["num_val_demos"], (task.spec.val_seed_start, None)
    else:
        num_demos, (seed_start, seed_stop) = demos["num_demos"], args.seed_range or (demos["seed_start"], None)
    plan_demos(task, args.out_dir, num_demos=num_demos,
               seed_start=seed_start, max_failed_seeds=demos["max_failed_seeds"],
               progress=not args.no_progress, seed_stop=seed_stop, split=args.split)
    return 0


def cmd_merge_plans(args) -> int:
    from harness.shards import merge_plans

    demos = _config(args).demos
    report = merge_plans(args.shards, args.out_dir, demos["num_demos"], demos["max_failed_seeds"], args.task)
    print(json.dumps({k: report[k] for k in ("num_demos", "failed_seeds", "seconds", "merge_seconds")}, indent=2))
    return 0


def cmd_merge_datasets(args) -> int:
    from harness.shards import merge_datasets

    print(merge_datasets(args.parts, args.out, plan_report=args.plan_report))
    return 0


def cmd_gather_rollouts(args) -> int:
    from harness.shards import gather_rollouts

    print(gather_rollouts(args.parts, args.out, _config(args).protocol(args.task), task=args.task))
    return 0


def cmd_render_dataset(args) -> int:
    from harness.render import render_dataset

    cfg = _config(args)
    demos = cfg.demos
    if args.episodes:
        _range("--episodes", args.episodes, what=" (the plan's episodes by index)")
    plan_report = Path(args.trajectories).with_name("plan_report.json")
    plan = json.loads(plan_report.read_text()) if plan_report.exists() else {}
    # a validation plan's dataset says so (harness.probe reads only such datasets)
    split = {"split": plan["split"]} if "split" in plan else {}
    render_dataset(cfg.task(args.task), args.trajectories, args.out, codec=demos["image_codec"],
                   quality=demos["jpeg_quality"], workers=args.workers or demos["render_workers"],
                   extra_meta={"scale": cfg.scale, "config_hash": cfg.config_hash(),
                               "failed_seeds": plan.get("failed_seeds", {}), **split},
                   progress=not args.no_progress, episode_range=args.episodes)
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


def cmd_export_lerobot(args) -> int:
    from harness.lerobot_export import export

    out = export(args.dataset, args.out, repo_id=args.repo_id, progress=not args.no_progress)
    print(f"wrote {out} (LeRobot v2.1; load it with LeRobotDataset(repo_id, root={str(out)!r}))")
    return 0


def cmd_export_pretrained(args) -> int:
    from harness.lerobot_export import export_pretrained

    out = export_pretrained(args.run, args.out)
    print(f"wrote {out} (LeRobot pretrained model; PolicyClass.from_pretrained({str(out)!r}))")
    return 0


def cmd_methods(args) -> int:
    from harness.registry import list_methods

    for entry in list_methods():
        kind = f"variant of {entry.method}" if entry.variant else "method"
        print(f"{entry.name:14s} {kind:20s} {entry.target:32s} {entry.source}")
    return 0


def cmd_features(args) -> int:
    from harness.features import write_features
    from harness.runs import pick_device

    cfg = _config(args)
    entry, adapter_cls, method_cfg = cfg.method(args.method)
    spec = adapter_cls.frame_features(method_cfg)
    if spec is None:
        raise ConfigError(f"{entry.name} at the {cfg.scale} scale trains on frames, not cached features")
    _set_threads(args)
    write_features(spec, args.dataset, args.out, device=str(pick_device(cfg.data["training"]["device"])),
                   progress=not args.no_progress)
    return 0


def cmd_train(args) -> int:
    from harness.compute import device_report
    from harness.train import train

    cfg = _config(args)
    fits, message = device_report(cfg)
    if not fits and not args.allow_cpu and cfg.data["training"]["device"] != "cpu":
        print(f"error: {message}\nPass --allow-cpu to train on the CPU anyway.", file=sys.stderr)
        return 3
    _set_threads(args)
    entry, adapter_cls, method_cfg = cfg.method(args.method)
    task = cfg.task(args.task)
    from harness.dataset import DemoDataset

    # refuse a dataset made with other settings than this config's, before any training
    dataset = DemoDataset(args.dataset, expect={"control_mode": task.control_mode, "camera": task.camera,
                                                "image_size": list(task.image_size), "task": task.name})
    dataset.close()
    if dataset.meta.get("split") == "validation":  # the held-out demos must stay held out
        raise ConfigError(f"--dataset {args.dataset} holds held-out validation demos (split: validation), never "
                          f"trained on: train on the task's dataset (outputs/<scale>/datasets/{task.name}.h5) and "
                          "pass this one as --val-dataset")
    train(adapter_cls, method_cfg, args.dataset, args.out, seed=cfg.data["training"]["seed"],
          device=cfg.data["training"]["device"], progress=not args.no_progress, features=args.features,
          val_dataset=args.val_dataset,
          run_meta={"variant": entry.variant, "name": entry.name, "scale": cfg.scale,
                    "config_hash": cfg.config_hash(), "task": task.name})
    return 0


def cmd_probe(args) -> int:
    from harness.probe import format_report, probe_run, write_result

    result = probe_run(args.run, args.val_dataset, checkpoint=args.checkpoint, seeds=args.seeds,
                       device=args.device)
    if args.out:
        write_result(result, args.out)
    print(format_report(result))
    return 0


def cmd_evaluate(args) -> int:
    from harness.evaluate import evaluate, evaluate_runs

    cfg = _config(args)
    protocol = cfg.protocol(args.task)
    if args.workers:
        protocol = dataclasses.replace(protocol, workers=args.workers)
    kwargs = dict(identity={"config_hash": cfg.config_hash(), "scale": cfg.scale}, progress=not args.no_progress,
                  init_states=args.init_states, task=args.task,
                  require_same_code=args.require_same_code or cfg.data["evaluation"]["require_same_code"])
    if len(args.run) == 1 and len(args.out) == 1:
        evaluate(args.run[0], protocol, args.out[0], **kwargs)
    else:  # several runs of the task in this one process (evaluation.one_job_per_task)
        evaluate_runs(args.run, protocol, args.out, **kwargs)
    return 0


def _check_run_task(args) -> None:
    """A figure of a run is made on the run's own task; ``--task`` must be it."""
    from harness.runs import check_run_task, read_run_config

    check_run_task(args.run, read_run_config(args.run), args.task)


def _rollout_seeds(args) -> tuple[int, int, int]:
    """(policy seed, init-state seed, episode cap) of a figure's rollout, from the protocol."""
    from harness.figures import FigureError

    _check_run_task(args)
    protocol = _config(args).protocol(args.task)
    seeds = protocol.init_state_seeds
    if not 0 <= args.init_index < len(seeds):
        raise FigureError(f"--init-index must be in [0, {len(seeds)}), the protocol's initial states")
    return args.policy_seed, seeds[args.init_index], protocol.max_episode_steps


def cmd_predicted_frames(args) -> int:
    from harness.figures import prediction_figure

    summary = prediction_figure(args.run, *_rollout_seeds(args), args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "versions"}, indent=2))
    return 0


def cmd_attention_map(args) -> int:
    from harness.figures import attention_figure

    summary = attention_figure(args.run, *_rollout_seeds(args), args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "versions"}, indent=2))
    return 0


def cmd_failure_case(args) -> int:
    from harness.figures import failure_figure

    from harness.rollouts import read_rollouts
    from harness.runs import read_run_config

    _check_run_task(args)
    rows = read_rollouts(args.rollouts, ("policy_seed", "init_state_seed", "success"))
    for column, want in (("method", read_run_config(args.run)["method"]), ("task", args.task)):
        if column in rows and set(rows[column]) - {want}:
            raise ConfigError(f"--rollouts {args.rollouts} holds rollouts of {column} {', '.join(sorted(set(rows[column])))}"
                              f", and --run {args.run} is {want}: the figure replays the run's own failure, so pass "
                              "its own rollout file (the workflow's outputs/<scale>/eval/<method>/<task>.csv)")
    summary = failure_figure(args.run, args.rollouts, _config(args).protocol(args.task).max_episode_steps, args.out)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_fig4(args) -> int:
    from harness.figures import fig4_all_tasks

    print(fig4_all_tasks(args.frames, args.out))
    return 0


def _train_logs(specs: list[str]) -> list[tuple[str, str, str]]:
    """``method:task:path`` arguments -> triples."""
    out = []
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"--train-logs {spec!r}: each is METHOD:TASK:PATH (e.g. act:PushCube:"
                              "outputs/smoke/runs/act/PushCube/train_log.csv)")
        out.append(tuple(parts))
    return out


def cmd_plots(args) -> int:
    from harness import plots
    from harness.report import load_rows

    logs = _train_logs(args.train_logs or [])
    rows = load_rows(args.rollouts, required=plots.ROW_COLUMNS)
    out = Path(args.out_dir)
    written = plots.success_plot(rows, args.table, out / f"{args.table}_success", args.methods)
    written += plots.outcome_plot(rows, out / f"{args.table}_outcomes", args.methods)
    written += plots.training_plot(logs, out / f"{args.table}_training")
    print("\n".join(map(str, written)))
    return 0


def cmd_report(args) -> int:
    from harness.reproduction import write_report

    tables, methods = {}, {}
    for option, specs, into in (("--table", args.table, tables), ("--methods", args.methods or [], methods)):
        for spec in specs:
            name, _, values = spec.partition("=")
            values = [v for v in values.split(",") if v]
            if name not in TABLE_NAMES or not values:
                raise ConfigError(f"{option} {spec!r}: each is NAME={'CSV[,CSV...]' if option == '--table' else 'M[,M...]'}"
                                  f" with NAME one of {', '.join(TABLE_NAMES)} (e.g. {option} table2="
                                  f"{'outputs/smoke/eval/act/PushCube.csv' if option == '--table' else 'random,act'})")
            if name in into:
                raise ConfigError(f"{option} {name}= is given twice; list all of its values in one, comma-separated")
            into[name] = values
    df = write_report(tables, args.out_csv, args.out_md, methods, title=args.title)
    print(df[["table", "method", "task", "successes", "rollouts", "paper_success_rate", "verdict",
              "margin_over_chance"]].to_string(index=False))
    return 0


def cmd_table(args) -> int:
    from harness.report import write_table

    df = write_table(args.rollouts, args.table, args.out, methods=args.methods)
    print(df.to_string(index=False))
    return 0


def cmd_compare(args) -> int:
    from harness.reproduction import paired_comparison, state_sign_test
    from harness.rollouts import read_rollouts

    rows = [read_rollouts(p) for p in (args.first, args.second)]
    result = paired_comparison(*rows)
    states = state_sign_test(*rows)  # the initial states as the independent units
    result.update(a_states=states["a_states"], b_states=states["b_states"], states_sign_p=states["sign_p"])
    text = json.dumps({"first": args.first, "second": args.second, **result}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def cmd_grid_cell(args) -> int:
    from harness.grid import run_cell

    cfg = _grid_config(args, args.grid)
    run_cell(cfg, args.method, args.task, args.grid, threads=args.threads, workers=args.workers,
             config_file=args.config_file)
    return 0


def cmd_grid_repin(args) -> int:
    from harness.grid import method_commit, repin_methods

    methods = list(dict.fromkeys(args.method))
    grid = repin_methods(args.grid, _grid_config(args, args.grid), methods, args.reason, args.retire_to)
    for method in methods:
        print(f"{method}: pinned at method code {grid['method_ids'][method]} (commit "
              f"{method_commit(grid, method)[:12]}); make its cells from a worktree there")
    for move in grid["repins"][-len(methods):]:
        for cell in move["retired_cells"]:
            print(f"retired {move['method']}'s old cell to {cell}")
    return 0


def cmd_grid_report(args) -> int:
    from harness.grid import grid_report

    print("\n".join(map(str, grid_report(args.grid, _grid_config(args, args.grid), args.out_dir))))
    return 0


def cmd_grid_status(args) -> int:
    from harness.grid import cell_status, current_pin, read_grid, status_markdown

    cfg = _grid_config(args, args.grid)
    text = status_markdown(cell_status(args.grid, cfg, current_pin(cfg)), read_grid(args.grid))
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def cmd_params(args) -> int:
    from harness.report import parameter_counts

    counts = parameter_counts(args.method, args.scale, args.action_dim, args.qpos_dim, tuple(args.image_size))
    print(f"{args.method} at the {args.scale} preset (trainable parameters):")
    for group, n in counts.items():
        print(f"  {group:22s} {n / 1e6:10.2f}M  ({n:,})")
    return 0


def cmd_table1(args) -> int:
    from harness.report import parameter_table

    df = parameter_table(args.methods)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(df[["method", "module", "parameters_M", "reference_M", "difference_percent"]].to_string(index=False))
    return 0


def cmd_memory(args) -> int:
    from harness import memory
    from harness.runs import pick_device, trains_in_bf16

    cfg = _config(args)
    entry, adapter_cls, method_cfg = cfg.method(args.method)
    if not adapter_cls.trainable:
        raise ConfigError(f"{entry.name} has nothing to train, so it has no training memory to project (the "
                          "workflow's memory rule skips it); ask for a method that trains (`python -m harness "
                          "methods` lists them)")
    wants_gpu = cfg.data["compute"]["wants_gpu"]
    # where training runs (the config's training.device), unless told otherwise
    device = pick_device(args.device or cfg.data["training"]["device"])
    # auto: the precision training has on the measuring device
    bf16 = {"bf16": True, "fp32": False}.get(args.precision, trains_in_bf16(device))
    _set_threads(args)
    rows = memory.project_method(adapter_cls, method_cfg, entry.name, image_size=cfg.task(args.task).image_size,
                                 device=device, bf16=bf16, batch_size=args.batch_size)
    for row in rows:
        row.update(scale=cfg.scale, config_hash=cfg.config_hash())
    print(memory.summary(rows))
    own = rows[0]  # the config's own setting sizes the training job
    # a job that trains on a CPU (no GPU where it runs, or training.device: cpu, as the
    # rehearsal's) holds all of it in host memory, whatever the scale wants
    on_gpu = wants_gpu and device.type == "cuda"
    own["resources"] = memory.resources(own, on_gpu)
    print(f"training job resources: {own['resources']}")
    if args.out:
        memory.write(args.out, rows)
    return 0


def cmd_check_device(args) -> int:
    from harness.compute import device_report

    ok, message = device_report(_config(args))
    print(message)
    return 0 if ok or args.allow_cpu else 3


def cmd_provenance(args) -> int:
    from harness.provenance import CodeState, fill_row_identities, run_provenance
    from harness.registry import list_methods

    state = CodeState()
    if not state.known:
        print("not a git checkout: the code cannot be identified (every identity reads 'unknown')")
    else:
        dirty = sorted(state.changes)
        print(f"commit   {state.commit}" + (f" + uncommitted changes to {len(dirty)} code file(s): "
                                             f"{', '.join(dirty)}" if dirty else ""))
    print(f"code_id  {state.code().id}")
    print("method_id")
    for entry in list_methods(load_variants=False):
        print(f"  {entry.name:<10} {state.method(entry.name).id}")
    status = 0
    for run in args.run:
        line, same = run_provenance(run, state)
        print(line)
        status = status or (0 if same else 1)
    for path in args.fill_rows:
        print(fill_row_identities(path, train_commit=args.train_commit))
    return status


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
    p.add_argument("--split", choices=("train", "validation"), default="train",
                   help="validation: demos.num_val_demos held-out demos from the task's val_seed_start "
                        "(the offline probe's; never trained on)")
    p.add_argument("--seed-range", type=int, nargs=2, metavar=("START", "STOP"), default=None,
                   help="a shard: plan every seed in [START, STOP), whatever the outcome (see merge-plans)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_plan_demos)

    p = sub.add_parser("merge-plans", help="the first num_demos successful seeds of plan shards (in seed "
                                           "order) as one plan, as an unsharded plan-demos keeps them")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--shards", nargs="+", required=True, help="plan-demos --seed-range folders, in seed order")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_merge_plans)

    p = sub.add_parser("merge-datasets", help="a task's dataset from rendered blocks (render-dataset "
                                              "--episodes), each verified first")
    p.add_argument("parts", nargs="+", help="block datasets, in episode order")
    p.add_argument("--plan-report", default=None, help="the merged plan: its seeds must be the blocks'")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_datasets)

    p = sub.add_parser("gather-rollouts", help="one rollout file from the blocks of a sharded evaluation "
                                               "(evaluate --init-states), every protocol rollout once")
    _add_config_args(p)
    p.add_argument("parts", nargs="+", help="block CSVs written by evaluate --init-states")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_gather_rollouts)

    p = sub.add_parser("render-dataset", help="render planned trajectories into a training dataset")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--trajectories", required=True, help="trajectories.h5 written by plan-demos")
    p.add_argument("--out", required=True, help="dataset file to write (.h5)")
    p.add_argument("--workers", type=_count(1), default=None, help="render processes (default: config)")
    p.add_argument("--episodes", type=int, nargs=2, metavar=("START", "STOP"), default=None,
                   help="a block: only the plan's episodes [START, STOP) (see merge-datasets)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_render_dataset)

    p = sub.add_parser("verify-render",
                       help="compare rendering-from-states with ManiSkill's replay_trajectory")
    _add_config_args(p)
    p.add_argument("--task", required=True)
    p.add_argument("--trajectories", required=True)
    p.add_argument("--episodes", type=_count(0), default=None, help="default: demos.verify_episodes")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.set_defaults(func=cmd_verify_render)

    p = sub.add_parser("dataset-info", help="print a dataset's metadata (and verify checksums)")
    p.add_argument("path")
    p.add_argument("--verify", action="store_true", help="re-hash every array")
    p.set_defaults(func=cmd_dataset_info)

    p = sub.add_parser("export-lerobot", help="a harness dataset as a LeRobot v2.1 dataset (images, joint "
                                              "positions, actions at 20 fps) for LeRobot's own tools")
    p.add_argument("--dataset", required=True, help="the harness dataset (.h5)")
    p.add_argument("--out", required=True, help="a new folder: the LeRobot dataset's root")
    p.add_argument("--repo-id", default=None, help="the LeRobot repo_id it records (default local/<Task>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_export_lerobot)

    p = sub.add_parser("export-pretrained", help="a trained act / dp_unet / lerobot_* run as a LeRobot "
                                                 "pretrained-model folder that runs standalone")
    p.add_argument("--run", required=True, help="the run folder")
    p.add_argument("--out", required=True, help="a new folder for the LeRobot checkpoint")
    p.set_defaults(func=cmd_export_pretrained)

    p = sub.add_parser("methods", help="list every registered method and variant and where it comes from")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="train one method on one task's dataset (resumes if interrupted)")
    _add_config_args(p)
    p.add_argument("--method", required=True, help="a name from `python -m harness methods`")
    p.add_argument("--task", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, final weights)")
    p.add_argument("--allow-cpu", action="store_true", help="train on CPU even if the scale wants a GPU")
    p.add_argument("--threads", type=_count(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--val-dataset", default=None,
                   help="held-out demos of the task (<Task>.val.h5): the probe's chunk error logged at "
                        "every checkpoint (train_log.csv's val_rmse)")
    p.add_argument("--features", default=None,
                   help="the dataset's frame features from `features` (methods that have them)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("features", help="encode a dataset's frames once with a method's frozen frame "
                                        "encoder (PAR: NOVA's VAE), for training from the cache")
    _add_config_args(p)
    p.add_argument("--method", required=True)
    p.add_argument("--dataset", required=True, help="the task's dataset (.h5)")
    p.add_argument("--out", required=True, help="feature file to write (.h5)")
    p.add_argument("--threads", type=_count(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("evaluate", help="roll out a trained run under the evaluation protocol")
    _add_config_args(p)
    p.add_argument("--run", required=True, nargs="+", help="run folder written by `train`; several runs of the "
                                                          "task: evaluated in turn in this one process")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, nargs="+", help="CSV with one row per rollout (one per --run, in order)")
    p.add_argument("--workers", type=_count(1), default=None, help="default: evaluation.workers")
    p.add_argument("--init-states", type=int, nargs=2, metavar=("START", "STOP"), default=None,
                   help="a block: only the protocol's initial states [START, STOP) by index (see gather-rollouts)")
    p.add_argument("--require-same-code", action="store_true",
                   help="refuse a run trained by other method code than this checkout's (default: "
                        "evaluation.require_same_code; without it such rows are evaluated and marked)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="two rollout CSVs of the same protocol, pair by pair (same init state and "
                                       "sampling seed): successes, discordant pairs, exact McNemar p-value")
    p.add_argument("first", help="rollouts CSV written by `evaluate`")
    p.add_argument("second", help="rollouts CSV of another run under the same protocol")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("grid-cell", help="one (method, task) cell of a results grid: datasets, training, "
                                         "evaluation (the DAG's rules), the probe, collected into the grid "
                                         "folder with identities, dataset hashes and each job's cost")
    _add_config_args(p, grid=True)
    p.add_argument("--method", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--grid", required=True, help="the grid folder (e.g. results/measured/reduced/grid)")
    p.add_argument("--threads", type=_count(1), default=1,
                   help="torch threads of the training and frame-feature jobs and of the probe")
    p.add_argument("--workers", type=_count(1), default=1, help="processes of the evaluation job")
    p.set_defaults(func=cmd_grid_cell)

    p = sub.add_parser("grid-status", help="every cell of a results grid: done / missing / stale, and the "
                                           "CPU-hours spent")
    _add_config_args(p, grid=True)
    p.add_argument("grid", help="the grid folder")
    p.add_argument("--out", default=None, help="write the status table (Markdown) here too")
    p.set_defaults(func=cmd_grid_status)

    p = sub.add_parser("grid-repin", help="move a results grid's pin of a method to this checkout's code (a "
                                          "method fixed after the grid was pinned); its old cells move to "
                                          "a history folder, every other method keeps its pin and cells")
    _add_config_args(p, grid=True)
    p.add_argument("grid", help="the grid folder")
    p.add_argument("--method", action="append", required=True,
                   help="a method to re-pin (repeat for each; methods of one package share its code)")
    p.add_argument("--reason", required=True, help="what was fixed, and the evidence (kept in grid.json)")
    p.add_argument("--retire-to", default=None,
                   help="where the method's old cells go (<folder>/<task>/<method>/); needed if it has any")
    p.set_defaults(func=cmd_grid_repin)

    p = sub.add_parser("grid-report", help="Tables 2 and 3, their plots, the reproduction report and the "
                                           "status table from a results grid's cells; missing and stale "
                                           "cells say so")
    _add_config_args(p, grid=True)
    p.add_argument("grid", help="the grid folder")
    p.add_argument("--out-dir", default=None, help="where to write them (default: the grid folder)")
    p.set_defaults(func=cmd_grid_report)

    p = sub.add_parser("probe", help="a trained run's action chunks against the expert's on held-out demos, "
                                     "teacher forced: error, baselines, seed spread, input sensitivity (no rollouts)")
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--val-dataset", required=True,
                   help="held-out demos of the run's task (outputs/<scale>/datasets/<Task>.val.h5)")
    p.add_argument("--checkpoint", default="final", help="'final' (model.safetensors) or a kept checkpoint's step")
    p.add_argument("--seeds", type=_count(1), default=3, help="sampling seeds per probe point (spread across them)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the numbers as JSON here (and a .md table beside it)")
    p.set_defaults(func=cmd_probe)

    for name, func, what in (
            ("predicted-frames", cmd_predicted_frames, "one rollout of a frame-predicting method (PAR): its "
                                                      "predicted frames next to the executed ones (paper Fig. 4)"),
            ("attention-map", cmd_attention_map, "one PAR rollout's own attention: how its action tokens attend "
                                                 "to frame and action tokens and to the frame's patches (paper Fig. 5)")):
        p = sub.add_parser(name, help=what)
        _add_config_args(p)
        p.add_argument("--run", required=True, help="run folder written by `train`")
        p.add_argument("--task", required=True)
        p.add_argument("--policy-seed", type=_count(0), default=0)
        p.add_argument("--init-index", type=_count(0), default=0,
                       help=f"which of the protocol's initial states (0 = env seed {EVAL_INIT_STATE_SEED_START})")
        p.add_argument("--out", required=True, help="figure (.png); .npz arrays and .json summary beside it")
        p.set_defaults(func=func)

    p = sub.add_parser("failure-case", help="the first failed rollout of an evaluation (protocol order) played "
                                            "again, predicted frames above executed ones (paper Fig. 6)")
    _add_config_args(p)
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--task", required=True)
    p.add_argument("--rollouts", required=True, help="the run's rollout CSV written by `evaluate`")
    p.add_argument("--out", required=True, help="figure (.png); .json summary beside it")
    p.set_defaults(func=cmd_failure_case)

    p = sub.add_parser("fig4", help="paper Fig. 4 for every task from `predicted-frames` .npz files")
    p.add_argument("frames", nargs="+", help=".npz files written by `predicted-frames`, named <task>.npz")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fig4)

    p = sub.add_parser("plots", help="a table's plots from per-rollout CSVs: success rates with intervals and "
                                     "the paper's numbers, outcomes, training curves")
    p.add_argument("rollouts", nargs="+", help="CSV files written by `evaluate`")
    p.add_argument("--table", default="table2", choices=TABLE_NAMES, help="which paper table's reference numbers to mark")
    p.add_argument("--methods", nargs="*", default=None, help="row order (default: as found)")
    p.add_argument("--train-logs", nargs="*", default=None, metavar="METHOD:TASK:PATH",
                   help="train_log.csv of each run, for the training curves")
    p.add_argument("--out-dir", required=True, help="writes <table>_success.{png,pdf}, "
                                                    "<table>_outcomes.{png,pdf}, <table>_training.png")
    p.set_defaults(func=cmd_plots)

    p = sub.add_parser("report", help="the per-cell reproduction report (CSV and Markdown) of Tables 2 and 3")
    p.add_argument("--table", action="append", required=True, metavar="NAME=CSV[,CSV...]",
                   help="a table and its rollout files (repeat per table)")
    p.add_argument("--methods", action="append", metavar="NAME=M[,M...]", help="a table's row order")
    p.add_argument("--title", default="Reproduction report")
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("table", help="compile a results table from per-rollout CSVs")
    p.add_argument("rollouts", nargs="+", help="CSV files written by `evaluate`")
    p.add_argument("--table", default="table2", choices=TABLE_NAMES, help="which paper table's reference numbers to join")
    p.add_argument("--methods", nargs="*", default=None, help="row order (default: as found)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("params", help="parameter count per module of a method's config (meta device)")
    p.add_argument("--method", required=True)
    p.add_argument("--scale", default="paper", help="the method's scale preset (paper: its paper config)")
    p.add_argument("--action-dim", type=_count(1), default=8)
    p.add_argument("--qpos-dim", type=_count(1), default=9)
    p.add_argument("--image-size", type=_count(1), nargs=2, default=[512, 512])
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("table1", help="Table 1 for every method: parameters per module at the paper preset "
                                      "beside the paper's or the source's numbers")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_table1)

    p = sub.add_parser("memory", help="projected peak training memory of a method at its config's batch "
                                      "size, from measured batch-1 and batch-2 passes")
    _add_config_args(p)
    p.add_argument("--method", required=True)
    p.add_argument("--task", default="PushCube", help="whose image size the batches have")
    p.add_argument("--batch-size", type=_count(1), default=None, help="default: the method's config")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: as training on the measuring device: bf16 autocast on a GPU that supports it, "
                        "else float32 (a CPU trains in float32)")
    p.add_argument("--device", default=None, help="where to measure (default: the config's training.device, "
                   "where training runs; auto: CUDA when present)")
    p.add_argument("--threads", type=_count(1), default=None)
    p.add_argument("--out", default=None, help="write the projections as JSON")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("provenance", help="the code identity and every method identity of this checkout; "
                                          "for a run folder, whether the code that trained it is this code")
    p.add_argument("--run", nargs="*", default=[], help="run folders to check (exit 1 if one differs)")
    p.add_argument("--fill-rows", nargs="*", default=[], metavar="CSV",
                   help="rollout files from before identities were recorded: fill in code_id, method_id, "
                        "train_code_id and train_method_id from their git_sha/train_git_sha and git history")
    p.add_argument("--train-commit", default=None,
                   help="with --fill-rows: the training commit of rows that record none (train_git_sha empty)")
    p.set_defaults(func=cmd_provenance)

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
    except (HarnessError, FileNotFoundError) as exc:  # expected: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
