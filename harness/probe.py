"""The offline probe: how a trained policy's action chunks compare with the expert's on held-out
demonstrations, before (and besides) paying for rollouts.

Held-out demos (``demos.num_val_demos``, planned from ``TaskSpec.val_seed_start``, their dataset
marked ``split: validation``) are replayed through the method's own rollout interface, teacher
forced: at each step where the method asks for actions (``Adapter.act``) it gets the demo's
observation; the demo's actions are then executed in place of its chunk
(``Adapter.executed``, so a method that conditions on its own past actions sees the expert's),
and the observations in between are shown with ``Adapter.observe``. Every ``act`` call is a
probe point. Reported, in the training dataset's standard units (each action dimension minus
its mean, over its std, whatever normalisation the method trains with), per action dimension
(7 joints + gripper) and over all:

- ``rmse``: the open-loop chunk's error against the expert's next actions (the steps it would
  execute; those past the demo's end are left out), over every probe point after the first
  (where the baselines are defined); ``first_call_rmse``: the same at step 0;
- two baselines at the same points: ``hold_last`` (the last executed action held for the whole
  chunk) and ``repeat_chunk`` (the previous chunk's actions again);
- ``seed_spread``: the standard deviation of the chunk across sampling seeds (the torch and
  numpy seeds set before each call), averaged over points: 0 for a deterministic policy;
- ``output_spread``: per dimension, how much the predictions vary over all points against
  how much the expert's do; a dimension below ``DEAD_SPREAD`` is dead (``dead_dimensions``:
  a saturated tanh unit, a head stuck at a constant), and training warns about it;
- sensitivity: the RMS change of the chunk (same sampling seed) when, at that call only, the
  current frame (``frame_swap``) or the current joint positions (``qpos_swap``) are replaced by
  another held-out episode's at the same step (episode i takes episode i+1's), and when the
  whole action history is the other episode's (``history_swap``: the actions executed before
  are that episode's, at the same steps). ``episode_gap`` is what swapping the episode changes
  in the expert's own chunk: a policy that reads the input as the expert does moves about that
  much.

Used by ``python -m harness probe`` (any run, any checkpoint) and by training, which logs
``val_rmse`` and ``val_dead_dims`` at every checkpoint (``harness.train``).
"""

from __future__ import annotations

import copy
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

log = logging.getLogger(__name__)

VALIDATION_SPLIT = "validation"


class ProbeError(HarnessError):
    """A probe that cannot run as asked; the message names the file and what to do."""


def check_validation_set(val, train_meta: dict, train_seeds=None) -> None:
    """``val`` (a DemoDataset) holds held-out demos of the run's task and images: its split is
    ``validation``, its task, control mode and image size are the training dataset's, and none of
    its seeds is a training seed."""
    from harness.tasks import check_seed_ranges_disjoint, eval_init_state_seeds

    if val.meta.get("split") != VALIDATION_SPLIT:
        raise ProbeError(f"{val.path} is not a validation dataset (its split is "
                         f"{val.meta.get('split', 'train')!r}); build one with `plan-demos --split validation` "
                         "and `render-dataset`, or the workflow's outputs/<scale>/datasets/<Task>.val.h5")
    for key in ("task", "control_mode", "image_size"):
        if train_meta.get(key) is not None and val.meta.get(key) != train_meta.get(key):
            raise ProbeError(f"{val.path} has {key} {val.meta.get(key)!r}; the run trained on "
                             f"{train_meta.get(key)!r}. Use the validation dataset of the run's task and scale")
    shared = sorted(set(int(s) for s in val.seeds) & set(int(s) for s in (train_seeds if train_seeds is not None else [])))
    if shared:
        raise ProbeError(f"{val.path} shares seeds {shared[:5]} with the training dataset: not held out")
    check_seed_ranges_disjoint([int(s) for s in val.seeds], eval_init_state_seeds())


@dataclass
class Demo:
    """One held-out episode, as the probe feeds it."""

    frames: np.ndarray
    """(T+1, H, W, 3) uint8."""
    qpos: np.ndarray
    """(T+1, Q) raw."""
    actions: np.ndarray
    """(T, A) raw."""

    @property
    def steps(self) -> int:
        return len(self.actions)


def load_demos(val) -> list[Demo]:
    out = []
    for e in range(val.num_episodes):
        obs = slice(val.obs_start[e], val.obs_start[e] + val.num_steps[e] + 1)
        act = slice(val.act_start[e], val.act_start[e] + val.num_steps[e])
        out.append(Demo(val.episode_frames(e), np.asarray(val.qpos[obs]), np.asarray(val.actions[act])))
    return out


@dataclass
class _Pass:
    """Every probe point of one teacher-forced pass: (episode, step) -> chunk (k, A), raw units."""

    chunks: dict = field(default_factory=dict)
    frame_swap: dict = field(default_factory=dict)
    qpos_swap: dict = field(default_factory=dict)


class Prober:
    """Replays held-out demos through a policy (``Adapter`` in eval mode), teacher forced."""

    def __init__(self, policy, demos: list[Demo], norms, device="cpu", prompt: list[dict] | None = None):
        self.policy, self.demos, self.norms, self.device = policy, demos, norms, device
        self.prompt = prompt or []

    def _obs(self, demo: Demo, t: int, frame_from: Demo | None = None, qpos_from: Demo | None = None) -> dict:
        import torch

        fd = frame_from or demo
        qd = qpos_from or demo
        frame = torch.from_numpy(fd.frames[min(t, fd.steps)]).to(self.device).permute(2, 0, 1).float().div_(255.0)
        qpos = self.norms.qpos.normalize(torch.as_tensor(qd.qpos[min(t, qd.steps)], dtype=torch.float32,
                                                         device=self.device))
        return {"frame": frame, "qpos": qpos, "instruction": self._instruction, "step": t}

    def _act(self, policy, obs: dict, seed: int):
        import torch

        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        out = policy.act(obs).float()
        return self.norms.actions.unnormalize(out).reshape(-1, out.shape[-1]).cpu().numpy()

    def run(self, instruction: str, seed: int = 0, history_from_other: bool = False,
            branches: bool = False) -> _Pass:
        """One pass over every demo. ``history_from_other``: execute the other episode's actions
        (at the same steps) in place of this one's; ``branches``: also each call with the frame,
        and with the qpos, swapped (on a copy of the policy, with the same sampling seed)."""
        import torch

        self._instruction = instruction
        result = _Pass()
        n = len(self.demos)
        with torch.no_grad():
            for e, demo in enumerate(self.demos):
                other = self.demos[(e + 1) % n]
                self.policy.reset()
                if self.prompt:
                    self.policy.prompt(self.prompt)
                t = 0
                while t < demo.steps:
                    obs = self._obs(demo, t)
                    point_seed = zlib.crc32(f"probe/{seed}/{e}/{t}".encode())
                    before = copy.deepcopy(self.policy) if branches else None
                    chunk = self._act(self.policy, obs, point_seed)
                    if branches:
                        result.frame_swap[e, t] = self._act(copy.deepcopy(before), self._obs(demo, t, frame_from=other),
                                                            point_seed)
                        result.qpos_swap[e, t] = self._act(before, self._obs(demo, t, qpos_from=other), point_seed)
                    result.chunks[e, t] = chunk
                    k = min(len(chunk), demo.steps - t)
                    source = other if history_from_other else demo
                    executed = source.actions[np.minimum(np.arange(t, t + k), source.steps - 1)]
                    self.policy.executed(self.norms.actions.normalize(
                        torch.as_tensor(executed, dtype=torch.float32, device=self.device)))
                    for j in range(1, k):
                        self.policy.observe(self._obs(demo, t + j))
                    t += k
        return result


def _rms(sq_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.sqrt(sq_sum / np.maximum(count, 1))


class _Acc:
    """Per-dimension sums of squares (or of values) and counts."""

    def __init__(self, dim: int):
        self.s, self.n = np.zeros(dim), np.zeros(dim)

    def add(self, values: np.ndarray, square: bool = True) -> None:
        v = values.reshape(-1, values.shape[-1])
        self.s += (v ** 2 if square else v).sum(0)
        self.n += len(v)

    def rms(self) -> dict:
        return {"overall": float(np.sqrt(self.s.sum() / max(self.n.sum(), 1))),
                "per_dim": [float(x) for x in _rms(self.s, self.n)]}

    def mean(self) -> dict:
        return {"overall": float(self.s.sum() / max(self.n.sum(), 1)),
                "per_dim": [float(x) for x in self.s / np.maximum(self.n, 1)]}


def chunk_errors(passes: list[_Pass], demos: list[Demo], z) -> dict:
    """The probe's numbers from its passes (``passes[0]``: seed 0, with branches; the others:
    further sampling seeds); ``z`` maps raw actions to standard units."""
    dim = demos[0].actions.shape[-1]
    acc = {k: _Acc(dim) for k in ("rmse", "first_call_rmse", "hold_last", "repeat_chunk", "seed_spread",
                                  "frame_swap", "qpos_swap", "episode_gap")}
    base = passes[0]
    n = len(demos)
    points = 0
    predicted, expert = [], []  # every point's chunk and target, for the output spread
    for (e, t), chunk in base.chunks.items():
        demo, other = demos[e], demos[(e + 1) % n]
        k = min(len(chunk), demo.steps - t)
        target = z(demo.actions[t:t + k])
        pred = z(chunk[:k])
        if t == 0:
            acc["first_call_rmse"].add(pred - target)
            continue
        points += 1
        predicted.append(pred)
        expert.append(target)
        acc["rmse"].add(pred - target)
        acc["hold_last"].add(z(np.repeat(demo.actions[t - 1:t], k, 0)) - target)
        acc["repeat_chunk"].add(z(demo.actions[np.maximum(np.arange(t - len(chunk), t - len(chunk) + k), 0)]) - target)
        acc["episode_gap"].add(z(other.actions[np.minimum(np.arange(t, t + k), other.steps - 1)]) - target)
        if len(passes) > 1:
            seeds = np.stack([z(p.chunks[e, t][:k]) for p in passes])
            acc["seed_spread"].add(seeds.std(0), square=False)
        for key in ("frame_swap", "qpos_swap"):
            if (e, t) in getattr(base, key):
                acc[key].add(z(getattr(base, key)[e, t][:k]) - pred)
    out = {k: acc[k].rms() for k in ("rmse", "first_call_rmse", "hold_last", "repeat_chunk", "frame_swap",
                                     "qpos_swap", "episode_gap")}
    out["seed_spread"] = acc["seed_spread"].mean()
    out["output_spread"] = output_spread(predicted, expert, dim)
    out["points"] = points
    return out


DEAD_SPREAD = 0.05
"""An output dimension whose predictions vary by less than this fraction of the expert's
variation over the probe points is dead: it answers the same whatever the input. A tanh unit
saturated beyond |x| = 3 (gradient below 1% of its peak) on every window is one (BC-T's
shoulder in issue 28 sat at -5.7); so is a head that learned only a dimension's mean."""

CONSTANT_EXPERT = 1e-6
"""An action dimension whose expert values vary by less than this (standard deviation over the
probe points, in standard units) is constant in the held-out demos: ``output_spread`` gives it
no ratio. PushCube's gripper is one: it stays closed in every demo."""


def output_spread(predicted: list, expert: list, dim: int) -> dict:
    """Per dimension, the standard deviation of the predicted actions over every probe point
    and chunk step, over the expert's at the same points (1: varies as much as the expert's;
    0: a constant). None where the expert's own is constant (below ``CONSTANT_EXPERT``: the
    gripper of a task that never opens it), which has no ratio: a policy that answers that
    constant is right, not dead."""
    if not predicted:
        return {"overall": float("nan"), "per_dim": [float("nan")] * dim}
    p, e = np.concatenate(predicted), np.concatenate(expert)
    ratio = [float(a / b) if b > CONSTANT_EXPERT else None for a, b in zip(p.std(0), e.std(0))]
    defined = [r for r in ratio if r is not None]
    return {"overall": min(defined) if defined else float("nan"), "per_dim": ratio}


def dead_dimensions(result: dict, threshold: float = DEAD_SPREAD) -> list[int]:
    """The action dimensions (0-based) the probe found dead (``DEAD_SPREAD``)."""
    return [i for i, r in enumerate(result["output_spread"]["per_dim"]) if r is not None and r < threshold]


def history_sensitivity(base: _Pass, swapped: _Pass, demos: list[Demo], z) -> dict:
    dim = demos[0].actions.shape[-1]
    acc = _Acc(dim)
    for (e, t), chunk in base.chunks.items():
        if t == 0 or (e, t) not in swapped.chunks:
            continue
        k = min(len(chunk), demos[e].steps - t)
        acc.add(z(swapped.chunks[e, t][:k]) - z(chunk[:k]))
    return acc.rms()


def standardizer(stats: dict):
    """Raw actions -> the training dataset's standard units (mean 0, std 1 per dimension): the
    harness's ``mean_std`` normalisation, whatever the method trains with, in float64."""
    from harness.windows import Normalizer

    standard = Normalizer(stats["actions"], "mean_std")
    return lambda a: standard.normalize(np.asarray(a, dtype=np.float64))


def validation_errors(policy, demos: list[Demo], norms, stats: dict, instruction: str, device="cpu",
                      prompt: list[dict] | None = None) -> dict:
    """The probe's chunk errors and output spread (seed 0, no swaps): what training logs at
    each checkpoint."""
    p = Prober(policy, demos, norms, device, prompt).run(instruction, seed=0)
    return chunk_errors([p], demos, standardizer(stats))


def probe_policy(policy, demos: list[Demo], norms, stats: dict, instruction: str, *, seeds: int = 3,
                 device="cpu", prompt: list[dict] | None = None) -> dict:
    """Every number of the probe for ``policy`` (see the module docstring)."""
    prober = Prober(policy, demos, norms, device, prompt)
    passes = [prober.run(instruction, seed=0, branches=True)]
    passes += [prober.run(instruction, seed=s) for s in range(1, seeds)]
    swapped = prober.run(instruction, seed=0, history_from_other=True)
    z = standardizer(stats)
    out = chunk_errors(passes, demos, z)
    out["history_swap"] = history_sensitivity(passes[0], swapped, demos, z)
    out["seeds"] = seeds
    out["episodes"] = len(demos)
    return out


def checkpoint_weights(run_dir: Path, checkpoint: str) -> str:
    """The weights file (relative to the run) of ``final`` or a checkpoint step (its EMA weights
    if the run keeps them, as evaluation would use)."""
    from harness.runs import FINAL_WEIGHTS, complete_checkpoints

    if checkpoint == "final":
        return FINAL_WEIGHTS
    found = {c.step: c for c in complete_checkpoints(run_dir)}
    try:
        step = int(checkpoint)
    except ValueError:
        raise ProbeError(f"--checkpoint takes 'final' or a step number, not {checkpoint!r}") from None
    if step not in found:
        raise ProbeError(f"{run_dir} has no complete checkpoint at step {step} (it keeps "
                         f"{sorted(found) or 'none'}); pass one of those or 'final'")
    folder = found[step].folder.relative_to(run_dir)
    ema = run_dir / folder / "ema.safetensors"
    return str(folder / ("ema.safetensors" if ema.exists() else "model.safetensors"))


def probe_run(run_dir: str | Path, val_path: str | Path, *, checkpoint: str = "final", seeds: int = 3,
              device: str = "cpu") -> dict:
    """The probe of a run folder's weights on a validation dataset, with what it was run on."""
    from harness.dataset import DemoDataset
    from harness.evaluate import Prompter
    from harness.provenance import CodeState
    from harness.runs import load_trained, run_normalizers

    run_dir = Path(run_dir)
    weights = checkpoint_weights(run_dir, checkpoint)
    policy, run_config = load_trained(run_dir, device, weights=weights)
    val = DemoDataset(val_path)
    train_path = Path(run_config["dataset"])
    train_seeds = DemoDataset(train_path).seeds if train_path.exists() else None
    if train_seeds is None:  # its seeds are still below val_seed_start by construction (harness.demos)
        log.warning("the run's training dataset %s is not here: its seeds are not compared with %s's",
                    train_path, val_path)
    check_validation_set(val, run_config.get("dataset_meta", {}), train_seeds)
    demos = load_demos(val)
    if len(demos) < 2:
        raise ProbeError(f"{val_path} holds {len(demos)} episode; the swaps need 2 or more "
                         "(demos.num_val_demos)")
    stats = {k: {s: np.asarray(v) for s, v in d.items()} for k, d in run_config["data_info"]["stats"].items()}
    k = type(policy).prompt_demos(policy.config)
    prompt = Prompter(run_config, k, device)(0) if k else None
    result = probe_policy(policy, demos, run_normalizers(run_config), stats,
                          run_config["data_info"]["instruction"], seeds=seeds, device=device, prompt=prompt)
    state = CodeState()
    return {"run": str(run_dir), "method": run_config["method"], "weights": weights,
            "validation": str(val_path), "validation_seeds": [int(s) for s in val.seeds],
            "train_code_id": run_config.get("code_id"), "train_method_id": run_config.get("method_id"),
            "code_id": state.code().id, "method_id": state.method_of_module(type(policy).__module__).id,
            **result}


def format_report(result: dict) -> str:
    """The probe's numbers as a Markdown table (one row per quantity, one column per dimension)."""
    dims = len(result["rmse"]["per_dim"])
    names = [f"j{i + 1}" for i in range(dims - 1)] + ["grip"]
    rows = [("chunk error (rmse)", "rmse"), ("  at step 0", "first_call_rmse"),
            ("baseline: hold last action", "hold_last"), ("baseline: repeat previous chunk", "repeat_chunk"),
            ("spread across seeds", "seed_spread"), ("output spread / expert's (min over dims)", "output_spread"),
            ("moves if frame swapped", "frame_swap"),
            ("moves if qpos swapped", "qpos_swap"), ("moves if action history swapped", "history_swap"),
            ("expert moves if episode swapped", "episode_gap")]
    lines = [f"{result.get('method', '?')} {result.get('weights', '')}: {result.get('points')} probe points on "
             f"{result.get('episodes')} held-out episodes, {result.get('seeds')} sampling seeds "
             "(standard units of the training actions)", "",
             "| quantity | all | " + " | ".join(names) + " |", "|---|---|" + "---|" * dims]
    for label, key in rows:
        if key in result:
            v = result[key]
            lines.append(f"| {label} | {_cell(v['overall'])} | " + " | ".join(_cell(x) for x in v["per_dim"]) + " |")
    return "\n".join(lines)


def _cell(x) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def write_result(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(format_report(result) + "\n")
