"""Training samples cut from a demo dataset: frame histories at a stride and action chunks.

A sample is anchored at step ``t`` of an episode (t = 0..T-1, one per action). With
``WindowSpec`` fields H = obs_history, F = obs_future, s = obs_stride, L = action_chunk_len,
C = num_action_chunks, o = action_offset:

- frames / qpos at steps t + s*k for k = -(H-1) .. F          -> (H+F, ...)
- actions at steps t + o + j for j = 0 .. C*L-1, as C chunks   -> (C, L, A)

Examples: ACT: H=1, L=100. Diffusion Policy: H=2, L=16, o=-1. PAR (physical tokens, one frame
per action chunk): s=L, H=N frames of history, C=N chunks starting at the oldest frame,
o=-(N-1)*L, so chunk n holds the L actions taken after frame n.

Steps outside the episode are padded by repeating the nearest valid step (first frame
before the start; last frame / last action after the end) and flagged in ``*_is_pad``, so
each method decides whether to mask them out (ACT) or keep them (Diffusion Policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.dataset import DemoDataset


@dataclass(frozen=True)
class WindowSpec:
    """Which steps around an anchor a training sample holds."""

    obs_history: int = 1
    """Frames up to and including the anchor step."""
    obs_stride: int = 1
    """Steps between consecutive frames (PAR: the action chunk length L)."""
    obs_future: int = 0
    """Frames after the anchor (prediction targets of world-model-style methods)."""
    action_chunk_len: int = 1
    """Actions per chunk (L)."""
    num_action_chunks: int = 1
    """Consecutive chunks per sample."""
    action_offset: int = 0
    """Step of the first action relative to the anchor (Diffusion Policy: -(obs_history-1))."""
    load_frames: bool = True
    """Decode images (False for proprio-only methods and fast tests)."""

    def __post_init__(self):
        for name in ("obs_history", "obs_stride", "action_chunk_len", "num_action_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"WindowSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.obs_future < 0:
            raise ValueError(f"WindowSpec.obs_future must be >= 0, got {self.obs_future}")

    @property
    def frame_offsets(self) -> np.ndarray:
        k = np.arange(-(self.obs_history - 1), self.obs_future + 1)
        return k * self.obs_stride

    @property
    def action_steps(self) -> np.ndarray:
        return self.action_offset + np.arange(self.num_action_chunks * self.action_chunk_len)


class WindowDataset:
    """Map-style dataset (usable as a torch Dataset) of windows over every episode step."""

    def __init__(self, dataset: DemoDataset, spec: WindowSpec):
        self.dataset = dataset
        self.spec = spec
        # one sample per action step: (episode, t)
        self.index = np.concatenate([
            np.stack([np.full(n, e), np.arange(n)], 1)
            for e, n in enumerate(dataset.num_steps)
        ]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ds, spec = self.dataset, self.spec
        episode, t = (int(x) for x in self.index[i])
        num_steps = int(ds.num_steps[episode])  # T: obs steps 0..T, action steps 0..T-1

        obs_steps = t + spec.frame_offsets
        obs_rows = ds.obs_start[episode] + np.clip(obs_steps, 0, num_steps)
        act_steps = t + spec.action_steps
        act_rows = ds.act_start[episode] + np.clip(act_steps, 0, num_steps - 1)
        sample = {
            "instruction": ds.instruction,
            "episode": episode,
            "seed": int(ds.seeds[episode]),
            "anchor_step": t,
            "obs_steps": obs_steps,
            "obs_is_pad": (obs_steps < 0) | (obs_steps > num_steps),
            "qpos": ds.qpos[obs_rows],
            "actions": ds.actions[act_rows].reshape(
                spec.num_action_chunks, spec.action_chunk_len, -1),
            "action_is_pad": ((act_steps < 0) | (act_steps >= num_steps)).reshape(
                spec.num_action_chunks, spec.action_chunk_len),
        }
        if spec.load_frames:
            sample["frames"] = np.stack([ds.frame(int(r)) for r in obs_rows])
        return sample


class Normalizer:
    """Per-dimension normalisation from stored dataset statistics.

    ``mean_std``: (x - mean) / std. ``min_max``: maps [min, max] to [-1, 1] (Diffusion Policy).
    Dimensions with (near) zero spread are passed through unscaled instead of dividing by ~0.
    """

    MODES = ("mean_std", "min_max", "identity")

    def __init__(self, stats: dict[str, np.ndarray], mode: str = "mean_std", eps: float = 1e-6):
        if mode not in self.MODES:
            raise ValueError(f"unknown normalisation mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode
        if mode == "mean_std":
            self.center = np.asarray(stats["mean"], dtype=np.float64)
            scale = np.asarray(stats["std"], dtype=np.float64)
        elif mode == "min_max":
            lo = np.asarray(stats["min"], dtype=np.float64)
            hi = np.asarray(stats["max"], dtype=np.float64)
            self.center, scale = (hi + lo) / 2, (hi - lo) / 2
        else:
            dim = len(stats["mean"])
            self.center, scale = np.zeros(dim), np.ones(dim)
        self.scale = np.where(scale < eps, 1.0, scale)

    def normalize(self, x):
        return (x - self._like(self.center, x)) / self._like(self.scale, x)

    def unnormalize(self, y):
        return y * self._like(self.scale, y) + self._like(self.center, y)

    @staticmethod
    def _like(v: np.ndarray, x):
        if hasattr(x, "new_tensor"):  # torch tensor: same dtype and device
            return x.new_tensor(v)
        return v.astype(np.asarray(x).dtype, copy=False)
