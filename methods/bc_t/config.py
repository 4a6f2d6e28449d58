"""BC-T, robomimic's BC_Transformer: its hyperparameters, robomimic's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from harness.adapter import MethodConfig

# Sources cited below (ARISE-Initiative/robomimic at d309eae, the commit BASELINES.md read):
#   robomimic/config/default_templates/bc_transformer.json   the BC-T template (training recipe)
#   robomimic/config/bc_config.py                            defaults the template leaves alone
#   robomimic/models/obs_nets.py, models/transformers.py     MIMO_Transformer, GPT_Backbone
#   robomimic/models/policy_nets.py                          the two heads
_TEMPLATE = "ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json"
_BC_CONFIG = "ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py"


@dataclass(frozen=True)
class BCTConfig(MethodConfig):
    """Defaults: robomimic's BC-Transformer template with one RGB camera and the joint state."""

    context_length: int = 10
    """Observation steps per token sequence, one token per step (`algo.transformer.context_length`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py; the dataset's `train.frame_stack`
    matches it: ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    embed_dim: int = 512
    """Transformer width (`algo.transformer.embed_dim`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    num_layers: int = 6
    """Causal GPT blocks (`algo.transformer.num_layers`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    num_heads: int = 8
    """Attention heads (`algo.transformer.num_heads`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    emb_dropout: float = 0.1
    """Dropout on the token embeddings (`algo.transformer.emb_dropout`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py)."""
    attn_dropout: float = 0.1
    """Dropout on the attention weights (`algo.transformer.attn_dropout`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py)."""
    block_output_dropout: float = 0.1
    """Dropout on each block's attention and MLP outputs (`algo.transformer.block_output_dropout`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py)."""
    head: str = "deterministic"
    """``deterministic``: tanh(Linear) trained with MSE (robomimic's BC_Transformer, l2_weight 1);
    ``gmm``: the GMM head trained by log-likelihood (BC_Transformer_GMM; the variant bc_t_gmm)
    (`algo.gmm.enabled` is False: ARISE-Initiative/robomimic@d309eae:robomimic/config/bc_config.py;
    the template turns it on, hence the variant)."""
    num_modes: int = 5
    """GMM modes (`algo.gmm.num_modes`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    min_std: float = 1e-4
    """Floor added to each mode's softplus std (`algo.gmm.min_std`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    low_noise_eval: bool = True
    """In evaluation every mode's std is 1e-4, so a sample is (almost) the mean of a sampled
    mode (`algo.gmm.low_noise_eval`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    num_keypoints: int = 32
    """Spatial-softmax keypoints after the ResNet18 trunk (`pool_kwargs.num_kp`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    image_feature_dim: int = 64
    """Linear projection of the keypoints, per frame (`core_kwargs.feature_dimension`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    image_resize: tuple[int, int] | None = (84, 84)
    """Frames resized to (H, W) before the crop (ours: robomimic's image datasets are 84x84,
    the size its 76-pixel crop is set for; ours are rendered at 128 or 512)."""
    crop_fraction: float = 76 / 84
    """CropRandomizer: a random 76x76 crop in training, the centre one in evaluation
    (`obs_randomizer_kwargs.crop_height/crop_width`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    # the recipe
    steps: int = 200_000
    """Optimizer steps: 2000 epochs x 100 steps (`train.num_epochs`, `experiment.epoch_every_n_steps`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    batch_size: int = 100
    """Samples per step (`train.batch_size`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    lr: float = 1e-4
    """AdamW learning rate (`learning_rate.initial`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    weight_decay: float = 0.01
    """AdamW weight decay on every parameter (`regularization.L2` of `optimizer_type: adamw`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    lr_schedule: str = "linear_epochs"
    """robomimic's LinearLR stepped once per epoch: the lr falls linearly from 1x to
    ``lr_decay_factor`` over ``lr_decay_epochs`` epochs, then stays (`scheduler_type: linear`:
    ARISE-Initiative/robomimic@d309eae:robomimic/utils/torch_utils.py)."""
    lr_decay_factor: float = 0.1
    """Final lr multiplier (`learning_rate.decay_factor`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    lr_decay_epochs: int = 100
    """Epochs of the linear decay (`learning_rate.epoch_schedule`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    steps_per_epoch: int = 100
    """Optimizer steps per epoch, the unit of the lr schedule (`experiment.epoch_every_n_steps`:
    ARISE-Initiative/robomimic@d309eae:robomimic/config/default_templates/bc_transformer.json)."""
    warmup_steps: int = 0
    """No warmup: robomimic's schedule has none
    (ARISE-Initiative/robomimic@d309eae:robomimic/utils/torch_utils.py). If set, a linear warmup
    from 0 multiplies the per-epoch decay."""
    grad_clip_norm: float | None = None
    """No clipping: BC's training step passes `train.max_grad_norm`, which is None
    (ARISE-Initiative/robomimic@d309eae:robomimic/config/base_config.py)."""
