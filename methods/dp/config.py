"""Diffusion Policy's transformer variant: its hyperparameters, the original code's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig


@dataclass(frozen=True)
class DPConfig(MethodConfig):
    """Defaults: the original DP-transformer image config (hybrid workspace yaml)."""

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
    """Resize frames to (H, W) before cropping; None keeps the dataset's size. The original
    image configs feed 84x84 frames."""
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
