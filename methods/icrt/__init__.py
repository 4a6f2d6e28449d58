"""ICRT: the In-Context Robot Transformer (Fu et al., 2024; Max-Fu/icrt), written from its code.

A causal Llama transformer over two tokens per step: a state token (attention pooling of the
image tokens and an MLP of the joint state) and an action token (an MLP of the action). The
state token's output is decoded into a 16-step action chunk. A training sample runs through
several whole demonstrations of the task; the loss (L1) is only on the steps after a random
demonstration boundary, never the first, so the earlier demos act as the prompt. In a rollout
the prompt demos (from the training dataset, picked by the harness from the policy seed) are
fed once into the KV-cache; then each step feeds the previous executed action and the new
state, predicts a chunk, and executes the temporal ensemble of the chunks that cover the step.
Which ICRT and why, and every deviation: docs/icrt.md.
"""

from __future__ import annotations

from collections import deque
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import Adapter, DataInfo
from harness.errors import HarnessError
from harness.windows import SequenceSpec
from methods.icrt.config import ICRTConfig
from methods.icrt.model import (IMAGENET_MEAN, IMAGENET_STD, AttentionPool, LlamaTransformer, Mlp,
                                SmallConvEncoder, ViTEncoder, random_crop_thetas)

log = logging.getLogger(__name__)

EVAL_CROP = 224 / 248
"""Side of the evaluation centre crop: timm's eval transform resizes to 248 and crops 224
(crop_pct 0.9: Max-Fu/icrt@e0c9588:icrt/models/policy/icrt_wrapper.py)."""


class ICRTAdapter(Adapter):
    name = "icrt"
    config_class = ICRTConfig
    # ours: upstream feeds raw end-effector deltas; joint targets and angles differ in scale per
    # joint, so both are standardised as ACT does
    normalization = {"actions": "mean_std", "qpos": "mean_std"}
    scale_overrides = {
        # smoke and reduced: one pass per step (their batches fit a CPU's memory whole)
        "smoke": dict(steps=4, batch_size=2, grad_accum_steps=1, dim=32, n_layers=1, n_heads=2, multiple_of=16, adapter_num_heads=2,
                      decoder_hidden=16, num_pred_steps=4, seq_length=32, sample_stride=8,
                      vision_encoder="small", small_encoder_channels=(8, 16), image_size=(32, 32), warmup_steps=1,
                      checkpoint_every=2, log_every=1, num_workers=0),
        # real learning in about a CPU-hour (measured: results/measured/reduced/README.md): the
        # repository's own small transformer (custom_transformer_vittiny.json: 192 wide, 12
        # layers, 3 heads), samples of three demos' length, a 64-px conv encoder (its cost grows
        # with the 800 frames of a batch: a probe step took ~6 s at 96 px, ~2 s at 64 px)
        "reduced": dict(dim=192, n_layers=12, n_heads=3, seq_length=200, sample_stride=16, batch_size=4, grad_accum_steps=1,
                        steps=1_600, warmup_steps=40, vision_encoder="small", image_size=(64, 64),
                        small_encoder_channels=(16, 32, 64, 128), checkpoint_every=200,
                        log_every=20, num_workers=1),
    }

    def __init__(self, config: ICRTConfig, data: DataInfo):
        super().__init__(config, data)
        c = config
        counting = torch.empty(0).device.type == "meta"  # params: the config as the paper runs it
        if c.vision_encoder != "small" and (c.vision_weights is not None or counting):
            self.encoder = ViTEncoder(c.vision_encoder, c.image_size)
            if not counting:
                self._load_vision_weights(Path(c.vision_weights))
        else:
            if c.vision_encoder != "small":
                log.warning("ICRT: no ViT weights given (ICRTConfig.vision_weights); training the small "
                            "encoder (small_encoder_channels) from scratch instead of a frozen %s",
                            c.vision_encoder)
            self.encoder = SmallConvEncoder(c.small_encoder_channels)
        width = self.encoder.out_dim
        self.vision_norm = nn.LayerNorm(width, eps=1e-6)
        self.proprio_encoder = Mlp(data.qpos_dim, width)
        self.pool = AttentionPool(width, c.dim, c.adapter_num_heads, c.adapter_mlp_ratio)
        self.action_encoder = Mlp(data.action_dim, c.dim)
        self.transformer = LlamaTransformer(c.dim, c.n_layers, c.n_heads, c.multiple_of, c.norm_eps, c.rope_theta)
        self.action_decoder = Mlp(c.dim, c.num_pred_steps * data.action_dim, c.decoder_hidden)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.reset()

    def _load_vision_weights(self, path: Path) -> None:
        import timm

        if not path.is_file():
            raise HarnessError(f"ICRT's ViT weights not found at {path} (ICRTConfig.vision_weights). Download "
                               "the CrossMAE ViT-B/16 checkpoint of Max-Fu/icrt (or timm's "
                               "vit_base_patch16_224.mae) to that path, or leave vision_weights unset to train "
                               "the small encoder instead.")
        try:
            state = timm.models.load_state_dict(str(path))  # weights only: no pickled objects run
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise HarnessError(f"ICRT's ViT weights at {path} cannot be read as a state dict ({exc}); save "
                               "the checkpoint's state dict alone (e.g. torch.save(ckpt['model'], ...)) and "
                               "point ICRTConfig.vision_weights at it") from exc
        missing, _ = self.encoder.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("head")]
        if missing:
            raise HarnessError(f"{path} is not a checkpoint of {self.config.vision_encoder}: it lacks "
                               f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self.record_pretrained(path, action_pretrained=False)  # CrossMAE/MAE: images only

    @classmethod
    def window_spec(cls, config: ICRTConfig) -> SequenceSpec:
        return SequenceSpec(sequence_length=config.seq_length, action_chunk_len=config.num_pred_steps,
                            start_stride=config.sample_stride, max_repeats=config.num_repeat_traj,
                            swap_adjacent=config.shuffle_repeat_traj)

    @classmethod
    def prompt_demos(cls, config: ICRTConfig) -> int:
        return config.prompt_demos_eval

    @classmethod
    def parameter_groups(cls, config: ICRTConfig, data: DataInfo) -> dict[str, int]:
        """Counted on the meta device, where the ViT is built even without weights (nothing is
        loaded there): the paper config with its frozen ViT-B/16."""
        with torch.device("meta"):
            model = cls(config, data)
        count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
        counts = {"Transformer": count(model.transformer),
                  "State tokens": count(model.vision_norm) + count(model.proprio_encoder) + count(model.pool),
                  "Action encoder": count(model.action_encoder), "Action decoder": count(model.action_decoder),
                  "Image encoder": count(model.encoder), "Total": count(model)}
        frozen = sum(p.numel() for p in model.encoder.parameters() if not p.requires_grad)
        if frozen:
            counts["Image encoder (frozen)"] = frozen
        return counts

    def optim_groups(self) -> list[dict]:
        # no weight decay on biases and 1-d parameters (norms) (`misc.add_weight_decay`, timm's rule)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return [{"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # --- tokens ---------------------------------------------------------------------------------
    def _images(self, frames: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] cropped by ``thetas`` (N, 2, 3), resized, standardised."""
        size = (frames.shape[0], 3, *self.config.image_size)
        grid = F.affine_grid(thetas.to(frames.dtype), size, align_corners=False)
        images = F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (images - self.pixel_mean) / self.pixel_std

    def _state_tokens(self, images: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        """(N, dim) state tokens of standardised images (N, 3, h, w) and joint states (N, Q)."""
        visual = self.vision_norm(self.encoder(images))
        proprio = self.proprio_encoder(qpos)
        return self.pool(torch.cat([visual, proprio.to(visual.dtype)[:, None]], dim=1))

    def _eval_thetas(self, n: int, device) -> torch.Tensor:
        theta = torch.zeros(n, 2, 3, device=device)
        theta[:, 0, 0] = theta[:, 1, 1] = EVAL_CROP
        return theta

    # --- training ---------------------------------------------------------------------------------
    def _loss_mask(self, starts: torch.Tensor) -> torch.Tensor:
        """(B, S): 1 on the steps after the prompt. The prompt ends at a demo boundary chosen
        uniformly among those in the sample but the first (upstream's ``create_prompt_mask``:
        Max-Fu/icrt@e0c9588:icrt/data/utils.py); a sample without a boundary has no loss."""
        B, S = starts.shape
        mask = torch.zeros(B, S, device=starts.device)
        for b in range(B):
            bounds = torch.nonzero(starts[b, 1:]).flatten() + 1
            if len(bounds) > 1:
                bounds = bounds[1:]
            if len(bounds):
                cut = int(bounds[torch.randint(len(bounds), (1,)).item()])
                mask[b, cut:] = 1.0
        return mask

    def _step_tokens(self, frames, qpos, actions, thetas) -> torch.Tensor:
        """Tokens (B, 2S, dim) of step sequences in the order s0, a0, s1, a1, ...: frames (B, S,
        3, H, W) in [0, 1] cropped by ``thetas`` (B*S, 2, 3), qpos (B, S, Q), the actions fed as
        tokens (B, S, A). Training and the rollout's prompt both build them here."""
        B, S = frames.shape[:2]
        state = self._state_tokens(self._images(frames.reshape(B * S, *frames.shape[2:]), thetas),
                                   qpos.reshape(B * S, -1)).view(B, S, -1)
        return torch.stack([state, self.action_encoder(actions).to(state.dtype)], dim=2).reshape(B, 2 * S, -1)

    def _predict(self, frames, qpos, actions, thetas) -> torch.Tensor:
        """Chunks (B, S, L, A) predicted at every state token (``_step_tokens``' arguments): a
        step's chunk sees its state and every earlier step, never its own action."""
        B, S = frames.shape[:2]
        out = self.transformer(self._step_tokens(frames, qpos, actions, thetas))[:, 0::2]  # state tokens' outputs
        return self.action_decoder(out).view(B, S, self.config.num_pred_steps, -1)

    def forward(self, batch):
        c = self.config
        frames, actions, starts = batch["frames"], batch["actions"], batch["episode_start"]
        B, S = frames.shape[:2]
        dev = frames.device
        # one crop, contrast and brightness per demo in the sample (segments split at demo starts)
        segment = (starts.long().cumsum(1) + torch.arange(B, device=dev)[:, None] * (S + 1)).flatten()
        n_seg = B * (S + 1)
        thetas = random_crop_thetas(n_seg, c.crop_scale, device=dev)[segment]
        contrast = torch.empty(n_seg, device=dev).uniform_(*c.contrast_range)[segment]
        brightness = torch.empty(n_seg, device=dev).uniform_(*c.brightness_range)[segment]
        frames = frames * contrast.view(B, S, 1, 1, 1) + brightness.view(B, S, 1, 1, 1)
        qpos = batch["qpos"] + c.proprio_noise * torch.randn_like(batch["qpos"])
        pred = self._predict(frames, qpos, actions[:, :, 0], thetas)
        # L1 over each sample's steps after its prompt, then the mean over samples (upstream
        # trains one sample per micro-batch: `--no-prompt-loss` divides by its target steps)
        mask = self._loss_mask(starts)
        per_step = (pred.float() - actions).abs().mean(dim=(-1, -2))
        loss = ((per_step * mask).sum(1) / (mask.sum(1) + 1e-6)).mean()
        return loss, {"l1": float(loss.detach()), "target_steps": float(mask.sum() / B)}

    # --- rollouts ---------------------------------------------------------------------------------
    def reset(self):
        self._caches = None
        self._pos = 0
        self._last_action: torch.Tensor | None = None
        self._chunks: deque = deque(maxlen=self.config.num_pred_steps)

    def _feed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._caches is None:
            self._caches = self.transformer.new_cache()
        out = self.transformer(tokens[None], self._pos, self._caches)[0]
        self._pos += tokens.shape[0]
        return out

    @torch.no_grad()
    def prompt(self, demos: list[dict]) -> None:
        """Each demo's (state, action) pairs, in order, into the KV-cache (its last observation
        has no action and is left out, as upstream's prompt has one action per observation)."""
        for demo in demos:
            frames, qpos, actions = demo["frames"][:-1], demo["qpos"][:-1], demo["actions"]
            thetas = self._eval_thetas(len(frames), frames.device)
            self._feed(self._step_tokens(frames[None], qpos[None], actions[None], thetas)[0])

    def executed(self, actions):
        """The next step's action token encodes the last of these (the probe's expert action)."""
        self._last_action = actions[-1]

    @torch.no_grad()
    def act(self, observation):
        frame, qpos = observation["frame"][None], observation["qpos"][None]
        state = self._state_tokens(self._images(frame, self._eval_thetas(1, frame.device)), qpos)
        tokens = state if self._last_action is None else torch.cat([self.action_encoder(self._last_action[None]), state])
        chunk = self.action_decoder(self._feed(tokens)[-1]).view(self.config.num_pred_steps, -1)
        # temporal ensembling (upstream's get_action_eval): every chunk still covering this step
        # gives its action for it, newer chunks weighing exp(k) more per step
        self._chunks.append(deque(chunk))
        current = torch.stack([q.popleft() for q in self._chunks])
        weights = torch.exp(self.config.ensemble_k * torch.arange(len(current), dtype=current.dtype,
                                                                     device=current.device))
        action = (current * (weights / weights.sum())[:, None]).sum(0)
        self._last_action = action
        return action[None]
