"""Frame features computed once per dataset, so that training never runs a frozen encoder.

A method whose frames pass through a frozen encoder before anything it trains (PAR: NOVA's
VAE) says so with ``Adapter.frame_features``; the workflow then encodes every frame of a
task's dataset once (``python -m harness features``, rule ``features``) and training reads
the cache: batches carry ``latents`` (B, T, ...) in place of ``frames``. NOVA itself trains
from precomputed features.

Layout (format ``par-harness-features``, version 1):

    attrs["format"], attrs["format_version"]
    attrs["meta"]   JSON: encoder name and key (the config fields that determine the
                    features), fingerprint, the dataset's path and its frames' SHA-256,
                    the pretrained files the encoder read, dtype, git sha, versions, time
    features        float16 [observation rows of the dataset, ...]  (Fletcher-32 chunks)

Row r holds the features of the dataset's observation row r. A feature file made by another
encoder config or from another dataset is refused by name, as is a damaged one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from harness.dataset import LazyH5
from harness.errors import HarnessError

FORMAT = "par-harness-features"
FORMAT_VERSION = 1


class FeatureError(HarnessError, RuntimeError):
    """A feature file that is missing, damaged, or made by another encoder or dataset."""


@dataclass(frozen=True)
class FrameFeatures:
    """A method's frozen frame encoder, as ``Adapter.frame_features`` describes it."""

    name: str
    """What the features are (e.g. ``par-vae-latents``)."""
    key: dict
    """The config fields that determine the features (JSON-able); equal keys share a cache."""
    encoder: Callable[[str], Callable]
    """Builds the encoder on a device: a function (B, 3, H, W) float in [0, 1] -> (B, ...)
    features, on that device."""
    pretrained: Callable[[], list] = field(default=list)
    """The pretrained weight files the encoder reads (``harness.runs.pretrained_record``)."""

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"name": self.name, **self.key}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def dataset_frames_sha(dataset) -> str:
    """The dataset's identity as features see it: the SHA-256 of its encoded frames."""
    return dataset.checksums["obs/frame_bytes"]


def encode_rows(encode, dataset, rows, device="cpu") -> np.ndarray:
    """float32 features of a dataset's observation rows: its decoded frames as (B, 3, H, W)
    floats in [0, 1] on ``device``, through ``encode``."""
    import torch

    frames = torch.as_tensor(np.stack([dataset.frame(int(r)) for r in rows]), device=device)
    with torch.no_grad():
        return encode(frames.permute(0, 3, 1, 2).float().div_(255.0)).float().cpu().numpy()


# frames encoded at once: a GPU gains from a batch; a CPU does not, and holds each frame's
# activations in host memory. The rehearsal measured NOVA's VAE at 512x512 on a CPU in batches
# of 16: 13.3 GB peak (about 0.75 GB a frame over the model), against the 8 GB its job asks
BATCH_SIZE = {"cpu": 2}
DEFAULT_BATCH_SIZE = 16


def write_features(spec: FrameFeatures, dataset_path: str | Path, out: str | Path, *,
                   batch_size: int | None = None, device: str = "cpu", progress: bool = True) -> Path:
    """Encode every frame of a dataset into ``out`` (written to a temporary name, then moved),
    ``batch_size`` frames at a time (default: ``BATCH_SIZE`` for the device's type)."""
    import h5py
    from tqdm import tqdm

    from harness.dataset import DemoDataset
    from harness.provenance import code_id, git_sha, package_versions, utc_now

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dataset = DemoDataset(dataset_path)
    encode = spec.encoder(device)
    rows = len(dataset.qpos)
    batch_size = batch_size or BATCH_SIZE.get(str(device).split(":")[0], DEFAULT_BATCH_SIZE)
    tmp = out.with_name(out.name + ".partial")
    try:
        with h5py.File(tmp, "w") as f:
            store = None
            bar = tqdm(total=rows, desc=f"features {spec.name}", unit="frame", disable=not progress)
            for lo in range(0, rows, batch_size):
                idx = range(lo, min(rows, lo + batch_size))
                feats = encode_rows(encode, dataset, idx, device)
                if store is None:
                    store = f.create_dataset("features", shape=(rows, *feats.shape[1:]), dtype=np.float16,
                                             chunks=(1, *feats.shape[1:]), fletcher32=True)
                store[lo:lo + len(idx)] = feats.astype(np.float16)
                bar.update(len(idx))
            bar.close()
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["meta"] = json.dumps({
                "name": spec.name, "key": spec.key, "fingerprint": spec.fingerprint,
                "dataset": str(dataset_path), "dataset_frames_sha256": dataset_frames_sha(dataset),
                "rows": rows, "pretrained_weights": spec.pretrained(), "dtype": "float16",
                "git_sha": git_sha(), "code_id": code_id(), "versions": package_versions(), "created_utc": utc_now()},
                default=str)
        tmp.replace(out)
    finally:
        dataset.close()
        tmp.unlink(missing_ok=True)
    return out


class FeatureCache(LazyH5):
    """Read access to a feature file, checked against the dataset and encoder it must match."""

    def __init__(self, path: str | Path, spec: FrameFeatures, dataset):
        import h5py

        self.path = Path(path)
        if not self.path.exists():
            raise FeatureError(f"feature file {self.path} does not exist; make it with "
                               f"`python -m harness features ... --out {self.path}` (the workflow's "
                               "`features` rule)")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                    raise FeatureError(f"{self.path} is not a {FORMAT} version {FORMAT_VERSION} file")
                self.meta = json.loads(f.attrs["meta"])
                self.shape = f["features"].shape
        except FeatureError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise FeatureError(f"{self.path} is damaged or truncated ({type(exc).__name__}: {exc}); "
                               "delete it and make it again") from exc
        problems = []
        if self.meta["fingerprint"] != spec.fingerprint:
            problems.append(f"its encoder config is {self.meta['key']}, the method's is {spec.key}")
        if self.meta["dataset_frames_sha256"] != dataset_frames_sha(dataset):
            problems.append(f"it was made from another dataset ({self.meta['dataset']}), not {dataset.path}")
        if self.shape[0] != len(dataset.qpos):
            problems.append(f"it has {self.shape[0]} rows, the dataset {len(dataset.qpos)} observations")
        if self.meta["pretrained_weights"] != json.loads(json.dumps(spec.pretrained(), default=str)):
            problems.append("the encoder's pretrained weights have changed since it was made")
        if problems:
            raise FeatureError(f"feature file {self.path} does not fit this training: " + "; ".join(problems)
                               + ". Delete it and make it again.")

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float32 features of the given observation rows (any order, repeats allowed)."""
        unique, inverse = np.unique(index, return_inverse=True)
        try:
            block = self._h5()["features"][unique]
        except (OSError, ValueError) as exc:
            raise FeatureError(f"{self.path}: rows {unique.tolist()} cannot be read ({exc}); the file is "
                               "damaged, delete it and make it again") from exc
        return block[inverse].astype(np.float32)
