"""SAPIEN's BRDF table, extracted once per machine and given to every camera, leaves every image
bit-identical to the table SAPIEN computes itself (harness/brdf_lut.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import brdf_lut

# Renders a few frames of every task's observation camera (and one sensor camera) after random
# joint targets, and saves them. argv: out.npz, then any of "envmap" (light the scene with
# an environment map too, where the table shapes specular light: our scenes have none,
# so there it changes no pixel) and "zeros" (replace the cached table by zeros first).
RENDER = r"""
import sys
import numpy as np
import sapien.render
from pathlib import Path
from PIL import Image
from harness import brdf_lut
from harness.sim import capture_rgb, make_env
from harness.tasks import TASKS

flags = sys.argv[2:]
if "zeros" in flags:
    path = brdf_lut.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros((brdf_lut.SIZE, brdf_lut.SIZE, 2), np.float16))
cameras = [(spec.env_id, spec.camera) for spec in TASKS.values()] + [("PushCube-v1", "base_camera")]
if "envmap" in flags:
    cameras = cameras[:1]
    faces = []  # a small bright sky, one colour per face (ManiSkill's 4k map takes minutes here)
    for i, colour in enumerate([(255, 240, 200), (60, 80, 255), (255, 255, 255), (40, 40, 40),
                                (200, 255, 200), (255, 120, 60)]):
        faces.append(str(Path(sys.argv[1]).with_name(f"face{i}.png")))
        Image.new("RGB", (16, 16), colour).save(faces[-1])
frames = {}
for env_id, camera in cameras:
    env = make_env(env_id, "pd_joint_pos", camera=camera, image_size=(64, 64))
    rng = np.random.default_rng(0)
    shots = []
    for seed in range(2):
        env.reset(seed=seed, options=dict(reconfigure=True))  # new cameras: each gets the table
        if "envmap" in flags:  # made after the env's renderer, on its device
            envmap = sapien.render.RenderCubemap(*faces)
            for sub in env.unwrapped.scene.sub_scenes:
                sub.render_system.cubemap = envmap
        for _ in range(2):
            shots.append(capture_rgb(env, camera))
            env.step(rng.uniform(-0.3, 0.3, env.action_space.shape).astype(np.float32))
    frames[f"{env_id}/{camera}"] = np.stack(shots)
    env.close()
np.savez(sys.argv[1], **frames)
"""


def _render(tmp_path: Path, name: str, table: str, *extra: str) -> dict[str, np.ndarray]:
    env = dict(os.environ, PAR_HARNESS_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env[brdf_lut.ENV_SWITCH] = table
    out = tmp_path / f"{name}.npz"
    subprocess.run([sys.executable, "-c", RENDER, str(out), *extra], check=True, env=env,
                   timeout=600)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.sim
def test_the_cached_table_renders_the_same_images_and_is_the_one_used(tmp_path):
    own = _render(tmp_path, "own", "0")  # SAPIEN computes the table in this process
    assert not (tmp_path / "cache").exists()
    cached = _render(tmp_path, "cached", "1")  # extracted into the cache, then given to cameras
    assert len(list((tmp_path / "cache").glob("brdf_lut-*.npy"))) == 1
    assert own.keys() == cached.keys() and len(own) == 4
    for key in own:
        assert own[key].std() > 10, key  # a scene, not a blank frame
        np.testing.assert_array_equal(cached[key], own[key], err_msg=key)
    # Where the table matters (a scene lit by an environment map), it is SAPIEN's own table,
    # and the cameras really sample the one given: a table of zeros changes the image.
    own_lit = _render(tmp_path, "own_lit", "0", "envmap")
    cached_lit = _render(tmp_path, "cached_lit", "1", "envmap")
    zeros_lit = _render(tmp_path, "zeros_lit", "1", "envmap", "zeros")
    for key in own_lit:
        np.testing.assert_array_equal(cached_lit[key], own_lit[key], err_msg=key)
        assert np.abs(zeros_lit[key].astype(int) - own_lit[key]).mean() > 1, key


def test_a_corrupt_cache_names_the_file_and_is_extracted_again(tmp_path, caplog):
    path = tmp_path / "brdf_lut-x.npy"
    path.write_bytes(b"not a table")
    with caplog.at_level(logging.WARNING, logger="harness.brdf_lut"):
        assert brdf_lut.load(path) is None
    assert str(path) in caplog.text
    np.save(path, np.zeros((4, 4, 2), np.float16))  # a table, but not SAPIEN's shape
    assert brdf_lut.load(path) is None
    np.save(path, np.ones((brdf_lut.SIZE, brdf_lut.SIZE, 2), np.float16))
    assert brdf_lut.load(path).shape == (brdf_lut.SIZE, brdf_lut.SIZE, 2)


def test_a_failed_extraction_is_remembered_and_sapien_computes_the_table(tmp_path, monkeypatch,
                                                                         caplog):
    monkeypatch.setattr(brdf_lut, "cache_path", lambda: tmp_path / "brdf_lut-x.npy")
    calls = []

    def fail(cmd, **kwargs):
        calls.append(cmd)
        raise subprocess.CalledProcessError(1, cmd, stderr="RuntimeError: no shader pack\n")

    monkeypatch.setattr(brdf_lut.subprocess, "run", fail)
    with caplog.at_level(logging.WARNING, logger="harness.brdf_lut"):
        assert brdf_lut.table() is None
    assert "no shader pack" in caplog.text and "brdf_lut-x.failed" in caplog.text
    assert brdf_lut.table() is None  # not tried again on this machine
    assert len(calls) == 1
    (tmp_path / "brdf_lut-x.failed").unlink()  # as the warning says: delete it to try again
    assert brdf_lut.table() is None and len(calls) == 2


def test_an_extraction_that_timed_out_is_tried_again_an_hour_later(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(brdf_lut, "cache_path", lambda: tmp_path / "brdf_lut-x.npy")
    calls = []

    def slow(cmd, **kwargs):
        calls.append(cmd)
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(brdf_lut.subprocess, "run", slow)
    with caplog.at_level(logging.WARNING, logger="harness.brdf_lut"):
        assert brdf_lut.table() is None
    assert "tried again after 60 min" in caplog.text
    marker = tmp_path / "brdf_lut-x.failed"
    assert brdf_lut.table() is None and len(calls) == 1  # not within the hour: no process waits 300 s again
    an_hour_ago = marker.stat().st_mtime - brdf_lut.RETRY_AFTER_TIMEOUT_S - 1
    os.utime(marker, (an_hour_ago, an_hour_ago))
    assert brdf_lut.table() is None and len(calls) == 2  # a timeout is no broken renderer: tried again


def test_the_switch_turns_the_cache_off(monkeypatch):
    monkeypatch.setenv(brdf_lut.ENV_SWITCH, "0")
    assert not brdf_lut.enabled()
    monkeypatch.setenv(brdf_lut.ENV_SWITCH, "1")
    assert brdf_lut.enabled()
