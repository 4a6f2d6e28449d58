"""robomimic's BC_Transformer network (``TransformerActorNetwork`` / ``TransformerGMMActorNetwork``
over ``MIMO_Transformer`` and ``GPT_Backbone``), written from robomimic's module definitions."""

from __future__ import annotations

import math

import torch
import torch.distributions as D
import torch.nn.functional as F
from torch import nn

from methods.bc_t.config import BCTConfig


class CausalSelfAttention(nn.Module):
    """minGPT attention as robomimic has it: qkv without bias, output projection with bias."""

    def __init__(self, cfg: BCTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=False)
        self.output = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.attn_dropout = nn.Dropout(cfg.attn_dropout)
        self.output_dropout = nn.Dropout(cfg.block_output_dropout)
        self.register_buffer("mask", torch.tril(torch.ones(cfg.context_length, cfg.context_length)).bool(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, dim=-1))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
        y = (self.attn_dropout(att) @ v).transpose(1, 2).reshape(b, t, d)
        return self.output_dropout(self.output(y))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)) with a 4x GELU MLP."""

    def __init__(self, cfg: BCTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(cfg.block_output_dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTBackbone(nn.Module):
    """The blocks and the final LayerNorm; robomimic initialises its Linear weights N(0, 0.02)."""

    def __init__(self, cfg: BCTConfig):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.num_layers)])
        self.output_ln = nn.LayerNorm(cfg.embed_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_ln(self.blocks(x))


class TokenEmbedding(nn.Module):
    """Per-step observation features -> Linear -> + learned timestep embedding (an nn.Parameter,
    zero-initialised: robomimic's ``nn_parameter_for_timesteps``) -> LayerNorm -> dropout."""

    def __init__(self, in_dim: int, cfg: BCTConfig):
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.embed_dim)
        self.timestep = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.embed_dim))
        self.ln = nn.LayerNorm(cfg.embed_dim)
        self.drop = nn.Dropout(cfg.emb_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.drop(self.ln(self.proj(features) + self.timestep[:, :features.shape[1]]))


class DeterministicHead(nn.Module):
    """tanh(Linear): actions in [-1, 1] (TransformerActorNetwork)."""

    def __init__(self, embed_dim: int, action_dim: int):
        super().__init__()
        self.action = nn.Linear(embed_dim, action_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.action(h))


class GMMHead(nn.Module):
    """Mixture of ``num_modes`` diagonal Gaussians (TransformerGMMActorNetwork): tanh means,
    softplus(scale) + min_std, mode logits; one Linear per output, as robomimic's decoder."""

    def __init__(self, embed_dim: int, action_dim: int, cfg: BCTConfig):
        super().__init__()
        self.num_modes, self.action_dim = cfg.num_modes, action_dim
        self.min_std = cfg.min_std
        self.mean = nn.Linear(embed_dim, cfg.num_modes * action_dim)
        self.scale = nn.Linear(embed_dim, cfg.num_modes * action_dim)
        self.logits = nn.Linear(embed_dim, cfg.num_modes)

    def forward(self, h: torch.Tensor, low_noise: bool = False) -> D.MixtureSameFamily:
        # float32 even under bf16 autocast (robomimic trains in float32): bf16 tanh means near
        # +-1 are 0.004 apart, which the 1e-4 std floor would turn into huge likelihood terms
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self._distribution(h.float(), low_noise)

    def _distribution(self, h: torch.Tensor, low_noise: bool) -> D.MixtureSameFamily:
        shape = (*h.shape[:-1], self.num_modes, self.action_dim)
        means = torch.tanh(self.mean(h).view(shape))
        scales = (torch.full_like(means, 1e-4) if low_noise
                  else F.softplus(self.scale(h).view(shape)) + self.min_std)
        components = D.Independent(D.Normal(means, scales), 1)
        return D.MixtureSameFamily(D.Categorical(logits=self.logits(h)), components)
