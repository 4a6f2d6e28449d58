import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402,F401  (runtime settings: offline, Vulkan driver)
from harness.dataset import Episode, encode_image, write_dataset  # noqa: E402


def synthetic_episode(seed: int, num_steps: int, size=(16, 20), action_dim=8, qpos_dim=9,
                      codec="png") -> Episode:
    """An episode whose values encode where they come from, so windows can be checked exactly:
    action[t] = seed*1000 + t (all dims, plus dim index / 10), qpos[t] = seed*1000 + t,
    frame t is filled with (t % 250) in channel 0 and seed % 250 in channel 1."""
    t_act = np.arange(num_steps, dtype=np.float32)[:, None]
    actions = seed * 1000 + t_act + np.arange(action_dim, dtype=np.float32)[None] / 10
    qpos = seed * 1000 + np.arange(num_steps + 1, dtype=np.float32)[:, None] * np.ones(qpos_dim, np.float32)
    frames = []
    for t in range(num_steps + 1):
        img = np.zeros(size + (3,), np.uint8)
        img[..., 0] = t % 250
        img[..., 1] = seed % 250
        frames.append(encode_image(img, codec))
    return Episode(seed=seed, frames=frames, qpos=qpos, actions=actions.astype(np.float32))


SYNTH_META = {"task": "PushCube", "env_id": "PushCube-v1", "instruction": "push it",
              "control_mode": "pd_joint_pos", "camera": "render_camera", "image_size": [16, 20],
              "image_codec": "png"}


@pytest.fixture
def synthetic_dataset(tmp_path):
    """A small dataset file: episodes of 5, 12 and 3 steps (seeds 0, 1, 2)."""
    episodes = [synthetic_episode(s, n) for s, n in [(0, 5), (1, 12), (2, 3)]]
    return write_dataset(tmp_path / "synthetic.h5", episodes, SYNTH_META)


def lerobot_act_checkpoint(folder, image_size=(32, 32), seed=0):
    """A LeRobot pretrained-model folder as lerobot-train writes one (config.json +
    model.safetensors), made by LeRobot's own ACTPolicy at a tiny size, with its own mean/std
    statistics for the state and the action (not the identity)."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.manual_seed(seed)
    config = ACTConfig(
        input_features={"observation.image": PolicyFeature(FeatureType.VISUAL, (3, *image_size)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (9,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (8,))},
        chunk_size=4, n_action_steps=4, dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1,
        n_vae_encoder_layers=1, latent_dim=8, pretrained_backbone_weights=None, device="cpu")
    g = torch.Generator().manual_seed(seed)
    stats = {"observation.image": {"mean": torch.rand(3, 1, 1, generator=g), "std": torch.rand(3, 1, 1, generator=g) + 0.5},
             "observation.state": {"mean": torch.randn(9, generator=g), "std": torch.rand(9, generator=g) + 0.5},
             "action": {"mean": torch.randn(8, generator=g), "std": torch.rand(8, generator=g) + 0.5}}
    policy = ACTPolicy(config, dataset_stats=stats)
    policy.save_pretrained(folder)
    return folder
