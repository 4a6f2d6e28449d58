"""Provenance recorded next to every dataset, checkpoint and result: code, config, packages."""

from __future__ import annotations

import datetime as _dt
import subprocess
from importlib.metadata import PackageNotFoundError, version

from harness.paths import REPO_ROOT

TRACKED_PACKAGES = ("mani_skill", "sapien", "mplib", "numpy", "torch", "h5py",
                    "opencv-python-headless", "lerobot", "transformers", "diffusers")


def git_sha() -> str:
    """The repository's commit, with ``-dirty`` when the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages results depend on ("absent" when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
