"""``dummy``: the smallest complete method, and the template for writing your own.

Not a baseline of the paper: a small CNN over the current frame plus the joint positions,
regressing a chunk of actions with an MSE loss. It exists so that the harness (and a
newcomer) can see every part of the adapter API in one short file; the contract test suite
and the evaluation-overhead benchmark use it. Copy this file to start a method
(docs/adding-a-method.md walks through it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.windows import WindowSpec


@dataclass(frozen=True)
class DummyConfig(MethodConfig):
    """Every field documented where it is declared; defaults would be the paper's values."""

    chunk_len: int = 8
    """Actions predicted (and executed open-loop) per query (ours: the template has no paper;
    a real method cites it here, e.g. ``paper §4.1``)."""
    width: int = 32
    """Channels of the CNN and width of the MLP (ours: small, a test double)."""
    steps: int = 1000
    """Optimizer steps (ours: a test double learns nothing worth more)."""
    batch_size: int = 16
    """Samples per step (ours: a test double)."""
    lr: float = 1e-3
    """AdamW learning rate (ours: a tiny model tolerates a large step)."""
    warmup_steps: int = 10
    """Warmup steps (ours: a test double)."""


class DummyAdapter(Adapter):
    name = "dummy"
    config_class = DummyConfig
    normalization = {"actions": "mean_std", "qpos": "mean_std"}
    scale_overrides = {"smoke": dict(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2,
                                     log_every=1, num_workers=0)}

    def __init__(self, config: DummyConfig, data: DataInfo):
        super().__init__(config, data)
        w = config.width
        self.cnn = nn.Sequential(nn.Conv2d(3, w, 5, stride=2), nn.ReLU(), nn.Conv2d(w, w, 3, stride=2),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(w + data.qpos_dim, w), nn.ReLU(),
                                  nn.Linear(w, config.chunk_len * data.action_dim))

    @classmethod
    def window_spec(cls, config: DummyConfig) -> WindowSpec:
        return WindowSpec(obs_history=1, action_chunk_len=config.chunk_len)

    def _predict(self, frame: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.cat([self.cnn(frame), qpos], dim=-1))
        return out.reshape(-1, self.config.chunk_len, self.data.action_dim)

    def forward(self, batch):
        pred = self._predict(batch["frames"][:, -1], batch["qpos"][:, -1])
        target = batch["actions"][:, 0]
        keep = (~batch["action_is_pad"][:, 0]).unsqueeze(-1).float()  # no loss on padding
        loss = (F.mse_loss(pred, target, reduction="none") * keep).sum() / keep.sum().clamp(min=1)
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def act(self, observation):
        return self._predict(observation["frame"][None], observation["qpos"][None])[0]
