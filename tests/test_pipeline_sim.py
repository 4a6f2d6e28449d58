"""The whole workflow, for real, at the smoke scale: the smoke DAG end to end.

One session-scoped run of the smoke DAG (workflows/config/smoke.yaml: 2 demos per task, every
smoke method trained a few steps and rolled out twice per task, in a temp folder) feeds every
test here: ManiSkill's motion planner, rendering from states on the real renderer, the check
against ManiSkill's replay_trajectory, the datasets, training, evaluation and the table.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from harness.config import load_config
from harness.paths import REPO_ROOT
from harness.provenance import CodeState
from harness.dataset import DemoDataset
from harness.windows import WindowDataset, WindowSpec

pytestmark = pytest.mark.sim
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SMOKE = load_config("smoke")
SIZE = list(SMOKE.task("PushCube").image_size)
CAP = SMOKE.data["evaluation"]["max_episode_steps"]
ROLLOUTS = SMOKE.data["evaluation"]["num_init_states"] * len(SMOKE.data["evaluation"]["policy_seeds"])


def _snakemake(work, *args):
    return SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), *args, "--config", "scale=smoke"]


@pytest.fixture(scope="session")
def smoke_code_id():
    """The checkout's code identity as the smoke DAG starts (harness/provenance.py): what every
    dataset, run and row it makes must record."""
    return CodeState().code().id


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_code_id):
    """The smoke DAG's default target (datasets, both tables, PAR's figures), as the README
    runs it, in an empty working folder."""
    work = tmp_path_factory.mktemp("dag")
    proc = subprocess.run(_snakemake(work, "--cores", "2"), capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (work / "outputs").rglob("*.log"))
        pytest.fail(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{logs}")
    return work / "outputs" / "smoke", SMOKE


@pytest.mark.parametrize("task", SMOKE.tasks)
def test_planned_demos_and_report(smoke_run, task):
    out, _ = smoke_run
    report = json.loads((out / "demos" / task / "plan_report.json").read_text())
    assert report["num_demos"] == 2 and len(report["succeeded_seeds"]) == 2
    assert report["succeeded_seeds"][0] >= 0 and max(report["succeeded_seeds"]) < 20241201
    assert set(report["succeeded_seeds"]).isdisjoint(int(s) for s in report["failed_seeds"])
    assert all(30 < n < 400 for n in report["episode_lengths"])
    assert (out / "logs" / "plan_demos" / f"{task}.log").exists()
    assert (out / "benchmarks" / "plan_demos" / f"{task}.tsv").exists()


@pytest.mark.parametrize("task", SMOKE.tasks)
def test_dataset_contents(smoke_run, smoke_code_id, task):
    out, cfg = smoke_run
    ds = DemoDataset(out / "datasets" / f"{task}.h5",
                     expect={"control_mode": "pd_joint_pos", "image_size": SIZE,
                             "camera": "render_camera", "task": task})
    ds.verify()
    report = json.loads((out / "demos" / task / "plan_report.json").read_text())
    assert ds.seeds.tolist() == report["succeeded_seeds"]
    assert ds.num_steps.tolist() == report["episode_lengths"]
    assert ds.meta["instruction"] == cfg.task(task).spec.instruction
    assert ds.meta["scale"] == "smoke" and ds.meta["config_hash"] == cfg.config_hash()
    assert ds.meta["versions"]["mani_skill"] == "3.0.1" and ds.meta["git_sha"]
    assert ds.meta["code_id"] == report["code_id"] == smoke_code_id  # the code that made it
    assert ds.actions.shape[1] == 8 and ds.qpos.shape[1] == 9
    frames = ds.episode_frames(0)
    assert frames.shape[1:] == (*SIZE, 3) and frames.std() > 10
    assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # the scene changed
    # pd_joint_pos: after each action the arm joints move towards the commanded positions
    rows = slice(int(ds.obs_start[0]) + 1, int(ds.obs_start[0]) + int(ds.num_steps[0]) + 1)
    tracking = np.abs(ds.qpos[rows, :7] - ds.actions[: ds.num_steps[0], :7]).mean()
    assert tracking < 0.05, tracking


@pytest.mark.parametrize("task", SMOKE.tasks)
def test_rendering_from_states_matches_replay_trajectory(smoke_run, task):
    out, _ = smoke_run
    check = json.loads((out / "datasets" / f"{task}.render_check.json").read_text())
    assert check["passed"] and check["image_size"] == SIZE
    episode = check["episodes"][0]
    assert episode["frames"] > 30 and episode["mismatches_at_identical_poses"] == []
    # replay_trajectory re-simulates each step; early steps reproduce the recorded poses
    assert episode["frames_with_identical_poses"] >= 10


def test_demos_plan_into_a_folder_whose_name_holds_dot_h5(tmp_path):
    """`mktemp -d` once made /tmp/tmp.h5KEHdg6LN: ManiSkill's RecordEpisode derives its JSON
    path by replacing every ".h5" of the h5 file's path, so the plan failed writing into a
    folder that does not exist (CI, 2026-12-07). The JSON lands next to the h5, whole."""
    from harness.demos import plan_demos

    out = tmp_path / "tmp.h5KEHdg6LN" / "push"
    report = plan_demos(SMOKE.task("PushCube"), out, num_demos=1, progress=False)
    info = json.loads((out / "trajectories.json").read_text())
    assert report["num_demos"] == 1 and len(info["episodes"]) == 1
    assert info["episodes"][0]["reset_kwargs"]["options"] == {"reconfigure": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp.h5KEHdg6LN"]


@pytest.mark.parametrize("task", SMOKE.tasks)
def test_planned_trajectories_replay_in_maniskill_from_their_json_alone(smoke_run, task, tmp_path):
    """ManiSkill's own replay_trajectory, given only the planned files, re-runs every plan's
    actions from its seed (no recorded states) and each one succeeds again: the JSON says how
    each episode was reset (a freshly built scene) and which camera at which size renders it."""
    out, _ = smoke_run
    src = out / "demos" / task / "trajectories.h5"
    info = json.loads(src.with_suffix(".json").read_text())
    assert all(ep["reset_kwargs"]["options"] == {"reconfigure": True} and ep["reset_kwargs"]["seed"] == ep["episode_seed"]
               for ep in info["episodes"])
    height, width = SIZE
    assert info["env_info"]["env_kwargs"]["human_render_camera_configs"] == {"width": width, "height": height}
    for suffix in (".h5", ".json"):
        (tmp_path / f"plan{suffix}").write_bytes(src.with_suffix(suffix).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "mani_skill.trajectory.replay_trajectory",
                           "--traj-path", str(tmp_path / "plan.h5"), "--sim-backend", "physx_cpu"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(info["episodes"])
    assert f"Replayed {n} episodes, {n}/{n}=100.00% demos saved" in proc.stdout, proc.stdout[-2000:]


def test_first_frame_equals_the_evaluation_observation(smoke_run):
    """Dataset frame 0 of a demo == what an evaluation sees after env.reset(seed): train and
    test images come from one rendering path."""
    from harness.dataset import decode_image, encode_image
    from harness.sim import capture_rgb, make_env, robot_qpos

    out, cfg = smoke_run
    task = cfg.task("PickCube")
    ds = DemoDataset(out / "datasets" / "PickCube.h5")
    env = make_env(task.spec.env_id, task.control_mode, task.camera, task.image_size)
    try:
        env.reset(seed=int(ds.seeds[1]))
        seen = capture_rgb(env, task.camera)
        # stored through the dataset's codec (smoke: JPEG), the frame is the same byte for byte
        stored = decode_image(encode_image(seen, ds.meta["image_codec"], ds.meta["jpeg_quality"] or 95))
        assert (stored == ds.frame(int(ds.obs_start[1]))).all()
        np.testing.assert_allclose(robot_qpos(env), ds.qpos[ds.obs_start[1]], atol=1e-6)
    finally:
        env.close()


def test_training_windows_from_a_real_dataset(smoke_run):
    out, _ = smoke_run
    ds = DemoDataset(out / "datasets" / "StackCube.h5")
    wd = WindowDataset(ds, WindowSpec(obs_history=2, obs_stride=8, action_chunk_len=8,
                                      num_action_chunks=2, action_offset=-8))
    s = wd[len(wd) - 1]
    assert s["frames"].shape == (2, *SIZE, 3) and s["actions"].shape == (2, 8, 8)
    assert s["action_is_pad"][1, 1:].all() and not s["action_is_pad"][0].any()


def test_rerun_is_a_no_op(smoke_run):
    out, _ = smoke_run
    work = out.parent.parent
    proc = subprocess.run(_snakemake(work, "-n"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize("method", ["act", "par"])
def test_a_grid_cell_from_the_smoke_dag(smoke_run, tmp_path, method):
    """`grid-cell` on a cell the DAG has made: Snakemake has nothing left to do, the probe runs,
    and the cell holds the DAG's rows, their identities, the dataset hashes, each job's cost and
    (PAR) the task's Figs. 4-6; grid-report draws Fig. 4 from it."""
    from harness import grid

    out, cfg = smoke_run
    folder = tmp_path / "grid"
    cell = grid.run_cell(cfg, method, "PushCube", folder, workdir=out.parent.parent, allow_dirty=True,
                         log=lambda *_: None)
    assert "Nothing to be done" in (out / "logs" / "grid" / method / "PushCube.snakemake.log").read_text()
    assert (cell / "rollouts.csv").read_bytes() == (out / "eval" / method / "PushCube.csv").read_bytes()
    record = json.loads((cell / grid.CELL_FILE).read_text())
    assert record["rollouts"] == ROLLOUTS and record["method_id"] == CodeState().method(method).id
    assert record["datasets"] == {"train": grid.dataset_hash(out / "datasets" / "PushCube.h5"),
                                  "validation": grid.dataset_hash(out / "datasets" / "PushCube.val.h5")}
    assert record["jobs"]["train"]["max_rss_mb"] > 0 and record["jobs"]["probe"]["cpu_seconds"] > 0
    # evaluation.one_job_per_task: the task's evaluation job is one job of every cell, counted once
    assert json.loads((folder / grid.GRID_FILE).read_text())["shared_jobs"]["evaluate_task/PushCube"]["seconds"] > 0
    assert json.loads((cell / "probe.json").read_text())["method_id"] == record["method_id"]
    assert (cell / "train_log.csv").exists() and (cell / "probe.md").exists()
    status = {(s.method, s.task): s for s in grid.cell_status(folder, cfg, grid.current_pin(cfg))}
    assert status[method, "PushCube"].status == "done" and status[method, "PushCube"].current
    assert status["dp", "PushCube"].status == "missing"
    assert "render_dataset/PushCube" in json.loads((folder / grid.GRID_FILE).read_text())["shared_jobs"]
    assert set(record["files"]) == {str(p.relative_to(cell)) for p in cell.rglob("*") if p.is_file()}
    if method == "par":
        figures = {str(p.relative_to(cell / "figures")) for p in (cell / "figures").rglob("*.*")}
        assert {"fig4/PushCube.png", "fig4/PushCube.npz", "fig5/PushCube.png", "fig6/PushCube.png"} <= figures
        assert record["jobs"]["figures"]["jobs"] == 3  # predicted frames, attention map, failure case
        assert folder / "figures" / "fig4.png" in grid.grid_report(folder, cfg)


def test_table2_from_the_rollouts(smoke_run):
    import pandas as pd

    out, cfg = smoke_run
    results = out.parent.parent / "results" / "smoke"  # a scale's tables are under its name
    table = pd.read_csv(results / "table2.csv", dtype={"config_hash": str, "git_sha": str}).set_index("method")
    assert list(table.index) == ["random", "act", "bc_t", "bc_t_gmm", "dp", "dp_unet", "icrt", "rdt", "par",
                                 "lerobot_vqbet"]
    assert table["from_scratch"].all() and not table["action_pretrained"].any()  # smoke: random init
    for task in SMOKE.tasks:
        assert (table[f"{task}_rollouts"] == ROLLOUTS).all()
        assert table[f"{task}_success_rate"].between(0, 100).all()
    assert table.loc["act", "paper_PushCube"] == 76 and (table["scale"] == "smoke").all()
    assert (table["config_hash"] == cfg.config_hash()).all()
    assert (table["git_sha"].str.len() >= 40).all()
    # one code trained and evaluated every smoke cell: no cell is marked
    assert (table[[f"{task}_code_note" for task in SMOKE.tasks]].fillna("") == "").all().all()
    assert (table["method_id"] == table["train_method_id"]).all()
    table3 = pd.read_csv(results / "table3.csv").set_index("method")
    assert list(table3.index) == ["random", "par_noar", "par_discrete", "par"]
    assert table3.loc["par_noar", "paper_PushCube"] == 29.6 and table3.loc["par", "paper_PickCube"] == 72.8


@pytest.mark.parametrize("method", ["act", "bc_t", "bc_t_gmm", "dp", "dp_unet", "icrt", "rdt", "par", "par_noar",
                                    "par_discrete"])
def test_runs_and_rollout_rows(smoke_run, smoke_code_id, method):
    import pandas as pd

    out, cfg = smoke_run
    run = out / "runs" / method / "PushCube"
    config = json.loads((run / "run_config.json").read_text())
    assert config["scale"] == "smoke" and config["dataset_meta"]["task"] == "PushCube"
    assert (run / "train_log.csv").read_text().splitlines()[0].startswith("step,loss,lr")
    # no unit of a tanh/sigmoid (BC-T's heads) saturated on the training windows of any task's
    # smoke run, at any checkpoint (harness/saturation.py)
    for task in cfg.tasks:
        log = pd.read_csv(out / "runs" / method / task / "train_log.csv", keep_default_na=False, dtype=str)
        assert (log["saturated_units"] == "").all(), (task, log["saturated_units"].tolist())
    rows = pd.read_csv(out / "eval" / method / "PushCube.csv", keep_default_na=False)
    assert len(rows) == ROLLOUTS and set(rows["init_state_seed"]) == set(SMOKE.protocol("PushCube").init_state_seeds)
    assert (rows["max_episode_steps"] == CAP).all() and (rows["episode_len"] <= CAP).all()
    assert (rows["control_mode"] == "pd_joint_pos").all() and (rows["camera"] == "render_camera").all()
    assert rows["git_sha"].str.len().min() >= 40 and json.loads(rows["versions"][0])["mani_skill"] == "3.0.1"
    assert (rows["train_git_sha"] == config["git_sha"]).all() and len(config["git_sha"]) >= 40
    assert (rows["train_method_id"] == config["method_id"]).all() and (rows["method_id"] == config["method_id"]).all()
    assert (rows["train_code_id"] == config["code_id"]).all() and config["code_id"] == smoke_code_id
    # success_step is set exactly when the rollout succeeded
    assert ((rows["success"] == 1) == (rows["success_step"] != "")).all()
    # every smoke model starts from random weights: no pretrained file, none action-pretrained
    assert config["pretrained_weights"] == [] and (rows["pretrained_weights"] == "").all()
    assert (rows["action_pretrained"].astype(str).str.lower() == "false").all()  # pandas reads it as bool
    # ICRT is prompted with one training demo per policy seed, recorded in every row; the rest none
    if method == "icrt":
        demo_seeds = set(DemoDataset(out / "datasets" / "PushCube.h5").seeds.tolist())
        prompts = {p: json.loads(s) for p, s in zip(rows["policy_seed"], rows["prompt_demo_seeds"])}
        assert all(len(seeds) == 1 and set(seeds) <= demo_seeds for seeds in prompts.values())
        assert len(set(zip(rows["policy_seed"], rows["prompt_demo_seeds"]))) == len(prompts)  # one per policy seed
    else:
        assert (rows["prompt_demo_seeds"] == "").all()


def test_par_predicted_frames_pair_with_the_executed_steps(smoke_run, tmp_path, monkeypatch):
    from harness.figures import FigureError, prediction_figure

    out, _ = smoke_run
    monkeypatch.chdir(out.parent.parent)  # run folders name their dataset relative to the workflow
    summary = prediction_figure(out / "runs" / "par" / "PushCube", 0, 20241201, 16, tmp_path / "fig.png")
    # one prediction per 8-action chunk, each of the frame after its chunk ran
    assert summary["targets"] == [8, 16] and not summary["success"]
    assert len(summary["psnr_predicted_db"]) == len(summary["psnr_repeat_last_db"]) == 2
    frames = np.load(tmp_path / "fig.npz")
    par_size = json.loads((out / "runs" / "par" / "PushCube" / "run_config.json").read_text())[
        "method_config"]["image_size"]  # PAR's smoke preset predicts smaller frames than it sees
    assert frames["step"].tolist() == [0, 8] and frames["predicted"].shape == (2, *par_size, 3)
    assert frames["executed"].shape == (2, *SIZE, 3)
    # the second prediction was made at the step the first one was of
    assert (frames["source"][1] == frames["executed"][0]).all()
    assert not (frames["executed"][0] == frames["source"][0]).all()  # the robot moved
    assert (tmp_path / "fig.png").stat().st_size > 0 and json.loads((tmp_path / "fig.json").read_text())["task"] == "PushCube"
    with pytest.raises(FigureError, match="does not predict frames"):
        prediction_figure(out / "runs" / "act" / "PushCube", 0, 20241201, 16, tmp_path / "act.png")


def test_the_smoke_scale_writes_no_paper_scale_result(smoke_run):
    out, _ = smoke_run
    results = out.parent.parent / "results"
    assert sorted(p.name for p in results.iterdir()) == ["smoke"]  # not results/table2.csv


def test_the_dag_made_pars_figures(smoke_run):
    import pandas as pd

    out, _ = smoke_run
    results = out.parent.parent / "results" / "smoke"
    figures = results / "figures"
    for task in SMOKE.tasks:
        assert (figures / "fig4" / f"{task}.png").stat().st_size > 0
        assert json.loads((figures / "fig4" / f"{task}.json").read_text())["task"] == task
    assert (figures / "fig4.png").stat().st_size > 0
    # Fig. 5 from the first task's first protocol rollout, its own passes: one map per act call
    fig5 = json.loads((figures / "fig5" / "PushCube.json").read_text())
    assert fig5["policy_seed"] == 0 and fig5["init_state_seed"] == 20241201 and fig5["calls"] == CAP // 8
    assert fig5["key_groups"][0] == "text" and fig5["key_groups"][-2:] == ["O_n", "A_n"]
    assert abs(sum(fig5["token_level_mean"]) - 1) < 1e-3
    # Fig. 6 replays the evaluation's first failure, which fails again
    rollouts = pd.read_csv(out / "eval" / "par" / "PushCube.csv").sort_values(["policy_seed", "init_state_seed"])
    first = rollouts[rollouts["success"] == 0].iloc[0]
    fig6 = json.loads((figures / "fig6" / "PushCube.json").read_text())
    assert fig6["failure"] == {"policy_seed": int(first["policy_seed"]), "init_state_seed": int(first["init_state_seed"])}
    assert fig6["success_on_replay"] is False
    for table in ("table2", "table3"):
        for plot in ("success.png", "success.pdf", "outcomes.png", "outcomes.pdf", "training.png"):
            assert (figures / f"{table}_{plot}").stat().st_size > 0, plot


def test_the_dag_made_table1_and_the_reproduction_report(smoke_run):
    import pandas as pd

    out, _ = smoke_run
    results = out.parent.parent / "results" / "smoke"
    table1 = pd.read_csv(results / "table1.csv", keep_default_na=False)
    assert set(table1["method"]) == set(SMOKE.data["methods"])
    par = table1[table1["method"] == "par"].set_index("module")
    # text: the columns are empty where a method has no reference
    assert int(par.loc["Total", "parameters"]) == 663_269_667 and int(par.loc["Total", "reference_parameters"]) == 663_200_000
    assert float(par.loc["Causal-Transformer", "reference_M"]) == 608.7
    report = pd.read_csv(results / "reproduction.csv", keep_default_na=False)
    assert len(report) == len(SMOKE.tasks) * (len(SMOKE.data["methods"]) + 2)  # random and par in both tables
    assert set(report["verdict"]) <= {"consistent", "below", "above", "no paper number"}
    assert report["reading"].str.startswith(("smoke-scale measurement", "no paper number")).all()
    assert (report.loc[report["method"] != "random", "margin_over_chance"] != "").all()
    assert "| par | PushCube |" in (results / "reproduction.md").read_text()


def test_snakemakes_report_bundles_the_results(smoke_run):
    """The README's report command after a run: one HTML file holding the registered outputs."""
    import shlex

    command = "snakemake --cores 1 --report report.html --config scale=smoke"
    assert command in (REPO_ROOT / "README.md").read_text()
    out, _ = smoke_run
    work = out.parent.parent
    html = work / "report.html"
    words = shlex.split(command)
    proc = subprocess.run(SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), *words[1:]],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = html.read_text(errors="replace")
    for name in ("table1.csv", "reproduction.md", "table2_success.png", "fig5", "fig6"):
        assert name in text, name


def test_rollouts_do_not_depend_on_the_number_of_workers(smoke_run, tmp_path, monkeypatch):
    """The smoke DAG rolls out in one process; the same rollouts shared by two worker
    processes give the same rows (each rollout's RNG depends only on its seeds)."""
    import pandas as pd

    from harness.evaluate import evaluate

    out, cfg = smoke_run
    monkeypatch.chdir(out.parent.parent)
    protocol = cfg.protocol("PushCube")
    assert protocol.workers == 1
    # two initial states x two policy seeds, so that each of two workers gets rollouts of both;
    # dp_unet: a smoke run whose rollouts have succeeded (seen in a smoke DAG before)
    protocol = dataclasses.replace(protocol, num_init_states=2, policy_seeds=(0, 1))
    for workers, name in ((1, "one.csv"), (2, "two.csv")):
        evaluate(out / "runs" / "dp_unet" / "PushCube", dataclasses.replace(protocol, workers=workers),
                 tmp_path / name, identity={"config_hash": cfg.config_hash(), "scale": "smoke"}, progress=False)
    one = pd.read_csv(tmp_path / "one.csv", keep_default_na=False)
    two = pd.read_csv(tmp_path / "two.csv", keep_default_na=False)
    assert len(one) == 4
    same = ["policy_seed", "init_state_seed", "success", "success_step", "episode_len"]
    pd.testing.assert_frame_equal(one[same], two[same])


def test_sharded_demos_equal_the_unsharded_build(smoke_run, tmp_path):
    """demos.shard_size: planning in seed ranges and rendering in episode blocks, each its own
    job, merged into the dataset one job builds (the smoke DAG's, unsharded): the same episodes,
    frames, actions and episode table; a damaged block is refused by name."""
    import shutil

    import h5py

    from harness.dataset import DatasetError, DemoDataset
    from harness.shards import merge_datasets

    out, _ = smoke_run
    text = (REPO_ROOT / "workflows" / "config" / "smoke.yaml").read_text()
    config = tmp_path / "sharded.yaml"  # one seed per planning job, one episode per rendering job
    config.write_text(text.replace("  max_failed_seeds: 10\n", "  max_failed_seeds: 2\n  shard_size: 1\n"))
    work = tmp_path / "work"
    work.mkdir()
    cmd = SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), "--cores", "2",
                       "outputs/smoke/datasets/PushCube.h5", "--config", f"config_file={config}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted((work / "outputs" / "smoke" / "demos" / "PushCube" / "shards").iterdir())
    blocks = sorted((work / "outputs" / "smoke" / "datasets" / "shards" / "PushCube").glob("*.h5"))
    assert [p.name for p in shards] == ["seeds_0_1", "seeds_1_2", "seeds_2_3", "seeds_3_4"] and len(blocks) == 2
    sharded = DemoDataset(work / "outputs" / "smoke" / "datasets" / "PushCube.h5")
    whole = DemoDataset(out / "datasets" / "PushCube.h5")
    sharded.verify()
    assert sharded.seeds.tolist() == whole.seeds.tolist() == [0, 1]  # the first successful seeds
    for key in ("num_steps", "qpos", "actions", "frame_offsets"):
        np.testing.assert_array_equal(getattr(sharded, key), getattr(whole, key), err_msg=key)
    assert [e.frames for e in sharded.episodes()] == [e.frames for e in whole.episodes()]
    assert sharded.meta["failed_seeds"] == whole.meta["failed_seeds"]
    plans = [json.loads((d / "outputs" / "smoke" / "demos" / "PushCube" / "plan_report.json").read_text())
             for d in (work, out.parent.parent)]
    for key in ("succeeded_seeds", "failed_seeds", "episode_lengths"):
        assert plans[0][key] == plans[1][key], key
    damaged = tmp_path / blocks[1].name
    shutil.copy(blocks[1], damaged)
    with h5py.File(damaged, "r+") as f:  # a changed value under a valid HDF5 checksum
        f["actions"][0, 0] += 1.0
    with pytest.raises(DatasetError, match=damaged.name):
        merge_datasets([blocks[0], damaged], tmp_path / "merged.h5")


def test_sharded_evaluation_equals_the_unsharded_one(smoke_run, tmp_path, monkeypatch):
    """evaluation.init_states_per_job: blocks of initial states gathered into the rollout file
    one job writes, equal in every column but the timing one."""
    import pandas as pd

    from harness.evaluate import evaluate
    from harness.shards import gather_rollouts

    out, cfg = smoke_run
    monkeypatch.chdir(out.parent.parent)
    protocol = dataclasses.replace(cfg.protocol("PushCube"), num_init_states=3, policy_seeds=(0, 1))
    run = out / "runs" / "act" / "PushCube"
    identity = {"config_hash": cfg.config_hash(), "scale": "smoke"}
    evaluate(run, protocol, tmp_path / "whole.csv", identity=identity, progress=False)
    parts = []
    for a, b in ((0, 2), (2, 3)):
        parts.append(tmp_path / f"block_{a}_{b}.csv")
        evaluate(run, protocol, parts[-1], identity=identity, progress=False, init_states=(a, b))
    assert len(pd.read_csv(parts[1])) == 2  # one init state x two policy seeds
    gather_rollouts(parts, tmp_path / "gathered.csv", protocol)
    whole = pd.read_csv(tmp_path / "whole.csv", keep_default_na=False, dtype=str)
    gathered = pd.read_csv(tmp_path / "gathered.csv", keep_default_na=False, dtype=str)
    assert len(whole) == 6
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), gathered.drop(columns="seconds"))


def test_runs_evaluated_together_equal_each_evaluated_alone(smoke_run, tmp_path, monkeypatch):
    """evaluation.one_job_per_task: several runs of a task in one process (one env, reused)
    write the rows each run's own evaluation writes, in every column but the timing one; a run
    that fails is named and the others' rows are still written."""
    import pandas as pd

    from harness.evaluate import EvaluationError, evaluate, evaluate_runs

    out, cfg = smoke_run
    monkeypatch.chdir(out.parent.parent)
    protocol = dataclasses.replace(cfg.protocol("PushCube"), num_init_states=2, policy_seeds=(0, 1))
    runs = [out / "runs" / m / "PushCube" for m in ("par", "act", "dp")]
    identity = {"config_hash": cfg.config_hash(), "scale": "smoke"}
    alone = [evaluate(run, protocol, tmp_path / f"alone_{run.parent.name}.csv", identity=identity, progress=False)
             for run in runs]
    together = evaluate_runs(runs, protocol, [tmp_path / f"together_{run.parent.name}.csv" for run in runs],
                             identity=identity, progress=False)
    for a, b in zip(alone, together):
        a, b = (pd.read_csv(p, keep_default_na=False, dtype=str).drop(columns="seconds") for p in (a, b))
        assert len(a) == 4
        pd.testing.assert_frame_equal(a, b)
    # smoke policies rarely succeed, so the rows alone say little: a rollout's every frame on an
    # env another run used first equals the frames on a fresh env
    from harness.evaluate import EnvPool, open_rollout, run_rollout, task_info_of

    info = task_info_of(DemoDataset(out / "datasets" / "PushCube.h5").meta)
    cap, seed = protocol.max_episode_steps, protocol.init_state_seeds[1]

    def frames(run, pool, policy_seed=1):
        adapter, env, observe, actions = open_rollout(run, info, cap, pool)
        return np.stack(run_rollout(env, adapter, observe, actions, cap, policy_seed, seed, record=True)["frames"])

    reused, fresh = EnvPool(), EnvPool()
    try:
        frames(runs[0], reused, policy_seed=0)
        np.testing.assert_array_equal(frames(runs[1], reused), frames(runs[1], fresh))
    finally:
        reused.close()
        fresh.close()
    missing = tmp_path / "no_such_run"
    with pytest.raises(EvaluationError, match=f"(?s)1 of 2 runs failed.*{missing.name}"):
        evaluate_runs([missing, runs[1]], protocol, [tmp_path / "x.csv", tmp_path / "act_again.csv"],
                      identity=identity, progress=False)
    assert (tmp_path / "act_again.csv").exists() and not (tmp_path / "x.csv").exists()
    with pytest.raises(EvaluationError, match="one --out per --run"):
        evaluate_runs(runs, protocol, [tmp_path / "y.csv"], progress=False)


def test_a_killed_dag_completes_with_rerun_incomplete_and_redoes_nothing_finished(tmp_path):
    """A DAG killed mid-job (SIGKILL to Snakemake and its jobs, as a lost node) leaves its lock
    and an incomplete output; after `--unlock`, `--rerun-incomplete` redoes that job and the
    rest, not the jobs that had finished."""
    import signal
    import time

    text = (REPO_ROOT / "workflows" / "config" / "smoke.yaml").read_text()
    config = tmp_path / "sharded.yaml"  # several small jobs in a row: one planning job per seed
    # without warm start: a SIGKILL of the process group is then the jobs' end at once (with it, the
    # zygote ends them a moment later, when it sees their clients gone)
    config.write_text(text.replace("  max_failed_seeds: 10\n", "  max_failed_seeds: 2\n  shard_size: 1\n")
                      .replace("  warm_start: true\n", "  warm_start: false\n"))
    assert "warm_start: false" in config.read_text()
    work = tmp_path / "work"
    work.mkdir()
    shards = work / "outputs" / "smoke" / "demos" / "PushCube" / "shards"
    cmd = SNAKEMAKE + ["-s", str(REPO_ROOT / "Snakefile"), "-d", str(work), "--cores", "1",
                       "outputs/smoke/demos/PushCube/plan_report.json", "--config", f"config_file={config}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300

    def caught_mid_job():  # a shard finished, and another one has written part of its output
        done = list(shards.glob("*/plan_report.json")) if shards.exists() else []
        partial = [d for d in shards.glob("*") if (d / "trajectories.h5").exists()
                   and not (d / "plan_report.json").exists()] if shards.exists() else []
        return done and partial

    while time.time() < deadline and proc.poll() is None and not caught_mid_job():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert caught_mid_job(), "the DAG ended before it could be killed mid-job"
    finished = sorted(p.parent.name for p in shards.glob("*/plan_report.json"))
    assert finished and len(finished) < 4, finished
    stamps = {name: (shards / name / "trajectories.h5").stat().st_mtime_ns for name in finished}
    # a kill leaves Snakemake's lock behind: --unlock (as its message says), then the run again
    assert subprocess.run(cmd + ["--unlock"], capture_output=True, text=True).returncode == 0
    plain = subprocess.run(cmd, capture_output=True, text=True)  # without the flag Snakemake refuses
    assert plain.returncode != 0 and "incomplete" in (plain.stdout + plain.stderr).lower()
    rerun = subprocess.run(cmd + ["--rerun-incomplete"], capture_output=True, text=True)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert {name: (shards / name / "trajectories.h5").stat().st_mtime_ns for name in finished} == stamps
    ran = {line.split("seeds_")[1].split("/")[0] for line in out.splitlines() if "output:" in line and "seeds_" in line}
    assert not ran & {name.removeprefix("seeds_") for name in finished}, (ran, finished)
    assert len(list(shards.glob("*/plan_report.json"))) == 4
    assert (work / "outputs" / "smoke" / "demos" / "PushCube" / "plan_report.json").exists()
