"""Diffusion Policy's UNet variant through LeRobot's ``DiffusionPolicy`` (lerobot 0.3.2), behind
the harness adapter, so it can be compared with the transformer variant (``dp``) under the
same protocol. Frames are resized (``image_resize``) before LeRobot crops them.
"""

from __future__ import annotations

import torch

from harness.adapter import Adapter, DataInfo
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY, lerobot_features
from harness.windows import WindowSpec
from methods.diffusion_obs import ObservationHistory, resize_frames
from methods.dp_unet.config import DPUNetConfig


class DPUNetAdapter(Adapter):
    name = "dp_unet"
    config_class = DPUNetConfig
    # DP normalises actions and low-dim obs to [-1, 1] (LinearNormalizer, mode "limits")
    normalization = {"actions": "min_max", "qpos": "min_max"}
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, num_train_timesteps=10, num_inference_steps=3, warmup_steps=1,
                      checkpoint_every=2, log_every=1, num_workers=0, unet_down_dims=(32, 64)),
        # as DP's reduced preset: 84x84 inputs, a smaller batch, 16 sampling steps
        "reduced": dict(steps=4_500, batch_size=16, image_resize=(84, 84), warmup_steps=300,
                        checkpoint_every=1_000, num_inference_steps=16, num_workers=1),
    }

    def __init__(self, config: DPUNetConfig, data: DataInfo):
        super().__init__(config, data)
        self.lerobot = self._make_lerobot_policy(config, data)
        self._history = ObservationHistory(config.n_obs_steps)

    @staticmethod
    def _make_lerobot_policy(config: DPUNetConfig, data: DataInfo):
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

        height, width = config.image_resize or data.image_size
        crop = (max(8, round(height * config.crop_fraction)), max(8, round(width * config.crop_fraction)))
        lr_cfg = DiffusionConfig(
            n_obs_steps=config.n_obs_steps, horizon=config.horizon, n_action_steps=config.n_action_steps,
            crop_shape=crop, pretrained_backbone_weights=None, use_group_norm=True,
            down_dims=tuple(config.unet_down_dims), spatial_softmax_num_keypoints=config.num_keypoints,
            num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
            beta_end=config.beta_end, beta_schedule=config.beta_schedule, clip_sample=config.clip_sample,
            prediction_type=config.prediction_type, num_inference_steps=config.num_inference_steps,
            device="cpu", **lerobot_features(data, image_size=(height, width)),
        )
        return DiffusionPolicy(lr_cfg, dataset_stats={})

    @classmethod
    def window_spec(cls, config: DPUNetConfig) -> WindowSpec:
        return WindowSpec(obs_history=config.n_obs_steps, action_chunk_len=config.horizon,
                          action_offset=-(config.n_obs_steps - 1))

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W) resized to ``image_resize`` (None: as they are)."""
        return resize_frames(frames, self.config.image_resize)

    def forward(self, batch):
        loss, _ = self.lerobot.forward({
            IMAGE_KEY: self._frames(batch["frames"]), STATE_KEY: batch["qpos"],
            ACTION_KEY: batch["actions"][:, 0], "action_is_pad": batch["action_is_pad"][:, 0]})
        return loss, {"mse": float(loss.detach())}

    def reset(self):
        self._history.clear()
        self.lerobot.reset()

    def observe(self, observation):
        self._history.append(observation)

    @torch.no_grad()
    def act(self, observation):
        self.observe(observation)
        frames, qpos = self._history.stacked()
        actions = self.lerobot.diffusion.generate_actions(
            {STATE_KEY: qpos, "observation.images": self._frames(frames)[:, :, None]})
        return actions[0]  # LeRobot already returns the executable slice
