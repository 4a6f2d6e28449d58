"""Bad input to `python -m harness`: every command refuses it in one paragraph that names the
culprit and says what to do (exit 2, no traceback), before any work. Constructed inputs, no
simulator; the merge/gather checks themselves: tests/test_shards.py."""

import json

import h5py
import pytest
from test_evaluate_report import _rows
from test_shards import _block, _blocks, _shard

from harness.cli import main
from harness.protocol import Protocol


def run(capsys, *argv) -> str:
    """The error paragraph of a command that must fail with exit code 2."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one paragraph
    return err


def refused_by_argparse(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def _run_folder(path, task="PushCube"):
    path.mkdir()
    (path / "run_config.json").write_text(json.dumps({"method": "act", "task": task, "dataset": "none.h5"}))
    return path


# --- silently accepted before: now refused ------------------------------------------------------
def test_merge_datasets_refuses_a_block_rendered_at_another_size(tmp_path, capsys):
    small = _block(tmp_path / "episodes_0_2.h5", [0, 1], size=(64, 64))
    big = _block(tmp_path / "episodes_2_4.h5", [2, 3], size=(96, 96))
    err = run(capsys, "merge-datasets", small, big, "--out", tmp_path / "merged.h5")
    assert f"their image_size differs ([64, 64] in {small}; [96, 96] in {big})" in err
    assert f"--episodes 2 4 --out {big}" in err and not (tmp_path / "merged.h5").exists()


def test_gather_rollouts_refuses_blocks_of_two_runs(tmp_path, capsys):
    protocol = Protocol(num_init_states=1, policy_seeds=(0, 1))
    parts = _blocks(tmp_path, protocol, per_block=1, method="act")
    (tmp_path / "dp").mkdir()
    other = _blocks(tmp_path / "dp", protocol, per_block=1, method="dp")
    err = run(capsys, "gather-rollouts", "--scale", "smoke", parts[0], other[0], "--task", "PushCube",
              "--out", tmp_path / "all.csv")
    assert "do not belong together: their method differs ('act' in" in err and "'dp' in" in err


def test_evaluate_refuses_a_task_other_than_the_runs(tmp_path, capsys):
    run_dir = _run_folder(tmp_path / "run")
    err = run(capsys, "evaluate", "--scale", "smoke", "--run", run_dir, "--task", "PickCube",
              "--out", tmp_path / "PickCube.csv")
    assert f"--task PickCube: {run_dir} was trained on PushCube" in err and "Pass --task PushCube" in err
    assert not (tmp_path / "PickCube.csv").exists()
    for command in ("predicted-frames", "attention-map"):  # a figure of the run: its own task too
        err = run(capsys, command, "--scale", "smoke", "--run", run_dir, "--task", "StackCube", "--out",
                  tmp_path / "f.png")
        assert "--task StackCube: " in err and "trained on PushCube" in err


def test_table_refuses_a_rollout_file_whose_last_line_is_cut(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 1, 3)
    path.write_bytes(path.read_bytes()[:-3])  # the last row's config hash cut in the middle
    err = run(capsys, "table", path, "--out", tmp_path / "t.csv")
    assert f"rollout file {path}: its last line (line 4) is cut off" in err and "python -m harness evaluate" in err
    assert not (tmp_path / "t.csv").exists()


def test_plan_demos_refuses_an_empty_or_inverted_seed_range_before_any_work(tmp_path, capsys):
    for a, b in ((4, 2), (3, 3), (0, 20000)):
        err = run(capsys, "plan-demos", "--scale", "smoke", "--task", "PushCube", "--seed-range", a, b,
                  "--out-dir", tmp_path / "plan")
        assert f"--seed-range {a} {b}: the range [START, STOP) must hold something" in err
    assert "PushCube's demo seeds stay below 9000" in err
    assert not (tmp_path / "plan").exists()  # no report left behind


def test_render_dataset_refuses_an_inverted_episode_block(tmp_path, capsys):
    err = run(capsys, "render-dataset", "--scale", "smoke", "--task", "PushCube", "--trajectories",
              tmp_path / "trajectories.h5", "--episodes", 2, 2, "--out", tmp_path / "b.h5")
    assert "--episodes 2 2: the range" in err
    err = run(capsys, "render-dataset", "--scale", "smoke", "--task", "PushCube", "--trajectories",
              tmp_path / "trajectories.h5", "--out", tmp_path / "b.h5")
    assert f"planned trajectories {tmp_path}/trajectories.h5 do not exist. Plan them" in err


# --- tracebacks before: now an error -------------------------------------------------------------
def test_evaluate_refuses_init_states_outside_the_protocol(tmp_path, capsys):
    err = run(capsys, "evaluate", "--scale", "smoke", "--run", tmp_path / "none", "--task", "PushCube",
              "--init-states", 1, 3, "--out", tmp_path / "b.csv")
    assert "--init-states 1 3: a block needs 0 <= START < STOP <= 1" in err


def test_report_refuses_a_duplicated_rollout_naming_it(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 1, 2)
    _rows(path, "act", "", "PushCube", 1, 1)
    err = run(capsys, "report", "--table", f"table2={path}", "--out-csv", tmp_path / "r.csv",
              "--out-md", tmp_path / "r.md")
    assert f"1 rollouts appear twice (same method, task, policy seed and init state; the first: act on PushCube, " \
           f"policy seed 0, init state 20241201, in {path})" in err


def test_a_missing_config_file_is_named(tmp_path, capsys):
    err = run(capsys, "config", "--config-file", tmp_path / "nope.yaml")
    assert f"config file {tmp_path}/nope.yaml (--config-file, or snakemake's --config config_file=) does not exist" in err


def test_memory_refuses_a_method_with_nothing_to_train(capsys):
    err = run(capsys, "memory", "--scale", "smoke", "--method", "random")
    assert "random has nothing to train, so it has no training memory to project" in err


def test_malformed_list_arguments_are_named(tmp_path, capsys):
    err = run(capsys, "report", "--table", "table2", "--out-csv", tmp_path / "r.csv", "--out-md", tmp_path / "r.md")
    assert "--table 'table2': each is NAME=CSV[,CSV...]" in err
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 1, 2)
    err = run(capsys, "plots", path, "--train-logs", "act:PushCube", "--out-dir", tmp_path / "f")
    assert "--train-logs 'act:PushCube': each is METHOD:TASK:PATH" in err
    err = run(capsys, "plots", path, "--out-dir", tmp_path / "f")  # how each rollout ended is not in the rows
    assert f"rollout file {path} has no column episode_len, max_episode_steps" in err
    assert "argument --table: invalid choice: 'table9'" in refused_by_argparse(
        capsys, "table", path, "--table", "table9", "--out", tmp_path / "t.csv")
    assert "argument --workers: 0 is less than 1" in refused_by_argparse(
        capsys, "evaluate", "--run", "r", "--task", "PushCube", "--workers", "0", "--out", tmp_path / "e.csv")


# --- errors with no way out before: now each says how to rebuild -----------------------------------
def test_a_missing_plan_shard_says_how_to_plan_it(tmp_path, capsys):
    shards = [_shard(tmp_path, 0, 3), _shard(tmp_path, 3, 6)]
    (shards[1] / "plan_report.json").unlink()
    err = run(capsys, "merge-plans", "--scale", "smoke", "--task", "PushCube", "--shards", *shards,
              "--out-dir", tmp_path / "plan")
    assert f"plan shard 1 did not finish. Plan it: `python -m harness plan-demos --task PushCube --seed-range 3 6 " \
           f"--out-dir {shards[1]}`" in err


def test_a_corrupt_render_block_says_how_to_render_it(tmp_path, capsys):
    first = _block(tmp_path / "episodes_0_2.h5", [0, 1])
    damaged = _block(tmp_path / "episodes_2_4.h5", [2, 3])
    with h5py.File(damaged, "r+") as f:
        f["actions"][0, 0] += 1.0
    err = run(capsys, "merge-datasets", first, damaged, "--out", tmp_path / "m.h5")
    assert "array actions does not match its checksum. Delete it and render the block again: `python -m harness " \
           f"render-dataset --task <Task> --trajectories <merged plan>/trajectories.h5 --episodes 2 4 --out {damaged}`" in err


def test_a_missing_or_duplicated_evaluation_block_says_what_to_run(tmp_path, capsys):
    protocol = Protocol(num_init_states=4, policy_seeds=(0,))
    parts = _blocks(tmp_path, protocol)
    cfg = tmp_path / "c.yaml"  # the smoke config with 4 initial states
    from harness.paths import CONFIG_DIR

    cfg.write_text((CONFIG_DIR / "smoke.yaml").read_text().replace("num_init_states: 1", "num_init_states: 4"))
    err = run(capsys, "gather-rollouts", "--config-file", cfg, parts[0], "--task", "PushCube",
              "--out", tmp_path / "all.csv")
    assert "evaluate them (`python -m harness evaluate --run runs/act/PushCube --task PushCube --init-states 2 4 " \
           f"--out {tmp_path}/init_states_2_4.csv`" in err
    err = run(capsys, "gather-rollouts", "--config-file", cfg, *parts, parts[1], "--task", "PushCube",
              "--out", tmp_path / "all.csv")
    assert f"the rollout block {parts[1]} is given twice: give each block once" in err


def test_fig4_refuses_a_missing_or_foreign_frames_file_with_the_command_that_makes_it(tmp_path, capsys):
    err = run(capsys, "fig4", tmp_path / "PushCube.npz", "--out", tmp_path / "fig4.png")
    assert f"{tmp_path}/PushCube.npz does not exist. Make it with `python -m harness predicted-frames" in err
    (tmp_path / "PickCube.npz").write_text("not arrays")
    err = run(capsys, "fig4", tmp_path / "PickCube.npz", "--out", tmp_path / "fig4.png")
    assert f"{tmp_path}/PickCube.npz is not the frames of a predicted-frames run" in err


def test_train_refuses_the_held_out_demos_as_its_dataset(tmp_path, capsys):
    from conftest import SYNTH_META, synthetic_episode

    from harness.dataset import write_dataset

    meta = dict(SYNTH_META, image_size=[64, 64], split="validation")
    val = write_dataset(tmp_path / "PushCube.val.h5", [synthetic_episode(9000, 3, size=(64, 64))], meta)
    err = run(capsys, "train", "--scale", "smoke", "--method", "act", "--task", "PushCube", "--dataset", val,
              "--out", tmp_path / "run")
    assert f"--dataset {val} holds held-out validation demos" in err and "pass this one as --val-dataset" in err
    assert not (tmp_path / "run").exists()


def test_merge_datasets_names_a_missing_plan_report_and_how_to_make_it(tmp_path, capsys):
    block = _block(tmp_path / "episodes_0_2.h5", [0, 1])
    err = run(capsys, "merge-datasets", block, "--plan-report", tmp_path / "plan" / "plan_report.json",
              "--out", tmp_path / "m.h5")
    assert f"{tmp_path}/plan/plan_report.json (--plan-report) does not exist. Merge the plan shards first" in err


def test_failure_case_refuses_another_runs_rollouts(tmp_path, capsys):
    run_dir = _run_folder(tmp_path / "run")  # an act run on PushCube
    path = tmp_path / "dp.csv"
    _rows(path, "dp", "", "PushCube", 0, 2)
    err = run(capsys, "failure-case", "--scale", "smoke", "--run", run_dir, "--task", "PushCube", "--rollouts", path,
              "--out", tmp_path / "fig6.png")
    assert f"--rollouts {path} holds rollouts of method dp, and --run {run_dir} is act" in err
