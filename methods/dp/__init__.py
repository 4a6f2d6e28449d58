"""Diffusion Policy (Chi et al., 2023), the transformer variant of the original code
(real-stanford/diffusion_policy: ``TransformerForDiffusion`` + robomimic's image encoder,
config ``train_diffusion_transformer_hybrid_workspace.yaml``), on diffusers' DDPM scheduler.

LeRobot's ``DiffusionPolicy`` (the UNet variant) is its own method, ``dp_unet``
(methods/dp_unet), so the two can be compared under the same protocol.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from harness.adapter import Adapter, DataInfo
from harness.windows import WindowSpec
from methods.diffusion_obs import ObservationHistory, resize_frames
from methods.dp.config import DPConfig
from methods.dp.model import TransformerForDiffusion
from methods.robomimic_vision import ImageEncoder


class DPAdapter(Adapter):
    name = "dp"
    config_class = DPConfig
    # DP normalises actions and low-dim obs to [-1, 1] (LinearNormalizer, mode "limits")
    normalization = {"actions": "min_max", "qpos": "min_max"}
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, n_layer=1, n_emb=32, n_head=2, num_train_timesteps=10,
                      num_inference_steps=3, warmup_steps=1, checkpoint_every=2, log_every=1,
                      num_workers=0),
        # real learning in about a CPU-hour: the original's 84x84 inputs, a smaller batch,
        # 16 DDPM sampling steps instead of 100
        "reduced": dict(steps=4_500, batch_size=16, image_resize=(84, 84), warmup_steps=300,
                        checkpoint_every=1_000, num_inference_steps=16, num_workers=1),
    }

    def __init__(self, config: DPConfig, data: DataInfo):
        super().__init__(config, data)
        self.obs_encoder = ImageEncoder(config.num_keypoints, config.image_feature_dim, config.crop_fraction)
        self.noise_model = TransformerForDiffusion(data.action_dim, config.image_feature_dim + data.qpos_dim, config)
        self.scheduler = self._make_scheduler()
        self._history = ObservationHistory(config.n_obs_steps)

    def _make_scheduler(self):
        from diffusers import DDPMScheduler

        c = self.config
        return DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start,
                             beta_end=c.beta_end, beta_schedule=c.beta_schedule,
                             variance_type=c.variance_type, clip_sample=c.clip_sample,
                             prediction_type=c.prediction_type)

    @classmethod
    def upgrade_run_config(cls, run_config: dict) -> dict:
        """Runs from before dp_unet had its own adapter (b3c42bf) carry ``backbone``: a
        transformer run drops it; a ``unet`` one (the dp_unet variant, which ignored
        image_resize) becomes a dp_unet run."""
        old = dict(run_config["method_config"])
        if "backbone" not in old:
            return run_config
        backbone, unet_down_dims = old.pop("backbone"), old.pop("unet_down_dims", None)
        if backbone == "transformer":
            return dict(run_config, method_config=old)
        from methods.dp_unet.config import DPUNetConfig

        fields = {f.name for f in dataclasses.fields(DPUNetConfig)}
        method_config = {k: v for k, v in old.items() if k in fields}
        method_config.update(unet_down_dims=unet_down_dims, image_resize=None)
        return dict(run_config, method="dp_unet", variant=None, name="dp_unet", method_config=method_config)

    @classmethod
    def window_spec(cls, config: DPConfig) -> WindowSpec:
        return WindowSpec(obs_history=config.n_obs_steps, action_chunk_len=config.horizon,
                          action_offset=-(config.n_obs_steps - 1))

    # --- training ----------------------------------------------------------------------------
    def _condition(self, frames: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        images = resize_frames(frames.flatten(0, 1), self.config.image_resize)
        features = self.obs_encoder(images).reshape(b, t, -1)
        return torch.cat([features, qpos], dim=-1)

    def forward(self, batch):
        actions = batch["actions"][:, 0]  # (B, horizon, A)
        cond = self._condition(batch["frames"], batch["qpos"])
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.scheduler.add_noise(actions, noise, t)
        pred = self.noise_model(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target)
        return loss, {"mse": float(loss.detach())}

    def optim_groups(self):
        return self.noise_model.optim_groups(self.config.weight_decay) + [
            {"params": list(self.obs_encoder.parameters()),
             "weight_decay": self.config.obs_encoder_weight_decay}]

    # --- rollouts -----------------------------------------------------------------------------
    def reset(self):
        self._history.clear()

    def observe(self, observation):
        self._history.append(observation)

    @torch.no_grad()
    def act(self, observation):
        self.observe(observation)
        frames, qpos = self._history.stacked()
        start = self.config.n_obs_steps - 1
        cond = self._condition(frames, qpos)
        sample = torch.randn(1, self.config.horizon, self.data.action_dim, device=cond.device)
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        for t in self.scheduler.timesteps:
            pred = self.noise_model(sample, t.to(cond.device), cond)
            sample = self.scheduler.step(pred, t, sample).prev_sample
        return sample[0, start:start + self.config.n_action_steps]
