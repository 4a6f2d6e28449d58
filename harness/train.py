"""The training loop every method goes through.

AdamW with linear warmup then cosine (or constant) learning rate, gradient clipping,
optional EMA of the weights, bf16 autocast on GPUs that support it, a progress bar, a
per-step CSV log (and TensorBoard when installed), and checkpoints (safetensors weights +
optimizer/scheduler/RNG state + the resolved config and normalisation statistics).

Resuming after a kill continues from the last checkpoint: the data order is a function of
(seed, step) and every RNG is restored, so on a CPU the resumed run ends with the same
weights as an uninterrupted one (tests/test_train.py checks this).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from harness import checksums
from harness.adapter import Adapter, DataInfo, MethodConfig
from harness.dataset import DemoDataset
from harness.errors import HarnessError
from harness.provenance import CodeState, changed_files, git_sha, package_versions
from harness.runs import (FINAL_WEIGHTS, RUN_CONFIG, latest_checkpoint, normalizers, pick_device,
                          pretrained_record, read_last_good_checkpoint, save_state, save_weights, trains_in_bf16)
from harness.saturation import BoundedActivations, describe, saturated_units
from harness.windows import training_samples

log = logging.getLogger(__name__)


class TrainingError(HarnessError, RuntimeError):
    """Training cannot go on (non-finite loss, a run folder of another config, ...)."""


# --------------------------------------------------------------------------- batches
class BatchPreparer:
    """Turns collated numpy windows into the tensors an adapter's ``forward`` receives."""

    def __init__(self, data: DataInfo, normalization: dict[str, str], device: torch.device):
        self.device = device
        norms = normalizers(data.stats, normalization)
        self.actions, self.qpos = norms.actions, norms.qpos

    @classmethod
    def of_run(cls, run_config: dict, device: str = "cpu") -> "BatchPreparer":
        """The preparer a finished run trained with: its stored statistics and normalisation."""
        return cls(DataInfo.from_dict(run_config["data_info"]), run_config["normalization"],
                   torch.device(device))

    def __call__(self, raw: dict) -> dict:
        dev = self.device
        batch = {
            "qpos": self.qpos.normalize(torch.as_tensor(raw["qpos"], dtype=torch.float32, device=dev)),
            "actions": self.actions.normalize(torch.as_tensor(raw["actions"], dtype=torch.float32, device=dev)),
            "obs_is_pad": torch.as_tensor(raw["obs_is_pad"], device=dev),
            "action_is_pad": torch.as_tensor(raw["action_is_pad"], device=dev),
            "instruction": list(raw["instruction"]),
        }
        if "episode_start" in raw:  # SequenceSpec samples: where each demonstration begins
            batch["episode_start"] = torch.as_tensor(raw["episode_start"], device=dev)
        if "latents" in raw:  # cached frame features (harness.features), float32
            batch["latents"] = torch.as_tensor(raw["latents"], device=dev)
        if "frames" in raw:  # uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [0, 1], on the device
            frames = torch.as_tensor(raw["frames"], device=dev)
            batch["frames"] = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)
        return batch


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = values if isinstance(values[0], str) else np.stack(values)
    return out


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches for steps [start, stop): step s takes items s*B .. s*B+B-1 of an endless stream
    of per-epoch permutations seeded by (seed, epoch). Any step's batch is known without
    replaying earlier ones, which is what makes resuming exact."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        if n < 1:
            raise TrainingError("the dataset has no training samples (episodes shorter than the "
                                "method's window?)")
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self):
        cached_epoch, perm = -1, None
        for step in range(self.start, self.stop):
            batch = []
            for k in range(step * self.batch_size, (step + 1) * self.batch_size):
                epoch, pos = divmod(k, self.n)
                if epoch != cached_epoch:
                    cached_epoch, perm = epoch, self._perm(epoch)
                batch.append(int(perm[pos]))
            yield batch

    def __len__(self):
        return max(0, self.stop - self.start)


# --------------------------------------------------------------------------- schedule, EMA
def make_lr_scheduler(optimizer, cfg: MethodConfig, adapter_cls: type[Adapter] | None = None):
    """The adapter's own schedule (``Adapter.lr_multiplier``) if it has one; otherwise linear
    warmup from 0, then cosine to 0 at ``cfg.steps`` or constant: diffusers' schedules, as
    Diffusion Policy's training uses them. Always a LambdaLR, so its state_dict resumes it
    exactly."""
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    own = adapter_cls.lr_multiplier(cfg) if adapter_cls is not None else None
    if own is not None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, own)
    if cfg.lr_schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    raise TrainingError(f"unknown lr_schedule {cfg.lr_schedule!r}; use cosine or constant, or give "
                        "the adapter an lr_multiplier")


class EMA:
    """Weights averaged with Diffusion Policy's warmup: decay_t = min(max_decay, 1 - (1+t)^-0.75).

    Not diffusers' EMAModel: that averages parameters only, while evaluation loads a whole
    state_dict, so this one averages every floating-point tensor of it, buffers included
    (e.g. BatchNorm statistics), and copies the rest; its decay depends only on the step,
    which the checkpoint already holds."""

    def __init__(self, model: torch.nn.Module, max_decay: float):
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.max_decay, max(0.0, 1.0 - (1.0 + step) ** -0.75))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                self.shadow[key].copy_(value)


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- the loop
CODE_RECORD_KEYS = ("code_id", "method_id", "method_files")


def code_record(adapter_cls: type[Adapter]) -> dict:
    """What a run folder records of the code that trains it (harness.provenance): the code
    identity, the method identity and the method's files with their blob ids (so that a later
    evaluation can name the files that changed)."""
    state = CodeState()
    method = state.method_of_module(adapter_cls.__module__)
    return {"code_id": state.code().id, "method_id": method.id, "method_files": method.files}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(adapter_cls: type[Adapter], cfg: MethodConfig, dataset_path: str | Path,
          run_dir: str | Path, *, seed: int = 0, device: str = "auto", run_meta: dict | None = None,
          progress: bool = True, stop_after: int | None = None, features: str | Path | None = None,
          val_dataset: str | Path | None = None) -> Path:
    """Train ``adapter_cls`` with ``cfg`` on a dataset; resumable. Returns the run folder.

    ``stop_after``: leave after this many steps as if killed (tests, time-boxed jobs); the next
    call resumes from the last checkpoint. ``features``: the dataset's frame features
    (``harness.features``) for a method with ``frame_features``; batches then carry them as
    ``latents`` and no frame is decoded. ``val_dataset``: held-out demos of the task
    (harness.probe); the probe's chunk error on them is logged at every checkpoint (``val_rmse``).
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    dataset = DemoDataset(dataset_path)
    data = DataInfo(action_dim=int(dataset.actions.shape[1]), qpos_dim=int(dataset.qpos.shape[1]),
                    image_size=tuple(dataset.meta["image_size"]), instruction=dataset.instruction,
                    stats=dataset.stats)
    run_config = {
        "method": adapter_cls.name,
        "method_config": cfg.to_dict(),
        "seed": seed,
        "dataset": str(dataset_path),
        "dataset_meta": {k: dataset.meta.get(k) for k in
                         ("task", "env_id", "control_mode", "camera", "image_size", "scale",
                          "config_hash", "git_sha", "code_id", "num_episodes")},
        "data_info": data.to_dict(),
        "normalization": dict(adapter_cls.normalization),
        "features": None if features is None else str(features),
        "val_dataset": None if val_dataset is None else str(val_dataset),
        "git_sha": git_sha(),
        **code_record(adapter_cls),
        "versions": package_versions(),
        **(run_meta or {}),
    }
    config_path = run_dir / RUN_CONFIG
    resumed_code = None  # the code identities this call would train with, when they differ
    if config_path.exists():
        previous = json.loads(config_path.read_text())
        same = {k: previous.get(k) for k in ("method", "method_config", "seed", "dataset")}
        # a field added to the method since the run started counts as its default
        defaults = json.loads(json.dumps(adapter_cls.config_class().to_dict(), default=str))
        same["method_config"] = {**{k: v for k, v in defaults.items() if k not in (same["method_config"] or {})},
                                 **(same["method_config"] or {})}
        # the last code that trained it (a run resumed under other code records "<first>+<next>")
        if previous.get("method_id", run_config["method_id"]).split("+")[-1] != run_config["method_id"]:
            resumed_code = {k: run_config[k] for k in CODE_RECORD_KEYS}
        for key in ("git_sha", *CODE_RECORD_KEYS):  # the code that started it
            if key in previous:
                run_config[key] = previous[key]
        # compare as JSON: tuples come back as lists
        if same != json.loads(json.dumps({k: run_config[k] for k in same}, default=str)):
            raise TrainingError(f"{run_dir} holds a run with another config ({config_path}); "
                                "use a new run folder or delete this one")
    # run folders started before weights carried a SHA-256 record load unchecked, with a warning
    run_config["checksums"] = previous.get("checksums", "none") if config_path.exists() else "sha256"
    if config_path.exists():  # known once the model is built; kept if it never is (already trained)
        run_config["pretrained_weights"] = previous.get("pretrained_weights", [])
    required = run_config["checksums"] == "sha256"
    config_path.write_text(json.dumps(run_config, indent=2, default=str))
    final = run_dir / FINAL_WEIGHTS
    if final.exists():  # written only once every step ran
        try:
            checksums.verify(final, required=required)
            log.info("%s already trained for %d steps", run_dir, cfg.steps)
            return run_dir
        except checksums.IntegrityError as exc:
            log.warning("%s; writing it again from the last good checkpoint", exc)
    if resumed_code is not None:  # steps remain, and other method code would train them
        log.warning("%s was started by method code %s and is resumed by %s (changed: %s); its weights "
                    "are marked as trained by both", run_dir, run_config["method_id"], resumed_code["method_id"],
                    ", ".join(changed_files(run_config.get("method_files", {}), resumed_code["method_files"]))
                    or "files not recorded")
        run_config["method_id"] = f"{run_config['method_id']}+{resumed_code['method_id']}"
        run_config["code_id"] = f"{run_config['code_id']}+{resumed_code['code_id']}"
        config_path.write_text(json.dumps(run_config, indent=2, default=str))

    seed_everything(seed)
    model = adapter_cls(cfg, data).to(dev)
    record = pretrained_record(model.pretrained_files)
    if run_config.get("pretrained_weights") and record != run_config["pretrained_weights"]:
        raise TrainingError(f"the pretrained weights of {run_dir} have changed since it started "
                            f"(recorded in {config_path}: {run_config['pretrained_weights']}; now: "
                            f"{record}); restore them or use a new run folder")
    run_config["pretrained_weights"] = record
    config_path.write_text(json.dumps(run_config, indent=2, default=str))
    if not adapter_cls.trainable:  # nothing to learn (the chance level): its weights are its data
        dataset.close()
        save_weights(model.state_dict(), run_dir / FINAL_WEIGHTS)
        log.info("%s has nothing to train; its weights as built -> %s", adapter_cls.name,
                 run_dir / FINAL_WEIGHTS)
        return run_dir
    optimizer = make_optimizer(model, cfg)
    scheduler = make_lr_scheduler(optimizer, cfg, adapter_cls)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    start = 0
    newest = latest_checkpoint(run_dir)
    found = read_last_good_checkpoint(run_dir, with_ema=ema is not None, required=required)
    if newest is not None and found is None:
        log.warning("no checkpoint of %s is readable; training starts again from step 0", run_dir)
    if found is not None:
        ckpt, (weights, ema_weights, state) = found
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.shadow = {k: v.to(dev) for k, v in ema_weights.items()}
        _set_rng_state(state["rng"])
        start = ckpt.step
        if ckpt.step != newest.step:
            log.warning("resuming %s from step %d, the last good checkpoint (step %d is damaged)",
                        run_dir, start, newest.step)
        else:
            log.info("resuming %s from step %d", run_dir, start)

    validator = _Validator.open(val_dataset, dataset, run_config, data, adapter_cls, cfg, dev,
                                log_path=run_dir / "train_log.csv")
    cache = _feature_cache(adapter_cls, cfg, features, dataset)
    windows = training_samples(dataset, adapter_cls.window_spec(cfg), cache)
    stop = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    loader = torch.utils.data.DataLoader(
        windows, batch_sampler=StepBatchSampler(len(windows), cfg.batch_size, seed, start, stop),
        num_workers=cfg.num_workers, collate_fn=collate,
        # a private generator: creating the iterator must not consume the global RNG
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False, pin_memory=dev.type == "cuda")
    prepare = BatchPreparer(data, adapter_cls.normalization, dev)
    use_bf16 = trains_in_bf16(dev)

    log_path = run_dir / "train_log.csv"
    _truncate_log(log_path, start)
    tb = _tensorboard(run_dir / "tensorboard")
    model.train()
    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {adapter_cls.name}", unit="step",
               disable=not progress)
    t_last, last_finite = time.time(), None
    log_file = open(log_path, "a", newline="")
    writer = None
    try:
        for raw in loader:
            # the step that ends at a checkpoint also records every tanh/sigmoid pre-activation
            # of its forward pass: a saturated unit is reported (harness.saturation)
            at_checkpoint = (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps
            optimizer.zero_grad(set_to_none=True)
            # a checkpoint step's bounded units are recorded on its first micro-batch
            first = (lambda part: BoundedActivations(_windows(part))) if at_checkpoint else None
            loss, logs, bounded = accumulate_gradients(
                model, micro_batches(raw, cfg.grad_accum_steps), prepare, dev.type, use_bf16, first)
            if not np.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss} at step {step} of {run_dir} (last finite loss: "
                    f"{last_finite}); training stopped. The last checkpoint is kept; try a lower lr "
                    f"(now {cfg.lr}) or check the dataset statistics.")
            last_finite = loss
            grad_norm = optimizer_step(model, optimizer, cfg)
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
            if step % cfg.log_every == 0 or step == stop or checkpoint:
                row = {"step": step, "loss": last_finite, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "seconds": round(time.time() - t_last, 3),
                       **{k: float(v) for k, v in logs.items()},
                       "saturated_units": _saturated(bounded, step, run_dir) if checkpoint else ""}
                if validator is not None:
                    row["val_rmse"], row["val_dead_dims"] = validator(model, ema, step) if checkpoint else ("", "")
                t_last = time.time()
                if writer is None:
                    # a resumed log keeps the columns it was started with (other code may log others)
                    header = log_path.read_text().split("\n", 1)[0].split(",") if log_file.tell() else list(row)
                    if "saturated_units" not in header:
                        log.warning("%s was started by code that did not log saturated_units; this resumed "
                                    "run keeps its columns, so saturated units are only warned about", log_path)
                    writer = csv.DictWriter(log_file, fieldnames=header, extrasaction="ignore")
                    if log_file.tell() == 0:
                        writer.writeheader()
                writer.writerow(row)
                log_file.flush()
                if tb is not None:
                    for k, v in row.items():
                        if k not in ("step", "val_dead_dims", "saturated_units") and v != "":
                            tb.add_scalar(k, v, step)
                bar.set_postfix(loss=f"{last_finite:.4f}")
            bar.update(1)
            if checkpoint:
                _save_checkpoint(run_dir, step, model, ema, optimizer, scheduler)
    finally:
        bar.close()
        log_file.close()
        if tb is not None:
            tb.close()
        dataset.close()
        if cache is not None:
            cache.close()
    if step >= cfg.steps:
        final = ema.shadow if ema is not None else model.state_dict()
        save_weights(final, run_dir / FINAL_WEIGHTS)
        log.info("trained %s for %d steps -> %s", adapter_cls.name, step, run_dir / FINAL_WEIGHTS)
    return run_dir


class _Validator:
    """The probe's chunk error (harness.probe.validation_errors) of the model being trained, on
    held-out demos: the EMA weights if the run keeps them (what evaluation uses), else the
    model's. It runs on its own random state, so training continues as it would without it."""

    def __init__(self, demos, norms, stats, instruction, device, prompt):
        self.demos, self.norms, self.stats, self.instruction = demos, norms, stats, instruction
        self.device, self.prompt = device, prompt

    @classmethod
    def open(cls, path, dataset, run_config, data, adapter_cls, cfg, device, log_path: Path):
        if path is None:
            return None
        from harness.evaluate import Prompter
        from harness.probe import check_validation_set, load_demos

        header = log_path.read_text().split("\n", 1)[0] if log_path.exists() else ""
        if header and "val_rmse" not in header.split(","):
            log.warning("%s was started without a validation dataset; its log gets no val_rmse column",
                        log_path.parent)
            return None
        val = DemoDataset(path)
        check_validation_set(val, run_config["dataset_meta"], dataset.seeds)
        demos = load_demos(val)
        val.close()
        k = adapter_cls.prompt_demos(cfg)
        prompt = Prompter(run_config, k, device)(0) if k else None
        return cls(demos, normalizers(data.stats, adapter_cls.normalization), data.stats, data.instruction,
                   device, prompt)

    def __call__(self, model, ema, step: int) -> tuple[float, str]:
        """(chunk error, the dead output dimensions as "1 4" or ""), warning about the latter."""
        from harness.probe import DEAD_SPREAD, dead_dimensions, validation_errors

        policy = model
        if ema is not None:
            policy = copy.deepcopy(model)
            policy.load_state_dict(ema.shadow)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        np_state, py_state = np.random.get_state(), random.getstate()
        policy.eval()
        try:
            with torch.random.fork_rng(devices=cuda):
                result = validation_errors(policy, self.demos, self.norms, self.stats, self.instruction,
                                           self.device, self.prompt)
        finally:
            model.train()
            np.random.set_state(np_state)
            random.setstate(py_state)
        dead = dead_dimensions(result)
        if dead:
            spread = result["output_spread"]["per_dim"]
            log.warning("step %d: action dimension(s) %s are dead on the held-out demos: their predictions vary by "
                        "%s of the expert's (below %g). A bounded head saturated, or the output learned a constant; "
                        "see docs/probe.md", step, ", ".join(str(d) for d in dead),
                        ", ".join(f"{spread[d]:.3f}" for d in dead), DEAD_SPREAD)
        return round(result["rmse"]["overall"], 6), " ".join(str(d) for d in dead)


def _feature_cache(adapter_cls, cfg, path, dataset):
    if path is None:
        return None
    from harness.features import FeatureCache

    spec = adapter_cls.frame_features(cfg)
    if spec is None:
        raise TrainingError(f"{adapter_cls.name} at this config encodes no frame features; train it "
                            f"without a feature file (got {path})")
    return FeatureCache(path, spec, dataset)


def _saturated(bounded: BoundedActivations, step: int, run_dir: Path) -> str:
    """The saturated units of this step's forward pass ("tanh#0[1] tanh#0[3]" or ""), warned about."""
    units = saturated_units(bounded.sites)
    if units:
        log.warning("step %d of %s: saturated unit(s) on this batch's training windows: %s. Each sits in "
                    "its activation's flat tail on nearly every window, so it passes under 1%% of its "
                    "gradient and its output is stuck at one extreme; see docs/bc_t.md (a warmup, a "
                    "lower lr, or targets kept off the bounds)", step, run_dir, describe(bounded.sites, units))
    return " ".join(units)


def _windows(batch: dict) -> int | None:
    """The number of windows in a prepared batch (the first dimension of its actions)."""
    actions = batch.get("actions") if isinstance(batch, dict) else None
    return int(actions.shape[0]) if isinstance(actions, torch.Tensor) and actions.dim() else None


def make_optimizer(model: Adapter, cfg: MethodConfig) -> torch.optim.Optimizer:
    """AdamW over the adapter's parameter groups at the preset's lr and betas."""
    return torch.optim.AdamW(model.optim_groups(), lr=cfg.lr, betas=tuple(cfg.betas))


def micro_batches(batch: dict, k: int) -> list[dict]:
    """``batch`` (every value batch-first: arrays, tensors, or the list of instructions) cut into
    ``k`` equal consecutive parts (``MethodConfig.grad_accum_steps``). Training cuts the collated
    batch before it goes to the device, so only one part's frames are there at a time."""
    if k == 1:
        return [batch]
    size = len(batch["actions"])
    if size % k:
        raise ValueError(f"batch_size {size} does not divide into grad_accum_steps {k} equal micro-batches")
    step = size // k
    return [{key: value[i * step:(i + 1) * step] for key, value in batch.items()} for i in range(k)]


def accumulate_gradients(model: Adapter, parts: list[dict], prepare, device_type: str, bf16: bool,
                         first_context=None) -> tuple[float, dict, object]:
    """The backward passes of one optimizer step, a micro-batch at a time (``micro_batches``):
    each part is moved to the device by ``prepare`` just before its forward pass (under bf16
    autocast when ``bf16``) and its loss / len(parts) is backpropagated, so the gradients are the
    whole batch's mean. ``first_context(part)``, when given, is the context the first part's
    forward pass runs in (training records saturated units there); it is returned, else None.
    Returns the mean loss and mean logs over the parts. Training and ``benchmarks/gpu_check.py``
    both step through this."""
    losses, logs_sum, context = [], {}, None
    for i, host_part in enumerate(parts):
        part = prepare(host_part)
        if i == 0 and first_context is not None:
            context = first_context(part)
        with (torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16),
              context if i == 0 and context is not None else contextlib.nullcontext()):
            loss, logs = model(part)
        (loss / len(parts)).backward()
        losses.append(float(loss.detach()))
        for k, v in logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
    return sum(losses) / len(parts), {k: v / len(parts) for k, v in logs_sum.items()}, context


def optimizer_step(model: Adapter, optimizer: torch.optim.Optimizer, cfg: MethodConfig) -> torch.Tensor:
    """The update once every micro-batch's backward pass is done: the gradient norm clipped to
    ``cfg.grad_clip_norm`` (when set), the optimizer's step. Returns the norm before clipping.
    ``benchmarks/gpu_check.py`` times exactly this, with training's micro-batches."""
    grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
                 if cfg.grad_clip_norm else _grad_norm(model))
    optimizer.step()
    return grad_norm


def _grad_norm(model) -> torch.Tensor:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)


def _save_checkpoint(run_dir, step, model, ema, optimizer, scheduler) -> None:
    folder = run_dir / "checkpoints" / f"step_{step:09d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_weights(model.state_dict(), folder / "model.safetensors")
    if ema is not None:
        save_weights(ema.shadow, folder / "ema.safetensors")
    save_state({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state()}, folder / "train_state.pt")
    (folder / "done").write_text(str(step))  # a checkpoint counts only once complete
    # keep the two newest complete checkpoints
    for old in sorted((run_dir / "checkpoints").glob("step_*"))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    rows = list(csv.reader(path.open()))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))
