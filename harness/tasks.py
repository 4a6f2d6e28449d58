"""The task registry: the three ManiSkill3 tasks of the PAR paper and their protocol defaults.

Every value here is a default that the scale configs (workflows/config/*.yaml) may override;
the values follow the RDT/PAR ManiSkill protocol (see shared/PROTOCOL.md):
absolute joint-position control, images from the task's 512x512 render camera, demos from
ManiSkill's motion-planning solutions on env seeds 0..N-1, evaluation on env seeds 20241201+i.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError

# Evaluation init-state seeds start here in the RDT/PAR protocol
# (thu-ml/RoboticsDiffusionTransformer@947a0f6:eval_sim/eval_rdt_maniskill.py: base_seed = 20241201).
EVAL_INIT_STATE_SEED_START = 20241201


@dataclass(frozen=True)
class TaskSpec:
    """One manipulation task and the protocol settings attached to it."""

    name: str
    """Short name used in paths, configs and tables (e.g. ``PushCube``)."""
    env_id: str
    """Gymnasium id registered by ManiSkill3."""
    instruction: str
    """Natural-language instruction (PAR and RDT condition on text); RDT's eval_sim wording."""
    solution: str
    """Module:function of ManiSkill's motion-planning solution for this task."""
    control_mode: str = "pd_joint_pos"
    """Controller of demos and rollouts: absolute joint positions, 7 joints + gripper (8-dim)."""
    camera: str = "render_camera"
    """Camera whose RGB image is the observation (single view; RDT renders with env.render())."""
    image_size: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"smoke": (64, 64), "reduced": (128, 128), "paper": (512, 512)}
    )
    """(height, width) of observation images per scale; paper: the render camera's native 512x512."""
    max_episode_steps: int = 400
    """Evaluation episode cap (RDT/PAR protocol: up to 400 steps)."""
    demo_seed_start: int = 0
    """First env seed used to plan demonstrations; demos use seeds demo_seed_start, +1, ..."""
    demo_seed_limit: int = 10_000
    """Demo seeds stay below this bound, so they can never reach the evaluation seeds."""
    val_seed_start: int = 9_000
    """First env seed of the held-out validation demos (``demos.num_val_demos``; the offline
    probe, harness/probe.py): they run upward from here to ``demo_seed_limit``, and training
    demos stay below it, so the two never share a seed and neither reaches the evaluation's
    (ours: far above the ~1200 seeds the paper scale's 1000 demos plan on)."""

    @property
    def demo_seed_range(self) -> range:
        """All env seeds demonstrations may be planned on (successes and failures)."""
        return range(self.demo_seed_start, self.demo_seed_limit)

    def seed_limit(self, split: str) -> int:
        """The bound a plan of ``split`` (``train`` or ``validation``) stays below."""
        return self.val_seed_start if split == "train" else self.demo_seed_limit


_PANDA_SOLUTIONS = "mani_skill.examples.motionplanning.panda.solutions"

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="PushCube",
            env_id="PushCube-v1",
            instruction="Push and move a cube to a goal region in front of it.",
            solution=f"{_PANDA_SOLUTIONS}.push_cube:solve",
        ),
        TaskSpec(
            name="PickCube",
            env_id="PickCube-v1",
            instruction="Grasp a red cube and move it to a target goal position.",
            solution=f"{_PANDA_SOLUTIONS}.pick_cube:solve",
        ),
        TaskSpec(
            name="StackCube",
            env_id="StackCube-v1",
            instruction=(
                "Pick up a red cube and stack it on top of a green cube and let go of the cube "
                "without it falling."
            ),
            solution=f"{_PANDA_SOLUTIONS}.stack_cube:solve",
        ),
    )
}


class SeedOverlapError(HarnessError, ValueError):
    """Evaluation init-state seeds that are also demonstration seeds (train/test leakage)."""


class UnknownTaskError(HarnessError, KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def get_task(name: str) -> TaskSpec:
    """Look a task up by short name (``PushCube``) or env id (``PushCube-v1``)."""
    if name in TASKS:
        return TASKS[name]
    for spec in TASKS.values():
        if spec.env_id == name:
            return spec
    known = ", ".join(f"{s.name} ({s.env_id})" for s in TASKS.values())
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {known}")


def eval_init_state_seeds(start: int = EVAL_INIT_STATE_SEED_START, count: int = 25) -> range:
    """The env seeds whose initial states the evaluation uses (RDT/PAR: 20241201+i, i < 25)."""
    return range(start, start + count)


def check_seed_ranges_disjoint(demo_seeds, eval_seeds) -> None:
    """Fail if any evaluation init-state seed is also a demonstration seed (train/test leakage)."""
    overlap = sorted(set(demo_seeds) & set(eval_seeds))
    if overlap:
        shown = ", ".join(map(str, overlap[:10])) + (" ..." if len(overlap) > 10 else "")
        raise SeedOverlapError(
            f"{len(overlap)} evaluation init-state seed(s) are also demonstration seeds: {shown}. "
            "Training and test initial states must not overlap; move the evaluation seed start "
            "or plan the demos on other seeds."
        )
