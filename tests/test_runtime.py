import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtime import OFFLINE_ENV, choose_vulkan_icd

REPO = Path(__file__).resolve().parents[1]


def _icd(folder, name, api):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"ICD": {"api_version": api, "library_path": "x.so"}}))
    return path


def test_picks_recent_lavapipe_when_no_gpu(tmp_path):
    lvp = _icd(tmp_path / "a", "lvp_icd.json", "1.4.305")
    _icd(tmp_path / "a", "radeon_icd.json", "1.4.305")
    assert choose_vulkan_icd(env={}, dirs=[tmp_path / "a"]) == lvp


def test_leaves_gpu_machines_and_user_choice_alone(tmp_path):
    _icd(tmp_path / "a", "lvp_icd.json", "1.4.305")
    _icd(tmp_path / "b", "nvidia_icd.json", "1.3.277")
    assert choose_vulkan_icd(env={}, dirs=[tmp_path / "a", tmp_path / "b"]) is None
    assert choose_vulkan_icd(env={"VK_ICD_FILENAMES": "/x.json"}, dirs=[tmp_path / "a"]) is None


def test_old_lavapipe_is_rejected_with_install_hint(tmp_path):
    _icd(tmp_path / "a", "lvp_icd.x86_64.json", "1.3.230")  # Debian 12's Mesa 22
    with pytest.raises(RuntimeError, match=r"scripts/install.sh.*|Mesa >= 25") as err:
        choose_vulkan_icd(env={}, dirs=[tmp_path / "a"])
    assert "1.3.230" in str(err.value)


def _env_after_importing_harness(**env_changes):
    """The three offline variables as seen by a fresh interpreter after `import harness`,
    started with them removed from its environment and then `env_changes` applied."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    env.update(env_changes)
    code = ("import json, os; import harness; "
            f"print(json.dumps({{k: os.environ.get(k) for k in {sorted(OFFLINE_ENV)!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_importing_harness_sets_offline_mode():
    # conftest.py and scripts/test.sh set HF_HUB_OFFLINE in this process already, so the
    # check runs in a fresh interpreter whose environment has none of the three variables.
    assert set(OFFLINE_ENV) == {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}
    assert _env_after_importing_harness() == {k: "1" for k in OFFLINE_ENV}
    # configure_runtime() uses os.environ.setdefault: a value the user set is respected
    assert _env_after_importing_harness(HF_HUB_OFFLINE="0") == {
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
