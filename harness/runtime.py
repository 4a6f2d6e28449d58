"""Process-wide runtime settings every harness entry point applies before heavy imports.

- No network at run time: Hugging Face libraries are put in offline mode.
- SAPIEN (ManiSkill's renderer) needs a Vulkan device even for state-only envs. On a machine
  without a GPU, the CPU rasteriser lavapipe from Mesa >= 25 works (Debian 12's Mesa 22 is
  rejected by SAPIEN); scripts/install.sh installs it. When the user has not chosen a Vulkan
  driver and no GPU driver is registered, point the Vulkan loader at lavapipe ourselves so
  nobody has to source anything by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.errors import HarnessError

class VulkanError(HarnessError, RuntimeError):
    """No Vulkan device SAPIEN accepts; the message says how to install one."""


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

ICD_DIRS = (
    "/usr/local/nvidia/share/vulkan/icd.d",
    "/etc/vulkan/icd.d",
    "/usr/local/share/vulkan/icd.d",
    "/usr/share/vulkan/icd.d",
)
# ICD manifests of hardware drivers that mean "a real GPU may be here, let the loader choose"
GPU_ICD_PREFIXES = ("nvidia",)
# lavapipe of Mesa 22 reports Vulkan 1.3.230 and is rejected by SAPIEN; Mesa 25 reports 1.4.x
MIN_LAVAPIPE_API = (1, 3, 255)


def _api_version(manifest: Path) -> tuple[int, ...]:
    try:
        text = json.loads(manifest.read_text())["ICD"]["api_version"]
        return tuple(int(x) for x in text.split("."))
    except (OSError, ValueError, KeyError):
        return (0,)


def find_icds(dirs=ICD_DIRS) -> list[Path]:
    """All Vulkan ICD manifests in the standard places."""
    found = []
    for d in dirs:
        p = Path(d)
        if p.is_dir():
            found.extend(sorted(p.glob("*.json")))
    return found


def choose_vulkan_icd(env: dict | None = None, dirs=ICD_DIRS) -> Path | None:
    """The lavapipe manifest to use, or None when the user or a GPU driver already decides.

    Raises RuntimeError when neither a GPU driver nor a recent-enough lavapipe exists.
    """
    env = os.environ if env is None else env
    if env.get("VK_ICD_FILENAMES") or env.get("VK_DRIVER_FILES"):
        return None
    icds = find_icds(dirs)
    if any(m.name.startswith(GPU_ICD_PREFIXES) for m in icds):
        return None
    lavapipes = [m for m in icds if m.name.startswith("lvp_icd")]
    good = [m for m in lavapipes if _api_version(m) >= MIN_LAVAPIPE_API]
    if good:
        return good[0]
    seen = ", ".join(f"{m} (Vulkan {'.'.join(map(str, _api_version(m)))})" for m in lavapipes)
    raise VulkanError(
        "No usable Vulkan device for SAPIEN: no GPU driver is registered and no lavapipe from "
        f"Mesa >= 25 was found ({seen or 'no lavapipe at all'}). Run scripts/install.sh, which "
        "installs mesa-vulkan-drivers from Debian's bookworm-backports suite, or set "
        "VK_ICD_FILENAMES to a Vulkan driver manifest."
    )


def configure_runtime() -> None:
    """Apply offline mode and the Vulkan driver choice to this process (and its children)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        icd = choose_vulkan_icd()
    except VulkanError as exc:
        # Only simulator steps need Vulkan; keep the message for when one is created.
        os.environ.setdefault("PAR_HARNESS_VULKAN_PROBLEM", str(exc))
        return
    if icd is not None:
        os.environ["VK_ICD_FILENAMES"] = str(icd)


def require_vulkan() -> None:
    """Raise the install hint if configure_runtime() found no usable Vulkan driver."""
    problem = os.environ.get("PAR_HARNESS_VULKAN_PROBLEM")
    if problem and not (os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES")):
        raise VulkanError(problem)
