"""Diffusion Policy's transformer variant (real-stanford/diffusion_policy): ``TransformerForDiffusion``,
the noise model (its image encoder is robomimic's, in methods/robomimic_vision.py)."""

from __future__ import annotations

import torch
from torch import nn

from methods.dp.config import DPConfig


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
