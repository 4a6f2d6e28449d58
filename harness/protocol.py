"""The evaluation protocol: which initial states and policy seeds a method is judged on.

Per (method, task): ``num_init_states`` initial states from fixed env seeds (RDT/PAR:
20241201 + i, i < 25) x the policy seeds (5) = 125 rollouts. The seed constants live in
harness/tasks.py, next to the demo seed range they must never overlap; this module holds
what a result depends on and is recorded in every rollout row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from harness.tasks import (EVAL_INIT_STATE_SEED_START, SeedOverlapError, check_seed_ranges_disjoint,
                           eval_init_state_seeds)


@dataclass(frozen=True)
class Protocol:
    """Every setting a result depends on; recorded in every row."""

    init_state_seed_start: int = EVAL_INIT_STATE_SEED_START
    """First env seed of the initial states (thu-ml/RoboticsDiffusionTransformer@947a0f6:eval_sim/eval_rdt_maniskill.py: base_seed = 20241201)."""
    num_init_states: int = 25
    """Initial states per task (paper §5.1.2: 25 distinct initial states)."""
    policy_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Policy seeds per initial state (paper §5.1.2: 5 random seeds)."""
    max_episode_steps: int = 400
    """Episode cap (thu-ml/RoboticsDiffusionTransformer@947a0f6:eval_sim/eval_rdt_maniskill.py: MAX_EPISODE_STEPS = 400)."""
    workers: int = 2
    """Rollout processes (ours: speed only; a rollout's outcome does not depend on it)."""
    video_rollouts: int = 0
    """Save an mp4 of the first k rollouts, by policy seed then init state (ours: off by
    default, videos are large)."""

    @property
    def init_state_seeds(self) -> range:
        return eval_init_state_seeds(self.init_state_seed_start, self.num_init_states)

    def jobs(self) -> list[tuple[int, int]]:
        return [(p, s) for p in self.policy_seeds for s in self.init_state_seeds]


def rollout_seed(policy_seed: int, init_state_seed: int) -> int:
    """The policy's RNG seed of one rollout: fixed per (policy seed, init state), whichever
    worker runs it."""
    return zlib.crc32(f"{policy_seed}/{init_state_seed}".encode())


PROMPT_STREAM = 0x9A0  # separates the prompt choice from every other seeded stream


def prompt_episodes(policy_seed: int, num_episodes: int, k: int) -> list[int]:
    """Which training demonstrations (episode indices) prompt every rollout of ``policy_seed``
    for an in-context method: ``k`` distinct ones, a function of the policy seed alone, so each
    policy seed is one fixed prompt judged on every init state."""
    if k > num_episodes:
        raise ValueError(f"{k} prompt demonstrations asked for, the dataset has {num_episodes}")
    return sorted(int(e) for e in np.random.default_rng([PROMPT_STREAM, policy_seed]).choice(
        num_episodes, size=k, replace=False))


def check_no_leakage(dataset_meta: dict, protocol: Protocol, dataset_path: str) -> None:
    """No evaluation init state may be a state the method was trained (or planned) on."""
    demo_seeds = set(dataset_meta.get("seeds", [])) | {int(s) for s in dataset_meta.get("failed_seeds", {})}
    try:
        check_seed_ranges_disjoint(demo_seeds, protocol.init_state_seeds)
    except SeedOverlapError as exc:
        raise SeedOverlapError(f"{dataset_path}: {exc}") from None
