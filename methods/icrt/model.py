"""ICRT's modules, written from Max-Fu/icrt@e0c9588 (icrt/models/policy/llama.py, icrt.py,
icrt/models/backbones/encoders.py): a Llama transformer with a KV-cache for rollouts, the
attention pooling that makes a state token, timm-style MLPs, and the image encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """timm's Mlp as upstream builds it: fc1, GELU, fc2; hidden width = input width unless given."""

    def __init__(self, in_features: int, out_features: int, hidden_features: int | None = None):
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Llama's rotary embedding of x (B, heads, T, head_dim): consecutive channel pairs rotate
    by position * theta^(-2i/head_dim) (llama.py's view_as_complex over pairs)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (theta ** (torch.arange(0, half, device=x.device, dtype=torch.float32) * 2 / x.shape[-1]))
    angles = positions.float()[:, None] * freqs[None]  # (T, half)
    cos, sin = angles.cos(), angles.sin()
    pairs = x.float().reshape(*x.shape[:-1], half, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, theta: float):
        super().__init__()
        self.n_heads, self.theta = n_heads, theta
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, start: int, cache: dict | None):
        B, T, D = x.shape
        split = lambda t: t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # noqa: E731
        positions = torch.arange(start, start + T, device=x.device)
        q = rope(split(self.wq(x)), positions, self.theta)
        k = rope(split(self.wk(x)), positions, self.theta)
        v = split(self.wv(x))
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        if k.shape[2] == T:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new tokens after cached ones: each sees every cached token and the new ones before it
            past = k.shape[2] - T
            mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), hidden int(2 * 4 * dim / 3) rounded up to ``multiple_of``."""

    def __init__(self, dim: int, multiple_of: int):
        super().__init__()
        hidden = int(2 * 4 * dim / 3)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim, n_heads, multiple_of, eps, theta):
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = Attention(dim, n_heads, theta)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = FeedForward(dim, multiple_of)

    def forward(self, x, start, cache):
        h = x + self.attention(self.attention_norm(x), start, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class LlamaTransformer(nn.Module):
    """Causal Llama-2 blocks over input embeddings (no token embedding, no output layer), then
    the final RMSNorm. ``forward(x, start, caches)``: with ``caches`` (one dict per layer) the
    keys and values of earlier calls are reused and extended, so a rollout feeds each new token
    once."""

    def __init__(self, dim, n_layers, n_heads, multiple_of, eps, theta):
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, n_heads, multiple_of, eps, theta) for _ in range(n_layers))
        self.norm = RMSNorm(dim, eps)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.layers]

    def forward(self, x, start: int = 0, caches: list[dict] | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, start, None if caches is None else caches[i])
        return self.norm(x)


class AttentionPool(nn.Module):
    """One learned query attends over the image tokens and the proprio token (upstream's
    ``AttentionPool.combine_forward``, latent_len 1, qkv bias, no qk-norm), then proj and a
    residual pre-LN MLP."""

    def __init__(self, in_features: int, out_features: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, in_features))
        nn.init.trunc_normal_(self.latent, std=in_features ** -0.5)
        self.q = nn.Linear(in_features, in_features)
        self.kv = nn.Linear(in_features, 2 * in_features)
        self.proj = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features, eps=1e-6)
        self.mlp = Mlp(out_features, out_features, int(out_features * mlp_ratio))

    def forward(self, tokens):  # (N, K, C) -> (N, out)
        N, K, C = tokens.shape
        h = self.num_heads
        q = self.q(self.latent).expand(N, -1, -1).reshape(N, 1, h, C // h).transpose(1, 2)
        k, v = self.kv(tokens).reshape(N, K, 2, h, C // h).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, C)
        x = self.proj(x)
        return x + self.mlp(self.norm(x))


class SmallConvEncoder(nn.Module):
    """The trainable encoder used without ViT weights: stride-2 3x3 conv stages with GroupNorm
    and GELU; each pixel of the last stage is a token (N, h*w, C)."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, images):
        return self.net(images).flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """A timm ViT returning all its tokens (class token and patches), its final norm removed
    (upstream applies a trainable LayerNorm outside it); frozen, in eval mode."""

    def __init__(self, name: str, image_size: tuple[int, int]):
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
                                       img_size=tuple(image_size))
        self.model.norm = nn.Identity()
        self.out_dim = self.model.embed_dim
        self.requires_grad_(False)

    def train(self, mode: bool = True):  # frozen: dropout and the like stay off
        return super().train(False)

    def forward(self, images):
        return self.model.forward_features(images)


def random_crop_thetas(n: int, scale: tuple[float, float], device=None) -> torch.Tensor:
    """Affine grids' thetas (n, 2, 3) of square random-resized crops covering a random fraction
    of the image area in ``scale`` at a random position."""
    area = torch.empty(n, device=device).uniform_(*scale)
    side = area.sqrt()  # fraction of the width (and height): aspect ratio 1
    cx = (torch.rand(n, device=device) * 2 - 1) * (1 - side)
    cy = (torch.rand(n, device=device) * 2 - 1) * (1 - side)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, cx, cy
    return theta


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Upstream normalises every frame with timm's ImageNet statistics (Max-Fu/icrt@e0c9588:scripts/train.py)."""
