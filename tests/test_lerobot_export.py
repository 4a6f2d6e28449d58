"""A harness dataset exported as a LeRobot v2.1 dataset reloads offline, frame for frame, and
LeRobot's own ``lerobot-train`` trains on it (harness/lerobot_export.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.dataset import DemoDataset, Episode, encode_image, write_dataset
from harness.lerobot_bridge import ACTION_KEY, IMAGE_KEY, STATE_KEY
from harness.lerobot_export import FPS, PROVENANCE_FILE, ExportError, export

META = {"task": "PushCube", "env_id": "PushCube-v1", "instruction": "push the cube to the goal",
        "control_mode": "pd_joint_pos", "camera": "render_camera", "image_size": [24, 32],
        "image_codec": "png"}


def _episode(seed: int, steps: int) -> Episode:
    """Noise frames (a flipped or transposed image would not match) and distinct values."""
    rng = np.random.default_rng(seed)
    frames = [encode_image(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "png")
              for _ in range(steps + 1)]
    qpos = rng.normal(size=(steps + 1, 9)).astype(np.float32)
    actions = rng.normal(size=(steps, 8)).astype(np.float32)
    return Episode(seed=seed, frames=frames, qpos=qpos, actions=actions)


@pytest.fixture
def source(tmp_path):
    return write_dataset(tmp_path / "PushCube.h5", [_episode(s, n) for s, n in [(3, 6), (5, 9), (8, 4)]], META)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))  # not ~/.cache
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot_home"))


def test_the_export_round_trips_exactly_offline(source, tmp_path, offline):
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = export(source, tmp_path / "lerobot", progress=False)
    ds = DemoDataset(source)
    loaded = LeRobotDataset("local/PushCube", root=out)
    assert loaded.fps == FPS and loaded.num_episodes == 3
    assert loaded.num_frames == int(ds.num_steps.sum())  # T frames per episode: the last obs has no action
    assert loaded.meta.tasks == {0: META["instruction"]}
    i = 0
    for e in range(ds.num_episodes):
        frames = ds.episode_frames(e)
        for t in range(int(ds.num_steps[e])):
            item = loaded[i]
            assert int(item["episode_index"]) == e and int(item["frame_index"]) == t
            image = (item[IMAGE_KEY] * 255).round().to(dtype=torch.uint8).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(image, frames[t])
            np.testing.assert_array_equal(item[STATE_KEY].numpy(), ds.qpos[ds.obs_start[e] + t])
            np.testing.assert_array_equal(item[ACTION_KEY].numpy(), ds.actions[ds.act_start[e] + t])
            assert item["task"] == META["instruction"]
            i += 1
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["source_meta"]["task"] == "PushCube" and provenance["seeds"] == [3, 5, 8]
    assert provenance["final_observations_left_out"] == 3 and len(provenance["source_sha256"]) == 64
    assert not (tmp_path / "lerobot_home").exists()  # nothing fetched or cached outside root


def test_the_export_refuses_an_existing_folder_and_a_corrupt_source(source, tmp_path, offline):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export(source, tmp_path / "taken", progress=False)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(Exception, match="broken.h5"):
        export(broken, tmp_path / "from_broken", progress=False)
    assert not (tmp_path / "from_broken").exists()


def test_lerobot_train_runs_on_the_export(source, tmp_path, offline):
    out = export(source, tmp_path / "lerobot", progress=False)
    train = shutil.which("lerobot-train", path=str(Path(sys.executable).parent))
    assert train, "lerobot-train is installed with lerobot"
    cmd = [train, "--dataset.repo_id=local/PushCube", f"--dataset.root={out}", "--policy.type=act",
           "--policy.push_to_hub=false", "--policy.pretrained_backbone_weights=null",
           "--policy.device=cpu", "--policy.dim_model=32", "--policy.n_heads=2",
           "--policy.dim_feedforward=64", "--policy.chunk_size=4", "--policy.n_action_steps=4",
           "--policy.n_encoder_layers=1", "--policy.n_vae_encoder_layers=1", "--policy.latent_dim=8",
           "--steps=3", "--batch_size=2", "--num_workers=0", "--log_freq=1", "--save_freq=3",
           "--wandb.enable=false", f"--output_dir={tmp_path / 'train'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "step:3" in log.replace(" ", "") or "step:3" in log, log[-2000:]
    assert list((tmp_path / "train").rglob("model.safetensors"))  # a checkpoint LeRobot can load


@pytest.mark.parametrize("method", ["act", "lerobot_vqbet"])
def test_a_trained_run_exported_as_a_lerobot_checkpoint_acts_the_same_standalone(method, source, tmp_path, offline):
    """The harness's rollout path (normalise qpos, act, unnormalise the actions) and LeRobot's
    from_pretrained(...).select_action on raw inputs give the same joint targets."""
    import torch
    from lerobot.policies.factory import get_policy_class

    from harness.adapter import resolve_config
    from harness.lerobot_export import export_pretrained
    from harness.registry import get_method
    from harness.runs import load_trained, run_normalizers
    from harness.train import train

    cls = get_method(method).load()
    cfg = resolve_config(cls, "smoke").replace(steps=2, checkpoint_every=2)
    if method == "lerobot_vqbet":  # past its VQ-VAE phase, so that it acts
        cfg = cfg.replace(steps=3, policy=dict(cfg.policy, n_vqvae_training_steps=1))
    run = train(cls, cfg, source, tmp_path / "run", device="cpu", progress=False)
    out = export_pretrained(run, tmp_path / "pretrained_model")
    model, run_config = load_trained(run)
    norms = run_normalizers(run_config)
    theirs = get_policy_class(json.loads((out / "config.json").read_text())["type"]).from_pretrained(out).eval()
    model.reset()
    theirs.reset()
    g = torch.Generator().manual_seed(0)
    queue = []
    for step in range(12):  # as a rollout runs them (harness.evaluate.run_rollout), across chunks
        frame, qpos = torch.rand(3, 24, 32, generator=g), torch.randn(9, generator=g)
        obs = {"frame": frame, "qpos": norms.qpos.normalize(qpos), "instruction": META["instruction"], "step": step}
        torch.manual_seed(step)
        if not queue:
            queue = list(norms.actions.unnormalize(model.act(obs).float()))
        else:
            model.observe(obs)
        ours = queue.pop(0)
        torch.manual_seed(step)
        standalone = theirs.select_action({IMAGE_KEY: frame[None], STATE_KEY: qpos[None]})
        torch.testing.assert_close(standalone[0], ours.float(), rtol=1e-4, atol=1e-4)
    assert json.loads((out / "harness_run.json").read_text())["method"] == method


def test_a_lerobot_pretrained_run_is_not_exported_again(source, tmp_path, offline):
    """Its run holds a LeRobot checkpoint as it was (identity normalisation on the harness side):
    exporting it would strip the checkpoint's own normalisers; the error names the checkpoint."""
    from conftest import lerobot_act_checkpoint

    from harness.adapter import resolve_config
    from harness.lerobot_export import export_pretrained
    from harness.registry import get_method
    from harness.train import train

    folder = lerobot_act_checkpoint(tmp_path / "pretrained_model", (24, 32))
    cls = get_method("lerobot_pretrained").load()
    run = train(cls, resolve_config(cls, "smoke").replace(path=str(folder)), source, tmp_path / "run",
                device="cpu", progress=False)
    with pytest.raises(ExportError, match=str(folder)):
        export_pretrained(run, tmp_path / "again")
    assert not (tmp_path / "again").exists()
