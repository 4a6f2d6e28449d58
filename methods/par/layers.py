"""Building blocks of PAR: attention with RoPE and a KV-cache, NOVA-style transformer blocks,
the physical-token causal mask (paper Fig. 3), and diffusion conditioning layers.

Written for this harness after reading NOVA (baaivision/NOVA, ``diffnext``) and MAR
(LTH14/mar); layer shapes follow NOVA so that its checkpoints map onto these modules
(see ``weights.py``).
"""

from __future__ import annotations

import math


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


# --------------------------------------------------------------------------- the mask (Fig. 3)
def physical_mask(num_text: int, frame_tokens: int, action_tokens: int, num_steps: int,
                  bos_tokens: int = 0) -> torch.Tensor:
    """Boolean (S, S) attention mask of PAR's causal transformer; True = may attend.

    Sequence: ``num_text`` text tokens, then ``bos_tokens`` tokens of NOVA's begin-of-video
    slot (with ``PARConfig.video_mixer_rank``; otherwise none), then per physical step n:
    ``frame_tokens`` frame tokens O_n followed by ``action_tokens`` action tokens A_n. Rules
    (Sec. 4.2.4, Fig. 3): text sees text; a frame token sees text, every earlier step and every
    frame token of its own step (chunk-bidirectional); an action token sees text, every earlier
    step, the frame tokens of its own step (the implicit inverse-kinematics path) and the action
    tokens of its step up to itself (temporal causal); nothing sees a later step. The BOS slot
    and the text form one block, as in NOVA's mask over its clip's slots, where the text shares
    the BOS slot's group (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py,
    MaskEmbed.get_attn_mask; its generation attends over both unmasked): each sees the other,
    and every step sees both.
    """
    step = frame_tokens + action_tokens
    size = num_text + bos_tokens + num_steps * step
    kind = torch.zeros(size, dtype=torch.long)  # 0 text, 1 frame, 2 action
    step_of = torch.full((size,), -1, dtype=torch.long)  # the text and the BOS slot: -1
    index_in_step = torch.zeros(size, dtype=torch.long)
    kind[num_text:num_text + bos_tokens] = 1
    for n in range(num_steps):
        lo = num_text + bos_tokens + n * step
        step_of[lo:lo + step] = n
        kind[lo:lo + frame_tokens] = 1
        kind[lo + frame_tokens:lo + step] = 2
        index_in_step[lo:lo + step] = torch.arange(step)
    q_kind, k_kind = kind[:, None], kind[None, :]
    q_step, k_step = step_of[:, None], step_of[None, :]
    earlier = (k_step < q_step) & (k_kind != 0)
    same = (k_step == q_step) & (q_kind != 0)
    text_key = k_kind == 0
    frame_q = (q_kind == 1) & (text_key | earlier | (same & (k_kind == 1)))
    action_q = (q_kind == 2) & (text_key | earlier | (same & (k_kind == 1)) |
                                (same & (k_kind == 2) & (index_in_step[None, :] <= index_in_step[:, None])))
    bos_key = (k_kind == 1) & (k_step == -1)
    text_q = (q_kind == 0) & (text_key | bos_key)
    return text_q | frame_q | action_q


# --------------------------------------------------------------------------- RoPE
class Rope3D(nn.Module):
    """Rotary embedding over three position axes (time, row, column): rows and columns get
    2*(head_dim//6) dimensions each, time the rest. ``theta`` sets the frequencies; PAR uses
    distinct settings for frame and action tokens (Sec. 4.3)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        if head_dim % 2 or head_dim < 6:
            raise ValueError(f"RoPE needs an even head_dim >= 6, got {head_dim}")
        side = 2 * (head_dim // 6)
        self.axis_dims = (head_dim - 2 * side, side, side)
        self.head_dim, self.theta = head_dim, theta
        for i, dim in enumerate(self.axis_dims):
            inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
            self.register_buffer(f"inv_freq{i}", inv.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T, 3) -> cos, sin of shape (T, head_dim // 2)."""
        angles = torch.cat([positions[:, i:i + 1].float() * getattr(self, f"inv_freq{i}")
                            for i in range(3)], dim=-1)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of the last dim; x (B, H, T, D), cos/sin (T, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


# --------------------------------------------------------------------------- transformer
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.record: list[torch.Tensor] | None = None
        """A list to append, per call, the attention weights (B, heads, ``record_queries``, keys)
        of the call's last ``record_queries`` queries (figures; None: nothing recorded)."""
        self.record_queries = 0

    def forward(self, x, mask=None, rope=None, cache: dict | None = None):
        """``cache``: {"k", "v"} of earlier tokens, extended in place with this call's tokens."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if self.record is not None:  # the same weights the fused kernel applies, spelled out
            n = self.record_queries
            logits = (q[:, :, -n:] @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                logits = logits.masked_fill(~mask[-n:], float("-inf"))
            self.record.append(logits.float().softmax(-1).cpu())
        return self.proj(o.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    """NOVA's block: post-normalised residual branches, x + LN(attn(x)), x + LN(mlp(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    checkpointing = False
    """Recompute this block's activations in the backward pass instead of keeping them
    (set by ``PARModel.set_gradient_checkpointing``)."""

    def forward(self, x, mask=None, rope=None, cache=None):
        if self.checkpointing and torch.is_grad_enabled() and cache is None:
            return checkpoint(self._forward, x, mask, rope, None, use_reentrant=False)
        return self._forward(x, mask, rope, cache)

    def _forward(self, x, mask, rope, cache):
        x = x + self.norm1(self.attn(x, mask, rope, cache))
        return x + self.norm2(self.mlp(x))


class Transformer(nn.Module):
    """A stack of blocks with a final LayerNorm; optional per-block KV-caches."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, mask=None, rope=None, caches: list | None = None):
        for i, blk in enumerate(self.blocks):
            x = blk(x, mask, rope, None if caches is None else caches[i])
        return self.norm(x)


# --------------------------------------------------------------------------- diffusion bits
def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (B,) or (B, T) -> (..., dim): MAR/DiT's
    [cos, sin] with frequencies 10000^(-i/half), i.e. diffusers' with flip_sin_to_cos and no
    frequency shift."""
    from diffusers.models.embeddings import get_timestep_embedding

    flat = get_timestep_embedding(t.reshape(-1).float(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return flat.reshape(*t.shape, dim)


class Projector(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim_in, hidden), nn.Linear(hidden, dim_out)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(x)))


class AdaLNZero(nn.Module):
    """LayerNorm whose scale/shift (and ``gates`` gates) come from a conditioning vector, in
    NOVA's layout: ``proj`` emits (scale, shift, gates...) in that order
    (baaivision/NOVA@2cd254a:diffnext/models/normalization.py, AdaLayerNormZero)."""

    def __init__(self, dim: int, gates: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.gates = gates
        self.proj = nn.Linear(dim, (2 + gates) * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, cond):
        scale, shift, *gates = self.proj(F.silu(cond)).chunk(2 + self.gates, dim=-1)
        return self.norm(x) * (1 + scale) + shift, gates
