"""The on-disk demonstration dataset: one integrity-checked HDF5 file per task and scale.

Layout (format ``par-harness-demos``, version 1); episode e has T_e actions and T_e + 1
observations (the last one after the final action):

    attrs["format"], attrs["format_version"]
    attrs["meta"]                  JSON: task, env_id, instruction, control_mode, camera,
                                   image_size [H, W], image_codec, seeds, failed_seeds,
                                   versions, git_sha, config_hash, scale, created_utc
    attrs["checksums"]             JSON: SHA-256 of every array below (``verify()``)
    episodes/seed      int64 [E]   env seed the episode was planned on
    episodes/num_steps int64 [E]   T_e
    obs/qpos           f32 [sum(T_e+1), 9]   robot joint positions
    obs/frame_offsets  i64 [sum(T_e+1) + 1]  byte ranges of the encoded frames
    obs/frame_bytes    u8  [total bytes]     JPEG/PNG-encoded RGB frames, back to back
    actions            f32 [sum(T_e), A]     the controller's actions (pd_joint_pos: 8)
    stats/<key>/<stat> f64 [dim]             normalisation statistics of actions and qpos

Every array is chunked with HDF5's Fletcher-32 checksum filter, so a flipped byte is caught
when it is read; a truncated file fails on open. Both surface as ``DatasetError`` naming the file.
Frames are stored encoded (1000 demos at 512x512 are ~2-3 GB as JPEG instead of ~80 GB raw);
small arrays are read into memory on open, frames are decoded on access.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.errors import HarnessError

FORMAT = "par-harness-demos"
FORMAT_VERSION = 1
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
_CHUNK_BYTES = 256 * 1024


class DatasetError(HarnessError, RuntimeError):
    """A dataset file that is missing, corrupt, truncated or made with other settings."""


def rebuild_hint(path) -> str:
    """How to make a dataset file again: its Snakemake target, or the command."""
    return (f"`snakemake --cores 1 {path} --config scale=<scale>` (the workflow's target), or "
            f"`python -m harness render-dataset --task <Task> --trajectories <plan>/trajectories.h5 --out {path}`")


class LazyH5:
    """``self.path``'s HDF5 file, opened read-only on first use (``_h5``) so that each
    DataLoader worker opens its own handle; picklable, closable."""

    _file = None

    def _h5(self):
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # picklable for DataLoader workers: drop the open handle
        state = dict(self.__dict__)
        state["_file"] = None
        return state


@dataclass
class Episode:
    """One demonstration in memory: T actions, T+1 observations."""

    seed: int
    frames: list[bytes]  # encoded images, T+1
    qpos: np.ndarray  # (T+1, Q) float32
    actions: np.ndarray  # (T, A) float32

    def __post_init__(self):
        if len(self.frames) != len(self.qpos) or len(self.qpos) != len(self.actions) + 1:
            raise ValueError(f"episode seed {self.seed}: need T+1 frames/qpos for T actions, got "
                             f"{len(self.frames)} frames, {len(self.qpos)} qpos, {len(self.actions)} actions")


def encode_image(image: np.ndarray, codec: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) image."""
    import cv2

    bgr = np.ascontiguousarray(image[..., ::-1])
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"unknown image codec {codec!r}; use jpeg or png")
    if not ok:
        raise RuntimeError(f"could not encode a {image.shape} image as {codec}")
    return buf.tobytes()


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """Decode bytes from ``encode_image`` back to RGB uint8 (H, W, 3)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("frame bytes are not a decodable image")
    return bgr[..., ::-1].copy()


def compute_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension statistics used for normalisation (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return {
        "mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
        "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0),
    }


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def write_dataset(path: str | Path, episodes: Iterable[Episode], meta: dict) -> Path:
    """Write episodes to ``path`` atomically (a temp file renamed at the end)."""
    import h5py

    path = Path(path)
    episodes = list(episodes)
    if not episodes:
        raise ValueError("no episodes to write")
    frames = [f for ep in episodes for f in ep.frames]
    lengths = np.fromiter((len(f) for f in frames), dtype=np.int64, count=len(frames))
    arrays = {
        "episodes/seed": np.array([ep.seed for ep in episodes], dtype=np.int64),
        "episodes/num_steps": np.array([len(ep.actions) for ep in episodes], dtype=np.int64),
        "obs/qpos": np.concatenate([ep.qpos for ep in episodes]).astype(np.float32),
        "obs/frame_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "obs/frame_bytes": np.frombuffer(b"".join(frames), dtype=np.uint8),
        "actions": np.concatenate([ep.actions for ep in episodes]).astype(np.float32),
    }
    for key in ("actions", "obs/qpos"):
        for stat, value in compute_stats(arrays[key]).items():
            arrays[f"stats/{key.replace('/', '_')}/{stat}"] = value
    meta = dict(meta, num_episodes=len(episodes), num_steps=int(arrays["actions"].shape[0]),
                seeds=[int(s) for s in arrays["episodes/seed"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["meta"] = json.dumps(meta)
        f.attrs["checksums"] = json.dumps({k: _sha256(v) for k, v in arrays.items()})
        for key, value in arrays.items():
            itemsize = max(1, value.dtype.itemsize * int(np.prod(value.shape[1:])))
            rows = max(1, min(len(value), _CHUNK_BYTES // itemsize))
            f.create_dataset(key, data=value, chunks=(rows,) + value.shape[1:], fletcher32=True)
    tmp.replace(path)
    return path


@dataclass
class DemoDataset(LazyH5):
    """Read access to one dataset file; small arrays live in memory, frames are decoded lazily.

    ``expect`` (e.g. ``{"control_mode": "pd_joint_pos", "image_size": [128, 128]}``) is
    compared against the file's metadata; a mismatch raises DatasetError naming the file.
    """

    path: Path
    expect: dict = field(default_factory=dict)

    def __post_init__(self):
        import h5py

        self.path = Path(self.path)
        if not self.path.exists():
            raise DatasetError(f"dataset {self.path} does not exist; build it with {rebuild_hint(self.path)}")
        try:
            with h5py.File(self.path, "r") as f:
                fmt = f.attrs.get("format")
                if fmt != FORMAT:
                    raise DatasetError(f"{self.path} is not a {FORMAT} file (format={fmt!r})")
                version = int(f.attrs.get("format_version", -1))
                if version != FORMAT_VERSION:
                    raise DatasetError(f"{self.path} has format version {version}; this harness reads "
                                       f"version {FORMAT_VERSION}; re-render the dataset")
                self.meta = json.loads(f.attrs["meta"])
                self.checksums = json.loads(f.attrs["checksums"])
                self.seeds = f["episodes/seed"][()]
                self.num_steps = f["episodes/num_steps"][()]
                self.qpos = f["obs/qpos"][()]
                self.frame_offsets = f["obs/frame_offsets"][()]
                self.actions = f["actions"][()]
                self.stats = {
                    key: {stat: f[f"stats/{key}/{stat}"][()] for stat in STAT_NAMES}
                    for key in ("actions", "obs_qpos")
                }
        except DatasetError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{self.path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                               f"delete it and build it again: {rebuild_hint(self.path)}") from exc
        self._check_consistency()
        self._check_expected()
        # episode e: observations [obs_start[e], obs_start[e] + T_e], actions [act_start[e], + T_e)
        self.obs_start = np.concatenate([[0], np.cumsum(self.num_steps + 1)[:-1]]).astype(np.int64)
        self.act_start = np.concatenate([[0], np.cumsum(self.num_steps)[:-1]]).astype(np.int64)
        self._file = None

    # --- checks -------------------------------------------------------------------------------
    def _check_consistency(self):
        n_obs = int((self.num_steps + 1).sum())
        n_act = int(self.num_steps.sum())
        problems = []
        if len(self.qpos) != n_obs:
            problems.append(f"obs/qpos has {len(self.qpos)} rows, episodes need {n_obs}")
        if len(self.frame_offsets) != n_obs + 1:
            problems.append(f"obs/frame_offsets has {len(self.frame_offsets)} rows, need {n_obs + 1}")
        if len(self.actions) != n_act:
            problems.append(f"actions has {len(self.actions)} rows, episodes need {n_act}")
        if problems:
            raise DatasetError(f"{self.path} is inconsistent: " + "; ".join(problems))

    def _check_expected(self):
        mismatches = []
        for key, want in self.expect.items():
            have = self.meta.get(key)
            if isinstance(want, tuple):
                want = list(want)
            if have != want:
                mismatches.append(f"{key}: file has {have!r}, config asks for {want!r}")
        if mismatches:
            raise DatasetError(f"{self.path} was made with other settings than the config asks for: "
                               + "; ".join(mismatches) + ". Re-render it for this config.")

    def verify(self) -> None:
        """Read every array in full and compare with the SHA-256 stored at write time, and check
        that each episode's frames have the metadata's image size (checksums vouch for the bytes
        written, not for a block of another render merged in)."""
        import h5py

        remedy = f"Delete it and build it again: {rebuild_hint(self.path)}"
        try:
            with h5py.File(self.path, "r") as f:
                for key, digest in self.checksums.items():
                    if _sha256(f[key][()]) != digest:
                        raise DatasetError(f"{self.path}: array {key} does not match its checksum. {remedy}")
        except DatasetError:
            raise
        except (OSError, KeyError) as exc:
            raise DatasetError(f"{self.path} is corrupt: {exc}. {remedy}") from exc
        want = list(self.meta.get("image_size") or [])
        for e in range(self.num_episodes):
            have = list(self.frame(int(self.obs_start[e])).shape[:2])
            if want and have != want:
                raise DatasetError(f"{self.path}: episode {e} (seed {int(self.seeds[e])}) has {have[0]}x{have[1]} "
                                   f"frames, its metadata says {want[0]}x{want[1]}: the file mixes renders of "
                                   f"different image sizes. {remedy}")

    # --- access -------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        return len(self.seeds)

    @property
    def instruction(self) -> str:
        return self.meta["instruction"]

    def _frames_dataset(self):
        return self._h5()["obs/frame_bytes"]

    def frame(self, global_obs_index: int) -> np.ndarray:
        """Decoded RGB frame (H, W, 3) uint8 of an observation row."""
        lo, hi = self.frame_offsets[global_obs_index], self.frame_offsets[global_obs_index + 1]
        try:
            data = self._frames_dataset()[lo:hi]
            return decode_image(data)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.path}: frame {global_obs_index} cannot be read "
                               f"({exc}); the file is corrupt, render it again") from exc

    def episodes(self):
        """Every episode as stored (frames still encoded), in order: what a merge re-writes."""
        frame_bytes = self._frames_dataset()[()]
        for e in range(self.num_episodes):
            obs = slice(self.obs_start[e], self.obs_start[e] + self.num_steps[e] + 1)
            offsets = self.frame_offsets[obs.start:obs.stop + 1]
            frames = [frame_bytes[lo:hi].tobytes() for lo, hi in zip(offsets[:-1], offsets[1:])]
            yield Episode(seed=int(self.seeds[e]), frames=frames, qpos=self.qpos[obs],
                          actions=self.actions[self.act_start[e]:self.act_start[e] + self.num_steps[e]])

    def episode_frames(self, episode: int) -> np.ndarray:
        start = self.obs_start[episode]
        return np.stack([self.frame(i) for i in range(start, start + self.num_steps[episode] + 1)])
