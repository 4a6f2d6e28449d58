import csv
import json
from dataclasses import dataclass

import pytest
import torch

from harness.adapter import Adapter, MethodConfig, resolve_config
from harness.dataset import write_dataset
from harness.registry import get_method
from harness.runs import load_trained, load_weights
from harness.train import StepBatchSampler, TrainingError, make_lr_scheduler, train
from harness.windows import WindowSpec

from conftest import SYNTH_META, synthetic_episode


@pytest.fixture
def dataset(tmp_path):
    episodes = [synthetic_episode(s, n, size=(32, 32)) for s, n in [(0, 20), (1, 15)]]
    return write_dataset(tmp_path / "d.h5", episodes, dict(SYNTH_META, image_size=[32, 32]))


@pytest.mark.parametrize("method", ["dp", "act", "lerobot_vqbet"])
def test_resume_after_kill_equals_uninterrupted(method, dataset, tmp_path):
    entry = get_method(method)
    cls = entry.load()
    # dropout and diffusion noise are on, so every RNG must be restored exactly
    overrides = dict(steps=6, checkpoint_every=2, num_workers=0)
    if method == "lerobot_vqbet":  # killed inside its first phase (its VQ-VAE's, 4 steps), resumed at step 2
        overrides["policy"] = dict(cls.scale_overrides["smoke"]["policy"], n_vqvae_training_steps=4)
    cfg = resolve_config(cls, "smoke", None, overrides)
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


@dataclass(frozen=True)
class _LinearConfig(MethodConfig):
    steps: int = 12
    batch_size: int = 4
    num_workers: int = 0
    warmup_steps: int = 0
    lr: float = 5e-2
    log_every: int = 1


class _LinearAdapter(Adapter):
    """The last qpos -> the first action, a mean squared error: no randomness in the loss."""

    name = "linear"
    config_class = _LinearConfig

    def __init__(self, config, data):
        super().__init__(config, data)
        self.lin = torch.nn.Linear(data.qpos_dim, data.action_dim)
        self.seen = []
        _LinearAdapter.last = self

    @classmethod
    def window_spec(cls, config):
        return WindowSpec(load_frames=False)

    def forward(self, batch):
        qpos, actions = batch["qpos"], batch["actions"]
        self.seen.append(len(actions))  # what one forward pass holds
        pred = self.lin(qpos.reshape(len(qpos), -1, qpos.shape[-1])[:, -1])
        loss = (pred - actions.reshape(len(actions), -1, actions.shape[-1])[:, 0]).pow(2).mean()
        return loss, {"mse": loss.detach()}


def test_gradient_accumulation_makes_the_same_update_as_the_whole_batch(dataset, tmp_path, monkeypatch):
    import harness.train

    prepared = []  # what goes to the device at once: one micro-batch, never the whole
    original = harness.train.BatchPreparer.__call__
    monkeypatch.setattr(harness.train.BatchPreparer, "__call__",
                        lambda self, raw: prepared.append(len(raw["actions"])) or original(self, raw))
    runs, seen, sent = {}, {}, {}
    for k in (1, 2, 4):
        prepared.clear()
        runs[k] = train(_LinearAdapter, _LinearConfig(grad_accum_steps=k), dataset, tmp_path / f"accum{k}",
                        device="cpu", progress=False)
        seen[k], sent[k] = set(_LinearAdapter.last.seen), set(prepared)
    assert seen == sent == {1: {4}, 2: {2}, 4: {1}}
    weights = {k: load_weights(run / "model.safetensors") for k, run in runs.items()}
    for k in (2, 4):
        for name in weights[1]:
            torch.testing.assert_close(weights[k][name], weights[1][name], rtol=1e-5, atol=1e-6, msg=name)
    # the logged loss and gradient norm (before clipping) are the whole batch's, whatever k
    logs = {k: list(csv.DictReader((run / "train_log.csv").open())) for k, run in runs.items()}
    for column in ("loss", "grad_norm", "mse"):
        series = {k: [float(row[column]) for row in rows] for k, rows in logs.items()}
        assert series[2] == pytest.approx(series[1], rel=1e-5) and series[4] == pytest.approx(series[1], rel=1e-5)
    first, last = ([float(row["loss"]) for row in part] for part in (logs[1][:4], logs[1][-4:]))
    assert sum(last) < sum(first)  # it learned


def test_a_batch_that_does_not_divide_into_its_micro_batches_is_refused():
    with pytest.raises(ValueError, match="batch_size 4 must divide into grad_accum_steps 3"):
        _LinearConfig(grad_accum_steps=3)


def test_batches_depend_only_on_seed_and_step():
    full = list(StepBatchSampler(n=7, batch_size=3, seed=1, start=0, stop=6))
    tail = list(StepBatchSampler(n=7, batch_size=3, seed=1, start=4, stop=6))
    assert full[4:] == tail
    flat = [i for b in full for i in b]
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))  # epochs
    assert full != list(StepBatchSampler(n=7, batch_size=3, seed=2, start=0, stop=6))


def test_lr_schedule_warmup_then_cosine():
    def factors(cfg, steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_lr_scheduler(opt, cfg)
        return [sched.lr_lambdas[0](s) for s in steps]

    cfg = MethodConfig(steps=110, warmup_steps=10, lr_schedule="cosine")
    f0, f5, f10, f60, f110 = factors(cfg, [0, 5, 10, 60, 110])
    assert f0 == 0.0 and f5 == pytest.approx(0.5)  # linear warmup from 0 (diffusers)
    assert f10 == pytest.approx(1.0) and f60 == pytest.approx(0.5) and f110 == pytest.approx(0.0)
    assert factors(MethodConfig(warmup_steps=0, lr_schedule="constant"), [50]) == [1.0]
    with pytest.raises(TrainingError, match="unknown lr_schedule 'linear'"):
        factors(MethodConfig(lr_schedule="linear"), [0])


# --------------------------------------------------------------------------- damaged files
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the tensor data: safetensors itself would load this silently
    path.write_bytes(bytes(data))


@pytest.fixture
def dummy_run(dataset, tmp_path):
    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=2))
    run = train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
    return cls, cfg, run


def test_weights_files_carry_a_checksum(dummy_run):
    from harness.checksums import file_sha256, recorded

    _, _, run = dummy_run
    for path in [run / "model.safetensors", *sorted(run.glob("checkpoints/step_*/*.safetensors")),
                 *sorted(run.glob("checkpoints/step_*/train_state.pt"))]:
        assert recorded(path) == file_sha256(path), path


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte])
def test_damaged_final_weights_are_refused_by_name(dummy_run, damage):
    from harness.checksums import IntegrityError

    _, _, run = dummy_run
    damage(run / "model.safetensors")
    with pytest.raises(IntegrityError) as err:
        load_trained(run)
    assert str(run / "model.safetensors") in str(err.value)
    assert "python -m harness train" in str(err.value)  # and what to do about it


def test_evaluate_cli_refuses_a_truncated_weights_file(dummy_run):
    import subprocess
    import sys

    _, _, run = dummy_run
    _truncate(run / "model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "harness", "evaluate", "--scale", "smoke", "--run", str(run),
                           "--task", "PushCube", "--out", str(run / "rollouts.csv")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "SafetensorError" not in proc.stderr.split("(")[0]
    assert f"error: {run / 'model.safetensors'} is damaged" in proc.stderr
    assert not (run / "rollouts.csv").exists()


def test_retraining_rebuilds_damaged_final_weights(dummy_run):
    cls, cfg, run = dummy_run
    good = (run / "model.safetensors").read_bytes()
    _flip_last_byte(run / "model.safetensors")
    train(cls, cfg, run_config_dataset(run), run, device="cpu", progress=False)
    assert (run / "model.safetensors").read_bytes() == good


def run_config_dataset(run):
    return json.loads((run / "run_config.json").read_text())["dataset"]


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte])
def test_resume_falls_back_to_the_last_good_checkpoint(dataset, tmp_path, caplog, damage):
    cls = get_method("dp").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=2, num_workers=0))
    whole = train(cls, cfg, dataset, tmp_path / "whole", seed=3, device="cpu", progress=False)
    run = tmp_path / "resumed"
    train(cls, cfg, dataset, run, seed=3, device="cpu", progress=False, stop_after=5)  # steps 2 and 4 kept
    damage(run / "checkpoints" / "step_000000004" / "model.safetensors")
    with caplog.at_level("WARNING", logger="harness.train"):
        train(cls, cfg, dataset, run, seed=3, device="cpu", progress=False)
    said = caplog.text
    assert "step_000000004" in said and "damaged" in said and "from step 2" in said
    a, b = load_weights(whole / "model.safetensors"), load_weights(run / "model.safetensors")
    for k in a:  # resuming from step 2 instead of 4 still ends with the same weights
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_weights_file_without_its_record_is_refused(dummy_run):
    from harness.checksums import IntegrityError, record_path

    _, _, run = dummy_run
    record_path(run / "model.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"model.safetensors has no recorded SHA-256"):
        load_trained(run)


def test_a_run_from_before_checksums_still_loads(dummy_run, caplog):
    from harness.checksums import record_path

    _, _, run = dummy_run
    config = json.loads((run / "run_config.json").read_text())
    del config["checksums"]  # as run folders written before checksums were kept
    (run / "run_config.json").write_text(json.dumps(config))
    record_path(run / "model.safetensors").unlink()
    with caplog.at_level("WARNING"):
        load_trained(run)
    assert "no recorded SHA-256" in caplog.text


def test_resume_skips_a_checkpoint_that_lost_its_ema_file(dataset, tmp_path, caplog):
    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=2, ema_decay=0.9))
    run = tmp_path / "run"
    train(cls, cfg, dataset, run, device="cpu", progress=False, stop_after=5)
    (run / "checkpoints" / "step_000000004" / "ema.safetensors").unlink()
    with caplog.at_level("WARNING", logger="harness.train"):
        train(cls, cfg, dataset, run, device="cpu", progress=False)
    assert "ema.safetensors does not exist" in caplog.text and "from step 2" in caplog.text
    assert (run / "model.safetensors").exists()


def test_a_finished_run_is_not_retrained_when_a_checkpoint_is_damaged(dummy_run):
    cls, cfg, run = dummy_run
    final = (run / "model.safetensors").stat().st_mtime_ns
    _truncate(run / "checkpoints" / "step_000000006" / "model.safetensors")
    train(cls, cfg, run_config_dataset(run), run, device="cpu", progress=False)
    assert (run / "model.safetensors").stat().st_mtime_ns == final


@dataclass(frozen=True)
class _PretrainedConfig(MethodConfig):
    steps: int = 2
    batch_size: int = 2
    num_workers: int = 0
    warmup_steps: int = 0
    weights: str = ""
    saw_actions: bool = False


class _PretrainedAdapter(Adapter):
    """Loads its one parameter from a local pretrained file, as a real method would."""

    name = "pretrained"
    config_class = _PretrainedConfig

    def __init__(self, config, data):
        super().__init__(config, data)
        self.w = torch.nn.Parameter(torch.load(config.weights))
        self.record_pretrained(config.weights, action_pretrained=config.saw_actions)

    @classmethod
    def window_spec(cls, config):
        return WindowSpec(load_frames=False)

    def forward(self, batch):
        loss = ((self.w - batch["actions"].mean()) ** 2).sum()
        return loss, {}


@pytest.mark.parametrize("saw_actions", [False, True])
def test_pretrained_files_are_recorded_with_their_sha256(dataset, tmp_path, saw_actions):
    import hashlib

    from harness.runs import pretrained_columns

    weights = tmp_path / "pretrained.pt"
    torch.save(torch.ones(1), weights)
    cfg = _PretrainedConfig(weights=str(weights), saw_actions=saw_actions)
    run = train(_PretrainedAdapter, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
    config = json.loads((run / "run_config.json").read_text())
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert config["pretrained_weights"] == [{"path": str(weights), "sha256": digest,
                                             "action_pretrained": saw_actions}]
    columns = pretrained_columns(config)
    assert json.loads(columns["pretrained_weights"]) == [{"path": str(weights), "sha256": digest}]
    assert columns["action_pretrained"] == ("true" if saw_actions else "false")
    # a second call finds the run trained and keeps the record
    train(_PretrainedAdapter, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
    assert json.loads((run / "run_config.json").read_text())["pretrained_weights"] == config["pretrained_weights"]


def test_a_method_trained_from_scratch_records_no_pretrained_weights(dummy_run):
    from harness.runs import pretrained_columns

    config = json.loads((dummy_run[2] / "run_config.json").read_text())
    assert config["pretrained_weights"] == []
    assert pretrained_columns(config) == {"pretrained_weights": "", "action_pretrained": "false"}
    del config["pretrained_weights"]  # a run folder from before the record
    assert pretrained_columns(config) == {"pretrained_weights": "", "action_pretrained": "false"}


def test_resuming_with_changed_pretrained_weights_is_refused(dataset, tmp_path):
    weights = tmp_path / "pretrained.pt"
    torch.save(torch.ones(1), weights)
    cfg = _PretrainedConfig(steps=4, checkpoint_every=2, weights=str(weights))
    train(_PretrainedAdapter, cfg, dataset, tmp_path / "run", device="cpu", progress=False, stop_after=2)
    torch.save(torch.full((1,), 2.0), weights)  # another file at the same path
    with pytest.raises(TrainingError, match="pretrained weights .* have changed"):
        train(_PretrainedAdapter, cfg, dataset, tmp_path / "run", device="cpu", progress=False)


def test_a_run_records_its_code_and_a_resume_by_other_method_code_marks_it(dataset, tmp_path, caplog):
    from harness.provenance import CodeState

    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=2))
    run = train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False, stop_after=3)
    config_path = run / "run_config.json"
    config = json.loads(config_path.read_text())
    state = CodeState()
    now = state.method("dummy")
    assert config["code_id"] == state.code().id and config["method_id"] == now.id
    assert config["method_files"] == now.files and "harness/train.py" in config["method_files"]
    assert config["dataset_meta"]["code_id"] is None  # a synthetic dataset: no rendering code made it
    # as if the run had been started by other method code
    config.update(method_id="0123456789ab", method_files=dict(now.files, **{"harness/train.py": "0" * 40}))
    config_path.write_text(json.dumps(config))
    train(cls, cfg, dataset, run, device="cpu", progress=False)
    resumed = json.loads(config_path.read_text())
    assert resumed["method_id"] == f"0123456789ab+{now.id}"
    assert "changed: harness/train.py" in caplog.text
    train(cls, cfg, dataset, run, device="cpu", progress=False)  # finished: nothing trains, nothing added
    assert json.loads(config_path.read_text())["method_id"] == f"0123456789ab+{now.id}"


def test_a_run_started_before_a_config_field_existed_resumes_with_its_default(dataset, tmp_path):
    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=4, checkpoint_every=2, num_workers=0))
    train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False, stop_after=2)
    config_path = tmp_path / "run" / "run_config.json"
    old = json.loads(config_path.read_text())
    del old["method_config"]["chunk_len"]  # as written before the field was added (its default: 8)
    config_path.write_text(json.dumps(old))
    train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
    assert (tmp_path / "run" / "model.safetensors").exists()
    old["method_config"]["lr"] = 0.5  # a field it had, with another value: still another run
    config_path.write_text(json.dumps(old))
    with pytest.raises(TrainingError, match="another config"):
        train(cls, cfg, dataset, tmp_path / "run", device="cpu", progress=False)
