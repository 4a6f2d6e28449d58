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
    generate = model.lerobot.diffusion.generate_actions
    model.lerobot.diffusion.generate_actions = lambda batch: (
        seen.append(tuple(batch["observation.images"].shape)), generate(batch))[1]
    assert model.act(obs).shape == (cfg.n_action_steps, 8)
    assert seen[1] == (1, cfg.n_obs_steps, 1, 3, 24, 20)  # rollouts see the frames training saw


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


def test_timestep_embeddings_follow_each_original():
    """DP's: [sin, cos] at 10000^(-i/(half-1)) (real-stanford/diffusion_policy's
    SinusoidalPosEmb); PAR's: [cos, sin] at 10000^(-i/half) (MAR/DiT). Both come from
    diffusers; the flags that pick each must stay right."""
    import math

    from methods.dp.model import SinusoidalPosEmb
    from methods.par.layers import timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.0, 99.0])
    half = 16
    i = torch.arange(half, dtype=torch.float64)
    dp_angles = t.double()[:, None] * torch.exp(-math.log(10000) * i / (half - 1))
    torch.testing.assert_close(SinusoidalPosEmb(2 * half)(t).double(),
                               torch.cat([dp_angles.sin(), dp_angles.cos()], -1), atol=1e-5, rtol=0)
    par_angles = t.double()[:, None] * torch.exp(-math.log(10000) * i / half)
    torch.testing.assert_close(timestep_embedding(t, 2 * half).double(),
                               torch.cat([par_angles.cos(), par_angles.sin()], -1), atol=1e-5, rtol=0)
    assert timestep_embedding(t.repeat(3, 1), 2 * half).shape == (3, 4, 2 * half)


def test_runs_from_before_the_split_still_load(tmp_path):
    """A run_config.json of the dp_unet variant (method dp, backbone unet) and of a dp
    transformer run, as written before dp_unet had its own adapter, load today."""
    import json

    from conftest import SYNTH_META, synthetic_episode
    from harness.dataset import write_dataset
    from harness.runs import load_trained
    from harness.train import train

    dataset = write_dataset(tmp_path / "d.h5", [synthetic_episode(s, 30, size=(32, 32)) for s in (0, 1)],
                            dict(SYNTH_META, image_size=[32, 32]))
    for name, backbone in (("dp_unet", "unet"), ("dp", "transformer")):
        cls = get_method(name).load()
        run = train(cls, resolve_config(cls, "smoke"), dataset, tmp_path / name, device="cpu", progress=False)
        config = json.loads((run / "run_config.json").read_text())
        old = dict(config["method_config"], backbone=backbone)
        if backbone == "unet":  # the variant's config was DPConfig's fields plus the UNet's
            old.update(n_layer=8, n_head=4, n_emb=256, variance_type="fixed_small")
            config.update(method="dp", variant="dp_unet")
        else:
            old["unet_down_dims"] = [512, 1024, 2048]
        (run / "run_config.json").write_text(json.dumps(dict(config, method_config=old)))
        model, loaded = load_trained(run)
        assert type(model).name == name and loaded["method"] == name
