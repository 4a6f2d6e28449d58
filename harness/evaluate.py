"""Evaluation: the harness rolls out a trained method under the protocol and keeps the score.

Per (method, task), the rollouts of ``harness.protocol.Protocol``: initial states from fixed
env seeds x policy seeds (RDT/PAR: 25 x 5 = 125). A rollout succeeds as soon as
the env reports success; it ends there or at the episode cap. Every rollout is one row of
a long-form CSV with its identity, outcome, protocol settings and provenance. Before any
rollout, the init-state seeds are checked against the dataset's demo seeds.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.protocol import Protocol, check_no_leakage, prompt_episodes, rollout_seed
from harness.runs import (RUN_CONFIG, check_pretrained, check_run_task, check_run_weights, load_trained,
                          pretrained_columns, read_run_config, run_normalizers)

log = logging.getLogger(__name__)

ROW_FIELDS = [
    "task", "method", "variant", "policy_seed", "init_state_seed", "success", "success_step",
    "episode_len", "seconds", "scale", "control_mode", "camera", "image_height", "image_width",
    "max_episode_steps", "num_init_states", "num_policy_seeds", "train_seed", "run_dir",
    "dataset", "git_sha", "train_git_sha", "code_id", "method_id", "train_code_id", "train_method_id",
    "config_hash", "versions", "pretrained_weights", "action_pretrained", "prompt_demo_seeds",
]


class EvaluationError(HarnessError, ValueError):
    """An evaluation asked for outside its run or protocol (a block of initial states the
    protocol does not have); the message names the argument."""


class CodeMismatchError(HarnessError):
    """A run evaluated by other method code than trained it, where the same code is required."""


def check_method_code(run_dir: Path, run_config: dict, require_same: bool = False) -> dict:
    """The code identities of the run's rollout rows (``harness.provenance.run_code_ids``).
    Where the run was trained by other method code than evaluates it now: a warning naming the
    files that changed (the rows carry both ids, and every table and report cell of them is
    marked), or, with ``require_same``, a refusal."""
    from harness.provenance import CodeState, run_code_ids
    from harness.runs import run_adapter

    adapter_cls, run_config = run_adapter(run_config)
    ids, difference = run_code_ids(run_config, CodeState(), adapter_cls.__module__)
    if difference is None:
        return ids
    message = f"{run_dir} {difference}"
    if require_same:
        raise CodeMismatchError(f"{message}. Retrain the run at this code, or evaluate it at the code "
                                "that trained it (git checkout of its commit), or drop --require-same-code "
                                "(evaluation.require_same_code) to evaluate it with its rows marked")
    log.warning("%s. Its rows carry both ids, and every table and report cell of them is marked.", message)
    return ids


class Observer:
    """Builds the observation dict an adapter sees, from the env, as the dataset was built."""

    def __init__(self, env, camera: str, qpos_normalizer, instruction: str, device):
        self.env, self.camera, self.qpos, self.instruction, self.device = (
            env, camera, qpos_normalizer, instruction, device)

    def __call__(self, step: int) -> tuple[dict, np.ndarray]:
        import torch

        from harness.sim import capture_rgb, robot_qpos

        image = capture_rgb(self.env, self.camera)
        frame = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float().div_(255.0)
        qpos = self.qpos.normalize(torch.from_numpy(robot_qpos(self.env)).to(self.device))
        return {"frame": frame, "qpos": qpos, "instruction": self.instruction, "step": step}, image


class Prompter:
    """The prompt demonstrations of an in-context method's rollouts (``Adapter.prompt_demos``):
    episodes of the run's training dataset chosen from the policy seed
    (``harness.protocol.prompt_episodes``), normalised as the run trained."""

    def __init__(self, run_config: dict, k: int, device="cpu"):
        from harness.dataset import DemoDataset
        from harness.runs import run_normalizers

        self.k, self.device = k, device
        self.dataset = DemoDataset(run_config["dataset"]) if k > 0 else None
        self.norms = run_normalizers(run_config) if k > 0 else None
        self._cache: dict[int, list[dict]] = {}

    def __call__(self, policy_seed: int) -> list[dict]:
        if self.k == 0:
            return []
        if policy_seed not in self._cache:  # rollouts come grouped by policy seed: keep one
            self._cache = {policy_seed: [self.demo(e) for e in
                                         prompt_episodes(policy_seed, self.dataset.num_episodes, self.k)]}
        return self._cache[policy_seed]

    def demo(self, e: int) -> dict:
        """Episode ``e`` of the training dataset as ``Adapter.prompt`` receives it."""
        import torch

        ds = self.dataset
        obs = slice(ds.obs_start[e], ds.obs_start[e] + ds.num_steps[e] + 1)
        act = slice(ds.act_start[e], ds.act_start[e] + ds.num_steps[e])
        frames = torch.from_numpy(ds.episode_frames(e)).to(self.device)
        return {"frames": frames.permute(0, 3, 1, 2).float().div_(255.0),
                "qpos": self.norms.qpos.normalize(torch.as_tensor(ds.qpos[obs], dtype=torch.float32,
                                                                  device=self.device)),
                "actions": self.norms.actions.normalize(torch.as_tensor(ds.actions[act], dtype=torch.float32,
                                                                        device=self.device)),
                "seed": int(ds.seeds[e]), "episode": e}

    @staticmethod
    def seeds_column(demos: list[dict]) -> str:
        """The rollout row's ``prompt_demo_seeds``: the demos' env seeds as a JSON list, "" if none."""
        return json.dumps([d["seed"] for d in demos]) if demos else ""


def run_rollout(env, adapter, observe: Observer, action_normalizer, cap: int,
                policy_seed: int, init_state_seed: int, record: bool = False,
                prompter: Prompter | None = None) -> dict:
    """One episode from the init state of ``init_state_seed``; returns the outcome."""
    import torch

    seed = rollout_seed(policy_seed, init_state_seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    env.reset(seed=init_state_seed)
    adapter.reset()
    demos = prompter(policy_seed) if prompter is not None else []
    if demos:
        adapter.prompt(demos)
    queue: list[np.ndarray] = []
    frames = []
    success_step = None
    steps = 0
    with torch.no_grad():
        for step in range(cap):
            obs, image = observe(step)
            if record:
                frames.append(image)
            if not queue:
                chunk = action_normalizer.unnormalize(adapter.act(obs).float())
                queue = list(chunk.reshape(-1, chunk.shape[-1]).cpu().numpy())
            else:
                adapter.observe(obs)
            _, _, _, truncated, info = env.step(queue.pop(0))
            steps = step + 1
            if bool(np.asarray(info["success"]).reshape(-1)[0]):
                success_step = steps
                break
            if bool(np.asarray(truncated).reshape(-1)[0]):
                break
    if record:
        frames.append(observe(steps)[1])
    return {"success": success_step is not None, "success_step": success_step,
            "episode_len": steps, "frames": frames, "prompt_demo_seeds": Prompter.seeds_column(demos)}


class EnvPool:
    """The envs one process keeps open while it evaluates several runs (``evaluate_runs``): one
    per (task, camera, image size, cap), built at its first run and reused by the next. A rollout
    begins at ``env.reset(seed=init_state_seed)``, as every rollout of a run after its first
    already does on the one env its worker builds, so a reused env gives the same rollouts."""

    def __init__(self):
        self._envs: dict[tuple, object] = {}

    def get(self, task_info: dict, max_episode_steps: int):
        from harness.sim import make_env

        key = (task_info["env_id"], task_info["control_mode"], task_info["camera"],
               tuple(task_info["image_size"]), max_episode_steps)
        if key not in self._envs:
            self._envs[key] = make_env(task_info["env_id"], task_info["control_mode"], task_info["camera"],
                                       tuple(task_info["image_size"]), max_episode_steps=max_episode_steps)
        return self._envs[key]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def open_rollout(run_dir: str | Path, task_info: dict, max_episode_steps: int, envs: EnvPool | None = None):
    """The trained adapter of ``run_dir`` on CPU, an env of the task, and what a rollout needs.

    Returns ``(adapter, env, observe, action_normalizer)``; the caller closes ``env``, unless it
    came from ``envs`` (the pool's owner closes it). The normalisation is the run's stored
    statistics, exactly as training used them.
    """
    adapter, run_config = load_trained(run_dir, device="cpu")
    norms = run_normalizers(run_config)
    env = (envs or EnvPool()).get(task_info, max_episode_steps)
    observe = Observer(env, task_info["camera"], norms.qpos, run_config["data_info"]["instruction"], "cpu")
    return adapter, env, observe, norms.actions


def task_info_of(meta: dict) -> dict:
    """What a rollout needs to know of a task, from its dataset's metadata."""
    return {k: meta[k] for k in ("env_id", "control_mode", "camera", "image_size", "task")}


def _worker(args) -> list[dict]:
    run_dir, jobs, protocol, task_info, video_dir, envs = args
    import torch

    torch.set_num_threads(1)  # one core per worker; workers run in parallel
    adapter, env, observe, actions = open_rollout(run_dir, task_info, protocol.max_episode_steps, envs)
    run_config = json.loads((Path(run_dir) / RUN_CONFIG).read_text())
    prompter = Prompter(run_config, type(adapter).prompt_demos(adapter.config))
    out = []
    try:
        for index, (policy_seed, init_seed) in jobs:
            start = time.time()
            record = index < protocol.video_rollouts
            result = run_rollout(env, adapter, observe, actions, protocol.max_episode_steps,
                                 policy_seed, init_seed, record=record, prompter=prompter)
            if record and video_dir:
                _save_video(result["frames"], Path(video_dir) / f"policy{policy_seed}_init{init_seed}.mp4")
            result.pop("frames")
            out.append(dict(result, policy_seed=policy_seed, init_state_seed=init_seed,
                            seconds=round(time.time() - start, 3)))
    finally:
        if envs is None:
            env.close()
    return out


def _save_video(frames: list[np.ndarray], path: Path) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=20)


def evaluate(run_dir: str | Path, protocol: Protocol, out_csv: str | Path, *,
             identity: dict | None = None, progress: bool = True,
             init_states: tuple[int, int] | None = None, require_same_code: bool = False,
             task: str | None = None, envs: EnvPool | None = None) -> Path:
    """Roll out the trained run in ``run_dir`` under ``protocol``; write one row per rollout.
    ``init_states``: only the protocol's initial states [a, b) (by index), a block of a sharded
    evaluation (harness.shards.gather_rollouts puts the blocks together). ``require_same_code``:
    refuse a run trained by other method code than evaluates it (``check_method_code``). ``task``:
    the task asked for, refused unless it is the run's own (a run is evaluated on its own task).
    ``envs``: take the env from this pool and leave it open (one worker only; ``evaluate_runs``)."""
    from tqdm import tqdm

    from harness.dataset import DemoDataset
    from harness.provenance import git_sha, package_versions

    run_dir, out_csv = Path(run_dir), Path(out_csv)
    if init_states is not None:
        a, b = init_states
        n = protocol.num_init_states
        if not 0 <= a < b <= n:
            raise EvaluationError(f"--init-states {a} {b}: a block needs 0 <= START < STOP <= {n}, the protocol's "
                                  f"initial states by index (evaluation.num_init_states: {n}); --init-states 0 {n} "
                                  "is all of them")
    eval_sha = git_sha()  # the code that runs the rollouts, taken before they start
    run_config = read_run_config(run_dir)
    if task is not None:
        check_run_task(run_dir, run_config, task)
    code_ids = check_method_code(run_dir, run_config, require_same_code)
    check_run_weights(run_dir)  # a damaged weights file fails here, by name, before any env starts
    check_pretrained(run_config, run_dir)  # so do pretrained files changed since training
    dataset_path = run_config["dataset"]
    meta = DemoDataset(dataset_path).meta
    check_no_leakage(meta, protocol, dataset_path)
    task_info = task_info_of(meta)
    if task is not None:  # a run from before run_config.json recorded its task: its dataset's
        check_run_task(run_dir, {**run_config, "task": task_info["task"]}, task)

    jobs = list(enumerate(protocol.jobs()))  # the index (video order) is the protocol's, in a block too
    if init_states is not None:
        a, b = init_states
        block = set(protocol.init_state_seeds[a:b])
        jobs = [(i, job) for i, job in jobs if job[1] in block]
    workers = max(1, min(protocol.workers, len(jobs)))
    shards = [jobs[i::workers] for i in range(workers)]
    video_dir = out_csv.with_suffix("").as_posix() + "_videos" if protocol.video_rollouts else None
    args = [(str(run_dir), shard, protocol, task_info, video_dir, envs if workers == 1 else None)
            for shard in shards]
    results = []
    bar = tqdm(total=len(jobs), desc=f"eval {run_config['method']} {task_info['task']}", unit="rollout",
               disable=not progress)
    if workers == 1:
        for a in args:
            results.extend(_worker(a))
            bar.update(len(a[1]))
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap_unordered(_worker, args):
                results.extend(part)
                bar.update(len(part))
    bar.close()

    identity = identity or {}
    common = {
        "task": task_info["task"], "method": run_config["method"],
        "variant": run_config.get("variant") or "", "scale": meta.get("scale", ""),
        "control_mode": task_info["control_mode"], "camera": task_info["camera"],
        "image_height": task_info["image_size"][0], "image_width": task_info["image_size"][1],
        "max_episode_steps": protocol.max_episode_steps, "num_init_states": protocol.num_init_states,
        "num_policy_seeds": len(protocol.policy_seeds), "train_seed": run_config["seed"],
        "run_dir": str(run_dir), "dataset": dataset_path, "git_sha": eval_sha,
        "train_git_sha": run_config.get("git_sha", ""), **code_ids,
        "config_hash": identity.get("config_hash", ""),
        "versions": json.dumps(package_versions(), sort_keys=True),
        **pretrained_columns(run_config),
    }
    common.update({k: v for k, v in identity.items() if k in ROW_FIELDS})
    results.sort(key=lambda r: (r["policy_seed"], r["init_state_seed"]))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(out_csv.name + ".partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        writer.writeheader()
        for r in results:
            writer.writerow({**common, **{k: r[k] for k in ("policy_seed", "init_state_seed", "success",
                                                            "success_step", "episode_len", "seconds",
                                                            "prompt_demo_seeds")},
                             "success": int(r["success"]),
                             "success_step": "" if r["success_step"] is None else r["success_step"]})
    tmp.replace(out_csv)
    rate = np.mean([r["success"] for r in results]) if results else float("nan")
    log.info("%s on %s: %d/%d rollouts succeeded (%.1f%%) -> %s", run_config["method"],
             task_info["task"], sum(r["success"] for r in results), len(results), 100 * rate, out_csv)
    (out_csv.with_suffix(".protocol.json")).write_text(json.dumps(asdict(protocol), indent=2))
    return out_csv


def evaluate_runs(runs: list, protocol: Protocol, outs: list, **kwargs) -> list[Path]:
    """``evaluate`` each run into its own file, in one process: each task's env is built once
    (``EnvPool``), each run's adapter is loaded in turn. What a job evaluating several cells
    runs (``evaluation.one_job_per_task``), where a cell's rollouts are shorter than a process's
    start-up. A run that fails is logged and the others still run; then the error names every
    run that failed."""
    if len(runs) != len(outs):
        raise EvaluationError(f"{len(runs)} runs and {len(outs)} output files: give one --out per --run, in order")
    envs, failed, written = EnvPool(), [], []
    try:
        for run_dir, out_csv in zip(runs, outs):
            try:
                written.append(evaluate(run_dir, protocol, out_csv, envs=envs, **kwargs))
            except Exception as exc:  # noqa: BLE001 -- the others still run; all failures are named below
                log.exception("evaluating %s failed", run_dir)
                failed.append(f"{run_dir}: {exc}")
                envs.close()  # a rollout that failed may have left its env broken: the next run builds its own
    finally:
        envs.close()
    if failed:
        raise EvaluationError(f"{len(failed)} of {len(runs)} runs failed to evaluate (the others' rollouts are "
                              "written):\n  " + "\n  ".join(failed))
    return written
