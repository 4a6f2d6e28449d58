"""Diffusion Policy's transformer variant (real-stanford/diffusion_policy): robomimic's image
encoder and ``TransformerForDiffusion``, the noise model."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from methods.dp.config import DPConfig


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


class SinusoidalPosEmb(nn.Module):
    """The original's timestep embedding: [sin, cos] with frequencies 10000^(-i/(half-1)),
    i.e. diffusers' with a frequency shift of 1."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        return get_timestep_embedding(t.float(), self.dim, flip_sin_to_cos=False, downscale_freq_shift=1)


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
