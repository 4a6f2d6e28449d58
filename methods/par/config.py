"""PAR's configuration. Defaults are the paper's model (NOVA-0.6B video + the action modules,
Table 1: 663.2M trainable parameters). Where the paper is silent the choice is written next
to the field; docs/par.md lists every interpretation with its paper section.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

FRAME_OBJECTIVES = ("epsilon", "v_prediction", "sample", "flow", "checkpoint")


@dataclass(frozen=True)
class PARConfig(MethodConfig):
    # --- variants (paper Table 3) ---------------------------------------------------------
    autoregressive: bool = True
    """False: PAR-NoAR (Sec. 5.3.1): no causal transformer; the action de-tokenizer decodes
    directly from the embedded text, frame and action tokens. Default True: PAR-Full
    (paper Table 3)."""
    action_head: str = "diffusion"
    """``diffusion`` (Action-DiT, paper §4.2.3, the default) or ``mlp``: PAR-Discrete
    (Sec. 5.3.2), a regression head."""

    # --- physical tokens ----------------------------------------------------------------
    action_chunk_len: int = 8
    """L actions per chunk, one token each (K_A = L, paper §4.2.1). The paper gives no value;
    ours: PhysGen (arXiv 2603.00110), its authors' follow-up, reports L = 8."""
    context_steps: int = 5
    """Physical steps of context per training sequence and, at inference, the most kept
    (ours: PhysGen (arXiv 2603.00110) reports 5 physical tokens of context)."""
    rollout_context: str = "window"
    """What the context is at rollout step n (paper §4.1: "an accumulated history context"
    O_0..O_n, "variable-length"; bounded here by the trained window): the last
    min(n + 1, ``context_steps``) steps. ``window`` (the default, ours: exact) keeps it exact:
    the KV-cache grows while the context fills, and once it is full each call re-encodes the
    kept steps at the positions they had in training, because a multi-layer cache cannot drop
    its oldest step exactly. ``reuse`` drops the oldest step's keys and values from every
    layer's cache and appends the new step at the last position: each call encodes one step,
    and the kept steps keep the values they got beside the dropped one (an approximation;
    benchmarks/par_kv_cache.py measures how far the actions move)."""
    image_size: tuple[int, int] = (480, 768)
    """Frames are resized to NOVA-0.6B's video resolution before the VAE (NOVA osp480:
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml, image_size)."""
    vae_stride: int = 8
    """VAE downsampling, NOVA's image_stride:
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml."""
    latent_channels: int = 4
    """VAE latent channels, NOVA's image_dim:
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml."""
    temporal_patch: int = 4
    """Latent patch per frame token in the causal transformer: 480x768 -> 15x24 = 360 tokens;
    video patch = 2 * image patch in
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py."""
    spatial_patch: int = 2
    """Latent patch per token of the frame de-tokenizer (NOVA's image encoder): 1440 tokens
    (baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py: 15 // stride + 1)."""

    # --- causal transformer (NOVA-0.6B: vit_d16w1024 temporal + vit_d32w1024 spatial) ------
    width: int = 1024
    """NOVA-0.6B's width:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (vit_d*w1024)."""
    num_heads: int = 16
    """NOVA-0.6B's heads:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (vit_d*w1024)."""
    temporal_depth: int = 16
    """NOVA's temporal encoder:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (vit_d16w1024)."""
    spatial_depth: int = 32
    """NOVA's spatial encoder:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (vit_d32w1024)."""
    mlp_ratio: float = 4.0
    """baaivision/NOVA@2cd254a:diffnext/models/vision_transformer.py (mlp_ratio=4)."""
    video_base_frames: int = 16
    """NOVA's time axis: a clip's slots are spread over this many positions of its absolute
    time embedding (video_base_size[0] in
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml); the clip here is the
    ``context_steps`` physical steps plus the predicted one (model.VideoPositions)."""
    video_mixer_rank: int | None = 24
    """NOVA's video mixer (model.VideoMixer): the spatial decoder's condition for each frame is
    the output of NOVA's begin-of-video (BOS) slot, scaled and shifted by a rank-r projection of
    the frame's own causal-transformer output (baaivision/NOVA@2cd254a:diffnext/models/
    transformers/transformer_3d.py, train_video and generate_video). 24: the released
    checkpoint's transformer/config.json (BAAI/nova-d48w1024-osp480), which the repository's
    yaml omits; 0 is NOVA's full-width variant. With it the sequence holds NOVA's BOS slot
    after the text (``frame_tokens`` tokens at the slot before O_0's), whose output is the
    reference, kept for a whole rollout as NOVA's generation keeps it. None: neither (the frame
    outputs condition the spatial decoder directly), as NOVA's repository config builds it."""
    rope_theta_frame: float = 10_000.0
    """RoPE base of frame tokens (rotated by their step only; docs/par.md): NOVA's
    RotaryEmbed3D default theta (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py) ..."""
    rope_theta_action: float = 100.0
    """... and of action tokens (time, index in chunk): distinct settings (paper §4.3); the
    paper gives no values (ours: both bases, docs/par.md)."""

    # --- text ---------------------------------------------------------------------------
    text_hidden: int = 2560
    """Phi-2's hidden size; a linear projector maps it to ``width`` (Sec. 4.2.1;
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml, text_token_dim)."""
    text_tokens: int = 256
    """K_t: NOVA's text_token_len (instructions are padded/truncated to it;
    baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml)."""
    phi_path: str | None = "weights/nova-d48w1024-osp480/text_encoder"
    """Local folder of the frozen Phi model, its tokenizer in it or in ``../tokenizer``
    (transformers format). Default: NOVA-0.6B's own text encoder, Phi-2 as the release ships it
    (its model_index.json: text_encoder, tokenizer), since PAR adopts NOVA's language encoder
    "without modification" (paper §4.2.1); a microsoft/phi-2 folder works too (ours: local
    weight path, no hub downloads at run time)."""
    nova_path: str | None = "weights/nova-d48w1024-osp480"
    """Local NOVA-0.6B video checkpoint folder as the release is downloaded (model_index.json,
    transformer/, vae/, scheduler/; ours: local weight path)."""
    frame_codec: str = "vae"
    """How frames become latents. ``vae`` (the default; paper §4.2.1: NOVA's frozen VAE, or a
    random one, see below).
    ``pixels``: no VAE; the image in [-1, 1] is folded space-to-depth by ``vae_stride``
    (``latent_channels`` = 3 * vae_stride**2), which decodes exactly. Not in the paper: the
    reduced preset uses it because no pretrained VAE is available offline, and a randomly
    initialised VAE cannot turn predicted latents back into a picture (docs/par.md)."""
    random_init_vae: dict | None = None
    """When set: a diffusers AutoencoderKL of this config, randomly initialised (fixed seed),
    replaces NOVA's VAE, and NOVA's transformer weights are not loaded (smoke, tests).
    Default None (ours: the real VAE)."""
    random_init_phi: dict | None = None
    """When set: a transformers PhiConfig for a randomly initialised Phi (fixed seed) with a
    byte-level tokenizer, instead of the weights at ``phi_path``. Default None (ours: the
    real Phi)."""

    # --- frame de-tokenizer (NOVA mlp_d3w1280 + set-by-set masked spatial AR) -----------
    frame_mlp_width: int = 1280
    """NOVA's diffusion MLP width:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (mlp_d3w1280)."""
    frame_mlp_depth: int = 3
    """NOVA's diffusion MLP depth:
    baaivision/NOVA@2cd254a:diffnext/models/transformers/transformer_nova.py (mlp_d3w1280)."""
    spatial_ar_steps: int = 16
    """Set-by-set iterations when a frame is generated (rollout visualisation only; ours: CPU
    cost; NOVA's pipeline defaults to num_inference_steps=64)."""
    mask_ratio_min: float = 0.7
    """The ratio of masked spatial tokens in training lies in [mask_ratio_min, 1]
    (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py, MaskEmbed mask_ratios=(0.7, 1.0)) ..."""
    mask_ratio_std: float = 0.25
    """... drawn from a normal around 1 with this std, truncated to that range
    (baaivision/NOVA@2cd254a:diffnext/models/embeddings.py, MaskEmbed: stats.truncnorm with
    scale mask_ratios[2] = 0.25)."""

    # --- action modules -------------------------------------------------------------------
    qpos_in_action_tokens: bool = False
    """Whether PAR reads the robot's joint positions: a linear embedding of each physical step's
    normalised qpos (observed with that step's frame), added to the step's action tokens, whose
    outputs condition the Action-DiT. Off in the paper preset: §4 lists PAR's inputs as frames,
    actions and the instruction; only Fig. 1's caption says "observations and proprios are
    encoded back" (ours: an interpretation of that caption, a switch; docs/par.md). On in the
    reduced preset, where it was measured to help (69/125 against 51/125 on reduced PushCube,
    McNemar p = 0.03: results/measured/reduced/par_controlled)."""
    action_tokenizer_hidden: int = 576
    """Hidden width of the action MLP (A -> hidden -> width). The paper gives only the total,
    0.6M (paper Table 1); ours: 576 makes MLP + BOA tokens total 0.60M."""
    action_dit_width: int = 512
    """ours: chosen with depth, heads and MLP ratio to match paper Table 1 (21.1M)."""
    action_dit_depth: int = 3
    """ours: see ``action_dit_width`` (paper Table 1 gives only the total)."""
    action_dit_heads: int = 8
    """ours: 512 / 8 = 64-dim heads; the paper gives no value."""
    action_dit_mlp_ratio: float = 4.8
    """Action-DiT shape; the paper gives only the total, 21.1M (paper Table 1), which this
    matches (ours: the split into width, depth and MLP ratio)."""
    action_mlp_hidden: int = 1024
    """PAR-Discrete's regression head: width -> hidden -> A per action token (ours: the paper
    gives no shape)."""

    # --- diffusion (MAR's diffusion loss) ---------------------------------------------------
    num_train_timesteps: int = 1000
    """MAR: 1000 training steps (LTH14/mar@fe470ac:diffusion/__init__.py, diffusion_steps)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """MAR: cosine schedule, 1000 steps (noise_schedule="cosine" in
    LTH14/mar@fe470ac:models/diffloss.py)."""
    diffusion_repeats: int = 4
    """t sampled 4 times per token (paper §4.3, after MAR: LTH14/mar@fe470ac:models/mar.py,
    diffusion_batch_mul=4)."""
    frame_sampling_steps: int = 50
    """Sampler steps per frame set, DDIM or, for ``flow``, Euler (ours: MAR samples 100,
    NOVA 25; the paper is silent)."""
    action_sampling_steps: int = 50
    """DDIM steps when sampling actions (ours: the paper is silent)."""
    frame_prediction_type: str = "checkpoint"
    """What the frame diffusion MLP predicts: ``epsilon`` (MAR's loss, paper Eq. 10),
    ``v_prediction``, or ``flow`` (NOVA's flow matching: target noise - x,
    baaivision/NOVA@2cd254a:diffnext/schedulers/scheduling_cfm.py). The default,
    ``checkpoint``, takes the objective NOVA's checkpoint was trained with from
    ``<nova_path>/scheduler/scheduler_config.json`` (ours: fine-tuning must keep the
    pretrained MLP's objective; NOVA's code supports both, diffnext/pipelines/builder.py).
    With 192-value pixel tokens (the reduced preset, which sets v_prediction) the epsilon
    model is worse than the trivial guess at high noise (benchmarks/par_frame_denoising.py)."""
    frame_scheduler: dict | None = None
    """The frames' DDPM noise schedule and sampler as NOVA's checkpoint defines them: its
    scheduler/scheduler_config.json, read as diffusers' DDPMScheduler (the class the release's
    model_index.json names) for training (add_noise, t uniform over its steps:
    baaivision/NOVA@2cd254a:diffnext/schedulers/scheduling_ddpm.py, sample_timesteps) and
    sampling (its step, ``frame_sampling_steps`` of them, as NOVA's pipeline samples with the
    scheduler it loads: baaivision/NOVA@2cd254a:diffnext/pipelines/nova/pipeline_nova.py). Set
    from the checkpoint when ``frame_prediction_type`` is ``checkpoint`` and kept in the run's
    config; None: the actions' schedule (``beta_schedule``) and DDIM."""
    frame_flow_shift: float = 1.0
    """Timestep shift of the flow-matching sigmas (NOVA's FlowMatchEulerDiscreteScheduler
    default, baaivision/NOVA@2cd254a:diffnext/schedulers/scheduling_cfm.py; taken from the
    checkpoint's scheduler config when ``frame_prediction_type`` is ``checkpoint``)."""
    frame_loss_weight: float = 1.0
    """Eq. 11 sums frame and action losses with equal weight (paper §4.2.5)."""

    gradient_checkpointing: int = 3
    """Recompute activations in the backward pass instead of keeping them, at NOVA's levels:
    0 off, 1 the causal transformer's blocks, 2 also the spatial encoder's, 3 also the frame
    diffusion MLP's (baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml,
    gradient_checkpointing {0, 1, 2, 3}; NOVA's config sets 0 for its 3-sample batches).
    ours: 3, because the paper fine-tuned on one 64 GB A100: at batch 8 in bf16 the projection
    is 32.5 GiB with level 3 and 103.5 GiB with 0 (``python -m harness memory --method par``,
    docs/par.md; levels 1 and 2 not measured)."""

    # --- fine-tuning ------------------------------------------------------------------------
    finetune: str = "full"
    """``full`` (paper §4.3) or ``lora`` (peft LoRA on the causal transformer, its
    named limitation)."""
    lora_rank: int = 16
    """LoRA rank when ``finetune="lora"`` (ours: not in the paper)."""

    # --- training (paper §4.3: 1 A100, up to 40 GPU-hours; NOVA's optimiser: AdamW lr 1e-4,
    # betas (0.9, 0.95), weight decay 0.02, constant lr) --------------------------------------
    steps: int = 100_000
    """Optimizer steps (ours: the paper gives only 40 GPU-hours; NOVA's osp480 config
    runs 60000)."""
    batch_size: int = 8
    """ours: the paper gives no batch size (NOVA's osp480 config: 3 per GPU x 128)."""
    lr: float = 1e-4
    """Peak AdamW lr (baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml (optimizer betas)."""
    weight_decay: float = 0.02
    """baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml (optimizer weight_decay)."""
    lr_schedule: str = "constant"
    """baaivision/NOVA@2cd254a:configs/nova_d48w1024_osp480.yaml (ConstantLR)."""
    warmup_steps: int = 500
    """ours: the paper is silent (NOVA's osp480 config sets warmup_steps 0)."""
    grad_clip_norm: float | None = 1.0
    """ours: the paper is silent and NOVA's code does not clip (MAR's grad_clip default is 3.0)."""

    def __post_init__(self):
        super().__post_init__()
        if self.frame_prediction_type not in FRAME_OBJECTIVES:
            raise ValueError(f"PARConfig.frame_prediction_type must be one of {', '.join(FRAME_OBJECTIVES)}, "
                             f"not {self.frame_prediction_type!r}")
        if self.frame_prediction_type == "checkpoint" and (self.nova_path is None or self.frame_codec != "vae"):
            raise ValueError("PARConfig.frame_prediction_type 'checkpoint' reads the objective from "
                             "NOVA's checkpoint (nova_path); without NOVA weights set epsilon, "
                             "v_prediction or flow")
        if self.frame_scheduler is not None and \
                self.frame_prediction_type != self.frame_scheduler.get("prediction_type", "epsilon"):
            raise ValueError(f"PARConfig.frame_prediction_type {self.frame_prediction_type!r} differs from "
                             f"frame_scheduler's prediction_type {self.frame_scheduler.get('prediction_type', 'epsilon')!r}")
        if self.video_mixer_rank is not None and not self.autoregressive:
            raise ValueError("PARConfig.video_mixer_rank mixes the causal transformer's frame outputs; "
                             "PAR-NoAR has none: set it to null")
        if self.rollout_context not in ("window", "reuse"):
            raise ValueError(f"PARConfig.rollout_context must be window or reuse, not {self.rollout_context!r}")
        if self.frame_codec not in ("vae", "pixels"):
            raise ValueError(f"PARConfig.frame_codec must be vae or pixels, not {self.frame_codec!r}")
        if self.frame_codec == "pixels" and self.latent_channels != 3 * self.vae_stride ** 2:
            raise ValueError(f"PARConfig.latent_channels must be 3 * vae_stride**2 = {3 * self.vae_stride ** 2} "
                             f"with frame_codec=pixels, not {self.latent_channels}")

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.image_size[0] // self.vae_stride, self.image_size[1] // self.vae_stride

    @property
    def frame_tokens(self) -> int:
        """K_o: frame tokens per physical step in the causal transformer."""
        h, w = self.latent_size
        return (h // self.temporal_patch) * (w // self.temporal_patch)

    @property
    def spatial_tokens(self) -> int:
        h, w = self.latent_size
        return (h // self.spatial_patch) * (w // self.spatial_patch)
