import json

import pytest

from harness.runtime import choose_vulkan_icd


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


def test_importing_harness_sets_offline_mode():
    import os

    import harness  # noqa: F401

    assert os.environ["HF_HUB_OFFLINE"] == "1"
