"""Figures drawn from rollouts: the predicted frames next to the executed ones (paper Fig. 4).

A method that predicts the future while it acts (PAR; ``Adapter.predicts_frames``) fills
``predicted_frames`` when ``record_predictions`` is set (the adapter API: one ``(3, H, W)``
tensor in [0, 1] per ``act`` call, the frame it expects once the returned action chunk has
been executed). One rollout under the evaluation protocol's seeding gives the raw material
of Fig. 4: for each ``act`` call at env step ``s`` returning ``k`` actions, the predicted
frame is paired with the frame the simulator rendered at step ``s + k``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

log = logging.getLogger(__name__)


class FigureError(HarnessError, ValueError):
    """A figure that cannot be drawn from this run or rollout; the message says why."""


class _CallRecorder:
    """Passes every call through to the adapter and remembers when ``act`` was called."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.calls: list[tuple[int, int]] = []  # (env step of the call, actions returned)

    def reset(self):
        self.calls = []
        self.adapter.reset()

    def act(self, observation):
        chunk = self.adapter.act(observation)
        self.calls.append((int(observation["step"]), chunk.reshape(-1, chunk.shape[-1]).shape[0]))
        return chunk

    def observe(self, observation):
        self.adapter.observe(observation)


def predicted_vs_executed(run_dir: str | Path, policy_seed: int, init_state_seed: int,
                          max_episode_steps: int) -> dict:
    """Roll out ``run_dir`` once and pair each predicted frame with the executed one.

    Returns ``{"pairs", "success", "success_step", "episode_len", "task", "method"}``; each
    pair is a dict of ``step`` (the env step of the ``act`` call), ``target`` (the step the
    prediction is of), and HxWx3 uint8 images ``predicted``, ``executed`` (at ``target``)
    and ``source`` (at ``step``, what the method saw). Predictions whose target lies beyond
    the episode's end (it stopped at success or at the cap) are left out.
    """
    from harness.dataset import DemoDataset
    from harness.evaluate import open_rollout, run_rollout, task_info_of
    from harness.runs import RUN_CONFIG

    run_config = json.loads((Path(run_dir) / RUN_CONFIG).read_text())
    task_info = task_info_of(DemoDataset(run_config["dataset"]).meta)
    adapter, env, observe, actions = open_rollout(run_dir, task_info, max_episode_steps)
    recorder = _CallRecorder(adapter)
    try:
        if not adapter.predicts_frames():
            raise FigureError(f"{run_dir}: method {run_config.get('name') or run_config['method']!r} "
                              "does not predict frames (Adapter.predicts_frames); PAR does")
        adapter.record_predictions = True
        result = run_rollout(env, recorder, observe, actions, max_episode_steps, policy_seed,
                             init_state_seed, record=True)
    finally:
        env.close()
    executed = result["frames"]  # frames[i]: the observation at env step i
    pairs = []
    for (step, length), predicted in zip(recorder.calls, adapter.predicted_frames):
        target = step + length
        if target >= len(executed):
            continue
        image = (predicted.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        pairs.append({"step": step, "target": target, "predicted": image,
                      "executed": executed[target], "source": executed[step]})
    return {"pairs": pairs, "success": result["success"], "success_step": result["success_step"],
            "episode_len": result["episode_len"], "task": task_info["task"],
            "method": run_config["method"]}


def save_prediction_figure(result: dict, out_png: str | Path, max_columns: int = 8) -> Path:
    """Two rows, predicted above executed, at evenly spread steps of the rollout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["pairs"]
    if not pairs:
        raise FigureError("the rollout ended before any predicted frame could be compared "
                         "(raise the episode cap)")
    picks = np.unique(np.linspace(0, len(pairs) - 1, min(max_columns, len(pairs))).round().astype(int))
    fig, axes = plt.subplots(2, len(picks), figsize=(1.6 * len(picks), 3.6), squeeze=False)
    for col, i in enumerate(picks):
        pair = pairs[i]
        for row, (image, label) in enumerate(((pair["predicted"], "predicted"), (pair["executed"], "executed"))):
            ax = axes[row, col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
            if row == 1:
                ax.set_xlabel(f"step {pair['target']}")
    outcome = f"success at step {result['success_step']}" if result["success"] else \
        f"no success in {result['episode_len']} steps"
    fig.suptitle(f"{result['method']} on {result['task']}: {outcome}")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return out_png


def save_prediction_arrays(result: dict, out_npz: str | Path) -> Path:
    """Every pair as arrays (step, target, predicted, executed, source), for one's own
    figure or metric."""
    pairs = result["pairs"]
    np.savez_compressed(out_npz, **{key: np.stack([p[key] for p in pairs])
                                    for key in ("step", "target", "predicted", "executed", "source")})
    return Path(out_npz)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 HxWx3 image resized (antialiased bilinear) to ``size`` = (H, W)."""
    import torch
    import torch.nn.functional as F

    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images of the same shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def prediction_figure(run_dir: str | Path, policy_seed: int, init_state_seed: int,
                      max_episode_steps: int, out_png: str | Path) -> dict:
    """One rollout -> ``out_png`` (the figure), ``.npz`` (the frames) and ``.json`` (summary).

    The summary gives each prediction's PSNR against the executed frame, both at the
    prediction's resolution, and the floor a useful prediction has to beat: the PSNR of
    repeating the frame the method saw when it predicted (as if nothing moved).
    """
    from harness.provenance import git_sha, package_versions

    result = predicted_vs_executed(run_dir, policy_seed, init_state_seed, max_episode_steps)
    out_png = Path(out_png)
    save_prediction_figure(result, out_png)
    save_prediction_arrays(result, out_png.with_suffix(".npz"))
    predicted, repeat = [], []
    for p in result["pairs"]:
        size = p["predicted"].shape[:2]
        target = resize(p["executed"], size)
        predicted.append(psnr(p["predicted"], target))
        repeat.append(psnr(resize(p["source"], size), target))
    summary = {
        "run_dir": str(run_dir), "method": result["method"], "task": result["task"],
        "policy_seed": policy_seed, "init_state_seed": init_state_seed,
        "max_episode_steps": max_episode_steps, "success": result["success"],
        "success_step": result["success_step"], "episode_len": result["episode_len"],
        "targets": [p["target"] for p in result["pairs"]],
        "psnr_predicted_db": [round(v, 2) for v in predicted],
        "psnr_repeat_last_db": [round(v, 2) for v in repeat],
        "mean_psnr_predicted_db": round(float(np.mean(predicted)), 2),
        "mean_psnr_repeat_last_db": round(float(np.mean(repeat)), 2),
        "git_sha": git_sha(), "versions": package_versions(),
    }
    out_png.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    log.info("%s on %s: %d predicted frames, mean PSNR %.2f dB (repeating the last frame: %.2f dB) -> %s",
             result["method"], result["task"], len(predicted), summary["mean_psnr_predicted_db"],
             summary["mean_psnr_repeat_last_db"], out_png)
    return summary
