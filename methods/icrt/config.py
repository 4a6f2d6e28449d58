"""ICRT, the In-Context Robot Transformer (Max-Fu/icrt): its hyperparameters, the repository's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

# Sources cited below (Max-Fu/icrt at e0c9588, the commit BASELINES.md read):
#   config/model_config/custom_transformer.json   the from-scratch Llama config of TRAIN.md
#   icrt/util/args.py                             tyro defaults of every flag
#   TRAIN.md                                      the fine-tuning command (flags override args.py)
#   icrt/models/policy/{icrt,llama}.py            the policy and its transformer
_REPO = "Max-Fu/icrt@e0c9588:"
_LLAMA_JSON = _REPO + "config/model_config/custom_transformer.json"
_ARGS = _REPO + "icrt/util/args.py"
_TRAIN_MD = _REPO + "TRAIN.md"
_ICRT = _REPO + "icrt/models/policy/icrt.py"


@dataclass(frozen=True)
class ICRTConfig(MethodConfig):
    """Defaults: ICRT fine-tuned from scratch-initialised weights on one task's demos, one camera."""

    dim: int = 768
    """Transformer width (`dim`: Max-Fu/icrt@e0c9588:config/model_config/custom_transformer.json)."""
    n_layers: int = 12
    """Llama blocks (`n_layers`: Max-Fu/icrt@e0c9588:config/model_config/custom_transformer.json)."""
    n_heads: int = 12
    """Attention heads (`n_heads`: Max-Fu/icrt@e0c9588:config/model_config/custom_transformer.json)."""
    multiple_of: int = 256
    """SwiGLU hidden size is int(2 * 4 * dim / 3) rounded up to this (2048 at dim 768) (`multiple_of`:
    Max-Fu/icrt@e0c9588:config/model_config/custom_transformer.json; the rule: Max-Fu/icrt@e0c9588:icrt/models/policy/llama.py FeedForward)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon (`norm_eps`: Max-Fu/icrt@e0c9588:config/model_config/custom_transformer.json)."""
    rope_theta: float = 10_000.0
    """RoPE base (Max-Fu/icrt@e0c9588:icrt/models/policy/llama.py precompute_freqs_cis)."""
    adapter_num_heads: int = 8
    """Heads of the attention pooling that makes the state token (`adapter_num_heads`: Max-Fu/icrt@e0c9588:icrt/util/args.py)."""
    adapter_mlp_ratio: float = 4.0
    """MLP ratio of the attention pooling (`adapter_mlp_ratio`: Max-Fu/icrt@e0c9588:icrt/util/args.py)."""
    decoder_hidden: int = 128
    """Hidden width of the 2-layer MLP that decodes a state token into the chunk
    (`decoder_hidden_features`: Max-Fu/icrt@e0c9588:icrt/models/policy/icrt.py)."""
    num_pred_steps: int = 16
    """Actions per predicted chunk (`num_pred_steps`: Max-Fu/icrt@e0c9588:icrt/util/args.py)."""
    seq_length: int = 512
    """Steps (state-action pairs) per training sample, prompt and target together (`seq_length`:
    Max-Fu/icrt@e0c9588:icrt/util/args.py)."""
    sample_stride: int = 32
    """A training sample starts every k steps (`--dataset-cfg.non-overlapping 32`: Max-Fu/icrt@e0c9588:TRAIN.md)."""
    num_repeat_traj: int = 2
    """Each demo plays 1 or 2 times (uniformly) per pass over the demos (`--dataset-cfg.num-repeat-traj 2`,
    fine-tuning: Max-Fu/icrt@e0c9588:TRAIN.md)."""
    shuffle_repeat_traj: bool = True
    """Then each adjacent pair of plays swaps with probability 1/2, in order, so a demo's repeats
    need not be back to back (`--dataset-cfg.shuffle-repeat-traj`: Max-Fu/icrt@e0c9588:TRAIN.md;
    the swap: Max-Fu/icrt@e0c9588:icrt/data/dataset.py shuffle_dataset_sort_by_lang)."""
    vision_encoder: str = "vit_base_patch16_224"
    """The timm ViT of the state tokens, used when ``vision_weights`` is given (``small``: the
    small trainable encoder below, whatever the weights). All the ViT's output tokens (class
    token and 196 patches) are pooled; its final norm is replaced by a trainable LayerNorm
    (`vision_encoder` vit_base_patch16_224.mae / CrossMAE weights: Max-Fu/icrt@e0c9588:icrt/util/args.py;
    Max-Fu/icrt@e0c9588:icrt/models/backbones/encoders.py VisionEncoder)."""
    vision_weights: str | None = None
    """Local file of the ViT's pretrained weights (timm format, .pth or .safetensors); frozen when
    given (`vision_unfreeze_all` False: Max-Fu/icrt@e0c9588:icrt/util/args.py). None (ours: the CrossMAE
    weights cannot be downloaded at run time): the small trainable encoder below instead."""
    small_encoder_channels: tuple[int, ...] = (32, 64, 128, 128)
    """Without ViT weights: conv stages (3x3, stride 2, GroupNorm, GELU), each output pixel of
    the last one a token (ours: a from-scratch ViT-B would not learn from a few hundred demos;
    a conv stem is the smallest encoder that still gives the attention pooling a token grid)."""
    image_size: tuple[int, int] = (224, 224)
    """Encoder input: frames are resized (and, in training, randomly crop-resized) to it (the
    ViT-B/16's input size: timm's pretrained_cfg of vit_base_patch16_224.mae, which upstream's
    transforms are built from: Max-Fu/icrt@e0c9588:scripts/train.py)."""
    crop_scale: tuple[float, float] = (0.65, 1.0)
    """RandomResizedCrop area range, aspect ratio 1, one crop per demo in a sample
    (Max-Fu/icrt@e0c9588:scripts/train.py timm_data_cfg["scale"]; per episode segment:
    Max-Fu/icrt@e0c9588:icrt/data/dataset.py helper_load_image)."""
    contrast_range: tuple[float, float] = (0.8, 1.2)
    """Per-demo contrast factor on [0, 1] pixels (Max-Fu/icrt@e0c9588:icrt/data/dataset.py)."""
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    """Per-demo brightness offset on [0, 1] pixels (Max-Fu/icrt@e0c9588:icrt/data/dataset.py)."""
    proprio_noise: float = 0.005
    """Std of Gaussian noise on the (normalised) joint state in training (`proprio_noise`:
    Max-Fu/icrt@e0c9588:icrt/util/args.py; upstream adds it to raw end-effector poses)."""
    prompt_demos_eval: int = 1
    """Training demos fed as the prompt before each rollout (the repository's inference notebook
    prompts with one trajectory: Max-Fu/icrt@e0c9588:tools/inference.ipynb)."""
    ensemble_k: float = 0.05
    """Temporal ensembling: the chunks predicted for the current step are averaged with weights
    exp(k * i), i = 0 for the oldest, so newer chunks weigh more (`k = 0.05`:
    Max-Fu/icrt@e0c9588:icrt/models/policy/icrt.py get_action_eval)."""

    # training recipe: the fine-tuning command of TRAIN.md
    steps: int = 6_300
    """125 epochs (`--trainer-cfg.epochs 125`: Max-Fu/icrt@e0c9588:TRAIN.md) of one sample per 32 steps of
    the demo tape at batch 64 over the paper-scale dataset (ours: 1000 demos x ~69 steps x 1.5 plays
    / 32 / 64 = 50 steps per epoch)."""
    batch_size: int = 64
    """Effective batch: 8 GPUs (Max-Fu/icrt@e0c9588:TRAIN.md fine-tuning command) x `batch_size` 1 x
    `accum_iter` 8 (their defaults: Max-Fu/icrt@e0c9588:icrt/util/args.py)."""
    grad_accum_steps: int = 8
    """The batch of 64 as 8 micro-batches of 8 on one GPU, as their 8 GPUs x `accum_iter` 8 make it
    (Max-Fu/icrt@e0c9588:icrt/util/args.py); ours: 8 per pass, since one pass at 64 does not fit a
    141 GiB H200 (benchmarks/results/gpu_check.md: 59 GiB at 8, out of memory at 16)."""
    lr: float = 5e-4
    """(`--optimizer-cfg.lr 5e-4`: Max-Fu/icrt@e0c9588:TRAIN.md)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """(Max-Fu/icrt@e0c9588:scripts/train.py AdamW)."""
    weight_decay: float = 0.01
    """On weights only, not biases or norms (`weight_decay`: Max-Fu/icrt@e0c9588:icrt/util/args.py;
    `misc.add_weight_decay`: Max-Fu/icrt@e0c9588:scripts/train.py)."""
    lr_schedule: str = "cosine"
    """Half-cycle cosine to 0 after warmup (Max-Fu/icrt@e0c9588:icrt/util/lr_sched.py, min_lr 0)."""
    warmup_steps: int = 63
    """1.25 epochs (`--optimizer-cfg.warmup-epochs 1.25`: Max-Fu/icrt@e0c9588:TRAIN.md) of 50 steps."""
    grad_clip_norm: float | None = None
    """No clipping (`clip_grad` None: Max-Fu/icrt@e0c9588:icrt/util/engine.py)."""
    checkpoint_every: int = 500
    """(ours: about 12 epochs of the paper run)."""
