"""Where a cell's rollouts fail: each of its rollouts replayed with the env's own per-step
flags recorded, and the same flags counted over the task's demonstrations.

A rollout row says only success or failure. For a cell at or near zero that leaves the
question a researcher asks first: did the policy never reach the cube, grasp and drop it,
carry it but miss the goal, or reach the goal without coming to rest (PickCube-v1's success
is ``is_obj_placed & is_robot_static``)? This script rolls the trained run out again on the
protocol's initial states and policy seeds, exactly as ``harness.evaluate`` does
(``run_rollout``, one torch thread), with ``env.step`` wrapped to keep the flags the env's
``evaluate()`` reports at each step (``is_grasped``, ``is_obj_placed``, ``is_robot_static``
for PickCube; ``is_cubeA_grasped``, ``is_cubeA_on_cubeB``, ``is_cubeA_static`` for StackCube)
and, where the env has them, the cube's height above its start and its distance to the goal.
Each replayed outcome is checked against the cell's committed row for the same rollout
(same code, same seeds: they must agree). The demos' own flags come from replaying their
recorded actions (the planner's ``trajectories.h5``, each demo's actions stepped from its seed's reset).

    python benchmarks/failure_modes.py --run ../grid-pin/outputs/reduced/runs/act/PickCube \\
        --rows results/measured/reduced/grid/PickCube/act/rollouts.csv \\
        --demos ../grid-pin/outputs/reduced/demos/PickCube/trajectories.h5 --name reduced_PickCube_act

writes ``benchmarks/results/failure_modes_<name>.{json,md}`` (``--limit N``: the first N
rollouts only, to try it): each flag counted over rollouts, over initial states (raised under
any policy seed) and over the demos. ``--tabulate FILE.json`` rebuilds the counts and the
Markdown of a saved result without replaying.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402,F401
from common import write_result  # noqa: E402

LIFT_M = 0.02
"""A cube counts as lifted once 2 cm above its initial height (ours: a quarter of PickCube's
goal-height range, above any push or tilt of a 4 cm cube)."""


def flags_of(info: dict) -> dict:
    """The boolean flags of one step's ``info`` (env 0), ``success`` and the episode keys left out."""
    out = {}
    for key, value in info.items():
        if key in ("success", "elapsed_steps", "fail", "episode"):
            continue
        arr = np.asarray(value.cpu() if hasattr(value, "cpu") else value).reshape(-1)
        if arr.dtype == bool and arr.size:
            out[key] = bool(arr[0])
    return out


def geometry(env) -> dict:
    """The cube's height and its distance to the goal, where the task has a cube and a goal
    (PickCube: ``cube``, ``goal_site``; StackCube: ``cubeA`` over ``cubeB``)."""
    u = env.unwrapped
    cube = getattr(u, "cube", None) or getattr(u, "cubeA", None)
    if cube is None:
        return {}
    p = np.asarray(cube.pose.p.cpu()).reshape(-1, 3)[0]
    out = {"cube_z": float(p[2])}
    goal = getattr(u, "goal_site", None) or getattr(u, "cubeB", None)
    if goal is not None:
        g = np.asarray(goal.pose.p.cpu()).reshape(-1, 3)[0]
        out["goal_dist"] = float(np.linalg.norm(g - p))
    return out


class Recorder:
    """The env as ``run_rollout`` sees it, keeping each step's flags and geometry."""

    def __init__(self, env):
        self.env, self.steps = env, []

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        self.start = geometry(self.env)
        self.steps = []
        return out

    def step(self, action):
        out = self.env.step(action)
        self.steps.append({**flags_of(out[-1]), **geometry(self.env)})
        return out

    def __getattr__(self, name):
        return getattr(self.env, name)


def summarise(steps: list[dict], start: dict) -> dict:
    """One episode's flags: whether each was ever true and its first step; the cube's highest
    lift and closest approach to the goal, and where it ended."""
    out: dict = {"steps": len(steps)}
    flags = sorted({k for s in steps for k, v in s.items() if isinstance(v, bool)})
    for key in flags:
        hits = [i + 1 for i, s in enumerate(steps) if s.get(key)]
        out[f"{key}_ever"] = bool(hits)
        out[f"{key}_first"] = hits[0] if hits else None
        out[f"{key}_last"] = bool(steps[-1].get(key)) if steps else False
    if steps and "cube_z" in steps[0]:
        lift = [s["cube_z"] - start["cube_z"] for s in steps]
        out["max_lift_m"] = round(max(lift), 4)
        out["lifted_ever"] = max(lift) >= LIFT_M
    if steps and "goal_dist" in steps[0]:
        d = [s["goal_dist"] for s in steps]
        out["min_goal_dist_m"] = round(min(d), 4)
        out["final_goal_dist_m"] = round(d[-1], 4)
    return out


def demo_flags(trajectories: Path, task_info: dict, limit: int | None) -> list[dict]:
    """The flags of each planned demo, its recorded actions replayed from its seed's reset
    (stepping the env, so contact flags such as ``is_grasped`` are computed as in a rollout)."""
    import h5py

    from harness.sim import make_env

    env = make_env(task_info["env_id"], task_info["control_mode"], task_info["camera"],
                   tuple(task_info["image_size"]), max_episode_steps=1000)
    rec, out = Recorder(env), []
    meta = json.loads(trajectories.with_suffix(".json").read_text())
    try:
        with h5py.File(trajectories, "r") as f:
            for episode in meta["episodes"][:limit]:
                rec.reset(seed=episode["episode_seed"])
                success = False
                for action in f[f"traj_{episode['episode_id']}"]["actions"][()]:
                    info = rec.step(action)[-1]
                    success = success or bool(np.asarray(info["success"]).reshape(-1)[0])
                out.append({"demo": episode["episode_id"], "seed": episode["episode_seed"], "success": success,
                            **summarise(rec.steps, rec.start)})
    finally:
        env.close()
    return out


def counts(rows: list[dict], keys: list[str]) -> dict:
    """Per flag, the rows (rollouts or demos) that raised it."""
    n = len(rows)
    return {k: {"count": sum(bool(r.get(k)) for r in rows), "of": n} for k in keys}


def counts_by_state(rows: list[dict], keys: list[str]) -> dict:
    """Per flag, the initial states where any of its rollouts raised it (the states are the
    independent units: a deterministic policy repeats one rollout under every policy seed)."""
    states = sorted({r["init_state_seed"] for r in rows})
    return {k: {"count": sum(any(r.get(k) for r in rows if r["init_state_seed"] == s) for s in states),
                "of": len(states)} for k in keys}


def tabulate(result: dict) -> tuple[dict, str]:
    """The counts and the Markdown of a result holding ``per_rollout`` and ``per_demo``
    (``python benchmarks/failure_modes.py --tabulate FILE.json`` rebuilds them from a saved one)."""
    out, demos = result["per_rollout"], result["per_demo"]
    keys = sorted({k for r in out for k in r if k.endswith("_ever")} | {"success"})
    demo_keys = sorted({k for r in demos for k in r if k.endswith("_ever")} | ({"success"} if demos else set()))
    mismatches = [(r["policy_seed"], r["init_state_seed"]) for r in out if r["success"] != r["committed_success"]]
    result.update(replay_mismatches=mismatches, rollout_counts=counts(out, keys), state_counts=counts_by_state(out, keys),
                  demo_counts=counts(demos, demo_keys))
    for group, items in (("rollout", out), ("demo", demos)):
        for stat in ("min_goal_dist_m", "max_lift_m"):
            vals = [r[stat] for r in items if r.get(stat) is not None]
            if vals:
                result[f"{group}_{stat}_median"] = float(np.median(vals))
    lines = [f"# Failure modes: {result['method']} on {result['task']}", "",
             f"Run `{result['run']}`, rows `{result['rows']}`: {len(out)} rollouts replayed in "
             f"{result['seconds']:.0f} s; outcomes differing from the committed rows: {len(mismatches)}.", "",
             "| flag (ever during the episode) | rollouts | initial states (any seed) | demos |", "|---|---|---|---|"]
    for k in sorted(set(keys) | set(demo_keys)):
        cells = [f"{c['count']}/{c['of']}" if c else "" for c in
                 (result["rollout_counts"].get(k), result["state_counts"].get(k), result["demo_counts"].get(k))]
        lines.append(f"| {k} | {' | '.join(cells)} |")
    for stat in ("min_goal_dist_m", "max_lift_m"):
        parts = [f"{g}s {result[f'{g}_{stat}_median']:.3f}" for g in ("rollout", "demo")
                 if f"{g}_{stat}_median" in result]
        if parts:
            lines.append(f"\nMedian {stat}: " + ", ".join(parts) + ".")
    return result, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tabulate", default=None, metavar="JSON",
                   help="rebuild the counts and the .md of a saved result, replaying nothing")
    p.add_argument("--run", help="the cell's trained run folder")
    p.add_argument("--rows", help="the cell's committed rollouts.csv (seeds, protocol, outcomes)")
    p.add_argument("--demos", default=None, help="the task's planned trajectories.h5 (its demos' flags)")
    p.add_argument("--name", help="result name: failure_modes_<name>.{json,md}")
    p.add_argument("--limit", type=int, default=None, help="only the first N rollouts (and demos)")
    p.add_argument("--out", default=None, help="folder of the result files (default benchmarks/results/)")
    a = p.parse_args(argv)
    if a.tabulate:
        path = Path(a.tabulate)
        result, text = tabulate(json.loads(path.read_text()))
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        path.with_suffix(".md").write_text(text + "\n")
        print(text)
        return 0
    if not (a.run and a.rows and a.name):
        p.error("--run, --rows and --name are needed to replay (or --tabulate a saved result)")

    import torch

    from harness.dataset import DemoDataset
    from harness.evaluate import Prompter, open_rollout, run_rollout, task_info_of
    from harness.runs import read_run_config

    torch.set_num_threads(1)  # as each evaluation worker runs
    with open(a.rows, newline="") as f:
        rows = list(csv.DictReader(f))[:a.limit]
    cap = int(rows[0]["max_episode_steps"])
    run_config = read_run_config(a.run)
    task_info = task_info_of(DemoDataset(run_config["dataset"]).meta)
    adapter, env, observe, actions = open_rollout(a.run, task_info, cap)
    prompter = Prompter(run_config, type(adapter).prompt_demos(adapter.config))
    rec, out, start = Recorder(env), [], time.time()
    try:
        for i, row in enumerate(rows):
            ps, init = int(row["policy_seed"]), int(row["init_state_seed"])
            result = run_rollout(rec, adapter, observe, actions, cap, ps, init, prompter=prompter)
            s = summarise(rec.steps, rec.start)
            out.append({"policy_seed": ps, "init_state_seed": init, "success": bool(result["success"]),
                        "committed_success": row["success"] == "1", **s})
            print(f"{i + 1}/{len(rows)} seed {ps} init {init}: success {result['success']} "
                  f"{ {k: v for k, v in s.items() if k.endswith('_ever') or k.startswith(('min_', 'max_'))} }",
                  flush=True)
    finally:
        env.close()
    demos = demo_flags(Path(a.demos), task_info, a.limit) if a.demos else []
    result = {"run": a.run, "rows": a.rows, "task": task_info["task"], "method": run_config["method"],
              "rollouts": len(out), "seconds": round(time.time() - start, 1), "lift_threshold_m": LIFT_M,
              "per_rollout": out, "per_demo": demos}
    result, text = tabulate(result)
    write_result(f"failure_modes_{a.name}", result, text,
                 Path(a.out) if a.out else Path(__file__).resolve().parent / "results")
    return 1 if result["replay_mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
