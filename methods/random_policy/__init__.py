"""``random``: the chance level every table is read against.

Not a learned method: at every env step it returns one joint target drawn uniformly, per
dimension, within the range its training dataset's actions span (the dataset statistics'
``min`` and ``max``), so it moves the arm as widely as the demonstrations did and no further.
It goes through the same protocol, seeds and episode cap as the cells it is compared with;
its "training" only keeps that range (``Adapter.trainable`` is False: no optimizer step).

Why it exists: PushCube's goal region is wide enough that flailing pushes the cube in (19 of
125 rollouts at a 200-step cap with the range of a 2-demo dataset), so a cell's success rate
means little until it is compared with this row (harness.report states every cell's margin
over it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.windows import WindowSpec


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    steps: int = 0
    """No optimizer steps (ours: a chance-level policy learns nothing; its range comes from the
    dataset statistics)."""
    chunk_len: int = 1
    """Actions per query (ours: a fresh draw at every env step, the widest flailing)."""
    num_workers: int = 0
    """No DataLoader workers (ours: no batch is ever read)."""


class RandomAdapter(Adapter):
    name = "random"
    config_class = RandomConfig
    trainable = False
    # [-1, 1] maps onto the dataset's [min, max] per dimension (harness.windows.Normalizer)
    normalization = {"actions": "min_max", "qpos": "mean_std"}

    def __init__(self, config: RandomConfig, data: DataInfo):
        super().__init__(config, data)
        stats = data.stats.get("actions")
        if stats is None:
            spread = torch.ones(data.action_dim)
        else:
            lo = torch.as_tensor(stats["min"], dtype=torch.float32)
            hi = torch.as_tensor(stats["max"], dtype=torch.float32)
            spread = (hi - lo > 1e-6).float()
        # a dimension the demonstrations never moved (the Normalizer passes it through unscaled)
        # stays at its one value instead of wandering +-1 around it
        self.register_buffer("moves", spread)

    @classmethod
    def window_spec(cls, config: RandomConfig) -> WindowSpec:
        return WindowSpec(obs_history=1, action_chunk_len=config.chunk_len)

    def forward(self, batch):
        raise NotImplementedError("the random policy is not trained (RandomAdapter.trainable is False)")

    @torch.no_grad()
    def act(self, observation):
        # torch's global generator: the evaluation seeds it per rollout (harness.evaluate.run_rollout)
        draw = torch.rand(self.config.chunk_len, self.data.action_dim) * 2 - 1
        return draw * self.moves
