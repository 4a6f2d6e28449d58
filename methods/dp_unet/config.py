"""LeRobot's Diffusion Policy (the UNet variant): its hyperparameters, LeRobot's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig


@dataclass(frozen=True)
class DPUNetConfig(MethodConfig):
    """Defaults: lerobot 0.3.2's ``DiffusionConfig`` (policies/diffusion/configuration_diffusion.py)
    where it sets them; the rest as the DP-transformer recipe (methods/dp/config.py)."""

    horizon: int = 16
    """Actions denoised per query, starting at the oldest observation step (LeRobot: 16)."""
    n_obs_steps: int = 2
    """Observation steps the policy conditions on (LeRobot: 2)."""
    n_action_steps: int = 8
    """Actions executed per query (LeRobot: 8)."""
    image_resize: tuple[int, int] | None = None
    """Resize frames to (H, W) before LeRobot's crop; None keeps the dataset's size (ours:
    the reduced preset feeds 84x84 frames, as the DP paper's image configs do)."""
    crop_fraction: float = 76 / 84
    """Crop size as a fraction of the (resized) image: LeRobot crops 84 of 96, the original
    DP 76 of 84 (ours: the original's fraction, since our images have no fixed size)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints of the ResNet18 encoder (LeRobot: 32)."""
    unet_down_dims: tuple[int, ...] = (512, 1024, 2048)
    """Channels of the UNet's levels (LeRobot and the DP paper: 512, 1024, 2048)."""
    num_train_timesteps: int = 100
    """DDPM training steps (LeRobot: 100)."""
    beta_start: float = 1e-4
    """First beta of the noise schedule (LeRobot: 1e-4)."""
    beta_end: float = 0.02
    """Last beta of the noise schedule (LeRobot: 0.02)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers' beta schedule (LeRobot: squaredcos_cap_v2)."""
    clip_sample: bool = True
    """Clip denoised samples to [-1, 1] (LeRobot: True)."""
    prediction_type: str = "epsilon"
    """What the UNet predicts (LeRobot: epsilon)."""
    num_inference_steps: int = 100
    """Denoising steps per query (LeRobot: None, i.e. num_train_timesteps)."""
    lr: float = 1e-4
    """AdamW learning rate (LeRobot: optimizer_lr 1e-4)."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas (LeRobot: optimizer_betas (0.95, 0.999))."""
    weight_decay: float = 1e-6
    """AdamW weight decay (LeRobot: optimizer_weight_decay 1e-6)."""
    warmup_steps: int = 500
    """Linear warmup before the cosine decay (LeRobot: scheduler_warmup_steps 500)."""
    lr_schedule: str = "cosine"
    """Learning-rate schedule after warmup (LeRobot: scheduler_name cosine)."""
    steps: int = 200_000
    """Optimizer steps (as the DP-transformer recipe; LeRobot sets steps per training run)."""
    batch_size: int = 64
    """Samples per step (as the DP-transformer recipe: the original DP's batch of 64)."""
    grad_clip_norm: float | None = None
    """No gradient clipping (as the DP-transformer recipe: the original DP does not clip)."""
    ema_decay: float | None = 0.9999
    """EMA of the weights for evaluation (as the DP-transformer recipe: the original DP's 0.9999)."""
