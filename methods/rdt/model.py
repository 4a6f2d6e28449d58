"""The RDT DiT and its condition adaptors, written from thu-ml/RoboticsDiffusionTransformer@deb71d8
(models/rdt/model.py, models/rdt/blocks.py, models/rdt_runner.py).

Module and parameter names follow upstream's ``RDTRunner`` (``model.blocks.N.attn.qkv``,
``lang_adaptor.0``, ...) so its published state dict loads as it is. The self-attention, MLP and
RMSNorm layers are timm's, as upstream uses them; the cross-attention is written here.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp, RmsNorm
from torch import nn


def _gelu_tanh():
    return nn.GELU(approximate="tanh")


# --- sin-cos position tables (the initial values of the trainable position embeddings) ------------
def sincos_1d(dim: int, positions) -> np.ndarray:
    """(len(positions), dim): sines in the first half, cosines in the second, frequencies
    10000^(-2i/dim) (MAE's table, which upstream uses)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def grid_sincos(dim: int, sizes: tuple[int, ...]) -> np.ndarray:
    """(prod(sizes), dim): the channels split evenly (rounded down to even) between the grid
    axes longer than 1, each axis' slice a 1-d table of its index; axes of size 1 get nothing."""
    axes = [a for a, n in enumerate(sizes) if n > 1]
    table = np.zeros(tuple(sizes) + (dim,))
    if not axes:
        return table.reshape(-1, dim)
    width = dim // len(axes)
    width -= width % 2
    for slot, axis in enumerate(axes):
        shape = [1] * len(sizes) + [width]
        shape[axis] = -1
        table[..., slot * width:(slot + 1) * width] += sincos_1d(width, np.arange(sizes[axis])).reshape(shape)
    return table.reshape(-1, dim)


def multimodal_sincos(dim: int, lengths: "OrderedDict[str, int | tuple]", embed_modality: bool = True) -> np.ndarray:
    """Position table of consecutive modalities. With ``embed_modality`` the first half of the
    channels encodes the modality's index and the second half the position inside it; without,
    all channels encode the position. A negative length means that many tokens all at position 0;
    a grid's negative axis gets no position signal (as upstream's get_multimodal_cond_pos_embed)."""
    n = len(lengths)
    modality = np.zeros((n, dim))
    if embed_modality:
        modality[:, :dim // 2] = sincos_1d(dim // 2, np.arange(n))
    pos_dim = dim // 2 if embed_modality else dim
    rows = []
    for index, length in enumerate(lengths.values()):
        if isinstance(length, (tuple, list)):
            sizes = tuple(abs(x) for x in length)
            table = np.zeros(sizes + (dim,))
            table[..., -pos_dim:] = grid_sincos(pos_dim, tuple(max(x, 1) for x in length)).reshape(
                tuple(max(x, 1) for x in length) + (pos_dim,))
            table = table.reshape(-1, dim)
        else:
            table = np.zeros((abs(length), dim))
            table[:, -pos_dim:] = sincos_1d(pos_dim, np.arange(length) if length > 0 else [0])
        rows.append(table + modality[index])
    return np.concatenate(rows, axis=0)


# --- layers -----------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """A scalar (diffusion step, control frequency) as 256 sinusoid channels (cosines first),
    then Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_channels: int = 256):
        super().__init__()
        self.frequency_channels = frequency_channels
        self.mlp = nn.Sequential(nn.Linear(frequency_channels, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.reshape(-1, 1).float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class CrossAttention(nn.Module):
    """Queries from the action sequence, keys and values from a condition, RMSNorm on queries
    and keys per head, biases on the projections; ``mask`` (B, L) is True where the condition
    token is valid."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = RmsNorm(self.head_dim)
        self.k_norm = RmsNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(c).view(b, c.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class RDTBlock(nn.Module):
    """Pre-RMSNorm: self-attention, cross-attention to a condition, then an MLP as wide as the
    model (GELU-tanh), each with a residual."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.norm1 = RmsNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, qk_norm=True, norm_layer=RmsNorm)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = RmsNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, hidden_features=hidden_size, act_layer=_gelu_tanh)
        self.norm3 = RmsNorm(hidden_size, eps=1e-6)

    def forward(self, x, c, mask=None):
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), c, mask)
        return x + self.ffn(self.norm3(x))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = RmsNorm(hidden_size, eps=1e-6)
        self.ffn_final = Mlp(hidden_size, hidden_features=hidden_size, out_features=out_channels, act_layer=_gelu_tanh)

    def forward(self, x):
        return self.ffn_final(self.norm_final(x))


class RDT(nn.Module):
    """The DiT: [diffusion step, control frequency, state, actions] tokens (bidirectional), each
    block cross-attending to the language tokens (even blocks) or the image tokens (odd blocks);
    returns the action tokens' outputs."""

    def __init__(self, output_dim: int, horizon: int, hidden_size: int, depth: int, num_heads: int,
                 max_lang_cond_len: int, img_grid: tuple[int, int, int]):
        super().__init__()
        self.horizon, self.hidden_size = horizon, hidden_size
        self.img_grid = img_grid
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.freq_embedder = TimestepEmbedder(hidden_size)
        self.x_pos_embed = nn.Parameter(torch.zeros(1, horizon + 3, hidden_size))
        self.lang_cond_pos_embed = nn.Parameter(torch.zeros(1, max_lang_cond_len, hidden_size))
        self.img_cond_pos_embed = nn.Parameter(torch.zeros(1, int(np.prod(img_grid)), hidden_size))
        self.blocks = nn.ModuleList([RDTBlock(hidden_size, num_heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, output_dim)
        if self.x_pos_embed.device.type != "meta":
            self.initialize_weights()

    def initialize_weights(self):
        """Xavier-uniform linears with zero biases; position tables from sin-cos (the action
        sequence by modality and position; the images by history step and camera, not by patch,
        which the ViT already encodes; language all at position 0); N(0, 0.02) step and frequency MLPs;
        a zero output layer (models/rdt/model.py initialize_weights, with the position configs
        of scripts/maniskill_model.py)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        x_pos = multimodal_sincos(self.hidden_size, OrderedDict(
            [("timestep", 1), ("ctrl_freq", 1), ("state", 1), ("action", self.horizon)]))
        history, cameras, patches = self.img_grid
        img_pos = multimodal_sincos(self.hidden_size, OrderedDict([("image", (history, cameras, -patches))]),
                                    embed_modality=False)
        lang_pos = multimodal_sincos(self.hidden_size, OrderedDict([("lang", -self.lang_cond_pos_embed.shape[1])]),
                                     embed_modality=False)
        with torch.no_grad():
            self.x_pos_embed.copy_(torch.from_numpy(x_pos).float()[None])
            self.img_cond_pos_embed.copy_(torch.from_numpy(img_pos).float()[None])
            self.lang_cond_pos_embed.copy_(torch.from_numpy(lang_pos).float()[None])
        for embedder in (self.t_embedder, self.freq_embedder):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.weight)
        nn.init.zeros_(self.final_layer.ffn_final.fc2.bias)

    def forward(self, x, freq, t, lang_c, img_c, lang_mask=None, img_mask=None):
        """x (B, 1 + horizon, D): the adapted state and noisy-action tokens; freq (B,); t (B,) or
        (1,); lang_c (B, L, D); img_c (B, I, D); masks True where valid. -> (B, horizon, out)."""
        b = x.shape[0]
        t = self.t_embedder(t)[:, None].expand(b, -1, -1)
        freq = self.freq_embedder(freq)[:, None]
        x = torch.cat([t, freq, x], dim=1) + self.x_pos_embed
        lang_c = lang_c + self.lang_cond_pos_embed[:, :lang_c.shape[1]]
        img_c = img_c + self.img_cond_pos_embed
        conds, masks = (lang_c, img_c), (lang_mask, img_mask)
        for i, block in enumerate(self.blocks):
            x = block(x, conds[i % 2], masks[i % 2])
        return self.final_layer(x)[:, -self.horizon:]


def condition_adaptor(kind: str, in_features: int, out_features: int) -> nn.Module:
    """``linear`` or ``mlp<N>x_gelu``: N linears with GELU-tanh between
    (models/rdt_runner.py build_condition_adapter)."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not match:
        raise ValueError(f"unknown RDT adaptor {kind!r}: use 'linear' or 'mlp<N>x_gelu'")
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(int(match.group(1)) - 1):
        layers += [_gelu_tanh(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)
