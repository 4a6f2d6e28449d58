"""The two Diffusion Policy adapters honour their presets."""

import numpy as np
import torch

from harness.adapter import DataInfo, resolve_config
from harness.lerobot_bridge import IMAGE_KEY
from harness.registry import get_method

STATS = {k: {s: np.zeros(d) if s in ("mean", "min", "q01") else np.ones(d)
             for s in ("mean", "std", "min", "max", "q01", "q99")} for k, d in (("actions", 8), ("obs_qpos", 9))}
DATA = DataInfo(action_dim=8, qpos_dim=9, image_size=(32, 32), instruction="push it", stats=STATS)


def _batch(cfg):
    b = 2
    return {"frames": torch.rand(b, cfg.n_obs_steps, 3, 32, 32), "qpos": torch.randn(b, cfg.n_obs_steps, 9),
            "actions": torch.randn(b, 1, cfg.horizon, 8), "obs_is_pad": torch.zeros(b, cfg.n_obs_steps, dtype=bool),
            "action_is_pad": torch.zeros(b, 1, cfg.horizon, dtype=bool), "instruction": ["push it"] * b}


def test_dp_unet_gives_lerobot_the_resized_frames():
    cls = get_method("dp_unet").load()
    cfg = resolve_config(cls, "smoke", None, {"image_resize": (24, 20)})
    model = cls(cfg, DATA)
    seen = []
    forward = model.lerobot.forward
    model.lerobot.forward = lambda batch: (seen.append(tuple(batch[IMAGE_KEY].shape)), forward(batch))[1]
    loss, _ = model(_batch(cfg))
    assert torch.isfinite(loss)
    assert seen == [(2, cfg.n_obs_steps, 3, 24, 20)]
    # LeRobot's crop is cut from the resized frame, not from the dataset's
    assert tuple(model.lerobot.config.crop_shape) == (round(24 * cfg.crop_fraction), round(20 * cfg.crop_fraction))
    obs = {"frame": torch.rand(3, 32, 32), "qpos": torch.randn(9), "instruction": "push it", "step": 0}
    model.eval()
    assert model.act(obs).shape == (cfg.n_action_steps, 8)


def test_both_reduced_presets_resize_to_the_originals_84x84():
    for name in ("dp", "dp_unet"):
        cls = get_method(name).load()
        assert resolve_config(cls, "reduced").image_resize == (84, 84), name


def test_dp_resizes_before_its_encoder():
    cls = get_method("dp").load()
    cfg = resolve_config(cls, "smoke", None, {"image_resize": (24, 20)})
    model = cls(cfg, DATA)
    seen = []
    model.obs_encoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    model(_batch(cfg))
    assert seen == [(24, 20)]
