"""Long steps split into jobs that a cluster runs side by side, and merged back.

- **Demonstrations.** Planning seeds are split into ranges of ``demos.shard_size`` seeds, each
  planned in full by one job (``plan_demos(seed_stop=...)``); ``merge_plans`` keeps the first
  ``num_demos`` successful seeds in seed order, exactly the episodes an unsharded plan keeps
  (it stops at the ``num_demos``-th success), and fails the same way when more than
  ``max_failed_seeds`` seeds fail before it. The merged plan's episodes are rendered in blocks
  of ``shard_size`` (``render_dataset(episode_range=...)``) and ``merge_datasets`` writes the
  task's dataset from the blocks, each verified against its checksums first.
- **Evaluation.** A (method, task)'s rollouts are split into blocks of
  ``evaluation.init_states_per_job`` initial states (``evaluate(init_states=...)``);
  ``gather_rollouts`` checks that the blocks hold every rollout of the protocol exactly once
  and writes the one rollout file an unsharded evaluation writes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from harness.demos import TRAJECTORY_NAME, PlanningError
from harness.errors import HarnessError
from harness.provenance import utc_now

log = logging.getLogger(__name__)


class ShardError(HarnessError, ValueError):
    """Shards that do not add up to the whole; the message names the file and what is missing."""


def blocks(total: int, size: int, start: int = 0) -> list[tuple[int, int]]:
    """[a, b) blocks of ``size`` covering ``start .. start + total`` (the last one shorter)."""
    return [(start + a, start + min(a + size, total)) for a in range(0, total, size)]


def plan_shard_ranges(num_demos: int, max_failed_seeds: int, shard_size: int, seed_start: int = 0) -> list[tuple[int, int]]:
    """The seed ranges that together hold every seed an unsharded plan could try: it stops at
    the ``num_demos``-th success and gives up past ``max_failed_seeds`` failures, so it never
    tries more than ``num_demos + max_failed_seeds`` seeds."""
    return blocks(num_demos + max_failed_seeds, shard_size, seed_start)


def render_shard_ranges(num_demos: int, shard_size: int) -> list[tuple[int, int]]:
    """Episode blocks [a, b) of the merged plan, ``shard_size`` each."""
    return blocks(num_demos, shard_size)


def plan_hint(shard_dir: str | Path, task: str, verb: str = "Plan it") -> str:
    """How to make one plan shard again (``plan-demos --seed-range``), or its Snakemake target."""
    m = re.fullmatch(r"seeds_([0-9]+)_([0-9]+)", Path(shard_dir).name)
    seeds = f"{m[1]} {m[2]}" if m else "START STOP"
    return (f"{verb}: `python -m harness plan-demos --task {task} --seed-range {seeds} --out-dir {shard_dir}` with "
            f"the other shards' --scale or --config-file, or in the workflow "
            f"`snakemake --cores 1 {Path(shard_dir) / 'plan_report.json'} --config scale=<scale>`")


def merge_plans(shard_dirs: list[str | Path], out_dir: str | Path, num_demos: int, max_failed_seeds: int,
                task_name: str) -> dict:
    """The first ``num_demos`` successful seeds of the shards (given in seed order) as one plan
    in ``out_dir``: ``trajectories.h5``/``.json`` renumbered 0..num_demos-1, and a
    ``plan_report.json`` with the succeeded seeds, the seeds that failed before the last kept
    one, and the shards it came from."""
    import h5py

    started = time.time()
    outcomes = []  # (seed, shard index, episode record or failure reason)
    reports, infos = [], []
    expected_start = None
    for k, d in enumerate(map(Path, shard_dirs)):
        report_path = d / "plan_report.json"
        for path in (report_path, d / f"{TRAJECTORY_NAME}.json", d / f"{TRAJECTORY_NAME}.h5"):
            if not path.exists():
                raise ShardError(f"{path} is missing: plan shard {k} did not finish. {plan_hint(d, task_name)}")
        report = json.loads(report_path.read_text())
        if "seed_range" not in report:
            raise ShardError(f"{report_path} is not a plan shard's (no seed_range: a whole plan, not planned with "
                             f"--seed-range). {plan_hint(d, task_name)}")
        a, b = report["seed_range"]
        if expected_start is not None and a != expected_start:
            raise ShardError(f"{report_path} covers seeds {a}:{b}; the shard before ended at {expected_start}. Give "
                             f"the shards in seed order without a gap; plan a missing range with "
                             f"`python -m harness plan-demos --task {task_name} --seed-range {expected_start} {a} "
                             f"--out-dir <shards>/seeds_{expected_start}_{a}`")
        expected_start = b
        first = reports[0] if reports else report
        for key, want, whose in (("task", task_name, "merge-plans --task asks for"),
                                 *((key, first.get(key), "the first shard has")
                                   for key in ("env_id", "control_mode", "code_id", "split"))):
            if report.get(key, want) != want:
                raise ShardError(f"plan shard {d} does not belong with the others: its {key} is {report.get(key)!r}, "
                                 f"{whose} {want!r}. Merge the shards of one task's plan, made by one code. "
                                 f"{plan_hint(d, task_name, 'Plan it again')}")
        info = json.loads((d / f"{TRAJECTORY_NAME}.json").read_text())
        by_seed = {int(ep["episode_seed"]): ep for ep in info["episodes"]}
        if sorted(by_seed) != sorted(report["succeeded_seeds"]):
            raise ShardError(f"{d}: its trajectories and its plan_report.json list different seeds. "
                             f"{plan_hint(d, task_name, 'Delete the folder and plan it again')}")
        outcomes += [(s, k, by_seed[s]) for s in report["succeeded_seeds"]]
        outcomes += [(int(s), k, reason) for s, reason in report["failed_seeds"].items()]
        reports.append(report)
        infos.append(info)
    outcomes.sort(key=lambda o: o[0])
    kept, failed = [], {}
    for seed, k, what in outcomes:
        if len(kept) == num_demos:
            break
        if isinstance(what, dict):
            kept.append((seed, k, what))
        else:
            failed[seed] = what
            if len(failed) > max_failed_seeds:
                raise PlanningError(f"{task_name}: {len(failed)} seeds failed (more than demos.max_failed_seeds="
                                    f"{max_failed_seeds}); last: seed {seed}: {what}")
    if len(kept) < num_demos:
        raise ShardError(f"{task_name}: the plan shards hold {len(kept)} successful seeds, {num_demos} are needed. "
                         "Give every shard of the plan (the workflow's are outputs/<scale>/demos/<task>/shards/"
                         f"seeds_*), or plan further seeds from {expected_start} with `python -m harness plan-demos "
                         f"--task {task_name} --seed-range {expected_start} STOP --out-dir <shards>/seeds_"
                         f"{expected_start}_STOP` and merge again")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5_path = out_dir / f"{TRAJECTORY_NAME}.h5"
    tmp = h5_path.with_name(h5_path.name + ".partial")
    with h5py.File(tmp, "w") as out:
        for k, d in enumerate(map(Path, shard_dirs)):
            mine = [(i, ep) for i, (_, shard, ep) in enumerate(kept) if shard == k]
            if not mine:
                continue
            with h5py.File(d / f"{TRAJECTORY_NAME}.h5", "r") as f:
                for i, ep in mine:
                    f.copy(f[f"traj_{ep['episode_id']}"], out, name=f"traj_{i}")
    tmp.replace(h5_path)
    episodes = [dict(ep, episode_id=i) for i, (_, _, ep) in enumerate(kept)]
    (out_dir / f"{TRAJECTORY_NAME}.json").write_text(json.dumps(dict(infos[0], episodes=episodes), indent=2))
    report = {
        "task": task_name, "env_id": reports[0]["env_id"], "control_mode": reports[0]["control_mode"],
        "num_demos": num_demos, "succeeded_seeds": [s for s, _, _ in kept],
        "failed_seeds": {str(s): r for s, r in failed.items()},
        "episode_lengths": [int(ep["elapsed_steps"]) for _, _, ep in kept],
        "seconds": round(sum(r["seconds"] for r in reports), 2),
        "merge_seconds": round(time.time() - started, 2),
        "shards": [{"dir": str(d), "seed_range": r["seed_range"], "seconds": r["seconds"]}
                   for d, r in zip(shard_dirs, reports)],
        "git_sha": reports[0]["git_sha"], "code_id": reports[0].get("code_id", ""),
        "versions": reports[0]["versions"], "created_utc": utc_now(),
    }
    (out_dir / "plan_report.json").write_text(json.dumps(report, indent=2))
    return report


# what every rendered block of one dataset shares: the plan, the rendering settings, the config and the code
MERGE_SAME = ("task", "env_id", "instruction", "control_mode", "camera", "image_size", "image_codec", "jpeg_quality",
              "scale", "config_hash", "code_id", "source_trajectories", "split")


def block_hint(path: str | Path, verb: str = "Delete it and render the block again") -> str:
    """How to make one rendered block again (``render-dataset --episodes``), or its Snakemake target."""
    m = re.fullmatch(r"episodes_([0-9]+)_([0-9]+)\.h5", Path(path).name)
    episodes = f"{m[1]} {m[2]}" if m else "START STOP"
    return (f"{verb}: `python -m harness render-dataset --task <Task> --trajectories <merged plan>/trajectories.h5 "
            f"--episodes {episodes} --out {path}` with the other blocks' --scale or --config-file, or in the "
            f"workflow `snakemake --cores 1 {path} --config scale=<scale>`")


def merge_datasets(parts: list[str | Path], out_path: str | Path, plan_report: str | Path | None = None) -> Path:
    """The task's dataset from its rendered blocks, in order. Each block is verified against its
    checksums first, and the blocks must be one plan's, rendered alike (``MERGE_SAME``); with
    ``plan_report`` the merged seeds must be the plan's, in order."""
    from harness.dataset import DatasetError, DemoDataset, write_dataset

    started = time.time()
    datasets = []
    for p in parts:
        if not Path(p).exists():
            raise ShardError(f"the rendered block {p} is missing. {block_hint(p, 'Render it')}")
        try:
            ds = DemoDataset(p)
            ds.verify()  # a damaged block fails here, by name
        except DatasetError as exc:
            problem = re.split(r"[.;] [Dd]elete it and build it again", str(exc))[0]
            raise DatasetError(f"rendered block {p} cannot be merged: {problem}. {block_hint(p)}") from None
        datasets.append(ds)
    for key in MERGE_SAME:
        values = [ds.meta.get(key) for ds in datasets]
        if any(v != values[0] for v in values):
            mix = "; ".join(f"{v!r} in {p}" for v, p in zip(values, parts))
            odd = next(p for v, p in zip(values, parts) if v != values[0])
            raise ShardError(f"the rendered blocks do not belong together: their {key} differs ({mix}). A dataset "
                             "is one plan rendered with one config by one code: merge the blocks of one render "
                             f"only, and render the odd block again like the others. {block_hint(odd)}")
    seeds = [int(s) for ds in datasets for s in ds.seeds]
    if plan_report is not None:
        if not Path(plan_report).is_file():
            raise ShardError(f"the merged plan's report {plan_report} (--plan-report) does not exist. Merge the plan "
                             "shards first: `python -m harness merge-plans --task <Task> --shards <shard folders> "
                             f"--out-dir {Path(plan_report).parent}`, or in the workflow `snakemake --cores 1 "
                             f"{plan_report} --config scale=<scale>`")
        planned = json.loads(Path(plan_report).read_text())["succeeded_seeds"]
        if seeds != planned:
            raise ShardError(f"the rendered blocks {', '.join(map(str, parts))} hold seeds {seeds}; "
                             f"the plan {plan_report} has {planned}")
    meta = {k: v for k, v in datasets[0].meta.items() if k not in ("num_episodes", "num_steps", "seeds")}
    meta.update(render_seconds=round(sum(ds.meta.get("render_seconds", 0) for ds in datasets), 2),
                source_trajectories=datasets[0].meta.get("source_trajectories"),
                shards=[str(p) for p in parts], created_utc=utc_now())

    def episodes():
        for ds in datasets:
            yield from ds.episodes()

    path = write_dataset(out_path, episodes(), meta)
    for ds in datasets:
        ds.close()
    log.info("merged %d rendered blocks (%d episodes) into %s in %.1f s", len(parts), len(seeds), path,
             time.time() - started)
    return path


def init_state_blocks(num_init_states: int, per_job: int | None) -> list[tuple[int, int]]:
    """Init-state index blocks [a, b) of one evaluation (one block: the whole protocol)."""
    return blocks(num_init_states, per_job or num_init_states)


# what every row of one rollout file shares: one run, evaluated under one config and protocol by one code
GATHER_SAME = ("task", "method", "variant", "scale", "config_hash", "run_dir", "dataset", "train_seed",
               "train_git_sha", "code_id", "method_id", "train_code_id", "train_method_id", "control_mode", "camera",
               "image_height", "image_width", "max_episode_steps", "num_init_states", "num_policy_seeds",
               "pretrained_weights", "action_pretrained")


def _ranges(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as [a, b) runs: [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return [(a, b) for a, b in out]


def gather_rollouts(parts: list[str | Path], out_csv: str | Path, protocol, task: str | None = None) -> Path:
    """One rollout file from the blocks' files: every (policy seed, init state) of ``protocol``
    exactly once, rows in the unsharded order (policy seed, then init state). Each block is
    validated on read, and the blocks must be one evaluation's (``GATHER_SAME``; ``task``: of
    this task); a mix, a gap or an overlap is refused naming the files and what to run."""
    import pandas as pd

    from harness.rollouts import check_rollout_file, rebuild_hint

    for k, p in enumerate(parts):
        if str(p) in map(str, parts[:k]):
            raise ShardError(f"the rollout block {p} is given twice: give each block once")
        check_rollout_file(p, required=("policy_seed", "init_state_seed"))
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in parts]
    for p, frame in zip(parts[1:], frames[1:]):
        if list(frame.columns) != list(frames[0].columns):
            raise ShardError(f"the rollout blocks {parts[0]} and {p} have different columns (written by different "
                             f"versions of the harness): they are not one evaluation's. {rebuild_hint(p)}.")
    rows = pd.concat(frames, ignore_index=True)
    files = [str(p) for p, frame in zip(parts, frames) for _ in range(len(frame))]
    for column in GATHER_SAME:
        if column in rows and rows[column].nunique() > 1:
            held = {v: sorted({files[i] for i in rows.index[rows[column] == v]}) for v in rows[column].unique()}
            mix = "; ".join(f"{v!r} in {', '.join(fs)}" for v, fs in held.items())
            raise ShardError(f"the rollout blocks do not belong together: their {column} differs ({mix}). One "
                             "rollout file holds one run's rollouts under one config, protocol and code: gather "
                             "the `evaluate --init-states` blocks of one evaluation only, and evaluate the odd "
                             "block again with the others' run and config")
    if task is not None and "task" in rows and len(rows) and rows["task"].iloc[0] != task:
        raise ShardError(f"the rollout blocks {', '.join(map(str, parts))} hold rollouts on {rows['task'].iloc[0]}, "
                         f"and gather-rollouts --task asks for {task}: gather that task's blocks, or pass "
                         f"--task {rows['task'].iloc[0]}")
    got = list(zip(rows["policy_seed"].astype(int), rows["init_state_seed"].astype(int)))
    want = protocol.jobs()
    missing, unknown = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    twice = sorted({job for job in got if got.count(job) > 1})
    if missing or unknown or twice:
        seeds = list(protocol.init_state_seeds)
        problems = []
        if missing:
            run = rows["run_dir"].iloc[0] if "run_dir" in rows and len(rows) else "<run folder>"
            on = task or (rows["task"].iloc[0] if "task" in rows and len(rows) else "<Task>")
            todo = "; ".join(f"`python -m harness evaluate --run {run} --task {on} --init-states {a} {b} --out "
                             f"{Path(parts[0]).parent}/init_states_{a}_{b}.csv`"
                             for a, b in _ranges(sorted({seeds.index(s) for _, s in missing})))
            problems.append(f"{len(missing)} (policy seed, init state) missing (first: {missing[:3]}): evaluate "
                            f"them ({todo}; in the workflow `snakemake` remakes a missing "
                            "outputs/<scale>/eval/<method>/<task>/init_states_<a>_<b>.csv) and gather again")
        if twice:
            where = sorted({files[i] for i, job in enumerate(got) if job == twice[0]})
            problems.append(f"{len(twice)} twice (first: {twice[0]}, in {' and '.join(where)}): give each block "
                            "once; blocks must not overlap")
        if unknown:
            problems.append(f"{len(unknown)} not in this config's protocol (first: {unknown[:3]}): blocks evaluated "
                            "under another evaluation config; evaluate them again under this one")
        raise ShardError(f"the rollout blocks {', '.join(map(str, parts))} do not add up to the protocol "
                         f"({protocol.num_init_states} init states x {len(protocol.policy_seeds)} policy seeds): "
                         + "; ".join(problems))
    order = {job: i for i, job in enumerate(want)}
    rows = rows.iloc[sorted(range(len(rows)), key=lambda i: order[got[i]])]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".partial")
    rows.to_csv(tmp, index=False)
    tmp.replace(out_csv)
    protocol_json = Path(parts[0]).with_suffix(".protocol.json")
    if protocol_json.exists():
        out_csv.with_suffix(".protocol.json").write_text(protocol_json.read_text())
    return out_csv
