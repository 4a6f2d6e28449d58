"""The rollout loop, offline: a small fake env whose success arrives at a chosen step and a
scripted adapter. Success counting and the step it is recorded at, action-chunk queueing,
when ``observe`` is called instead of ``act``, truncation at the cap and by the env, and the
columns of the rows ``evaluate`` writes."""

import csv
import json

import numpy as np
import pytest
import torch

import harness.evaluate as evaluation
from harness.evaluate import ROW_FIELDS, run_rollout
from harness.protocol import Protocol
from harness.report import compile_table, load_rows

ACTION_DIM = 2


class FakeEnv:
    """Succeeds right after its ``success_after``-th step (None: never); truncates after
    ``truncate_after`` steps. Records the actions it was given."""

    def __init__(self, success_after=None, truncate_after=10_000):
        self.success_after, self.truncate_after = success_after, truncate_after
        self.actions, self.reset_seeds, self.closed = [], [], False

    def reset(self, seed):
        self.reset_seeds.append(seed)
        self.actions, self.t = [], 0

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        self.t += 1
        success = self.success_after is not None and self.t >= self.success_after
        info = {"success": np.array([success])}  # batched, as ManiSkill returns it
        return None, 0.0, False, np.array([self.t >= self.truncate_after]), info

    def close(self):
        self.closed = True


class ScriptedAdapter:
    """Returns chunks of ``chunk_len`` actions whose values say which call and position
    they come from: action = [call index, position in chunk]."""

    config = None

    def __init__(self, chunk_len):
        self.chunk_len, self.calls, self.resets = chunk_len, [], 0

    @classmethod
    def prompt_demos(cls, config):  # not an in-context method
        return 0

    def reset(self):
        self.resets += 1

    def act(self, obs):
        index = sum(kind == "act" for kind, _ in self.calls)
        self.calls.append(("act", obs["step"]))
        return torch.tensor([[index, k] for k in range(self.chunk_len)], dtype=torch.float32)

    def observe(self, obs):
        self.calls.append(("observe", obs["step"]))


class Unnormalize:
    """Stands for the run's action normaliser: the harness must apply it to what ``act`` returns."""

    def unnormalize(self, x):
        return x * 10 + 1


def observe_step(step):
    return {"step": step, "frame": None, "qpos": None, "instruction": ""}, np.full((2, 2, 3), step, np.uint8)


def rollout(env, adapter, cap, record=False):
    return run_rollout(env, adapter, observe_step, Unnormalize(), cap, policy_seed=0,
                       init_state_seed=20241201, record=record)


def test_success_is_recorded_at_the_step_it_arrives_and_ends_the_episode():
    env, adapter = FakeEnv(success_after=7), ScriptedAdapter(chunk_len=3)
    result = rollout(env, adapter, cap=20)
    assert result["success"] is True and result["success_step"] == 7 and result["episode_len"] == 7
    assert len(env.actions) == 7 and env.reset_seeds == [20241201] and adapter.resets == 1


def test_chunks_are_queued_and_observe_is_called_between_queries():
    env, adapter = FakeEnv(), ScriptedAdapter(chunk_len=3)
    rollout(env, adapter, cap=8)
    assert adapter.calls == [("act", 0), ("observe", 1), ("observe", 2), ("act", 3), ("observe", 4),
                             ("observe", 5), ("act", 6), ("observe", 7)]
    # every action of a chunk runs, in order, un-normalised by the harness
    expected = [[10 * call + 1, 10 * k + 1] for call in range(3) for k in range(3)][:8]
    np.testing.assert_array_equal(np.stack(env.actions), np.array(expected, np.float32))


def test_no_success_runs_to_the_cap():
    env = FakeEnv(success_after=None)
    result = rollout(env, ScriptedAdapter(chunk_len=4), cap=10)
    assert result == {"success": False, "success_step": None, "episode_len": 10, "frames": [], "prompt_demo_seeds": ""}
    assert len(env.actions) == 10


def test_success_on_the_last_allowed_step_counts_and_one_later_does_not():
    assert rollout(FakeEnv(success_after=10), ScriptedAdapter(4), cap=10)["success_step"] == 10
    assert rollout(FakeEnv(success_after=11), ScriptedAdapter(4), cap=10)["success"] is False


def test_env_truncation_ends_the_episode_before_the_cap():
    result = rollout(FakeEnv(truncate_after=5), ScriptedAdapter(2), cap=50)
    assert result["success"] is False and result["episode_len"] == 5


def test_recorded_frames_include_the_final_observation():
    result = rollout(FakeEnv(success_after=4), ScriptedAdapter(3), cap=10, record=True)
    assert [int(f[0, 0, 0]) for f in result["frames"]] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- evaluate's rows
SUCCESS_AFTER = {20241201: 3, 20241202: None, 20241203: 6}  # per init state


@pytest.fixture
def scripted_run(tmp_path, monkeypatch):
    """A real run folder (the dummy method on a synthetic dataset) whose rollouts run in the
    fake env with the scripted adapter."""
    from conftest import SYNTH_META, synthetic_episode
    from harness.dataset import write_dataset
    from harness.registry import get_method
    from harness.adapter import resolve_config
    from harness.train import train

    dataset = write_dataset(tmp_path / "d.h5", [synthetic_episode(s, 12) for s in (0, 1)], SYNTH_META)
    cls = get_method("dummy").load()
    run = train(cls, resolve_config(cls, "smoke"), dataset, tmp_path / "run", device="cpu", progress=False)
    envs = []

    def fake_open_rollout(run_dir, task_info, max_episode_steps, pool=None):
        class SeededEnv(FakeEnv):
            def reset(self, seed):
                super().reset(seed)
                self.success_after = SUCCESS_AFTER[seed]

        env = SeededEnv()
        envs.append(env)
        return ScriptedAdapter(chunk_len=4), env, observe_step, Unnormalize()

    monkeypatch.setattr(evaluation, "open_rollout", fake_open_rollout)
    return run, envs


def test_evaluate_writes_one_row_per_rollout_with_the_outcome(scripted_run, tmp_path):
    run, envs = scripted_run
    protocol = Protocol(num_init_states=3, policy_seeds=(0, 1), max_episode_steps=5, workers=1)
    out = evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False,
                              identity={"config_hash": "abc", "scale": "unit"})
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ROW_FIELDS
    for column in ("task", "method", "variant", "policy_seed", "init_state_seed", "success", "success_step",
                   "episode_len", "max_episode_steps", "git_sha", "train_git_sha", "config_hash", "versions"):
        assert column in ROW_FIELDS, column
    assert [(r["policy_seed"], r["init_state_seed"]) for r in rows] == [
        (str(p), str(s)) for p in (0, 1) for s in (20241201, 20241202, 20241203)]
    by_seed = {(r["policy_seed"], r["init_state_seed"]): r for r in rows}
    for p in ("0", "1"):
        # succeeds at step 3; never; would succeed at step 6, after the cap of 5
        assert [by_seed[p, str(s)]["success"] for s in SUCCESS_AFTER] == ["1", "0", "0"]
        assert [by_seed[p, str(s)]["success_step"] for s in SUCCESS_AFTER] == ["3", "", ""]
        assert [by_seed[p, str(s)]["episode_len"] for s in SUCCESS_AFTER] == ["3", "5", "5"]
    row = rows[0]
    assert row["method"] == "dummy" and row["task"] == "PushCube" and row["scale"] == "unit"
    assert row["max_episode_steps"] == "5" and row["num_init_states"] == "3" and row["num_policy_seeds"] == "2"
    assert row["config_hash"] == "abc" and row["run_dir"] == str(run) and row["git_sha"]
    assert row["pretrained_weights"] == "" and row["action_pretrained"] == "false"  # trained from scratch
    assert all(env.closed for env in envs)
    table = compile_table(load_rows([out]), "table2").set_index("method")
    assert table.loc["dummy", "PushCube_success_rate"] == pytest.approx(100 * 2 / 6, abs=0.05)
    assert table.loc["dummy", "PushCube_rollouts"] == 6


def test_rows_name_the_pretrained_weights_the_run_loaded(scripted_run, tmp_path):
    run, _ = scripted_run
    config_path = run / "run_config.json"
    config = json.loads(config_path.read_text())
    config["pretrained_weights"] = [
        {"path": "/w/video.safetensors", "sha256": "ab" * 32, "action_pretrained": False},
        {"path": "/w/robot.safetensors", "sha256": "cd" * 32, "action_pretrained": True}]
    config_path.write_text(json.dumps(config))
    protocol = Protocol(num_init_states=1, policy_seeds=(0,), max_episode_steps=5, workers=1)
    out = evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False)
    with open(out) as f:
        (row,) = list(csv.DictReader(f))
    assert json.loads(row["pretrained_weights"]) == [
        {"path": "/w/video.safetensors", "sha256": "ab" * 32}, {"path": "/w/robot.safetensors", "sha256": "cd" * 32}]
    assert row["action_pretrained"] == "true"


def test_evaluation_refuses_a_pretrained_file_changed_since_training(scripted_run, tmp_path):
    from harness.checksums import IntegrityError, file_sha256

    run, _ = scripted_run
    weights = tmp_path / "video.safetensors"
    weights.write_bytes(b"the weights training read")
    config_path = run / "run_config.json"
    config = json.loads(config_path.read_text())
    config["pretrained_weights"] = [{"path": str(weights), "sha256": file_sha256(weights), "action_pretrained": False}]
    config_path.write_text(json.dumps(config))
    protocol = Protocol(num_init_states=1, policy_seeds=(0,), max_episode_steps=5, workers=1)
    evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False)  # unchanged: fine
    weights.write_bytes(b"other weights")
    with pytest.raises(IntegrityError, match=r"video\.safetensors has changed since"):
        evaluation.evaluate(run, protocol, tmp_path / "rows2.csv", progress=False)
    assert not (tmp_path / "rows2.csv").exists()


class PromptedAdapter(ScriptedAdapter):
    def __init__(self):
        super().__init__(chunk_len=1)
        self.prompts = []

    def reset(self):
        super().reset()
        self.calls.append(("reset", None))

    def prompt(self, demos):
        self.calls.append(("prompt", tuple(d["seed"] for d in demos)))


class FixedPrompter:
    def __call__(self, policy_seed):
        return [{"seed": 100 + policy_seed}, {"seed": 7}]


def test_a_prompted_rollout_is_prompted_after_reset_and_records_the_demo_seeds():
    env, adapter = FakeEnv(success_after=2), PromptedAdapter()
    result = run_rollout(env, adapter, observe_step, Unnormalize(), 5, policy_seed=3, init_state_seed=20241201,
                         prompter=FixedPrompter())
    assert adapter.calls[:3] == [("reset", None), ("prompt", (103, 7)), ("act", 0)]
    assert json.loads(result["prompt_demo_seeds"]) == [103, 7]


def test_prompt_demos_are_a_function_of_the_policy_seed():
    from harness.protocol import prompt_episodes

    picks = {seed: prompt_episodes(seed, 100, 2) for seed in range(5)}
    assert picks == {seed: prompt_episodes(seed, 100, 2) for seed in range(5)}  # deterministic
    assert all(len(set(p)) == 2 and all(0 <= e < 100 for e in p) for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1  # policy seeds see different prompts
    with pytest.raises(ValueError, match="3 prompt demonstrations"):
        prompt_episodes(0, 2, 3)


def _set_trained_by(run, method_id, method_files):
    config_path = run / "run_config.json"
    config = json.loads(config_path.read_text())
    config.update(method_id=method_id, method_files=method_files)
    config_path.write_text(json.dumps(config))
    return config


def test_rows_carry_the_code_identities_of_training_and_evaluation(scripted_run, tmp_path):
    run, _ = scripted_run
    config = json.loads((run / "run_config.json").read_text())
    assert config["code_id"] and config["method_id"] and "methods/dummy/__init__.py" in config["method_files"]
    protocol = Protocol(num_init_states=1, policy_seeds=(0, 1), max_episode_steps=5, workers=1)
    out = evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False)
    rows = load_rows([out])
    assert (rows["train_method_id"] == config["method_id"]).all() and (rows["method_id"] == config["method_id"]).all()
    assert (rows["train_code_id"] == config["code_id"]).all() and (rows["code_id"] == config["code_id"]).all()
    table = compile_table(rows, "table2").set_index("method")
    assert table.loc["dummy", "PushCube_code_note"] == ""  # one method code: nothing to say


def test_evaluating_other_method_code_warns_names_the_files_and_marks_the_rows(scripted_run, tmp_path, caplog):
    run, _ = scripted_run
    config = json.loads((run / "run_config.json").read_text())
    files = dict(config["method_files"], **{"methods/dummy/__init__.py": "0" * 40})
    _set_trained_by(run, "0123456789ab", files)
    protocol = Protocol(num_init_states=1, policy_seeds=(0, 1), max_episode_steps=5, workers=1)
    out = evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False)
    assert "changed: methods/dummy/__init__.py" in caplog.text and "0123456789ab" in caplog.text
    rows = load_rows([out])
    assert (rows["train_method_id"] == "0123456789ab").all()
    assert (rows["method_id"] == config["method_id"]).all()
    note = compile_table(rows, "table2").set_index("method").loc["dummy", "PushCube_code_note"]
    assert "trained by method code 0123456789ab" in note and config["method_id"] in note


def test_require_same_code_refuses_before_any_rollout(scripted_run, tmp_path):
    run, envs = scripted_run
    config = json.loads((run / "run_config.json").read_text())
    _set_trained_by(run, "0123456789ab", dict(config["method_files"], **{"harness/train.py": "0" * 40}))
    protocol = Protocol(num_init_states=1, policy_seeds=(0,), max_episode_steps=5, workers=1)
    with pytest.raises(evaluation.CodeMismatchError, match="harness/train.py") as err:
        evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False, require_same_code=True)
    assert "Retrain" in str(err.value) and not envs and not (tmp_path / "rows.csv").exists()
    # the same method code is evaluated
    _set_trained_by(run, config["method_id"], config["method_files"])
    evaluation.evaluate(run, protocol, tmp_path / "rows.csv", progress=False, require_same_code=True)
