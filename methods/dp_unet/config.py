"""LeRobot's Diffusion Policy (the UNet variant): its hyperparameters, LeRobot's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

# Source cited below: huggingface/lerobot@f771e3e is the v0.3.2 tag, the installed lerobot 0.3.2
# (its configuration_diffusion.py is identical to the installed copy).


@dataclass(frozen=True)
class DPUNetConfig(MethodConfig):
    """Defaults: lerobot 0.3.2's ``DiffusionConfig`` (policies/diffusion/configuration_diffusion.py)
    where it sets them; the rest as the DP-transformer recipe (methods/dp/config.py)."""

    horizon: int = 16
    """Actions denoised per query, starting at the oldest observation step (`horizon`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    n_obs_steps: int = 2
    """Observation steps the policy conditions on (`n_obs_steps`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    n_action_steps: int = 8
    """Actions executed per query (`n_action_steps`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    image_resize: tuple[int, int] | None = None
    """Resize frames to (H, W) before LeRobot's crop; None keeps the dataset's size
    (ours: the reduced preset feeds 84x84 frames, as the DP paper's image configs do)."""
    crop_fraction: float = 76 / 84
    """Crop size as a fraction of the (resized) image (ours: the original DP's 76 of 84, since our
    images have no fixed size; LeRobot's crop_shape is a fixed 84x84, made for 96x96 PushT)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints of the ResNet18 encoder (`spatial_softmax_num_keypoints`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    unet_down_dims: tuple[int, ...] = (512, 1024, 2048)
    """Channels of the UNet's levels (`down_dims`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    num_train_timesteps: int = 100
    """DDPM training steps (`num_train_timesteps`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    beta_start: float = 1e-4
    """First beta of the noise schedule (`beta_start`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    beta_end: float = 0.02
    """Last beta of the noise schedule (`beta_end`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers' beta schedule (`beta_schedule`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    clip_sample: bool = True
    """Clip denoised samples to [-1, 1] (`clip_sample`, `clip_sample_range` 1.0:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    prediction_type: str = "epsilon"
    """What the UNet predicts (`prediction_type`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    num_inference_steps: int = 100
    """Denoising steps per query (LeRobot's None means num_train_timesteps, i.e. 100:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/modeling_diffusion.py)."""
    lr: float = 1e-4
    """Learning rate (`optimizer_lr`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    betas: tuple[float, float] = (0.95, 0.999)
    """Optimizer betas (`optimizer_betas`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    weight_decay: float = 1e-6
    """Weight decay (`optimizer_weight_decay`, which LeRobot gives to torch's Adam, not AdamW:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    warmup_steps: int = 500
    """Linear warmup before the cosine decay (`scheduler_warmup_steps`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    lr_schedule: str = "cosine"
    """Learning-rate schedule after warmup (`scheduler_name`:
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py)."""
    steps: int = 200_000
    """Optimizer steps (ours: as the DP-transformer recipe, since LeRobot sets steps per training
    run; its train config's default is 100_000)."""
    batch_size: int = 64
    """Samples per step (ours: as the DP-transformer recipe, the original DP's batch of 64;
    LeRobot's train config defaults to 8)."""
    grad_clip_norm: float | None = None
    """No gradient clipping (ours: as the DP-transformer recipe, the original DP does not clip;
    LeRobot's AdamConfig clips at 10.0)."""
    ema_decay: float | None = 0.9999
    """Cap of the warmed-up EMA decay used for evaluation (ours: as the DP-transformer recipe, the
    original DP's 0.9999; LeRobot 0.3.2 keeps no EMA)."""
