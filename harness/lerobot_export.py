"""A harness dataset as a LeRobot dataset (format v2.1, what the pinned LeRobot 0.3.2 reads), so
the same demos train with LeRobot's own tools (``lerobot-train``).

    python -m harness export-lerobot --dataset outputs/reduced/datasets/PushCube.h5 \\
        --out outputs/reduced/lerobot/PushCube

Features: ``observation.image`` (the task camera's RGB frame, H x W x 3 uint8),
``observation.state`` (the robot's 9 joint positions), ``action`` (the 8 joint-position targets
of ``pd_joint_pos``); fps 20, the tasks' control frequency; the task's instruction as the
LeRobot task. Written without the network, as LeRobot's ``add_frame`` / ``save_episode`` do it
(``save_episode(episode_data=...)`` is broken in 0.3.2).

Choices, each forced by the formats or the machine:

- **One frame per action.** A harness episode has T actions and T + 1 observations (the last
  one after the final action); a LeRobot frame pairs an observation with the action taken from
  it. Frame t holds observation t and action t, for t < T; the final observation has no action
  and is left out (``meta/harness.json`` says so and counts them).
- **Images, not videos** (``dtype: "image"``, ``use_videos=False``): LeRobot 0.3.2 encodes AV1
  video with PyAV but cannot decode it here (torchcodec finds no FFmpeg 4-9 libraries; its PyAV
  path calls ``torchvision.io.VideoReader``, gone from torchvision 0.29). Frames are the
  dataset's decoded frames, stored losslessly (PNG), so they round-trip exactly.
- **Provenance** in ``meta/harness.json``: the source file's SHA-256 and metadata (task, seeds,
  code identity, config hash, versions), and the rule above.

Loading it back needs no network when every file is under ``root``; set ``HF_DATASETS_CACHE``
to keep Hugging Face ``datasets`` from writing its cache under ``~/.cache/huggingface``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from harness.dataset import DemoDataset, decode_image
from harness.errors import HarnessError
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY

log = logging.getLogger(__name__)

FPS = 20  # ManiSkill's PushCube/PickCube/StackCube control frequency (sim 100 Hz, control 20 Hz)
PROVENANCE_FILE = "meta/harness.json"
FRAME_RULE = ("frame t = (observation t, action t) for t < T; an episode's final observation "
              "(after its last action) has no action and is not exported")
# ManiSkill's Panda (mani_skill/agents/robots/panda/panda.py: arm_joint_names, gripper_joint_names)
PANDA_QPOS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
PANDA_ACTION = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper"]


class ExportError(HarnessError, RuntimeError):
    pass


def _names(prefix: str, dim: int, panda: list[str]) -> list[str]:
    return list(panda) if dim == len(panda) else [f"{prefix}_{i}" for i in range(dim)]


def features(dataset: DemoDataset) -> dict:
    height, width = dataset.meta["image_size"]
    qpos_dim, action_dim = dataset.qpos.shape[1], dataset.actions.shape[1]
    return {
        IMAGE_KEY: {"dtype": "image", "shape": (int(height), int(width), 3),
                    "names": ["height", "width", "channel"]},
        STATE_KEY: {"dtype": "float32", "shape": (qpos_dim,), "names": _names("qpos", qpos_dim, PANDA_QPOS)},
        ACTION_KEY: {"dtype": "float32", "shape": (action_dim,),
                     "names": _names("action", action_dim, PANDA_ACTION)},
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(dataset_path: str | Path, out: str | Path, repo_id: str | None = None,
           progress: bool = True) -> Path:
    """Write ``dataset_path`` as a LeRobot v2.1 dataset at ``out`` (which must not exist)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset_path, out = Path(dataset_path), Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; LeRobot writes a dataset into a new folder. "
                          "Delete it or choose another --out.")
    dataset = DemoDataset(dataset_path)
    dataset.verify()  # a corrupt source fails here, naming the file, before anything is written
    meta = dataset.meta
    repo_id = repo_id or f"local/{meta['task']}"
    lerobot = LeRobotDataset.create(repo_id=repo_id, fps=FPS, features=features(dataset), root=out,
                                    robot_type="panda", use_videos=False)
    instruction = dataset.instruction
    from tqdm import tqdm

    for episode in tqdm(dataset.episodes(), total=dataset.num_episodes, disable=not progress,
                        desc=f"export {meta['task']}", unit="episode"):
        for t in range(len(episode.actions)):
            lerobot.add_frame({IMAGE_KEY: decode_image(episode.frames[t]),
                               STATE_KEY: np.asarray(episode.qpos[t], dtype=np.float32),
                               ACTION_KEY: np.asarray(episode.actions[t], dtype=np.float32)},
                              task=instruction)
        lerobot.save_episode()
    provenance = {
        "source": str(dataset_path), "source_sha256": _sha256(dataset_path),
        "source_meta": meta, "frame_rule": FRAME_RULE, "fps": FPS,
        "episodes": int(dataset.num_episodes), "frames": int(dataset.num_steps.sum()),
        "final_observations_left_out": int(dataset.num_episodes),
        "seeds": [int(s) for s in dataset.seeds],
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("Exported %d episodes (%d frames) of %s to %s as LeRobot dataset %s",
             dataset.num_episodes, provenance["frames"], dataset_path, out, repo_id)
    return out
