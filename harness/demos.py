"""Planning demonstrations with ManiSkill's own motion-planning solutions.

Seeds run upward from ``seed_start``; a failed plan is recorded and skipped until
``num_demos`` successes exist. The output is ManiSkill's trajectory format (``.h5`` + ``.json``:
actions and full env states per step) so that frames can be rendered from states later and
ManiSkill's own tools (replay_trajectory) read it too.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path

from harness.config import ResolvedTask
from harness.errors import HarnessError
from harness.provenance import code_id, git_sha, package_versions, utc_now
from harness.sim import SIM_BACKEND

log = logging.getLogger(__name__)

TRAJECTORY_NAME = "trajectories"


class PlanningError(HarnessError, RuntimeError):
    """Planning gave up (too many failed seeds)."""


def load_solution(task: ResolvedTask):
    module, func = task.spec.solution.split(":")
    return getattr(importlib.import_module(module), func)


def record_replay_settings(json_path: Path, task: ResolvedTask) -> None:
    """What ManiSkill's ``replay_trajectory`` needs to replay the plans as they ran, in their
    JSON: each episode's reset with ``reconfigure`` (the harness plans every seed in a freshly
    built scene; RecordEpisode keeps only the solution's own plain reset), and the task's camera
    at this scale's image size in the env kwargs (``-o rgb`` renders through it)."""
    if not json_path.exists():  # no episode was recorded
        return
    info = json.loads(json_path.read_text())
    for episode in info.get("episodes", []):
        reset = dict(episode.get("reset_kwargs") or {})
        reset.setdefault("seed", episode.get("episode_seed"))
        reset["options"] = dict(reset.get("options") or {}, reconfigure=True)
        episode["reset_kwargs"] = reset
    height, width = task.image_size
    key = "human_render_camera_configs" if task.camera == "render_camera" else "sensor_configs"
    camera = dict(width=int(width), height=int(height))
    info["env_info"]["env_kwargs"][key] = camera if key == "human_render_camera_configs" else {task.camera: camera}
    json_path.write_text(json.dumps(info, indent=2))


def plan_demos(task: ResolvedTask, out_dir: str | Path, num_demos: int, seed_start: int = 0,
               max_failed_seeds: int = 100, progress: bool = True, seed_stop: int | None = None,
               split: str = "train") -> dict:
    """Plan ``num_demos`` successful demonstrations of ``task`` into ``out_dir``, trying seeds
    from ``seed_start`` in order; or, with ``seed_stop`` (a shard, harness.shards), every seed
    of [seed_start, seed_stop) whatever the outcome. ``split``: ``train`` plans stay below
    ``TaskSpec.val_seed_start``, ``validation`` ones (held-out demos) start there.

    Returns (and writes to ``out_dir/plan_report.json``) the seeds that succeeded and failed.
    """
    if seed_stop is not None and not 0 <= seed_start < seed_stop:  # before any file is written
        raise PlanningError(f"seed range {seed_start}:{seed_stop} (--seed-range {seed_start} {seed_stop}) holds no "
                            "seed: a shard plans START <= seed < STOP, 0 <= START < STOP")
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401
    from mani_skill.utils.wrappers.record import RecordEpisode
    from tqdm import tqdm

    from harness.runtime import require_vulkan

    require_vulkan()
    if task.control_mode != "pd_joint_pos":
        # ManiSkill's panda solutions plan in joint space and emit pd_joint_pos actions.
        raise ValueError(f"motion-planned demos are recorded in pd_joint_pos, not {task.control_mode!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / f"{TRAJECTORY_NAME}.h5", out_dir / f"{TRAJECTORY_NAME}.json"):
        stale.unlink(missing_ok=True)  # a killed earlier run leaves a partial file behind

    solve = load_solution(task)
    env = gym.make(task.spec.env_id, obs_mode="none", control_mode=task.control_mode,
                   render_mode="rgb_array", sim_backend=SIM_BACKEND)
    env = RecordEpisode(env, output_dir=str(out_dir), trajectory_name=TRAJECTORY_NAME,
                        save_video=False, save_on_reset=False, record_reward=False,
                        source_type="motionplanning",
                        source_desc="ManiSkill's motion-planning solution, via par-harness")
    # RecordEpisode names its JSON by replacing every ".h5" in the h5 file's whole path, so a
    # folder such as `mktemp -d`'s /tmp/tmp.h5KEHdg6LN sent it to /tmp/tmp.jsonKEHdg6LN/..., a
    # folder that does not exist (mani_skill 3.0.1, utils/wrappers/record.py); point it at
    # the file next to the h5, where everything downstream reads it
    env._json_path = str(out_dir / f"{TRAJECTORY_NAME}.json")
    succeeded, failed, lengths = [], {}, []
    seed = seed_start
    started = time.time()
    shard = seed_stop is not None
    bar = tqdm(total=seed_stop - seed_start if shard else num_demos, desc=f"plan {task.name}",
               unit="seed" if shard else "demo", disable=not progress)
    try:
        while (seed < seed_stop) if shard else (len(succeeded) < num_demos):
            if seed >= task.spec.seed_limit(split):
                raise PlanningError(f"{task.name}: {split} demo seeds reached the limit "
                                    f"{task.spec.seed_limit(split)} (seeds from {task.spec.val_seed_start} "
                                    f"are the validation demos', from {task.spec.demo_seed_limit} nobody's)")
            reason = None
            # a freshly built scene for every seed: ManiSkill's CPU physics carries state across
            # plain resets, so a seed planned after others in one process executed its (equal)
            # actions slightly differently (up to 1.8e-3 rad of finger qpos) than in a new
            # process, and a sharded plan differed from a whole one (benchmarks/demo_shards.py)
            env.reset(seed=seed, options={"reconfigure": True})
            try:
                result = solve(env, seed=seed, debug=False, vis=False)
            except Exception as exc:  # the solutions raise on unreachable poses
                result, reason = -1, f"{type(exc).__name__}: {exc}"
            if isinstance(result, int) and result == -1:
                reason = reason or "motion planner found no plan"
            elif not bool(result[-1]["success"].item()):
                reason = "plan executed but the env did not report success"
            if reason is None:
                env.flush_trajectory()
                succeeded.append(seed)
                lengths.append(int(result[-1]["elapsed_steps"].item()))
                if not shard:
                    bar.update(1)
            else:
                env.flush_trajectory(save=False)
                failed[seed] = reason
                log.info("seed %d failed: %s", seed, reason)
                if not shard and len(failed) > max_failed_seeds:
                    raise PlanningError(
                        f"{task.name}: {len(failed)} seeds failed (more than demos.max_failed_seeds="
                        f"{max_failed_seeds}); last: seed {seed}: {reason}")
            bar.set_postfix(failed=len(failed))
            if shard:
                bar.update(1)
            seed += 1
    finally:
        bar.close()
        env.close()
    record_replay_settings(out_dir / f"{TRAJECTORY_NAME}.json", task)
    report = {
        "task": task.name,
        "env_id": task.spec.env_id,
        "control_mode": task.control_mode,
        "num_demos": len(succeeded),
        "succeeded_seeds": succeeded,
        "failed_seeds": {str(k): v for k, v in failed.items()},
        "episode_lengths": lengths,
        **({"seed_range": [seed_start, seed_stop]} if shard else {}),
        **({"split": split} if split != "train" else {}),
        "seconds": round(time.time() - started, 2),
        "git_sha": git_sha(),
        "code_id": code_id(),
        "versions": package_versions(),
        "created_utc": utc_now(),
    }
    (out_dir / "plan_report.json").write_text(json.dumps(report, indent=2))
    log.info("%s: %d demos planned, %d seeds failed, %.1f s", task.name, len(succeeded),
             len(failed), report["seconds"])
    return report
