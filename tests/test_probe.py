"""The offline probe (harness/probe.py) on constructed policies whose numbers are known, and its
place in training (train_log.csv's val_rmse) and on the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.adapter import Adapter, DataInfo, MethodConfig, resolve_config
from harness.dataset import DemoDataset, write_dataset
from harness.probe import ProbeError, check_validation_set, load_demos, probe_policy
from harness.registry import get_method
from harness.runs import load_weights, normalizers
from harness.train import train

from conftest import SYNTH_META, synthetic_episode

CHUNK = 4
VAL_SEEDS = [(9000, 12), (9001, 9), (9002, 10)]


@pytest.fixture
def val_path(tmp_path):
    episodes = [synthetic_episode(s, n, size=(32, 32)) for s, n in VAL_SEEDS]
    return write_dataset(tmp_path / "d.val.h5", episodes, dict(SYNTH_META, image_size=[32, 32], split="validation"))


@pytest.fixture
def train_path(tmp_path):
    episodes = [synthetic_episode(s, n, size=(32, 32)) for s, n in [(0, 20), (1, 15)]]
    return write_dataset(tmp_path / "d.h5", episodes, dict(SYNTH_META, image_size=[32, 32]))


class _Constructed(Adapter):
    """Test doubles: ``copy`` reads the episode from the frame (synthetic frames carry seed % 250
    in channel 1) and returns the expert's next actions; ``blind`` returns a chunk from qpos alone,
    plus seeded noise; ``history`` holds the last executed action."""

    name = "constructed"
    config_class = MethodConfig
    normalization = {"actions": "mean_std", "qpos": "mean_std"}

    def __init__(self, kind, data, demos, norms):
        super().__init__(MethodConfig(), data)
        self.kind, self.norms = kind, norms
        self.expert = {9000 + i: torch.as_tensor(d.actions, dtype=torch.float32) for i, d in enumerate(demos)}
        self.reset()

    def reset(self):
        self.last = None

    def _as(self, kind):
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.kind = kind
        return twin

    def executed(self, actions):
        self.last = actions[-1]

    def act(self, observation):
        a = self.data.action_dim
        if self.kind == "copy":
            seed = 9000 + int(round(float(observation["frame"][1].mean()) * 255))
            actions = self.expert[seed]
            rows = np.minimum(np.arange(observation["step"], observation["step"] + CHUNK), len(actions) - 1)
            return self.norms.actions.normalize(actions[rows])
        if self.kind == "dead":  # the expert's chunk, but dimension 1 stuck (a saturated unit)
            copy_chunk = _Constructed.act(self._as("copy"), observation)
            copy_chunk[:, 1] = -1.0
            return copy_chunk
        if self.kind == "blind":
            return observation["qpos"][:a].repeat(CHUNK, 1) * 0.5 + 0.1 * torch.randn(CHUNK, a)
        return torch.zeros(CHUNK, a) if self.last is None else self.last.repeat(CHUNK, 1)


def _probe(kind, val_path, seeds=2):
    val = DemoDataset(val_path)
    demos = load_demos(val)
    data = DataInfo(action_dim=8, qpos_dim=9, image_size=(32, 32), instruction="push it", stats=val.stats)
    norms = normalizers(val.stats, _Constructed.normalization)
    policy = _Constructed(kind, data, demos, norms)
    return probe_policy(policy, demos, norms, val.stats, "push it", seeds=seeds)


def test_a_policy_that_copies_the_expert_has_zero_error_and_follows_the_frame(val_path):
    r = _probe("copy", val_path)
    assert r["rmse"]["overall"] == pytest.approx(0, abs=1e-5)
    assert r["first_call_rmse"]["overall"] == pytest.approx(0, abs=1e-5)
    assert r["seed_spread"]["overall"] == pytest.approx(0, abs=1e-6)
    # it reads the episode from the frame alone: a swapped frame gives the other episode's chunk
    assert r["frame_swap"]["overall"] == pytest.approx(r["episode_gap"]["overall"], rel=1e-4)
    assert r["frame_swap"]["overall"] > 0.1
    assert r["qpos_swap"]["overall"] == pytest.approx(0, abs=1e-6)
    assert r["history_swap"]["overall"] == pytest.approx(0, abs=1e-6)
    # every call after the first is a point: ceil(T / 4) - 1 per episode
    assert r["points"] == sum(-(-n // CHUNK) - 1 for _, n in VAL_SEEDS)
    assert len(r["rmse"]["per_dim"]) == 8


def test_a_dead_output_dimension_is_found(val_path):
    from harness.probe import dead_dimensions

    alive = _probe("copy", val_path)
    assert all(r == pytest.approx(1, rel=1e-5) for r in alive["output_spread"]["per_dim"])
    assert dead_dimensions(alive) == []
    dead = _probe("dead", val_path)
    assert dead["output_spread"]["per_dim"][1] == 0 and dead_dimensions(dead) == [1]


def test_a_policy_that_ignores_the_image_has_zero_frame_sensitivity(val_path):
    r = _probe("blind", val_path, seeds=3)
    assert r["frame_swap"]["overall"] == 0
    assert r["qpos_swap"]["overall"] > 0.1
    assert r["seed_spread"]["overall"] > 0.01  # its noise differs across sampling seeds...
    assert r["history_swap"]["overall"] == 0  # ...but not within one


def test_a_policy_that_holds_its_last_action_scores_the_hold_baseline(val_path):
    r = _probe("history", val_path)
    assert r["rmse"]["overall"] == pytest.approx(r["hold_last"]["overall"], rel=1e-5)
    assert r["history_swap"]["overall"] > 0.1
    assert r["frame_swap"]["overall"] == 0 and r["qpos_swap"]["overall"] == 0


def test_only_held_out_demos_are_probed(val_path, train_path, tmp_path):
    train_ds = DemoDataset(train_path)
    with pytest.raises(ProbeError, match="not a validation dataset"):
        check_validation_set(train_ds, train_ds.meta, train_ds.seeds)
    val = DemoDataset(val_path)
    with pytest.raises(ProbeError, match="shares seeds"):
        check_validation_set(val, train_ds.meta, [0, 9001])
    with pytest.raises(ProbeError, match="image_size"):
        check_validation_set(val, dict(train_ds.meta, image_size=[64, 64]), train_ds.seeds)
    check_validation_set(val, train_ds.meta, train_ds.seeds)


def test_training_logs_val_rmse_at_checkpoints_without_changing_the_weights(train_path, val_path, tmp_path):
    cls = get_method("dp").load()  # diffusion noise in training and in sampling: every RNG matters
    cfg = resolve_config(cls, "smoke", None, dict(steps=6, checkpoint_every=3, log_every=2, num_workers=0))
    plain = train(cls, cfg, train_path, tmp_path / "plain", device="cpu", progress=False)
    probed = train(cls, cfg, train_path, tmp_path / "probed", device="cpu", progress=False, val_dataset=val_path)
    a, b = load_weights(plain / "model.safetensors"), load_weights(probed / "model.safetensors")
    for k in a:  # the probe runs on its own random state
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    lines = (probed / "train_log.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [r["step"] for r in rows] == ["2", "3", "4", "6"]
    assert [bool(r["val_rmse"]) for r in rows] == [False, True, False, True]
    assert all(r["val_dead_dims"] == "" for r in rows)
    assert float(rows[-1]["val_rmse"]) > 0
    assert "val_rmse" not in (plain / "train_log.csv").read_text()


def test_probe_command_reports_a_run_and_refuses_a_training_dataset(train_path, val_path, tmp_path):
    cls = get_method("dummy").load()
    cfg = resolve_config(cls, "smoke", None, dict(steps=4, checkpoint_every=2, num_workers=0))
    run = train(cls, cfg, train_path, tmp_path / "run", device="cpu", progress=False)
    out = tmp_path / "probe" / "dummy.json"
    cmd = [sys.executable, "-m", "harness", "probe", "--run", str(run), "--val-dataset", str(val_path),
           "--checkpoint", "2", "--seeds", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["method"] == "dummy" and result["weights"].endswith("model.safetensors")
    assert "step_000000002" in result["weights"]
    assert result["validation_seeds"] == [9000, 9001, 9002]
    assert "| chunk error (rmse) |" in done.stdout and out.with_suffix(".md").exists()
    # the dummy reads no action history
    assert result["history_swap"]["overall"] == 0
    refused = subprocess.run(cmd[:7] + [str(train_path)] + cmd[8:], capture_output=True, text=True)
    assert refused.returncode == 2 and "not a validation dataset" in refused.stderr
    missing = subprocess.run(cmd[:9] + ["5"] + cmd[10:], capture_output=True, text=True)
    assert missing.returncode == 2 and "no complete checkpoint at step 5" in missing.stderr


class _StuckDim(Adapter):
    """Trains a bias towards the mean action, but its dimension 1 is pinned: a saturated head."""

    name = "stuck"
    config_class = MethodConfig
    normalization = {"actions": "mean_std", "qpos": "mean_std"}

    def __init__(self, config, data):
        super().__init__(config, data)
        self.bias = torch.nn.Parameter(torch.zeros(data.action_dim))

    @classmethod
    def window_spec(cls, config):
        from harness.windows import WindowSpec

        return WindowSpec(obs_history=1, action_chunk_len=CHUNK, load_frames=False)

    def forward(self, batch):
        loss = ((batch["actions"][:, 0] - self.bias) ** 2).mean()
        return loss, {}

    def act(self, observation):
        chunk = self.bias.detach().repeat(CHUNK, 1) + 0.3 * observation["qpos"][:8]
        chunk[:, 1] = -1.0
        return chunk


def test_training_warns_about_a_dead_output_dimension(train_path, val_path, tmp_path, caplog):
    cfg = MethodConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=2, num_workers=0)
    with caplog.at_level("WARNING"):
        run = train(_StuckDim, cfg, train_path, tmp_path / "stuck", device="cpu", progress=False, val_dataset=val_path)
    lines = (run / "train_log.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert [dict(zip(header, line.split(",")))["val_dead_dims"] for line in lines[1:]] == ["1", "1"]
    assert "action dimension(s) 1 are dead on the held-out demos" in caplog.text


def test_a_dimension_the_expert_never_moves_has_no_spread_ratio_and_is_not_dead():
    """PushCube's gripper stays closed in every demo: a policy answering that constant is right.
    Its ratio was the policy's spread over 1e-9 (99094071 in a probe report) or, for an exact
    constant, 0, which called the dimension dead."""
    from harness.probe import dead_dimensions, format_report, output_spread

    rng = np.random.default_rng(0)
    expert = [np.concatenate([rng.normal(size=(4, 2)), np.ones((4, 1))], 1) for _ in range(5)]
    spread = output_spread([e + np.array([0, 0, 1e-3]) * rng.normal(size=e.shape) for e in expert], expert, 3)
    assert spread["per_dim"][2] is None and spread["per_dim"][0] == pytest.approx(1, rel=1e-2)
    assert spread["overall"] == min(spread["per_dim"][:2])
    constant = output_spread([np.ones((4, 3)) for _ in expert], expert, 3)
    assert constant["per_dim"][0] == 0 and constant["per_dim"][2] is None
    result = {"output_spread": constant, "rmse": constant}
    assert dead_dimensions(result) == [0, 1]
    assert "| 0.000 | 0.000 | 0.000 | – |" in format_report(result)
