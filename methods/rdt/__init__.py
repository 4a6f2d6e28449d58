"""RDT: the Robotics Diffusion Transformer (Liu et al., 2024; thu-ml/RoboticsDiffusionTransformer),
the RDT-1B architecture written from its code, fine-tuned the way its ManiSkill recipe does.

A sample: the last two frames (each in the first of three camera slots, the other slots and any
missing or dropped image painted with the background colour) through a SigLIP vision tower, the
instruction through T5, the joint state in the 128-wide unified vector with its mask; the target
is the next 16 actions linearly stretched to 64, in the unified vector. The DiT denoises the 64
action tokens (DDPM, predicting the clean sample); a rollout samples them with DPM-Solver++ in 5
steps, executes every 4th (16 env steps) and plans again. Sources and deviations: docs/rdt.md.
"""

from __future__ import annotations

from collections import deque
import logging
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import Adapter, DataInfo
from harness.errors import HarnessError
from harness.windows import Normalizer, WindowSpec
from methods.rdt.config import RDTConfig
from methods.rdt.encoders import (background, build_vision_encoder, encode_instruction, preprocess,
                                  vision_spec)
from methods.rdt.model import RDT, condition_adaptor

log = logging.getLogger(__name__)

RUNNER_PARTS = ("model.", "lang_adaptor.", "img_adaptor.", "state_adaptor.")
"""The prefixes of upstream's ``RDTRunner`` state dict; this adapter's modules have the same names."""


def _drop_frozen_vision(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "vision.")]:
        del state_dict[key]


def _frozen_vision_is_not_missing(module, incompatible_keys):
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if not k.startswith("vision.")]


def stretch(actions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, N, A) -> (B, length, A) by linear interpolation at linspace(0, N-1, length), the first
    and last actions kept (`interpolate_action_sequence`: data/hdf5_maniskill_dataset.py)."""
    n = actions.shape[1]
    x = torch.linspace(0, n - 1, length, device=actions.device, dtype=actions.dtype)
    lo = x.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (x - lo.to(x.dtype))[None, :, None]
    return actions[:, lo] * (1 - w) + actions[:, hi] * w


class RDTAdapter(Adapter):
    name = "rdt"
    config_class = RDTConfig
    # the state and actions are min-max scaled to [-1, 1] (data/hdf5_maniskill_dataset.py)
    normalization = {"actions": "min_max", "qpos": "min_max"}
    scale_overrides = {
        "smoke": dict(hidden_size=32, depth=2, num_heads=2, action_chunk_size=8, real_chunk_size=4, execute_stride=2,
                      num_cameras=1, max_lang_cond_len=128, lang_token_dim=16, img_token_dim=16, small_encoder_layers=1,
                      small_encoder_heads=2, vision_image_size=32, vision_patch_size=16, num_train_timesteps=20,
                      num_inference_timesteps=2, steps=4, batch_size=2, checkpoint_every=2,
                      log_every=1, num_workers=0),
        # real learning in about a CPU-hour (measured: results/measured/reduced/README.md): the
        # recipe and the 64-from-16 chunk as they are, a small DiT and encoders, one camera slot
        # (the two empty ones only cost time here), 96-px frames in 12-px patches (64 tokens);
        # 128 language positions hold the byte-level stand-in's longest instruction (StackCube, 98)
        "reduced": dict(hidden_size=256, depth=6, num_heads=8, num_cameras=1, max_lang_cond_len=128,
                        lang_token_dim=128, img_token_dim=128, small_encoder_layers=2, small_encoder_heads=4,
                        vision_image_size=96, vision_patch_size=12, batch_size=32, steps=3_000,
                        checkpoint_every=500, log_every=25, num_workers=1),
    }

    def __init__(self, config: RDTConfig, data: DataInfo):
        super().__init__(config, data)
        c = config
        k = len(c.unified_indices)
        if data.action_dim != k or data.qpos_dim < k:
            raise HarnessError(f"RDT puts {k} action dims at unified_indices {c.unified_indices} and takes the "
                               f"state from the first {k} qpos dims; this data has {data.action_dim} action and "
                               f"{data.qpos_dim} qpos dims (set RDTConfig.unified_indices)")
        counting = torch.empty(0).device.type == "meta"  # params: the config as the paper runs it
        self.vision_spec = vision_spec(c)
        grid = (c.img_history_size, c.num_cameras, self.vision_spec.num_patches)
        self.model = RDT(c.state_dim, c.action_chunk_size, c.hidden_size, c.depth, c.num_heads,
                         c.max_lang_cond_len, grid)
        self.lang_adaptor = condition_adaptor(c.lang_adaptor, c.lang_token_dim, c.hidden_size)
        self.img_adaptor = condition_adaptor(c.img_adaptor, c.img_token_dim, c.hidden_size)
        self.state_adaptor = condition_adaptor(c.state_adaptor, 2 * c.state_dim, c.hidden_size)
        self.vision = None if counting else build_vision_encoder(c)
        if c.vision_encoder is not None and not counting:
            self.record_pretrained(c.vision_encoder, action_pretrained=False)
            # frozen: loaded from its folder every time, kept out of checkpoints and the EMA
            self.register_state_dict_post_hook(_drop_frozen_vision)
            self.register_load_state_dict_post_hook(_frozen_vision_is_not_missing)
        if c.vision_encoder is None and c.img_token_dim > 512 and not counting:
            log.warning("RDT: no vision encoder given (RDTConfig.vision_encoder); training a randomly initialised "
                        "%d-wide SigLIP stand-in instead of a frozen pretrained one", c.img_token_dim)
        # the instruction and the empty one (condition dropout), encoded once: buffers, so that a
        # run evaluates with exactly the features it trained with (and needs no text encoder run)
        lang, empty = ([torch.zeros(1, c.lang_token_dim)] * 2 if counting
                       else encode_instruction(c, [data.instruction, ""], features=not self.restoring()))
        if c.text_encoder is not None and not counting:
            self.record_pretrained(c.text_encoder, action_pretrained=False)
        if lang.shape[0] > c.max_lang_cond_len:
            raise HarnessError(f"the instruction has {lang.shape[0]} tokens, over RDTConfig.max_lang_cond_len "
                               f"({c.max_lang_cond_len})")
        self.register_buffer("lang_embed", lang)
        self.register_buffer("empty_lang_embed", empty)
        index = torch.tensor(c.unified_indices)
        self.register_buffer("unified_index", index, persistent=False)
        mask = torch.zeros(c.state_dim)
        mask[index] = 1.0
        self.register_buffer("state_elem_mask", mask, persistent=False)
        # the dataset mean and std in the units the batches arrive in (the harness normalises qpos as
        # `normalization` says)
        qpos_norm = Normalizer(data.stats["obs_qpos"], self.normalization["qpos"]) if "obs_qpos" in data.stats else None
        state_mean = np.zeros(k) if qpos_norm is None else qpos_norm.normalize(np.asarray(data.stats["obs_qpos"]["mean"]))[:k]
        state_std = np.zeros(k) if qpos_norm is None else (np.asarray(data.stats["obs_qpos"]["std"]) / qpos_norm.scale)[:k]
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32), persistent=False)
        self.train_scheduler, self.sample_scheduler = self._schedulers()
        if c.pretrained is not None and not counting:
            if self.restoring():  # a trained state dict replaces these weights next
                self.record_pretrained(c.pretrained, action_pretrained=True)
            else:
                self._load_pretrained(Path(c.pretrained))
        self.reset()

    def _schedulers(self):
        from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

        c = self.config
        with torch.device("cpu"):  # their tables stay on the CPU, also when the model is built on meta
            train = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                                  prediction_type=c.prediction_type, clip_sample=c.clip_sample)
            # DPM-Solver++ of order 2, diffusers' defaults, as upstream builds it (models/rdt_runner.py)
            sample = DPMSolverMultistepScheduler(num_train_timesteps=c.num_train_timesteps,
                                                 beta_schedule=c.beta_schedule, prediction_type=c.prediction_type)
        return train, sample

    def _load_pretrained(self, path: Path) -> None:
        """RDT's published weights: an ``RDTRunner`` state dict (.safetensors, or .pt/.bin, bare or
        under `module`), whose names this adapter's modules share."""
        if not path.is_file():
            raise HarnessError(f"RDT's published weights not found at {path} (RDTConfig.pretrained). Download "
                               "robotics-diffusion-transformer/rdt-1b (pytorch_model.bin) on a machine with network "
                               "and copy it to that path, or leave pretrained unset to train from scratch.")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                except pickle.UnpicklingError:  # DeepSpeed's file also pickles its optimiser's and client state
                    log.warning("RDT: %s holds more than tensors; loading it in full (a file you named)", path)
                    state = torch.load(path, map_location="cpu", weights_only=False)
                state = state.get("module", state)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
            raise HarnessError(f"RDT's weights at {path} cannot be read as a state dict ({exc})") from exc
        ours = {k: v for k, v in self.state_dict().items() if k.startswith(RUNNER_PARTS)}
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        wrong = sorted(k for k in set(ours) & set(state) if tuple(state[k].shape) != tuple(ours[k].shape))
        if missing or unexpected or wrong:
            def few(keys):
                return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
            detail = "; ".join(f"{what}: {few(keys)}" for what, keys in
                               (("missing", missing), ("unexpected", unexpected),
                                ("other shape", [f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}" for k in wrong]))
                               if keys)
            raise HarnessError(f"{path} is not an RDTRunner state dict of this config ({detail}); RDT-1B's weights "
                               "need the paper config (`--scale paper`) with lang_token_dim 4096 and img_token_dim "
                               "1152, and 3 cameras of 729 SigLIP tokens")
        self.load_state_dict(state, strict=False)
        self.record_pretrained(path, action_pretrained=True)  # RDT-1B was pretrained on robot actions

    @classmethod
    def window_spec(cls, config: RDTConfig) -> WindowSpec:
        return WindowSpec(obs_history=config.img_history_size, action_chunk_len=config.real_chunk_size)

    @classmethod
    def parameter_groups(cls, config: RDTConfig, data: DataInfo) -> dict[str, int]:
        """RDT's own count (DiT and adaptors), on the meta device; the encoders are frozen
        pretrained models in the paper config and not in it. A small vision stand-in, trained
        when no ``vision_encoder`` is given, is listed apart."""
        with torch.device("meta"):
            model = cls(config, data)
            stand_in = build_vision_encoder(config) if config.vision_encoder is None else None
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        dit = model.model
        counts = {"DiT blocks": count(dit.blocks),
                  "Step + frequency embedders": count(dit.t_embedder) + count(dit.freq_embedder),
                  "Final layer": count(dit.final_layer),
                  "Position embeddings": dit.x_pos_embed.numel() + dit.lang_cond_pos_embed.numel()
                  + dit.img_cond_pos_embed.numel(),
                  "DiT": count(dit),
                  "Adaptors": count(model.lang_adaptor) + count(model.img_adaptor) + count(model.state_adaptor)}
        counts["Total"] = counts["DiT"] + counts["Adaptors"]
        if stand_in is not None:
            counts["Vision stand-in (not RDT's)"] = count(stand_in)
        return counts

    # --- conditions ------------------------------------------------------------------------------
    def _unified(self, values: torch.Tensor) -> torch.Tensor:
        """(..., k) -> (..., 128) with the values at ``unified_indices``, zeros elsewhere."""
        out = values.new_zeros(values.shape[:-1] + (self.config.state_dim,))
        out[..., self.unified_index] = values
        return out

    def _image_tokens(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [0, 1] of the first camera, ``valid`` (B, T) -> image tokens
        (B, T * cameras * patches, D): slots ordered by history step, then camera."""
        c, spec = self.config, self.vision_spec
        b, t = frames.shape[:2]
        pixels = preprocess(frames.flatten(0, 1), spec)
        empty = preprocess(background(1, spec.image_size, spec, frames), spec)
        pixels = torch.where(valid.reshape(-1, 1, 1, 1), pixels, empty)
        slots = empty.expand(b * t, c.num_cameras, *pixels.shape[1:]).clone()
        slots[:, 0] = pixels
        with torch.set_grad_enabled(torch.is_grad_enabled() and c.vision_encoder is None):
            tokens = self.vision(pixel_values=slots.flatten(0, 1)).last_hidden_state
        return tokens.reshape(b, -1, tokens.shape[-1])

    def _lang(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample the instruction's tokens (``keep``) or the empty instruction's, padded to one
        length, and the mask of the real tokens."""
        length = max(self.lang_embed.shape[0], self.empty_lang_embed.shape[0])

        def padded(e):
            return F.pad(e, (0, 0, 0, length - e.shape[0])), torch.arange(length, device=e.device) < e.shape[0]

        (full, full_mask), (empty, empty_mask) = padded(self.lang_embed), padded(self.empty_lang_embed)
        k = keep.view(-1, 1, 1)
        return torch.where(k, full, empty), torch.where(keep.view(-1, 1), full_mask, empty_mask)

    # --- training -----------------------------------------------------------------------------------
    def _augment(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Half the valid images: colour jitter, noise (and maybe blur), or both, chosen uniformly
        (train/dataset.py; noise and blur: ours, the Gaussian ones of train/image_corrupt.py)."""
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as TF

        jitter = v2.ColorJitter(brightness=0.3, contrast=0.4, saturation=0.5, hue=0.03)
        out = frames.clone()
        flat, ok = out.view(-1, *frames.shape[2:]), valid.reshape(-1)
        for i in torch.nonzero(ok & (torch.rand(ok.shape, device=ok.device) > 0.5)).flatten().tolist():
            kind = int(torch.randint(3, ()))  # 0 corrupt only, 1 colour only, 2 both
            image = flat[i]
            if kind != 0:
                image = jitter(image)
            if kind != 1:
                image = image + torch.randn_like(image) * float(torch.rand(())) * 0.05
                if torch.rand(()) < 0.5:
                    sigma = max(float(torch.rand(())) * 3.0, 1e-3)
                    image = TF.gaussian_blur(image, kernel_size=2 * int(np.ceil(3 * sigma)) + 1, sigma=sigma)
            flat[i] = image.clamp(0, 1)
        return out

    def forward(self, batch):
        c = self.config
        frames, qpos = batch["frames"], batch["qpos"]
        b, dev = frames.shape[0], frames.device
        drop = lambda *shape: torch.rand(*shape, device=dev) < c.cond_mask_prob  # noqa: E731
        valid = ~batch["obs_is_pad"] & ~drop(b, frames.shape[1])
        if c.image_aug:
            frames = self._augment(frames, valid)
        img_tokens = self._image_tokens(frames, valid)
        lang, lang_mask = self._lang(~drop(b))
        k = len(c.unified_indices)
        state = qpos[:, -1, :k]
        if c.state_noise_snr is not None:
            state = state + torch.randn_like(state) * self.state_std / np.sqrt(10 ** (c.state_noise_snr / 10))
        state = torch.where(drop(b, 1), self.state_mean.expand(b, k), state)
        elem_mask = self.state_elem_mask.expand(b, -1) * (~drop(b, 1)).float()
        freq = torch.full((b,), float(c.control_frequency), device=dev) * (~drop(b)).float()
        target = self._unified(stretch(batch["actions"][:, 0], c.action_chunk_size))
        noise = torch.randn_like(target)
        t = torch.randint(0, c.num_train_timesteps, (b,), device=dev)
        noisy = self.train_scheduler.add_noise(target, noise, t)
        traj = torch.cat([self._unified(state)[:, None], noisy], dim=1)
        traj = torch.cat([traj, elem_mask[:, None].expand(-1, traj.shape[1], -1)], dim=2)
        pred = self.model(self.state_adaptor(traj), freq, t, self.lang_adaptor(lang), self.img_adaptor(img_tokens),
                          lang_mask=lang_mask)
        goal = target if c.prediction_type == "sample" else noise
        loss = F.mse_loss(pred, goal)
        return loss, {"mse": float(loss.detach())}

    # --- rollouts -----------------------------------------------------------------------------------
    def reset(self):
        self._frames: deque = deque(maxlen=self.config.img_history_size)

    def observe(self, observation):
        self._frames.append(observation["frame"])

    @torch.no_grad()
    def act(self, observation):
        """The first window is [empty, first frame], as upstream's evaluation starts it."""
        c = self.config
        self.observe(observation)
        frames = list(self._frames)
        valid = [False] * (c.img_history_size - len(frames)) + [True] * len(frames)
        frames = [frames[0]] * (c.img_history_size - len(frames)) + frames
        frames = torch.stack(frames)[None]
        dev = frames.device
        img_cond = self.img_adaptor(self._image_tokens(frames, torch.tensor([valid], device=dev)))
        lang, lang_mask = self._lang(torch.ones(1, dtype=torch.bool, device=dev))
        lang_cond = self.lang_adaptor(lang)
        k = len(c.unified_indices)
        mask = self.state_elem_mask[None, None]
        state = self.state_adaptor(torch.cat([self._unified(observation["qpos"][:k])[None, None], mask], dim=2))
        freq = torch.full((1,), float(c.control_frequency), device=dev)
        sample = torch.randn(1, c.action_chunk_size, c.state_dim, device=dev, dtype=state.dtype)
        mask = mask.expand(-1, c.action_chunk_size, -1)
        self.sample_scheduler.set_timesteps(c.num_inference_timesteps)
        for t in self.sample_scheduler.timesteps:
            traj = torch.cat([state, self.state_adaptor(torch.cat([sample, mask], dim=2))], dim=1)
            out = self.model(traj, freq, t.reshape(1).to(dev), lang_cond, img_cond, lang_mask=lang_mask)
            sample = self.sample_scheduler.step(out, t, sample).prev_sample
        actions = (sample * mask)[0, :, self.unified_index]
        return actions[::c.execute_stride]
