"""Rendering datasets from recorded env states (no re-simulation).

For each planned episode the env is reset with the episode's seed (which builds the same
scene), then every recorded state is set and the observation camera captures one frame.
Physics never runs, so frames match the recorded trajectory exactly and cost only the
render itself. ``verify_against_replay`` checks this against ManiSkill's own
``replay_trajectory -o rgb --use-env-states`` on the same episodes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.config import ResolvedTask
from harness.dataset import DatasetError, Episode, encode_image, write_dataset
from harness.provenance import code_id, git_sha, package_versions, utc_now

log = logging.getLogger(__name__)


def _h5_to_dict(group):
    import h5py

    return {k: _h5_to_dict(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}


def state_at(states: dict, t: int) -> dict:
    """The env state dict of step ``t`` from the stacked states of an episode."""
    return {k: state_at(v, t) if isinstance(v, dict) else v[t] for k, v in states.items()}


def load_trajectories(traj_h5: str | Path) -> tuple[dict, list[dict]]:
    """ManiSkill's trajectory json (env info) and its episode records."""
    for path in (Path(traj_h5), Path(traj_h5).with_suffix(".json")):
        if not path.is_file():
            raise DatasetError(f"planned trajectories {path} do not exist. Plan them: `python -m harness plan-demos "
                               f"--task <Task> --out-dir {path.parent}`, or in the workflow "
                               f"`snakemake --cores 1 {path} --config scale=<scale>`")
    info = json.loads(Path(traj_h5).with_suffix(".json").read_text())
    return info, info["episodes"]


@dataclass(frozen=True)
class RenderJob:
    """What one worker renders: settings plus the episode ids it owns."""

    traj_h5: str
    env_id: str
    control_mode: str
    camera: str
    image_size: tuple[int, int]
    codec: str
    quality: int
    episode_ids: tuple[int, ...]


def render_episode_frames(env, traj_file, episode: dict, camera: str):
    """Raw frames (T+1, H, W, 3) uint8, qpos (T+1, Q) and actions (T, A) of one episode."""
    from harness.sim import capture_rgb, robot_qpos

    group = traj_file[f"traj_{episode['episode_id']}"]
    states = _h5_to_dict(group["env_states"])
    actions = group["actions"][()].astype(np.float32)
    env.reset(**(episode.get("reset_kwargs") or {"seed": episode["episode_seed"]}))
    base = env.unwrapped
    frames, qpos = [], []
    for t in range(len(actions) + 1):
        base.set_state_dict(state_at(states, t))
        frames.append(capture_rgb(env, camera))
        qpos.append(robot_qpos(env))
    return np.stack(frames), np.stack(qpos), actions


def _render_worker(job: RenderJob) -> list[Episode]:
    import h5py

    from harness.sim import make_env

    env = make_env(job.env_id, job.control_mode, job.camera, job.image_size)
    _, episodes = load_trajectories(job.traj_h5)
    by_id = {ep["episode_id"]: ep for ep in episodes}
    out = []
    try:
        with h5py.File(job.traj_h5, "r") as f:
            for eid in job.episode_ids:
                ep = by_id[eid]
                frames, qpos, actions = render_episode_frames(env, f, ep, job.camera)
                encoded = [encode_image(im, job.codec, job.quality) for im in frames]
                out.append(Episode(seed=int(ep["episode_seed"]), frames=encoded, qpos=qpos,
                                   actions=actions))
    finally:
        env.close()
    return out


def render_dataset(task: ResolvedTask, traj_h5: str | Path, out_path: str | Path, *,
                   codec: str = "jpeg", quality: int = 95, workers: int = 1,
                   extra_meta: dict | None = None, progress: bool = True,
                   episode_range: tuple[int, int] | None = None) -> Path:
    """Render every episode of ``traj_h5`` (or those at positions [a, b) of it: ``episode_range``, a
    shard, harness.shards) and write the dataset to ``out_path``."""
    from tqdm import tqdm

    traj_h5 = Path(traj_h5)
    info, episodes = load_trajectories(traj_h5)
    if info["env_info"].get("env_id", task.spec.env_id) != task.spec.env_id:
        raise DatasetError(f"{traj_h5} holds {info['env_info']['env_id']} demos, and --task {task.name} renders "
                           f"{task.spec.env_id}: pass that plan's task, or the trajectories planned for {task.name}")
    control_mode = info["env_info"]["env_kwargs"].get("control_mode")
    if control_mode != task.control_mode:
        raise DatasetError(f"{traj_h5} was recorded with control mode {control_mode!r}, "
                           f"the config asks for {task.control_mode!r}")
    ids = [ep["episode_id"] for ep in episodes]
    if episode_range is not None:
        a, b = episode_range
        if not 0 <= a < b <= len(ids):
            raise DatasetError(f"--episodes {a} {b}: the block needs 0 <= START < STOP <= {len(ids)}, the "
                               f"episodes {traj_h5} holds")
        ids = ids[a:b]
    # small jobs keep the progress bar moving and balance workers; each job builds one env
    per_job = max(1, min(25, -(-len(ids) // max(1, workers))))
    jobs = [RenderJob(str(traj_h5), task.spec.env_id, task.control_mode, task.camera,
                      tuple(task.image_size), codec, quality, tuple(ids[i:i + per_job]))
            for i in range(0, len(ids), per_job)]
    started = time.time()
    rendered: list[Episode] = []
    bar = tqdm(total=len(ids), desc=f"render {task.name}", unit="demo", disable=not progress)
    if workers <= 1:
        for job in jobs:
            rendered.extend(_render_worker(job))
            bar.update(len(job.episode_ids))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(_render_worker, jobs):  # imap keeps episode order
                rendered.extend(result)
                bar.update(len(result))
    bar.close()
    seconds = time.time() - started
    frame_bytes = sum(len(f) for ep in rendered for f in ep.frames)
    meta = {
        "task": task.name,
        "env_id": task.spec.env_id,
        "instruction": task.spec.instruction,
        "control_mode": task.control_mode,
        "camera": task.camera,
        "image_size": list(task.image_size),
        "image_codec": codec,
        "jpeg_quality": quality if codec == "jpeg" else None,
        "source_trajectories": str(traj_h5),
        "render_seconds": round(seconds, 2),
        "git_sha": git_sha(),
        "code_id": code_id(),
        "versions": package_versions(),
        "created_utc": utc_now(),
        **(extra_meta or {}),
    }
    path = write_dataset(out_path, rendered, meta)
    n_frames = sum(len(ep.frames) for ep in rendered)
    log.info("%s: %d episodes, %d frames rendered in %.1f s (%.1f frames/s); frames %.1f MB",
             task.name, len(rendered), n_frames, seconds, n_frames / max(seconds, 1e-9),
             frame_bytes / 1e6)
    return path


def replay_with_maniskill(traj_h5: str | Path, count: int, camera: str,
                          image_size: tuple[int, int], workdir: str | Path) -> Path:
    """Run ManiSkill's ``replay_trajectory -o rgb --use-env-states`` on the first ``count``
    episodes, with ``camera`` at ``image_size``; returns the h5 file it writes."""
    workdir = Path(workdir)
    if ".h5" in str(workdir):  # replay_trajectory finds its JSON by replacing every ".h5" in the path
        raise ValueError(f"ManiSkill's replay_trajectory cannot read trajectories in {workdir}: its "
                         "JSON path replaces every '.h5' of the path; use a TMPDIR without '.h5' in it")
    from mani_skill.trajectory import replay_trajectory as rt

    workdir.mkdir(parents=True, exist_ok=True)
    src = Path(traj_h5)
    copy_h5 = workdir / src.name
    shutil.copyfile(src, copy_h5)
    info = json.loads(src.with_suffix(".json").read_text())
    height, width = image_size
    info["env_info"]["env_kwargs"]["sensor_configs"] = {camera: dict(width=width, height=height)}
    copy_h5.with_suffix(".json").write_text(json.dumps(info))
    args = rt.Args(traj_path=str(copy_h5), obs_mode="rgb", use_env_states=True, save_traj=True,
                   count=count, sim_backend="physx_cpu")
    rt.main(args)
    out = sorted(workdir.glob(f"{copy_h5.stem}.rgb.*.h5"))
    if not out:
        raise RuntimeError(f"replay_trajectory wrote no output in {workdir}")
    return out[0]


# poses agreeing this closely (1 micrometre / microradian; float32 noise) look the same ...
POSE_TOLERANCE = 1e-6
# ... up to one 8-bit level of shading: measured on the reduced PushCube demos at 128x128, a
# 0.4 micrometre cube offset left every pixel equal but one, which was one level brighter ...
PIXEL_TOLERANCE = 1
# ... except where an edge crosses a pixel centre: such an offset moves an edge by a tiny
# fraction of a pixel, and the few pixels whose centres it crosses flip colour whole. The
# count grows with the pixel count (edge length x the offset in pixels). Measured on the
# rehearsal's PushCube demo at 512x512: 9 frames at offsets of ~4e-7 differed in 1 or 2 of
# 262,144 pixels (up to 137 levels), where a 0.9 mm offset already changed 82 pixels, and
# frames rendered one step stale (a rendering bug) changed a median 5,411 (44 of 47 frames over
# 26); 1e-4 of the frame allows 26 pixels at 512x512 and 1 at 128x128
EDGE_PIXEL_FRACTION = 1e-4
MIN_COMPARABLE_FRAMES = 10


def _pose_deviation(ours: dict, theirs: dict, t: int) -> float:
    """Largest difference at step ``t`` in what rendering sees: actor poses and articulation
    root poses + joint positions (ManiSkill state rows: actors [pos 3, quat 4, lin vel 3,
    ang vel 3]; articulations [the same 13 for the root, qpos n, qvel n]). Velocities are
    ignored: they do not change an image."""
    worst = 0.0
    for key, value in ours.items():
        if isinstance(value, dict):
            worst = max(worst, _pose_deviation(value, theirs[key], t))
            continue
        row, other = value[t], theirs[key][t]
        dof = (len(row) - 13) // 2
        cols = np.r_[0:7, 13:13 + dof]
        worst = max(worst, float(np.abs(row[cols] - other[cols]).max()))
    return worst


def compare_frames(ours: np.ndarray, ref: np.ndarray, deviation: np.ndarray) -> dict:
    """One episode's frames (T, H, W, 3) uint8 rendered by us and by replay_trajectory, with the
    pose deviation between the recorded and the replayed state at each step. A frame whose
    poses agree (``POSE_TOLERANCE``) is a mismatch when more than ``EDGE_PIXEL_FRACTION`` of
    its pixels differ by more than ``PIXEL_TOLERANCE`` levels."""
    full = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    diff = full.max(-1)  # (T, H, W)
    frame_max = diff.reshape(len(diff), -1).max(1)
    changed = (diff > PIXEL_TOLERANCE).reshape(len(diff), -1).sum(1)
    budget = int(EDGE_PIXEL_FRACTION * diff[0].size)
    differs = frame_max > 0
    same_state = deviation <= POSE_TOLERANCE
    return {
        "frames": int(len(ours)),
        "frames_with_identical_poses": int(same_state.sum()),
        "identical_frames": int((~differs).sum()),
        "edge_pixel_budget": budget,
        "mismatches_at_identical_poses": np.flatnonzero(same_state & (changed > budget)).tolist(),
        "max_pixel_diff_at_identical_poses": int(frame_max[same_state].max()) if same_state.any() else 0,
        "max_changed_pixels_at_identical_poses": int(changed[same_state].max()) if same_state.any() else 0,
        "differing_frame_steps": np.flatnonzero(differs).tolist(),
        "max_pose_deviation_at_differing_frames": float(deviation[differs].max()) if differs.any() else 0.0,
        "mean_abs_diff": float(full.mean()),
    }


def verify_against_replay(task: ResolvedTask, traj_h5: str | Path, count: int = 1,
                          camera: str = "base_camera") -> dict:
    """Render the first ``count`` episodes from states with our code and with ManiSkill's
    replay_trajectory, through the same sensor camera, and compare frame by frame.

    replay_trajectory steps physics from recorded state t and only then restores state t+1,
    so its frame t+1 shows the *re-simulated* state; contact-rich steps (a pushed cube) do not
    re-simulate bit-exactly. The check therefore is: every frame whose replayed poses equal
    the recorded ones (within POSE_TOLERANCE) must equal ours pixel for pixel, within
    PIXEL_TOLERANCE levels, but for the few edge pixels a float32 offset flips
    (``compare_frames``); frames after physics drift are reported with their pose deviation.
    """
    import h5py

    from harness.sim import make_env

    info, episodes = load_trajectories(traj_h5)
    episodes = episodes[:count]
    report = {"camera": camera, "image_size": list(task.image_size), "episodes": []}
    with tempfile.TemporaryDirectory(prefix="replay-verify-") as tmp:
        replay_h5 = replay_with_maniskill(traj_h5, count, camera, task.image_size, tmp)
        env = make_env(task.spec.env_id, task.control_mode, camera, task.image_size)
        try:
            with h5py.File(traj_h5, "r") as ours_src, h5py.File(replay_h5, "r") as theirs:
                for ep in episodes:
                    key = f"traj_{ep['episode_id']}"
                    ours, _, _ = render_episode_frames(env, ours_src, ep, camera)
                    ref = theirs[f"{key}/obs/sensor_data/{camera}/rgb"][()]
                    if ref.shape != ours.shape:
                        raise AssertionError(f"episode {ep['episode_id']}: frames {ours.shape} "
                                             f"vs replay_trajectory {ref.shape}")
                    recorded = _h5_to_dict(ours_src[f"{key}/env_states"])
                    replayed = _h5_to_dict(theirs[f"{key}/env_states"])
                    deviation = np.array([_pose_deviation(recorded, replayed, t)
                                          for t in range(len(ours))])
                    report["episodes"].append({"episode_id": ep["episode_id"],
                                               **compare_frames(ours, ref, deviation)})
        finally:
            env.close()
    bad = [r for r in report["episodes"] if r["mismatches_at_identical_poses"]]
    # the check means something only where replay reproduced the recorded poses on some frames
    vacuous = [r for r in report["episodes"]
               if r["frames_with_identical_poses"] < min(MIN_COMPARABLE_FRAMES, r["frames"])]
    report["passed"] = not bad and not vacuous
    if not report["passed"]:
        raise AssertionError(f"{task.name}: rendering from states does not match ManiSkill's "
                             f"replay_trajectory where the poses agree: {report}")
    return report
