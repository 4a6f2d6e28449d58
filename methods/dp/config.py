"""Diffusion Policy's transformer variant: its hyperparameters, the original code's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

# Sources cited below (checked at these commits):
#   real-stanford/diffusion_policy@5ba07ac: the original DP code (transformer hybrid image config);
#   ARISE-Initiative/robomimic@62ed2de (v0.2.0, the version DP pins): the image encoder it builds.


@dataclass(frozen=True)
class DPConfig(MethodConfig):
    """Defaults: the original DP-transformer image config (hybrid workspace yaml)."""

    horizon: int = 10
    """Actions denoised per query, starting at the oldest observation step (yaml `horizon`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_obs_steps: int = 2
    """Observation steps the policy conditions on (yaml `n_obs_steps`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_action_steps: int = 8
    """Actions executed per query: horizon[n_obs_steps-1 : n_obs_steps-1+n_action_steps] (yaml:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_layer: int = 8
    """Transformer decoder layers (yaml `policy.n_layer`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_head: int = 4
    """Attention heads (yaml `policy.n_head`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_emb: int = 256
    """Token embedding width (yaml `policy.n_emb`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    p_drop_emb: float = 0.0
    """Dropout on the input embeddings (yaml `policy.p_drop_emb`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    p_drop_attn: float = 0.3
    """Dropout in the attention blocks (yaml `policy.p_drop_attn`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    causal_attn: bool = True
    """Causal mask over the action tokens (yaml `policy.causal_attn`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    n_cond_layers: int = 0
    """0: an MLP encodes the condition tokens (yaml `policy.n_cond_layers`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    image_resize: tuple[int, int] | None = None
    """Resize frames to (H, W) before cropping; None keeps the dataset's size (ours: our datasets
    have no fixed size; the original image configs feed 84x84 frames)."""
    crop_fraction: float = 76 / 84
    """Random crop (train) / centre crop (eval) size as a fraction of the image: crop_shape 76 of 84
    (real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints of robomimic's ResNet18 encoder, GroupNorm for BatchNorm (`num_kp`:
    ARISE-Initiative/robomimic@62ed2de:robomimic/scripts/generate_paper_configs.py)."""
    image_feature_dim: int = 64
    """Feature width per image from the encoder (`feature_dimension`:
    ARISE-Initiative/robomimic@62ed2de:robomimic/scripts/generate_paper_configs.py)."""
    num_train_timesteps: int = 100
    """DDPM training steps (yaml `noise_scheduler.num_train_timesteps`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    beta_start: float = 1e-4
    """First beta of the noise schedule (yaml `noise_scheduler.beta_start`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    beta_end: float = 0.02
    """Last beta of the noise schedule (yaml `noise_scheduler.beta_end`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers' beta schedule (yaml `noise_scheduler.beta_schedule`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    variance_type: str = "fixed_small"
    """DDPM posterior variance (yaml `noise_scheduler.variance_type`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    clip_sample: bool = True
    """Clip denoised samples to [-1, 1] (yaml `noise_scheduler.clip_sample`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    prediction_type: str = "epsilon"
    """What the transformer predicts (yaml `noise_scheduler.prediction_type`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    num_inference_steps: int = 100
    """Denoising steps per query (yaml `policy.num_inference_steps`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    obs_encoder_weight_decay: float = 1e-6
    """AdamW weight decay of the image encoder (yaml `optimizer.obs_encoder_weight_decay`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    # training: lr 1e-4, betas (0.9, 0.95), weight decay 1e-3 (transformer), cosine with 1000
    # warmup steps, EMA up to 0.9999, batch 64 (all from the hybrid workspace yaml). The original
    # trains 3050 epochs; we count steps.
    steps: int = 200_000
    """Optimizer steps (ours: the original counts 3050 epochs, `training.num_epochs`, which has no
    fixed step count across datasets)."""
    batch_size: int = 64
    """Samples per step (yaml `dataloader.batch_size`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    lr: float = 1e-4
    """AdamW learning rate (yaml `optimizer.learning_rate`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (yaml `optimizer.betas`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    weight_decay: float = 1e-3
    """AdamW weight decay of the transformer (yaml `optimizer.transformer_weight_decay`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    warmup_steps: int = 1000
    """Linear warmup before the decay (yaml `training.lr_warmup_steps`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    lr_schedule: str = "cosine"
    """Learning-rate schedule after warmup (yaml `training.lr_scheduler`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
    grad_clip_norm: float | None = None
    """No gradient clipping: the original training loop has none
    (real-stanford/diffusion_policy@5ba07ac:diffusion_policy/workspace/train_diffusion_transformer_hybrid_workspace.py)."""
    ema_decay: float | None = 0.9999
    """Cap of the warmed-up EMA decay used for evaluation (yaml `ema.max_value`:
    real-stanford/diffusion_policy@5ba07ac:diffusion_policy/config/train_diffusion_transformer_hybrid_workspace.yaml)."""
