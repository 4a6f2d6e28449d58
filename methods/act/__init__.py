"""ACT (Zhao et al., 2023, "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware")
through LeRobot's ``ACTPolicy`` (lerobot 0.3.2), behind the harness adapter.

Defaults are the ACT paper's / LeRobot's ACT defaults. The harness normalises qpos and actions
(mean/std, as LeRobot's ACT does); images are normalised inside the policy with ImageNet
statistics, as LeRobot does for its ImageNet-pretrained backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY, lerobot_features
from harness.windows import WindowSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@dataclass(frozen=True)
class ACTConfig(MethodConfig):
    """ACT hyperparameters. Sources: ACT paper (Zhao et al. 2023, Table 5) and LeRobot's ACTConfig."""

    chunk_size: int = 100
    """Actions predicted per query, k (as in the original code, tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    n_action_steps: int = 100
    """Actions executed before the next query: the whole chunk.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    temporal_ensemble_coeff: float | None = None
    """Temporal ensembling, None: off; original code: 0.01 (tonyzhaozh/act@742c753:imitate_episodes.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    vision_backbone: str = "resnet18"
    """Torchvision ResNet encoding the images (as in tonyzhaozh/act@742c753:imitate_episodes.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    backbone_weights_path: str | None = "weights/resnet18-f37072fd.pth"
    """Local ImageNet ResNet18 weights (torchvision's IMAGENET1K_V1 file); None: from scratch.
    ours: LeRobot's IMAGENET1K_V1 default, from a local file so nothing downloads at run time."""
    dim_model: int = 512
    """Transformer hidden dimension (the original code's --hidden_dim 512, tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    n_heads: int = 8
    """Attention heads per transformer layer.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    dim_feedforward: int = 3200
    """Feed-forward width of the transformer layers (as in tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    n_encoder_layers: int = 4
    """Transformer encoder layers (as in tonyzhaozh/act@742c753:imitate_episodes.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    n_decoder_layers: int = 1
    """Decoder layers: the original code builds 7 but, through a bug, uses only the first (LeRobot).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    use_vae: bool = True
    """Train with the CVAE objective.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    latent_dim: int = 32
    """CVAE latent size (as in tonyzhaozh/act@742c753:detr/models/detr_vae.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    n_vae_encoder_layers: int = 4
    """Transformer layers of the CVAE encoder.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    dropout: float = 0.1
    """Dropout in the transformer layers (as in tonyzhaozh/act@742c753:detr/main.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    kl_weight: float = 10.0
    """Weight of the KL term, beta (as in tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    # training (ACT paper Table 5 / LeRobot: lr 1e-5, weight decay 1e-4, batch 8, no schedule)
    steps: int = 100_000
    """Optimizer steps (LeRobot's training default, TrainPipelineConfig.steps).
    huggingface/lerobot@f771e3e:src/lerobot/configs/train.py."""
    batch_size: int = 8
    """Samples per optimizer step (as in tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/configs/train.py."""
    lr: float = 1e-5
    """AdamW learning rate, LeRobot's optimizer_lr (as in tonyzhaozh/act@742c753:README.md).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    weight_decay: float = 1e-4
    """AdamW weight decay, LeRobot's optimizer_weight_decay (as in tonyzhaozh/act@742c753:detr/main.py).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    lr_schedule: str = "constant"
    """No learning-rate schedule: ACT's get_scheduler_preset returns None.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    warmup_steps: int = 0
    """No warmup: ACT's training preset has no scheduler.
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    grad_clip_norm: float | None = 10.0
    """Global gradient-norm clip: AdamWConfig.grad_clip_norm, ACT's optimizer preset.
    huggingface/lerobot@f771e3e:src/lerobot/optim/optimizers.py."""


class ACTAdapter(Adapter):
    name = "act"
    config_class = ACTConfig
    normalization = {"actions": "mean_std", "qpos": "mean_std"}
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, chunk_size=8, n_action_steps=8, dim_model=32, n_heads=2,
                      dim_feedforward=64, n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=8,
                      backbone_weights_path=None, checkpoint_every=2, log_every=1, num_workers=0),
        # real learning in about a CPU-hour: a chunk that fits ~70-step PushCube episodes, a
        # narrower transformer, the backbone from scratch (no download), hence a higher lr
        "reduced": dict(steps=7_000, batch_size=8, chunk_size=20, n_action_steps=20, dim_model=256,
                        dim_feedforward=1024, n_encoder_layers=2, n_vae_encoder_layers=2, lr=1e-4,
                        backbone_weights_path=None, checkpoint_every=1_000, num_workers=1),
    }

    def __init__(self, config: ACTConfig, data: DataInfo):
        super().__init__(config, data)
        from lerobot.policies.act.configuration_act import ACTConfig as LeRobotACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        lr_cfg = LeRobotACTConfig(
            n_obs_steps=1, chunk_size=config.chunk_size, n_action_steps=config.n_action_steps,
            temporal_ensemble_coeff=config.temporal_ensemble_coeff,
            vision_backbone=config.vision_backbone, pretrained_backbone_weights=None,
            dim_model=config.dim_model, n_heads=config.n_heads, dim_feedforward=config.dim_feedforward,
            n_encoder_layers=config.n_encoder_layers, n_decoder_layers=config.n_decoder_layers,
            use_vae=config.use_vae, latent_dim=config.latent_dim,
            n_vae_encoder_layers=config.n_vae_encoder_layers, dropout=config.dropout,
            kl_weight=config.kl_weight, device="cpu",
            # qpos/actions arrive normalised by the harness; images get ImageNet statistics
            **lerobot_features(data, image_normalization="MEAN_STD"),
        )
        stats = {IMAGE_KEY: {"mean": torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
                                       "std": torch.tensor(IMAGENET_STD).view(3, 1, 1)}}
        self.policy = ACTPolicy(lr_cfg, dataset_stats=stats)
        on_meta = next(self.policy.parameters()).is_meta  # counting parameters: nothing to load
        if config.backbone_weights_path and not on_meta:
            self._load_backbone(Path(config.backbone_weights_path))

    def _load_backbone(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(
                f"ACT's ImageNet {self.config.vision_backbone} weights are not at {path}. Download "
                f"{RESNET18_URL} (torchvision's file) to that path, or set backbone_weights_path: "
                "null to train the backbone from scratch. Nothing is downloaded at run time.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, _ = self.policy.model.backbone.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{path} does not fit {self.config.vision_backbone}: missing {missing[:5]}")

    @classmethod
    def without_pretrained(cls, config: ACTConfig) -> ACTConfig:
        """The ResNet backbone at random instead of from ImageNet's weights (same shapes)."""
        return config.replace(backbone_weights_path=None)

    @classmethod
    def window_spec(cls, config: ACTConfig) -> WindowSpec:
        return WindowSpec(obs_history=1, action_chunk_len=config.chunk_size)

    def forward(self, batch):
        lr_batch = {
            IMAGE_KEY: batch["frames"][:, -1],
            STATE_KEY: batch["qpos"][:, -1],
            ACTION_KEY: batch["actions"][:, 0],
            "action_is_pad": batch["action_is_pad"][:, 0],
        }
        loss, logs = self.policy.forward(lr_batch)
        return loss, logs

    def reset(self):
        self.policy.reset()

    @torch.no_grad()
    def act(self, observation):
        lr_batch = {IMAGE_KEY: observation["frame"][None], STATE_KEY: observation["qpos"][None]}
        if self.config.temporal_ensemble_coeff is not None:
            return self.policy.select_action(lr_batch)  # (1, A): one ensembled action per step
        chunk = self.policy.predict_action_chunk(lr_batch)[0]
        return chunk[: self.config.n_action_steps]

