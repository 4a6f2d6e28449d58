"""RDT-1B, the Robotics Diffusion Transformer (thu-ml/RoboticsDiffusionTransformer): its
hyperparameters, the repository's base config and ManiSkill fine-tuning recipe."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

# Sources cited below (thu-ml/RoboticsDiffusionTransformer at deb71d8, the commit BASELINES.md read):
#   configs/base.yaml                  the model config of RDT-1B
#   models/rdt/{model,blocks}.py       the DiT and its blocks
#   models/rdt_runner.py               adaptors, schedulers, loss and sampling
#   scripts/maniskill_model.py         the ManiSkill policy wrapper (unified-vector indices, control frequency)
#   data/hdf5_maniskill_dataset.py     the ManiSkill fine-tuning samples (16 actions stretched to 64)
#   eval_sim/eval_rdt_maniskill.py     the ManiSkill evaluation (actions[::4], 2-frame window)
#   train/dataset.py, main.py          condition dropout, state noise, image augmentation, optimiser
#   finetune_maniskill.sh              the fine-tuning command (flags override main.py)
_REPO = "thu-ml/RoboticsDiffusionTransformer@deb71d8:"


@dataclass(frozen=True)
class RDTConfig(MethodConfig):
    """Defaults: RDT-1B fine-tuned on one ManiSkill task, one camera (the other two slots empty)."""

    hidden_size: int = 2048
    """DiT width (`rdt.hidden_size`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    depth: int = 28
    """DiT blocks (`rdt.depth`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    num_heads: int = 32
    """Attention heads (`rdt.num_heads`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    action_chunk_size: int = 64
    """Action tokens the DiT denoises (`common.action_chunk_size`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    real_chunk_size: int = 16
    """Real actions per sample, linearly stretched to ``action_chunk_size`` (`CHUNK_SIZE // 4`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:data/hdf5_maniskill_dataset.py)."""
    execute_stride: int = 4
    """In a rollout, every k-th of the 64 predicted actions is executed, then the policy re-plans
    (`actions[::4]`: thu-ml/RoboticsDiffusionTransformer@deb71d8:eval_sim/eval_rdt_maniskill.py)."""
    img_history_size: int = 2
    """Frames of image history (`common.img_history_size`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    num_cameras: int = 3
    """Camera slots per frame; ours fills the first, the others get the background image
    (`common.num_cameras`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml; empty slots:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:eval_sim/eval_rdt_maniskill.py)."""
    state_dim: int = 128
    """Width of the unified state/action vector (`common.state_dim`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    unified_indices: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 10)
    """Where our 7 arm joints and the gripper sit in the unified vector: right_arm_joint_0..6_pos
    and right_gripper_open (`MANISKILL_INDICES`: thu-ml/RoboticsDiffusionTransformer@deb71d8:scripts/maniskill_model.py).
    The state is the first len(...) of qpos (qpos[:-1]: the last finger joint repeats the other,
    thu-ml/RoboticsDiffusionTransformer@deb71d8:data/hdf5_maniskill_dataset.py); the action is all of it."""
    control_frequency: int = 25
    """Control frequency fed to its embedder (`control_frequency=25`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:scripts/maniskill_model.py; "agilex": 25 in configs/dataset_control_freq.json)."""
    lang_adaptor: str = "mlp2x_gelu"
    """Language adaptor (`model.lang_adaptor`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    img_adaptor: str = "mlp2x_gelu"
    """Image adaptor (`model.img_adaptor`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    state_adaptor: str = "mlp3x_gelu"
    """State/action adaptor, input the 128 values and the 128-wide mask (`model.state_adaptor`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml; input width: models/rdt_runner.py)."""
    max_lang_cond_len: int = 1024
    """Language tokens the position embedding covers (`dataset.tokenizer_max_length`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""

    # --- encoders (frozen upstream) ----------------------------------------------------------------
    lang_token_dim: int = 4096
    """Width of the text encoder's tokens, the language adaptor's input: T5-v1.1-XXL's d_model
    (`model.lang_token_dim`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml). A given
    ``text_encoder`` must have it; the small stand-in is built with it."""
    img_token_dim: int = 1152
    """Width of the vision encoder's tokens, the image adaptor's input: SigLIP so400m's hidden size
    (`model.img_token_dim`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml). A given
    ``vision_encoder`` must have it; the small stand-in is built with it."""
    text_encoder: str | None = None
    """Local folder of a T5 encoder in transformers' format (google/t5-v1_1-xxl upstream:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh), with its tokenizer. None
    (ours: no hub downloads at run time): a small randomly initialised T5 encoder of
    transformers' ``T5EncoderModel`` with the byte-level ByT5 tokenizer (needs no vocabulary file).
    Either way it is frozen and the instruction is encoded once (the instruction is fixed per task)."""
    vision_encoder: str | None = None
    """Local folder of a SigLIP vision tower in transformers' format (google/siglip-so400m-patch14-384
    upstream, frozen: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh,
    train/train.py). None (ours: no hub downloads at run time): a small randomly initialised
    ``SiglipVisionModel``, trained with the DiT (a frozen random encoder would see nothing)."""
    small_encoder_layers: int = 2
    """Layers of each small stand-in encoder (ours: the cheapest encoder that still mixes tokens)."""
    small_encoder_heads: int = 8
    """Attention heads of each small stand-in encoder (ours: divides the widths the presets use)."""
    vision_image_size: int = 384
    """Input side of the small vision stand-in (ours: SigLIP so400m-patch14-384's, so the stand-in
    gives 729 tokens per image like the real one; a given ``vision_encoder`` uses its own)."""
    vision_patch_size: int = 14
    """Patch side of the small vision stand-in (ours: SigLIP so400m-patch14-384's)."""
    pretrained: str | None = None
    """Local file of RDT's published weights, a state dict of ``RDTRunner``: the hub's
    robotics-diffusion-transformer/rdt-1b `pytorch_model.bin` (a bare state dict:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:models/hub_mixin.py), a DeepSpeed .pt with it under
    `module`, or .safetensors (both: thu-ml/RoboticsDiffusionTransformer@deb71d8:scripts/maniskill_model.py
    load_pretrained_weights). None trains from scratch (ours: no hub downloads at run time; rows then
    say not action-pretrained)."""

    # --- diffusion ----------------------------------------------------------------------------------
    num_train_timesteps: int = 1000
    """DDPM training steps (`noise_scheduler.num_train_timesteps`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    num_inference_timesteps: int = 5
    """DPM-Solver++ sampling steps (`noise_scheduler.num_inference_timesteps`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """(`noise_scheduler.beta_schedule`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    prediction_type: str = "sample"
    """The DiT predicts the clean actions (`noise_scheduler.prediction_type`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""
    clip_sample: bool = False
    """(`noise_scheduler.clip_sample`: thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml)."""

    # --- training recipe ------------------------------------------------------------------------------
    cond_mask_prob: float = 0.1
    """Each condition (control frequency, state, state mask, each image, the instruction) is
    dropped with this probability per sample (`cond_mask_prob`: thu-ml/RoboticsDiffusionTransformer@deb71d8:train/dataset.py)."""
    state_noise_snr: float | None = 40.0
    """Gaussian noise on the state at this SNR in dB (`--state_noise_snr=40`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh; upstream scales it by the
    episode's state std, ours by the dataset's)."""
    image_aug: bool = True
    """Half the real images get colour jitter and/or noise and blur (`--image_aug`:
    thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh; what it does: train/dataset.py, train/image_corrupt.py)."""
    steps: int = 400_000
    """(`--max_train_steps=400000`: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh;
    its README's ManiSkill checkpoint was taken near 300k)."""
    batch_size: int = 24
    """Per GPU (`--train_batch_size=24`: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh);
    one process here."""
    lr: float = 1e-4
    """(`--learning_rate=1e-4`: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh)."""
    lr_schedule: str = "constant"
    """(`--lr_scheduler="constant"`: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh)."""
    warmup_steps: int = 0
    """None: `--lr_scheduler="constant"` goes through diffusers' `get_scheduler` (0.27.2, pinned in
    upstream's requirements.txt), whose constant schedule ignores `--lr_warmup_steps`
    (thu-ml/RoboticsDiffusionTransformer@deb71d8:train/train.py)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """(`--adam_beta1/2`: thu-ml/RoboticsDiffusionTransformer@deb71d8:main.py)."""
    weight_decay: float = 1e-2
    """On every parameter (`--adam_weight_decay`: thu-ml/RoboticsDiffusionTransformer@deb71d8:main.py)."""
    grad_clip_norm: float | None = 1.0
    """(`--max_grad_norm`: thu-ml/RoboticsDiffusionTransformer@deb71d8:main.py)."""
    ema_decay: float | None = None
    """None: the raw weights are evaluated. Upstream also keeps an EMA beside them, but its config
    says "We do not use EMA currently" and its ManiSkill evaluation loads the raw weights
    (`checkpoint["module"]`) (thu-ml/RoboticsDiffusionTransformer@deb71d8:configs/base.yaml `ema`;
    scripts/maniskill_model.py load_pretrained_weights)."""
    checkpoint_every: int = 10_000
    """(`--checkpointing_period=10000`: thu-ml/RoboticsDiffusionTransformer@deb71d8:finetune_maniskill.sh)."""
