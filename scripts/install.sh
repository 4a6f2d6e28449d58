#!/usr/bin/env bash
# Install everything the harness needs into ./.venv (Python 3.11), system parts included.
#
#   bash scripts/install.sh
#
# 1. A Vulkan driver for SAPIEN (ManiSkill's renderer). With no GPU driver present, installs
#    Mesa >= 25 lavapipe from Debian's bookworm-backports suite (Debian 12's own Mesa 22 is
#    rejected by SAPIEN). Needs root or sudo; skipped when a usable driver already exists.
# 2. ./.venv with the locked package set (constraints/lock.txt) and this project, editable.
# Safe to run again: finished steps are skipped.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { printf '\n[install] %s\n' "$*"; }
die() { printf '\n[install] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@";
    elif command -v sudo >/dev/null 2>&1; then sudo "$@";
    else die "need root (or sudo) to run: $*"; fi
}

# ---------------------------------------------------------------- 1. Vulkan driver
have_gpu_vulkan() {
    ls /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json \
       /usr/local/nvidia/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1
}
lavapipe_major() {
    dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^([0-9]+).*/\1/'
}
if have_gpu_vulkan; then
    say "a GPU Vulkan driver is registered; not installing lavapipe"
elif [ "$(lavapipe_major || true)" -ge 25 ] 2>/dev/null && dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    say "Mesa $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) lavapipe already installed"
else
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install a Vulkan driver (GPU, or Mesa >= 25 lavapipe) yourself, then re-run"
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ "$codename" = bookworm ] || say "warning: tested on Debian 12 (bookworm); this is '$codename'"
    say "installing Mesa lavapipe (Vulkan on CPU) from ${codename}-backports"
    list=/etc/apt/sources.list.d/${codename}-backports.list
    if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian ${codename}-backports main" | as_root tee "$list" >/dev/null
    fi
    as_root apt-get update -qq
    # backports have priority 100: only the packages named here (and what they need) come from there
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t "${codename}-backports" \
        mesa-vulkan-drivers libvulkan1
    [ "$(lavapipe_major)" -ge 25 ] || die "mesa-vulkan-drivers is $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers); SAPIEN needs >= 25"
fi

# ---------------------------------------------------------------- 2. Python environment
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || die "Python 3.11 not found (set PYTHON=/path/to/python3.11)"
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11)' || die "$py is not Python 3.11"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$py" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# constraints/lock.txt pins every package (a full resolution of this set backtracks for a
# very long time). Its torch==2.15.0 pin also keeps out a local CPU-only torch 2.13 wheel some
# machines offer through pip's find-links: no torchvision works beside it.
say "installing the locked package set into .venv (first time: several minutes, ~8 GB)"
.venv/bin/python -m pip install -q --upgrade "pip>=24" wheel
.venv/bin/python -m pip install -q -c constraints/lock.txt -e ".[dev]"
.venv/bin/python -m pip check

say "checking the simulator can render"
HF_HUB_OFFLINE=1 .venv/bin/python - <<'PY'
import harness  # picks the Vulkan driver
from harness.sim import capture_rgb, make_env
env = make_env("PushCube-v1", "pd_joint_pos", "render_camera", (32, 32))
env.reset(seed=0)
image = capture_rgb(env, "render_camera")
assert image.shape == (32, 32, 3) and image.std() > 0, image.shape
env.close()
print("[install] rendering works:", image.shape)
PY
say "done. Activate with: source .venv/bin/activate"
