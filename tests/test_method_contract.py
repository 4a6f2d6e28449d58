"""The contract every registered method (and variant) must meet, with no test of its own.

Parametrised over the registry (built-in and entry points): a method added through the
adapter API is covered here automatically, at its ``smoke`` scale, on synthetic data.
"""

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.dataset import DemoDataset, write_dataset
from harness.registry import list_methods
from harness.runs import load_weights, save_weights
from harness.train import BatchPreparer, collate
from harness.windows import training_samples

from conftest import SYNTH_META, lerobot_act_checkpoint, synthetic_episode

ENTRIES = list_methods()
SIZE = (32, 32)


@pytest.fixture(scope="module")
def contract_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "d.h5"
    episodes = [synthetic_episode(s, n, size=SIZE) for s, n in [(0, 30), (1, 25)]]
    return DemoDataset(write_dataset(path, episodes, dict(SYNTH_META, image_size=list(SIZE))))


@functools.cache
def _lerobot_checkpoint(folder: Path) -> str:
    """What ``lerobot_pretrained`` evaluates: a LeRobot checkpoint folder, made once beside the
    contract dataset (inside pytest's temporary folders, so nothing is left in /tmp)."""
    return str(lerobot_act_checkpoint(folder / "pretrained_model", SIZE))


def _build(entry, ds, seed=0):
    cls = entry.load()
    cfg = resolve_config(cls, "smoke", entry.variant)
    if entry.name == "lerobot_pretrained":
        cfg = cfg.replace(path=_lerobot_checkpoint(ds.path.parent))
    data = DataInfo(action_dim=8, qpos_dim=9, image_size=SIZE, instruction="push it", stats=ds.stats)
    torch.manual_seed(seed)
    return cls, cfg, data, cls(cfg, data)


def _batch(cls, cfg, data, ds, size=2):
    windows = training_samples(ds, cls.window_spec(cfg))
    raw = collate([windows[i] for i in range(0, len(windows), max(1, len(windows) // size))][:size])
    return BatchPreparer(data, cls.normalization, torch.device("cpu"))(raw)


def _obs(data, step=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"frame": torch.rand(3, *data.image_size, generator=g), "qpos": torch.randn(data.qpos_dim, generator=g),
            "instruction": data.instruction, "step": step}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_config_defaults_are_overridable_and_round_trip(entry):
    cls = entry.load()
    assert cls.name == entry.method
    cfg = resolve_config(cls, None, entry.variant)
    assert (cfg.steps > 0) == cls.trainable and cfg.batch_size > 0
    with pytest.raises(KeyError, match="no field"):
        cfg.replace(not_a_field=1)
    assert type(cfg).from_dict(__import__("json").loads(__import__("json").dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_one_training_step_changes_weights_and_loss_is_finite(entry, contract_dataset):
    cls, cfg, data, model = _build(entry, contract_dataset)
    if not cls.trainable:
        pytest.skip(f"{entry.name} has nothing to train (Adapter.trainable)")
    batch = _batch(cls, cfg, data, contract_dataset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_batch = {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.optim_groups(), lr=1e-3)
    model.train()
    loss, logs = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(np.isfinite(v) for v in logs.values())
    loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "a training step changed no weight"
    for k, v in batch.items():  # inputs are not modified in place
        if torch.is_tensor(v):
            assert torch.equal(v, frozen_batch[k]), k
        else:
            assert v == frozen_batch[k], k


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_act_shapes_and_no_input_mutation(entry, contract_dataset):
    cls, cfg, data, model = _build(entry, contract_dataset)
    model.eval()
    model.reset()
    obs = _obs(data)
    frozen = {k: v.clone() if torch.is_tensor(v) else v for k, v in obs.items()}
    actions = model.act(obs)
    assert actions.ndim == 2 and actions.shape[0] >= 1 and actions.shape[1] == data.action_dim
    assert torch.isfinite(actions).all()
    for k, v in obs.items():
        assert (torch.equal(v, frozen[k]) if torch.is_tensor(v) else v == frozen[k]), k
    model.observe(_obs(data, step=1, seed=1))  # intermediate observations are accepted
    model.reset()
    assert model.act(_obs(data)).shape == actions.shape


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_save_load_round_trip_gives_identical_actions(entry, contract_dataset, tmp_path):
    cls, cfg, data, model = _build(entry, contract_dataset, seed=0)
    save_weights(model.state_dict(), tmp_path / "w.safetensors")
    _, _, _, other = _build(entry, contract_dataset, seed=123)  # different random init
    other.load_state_dict(load_weights(tmp_path / "w.safetensors"))
    outs = []
    for m in (model, other):
        m.eval()
        m.reset()
        torch.manual_seed(7)  # the same sampling noise for stochastic policies
        outs.append(m.act(_obs(data)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_recording_predicted_frames_leaves_the_actions_alone(entry, contract_dataset):
    """The figures' part of the adapter API: with ``record_predictions``, a frame-predicting
    method adds one frame in [0, 1] per ``act`` call, any other adds none; either way the
    actions equal those of an unrecorded rollout with the same seed."""
    cls, cfg, data, model = _build(entry, contract_dataset)
    model.eval()
    runs = {}
    for record in (False, True):
        model.record_predictions = record
        model.reset()
        torch.manual_seed(3)
        runs[record] = [model.act(_obs(data, step=k, seed=k)) for k in range(2)]
    for plain, recorded in zip(runs[False], runs[True]):
        torch.testing.assert_close(plain, recorded, rtol=0, atol=0)
    frames = model.predicted_frames
    if model.predicts_frames():
        assert len(frames) == 2
        assert all(f.ndim == 3 and f.shape[0] == 3 and 0 <= f.min() and f.max() <= 1 for f in frames)
        model.reset()
        assert model.predicted_frames == []
    else:
        assert frames == []


def _demos(ds, data, cls, episodes):
    from harness.evaluate import Prompter

    run_config = {"dataset": str(ds.path), "data_info": data.to_dict(), "normalization": cls.normalization}
    prompter = Prompter(run_config, k=len(episodes))
    return [prompter.demo(e) for e in episodes]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_prompt_demos_are_used_and_cleared_by_reset(entry, contract_dataset):
    """An in-context method (``prompt_demos`` > 0) acts on its prompt: other demos give other
    actions, and ``reset`` forgets the prompt; any other method asks for none."""
    cls, cfg, data, model = _build(entry, contract_dataset)
    k = cls.prompt_demos(cfg)
    assert k >= 0
    if k == 0:
        return
    model.eval()
    outs = []
    for episodes in ([0] * k, [1] * k, [0] * k):
        model.reset()
        model.prompt(_demos(contract_dataset, data, cls, episodes))
        torch.manual_seed(5)
        outs.append(model.act(_obs(data)))
    torch.testing.assert_close(outs[0], outs[2], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[1]), "the prompt does not change the actions"
