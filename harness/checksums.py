"""SHA-256 of the files a training run writes (weights, training state), recorded beside each
file when it is written and checked before it is read.

Datasets carry per-array checksums (harness/dataset.py); this gives run folders the same
integrity. A truncated or bit-flipped file is refused with an error that names it, instead
of a raw safetensors traceback or, worse, weights that load silently with a flipped byte.
The record is ``<file>.sha256`` in ``sha256sum`` format, so ``sha256sum -c`` checks it too.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from harness.errors import HarnessError

log = logging.getLogger(__name__)

SUFFIX = ".sha256"


class IntegrityError(HarnessError, RuntimeError):
    """A file that does not match its recorded SHA-256, or cannot be read; names the file."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def record(path: str | Path, digest: str | None = None) -> str:
    """Write ``<path>.sha256`` for the file at ``path`` (``digest`` if already computed)."""
    path = Path(path)
    digest = digest or file_sha256(path)
    out = record_path(path)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(f"{digest}  {path.name}\n")
    tmp.replace(out)
    return digest


def write_recorded(path: str | Path, write) -> str:
    """Write ``path`` through ``write(temporary_path)``, move it into place, record its SHA-256.

    The old record is removed before the new file takes its place, so a kill in between
    leaves a file without a record (refused as untrusted), never a record vouching for other
    bytes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    digest = file_sha256(tmp)
    record_path(path).unlink(missing_ok=True)
    tmp.replace(path)
    return record(path, digest)


def recorded(path: str | Path) -> str | None:
    """The SHA-256 recorded for ``path``, or None when the file predates checksums."""
    rec = record_path(path)
    if not rec.exists():
        return None
    return rec.read_text().split()[0]


def verify(path: str | Path, remedy: str = "", required: bool = True) -> None:
    """Raise IntegrityError naming ``path`` when its bytes differ from the recorded SHA-256.

    ``remedy``: what the user should do, appended to the message. ``required``: a missing
    record is an error too; otherwise (files written before checksums were kept) it passes
    with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist" + (f". {remedy}" if remedy else ""))
    expected = recorded(path)
    if expected is None:
        if required:
            raise IntegrityError(f"{path} has no recorded SHA-256 ({record_path(path).name} is "
                                 "missing), so it cannot be trusted" + (f". {remedy}" if remedy else ""))
        log.warning("%s has no recorded SHA-256 (%s missing; written before checksums were "
                    "kept); loading it unchecked", path, record_path(path).name)
        return
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(
            f"{path} is damaged: its SHA-256 is {actual[:16]}..., but {expected[:16]}... was "
            f"recorded when it was written ({record_path(path).name}; {path.stat().st_size} "
            f"bytes now)" + (f". {remedy}" if remedy else ""))
