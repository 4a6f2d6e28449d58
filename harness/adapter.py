"""The method-adapter API: what a method implements to be trained and judged by the harness.

A method is ONE module with:

- a frozen config dataclass (subclass of ``MethodConfig``) whose defaults ARE its paper's
  hyperparameters, each field documented with the source of its value;
- ``scale_overrides``: the fields that change at the ``smoke`` / ``reduced`` scales;
- ``variants``: named config overrides (ablations), never copies of code;
- an ``Adapter`` subclass: an ``nn.Module`` that computes its training loss from a batch
  (``forward``) and acts in rollouts (``reset`` at episode start, ``act`` on each observation,
  returning one action or a chunk of actions to execute open-loop).

The harness owns everything else: the dataset and its windows (``window_spec``), normalisation
(batches arrive with qpos/actions normalised as the adapter's ``normalization`` asks;
actions returned by ``act`` are un-normalised by the harness), the training loop,
checkpoints, seeds, evaluation and metrics. A method never computes its own success rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from harness.windows import SequenceSpec, WindowSpec


class ConfigFieldError(HarnessError, KeyError):
    """A method config field or variant that does not exist; the message names it and lists
    the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class MethodConfig:
    """Training hyperparameters every method has; subclasses add the model's own fields."""

    steps: int = 100_000
    """Optimizer steps (ours: a placeholder; every method sets its own source's count)."""
    batch_size: int = 64
    """Samples per optimizer step (ours: a placeholder; every method sets its own)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW (ours: the 1e-4 of Diffusion Policy and LeRobot's diffusion policy)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (ours: ACT's 1e-4; methods set their own)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (ours: PyTorch's AdamW default)."""
    lr_schedule: str = "cosine"
    """``cosine`` (to 0 after warmup), ``constant`` (after warmup) (ours: warmup then cosine,
    as Diffusion Policy and LeRobot's diffusion recipe)."""
    warmup_steps: int = 500
    """Linear warmup steps before the schedule (ours: LeRobot's diffusion recipe's 500)."""
    grad_clip_norm: float | None = 10.0
    """Clip the global gradient norm; None disables (ours: LeRobot's training default of 10)."""
    grad_accum_steps: int = 1
    """Each step's batch is split into this many equal micro-batches, one forward and backward
    pass each, their gradients averaged before the one optimizer step: the same samples and the
    same update for a loss that averages over the batch (up to float rounding), in about 1/k of
    the activation memory. ``batch_size`` stays the effective batch and must divide by it
    (ours: 1; a preset sets it where its source accumulates or its batch outgrows one GPU)."""
    ema_decay: float | None = None
    """Exponential moving average of the weights used for evaluation; None disables
    (ours: off unless a method's source uses it)."""
    checkpoint_every: int = 5_000
    """Steps between checkpoints (ours: bounds the work lost to a kill)."""
    log_every: int = 50
    """Steps between rows of train_log.csv (ours: a trend to read, a file that stays small)."""
    num_workers: int = 2
    """DataLoader worker processes decoding frames (ours: 2 keeps a 2-core machine busy)."""

    def __post_init__(self):
        if self.grad_accum_steps < 1 or self.batch_size % self.grad_accum_steps:
            raise ValueError(f"{type(self).__name__}.batch_size {self.batch_size} must divide into "
                             f"grad_accum_steps {self.grad_accum_steps} equal micro-batches")

    def replace(self, **changes) -> "MethodConfig":
        """A copy with ``changes``; unknown field names are errors that name the field."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigFieldError(f"{type(self).__name__} has no field(s) {', '.join(unknown)}; "
                           f"known fields: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MethodConfig":
        """Inverse of ``to_dict`` after a JSON round trip (lists back to tuples)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigFieldError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; known fields: "
                                   f"{', '.join(sorted(fields))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class DataInfo:
    """What an adapter may know about the data when it is built."""

    action_dim: int
    qpos_dim: int
    image_size: tuple[int, int]
    instruction: str
    stats: dict = field(default_factory=dict, repr=False)
    """Raw dataset statistics (``actions``/``obs_qpos`` -> mean/std/min/max/q01/q99)."""

    def to_dict(self) -> dict:
        return {"action_dim": self.action_dim, "qpos_dim": self.qpos_dim,
                "image_size": list(self.image_size), "instruction": self.instruction,
                "stats": {k: {s: np.asarray(v).tolist() for s, v in d.items()}
                          for k, d in self.stats.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        stats = {k: {s: np.asarray(v) for s, v in dd.items()} for k, dd in d["stats"].items()}
        return cls(d["action_dim"], d["qpos_dim"], tuple(d["image_size"]), d["instruction"], stats)


_restoring = [False]


@contextlib.contextmanager
def restoring_weights():
    """While the harness builds an adapter whose whole state dict it loads next from a run folder
    (``harness.runs.load_trained``: evaluation, figures, benchmarks), ``Adapter.restoring()`` is
    True: an adapter may then skip work whose results that state dict holds, such as encoding a
    fixed instruction with a large frozen text encoder, or reading pretrained weights the state
    dict overwrites (RDT does both)."""
    before, _restoring[0] = _restoring[0], True
    try:
        yield
    finally:
        _restoring[0] = before


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
"""Files ``Adapter.record_pretrained`` counts as weights when it is given a folder."""


@dataclass(frozen=True)
class PretrainedFile:
    """A pretrained weights file an adapter loaded (from a local path, never the network)."""

    path: str
    action_pretrained: bool
    """True only when these weights were trained on robot actions (RDT-1B, ICRT's DROID
    pretraining); video, language or ImageNet weights are not."""


def weight_files(path: str | Path, *, action_pretrained: bool) -> list[PretrainedFile]:
    """``path`` if it is a file, else every weight file (``WEIGHT_SUFFIXES``) below it, sorted."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
    return [PretrainedFile(str(f), action_pretrained) for f in files]


class Adapter(nn.Module):
    """Base class of every method. Subclasses set the ClassVars and implement the methods."""

    name: ClassVar[str]
    """Registry name (``act``, ``dp``, ...)."""
    config_class: ClassVar[type[MethodConfig]]
    scale_overrides: ClassVar[dict[str, dict[str, Any]]] = {}
    """Per scale (``smoke``, ``reduced``): config fields that change at that scale."""
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named variants (ablations): variant name -> config overrides."""
    normalization: ClassVar[dict[str, str]] = {"actions": "mean_std", "qpos": "mean_std"}
    """How the harness normalises batch tensors for this method (see harness.windows.Normalizer)."""
    trainable: ClassVar[bool] = True
    """False for a policy with nothing to learn (``random``, the chance level): training then
    writes the weights ``__init__`` built from the data, with no optimizer step and no loss."""

    def __init__(self, config: MethodConfig, data: DataInfo):
        super().__init__()
        self.config = config
        self.data = data
        self.record_predictions = False
        """Set by the harness (figures) before a rollout: also predict the next frame."""
        self.predicted_frames: list[torch.Tensor] = []
        """With ``record_predictions``: one (3, h, w) tensor in [0, 1] per ``act`` call since
        ``reset``, the frame the method expects after the chunk that call returned."""
        self.pretrained_files: list[PretrainedFile] = []
        """Every pretrained weights file this instance loaded, in load order (``record_pretrained``);
        the harness writes their paths and SHA-256 into the run and into every rollout row."""

    @staticmethod
    def restoring() -> bool:
        """True while the harness builds this adapter only to load a trained state dict into it
        (see ``restoring_weights``); False when it is built to train or to count parameters."""
        return _restoring[0]

    def record_pretrained(self, path: str | Path, *, action_pretrained: bool) -> None:
        """Call when loading pretrained weights from ``path``: a file, or a folder whose weight
        files (``WEIGHT_SUFFIXES``) are all recorded. A method trained from scratch calls nothing."""
        self.pretrained_files.extend(weight_files(path, action_pretrained=action_pretrained))

    # --- what the harness asks of a method -----------------------------------------------
    @classmethod
    def window_spec(cls, config: MethodConfig) -> WindowSpec | SequenceSpec:
        """Which frames and actions around a step one training sample holds (``WindowSpec``), or,
        for in-context methods, a run of whole demonstrations (``SequenceSpec``)."""
        raise NotImplementedError

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a batch, plus scalars to log.

        ``batch``: ``frames`` float (B, T, 3, H, W) in [0, 1] (or, for a method with
        ``frame_features`` trained from their cache, ``latents`` (B, T, ...)); ``qpos`` (B, T, Q) and
        ``actions`` (B, C, L, A), normalised; ``obs_is_pad`` (B, T), ``action_is_pad``
        (B, C, L) bool; ``instruction`` list[str]. With a ``SequenceSpec``, T = C = S steps
        (one chunk per step) and ``episode_start`` (B, S) bool marks each demo's first step.
        Inputs must not be modified in place.
        """
        raise NotImplementedError

    def reset(self) -> None:
        """Called at the start of every rollout (clear action queues, KV-caches, histories)."""

    def act(self, observation: dict) -> torch.Tensor:
        """Actions to execute next, normalised, shape (k, A) with k >= 1; the harness runs a
        chunk open-loop and calls ``act`` again once it is used up.

        ``observation``: ``frame`` float (3, H, W) in [0, 1]; ``qpos`` (Q,) normalised;
        ``instruction`` str; ``step`` int (env steps taken so far in this rollout).
        """
        raise NotImplementedError

    @classmethod
    def prompt_demos(cls, config: MethodConfig) -> int:
        """How many training demonstrations prompt each rollout (in-context methods); 0, the
        default, for none. The harness picks them from the training dataset, deterministically
        from the policy seed (``harness.evaluate.Prompter``), passes them to ``prompt`` after
        ``reset`` and records their seeds in every rollout row."""
        return 0

    def prompt(self, demos: list[dict]) -> None:
        """The rollout's prompt, after ``reset``: one dict per demonstration with ``frames``
        float (T+1, 3, H, W) in [0, 1], ``qpos`` (T+1, Q) and ``actions`` (T, A) normalised as
        in training, ``seed`` (the demo's env seed). Called only if ``prompt_demos`` > 0."""
        raise NotImplementedError(f"{type(self).__name__} asks for prompt demos but has no prompt()")

    def executed(self, actions: torch.Tensor) -> None:
        """The actions executed since the last ``act``, normalised, (k, A), when they are not the
        chunk ``act`` returned: the offline probe (harness/probe.py) replays held-out demos and
        executes the expert's actions in place of the method's. A method that conditions on its
        own past actions (PAR's action tokens, ICRT's last action) must take these as its history;
        default: ignore them. Rollouts never call it (what ran is what ``act`` returned)."""

    def observe(self, observation: dict) -> None:
        """Sees the observation of each step the harness runs from a chunk without calling
        ``act`` (for methods that keep an observation history); default: ignore it."""

    def predicts_frames(self) -> bool:
        """Whether this method (at this config) predicts the next frame while it acts (PAR,
        paper Fig. 4). If so, with ``record_predictions`` set, each ``act`` appends its
        prediction to ``predicted_frames`` (cleared by ``reset``), drawing from its own random
        stream so that the actions are those of the rollout the evaluation scores."""
        return False

    @classmethod
    def upgrade_run_config(cls, run_config: dict) -> dict:
        """A run_config.json written by an older version of this method, in today's form
        (default: unchanged), so finished runs still load after a config field moves."""
        return run_config

    @classmethod
    def lr_multiplier(cls, config: MethodConfig):
        """A learning-rate schedule the harness's ``lr_schedule`` values cannot express: a
        function of the optimizer steps taken that returns the factor on ``config.lr``, or None
        (the default) for the harness's schedule (``cosine`` / ``constant`` after warmup)."""
        return None

    @classmethod
    def parameter_groups(cls, config: MethodConfig, data: DataInfo) -> dict[str, int]:
        """Trainable parameters per named module group, plus ``Total``. The default builds the
        model on the meta device (nothing allocated) and reports only the total."""
        with torch.device("meta"):
            model = cls(config, data)
        return {"Total": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    @classmethod
    def frame_features(cls, config: MethodConfig):
        """A frozen frame encoder whose output is all the method trains on (PAR: NOVA's VAE), as
        a ``harness.features.FrameFeatures``, or None (the default). When given, the workflow
        encodes each dataset's frames once and training batches carry ``latents`` (B, T, ...)
        in place of ``frames``; rollouts still pass frames to ``act``."""
        return None

    @classmethod
    def without_pretrained(cls, config: MethodConfig) -> MethodConfig:
        """``config`` with every pretrained part randomly initialised at the same shapes, for
        measurements where the values do not matter (``python -m harness memory``). The default
        returns it unchanged (a method trained from scratch)."""
        return config

    def optim_groups(self) -> list[dict]:
        """Parameter groups for AdamW (override for per-group weight decay or learning rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad],
                 "weight_decay": self.config.weight_decay}]


def resolve_config(adapter_cls: type[Adapter], scale: str | None = None, variant: str | None = None,
                   overrides: dict | None = None) -> MethodConfig:
    """Paper defaults, then the variant's overrides, then the scale's (compute budget wins),
    then explicit ones."""
    cfg = adapter_cls.config_class()
    if variant is not None:
        if variant not in adapter_cls.variants:
            known = ", ".join(sorted(adapter_cls.variants)) or "none"
            raise ConfigFieldError(f"method {adapter_cls.name!r} has no variant {variant!r}; variants: {known}")
        cfg = cfg.replace(**adapter_cls.variants[variant])
    if scale is not None and scale in adapter_cls.scale_overrides:
        cfg = cfg.replace(**adapter_cls.scale_overrides[scale])
    if overrides:
        cfg = cfg.replace(**overrides)
    return cfg
