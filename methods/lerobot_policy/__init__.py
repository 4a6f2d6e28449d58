"""Any trainable LeRobot policy (lerobot 0.3.2) as a harness method, through LeRobot's own policy
factory: ``lerobot_act``, ``lerobot_diffusion`` and ``lerobot_vqbet``.

One adapter serves them all; what differs is LeRobot's: its config class
(``make_policy_config``), its windows (``observation_delta_indices`` /
``action_delta_indices``), its normalisation modes, its optimizer parameter groups
(``get_optim_params``: ACT's backbone group, VQ-BeT's VQ-VAE group) and its scheduler preset
(VQ-BeT: a constant phase while the VQ-VAE trains, then warmup and cosine). Rollouts call the
policy's ``select_action``, so its observation and action queues behave exactly as in LeRobot.

A method's config is LeRobot's defaults: the paper preset below copies LeRobot's training
preset (optimizer, scheduler, ``TrainPipelineConfig`` steps and batch) and ``policy`` holds the
LeRobot config fields that differ from LeRobot's defaults (none at the paper scale).
``tests/test_lerobot_policy.py`` checks the copies against LeRobot's classes.

What the harness does differently, everywhere:
- It trains with AdamW (decoupled weight decay). LeRobot's diffusion and VQ-BeT presets use Adam
  with L2 weight decay 1e-6 (1e-4 on VQ-BeT's VQ-VAE group): a difference of that order.
- No pretrained backbone is downloaded: ``pretrained_backbone_weights`` is None (LeRobot's ACT
  default is torchvision's ImageNet ResNet-18; the harness's own ``act`` loads it from a file).
- The harness normalises joint positions and actions (by the LeRobot config's STATE / ACTION
  modes: MEAN_STD -> mean_std, MIN_MAX -> min_max); images reach the policy in [0, 1]
  (IDENTITY) because the harness's datasets carry no image statistics.

Refused by name (``harness.registry.REFUSED`` says why): ``lerobot_tdmpc`` and ``lerobot_sac``
learn from rewards, which the demos do not have; ``lerobot_pi0``, ``lerobot_pi0fast`` and
``lerobot_smolvla`` need pretrained vision-language weights and tokenizers from the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY, lerobot_features
from harness.windows import WindowSpec


# LeRobot config fields the adapter sets from the harness's config (a ``policy`` entry for one is refused)
HARNESS_OWNED = {"device", "optimizer_lr", "optimizer_weight_decay", "optimizer_betas", "scheduler_warmup_steps",
                 "pretrained_backbone_weights", "normalization_mapping", "input_features", "output_features",
                 "crop_shape"}


@dataclass(frozen=True)
class LeRobotPolicyConfig(MethodConfig):
    """What every LeRobot policy shares; training fields are the policy's LeRobot presets."""

    policy: dict = field(default_factory=dict)
    """LeRobot config fields that differ from LeRobot's defaults (the paper preset: none), e.g.
    ``{"n_vqvae_training_steps": 2000}``. ours: the harness passes everything else as LeRobot has it."""
    image_resize: tuple[int, int] | None = None
    """Frames resized to this (H, W) before the policy sees them; None: the dataset's size.
    ours: a CPU budget at the reduced scale (as dp_unet's image_resize)."""
    crop_fraction: float | None = 0.875
    """For policies that crop (diffusion, VQ-BeT): crop_shape as this fraction of the frames' size;
    None: LeRobot's crop_shape as it is (84 x 84). 0.875: that crop's share of the PushT frames it
    was made for (84 of 96 px; huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/
    configuration_diffusion.py). ours: the share, not the pixels, so that any scale's frames keep
    it (84 px of the paper scale's frames would be a sixth of the view)."""
    steps: int = 100_000
    """Optimizer steps: TrainPipelineConfig.steps. huggingface/lerobot@f771e3e:src/lerobot/configs/train.py."""
    batch_size: int = 8
    """Samples per step: TrainPipelineConfig.batch_size. huggingface/lerobot@f771e3e:src/lerobot/configs/train.py."""
    grad_clip_norm: float | None = 10.0
    """Gradient-norm clip: the optimizer presets' grad_clip_norm. huggingface/lerobot@f771e3e:src/lerobot/optim/optimizers.py."""
    num_workers: int = 2
    """DataLoader workers. ours: as the harness's other methods (MethodConfig)."""


@dataclass(frozen=True)
class LeRobotACTConfig(LeRobotPolicyConfig):
    """LeRobot's ACT training preset (ACTConfig.get_optimizer_preset: AdamW, no scheduler)."""

    lr: float = 1e-5
    """ACTConfig.optimizer_lr (the backbone group: optimizer_lr_backbone, also 1e-5).
    huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    weight_decay: float = 1e-4
    """ACTConfig.optimizer_weight_decay. huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamWConfig.betas. huggingface/lerobot@f771e3e:src/lerobot/optim/optimizers.py."""
    lr_schedule: str = "constant"
    """ACTConfig.get_scheduler_preset returns None. huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""
    warmup_steps: int = 0
    """No scheduler, no warmup. huggingface/lerobot@f771e3e:src/lerobot/policies/act/configuration_act.py."""


@dataclass(frozen=True)
class LeRobotDiffusionConfig(LeRobotPolicyConfig):
    """LeRobot's Diffusion Policy training preset (Adam, diffusers' cosine schedule with warmup)."""

    lr: float = 1e-4
    """DiffusionConfig.optimizer_lr. huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py."""
    weight_decay: float = 1e-6
    """DiffusionConfig.optimizer_weight_decay (Adam's L2 there, AdamW's decoupled decay here).
    huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py."""
    betas: tuple[float, float] = (0.95, 0.999)
    """DiffusionConfig.optimizer_betas. huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py."""
    lr_schedule: str = "cosine"
    """DiffusionConfig.scheduler_name. huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py."""
    warmup_steps: int = 500
    """DiffusionConfig.scheduler_warmup_steps. huggingface/lerobot@f771e3e:src/lerobot/policies/diffusion/configuration_diffusion.py."""


@dataclass(frozen=True)
class LeRobotVQBeTConfig(LeRobotPolicyConfig):
    """LeRobot's VQ-BeT training preset (Adam; the VQ-VAE group at its own lr; VQBeTSchedulerConfig)."""

    lr: float = 1e-4
    """VQBeTConfig.optimizer_lr (the VQ-VAE group: optimizer_vqvae_lr 1e-3).
    huggingface/lerobot@f771e3e:src/lerobot/policies/vqbet/configuration_vqbet.py."""
    weight_decay: float = 1e-6
    """VQBeTConfig.optimizer_weight_decay (VQ-VAE group: optimizer_vqvae_weight_decay 1e-4).
    huggingface/lerobot@f771e3e:src/lerobot/policies/vqbet/configuration_vqbet.py."""
    betas: tuple[float, float] = (0.95, 0.999)
    """VQBeTConfig.optimizer_betas. huggingface/lerobot@f771e3e:src/lerobot/policies/vqbet/configuration_vqbet.py."""
    lr_schedule: str = "lerobot"
    """LeRobot's own VQBeTSchedulerConfig, which the harness's schedules cannot express: lr constant
    while the VQ-VAE trains (n_vqvae_training_steps), then linear warmup and a cosine.
    huggingface/lerobot@f771e3e:src/lerobot/optim/schedulers.py."""
    warmup_steps: int = 500
    """VQBeTConfig.scheduler_warmup_steps. huggingface/lerobot@f771e3e:src/lerobot/policies/vqbet/configuration_vqbet.py."""


class LeRobotPolicyAdapter(Adapter):
    """A LeRobot policy built by LeRobot's factory; subclasses name the policy type."""

    policy_type: ClassVar[str]

    @classmethod
    def lerobot_config(cls, config: LeRobotPolicyConfig, data: DataInfo | None = None):
        """LeRobot's config for this method: its defaults, ``config.policy`` on top, the harness's
        optimizer fields, no pretrained download, and (given ``data``) our features."""
        from lerobot.policies.factory import make_policy_config

        owned = HARNESS_OWNED & set(config.policy)
        if owned:
            from harness.adapter import ConfigFieldError

            raise ConfigFieldError(f"{cls.name}: policy sets {sorted(owned)}, which the harness sets itself "
                                   "(lr, weight_decay, betas, warmup_steps, crop_fraction, image_resize are "
                                   "the method config's fields; normalisation is the harness's)")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.policy.items()}
        fields.update(device="cpu", optimizer_lr=config.lr, optimizer_weight_decay=config.weight_decay)
        defaults = make_policy_config(cls.policy_type)
        if hasattr(defaults, "optimizer_betas"):
            fields["optimizer_betas"] = tuple(config.betas)
        if hasattr(defaults, "scheduler_warmup_steps"):
            fields["scheduler_warmup_steps"] = config.warmup_steps
        if hasattr(defaults, "pretrained_backbone_weights"):
            fields["pretrained_backbone_weights"] = None  # nothing downloads at run time
        if data is not None:  # IDENTITY everywhere: the harness has normalised qpos and actions
            size = tuple(config.image_resize) if config.image_resize else tuple(data.image_size)
            fields.update(lerobot_features(data, image_size=size))
            if config.crop_fraction and hasattr(defaults, "crop_shape"):
                fields["crop_shape"] = tuple(max(8, round(side * config.crop_fraction)) for side in size)
        return make_policy_config(cls.policy_type, **fields)

    def __init__(self, config: LeRobotPolicyConfig, data: DataInfo):
        super().__init__(config, data)
        from lerobot.policies.factory import get_policy_class

        self.lr_config = self.lerobot_config(config, data)
        self.policy = get_policy_class(self.policy_type)(self.lr_config, dataset_stats={})
        self._single_obs = self.lr_config.observation_delta_indices is None

    @classmethod
    def window_spec(cls, config: LeRobotPolicyConfig) -> WindowSpec:
        lr_config = cls.lerobot_config(config)
        obs = lr_config.observation_delta_indices or [0]
        actions = list(lr_config.action_delta_indices)
        return WindowSpec(obs_history=len(obs), action_chunk_len=len(actions), action_offset=actions[0])

    @classmethod
    def lr_multiplier(cls, config: LeRobotPolicyConfig):
        """With ``lr_schedule: lerobot``, LeRobot's own scheduler preset as the factor on ``lr``
        per step; otherwise the harness's ``cosine`` / ``constant`` (what LeRobot's ACT and
        diffusion presets are)."""
        if config.lr_schedule != "lerobot":
            return None
        preset = cls.lerobot_config(config).get_scheduler_preset()
        if preset is None:
            return None
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return preset.build(dummy, config.steps).lr_lambdas[0]

    def optim_groups(self) -> list[dict]:
        groups = self.policy.get_optim_params()  # a list of groups, or parameters (maybe a generator)
        groups = list(groups.values()) if isinstance(groups, dict) else list(groups)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        out = []
        for group in groups:
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                out.append({**group, "params": params,
                            "weight_decay": group.get("weight_decay", self.config.weight_decay)})
        return out

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        from methods.diffusion_obs import resize_frames

        return resize_frames(frames, self.config.image_resize)

    def forward(self, batch):
        frames, qpos = self._frames(batch["frames"]), batch["qpos"]
        if self._single_obs:
            frames, qpos = frames[:, -1], qpos[:, -1]
        loss, logs = self.policy.forward({IMAGE_KEY: frames, STATE_KEY: qpos, ACTION_KEY: batch["actions"][:, 0],
                                          "action_is_pad": batch["action_is_pad"][:, 0]})
        scalars = {k: float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}
        return loss, scalars

    def reset(self):
        self.policy.reset()

    @torch.no_grad()
    def act(self, observation):
        """One action per call from LeRobot's ``select_action`` (its queues decide when to predict)."""
        batch = {IMAGE_KEY: self._frames(observation["frame"][None]), STATE_KEY: observation["qpos"][None]}
        return self.policy.select_action(batch)


def _normalization(policy_type: str) -> dict[str, str]:
    # LeRobot's STATE / ACTION modes, fixed here so that listing methods imports no LeRobot;
    # tests/test_lerobot_policy.py checks them against LeRobot's configs
    return {"act": {"actions": "mean_std", "qpos": "mean_std"},
            "diffusion": {"actions": "min_max", "qpos": "min_max"},
            "vqbet": {"actions": "min_max", "qpos": "min_max"}}[policy_type]


class LeRobotACTAdapter(LeRobotPolicyAdapter):
    name = "lerobot_act"
    policy_type = "act"
    config_class = LeRobotACTConfig
    normalization = _normalization("act")
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, checkpoint_every=2, log_every=1, num_workers=0,
                      policy=dict(chunk_size=8, n_action_steps=8, dim_model=32, n_heads=2, dim_feedforward=64,
                                  n_encoder_layers=1, n_vae_encoder_layers=1, latent_dim=8)),
        # as the harness's own act reduced preset (methods/act), for the same budget
        "reduced": dict(steps=7_000, lr=1e-4, checkpoint_every=1_000, num_workers=1,
                        policy=dict(chunk_size=20, n_action_steps=20, dim_model=256, dim_feedforward=1024,
                                    n_encoder_layers=2, n_vae_encoder_layers=2, optimizer_lr_backbone=1e-4)),
    }


class LeRobotDiffusionAdapter(LeRobotPolicyAdapter):
    name = "lerobot_diffusion"
    policy_type = "diffusion"
    config_class = LeRobotDiffusionConfig
    normalization = _normalization("diffusion")
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1, num_workers=0,
                      crop_fraction=0.875, policy=dict(down_dims=(32, 64), num_train_timesteps=10,
                                                       num_inference_steps=3)),
        # as the harness's dp_unet reduced preset: 84x84 inputs, 16 sampling steps
        "reduced": dict(steps=4_500, batch_size=16, warmup_steps=300, image_resize=(84, 84),
                        crop_fraction=76 / 84, checkpoint_every=1_000, num_workers=1,
                        policy=dict(num_inference_steps=16)),
    }


class LeRobotVQBeTAdapter(LeRobotPolicyAdapter):
    name = "lerobot_vqbet"
    policy_type = "vqbet"
    config_class = LeRobotVQBeTConfig
    normalization = _normalization("vqbet")
    scale_overrides = {
        "smoke": dict(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1, num_workers=0,
                      crop_fraction=0.875, policy=dict(n_vqvae_training_steps=2, vqvae_n_embed=8,
                                  vqvae_embedding_dim=32, vqvae_enc_hidden_dim=32, gpt_n_layer=1, gpt_n_head=2,
                                  gpt_input_dim=32, gpt_output_dim=32, gpt_hidden_dim=32, mlp_hidden_dim=32,
                                  spatial_softmax_num_keypoints=8)),
        # ours: VQ-BeT's PushT input (96 px frames, 84 px crops) within a CPU budget; the VQ-VAE
        # phase a sixth of the steps (LeRobot's defaults: 20k of 100k)
        "reduced": dict(steps=6_000, batch_size=16, warmup_steps=300, image_resize=(96, 96),
                        crop_fraction=0.875, checkpoint_every=1_000, num_workers=1,
                        policy=dict(n_vqvae_training_steps=1_000)),
    }

    def __init__(self, config: LeRobotPolicyConfig, data: DataInfo):
        super().__init__(config, data)
        # VQ-BeT counts its VQ-VAE phase's steps in a plain attribute (``optimized_steps``), not
        # in its state dict: a run resumed inside that phase would train its VQ-VAE from zero
        # again. Kept here as a buffer, so checkpoints carry it and loading restores it.
        self.register_buffer("vqvae_optimized_steps", torch.zeros((), dtype=torch.long))
        self._register_load_state_dict_pre_hook(_default_vqvae_steps)
        self.register_load_state_dict_post_hook(_restore_vqvae_steps)

    def forward(self, batch):
        loss, scalars = super().forward(batch)
        self.vqvae_optimized_steps.fill_(self._vqvae.optimized_steps)
        return loss, scalars

    @property
    def _vqvae(self):
        return self.policy.vqbet.action_head.vqvae_model


def _default_vqvae_steps(state_dict, prefix, *args) -> None:
    """A run saved before the count was kept loads as one whose VQ-VAE phase starts at zero (as
    it resumed then); past the phase its ``discretized`` buffer decides, not the count."""
    state_dict.setdefault(prefix + "vqvae_optimized_steps", torch.zeros((), dtype=torch.long))


def _restore_vqvae_steps(module, incompatible_keys) -> None:
    module._vqvae.optimized_steps = int(module.vqvae_optimized_steps)


@dataclass(frozen=True)
class LeRobotPretrainedConfig(MethodConfig):
    """A trained LeRobot policy, evaluated as it is: nothing is trained."""

    path: str | None = None
    """A LeRobot pretrained-model folder (config.json + model.safetensors), e.g. lerobot-train's
    ``<output_dir>/checkpoints/last/pretrained_model``. ours: required, set through a config's
    ``method_overrides: {lerobot_pretrained: {path: ...}}``."""
    steps: int = 0
    """No optimizer steps. ours: the folder's weights are evaluated as LeRobot trained them."""
    num_workers: int = 0
    """No DataLoader workers. ours: no batch is read."""


class LeRobotPretrainedAdapter(Adapter):
    """A LeRobot checkpoint under the harness's protocol: the policy normalises with its own
    statistics (so the harness passes raw joint positions and takes raw actions) and acts through
    ``select_action``. Its "training" copies the folder's weights into the run, and every rollout
    row names the checkpoint file and its SHA-256 (``pretrained_weights``)."""

    name = "lerobot_pretrained"
    config_class = LeRobotPretrainedConfig
    trainable = False
    normalization = {"actions": "identity", "qpos": "identity"}  # the checkpoint's own normalisers

    def __init__(self, config: LeRobotPretrainedConfig, data: DataInfo):
        super().__init__(config, data)
        from pathlib import Path

        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        from harness.adapter import ConfigFieldError

        if not config.path:
            raise ConfigFieldError("lerobot_pretrained needs the LeRobot checkpoint folder to evaluate: set "
                                   "method_overrides: {lerobot_pretrained: {path: <output_dir>/checkpoints/last/"
                                   "pretrained_model}} in the config")
        path = Path(config.path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path} is not a LeRobot pretrained-model folder (config.json and "
                                    "model.safetensors); lerobot-train writes one at "
                                    "<output_dir>/checkpoints/<step>/pretrained_model")
        lr_config = PreTrainedConfig.from_pretrained(path)  # a local folder: no network
        lr_config.device = "cpu"
        if hasattr(lr_config, "pretrained_backbone_weights"):  # the checkpoint holds the backbone:
            lr_config.pretrained_backbone_weights = None  # nothing to download (LeRobot's ACT default would)
        want = {IMAGE_KEY: (3, *data.image_size), STATE_KEY: (data.qpos_dim,), ACTION_KEY: (data.action_dim,)}
        have = {**{k: tuple(v.shape) for k, v in lr_config.input_features.items()},
                **{k: tuple(v.shape) for k, v in lr_config.output_features.items()}}
        wrong = {k: (have.get(k), shape) for k, shape in want.items() if have.get(k) != shape}
        wrong.update({k: (have[k], None) for k in sorted(set(have) - set(want))})  # e.g. a second camera
        if wrong:
            raise ValueError(f"{path} was trained on other inputs/outputs than this task's dataset: "
                             + "; ".join(f"{k}: {got} in the checkpoint, {shape or 'no such feature'} here"
                                         for k, (got, shape) in wrong.items()))
        policy_cls = get_policy_class(lr_config.type)
        if self.restoring():  # the run's copy of the weights replaces these at once
            self.policy = policy_cls(lr_config)
        else:
            self.policy = policy_cls.from_pretrained(path, config=lr_config)
        self.record_pretrained(path / "model.safetensors", action_pretrained=True)

    @classmethod
    def window_spec(cls, config: LeRobotPretrainedConfig) -> WindowSpec:
        return WindowSpec(obs_history=1, action_chunk_len=1, load_frames=False)

    def forward(self, batch):
        raise NotImplementedError("lerobot_pretrained evaluates a trained checkpoint (Adapter.trainable is False)")

    def reset(self):
        self.policy.reset()

    @torch.no_grad()
    def act(self, observation):
        batch = {IMAGE_KEY: observation["frame"][None], STATE_KEY: observation["qpos"][None]}
        return self.policy.select_action(batch)
