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

import copy
import json
import logging
from pathlib import Path

import numpy as np

from harness.checksums import file_sha256
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
        "source": str(dataset_path), "source_sha256": file_sha256(dataset_path),
        "source_meta": meta, "frame_rule": FRAME_RULE, "fps": FPS,
        "episodes": int(dataset.num_episodes), "frames": int(dataset.num_steps.sum()),
        "final_observations_left_out": int(dataset.num_episodes),
        "seeds": [int(s) for s in dataset.seeds],
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("Exported %d episodes (%d frames) of %s to %s as LeRobot dataset %s",
             dataset.num_episodes, provenance["frames"], dataset_path, out, repo_id)
    return out


# --------------------------------------------------------------------------- trained runs
# LeRobot's Normalize/Unnormalize: mean_std (x - mean) / (std + EPS); min_max maps
# [min, max + EPS] to [-1, 1] (lerobot/policies/normalize.py)
LEROBOT_EPS = 1e-8
_NORM_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def lerobot_stats(normalizer) -> dict:
    """A harness ``Normalizer``'s effective centre and scale as the statistics LeRobot's
    normaliser needs to compute exactly the same map (its epsilon folded in)."""
    import torch

    center = torch.as_tensor(normalizer.center, dtype=torch.float32)
    scale = torch.as_tensor(normalizer.scale, dtype=torch.float32)
    # both pairs, whatever the mode: LeRobot 0.3.2 reads stats["mean"] even for MIN_MAX
    return {"mean": center, "std": scale - LEROBOT_EPS, "min": center - scale, "max": center + scale - LEROBOT_EPS}


def export_pretrained(run_dir: str | Path, out: str | Path) -> Path:
    """A finished run of a LeRobot-backed method (``act``, ``dp_unet``, ``lerobot_*``) as a
    LeRobot pretrained-model folder (``save_pretrained``) that runs standalone: the harness's
    normalisation of joint positions and actions moves into LeRobot's own normalisers, so
    ``PolicyClass.from_pretrained(out).select_action`` takes raw joint positions and returns raw
    joint targets. Frames go in as the policy saw them: (3, H, W) in [0, 1] at its
    ``input_features`` size (``image_resize`` methods: resized)."""
    import torch
    from lerobot.configs.types import NormalizationMode
    from lerobot.policies.pretrained import PreTrainedPolicy

    from harness.runs import load_trained, run_normalizers

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; choose a new folder for the LeRobot checkpoint")
    model, run_config = load_trained(run_dir)
    if not type(model).trainable:  # lerobot_pretrained: the run holds a LeRobot checkpoint as it was
        raise ExportError(f"{run_dir} is a {run_config['method']} run: it trained nothing; the LeRobot "
                          f"checkpoint it evaluated is {run_config['method_config'].get('path')}")
    policy = next((m for m in model.children() if isinstance(m, PreTrainedPolicy)), None)
    if policy is None:
        raise ExportError(f"{run_dir} is a {run_config['method']} run, not a LeRobot policy's; "
                          "export-pretrained exports act, dp_unet and lerobot_* runs")
    norms = run_normalizers(run_config)
    modes = {"mean_std": NormalizationMode.MEAN_STD, "min_max": NormalizationMode.MIN_MAX,
             "identity": NormalizationMode.IDENTITY}
    config = copy.deepcopy(policy.config)
    config.normalization_mapping = {**policy.config.normalization_mapping, "STATE": modes[norms.qpos.mode],
                                    "ACTION": modes[norms.actions.mode]}
    state = policy.state_dict()
    stats = {STATE_KEY: lerobot_stats(norms.qpos), ACTION_KEY: lerobot_stats(norms.actions)}
    for key in policy.config.image_features:  # images keep the policy's own statistics (ACT: ImageNet's)
        buffer = f"normalize_inputs.buffer_{key.replace('.', '_')}"
        own = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.startswith(buffer + ".")}
        if own:
            stats[key] = own
    exported = type(policy)(config, dataset_stats=stats)
    missing, unexpected = exported.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(_NORM_PREFIXES)}, strict=False)
    if unexpected or any(not k.startswith(_NORM_PREFIXES) for k in missing):
        raise ExportError(f"the exported policy does not hold {run_dir}'s weights: missing "
                          f"{[k for k in missing if not k.startswith(_NORM_PREFIXES)][:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        exported.save_pretrained(out)
    provenance = {"run": str(run_dir), "method": run_config["method"], "variant": run_config.get("variant"),
                  "method_id": run_config.get("method_id"), "code_id": run_config.get("code_id"),
                  "normalization": run_config["normalization"], "data_info": run_config["data_info"]}
    (out / "harness_run.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    log.info("Exported %s (%s) as a LeRobot %s checkpoint at %s", run_dir, run_config["method"],
             config.type, out)
    return out
