"""The Physical Autoregressive Model (PAR, arXiv 2508.09822), top to bottom.

    text ──Phi (frozen)──► projector ─┐
    frames ─VAE (frozen)─► patchify ──┼─► causal transformer over physical tokens P_n=[O_n; A_n]
    actions ─────────────► MLP / BOA ─┘        (mask of Fig. 3, RoPE, KV-cache at inference)
                                  │ frame outputs                │ action outputs
                                  ▼                              ▼
        spatial masked AR (NOVA image encoder)          Action-DiT (cross-attention)
        + per-token diffusion MLP  ─► O_{n+1}           or an MLP (PAR-Discrete) ─► A_{n+1}

The output at the tokens of step n conditions the prediction of step n+1 (teacher forcing
in training, all steps in parallel). PAR-NoAR drops the causal transformer: the Action-DiT
cross-attends to the embedded text, frame and action tokens of the current step directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from methods.par.config import PARConfig
from methods.par.layers import (AdaLNZero, Block, Projector, Rope3D, Transformer, physical_mask,
                                timestep_embedding)

FROZEN_INIT_SEED = 1234  # frozen parts without weights are random but the same in every process
NOVA_TEXT_POSITIONS = 512  # NOVA's TextEmbed padding table (diffnext/models/embeddings.py: "Maximum positions")


# --------------------------------------------------------------------------- frozen encoders
class FrozenEncoders:
    """The frozen VAE and Phi, kept out of the module tree (not trained, not checkpointed).

    Neither stays resident while PAR trains, as in NOVA, which trains from precomputed
    features: the instructions given at construction (a task has one) are encoded by Phi once
    and kept, and Phi is released; training from a latent cache (``harness features``) never
    builds the VAE. Each is built again on first use when something asks for it (another
    instruction, a frame to encode or decode)."""

    def __init__(self, cfg: PARConfig, vae_config: dict | None, phi_config: dict | None,
                 instructions: tuple[str, ...] = ()):
        self.cfg, self.vae_config, self.phi_config = cfg, vae_config, phi_config
        self.pixel_stride = cfg.vae_stride
        self._device = torch.device("cpu")
        self._vae, self._phi, self.tokenizer = None, None, None
        self._text_cache: dict[str, torch.Tensor] = {}
        self.scaling, self.shift = 1.0, 0.0  # the VAE's, once it is built
        if cfg.frame_codec == "vae" and vae_config is None:  # say now if NOVA's VAE is missing
            from methods.par.weights import vae_folder

            vae_folder(cfg.nova_path)
        if instructions:
            for s in instructions:
                self.text_hidden(s, cfg.text_tokens, self._device)
            self._phi = None  # the hidden states are kept; Phi is never resident in training

    @staticmethod
    def _seeded(build):
        with torch.random.fork_rng(devices=[]):  # random frozen parts are the same in every process
            torch.manual_seed(FROZEN_INIT_SEED)
            module = build()
        module.requires_grad_(False)
        return module.eval()

    @property
    def vae(self):
        """NOVA's VAE (a random one of ``vae_config`` when set); None for the pixel codec."""
        if self._vae is None and self.cfg.frame_codec == "vae":
            from diffusers import AutoencoderKL

            from methods.par.weights import load_vae

            from methods.par.vae import latent_scale

            self._vae = self._seeded(lambda: AutoencoderKL(**self.vae_config) if self.vae_config is not None
                                     else load_vae(self.cfg.nova_path)).to(self._device)
            # NOVA's latents: (mean - shift_factor) * scaling_factor (methods/par/vae.py)
            self.scaling, self.shift = latent_scale(self._vae)
        return self._vae

    @property
    def phi(self):
        if self._phi is None:
            from transformers import PhiConfig, PhiModel

            from methods.par.weights import load_phi

            def build():
                if self.phi_config is not None:
                    return PhiModel(PhiConfig(**self.phi_config))
                model, self.tokenizer = load_phi(self.cfg.phi_path)
                return model

            self._phi = self._seeded(build).to(self._device)
        return self._phi

    @property
    def resident(self) -> dict[str, bool]:
        """Which frozen encoders are built now (the memory projection counts them)."""
        return {"vae": self._vae is not None, "phi": self._phi is not None}

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device):
        self._device = torch.device(device)
        for m in (self._vae, self._phi):
            if m is not None:
                m.to(device)
        return self

    @torch.no_grad()
    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latent means (B, C, H/s, W/s)."""
        if self.cfg.frame_codec == "pixels":
            return F.pixel_unshuffle(images * 2 - 1, self.pixel_stride)
        vae = self.vae
        return (vae.encode(images * 2 - 1).latent_dist.mean - self.shift) * self.scaling

    @torch.no_grad()
    def latents(self, frames: torch.Tensor, image_size) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] at any size -> latents at ``image_size``'s resolution."""
        if tuple(frames.shape[-2:]) != tuple(image_size):
            frames = F.interpolate(frames, size=tuple(image_size), mode="bilinear", antialias=True,
                                   align_corners=False)
        return self.encode_frames(frames)

    @torch.no_grad()
    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        if self.cfg.frame_codec == "pixels":
            return ((F.pixel_shuffle(latents, self.pixel_stride) + 1) / 2).clamp(0, 1)
        vae = self.vae
        return ((vae.decode(latents / self.scaling + self.shift).sample + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def text_hidden(self, instruction: str, num_tokens: int, device) -> torch.Tensor:
        """Phi's last hidden states (1, n, hidden) of the instruction, truncated to at most
        ``num_tokens``; cached per instruction (the model is frozen). The caller fills the
        remaining positions with NOVA's padding embeddings (``PARModel.text_pad``)."""
        if instruction not in self._text_cache:
            phi = self.phi
            if self.tokenizer is not None:
                ids = self.tokenizer(instruction, return_tensors="pt")["input_ids"][0]
            else:  # no tokenizer without weights: UTF-8 bytes into the random model's vocabulary
                ids = torch.tensor(list(instruction.encode()), dtype=torch.long) % phi.config.vocab_size
            ids = ids[:num_tokens][None].to(self._device)
            self._text_cache[instruction] = phi(input_ids=ids).last_hidden_state.float().cpu()
        return self._text_cache[instruction].to(device)


# --------------------------------------------------------------------------- patches
def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C*p*p), row-major over patches."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding (h*w, dim), row-major, in NOVA's layout:
    [sin(col), cos(col), sin(row), cos(row)] with frequencies 10000^(-i/(dim/4))
    (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py, PosEmbed)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    parts = [f(pos.flatten()[:, None] * omega) for pos in (xs, ys) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)


class VideoPositions(nn.Module):
    """NOVA's absolute positions of video tokens: a learned projection of a sin-cos time
    code (normalised) plus the fixed 2D sin-cos table, added to the frame tokens of the
    causal transformer (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py, VideoPosEmbed;
    ``rotary_pos_embed: false`` in configs/nova_d48w1024_osp480.yaml). NOVA spreads a clip
    of T slots over ``base_frames`` time positions, slot k at k * base_frames / T, where slot
    0 holds the begin-of-video token and slot k the input frame k - 1, i.e. a slot is timed
    by the frame it predicts (transformer_3d.py, train_video). Here the input O_n predicts
    O_{n+1}, so it sits at slot n + 1 of a clip of context_steps + 1 slots: its position
    does not change while the context fills, and the KV-cache stays exact."""

    def __init__(self, dim: int, rows: int, cols: int, base_frames: int, clip_frames: int):
        super().__init__()
        self.time_proj = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.base_frames, self.clip_frames = base_frames, clip_frames
        self.register_buffer("space", sincos_2d(rows, cols, dim), persistent=False)
        self.register_buffer("freq", 1 / (10000 ** (torch.arange(128, dtype=torch.float32) / 128)),
                             persistent=False)

    def time(self, steps: torch.Tensor) -> torch.Tensor:
        """(S,) step indices -> (S, dim)."""
        grid = (steps.float() + 1) * (self.base_frames / (self.clip_frames + 1))
        angles = grid[:, None] * self.freq
        return self.norm(self.time_proj(torch.cat([angles.sin(), angles.cos()], dim=-1)))

    def forward(self, frame_tok: torch.Tensor, first_step: int) -> torch.Tensor:
        """frame_tok (B, N, Ko, d) of steps first_step.. -> with positions added."""
        steps = torch.arange(first_step, first_step + frame_tok.shape[1], device=frame_tok.device)
        return frame_tok + self.time(steps)[None, :, None] + self.space


class VideoMixer(nn.Module):
    """NOVA's video "mixer" (baaivision/NOVA@2cd254a:diffnext/models/normalization.py,
    AdaLayerNorm(dim, rank, eps=None): no normalisation, a rank-``rank`` bottleneck; rank 0
    projects at full width): the condition of a frame slot is the begin-of-video slot's output
    ``reference``, scaled and shifted by the slot's own output ``z``:
    ``reference * (1 + scale(z)) + shift(z)``, (scale, shift) = proj(lora(silu(z))). NOVA
    applies it to every slot after the BOS slot, in training and in generation
    (transformer_3d.py, train_video and generate_video)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.lora = nn.Linear(dim, rank, bias=False) if rank > 0 else nn.Identity()
        self.proj = nn.Linear(rank if rank > 0 else dim, 2 * dim)

    def forward(self, reference: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(self.lora(F.silu(z))).chunk(2, dim=-1)
        return reference * (1 + scale) + shift


# --------------------------------------------------------------------------- frame de-tokenizer
class DiffusionMLP(nn.Module):
    """NOVA's per-token denoiser (mlp_d3w1280; baaivision/NOVA@2cd254a:diffnext/models/
    diffusion_mlp.py): patch + (timestep, condition) -> prediction. Tokens are (C, p, p)
    vectors here; NOVA's head emits (p, p, C), reordered when its weights load (weights.py)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        self.patch_embed = nn.Linear(token_dim, width)
        self.time_proj = Projector(256, width, width)
        self.cond_proj = Projector(cond_dim, width, width)
        self.blocks = nn.ModuleList(_MLPBlock(width) for _ in range(depth))
        self.final_norm = AdaLNZero(width, gates=0)
        self.head = nn.Linear(width, token_dim)

    def forward(self, x, t, z):
        c = self.cond_proj(z) + self.time_proj(timestep_embedding(t))
        h = self.patch_embed(x)
        for blk in self.blocks:
            h = blk(h, c)
        return self.head(self.final_norm(h, c)[0])


class _MLPBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ada = AdaLNZero(width, gates=1)
        self.mlp = Projector(width, width, width)
        self.norm = nn.LayerNorm(width)

    checkpointing = False  # as Block.checkpointing

    def forward(self, x, c):
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, c, use_reentrant=False)
        return self._forward(x, c)

    def _forward(self, x, c):
        h, (gate,) = self.ada(x, c)
        return x + gate * self.norm(self.mlp(h))


class SpatialDecoder(nn.Module):
    """NOVA's image encoder used as MAR-style masked autoregression within a frame
    (baaivision/NOVA@2cd254a:diffnext/models/vision_transformer.py, VisionTransformer with
    encoder_depth = depth // 2): the first half of the blocks sees [condition tokens; visible
    patches], the second half all patches with mask tokens in the gaps; one final LayerNorm.
    Outputs one condition vector per patch for the diffusion MLP."""

    def __init__(self, cfg: PARConfig):
        super().__init__()
        d = cfg.width
        token_dim = cfg.latent_channels * cfg.spatial_patch ** 2
        self.patch_embed = nn.Linear(token_dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.spatial_depth))
        self.norm = nn.LayerNorm(d)
        self.encoder_depth = cfg.spatial_depth // 2
        h, w = cfg.latent_size
        self.register_buffer("pos", sincos_2d(h // cfg.spatial_patch, w // cfg.spatial_patch, d), persistent=False)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens, prefix, visible):
        """tokens (B, K, Dp); prefix (B, P, d); visible (B, K) bool, the same count per row."""
        b, k, _ = tokens.shape
        x = self.patch_embed(tokens) + self.pos
        n_vis = int(visible[0].sum())
        vis_idx = visible.float().argsort(dim=1, descending=True, stable=True)[:, :n_vis]
        seen = x.gather(1, vis_idx[..., None].expand(-1, -1, x.shape[-1]))
        h = torch.cat([prefix, seen], dim=1)
        for blk in self.blocks[: self.encoder_depth]:
            h = blk(h)
        prefix_out, seen_out = h[:, : prefix.shape[1]], h[:, prefix.shape[1]:]
        full = (self.mask_token + self.pos).expand(b, k, -1).clone()
        full = full.scatter(1, vis_idx[..., None].expand(-1, -1, full.shape[-1]), seen_out)
        h = torch.cat([prefix_out, full], dim=1)
        for blk in self.blocks[self.encoder_depth:]:
            h = blk(h)
        return self.norm(h[:, prefix.shape[1]:])


# --------------------------------------------------------------------------- action modules
class ActionTokenizer(nn.Module):
    """Each action of a chunk -> one token (K_A = L); learnable BOA tokens stand in for A_0."""

    def __init__(self, action_dim: int, hidden: int, width: int, chunk_len: int):
        super().__init__()
        self.mlp = Projector(action_dim, hidden, width)
        self.boa = nn.Parameter(torch.zeros(chunk_len, width))
        nn.init.normal_(self.boa, std=0.02)

    def forward(self, actions, use_boa):
        """actions (B, L, A), use_boa (B,) bool -> (B, L, width)."""
        tokens = self.mlp(actions)
        return torch.where(use_boa[:, None, None], self.boa.expand_as(tokens), tokens)


class ActionDiT(nn.Module):
    """Denoises the L actions of a chunk; the causal transformer's output vectors enter
    through cross-attention (Fig. 2, right); the timestep through adaLN-zero."""

    def __init__(self, action_dim, cond_dim, chunk_len, width, depth, heads, mlp_ratio):
        super().__init__()
        self.in_proj = nn.Linear(action_dim, width)
        self.pos = nn.Parameter(torch.zeros(chunk_len, width))
        self.time_proj = Projector(256, width, width)
        self.blocks = nn.ModuleList(_DiTBlock(width, cond_dim, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = AdaLNZero(width, gates=0)
        self.out = nn.Linear(width, action_dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x, t, cond):
        c = self.time_proj(timestep_embedding(t))[:, None]
        h = self.in_proj(x) + self.pos
        for blk in self.blocks:
            h = blk(h, c, cond)
        return self.out(self.final_norm(h, c)[0])


class _DiTBlock(nn.Module):
    def __init__(self, width, cond_dim, heads, mlp_ratio):
        super().__init__()
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, kdim=cond_dim, vdim=cond_dim, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x, c, cond):
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + sc1) + s1
        x = x + g1 * self.self_attn(h, h, h, need_weights=False)[0]
        q = self.norm_cross(x)
        x = x + self.cross_attn(q, cond, cond, need_weights=False)[0]
        h = self.norm2(x) * (1 + sc2) + s2
        return x + g2 * self.mlp(h)


# --------------------------------------------------------------------------- PAR
class PARModel(nn.Module):
    """Trainable PAR modules; the frozen VAE and Phi live in ``self.frozen``."""

    def __init__(self, cfg: PARConfig, action_dim: int, frozen: FrozenEncoders | None, qpos_dim: int = 0):
        super().__init__()
        self.cfg, self.action_dim = cfg, action_dim
        object.__setattr__(self, "frozen", frozen)  # not a submodule: not trained or saved
        d, L = cfg.width, cfg.action_chunk_len
        # causal transformer (NOVA's temporal encoder) and its input embeddings. Text as in
        # NOVA's TextEmbed (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py): positions
        # past the instruction's tokens hold the ``text_pad`` embeddings, then a linear
        # projection and a LayerNorm that NOVA keeps frozen (pipelines/nova/pipeline_train_t2v.py,
        # "We always use frozen LN").
        self.text_proj = nn.Linear(cfg.text_hidden, d)
        self.text_norm = nn.LayerNorm(d)
        self.text_norm.requires_grad_(False)
        self.register_buffer("text_pad", torch.randn(max(NOVA_TEXT_POSITIONS, cfg.text_tokens), cfg.text_hidden) * 0.02)
        self.frame_embed = nn.Linear(cfg.latent_channels * cfg.temporal_patch ** 2, d)
        if cfg.autoregressive:
            h, w = cfg.latent_size
            self.video_pos = VideoPositions(d, h // cfg.temporal_patch, w // cfg.temporal_patch,
                                            cfg.video_base_frames, cfg.context_steps)
            self.temporal = Transformer(cfg.temporal_depth, d, cfg.num_heads, cfg.mlp_ratio)
            self.rope_frame = Rope3D(d // cfg.num_heads, cfg.rope_theta_frame)
            self.rope_action = Rope3D(d // cfg.num_heads, cfg.rope_theta_action)
            if cfg.video_mixer_rank is not None:  # NOVA's BOS slot and its mixer (VideoMixer)
                self.bos_token = nn.Parameter(torch.zeros(1, d))  # NOVA's mask_embed.bos_token
                nn.init.normal_(self.bos_token, std=0.02)
                self.mixer = VideoMixer(d, cfg.video_mixer_rank)
            # frame de-tokenizer: spatial masked AR (counted with the causal transformer) + MLP
            self.spatial = SpatialDecoder(cfg)
            self.frame_mlp = DiffusionMLP(cfg.latent_channels * cfg.spatial_patch ** 2, d,
                                          cfg.frame_mlp_width, cfg.frame_mlp_depth)
        else:  # PAR-NoAR: embedded tokens go straight to the action decoder
            h, w = cfg.latent_size
            self.register_buffer("frame_pos", sincos_2d(h // cfg.temporal_patch, w // cfg.temporal_patch, d),
                                 persistent=False)
        self.action_tokenizer = ActionTokenizer(action_dim, cfg.action_tokenizer_hidden, d, L)
        if cfg.qpos_in_action_tokens:  # starts as a no-op: zero weights and bias
            self.qpos_embed = nn.Linear(qpos_dim, d)
            nn.init.zeros_(self.qpos_embed.weight)
            nn.init.zeros_(self.qpos_embed.bias)
        if cfg.action_head == "diffusion":
            self.action_dit = ActionDiT(action_dim, d, L, cfg.action_dit_width, cfg.action_dit_depth,
                                        cfg.action_dit_heads, cfg.action_dit_mlp_ratio)
        elif cfg.action_head == "mlp":
            self.action_mlp = nn.Sequential(nn.Linear(d, cfg.action_mlp_hidden), nn.GELU(),
                                            nn.Linear(cfg.action_mlp_hidden, action_dim))
        else:
            raise ValueError(f"PARConfig.action_head must be diffusion or mlp, not {cfg.action_head!r}")
        self.noise = _make_scheduler(cfg, "ddpm")
        # the frames' noise schedule: NOVA's checkpoint's when it defines one, else the actions'
        self.frame_noise = self.noise if cfg.frame_scheduler is None else _frame_noise_scheduler(cfg)
        self.set_gradient_checkpointing(cfg.gradient_checkpointing)

    def set_gradient_checkpointing(self, level: int) -> None:
        """NOVA's levels (baaivision/NOVA@2cd254a:diffnext/pipelines/nova/pipeline_train_t2v.py,
        configure_model): 1 the causal (temporal) transformer's blocks, 2 also the spatial
        encoder's, 3 also the frame diffusion MLP's. Here each chosen block is recomputed whole
        (attention and MLP), where NOVA recomputes only the MLP branch (docs/par.md)."""
        if level not in (0, 1, 2, 3):
            raise ValueError(f"PARConfig.gradient_checkpointing must be 0, 1, 2 or 3, not {level!r}")
        if not self.cfg.autoregressive:
            return  # PAR-NoAR has none of these stacks
        for stack, from_level in ((self.temporal.blocks, 1), (self.spatial.blocks, 2), (self.frame_mlp.blocks, 3)):
            for blk in stack:
                blk.checkpointing = level >= from_level

    # ---- parameter groups of Table 1 -------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"Action-Tokenizer": [], "Action-DeTokenizer": [], "Frame-DeTokenizer": [],
                  "Causal-Transformer": []}
        for name, p in self.named_parameters():
            if name.startswith(("action_tokenizer", "qpos_embed")):
                groups["Action-Tokenizer"].append(p)
            elif name.startswith(("action_dit", "action_mlp")):
                groups["Action-DeTokenizer"].append(p)
            elif name.startswith("frame_mlp"):
                groups["Frame-DeTokenizer"].append(p)
            else:
                groups["Causal-Transformer"].append(p)
        return groups

    # ---- token embedding -------------------------------------------------------------------
    def text_tokens(self, instructions: list[str], device) -> torch.Tensor:
        rows = []
        for s in instructions:
            hidden = self.frozen.text_hidden(s, self.cfg.text_tokens, device)[0]
            rows.append(torch.cat([hidden, self.text_pad[len(hidden):self.cfg.text_tokens].to(hidden.dtype)]))
        return self.text_norm(self.text_proj(torch.stack(rows)))

    def frame_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] at any size -> latents at the model's resolution."""
        return self.frozen.latents(frames, self.cfg.image_size)

    def frame_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        return self.frame_embed(patchify(latents, self.cfg.temporal_patch))

    def step_rope(self, first_step: int, num_steps: int, num_text: int, device):
        """cos/sin for [prefix?, steps first_step..]: RoPE over time only (paper §4.3, "to
        preserve the temporal dependencies"): frames at (n, 0, 0) with the frame theta,
        actions at (n, j, 0) with the action theta (j: the action's time within its chunk),
        the ``num_text`` prefix tokens (the text, and the BOS slot with the mixer) unrotated.
        Where a token is in the image, and the BOS slot's time, stay the job of NOVA's absolute
        codes, as in NOVA, so the prefix and the frame tokens of step 0 meet unrotated."""
        cfg = self.cfg
        cos_parts, sin_parts = [], []
        if num_text:
            zero = torch.zeros(num_text, 3)
            cos, sin = self.rope_frame(zero.to(device))
            cos_parts.append(cos)
            sin_parts.append(sin)
        for n in range(first_step, first_step + num_steps):
            fpos = torch.zeros(cfg.frame_tokens, 3, dtype=torch.long)
            fpos[:, 0] = n
            apos = torch.stack([torch.full((cfg.action_chunk_len,), n), torch.arange(cfg.action_chunk_len),
                                torch.zeros(cfg.action_chunk_len, dtype=torch.long)], 1)
            for rope, pos in ((self.rope_frame, fpos), (self.rope_action, apos)):
                cos, sin = rope(pos.to(device))
                cos_parts.append(cos)
                sin_parts.append(sin)
        return torch.cat(cos_parts), torch.cat(sin_parts)

    # ---- the causal transformer ---------------------------------------------------------------
    @property
    def bos_tokens(self) -> int:
        """Tokens of NOVA's begin-of-video slot in the sequence: ``frame_tokens`` with the
        mixer (``PARConfig.video_mixer_rank``), else none."""
        return self.cfg.frame_tokens if hasattr(self, "mixer") else 0

    def prefix(self, text):
        """What precedes the physical steps: the text, then (with the mixer) NOVA's BOS slot,
        its token at every frame position with the absolute positions of slot 0 (the slot
        before O_0's; transformer_3d.py, train_video: bos_token through video_pos_embed)."""
        if not self.bos_tokens:
            return text
        b = text.shape[0]
        bos = self.bos_token.to(text.dtype).expand(b, 1, self.cfg.frame_tokens, -1)
        return torch.cat([text, self.video_pos(bos, -1)[:, 0]], dim=1)

    def mix(self, reference, frame_out):
        """The conditions of the frame de-tokenizer: the frame outputs (B, n, Ko, d) through
        NOVA's mixer with the BOS slot's output ``reference`` (B, Ko, d); unchanged without one."""
        return frame_out if reference is None else self.mixer(reference[:, None], frame_out)

    def run_temporal(self, text, frame_tok, action_tok):
        """Teacher-forced pass over all steps. text (B, Kt, d); frame_tok (B, N, Ko, d);
        action_tok (B, N, L, d) -> the frame de-tokenizer's conditions (B, N, Ko, d: the frame
        outputs, mixed with the BOS slot's), action outputs (B, N, L, d)."""
        b, n, ko, d = frame_tok.shape
        L = action_tok.shape[2]
        frame_tok = self.video_pos(frame_tok, 0)
        steps = torch.cat([frame_tok, action_tok], dim=2).reshape(b, n * (ko + L), d)
        prefix = self.prefix(text)
        seq = torch.cat([prefix, steps], dim=1)
        kt, nb = text.shape[1], self.bos_tokens
        mask = physical_mask(kt, ko, L, n, nb).to(seq.device)
        out = self.temporal(seq, mask=mask, rope=self.step_rope(0, n, prefix.shape[1], seq.device))
        reference = out[:, kt:kt + nb] if nb else None
        out = out[:, prefix.shape[1]:].reshape(b, n, ko + L, d)
        return self.mix(reference, out[:, :, :ko]), out[:, :, ko:]

    def start_context(self, text) -> tuple[list[dict], torch.Tensor | None]:
        """KV-caches holding the prefix (the text, and the BOS slot with the mixer), and the BOS
        slot's output: the mixer's reference, kept for the whole rollout as NOVA's generation
        keeps it (transformer_3d.py, generate_video: ``states["*"]``)."""
        caches = [dict() for _ in self.temporal.blocks]
        prefix = self.prefix(text)
        kt, nb = text.shape[1], self.bos_tokens
        mask = physical_mask(kt, self.cfg.frame_tokens, self.cfg.action_chunk_len, 0, nb).to(text.device)
        out = self.temporal(prefix, mask=mask, rope=self.step_rope(0, 0, prefix.shape[1], text.device),
                            caches=caches)
        return caches, (out[:, kt:] if nb else None)

    def extend_steps(self, caches, first_step: int, frame_tok, action_tok, reference=None):
        """Append n physical steps (B, n, Ko, d) + (B, n, L, d), steps first_step.., in one
        pass using the KV-caches; returns the frame de-tokenizer's conditions (B, n, Ko, d;
        mixed with ``reference``, ``start_context``'s, when the model has a mixer) and the
        action outputs (B, n, L, d), exactly as the teacher-forced pass would."""
        if (reference is None) != (not self.bos_tokens):
            raise ValueError("a model with NOVA's mixer extends its context with the reference "
                             "start_context returned, and only such a model")
        b, n, ko, d = frame_tok.shape
        L = action_tok.shape[2]
        frame_tok = self.video_pos(frame_tok, first_step)
        x = torch.cat([frame_tok, action_tok], dim=2).reshape(b, n * (ko + L), d)
        past = caches[0]["k"].shape[2]
        within = physical_mask(0, ko, L, n).to(x.device)
        mask = torch.cat([torch.ones(n * (ko + L), past, dtype=torch.bool, device=x.device), within], dim=1)
        out = self.temporal(x, mask=mask, rope=self.step_rope(first_step, n, 0, x.device), caches=caches)
        out = out.reshape(b, n, ko + L, d)
        return self.mix(reference, out[:, :, :ko]), out[:, :, ko:]

    def forget_oldest_step(self, caches, num_prefix: int) -> None:
        """Drop the oldest physical step's keys and values (after the ``num_prefix`` prefix
        tokens: the text and the BOS slot) from every layer."""
        step = self.cfg.frame_tokens + self.cfg.action_chunk_len
        for cache in caches:
            for key in ("k", "v"):
                cache[key] = torch.cat([cache[key][:, :, :num_prefix], cache[key][:, :, num_prefix + step:]], dim=2)

    # ---- NoAR condition -----------------------------------------------------------------------
    def noar_condition(self, text, frame_tok, action_tok):
        """(B, Kt + Ko + L, d): the embedded tokens of the current step, no transformer."""
        return torch.cat([text, frame_tok + self.frame_pos, action_tok], dim=1)

    # ---- losses ---------------------------------------------------------------------------------
    def _abar(self, x, t, schedule=None):
        """alphas_cumprod of ``schedule`` (default: the actions' ``noise``) at t (shape
        x.shape[:k]: per sample or per token), broadcastable to x."""
        abar = (schedule or self.noise).alphas_cumprod.to(x.device)[t].to(x.dtype)
        return abar.reshape(abar.shape + (1,) * (x.dim() - abar.dim()))

    def add_noise(self, x, noise, t, schedule=None):
        """q(x_t | x_0) of the schedule's alphas (diffusers' and NOVA's DDPMScheduler.add_noise)."""
        abar = self._abar(x, t, schedule)
        return abar.sqrt() * x + (1 - abar).sqrt() * noise

    def diffusion_loss(self, denoiser, target, cond, weight):
        """MAR's diffusion loss, t drawn ``diffusion_repeats`` times per token.
        target (B, T, D); weight (B, T) (0 for padding)."""
        r = self.cfg.diffusion_repeats
        target, weight = target.repeat(r, 1, 1), weight.repeat(r, 1)
        cond = cond.repeat(r, *([1] * (cond.dim() - 1)))
        noise = torch.randn_like(target)
        t = torch.randint(0, self.cfg.num_train_timesteps, target.shape[:1], device=target.device)
        noisy = self.add_noise(target, noise, t)
        pred = denoiser(noisy, t, cond)
        per_token = (pred - noise).pow(2).mean(-1)
        return (per_token * weight).sum() / weight.sum().clamp(min=1)

    def action_loss(self, cond, target, keep):
        """cond (M, C, d); target (M, L, A); keep (M, L) float."""
        if self.cfg.action_head == "mlp":
            pred = self.action_mlp(cond)
            return ((pred - target).pow(2).mean(-1) * keep).sum() / keep.sum().clamp(min=1)
        return self.diffusion_loss(self.action_dit, target, cond, keep)

    def frame_loss(self, prefix, latents, keep):
        """prefix (M, Ko, d): transformer outputs; latents (M, C, h, w) targets; keep (M,)."""
        tokens = patchify(latents, self.cfg.spatial_patch)
        m, k, _ = tokens.shape
        n_mask = max(1, k - round((1 - self.mask_ratio()) * k))  # NOVA keeps round((1 - r) K)
        order = torch.rand(m, k, device=tokens.device).argsort(dim=1)
        masked = torch.zeros(m, k, dtype=torch.bool, device=tokens.device)
        masked.scatter_(1, order[:, :n_mask], True)
        z = self.spatial(tokens, prefix, ~masked)
        weight = masked.float() * keep[:, None]
        r = self.cfg.diffusion_repeats
        z_r, tok_r, w_r = z.repeat(r, 1, 1), tokens.repeat(r, 1, 1), weight.repeat(r, 1)
        noise = torch.randn_like(tok_r)
        kind = self.cfg.frame_prediction_type
        if kind == "flow":  # NOVA's flow matching: x_t = s * noise + (1 - s) x, target noise - x
            sigma, t = self.flow_times(tok_r.shape[:2], tokens.device)
            noisy = sigma[..., None] * noise + (1 - sigma[..., None]) * tok_r
            target = noise - tok_r
        else:  # DDPM: t uniform over the schedule's steps (NOVA's DDPMScheduler.sample_timesteps)
            sched = self.frame_noise
            t = torch.randint(0, sched.config.num_train_timesteps, tok_r.shape[:2], device=tokens.device)
            noisy = self.add_noise(tok_r, noise, t, sched)
            target = {"epsilon": noise, "sample": tok_r}.get(kind)
            target = self.velocity(tok_r, noise, t, sched) if target is None else target
        pred = self.frame_mlp(noisy, t, z_r)
        return ((pred - target).pow(2).mean(-1) * w_r).sum() / w_r.sum().clamp(min=1)

    def flow_times(self, shape, device):
        """NOVA's flow-matching training times (baaivision/NOVA@2cd254a:diffnext/schedulers/
        scheduling_cfm.py): an index drawn as sigmoid(N(0, 1)) * T into the shifted sigma
        table; returns (sigma, the timestep the MLP sees = sigma * T)."""
        n = self.cfg.num_train_timesteps
        sigmas = torch.arange(n, 0, -1, dtype=torch.float32, device=device) / n
        shift = self.cfg.frame_flow_shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        idx = (torch.randn(shape, device=device).sigmoid() * n).long().clamp(max=n - 1)
        sigma = sigmas[idx]
        return sigma, sigma * n

    def mask_ratio(self) -> float:
        """NOVA's masking ratio: a normal around 1 with std ``mask_ratio_std``, truncated to
        [mask_ratio_min, 1] (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py, MaskEmbed),
        drawn by inverse CDF from torch's generator."""
        lo = (self.cfg.mask_ratio_min - 1) / self.cfg.mask_ratio_std
        cdf = torch.special.ndtr(torch.tensor([lo, 0.0], dtype=torch.float64))
        u = cdf[0] + (cdf[1] - cdf[0]) * torch.rand(1, dtype=torch.float64)
        return float(1 + self.cfg.mask_ratio_std * torch.special.ndtri(u))

    def velocity(self, x, noise, t, schedule=None):
        """v = sqrt(abar_t) * noise - sqrt(1 - abar_t) * x (diffusers' v_prediction)."""
        abar = self._abar(x, t, schedule)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x

    def with_qpos(self, act_tok, qpos):
        """Action tokens (..., L, d) plus their step's qpos (..., Q) embedded, with
        ``qpos_in_action_tokens``; else unchanged."""
        if not self.cfg.qpos_in_action_tokens:
            return act_tok
        return act_tok + self.qpos_embed(qpos)[..., None, :]

    def embed_window(self, frames, actions, action_is_pad, instructions, latents=None, qpos=None):
        """A training window's tokens: frames (B, N+1, 3, H, W), or their ``latents``
        (B, N+1, C, h, w) from a feature cache; actions (B, N+1, L, A) where chunk k leads to
        frame k; ``qpos`` (B, N+1, Q) with ``qpos_in_action_tokens``. Returns latents of all N+1 frames (B, N+1, C, h, w), text tokens and the frame
        and action tokens of the N context steps."""
        if latents is None:
            b, s = frames.shape[:2]
            latents = self.frame_latents(frames.flatten(0, 1)).unflatten(0, (b, s))
        b, n = latents.shape[0], latents.shape[1] - 1
        text = self.text_tokens(instructions, latents.device)
        frame_tok = self.frame_tokens(latents[:, :n].flatten(0, 1)).unflatten(0, (b, n))
        # chunk 0 led to the first frame; at the episode start (any padding) it is BOA
        use_boa = torch.zeros(b, n, dtype=torch.bool, device=latents.device)
        use_boa[:, 0] = action_is_pad[:, 0].any(-1)
        act_tok = self.action_tokenizer(actions[:, :n].flatten(0, 1), use_boa.flatten()).unflatten(0, (b, n))
        act_tok = self.with_qpos(act_tok, None if qpos is None else qpos[:, :n])
        return latents, text, frame_tok, act_tok

    def training_loss(self, frames, actions, obs_is_pad, action_is_pad, instructions, latents=None, qpos=None):
        """frames (B, N+1, 3, H, W), or None with their cached ``latents``; actions
        (B, N+1, L, A) where chunk k leads to frame k; pads flag steps outside the episode;
        ``qpos`` (B, N+1, Q) at the frames' steps. Returns (loss, logs)."""
        cfg = self.cfg
        n = actions.shape[1] - 1
        latents, text, frame_tok, act_tok = self.embed_window(frames, actions, action_is_pad, instructions,
                                                              latents, qpos)
        target_actions = actions[:, 1:].flatten(0, 1)
        keep_actions = (~action_is_pad[:, 1:]).flatten(0, 1).float()
        logs = {}
        if cfg.autoregressive:
            z_frame, z_act = self.run_temporal(text, frame_tok, act_tok)
            keep_frames = (~obs_is_pad[:, 1:]).flatten().float()
            loss_frames = self.frame_loss(z_frame.flatten(0, 1), latents[:, 1:].flatten(0, 1), keep_frames)
            loss_actions = self.action_loss(z_act.flatten(0, 1), target_actions, keep_actions)
            logs["loss_frames"] = float(loss_frames.detach())
            loss = cfg.frame_loss_weight * loss_frames + loss_actions
        else:
            cond = self.noar_condition(text.repeat_interleave(n, 0), frame_tok.flatten(0, 1), act_tok.flatten(0, 1))
            loss_actions = self.action_loss(cond, target_actions, keep_actions)
            loss = loss_actions
        logs["loss_actions"] = float(loss_actions.detach())
        return loss, logs

    # ---- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(self, cond: torch.Tensor, generator=None) -> torch.Tensor:
        """cond (B, C, d) -> normalised action chunk (B, L, A)."""
        if self.cfg.action_head == "mlp":
            return self.action_mlp(cond)
        sched = _make_scheduler(self.cfg, "ddim")
        sched.set_timesteps(self.cfg.action_sampling_steps)
        x = torch.randn(cond.shape[0], self.cfg.action_chunk_len, self.action_dim, device=cond.device,
                        generator=generator)
        for t in sched.timesteps:
            eps = self.action_dit(x, t.to(cond.device).expand(x.shape[0]), cond)
            x = sched.step(eps, t, x).prev_sample
        return x

    @torch.no_grad()
    def sample_frame(self, prefix: torch.Tensor, ddim_steps: int | None = None) -> torch.Tensor:
        """Set-by-set masked AR + per-token diffusion: prefix (B, Ko, d) -> latents (B, C, h, w),
        with ``ddim_steps`` per set (default: ``cfg.frame_sampling_steps``)."""
        cfg = self.cfg
        b = prefix.shape[0]
        h, w = cfg.latent_size
        k = cfg.spatial_tokens
        dim = cfg.latent_channels * cfg.spatial_patch ** 2
        tokens = torch.zeros(b, k, dim, device=prefix.device)
        known = torch.zeros(b, k, dtype=torch.bool, device=prefix.device)
        order = torch.rand(b, k, device=prefix.device).argsort(dim=1)
        steps = max(1, min(cfg.spatial_ar_steps, k))
        done = 0
        for i in range(steps):  # cosine schedule of how many patches are known after step i
            target = k if i == steps - 1 else int(round(k * (1 - math.cos(math.pi / 2 * (i + 1) / steps))))
            target = max(done + 1, min(k, target))
            pick = order[:, done:target]
            z = self.spatial(tokens, prefix, known)  # first set: only the condition tokens are seen
            z_pick = z.gather(1, pick[..., None].expand(-1, -1, z.shape[-1]))
            sched = _frame_sampler(cfg)
            sched.set_timesteps(ddim_steps or cfg.frame_sampling_steps)
            x = torch.randn(b, pick.shape[1], dim, device=prefix.device)
            for t in sched.timesteps:
                out = self.frame_mlp(x, t.to(prefix.device).expand(b, pick.shape[1]), z_pick)
                x = sched.step(out, t, x).prev_sample
            tokens = tokens.scatter(1, pick[..., None].expand(-1, -1, dim), x)
            known = known.scatter(1, pick, True)
            done = target
        return unpatchify(tokens, cfg.spatial_patch, cfg.latent_channels, h, w)


def _frame_noise_scheduler(cfg: PARConfig):
    """The DDPM schedule NOVA's checkpoint defines for its frames (``PARConfig.frame_scheduler``,
    its scheduler_config.json as diffusers' DDPMScheduler reads it, the class its
    model_index.json names)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(cfg.frame_scheduler)


def _frame_sampler(cfg: PARConfig):
    """NOVA's checkpoint's own DDPM sampler when it defines one (its pipeline samples with the
    scheduler it loads: baaivision/NOVA@2cd254a:diffnext/pipelines/nova/pipeline_nova.py,
    ``sample_scheduler``); DDIM for epsilon/v targets; Euler over the shifted sigmas for NOVA's
    flow matching."""
    if cfg.frame_scheduler is not None:
        return _frame_noise_scheduler(cfg)
    if cfg.frame_prediction_type == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps,
                                               shift=cfg.frame_flow_shift)
    return _make_scheduler(cfg, "ddim", cfg.frame_prediction_type)


def _make_scheduler(cfg: PARConfig, kind: str, prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler

    kwargs = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                  prediction_type=prediction_type, clip_sample=False)
    return DDPMScheduler(**kwargs) if kind == "ddpm" else DDIMScheduler(**kwargs)
