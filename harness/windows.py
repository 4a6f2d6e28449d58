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
    """Map-style dataset (usable as a torch Dataset) of windows over every episode step.
    With ``features`` (a ``harness.features.FeatureCache``), a sample holds ``latents`` of its
    frames from the cache instead of the decoded ``frames``."""

    def __init__(self, dataset: DemoDataset, spec: WindowSpec, features=None):
        self.dataset = dataset
        self.spec = spec
        self.features = features
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
        if self.features is not None:
            sample["latents"] = self.features.rows(obs_rows)
        elif spec.load_frames:
            sample["frames"] = np.stack([ds.frame(int(r)) for r in obs_rows])
        return sample


@dataclass(frozen=True)
class SequenceSpec:
    """Samples that run through several whole demonstrations of the task, one after another, as
    in-context methods train (ICRT: the earlier demos in a sample are the prompt of the later).

    Sample ``i`` starts at step ``t0`` of episode ``e0`` (every ``start_stride``-th step of every
    episode) and continues with whole episodes in passes over a seeded permutation (the first
    pass: of the other episodes; later ones: of all), each played 1 to ``max_repeats`` times,
    uniformly, until it holds ``sequence_length`` steps; no pass begins with the episode the
    one before it ended with. Step ``s`` holds the frame and qpos of its step and the
    ``action_chunk_len`` actions from it on within its episode (the last action repeated past the
    episode's end, flagged in ``action_is_pad``); ``episode_start[s]`` marks the first step of
    each episode, so a method can tell prompt from target. What follows ``(e0, t0)`` is a
    function of ``i`` alone, so a resumed run sees the samples an uninterrupted one would.
    """

    sequence_length: int
    """Steps per sample."""
    action_chunk_len: int = 1
    """Actions per step (a chunk from the step on, within its episode)."""
    start_stride: int = 1
    """Steps between the start points of consecutive samples within an episode."""
    max_repeats: int = 1
    """Each episode after the start one plays 1..max_repeats times per pass over the episodes."""
    swap_adjacent: bool = False
    """Then each adjacent pair of plays in a pass swaps with probability 1/2, in order, so an
    episode's repeats need not be back to back."""
    load_frames: bool = True
    """Decode images (False for fast tests)."""

    def __post_init__(self):
        for name in ("sequence_length", "action_chunk_len", "start_stride", "max_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceSpec.{name} must be >= 1, got {getattr(self, name)}")


class SequenceDataset:
    """Map-style dataset (usable as a torch Dataset) of ``SequenceSpec`` samples."""

    STREAM = 0x5E9  # separates this module's random stream from every other seeded one

    def __init__(self, dataset: DemoDataset, spec: SequenceSpec):
        self.dataset = dataset
        self.spec = spec
        starts = [np.arange(0, n, spec.start_stride) for n in dataset.num_steps]
        self.index = np.concatenate([np.stack([np.full(len(t), e), t], 1)
                                     for e, t in enumerate(starts)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def tape(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(episode, step) of each of sample ``i``'s steps."""
        spec, num_steps = self.spec, self.dataset.num_steps
        e0, t0 = (int(x) for x in self.index[i])
        rng = np.random.default_rng([self.STREAM, i])
        everyone = list(range(len(num_steps)))
        pool = [e for e in everyone if e != e0] or everyone  # the first pass: the other episodes
        plays, length, last = [], int(num_steps[e0] - t0), e0
        while length < spec.sequence_length:
            passing = [int(e) for e in rng.permutation(pool)
                       for _ in range(int(rng.integers(1, spec.max_repeats + 1)))]
            if spec.swap_adjacent:
                for k in range(len(passing) - 1):
                    if rng.uniform() < 0.5:
                        passing[k], passing[k + 1] = passing[k + 1], passing[k]
            # a pass does not begin with the episode the one before it ended with
            k = next((k for k, e in enumerate(passing) if e != last), 0)
            for e in passing[k:] + passing[:k]:
                plays.append(e)
                length, last = length + int(num_steps[e]), e
                if length >= spec.sequence_length:
                    break
            pool = everyone  # later passes: every episode, the start's too
        n = spec.sequence_length
        episodes = np.concatenate([np.full(num_steps[e0] - t0, e0)] + [np.full(num_steps[e], e) for e in plays])
        steps = np.concatenate([np.arange(t0, num_steps[e0])] + [np.arange(num_steps[e]) for e in plays])
        return episodes[:n], steps[:n]

    def __getitem__(self, i: int) -> dict:
        ds, spec = self.dataset, self.spec
        episodes, steps = self.tape(i)
        num_steps = ds.num_steps[episodes]
        obs_rows = ds.obs_start[episodes] + steps
        act_steps = steps[:, None] + np.arange(spec.action_chunk_len)
        act_rows = ds.act_start[episodes][:, None] + np.minimum(act_steps, num_steps[:, None] - 1)
        sample = {
            "instruction": ds.instruction,
            "episodes": episodes,
            "steps": steps,
            "episode_start": steps == 0,
            "obs_is_pad": np.zeros(len(steps), dtype=bool),
            "qpos": ds.qpos[obs_rows],
            "actions": ds.actions[act_rows],
            "action_is_pad": act_steps >= num_steps[:, None],
        }
        if spec.load_frames:
            sample["frames"] = np.stack([ds.frame(int(r)) for r in obs_rows])
        return sample


def training_samples(dataset: DemoDataset, spec: "WindowSpec | SequenceSpec", features=None):
    """The training dataset a method's ``window_spec`` asks for (``features``: see WindowDataset)."""
    if isinstance(spec, SequenceSpec):
        if features is not None:
            raise ValueError("cached frame features are read for WindowSpec samples only")
        return SequenceDataset(dataset, spec)
    return WindowDataset(dataset, spec, features)


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
