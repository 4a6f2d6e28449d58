"""Saturated units of bounded activations (harness/saturation.py): found on constructed
pre-activations, on BC-T's real heads over real training windows, and reported by training."""

import pytest
import torch
import torch.nn.functional as F

from harness.adapter import Adapter, DataInfo, MethodConfig, resolve_config
from harness.dataset import DemoDataset, write_dataset
from harness.registry import get_method
from harness.saturation import BoundedActivations, saturated_units
from harness.train import BatchPreparer, collate, train
from harness.windows import WindowDataset

from conftest import SYNTH_META, synthetic_episode


def _calls(pre, name="tanh"):
    """The sites one call of ``name`` on ``pre`` (windows, units) leaves."""
    rec = BoundedActivations(trained_only=False)
    with rec:
        getattr(torch, name)(pre)
    return rec.sites


def test_a_unit_in_the_tail_on_every_window_is_saturated_and_only_that_one():
    pre = torch.randn(64, 4) * 0.5
    pre[:, 1] = -3.5 - torch.rand(64)  # one-signed, beyond 3
    assert saturated_units(_calls(pre)) == ["tanh#0[1]"]
    pre[:4, 1] = 0.0  # on 60 of 64 windows (94%): still learning from the others
    assert saturated_units(_calls(pre)) == []


def test_a_two_valued_target_fitted_in_both_tails_is_not_saturated():
    pre = torch.zeros(64, 2)
    pre[:32, 0], pre[32:, 0] = 5.0, -5.0  # a gripper open or closed: tanh reaches +-1 only in its tails
    assert saturated_units(_calls(pre)) == []


def test_sigmoid_has_its_own_bound():
    pre = torch.full((10, 3), 4.0)  # sigmoid'(4) = 0.018: 7% of its peak, not saturated
    assert saturated_units(_calls(pre, "sigmoid")) == []
    assert saturated_units(_calls(pre)) == ["tanh#0[0]", "tanh#0[1]", "tanh#0[2]"]
    pre[:, 2] = 6.5
    assert saturated_units(_calls(pre, "sigmoid")) == ["sigmoid#0[2]"]


def test_every_way_of_calling_tanh_and_sigmoid_is_recorded_in_call_order():
    x = torch.randn(5, 3, 2, requires_grad=True)
    with BoundedActivations() as rec:
        torch.tanh(x), x.tanh(), F.tanh(x), torch.nn.Tanh()(x), torch.sigmoid(x), torch.nn.Sigmoid()(x)
        F.gelu(x, approximate="tanh"), torch.relu(x)
    assert [site.name for site in rec.sites] == ["tanh#0", "tanh#1", "tanh#2", "tanh#3", "sigmoid#0", "sigmoid#1"]
    assert all(site.windows == 5 and site.high.shape == (6,) for site in rec.sites)
    torch.testing.assert_close(rec.sites[0].total, x.detach().reshape(5, 6).sum(0))  # the input, not tanh's output


def test_what_is_not_counted():
    """Tensors outside the trained graph, calls whose first dimension is not the batch (a gate of
    shape (1,)), empty ones, and GELU's tanh approximation (it bounds nothing)."""
    from transformers.activations import NewGELUActivation

    w = torch.full((7, 3), 9.0, requires_grad=True)
    with BoundedActivations(windows=7) as rec:
        torch.tanh(w.detach()), torch.sigmoid(torch.ones(1, requires_grad=True)), torch.tanh(w[:0])
        NewGELUActivation()(w)
        torch.tanh(w)
    assert [site.name for site in rec.sites] == ["tanh#0"] and saturated_units(rec.sites) == [
        "tanh#0[0]", "tanh#0[1]", "tanh#0[2]"]


@pytest.fixture
def train_path(tmp_path):
    episodes = [synthetic_episode(s, n, size=(32, 32)) for s, n in [(0, 20), (1, 15)]]
    return write_dataset(tmp_path / "d.h5", episodes, dict(SYNTH_META, image_size=[32, 32]))


@pytest.mark.parametrize("variant,layer", [("bc_t", "action"), ("bc_t_gmm", "mean")])
def test_bc_t_heads_saturated_on_its_training_windows_are_found(train_path, variant, layer):
    """BC-T's own model and windows: its head's unit pushed into tanh's tail (as the dead shoulder
    unit was, at pre-tanh -5.7) is reported; the freshly initialised head is not."""
    cls = get_method("bc_t").load()
    cfg = resolve_config(cls, "smoke", None if variant == "bc_t" else variant)
    dataset = DemoDataset(train_path)
    data = DataInfo(action_dim=int(dataset.actions.shape[1]), qpos_dim=int(dataset.qpos.shape[1]),
                    image_size=tuple(dataset.meta["image_size"]), instruction=dataset.instruction,
                    stats=dataset.stats)
    model = cls(cfg, data).eval()
    windows = WindowDataset(dataset, cls.window_spec(cfg))
    prepare = BatchPreparer(data, cls.normalization, torch.device("cpu"))
    batch = prepare(collate([windows[i] for i in range(len(windows))]))
    with BoundedActivations(len(windows)) as rec:
        model(batch)
    assert saturated_units(rec.sites) == []
    head = getattr(model.head, layer)
    with torch.no_grad():
        head.bias[3] = -8.0
    with BoundedActivations(len(windows)) as rec:
        model(batch)
    assert saturated_units(rec.sites) == ["tanh#0[3]"]


class _TanhHead(Adapter):
    """tanh(bias) as the action, trained with MSE: ``start`` is the bias it starts from."""

    name = "tanh_head"
    config_class = MethodConfig
    normalization = {"actions": "min_max", "qpos": "identity"}
    start = 0.0

    def __init__(self, config, data):
        super().__init__(config, data)
        self.bias = torch.nn.Parameter(torch.zeros(data.action_dim))
        with torch.no_grad():
            self.bias[2] = self.start

    @classmethod
    def window_spec(cls, config):
        from harness.windows import WindowSpec

        return WindowSpec(obs_history=1, action_chunk_len=1, load_frames=False)

    def forward(self, batch):
        prediction = torch.tanh(self.bias.expand(batch["actions"].shape[0], -1))
        loss = ((batch["actions"][:, 0, 0] - prediction) ** 2).mean()
        return loss, {}


@pytest.mark.parametrize("start,expected", [(0.0, ""), (-7.0, "tanh#0[2]")])
def test_training_reports_a_saturated_unit_at_every_checkpoint(train_path, tmp_path, caplog, start, expected):
    cls = type("Head", (_TanhHead,), {"start": start})
    cfg = MethodConfig(steps=6, batch_size=4, warmup_steps=1, checkpoint_every=3, log_every=2, num_workers=0)
    with caplog.at_level("WARNING"):
        run = train(cls, cfg, train_path, tmp_path / "run", device="cpu", progress=False)
    lines = (run / "train_log.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [(r["step"], r["saturated_units"]) for r in rows] == [("2", ""), ("3", expected), ("4", ""),
                                                               ("6", expected)]
    assert ("saturated unit(s)" in caplog.text) == bool(expected)
    if expected:
        assert "tanh#0[2] (mean pre-activation -7.00)" in caplog.text


def test_counting_does_not_change_the_training(train_path, tmp_path, monkeypatch):
    import contextlib

    import harness.train
    from harness.runs import load_weights

    cls = get_method("bc_t").load()  # a tanh head, dropout and random crops: RNG and numerics matter
    cfg = resolve_config(cls, "smoke", None, dict(steps=4, checkpoint_every=2, num_workers=0))
    counted = train(cls, cfg, train_path, tmp_path / "counted", device="cpu", progress=False)
    monkeypatch.setattr(harness.train, "BoundedActivations", lambda windows: contextlib.nullcontext())
    monkeypatch.setattr(harness.train, "_saturated", lambda bounded, step, run_dir: "")
    plain = train(cls, cfg, train_path, tmp_path / "plain", device="cpu", progress=False)
    a, b = load_weights(counted / "model.safetensors"), load_weights(plain / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
