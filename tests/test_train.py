import json
from dataclasses import dataclass

import pytest
import torch

from harness.adapter import Adapter, MethodConfig, resolve_config
from harness.dataset import write_dataset
from harness.registry import get_method
from harness.train import StepBatchSampler, TrainingError, load_trained, load_weights, lr_lambda, train
from harness.windows import WindowSpec

from conftest import SYNTH_META, synthetic_episode


@pytest.fixture
def dataset(tmp_path):
    episodes = [synthetic_episode(s, n, size=(32, 32)) for s, n in [(0, 20), (1, 15)]]
    return write_dataset(tmp_path / "d.h5", episodes, dict(SYNTH_META, image_size=[32, 32]))


@pytest.mark.parametrize("method", ["dp", "act"])
def test_resume_after_kill_equals_uninterrupted(method, dataset, tmp_path):
    entry = get_method(method)
    cls = entry.load()
    # dropout and diffusion noise are on, so every RNG must be restored exactly
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=2, num_workers=0))
    whole = train(cls, cfg, dataset, tmp_path / "whole", seed=3, device="cpu", progress=False)
    first = train(cls, cfg, dataset, tmp_path / "resumed", seed=3, device="cpu", progress=False,
                  stop_after=3)  # "killed" after step 3; the last checkpoint is step 2
    assert not (first / "model.safetensors").exists()
    train(cls, cfg, dataset, tmp_path / "resumed", seed=3, device="cpu", progress=False)
    a = load_weights(whole / "model.safetensors")
    b = load_weights(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the log has each step once, resumed rows replacing the lost ones
    steps = [int(line.split(",")[0]) for line in (tmp_path / "resumed" / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    config = json.loads((whole / "run_config.json").read_text())
    assert config["method"] == method and config["method_config"]["steps"] == 6
    assert set(config["data_info"]["stats"]) == {"actions", "obs_qpos"}


def test_trained_run_loads_for_rollouts(dataset, tmp_path):
    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke")
    train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
    model, run_config = load_trained(tmp_path / "run")
    assert not model.training and run_config["method"] == "dummy"
    second = train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False)  # nothing to do
    assert second == tmp_path / "run"
    with pytest.raises(TrainingError, match="another config"):
        train(cls, cfg.replace(lr=0.5), dataset, tmp_path / "run", device="cpu", progress=False)


@dataclass(frozen=True)
class _NanConfig(MethodConfig):
    steps: int = 5
    batch_size: int = 2
    num_workers: int = 0
    warmup_steps: int = 0


class _NanAdapter(Adapter):
    name = "nan"
    config_class = _NanConfig

    def __init__(self, config, data):
        super().__init__(config, data)
        self.w = torch.nn.Parameter(torch.ones(1))

    @classmethod
    def window_spec(cls, config):
        return WindowSpec(load_frames=False)

    def forward(self, batch):
        return self.w * float("nan"), {}


def test_non_finite_loss_stops_with_a_clear_message(dataset, tmp_path):
    with pytest.raises(TrainingError, match=r"loss became nan at step 0 .*lower lr"):
        train(_NanAdapter, _NanConfig(), dataset, tmp_path / "run", device="cpu", progress=False)


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(n=7, batch_size=3, seed=1, start=0, stop=6))
    tail = list(StepBatchSampler(n=7, batch_size=3, seed=1, start=4, stop=6))
    assert full[4:] == tail
    flat = [i for b in full for i in b]
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))  # epochs
    assert full != list(StepBatchSampler(n=7, batch_size=3, seed=2, start=0, stop=6))


def test_lr_schedule_warmup_then_cosine():
    cfg = MethodConfig(steps=110, warmup_steps=10, lr_schedule="cosine")
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert lr_lambda(MethodConfig(warmup_steps=0, lr_schedule="constant"))(50) == 1.0
