"""The whole workflow, for real, at a tiny scale: the smoke DAG end to end.

One session-scoped run of `snakemake results/tiny/table2.csv` (2 demos per task at 32x32, every
smoke method trained a few steps and rolled out twice per task, in a temp folder) feeds every
test here: ManiSkill's motion planner, rendering from states on the real renderer, the check
against ManiSkill's replay_trajectory, the datasets, training, evaluation and the table.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.config import REPO_ROOT, load_config
from harness.dataset import DemoDataset
from harness.windows import WindowDataset, WindowSpec

pytestmark = pytest.mark.sim
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SIZE = [32, 32]
TINY = {
    "scale": "tiny",
    "tasks": ["PushCube", "PickCube", "StackCube"],
    "task_overrides": {t: {"image_size": SIZE} for t in ("PushCube", "PickCube", "StackCube")},
    "demos": {"num_demos": 2, "max_failed_seeds": 10, "verify_episodes": 1, "image_codec": "png"},
    "methods": ["act", "dp", "dp_unet", "par", "par_noar", "par_discrete"],
    "method_scale": "smoke",
    "training": {"seed": 0, "device": "cpu"},
    "evaluation": {"num_init_states": 2, "policy_seeds": [0], "max_episode_steps": 8, "workers": 1},
    "compute": {"wants_gpu": False},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("dag")
    cfg_path = work / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    cmd = SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
                       "results/tiny/table2.csv", "results/tiny/table3.csv",
                       "--config", f"config_file={cfg_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (work / "outputs").rglob("*.log"))
        pytest.fail(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{logs}")
    return work / "outputs" / "tiny", load_config("tiny", cfg_path)


@pytest.mark.parametrize("task", TINY["tasks"])
def test_planned_demos_and_report(tiny_run, task):
    out, _ = tiny_run
    report = json.loads((out / "demos" / task / "plan_report.json").read_text())
    assert report["num_demos"] == 2 and len(report["succeeded_seeds"]) == 2
    assert report["succeeded_seeds"][0] >= 0 and max(report["succeeded_seeds"]) < 20241201
    assert set(report["succeeded_seeds"]).isdisjoint(int(s) for s in report["failed_seeds"])
    assert all(30 < n < 400 for n in report["episode_lengths"])
    assert (out / "logs" / "plan_demos" / f"{task}.log").exists()
    assert (out / "benchmarks" / "plan_demos" / f"{task}.tsv").exists()


@pytest.mark.parametrize("task", TINY["tasks"])
def test_dataset_contents(tiny_run, task):
    out, cfg = tiny_run
    ds = DemoDataset(out / "datasets" / f"{task}.h5",
                     expect={"control_mode": "pd_joint_pos", "image_size": SIZE,
                             "camera": "render_camera", "task": task})
    ds.verify()
    report = json.loads((out / "demos" / task / "plan_report.json").read_text())
    assert ds.seeds.tolist() == report["succeeded_seeds"]
    assert ds.num_steps.tolist() == report["episode_lengths"]
    assert ds.meta["instruction"] == cfg.task(task).spec.instruction
    assert ds.meta["scale"] == "tiny" and ds.meta["config_hash"] == cfg.config_hash()
    assert ds.meta["versions"]["mani_skill"] == "3.0.1" and ds.meta["git_sha"]
    assert ds.actions.shape[1] == 8 and ds.qpos.shape[1] == 9
    frames = ds.episode_frames(0)
    assert frames.shape[1:] == (32, 32, 3) and frames.std() > 10
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the scene changed
    # pd_joint_pos: after each action the arm joints move towards the commanded positions
    rows = slice(int(ds.obs_start[0]) + 1, int(ds.obs_start[0]) + int(ds.num_steps[0]) + 1)
    tracking = np.abs(ds.qpos[rows, :7] - ds.actions[: ds.num_steps[0], :7]).mean()
    assert tracking < 0.05, tracking


@pytest.mark.parametrize("task", TINY["tasks"])
def test_rendering_from_states_matches_replay_trajectory(tiny_run, task):
    out, _ = tiny_run
    check = json.loads((out / "datasets" / f"{task}.render_check.json").read_text())
    assert check["passed"] and check["image_size"] == SIZE
    episode = check["episodes"][0]
    assert episode["frames"] > 30 and episode["mismatches_at_identical_poses"] == []
    # replay_trajectory re-simulates each step; early steps reproduce the recorded poses
    assert episode["frames_with_identical_poses"] >= 10


def test_first_frame_equals_the_evaluation_observation(tiny_run):
    """Dataset frame 0 of a demo == what an evaluation sees after env.reset(seed): train and
    test images come from one rendering path."""
    from harness.sim import capture_rgb, make_env, robot_qpos

    out, cfg = tiny_run
    task = cfg.task("PickCube")
    ds = DemoDataset(out / "datasets" / "PickCube.h5")
    env = make_env(task.spec.env_id, task.control_mode, task.camera, task.image_size)
    try:
        env.reset(seed=int(ds.seeds[1]))
        assert (capture_rgb(env, task.camera) == ds.frame(int(ds.obs_start[1]))).all()
        np.testing.assert_allclose(robot_qpos(env), ds.qpos[ds.obs_start[1]], atol=1e-6)
    finally:
        env.close()


def test_training_windows_from_a_real_dataset(tiny_run):
    out, _ = tiny_run
    ds = DemoDataset(out / "datasets" / "StackCube.h5")
    wd = WindowDataset(ds, WindowSpec(obs_history=2, obs_stride=8, action_chunk_len=8,
                                      num_action_chunks=2, action_offset=-8))
    s = wd[len(wd) - 1]
    assert s["frames"].shape == (2, 32, 32, 3) and s["actions"].shape == (2, 8, 8)
    assert s["action_is_pad"][1, 1:].all() and not s["action_is_pad"][0].any()


def test_rerun_is_a_no_op(tiny_run):
    out, _ = tiny_run
    work = out.parent.parent
    cmd = SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), "-n", "results/tiny/table2.csv",
                       "results/tiny/table3.csv", "--config", f"config_file={work / 'tiny.yaml'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_table2_from_the_rollouts(tiny_run):
    import pandas as pd

    out, cfg = tiny_run
    results = out.parent.parent / "results" / "tiny"  # a scale's tables are under its name
    table = pd.read_csv(results / "table2.csv").set_index("method")
    assert list(table.index) == ["act", "dp", "dp_unet", "par"]
    for task in TINY["tasks"]:
        assert (table[f"{task}_rollouts"] == 2).all()
        assert table[f"{task}_success_rate"].between(0, 100).all()
    assert table.loc["act", "paper_PushCube"] == 76 and (table["scale"] == "tiny").all()
    assert (table["config_hash"] == cfg.config_hash()).all()
    assert (table["git_sha"].str.len() >= 40).all()
    table3 = pd.read_csv(results / "table3.csv").set_index("method")
    assert list(table3.index) == ["par_noar", "par_discrete", "par"]
    assert table3.loc["par_noar", "paper_PushCube"] == 29.6 and table3.loc["par", "paper_PickCube"] == 72.8


@pytest.mark.parametrize("method", ["act", "dp", "dp_unet", "par", "par_noar", "par_discrete"])
def test_runs_and_rollout_rows(tiny_run, method):
    import pandas as pd

    out, cfg = tiny_run
    run = out / "runs" / method / "PushCube"
    config = json.loads((run / "run_config.json").read_text())
    assert config["scale"] == "tiny" and config["dataset_meta"]["task"] == "PushCube"
    assert (run / "train_log.csv").read_text().splitlines()[0].startswith("step,loss,lr")
    rows = pd.read_csv(out / "eval" / method / "PushCube.csv", keep_default_na=False)
    assert len(rows) == 2 and set(rows["init_state_seed"]) == {20241201, 20241202}
    assert (rows["max_episode_steps"] == 8).all() and (rows["episode_len"] <= 8).all()
    assert (rows["control_mode"] == "pd_joint_pos").all() and (rows["camera"] == "render_camera").all()
    assert rows["git_sha"].str.len().min() >= 40 and json.loads(rows["versions"][0])["mani_skill"] == "3.0.1"
    assert (rows["train_git_sha"] == config["git_sha"]).all() and len(config["git_sha"]) >= 40
    # success_step is set exactly when the rollout succeeded
    assert ((rows["success"] == 1) == (rows["success_step"] != "")).all()


def test_par_predicted_frames_pair_with_the_executed_steps(tiny_run, tmp_path, monkeypatch):
    from harness.figures import FigureError, prediction_figure

    out, _ = tiny_run
    monkeypatch.chdir(out.parent.parent)  # run folders name their dataset relative to the workflow
    summary = prediction_figure(out / "runs" / "par" / "PushCube", 0, 20241201, 16, tmp_path / "fig.png")
    # one prediction per 8-action chunk, each of the frame after its chunk ran
    assert summary["targets"] == [8, 16] and not summary["success"]
    assert len(summary["psnr_predicted_db"]) == len(summary["psnr_repeat_last_db"]) == 2
    frames = np.load(tmp_path / "fig.npz")
    assert frames["step"].tolist() == [0, 8] and frames["predicted"].shape == (2, 32, 32, 3)
    # the second prediction was made at the step the first one was of
    assert (frames["source"][1] == frames["executed"][0]).all()
    assert not (frames["executed"][0] == frames["source"][0]).all()  # the robot moved
    assert (tmp_path / "fig.png").stat().st_size > 0 and json.loads((tmp_path / "fig.json").read_text())["task"] == "PushCube"
    with pytest.raises(FigureError, match="does not predict frames"):
        prediction_figure(out / "runs" / "act" / "PushCube", 0, 20241201, 16, tmp_path / "act.png")
