"""Diffusion Policy (Chi et al., 2023), the transformer variant of the original code
(real-stanford/diffusion_policy: ``TransformerForDiffusion`` + robomimic's image encoder,
config ``train_diffusion_transformer_hybrid_workspace.yaml``), on diffusers' DDPM scheduler.

Variant ``dp_unet``: LeRobot's ``DiffusionPolicy`` (the UNet variant), so the two can be
compared under the same protocol.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY, lerobot_features
from harness.windows import WindowSpec


@dataclass(frozen=True)
class DPConfig(MethodConfig):
    """Defaults: the original DP-transformer image config (hybrid workspace yaml)."""

    backbone: str = "transformer"
    """``transformer`` (ours, after Chi et al.'s code) or ``unet`` (LeRobot's DiffusionPolicy)."""
    horizon: int = 10
    """Actions denoised per query, starting at the oldest observation step."""
    n_obs_steps: int = 2
    n_action_steps: int = 8
    """Actions executed per query: horizon[n_obs_steps-1 : n_obs_steps-1+n_action_steps]."""
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True
    n_cond_layers: int = 0
    """0: an MLP encodes the condition tokens (original default)."""
    image_resize: tuple[int, int] | None = None
    """``transformer`` backbone: resize frames to (H, W) before cropping; None keeps the
    dataset's size. The original image configs feed 84x84 frames."""
    crop_fraction: float = 76 / 84
    """Random crop (train) / centre crop (eval) size as a fraction of the image (orig.: 76 of 84)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints of robomimic's ResNet18 encoder (GroupNorm instead of BatchNorm)."""
    image_feature_dim: int = 64
    num_train_timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    prediction_type: str = "epsilon"
    num_inference_steps: int = 100
    obs_encoder_weight_decay: float = 1e-6
    unet_down_dims: tuple[int, ...] = (512, 1024, 2048)
    """``unet`` backbone only: channels of the UNet's levels (LeRobot / DP paper default)."""
    # training: lr 1e-4, betas (0.9, 0.95), weight decay 1e-3 (transformer), cosine with 1000
    # warmup steps, EMA up to 0.9999, batch 64. The original trains 3050 epochs; we count steps.
    steps: int = 200_000
    batch_size: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 1000
    lr_schedule: str = "cosine"
    grad_clip_norm: float | None = None
    ema_decay: float | None = 0.9999


# --------------------------------------------------------------------------- obs encoder
class SpatialSoftmax(nn.Module):
    """Expected 2D position of each of ``num_kp`` learned keypoint maps (robomimic)."""

    def __init__(self, in_channels: int, num_kp: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(features)
        b, k, h, w = maps.shape
        attention = F.softmax(maps.flatten(2), dim=-1)
        ys = torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype)
        xs = torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        x = (attention * grid_x.reshape(1, 1, -1)).sum(-1)
        y = (attention * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([x, y], -1).reshape(b, k * 2)


class ImageEncoder(nn.Module):
    """ResNet18 (random init, BatchNorm -> GroupNorm so EMA works) + spatial softmax + linear."""

    def __init__(self, num_kp: int, feature_dim: int, crop_fraction: float):
        super().__init__()
        import torchvision

        resnet = torchvision.models.resnet18(
            weights=None, norm_layer=lambda c: nn.GroupNorm(num_groups=c // 16, num_channels=c))
        self.backbone = nn.Sequential(*list(resnet.children())[:-2])
        self.pool = SpatialSoftmax(512, num_kp)
        self.proj = nn.Linear(num_kp * 2, feature_dim)
        self.crop_fraction = crop_fraction

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        ch, cw = max(8, round(h * self.crop_fraction)), max(8, round(w * self.crop_fraction))
        if self.training:  # one random crop per image
            top = torch.randint(0, h - ch + 1, (images.shape[0],), device=images.device)
            left = torch.randint(0, w - cw + 1, (images.shape[0],), device=images.device)
            rows = top[:, None] + torch.arange(ch, device=images.device)
            cols = left[:, None] + torch.arange(cw, device=images.device)
            idx = torch.arange(images.shape[0], device=images.device)[:, None, None]
            return images.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[..., top:top + ch, left:left + cw]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.backbone(self.crop(images))))


# --------------------------------------------------------------------------- noise model
class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * freq[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class TransformerForDiffusion(nn.Module):
    """Chi et al.'s noise model: action tokens decoded with cross-attention to [time, obs...]
    condition tokens; causal self-attention; obs token s visible from action step >= s-1."""

    def __init__(self, action_dim: int, cond_dim: int, cfg: DPConfig):
        super().__init__()
        T, T_cond = cfg.horizon, 1 + cfg.n_obs_steps
        d = cfg.n_emb
        self.input_emb = nn.Linear(action_dim, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, d))
        self.drop = nn.Dropout(cfg.p_drop_emb)
        self.time_emb = SinusoidalPosEmb(d)
        self.cond_obs_emb = nn.Linear(cond_dim, d)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, d))
        if cfg.n_cond_layers > 0:
            self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(
                d, cfg.n_head, 4 * d, cfg.p_drop_attn, activation="gelu", batch_first=True,
                norm_first=True), cfg.n_cond_layers)
        else:
            self.encoder = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(
            d, cfg.n_head, 4 * d, cfg.p_drop_attn, activation="gelu", batch_first=True,
            norm_first=True), cfg.n_layer)
        if cfg.causal_attn:
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            t, s = torch.meshgrid(torch.arange(T), torch.arange(T_cond), indexing="ij")
            self.register_buffer("mask", torch.zeros(T, T).masked_fill(causal, float("-inf")))
            # the time token is condition 0, so obs token s is visible from action step s-1 on
            self.register_buffer("memory_mask", torch.zeros(T, T_cond).masked_fill(t < s - 1, float("-inf")))
        else:
            self.mask = self.memory_mask = None
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, action_dim)
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(m, name) is not None:
                    nn.init.normal_(getattr(m, name), std=0.02)
            for name in ("in_proj_bias", "bias_k", "bias_v"):
                if getattr(m, name) is not None:
                    nn.init.zeros_(getattr(m, name))
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        timestep = timestep.expand(sample.shape[0]) if timestep.dim() else timestep.repeat(sample.shape[0])
        cond_tokens = torch.cat([self.time_emb(timestep)[:, None], self.cond_obs_emb(cond)], dim=1)
        memory = self.encoder(self.drop(cond_tokens + self.cond_pos_emb[:, : cond_tokens.shape[1]]))
        x = self.drop(self.input_emb(sample) + self.pos_emb[:, : sample.shape[1]])
        x = self.decoder(tgt=x, memory=memory, tgt_mask=self.mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on Linear/attention weights only (as the original's get_optim_groups)."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                is_weight = name.endswith("weight") or name.endswith("proj_weight")
                if is_weight and isinstance(module, (nn.Linear, nn.MultiheadAttention)):
                    decay.append(p)
                else:
                    no_decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- the adapter
class DPAdapter(Adapter):
    name = "dp"
    config_class = DPConfig
    # DP normalises actions and low-dim obs to [-1, 1] (LinearNormalizer, mode "limits")
    normalization = {"actions": "min_max", "qpos": "min_max"}
    variants = {
        # LeRobot's UNet DiffusionPolicy with its own defaults (horizon 16, n_obs 2, 8 actions)
        "dp_unet": dict(backbone="unet", horizon=16, weight_decay=1e-6, warmup_steps=500),
    }
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, n_layer=1, n_emb=32, n_head=2, num_train_timesteps=10,
                      num_inference_steps=3, warmup_steps=1, checkpoint_every=2, log_every=1,
                      num_workers=0, unet_down_dims=(32, 64)),
        # real learning in about a CPU-hour: the original's 84x84 inputs, a smaller batch,
        # 16 DDPM sampling steps instead of 100
        "reduced": dict(steps=4_500, batch_size=16, image_resize=(84, 84), warmup_steps=300,
                        checkpoint_every=1_000, num_inference_steps=16, num_workers=1),
    }

    def __init__(self, config: DPConfig, data: DataInfo):
        super().__init__(config, data)
        if config.backbone == "transformer":
            self.obs_encoder = ImageEncoder(config.num_keypoints, config.image_feature_dim,
                                            config.crop_fraction)
            self.noise_model = TransformerForDiffusion(
                data.action_dim, config.image_feature_dim + data.qpos_dim, config)
            self.scheduler = self._make_scheduler()
        elif config.backbone == "unet":
            self.lerobot = self._make_lerobot_policy(config, data)
        else:
            raise ValueError(f"DPConfig.backbone must be transformer or unet, not {config.backbone!r}")
        self._history: deque = deque(maxlen=config.n_obs_steps)

    def _make_scheduler(self):
        from diffusers import DDPMScheduler

        c = self.config
        return DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_start=c.beta_start,
                             beta_end=c.beta_end, beta_schedule=c.beta_schedule,
                             variance_type=c.variance_type, clip_sample=c.clip_sample,
                             prediction_type=c.prediction_type)

    @staticmethod
    def _make_lerobot_policy(config: DPConfig, data: DataInfo):
        from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

        height, width = data.image_size
        crop = (max(8, round(height * config.crop_fraction)), max(8, round(width * config.crop_fraction)))
        lr_cfg = DiffusionConfig(
            n_obs_steps=config.n_obs_steps, horizon=config.horizon, n_action_steps=config.n_action_steps,
            crop_shape=crop, pretrained_backbone_weights=None, use_group_norm=True,
            down_dims=tuple(config.unet_down_dims),
            spatial_softmax_num_keypoints=config.num_keypoints,
            num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
            beta_end=config.beta_end, beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample, prediction_type=config.prediction_type,
            num_inference_steps=config.num_inference_steps, device="cpu",
            **lerobot_features(data),
        )
        return DiffusionPolicy(lr_cfg, dataset_stats={})

    @classmethod
    def window_spec(cls, config: DPConfig) -> WindowSpec:
        return WindowSpec(obs_history=config.n_obs_steps, action_chunk_len=config.horizon,
                          action_offset=-(config.n_obs_steps - 1))

    # --- training ----------------------------------------------------------------------------
    def _condition(self, frames: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        images = frames.flatten(0, 1)
        if self.config.image_resize is not None:
            images = F.interpolate(images, size=tuple(self.config.image_resize), mode="bilinear",
                                   antialias=True, align_corners=False)
        features = self.obs_encoder(images).reshape(b, t, -1)
        return torch.cat([features, qpos], dim=-1)

    def forward(self, batch):
        actions = batch["actions"][:, 0]  # (B, horizon, A)
        if self.config.backbone == "unet":
            loss, _ = self.lerobot.forward({
                IMAGE_KEY: batch["frames"], STATE_KEY: batch["qpos"],
                ACTION_KEY: actions, "action_is_pad": batch["action_is_pad"][:, 0]})
            return loss, {"mse": float(loss.detach())}
        cond = self._condition(batch["frames"], batch["qpos"])
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.scheduler.add_noise(actions, noise, t)
        pred = self.noise_model(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        loss = F.mse_loss(pred, target)
        return loss, {"mse": float(loss.detach())}

    def optim_groups(self):
        if self.config.backbone == "unet":
            return super().optim_groups()
        return self.noise_model.optim_groups(self.config.weight_decay) + [
            {"params": list(self.obs_encoder.parameters()),
             "weight_decay": self.config.obs_encoder_weight_decay}]

    # --- rollouts -----------------------------------------------------------------------------
    def reset(self):
        self._history.clear()
        if self.config.backbone == "unet":
            self.lerobot.reset()

    def observe(self, observation):
        self._history.append((observation["frame"], observation["qpos"]))

    @torch.no_grad()
    def act(self, observation):
        self.observe(observation)
        while len(self._history) < self.config.n_obs_steps:  # episode start: repeat the first obs
            self._history.appendleft(self._history[0])
        frames = torch.stack([f for f, _ in self._history])[None]
        qpos = torch.stack([q for _, q in self._history])[None]
        start = self.config.n_obs_steps - 1
        if self.config.backbone == "unet":
            actions = self.lerobot.diffusion.generate_actions(
                {STATE_KEY: qpos, "observation.images": frames[:, :, None]})
            return actions[0]  # LeRobot already returns the executable slice
        cond = self._condition(frames, qpos)
        sample = torch.randn(1, self.config.horizon, self.data.action_dim, device=cond.device)
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        for t in self.scheduler.timesteps:
            pred = self.noise_model(sample, t.to(cond.device), cond)
            sample = self.scheduler.step(pred, t, sample).prev_sample
        return sample[0, start:start + self.config.n_action_steps]
