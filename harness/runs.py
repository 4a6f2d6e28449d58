"""A run folder, as training writes it and evaluation reads it.

``run_config.json`` (method, its resolved config, dataset, normalisation statistics,
provenance), ``model.safetensors`` (the final weights, EMA if the method uses it) and
``checkpoints/step_*/`` (weights, EMA, optimizer/scheduler/RNG state; complete once ``done``
is written). Every weights and state file has its SHA-256 recorded beside it
(harness/checksums.py) and checked before it is read.

Evaluation and figures load finished runs from here without importing the training loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from harness import checksums
from harness.errors import HarnessError
from harness.windows import Normalizer

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
FINAL_WEIGHTS = "model.safetensors"


class RunError(HarnessError):
    """A run folder that is missing, unfinished, or used for another task than it trained on."""


def read_run_config(run_dir: str | Path) -> dict:
    """A finished run's ``run_config.json``; a folder without one is refused with how to train it."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run (no {RUN_CONFIG}). Train it: `python -m harness train "
                       f"--method <method> --task <Task> --dataset <Task>.h5 --out {run_dir}`, or in the workflow "
                       f"`snakemake --cores 1 {Path(run_dir) / FINAL_WEIGHTS} --config scale=<scale>`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is damaged ({exc}); delete the run folder and train it again "
                       f"(`python -m harness train ... --out {run_dir}`)") from None


def check_run_task(run_dir: str | Path, run_config: dict, task: str, option: str = "--task") -> None:
    """Refuse a task other than the one the run trained on (``run_config.json``: the task, or its
    dataset's): its rows or figures would carry one task's name and another's rollouts."""
    trained = run_config.get("task") or (run_config.get("dataset_meta") or {}).get("task")
    if trained and task != trained:
        raise RunError(f"{option} {task}: {run_dir} was trained on {trained} (its {RUN_CONFIG}); a run is evaluated "
                       f"on its own task only (no transfer cells). Pass {option} {trained}, or use a run trained on "
                       f"{task} (the workflow's outputs/<scale>/runs/{run_config.get('name') or run_config['method']}/"
                       f"{task})")


def pick_device(name: str = "auto"):
    """``auto``: CUDA when present, else the CPU; any other name as torch spells it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def trains_in_bf16(device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast: on a GPU that supports it. A CPU
    trains in float32 (bf16 autocast on a CPU without native bf16, AVX2 only, ran ~80x slower
    than float32 on this project's machines: docs/rehearsal.md)."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class RunNormalizers:
    """How a run normalised qpos and actions: its stored statistics, its method's modes."""

    qpos: Normalizer
    actions: Normalizer


def normalizers(stats: dict, modes: dict[str, str]) -> RunNormalizers:
    """Normalisers from dataset statistics (``obs_qpos``/``actions``) and a method's modes."""
    return RunNormalizers(qpos=Normalizer(stats["obs_qpos"], modes.get("qpos", "mean_std")),
                          actions=Normalizer(stats["actions"], modes.get("actions", "mean_std")))


def run_normalizers(run_config: dict) -> RunNormalizers:
    """The normalisers a finished run trained with, rebuilt from its run_config.json."""
    from harness.adapter import DataInfo

    return normalizers(DataInfo.from_dict(run_config["data_info"]).stats, run_config["normalization"])


# --------------------------------------------------------------------------- weights and states
def pretrained_record(files) -> list[dict]:
    """What a run folder keeps of the pretrained files its model loaded (a list of
    ``adapter.PretrainedFile``): path, SHA-256 (hashed once, here) and whether they saw actions."""
    return [{"path": f.path, "sha256": checksums.file_sha256(f.path), "action_pretrained": f.action_pretrained}
            for f in files]


def pretrained_columns(run_config: dict) -> dict[str, str]:
    """A rollout row's ``pretrained_weights`` (JSON list of {path, sha256}, empty when the model
    was trained from scratch) and ``action_pretrained`` (``true`` only when some of those
    weights saw robot actions). Run folders from before this record loaded no pretrained
    weights: until then the only method that could (PAR's paper config) had never been trained."""
    files = run_config.get("pretrained_weights", [])
    listed = json.dumps([{"path": f["path"], "sha256": f["sha256"]} for f in files]) if files else ""
    return {"pretrained_weights": listed,
            "action_pretrained": "true" if any(f["action_pretrained"] for f in files) else "false"}


def check_pretrained(run_config: dict, run_dir: str | Path) -> None:
    """The pretrained files a run recorded still hash as recorded. Methods such as PAR read
    their frozen parts from them again when rolled out, and the rows name these hashes, so a
    changed file is refused by name; a missing one is left to the method (which needs it or not)."""
    for f in run_config.get("pretrained_weights", []):
        path = Path(f["path"])
        if not path.exists():
            continue
        now = checksums.file_sha256(path)  # multi-GB files (Phi-2, NOVA): hash each once
        if now != f["sha256"]:
            raise checksums.IntegrityError(
                f"{path} has changed since {run_dir} was trained with it (SHA-256 {f['sha256']} "
                f"then, {now} now). Put the original file back, or train a new run folder with the new one.")


def save_weights(state_dict: dict, path: Path) -> None:
    """Write safetensors weights and record their SHA-256 beside them (``<path>.sha256``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    checksums.write_recorded(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(path: Path, remedy: str = "", required: bool = True) -> dict:
    """Weights from a safetensors file, after checking its recorded SHA-256; a damaged,
    unrecorded (when ``required``) or unreadable file raises IntegrityError naming it
    (``remedy``: what to do about it)."""
    from safetensors.torch import load_file

    path = Path(path)
    checksums.verify(path, remedy, required)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own errors name no file
        raise _unreadable_weights(path, exc, remedy) from None


def _unreadable_weights(path: Path, exc: Exception, remedy: str) -> checksums.IntegrityError:
    return checksums.IntegrityError(f"{path} cannot be read as safetensors weights "
                                    f"({type(exc).__name__}: {exc})" + (f". {remedy}" if remedy else ""))


def save_state(state: dict, path: Path) -> None:
    """Write a torch-pickled training state and record its SHA-256 beside it."""
    import torch

    checksums.write_recorded(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path, required: bool = True) -> dict:
    """A training state written by ``save_state``, after checking its recorded SHA-256."""
    import torch

    checksums.verify(path, required=required)
    try:
        return torch.load(path, weights_only=False)
    except Exception as exc:
        raise checksums.IntegrityError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None


@dataclass
class Checkpoint:
    step: int
    folder: Path

    def read(self, with_ema: bool, required: bool = True) -> tuple[dict, dict | None, dict]:
        """(model weights, EMA weights or None, training state), every file checked first;
        ``required``: files without a recorded SHA-256 are refused."""
        ema = (load_weights(self.folder / "ema.safetensors", required=required) if with_ema else None)
        return (load_weights(self.folder / "model.safetensors", required=required), ema,
                load_state(self.folder / "train_state.pt", required))


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's checkpoints that were written to the end, newest first."""
    folders = sorted((run_dir / "checkpoints").glob("step_*/done"), reverse=True)
    return [Checkpoint(int(f.parent.name.split("_")[1]), f.parent) for f in folders]


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = complete_checkpoints(run_dir)
    return found[0] if found else None


def read_last_good_checkpoint(run_dir: Path, with_ema: bool,
                              required: bool = True) -> tuple[Checkpoint, tuple] | None:
    """The newest checkpoint whose files are all there, match their checksums and load, with
    its contents; a damaged one is skipped with a warning that names it (and kept on disk)."""
    for ckpt in complete_checkpoints(run_dir):
        try:
            return ckpt, ckpt.read(with_ema, required)
        except (checksums.IntegrityError, FileNotFoundError) as exc:
            log.warning("checkpoint %s is damaged and is skipped: %s", ckpt.folder, exc)
    return None


# --------------------------------------------------------------------------- finished runs
def _rebuild_remedy(run_dir) -> str:
    return (f"Delete it and run `python -m harness train` for this run again (--out {run_dir}): "
            "it rebuilds the final weights from the last good checkpoint")


def _checksums_required(run_config: dict) -> bool:
    return run_config.get("checksums", "none") == "sha256"


def check_run_weights(run_dir: str | Path, weights: str = FINAL_WEIGHTS) -> None:
    """Fail early, naming the file, when a finished run's weights are missing or damaged."""
    from safetensors import safe_open

    path = Path(run_dir) / weights
    remedy = _rebuild_remedy(run_dir)
    run_config = read_run_config(run_dir)
    checksums.verify(path, remedy, _checksums_required(run_config))
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:
        raise _unreadable_weights(path, exc, remedy) from None


def run_adapter(run_config: dict):
    """(adapter class, run config as that class reads it) of a run folder's config."""
    from harness.registry import get_method

    adapter_cls = get_method(run_config["method"]).load()
    upgraded = adapter_cls.upgrade_run_config(run_config)
    if upgraded["method"] != run_config["method"]:  # the method has an adapter of its own now
        adapter_cls = get_method(upgraded["method"]).load()
    return adapter_cls, upgraded


def load_trained(run_dir: str | Path, device: str = "cpu", weights: str = FINAL_WEIGHTS):
    """(adapter in eval mode, run config) of a finished run."""
    from harness.adapter import DataInfo, restoring_weights

    run_dir = Path(run_dir)
    adapter_cls, run_config = run_adapter(read_run_config(run_dir))
    cfg = adapter_cls.config_class.from_dict(run_config["method_config"])
    with restoring_weights():  # the state dict below replaces whatever the constructor computes
        model = adapter_cls(cfg, DataInfo.from_dict(run_config["data_info"]))
    model.load_state_dict(load_weights(run_dir / weights, _rebuild_remedy(run_dir),
                                       _checksums_required(run_config)))
    return model.to(pick_device(device)).eval(), run_config
