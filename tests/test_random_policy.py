"""The chance-level row: uniform joint targets within the training actions' range."""

import numpy as np
import torch

from harness.adapter import DataInfo, resolve_config
from harness.dataset import DemoDataset, write_dataset
from harness.runs import FINAL_WEIGHTS, run_normalizers
from harness.train import train
from methods.random_policy import RandomAdapter

from conftest import SYNTH_META, synthetic_episode


def _dataset(tmp_path, size=(32, 32)):
    episodes = [synthetic_episode(s, n, size=size) for s, n in [(0, 30), (1, 25)]]
    return write_dataset(tmp_path / "d.h5", episodes, dict(SYNTH_META, image_size=list(size)))


def test_training_keeps_the_range_and_runs_no_step(tmp_path):
    path = _dataset(tmp_path)
    run = train(RandomAdapter, resolve_config(RandomAdapter, "smoke"), path, tmp_path / "run", progress=False)
    assert (run / FINAL_WEIGHTS).exists()
    assert not (run / "train_log.csv").exists() and not (run / "checkpoints").exists()


def test_actions_cover_the_training_range_and_stay_inside_it(tmp_path):
    ds = DemoDataset(_dataset(tmp_path))
    stats = {k: dict(v) for k, v in ds.stats.items()}
    lo, hi = np.array(stats["actions"]["min"], dtype=np.float64), np.array(stats["actions"]["max"], dtype=np.float64)
    hi[0] = lo[0]  # a dimension the demonstrations never moved
    stats["actions"]["max"] = hi
    data = DataInfo(action_dim=len(lo), qpos_dim=9, image_size=(32, 32), instruction="push", stats=stats)
    model = RandomAdapter(resolve_config(RandomAdapter, None), data)
    norm = run_normalizers({"data_info": data.to_dict(), "normalization": RandomAdapter.normalization}).actions
    torch.manual_seed(0)
    draws = np.stack([norm.unnormalize(model.act({"step": s})).numpy()[0] for s in range(2000)])
    assert (draws >= lo - 1e-6).all() and (draws <= hi + 1e-6).all()
    assert np.allclose(draws[:, 0], lo[0])
    spread = hi[1:] - lo[1:]
    # uniform: each moving dimension reaches both ends of its range and centres on the middle
    assert ((draws[:, 1:].min(0) - lo[1:]) < 0.01 * spread).all()
    assert ((hi[1:] - draws[:, 1:].max(0)) < 0.01 * spread).all()
    assert np.allclose(draws[:, 1:].mean(0), (lo[1:] + hi[1:]) / 2, atol=0.05 * spread.max())
