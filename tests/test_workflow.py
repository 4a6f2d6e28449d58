"""The Snakemake workflow's structure: lint, the paper-scale plan, scale separation."""

import subprocess
import sys

import pytest

from harness.paths import REPO_ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(REPO_ROOT)]


def _run(*args, workdir=None):
    command = SNAKEMAKE[:-1] + [str(workdir)] if workdir else SNAKEMAKE
    return subprocess.run(command + list(args), capture_output=True, text=True)


def test_lint_is_clean():
    proc = _run("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def _job_counts(out: str) -> dict[str, int]:
    """Snakemake's dry-run job table: {rule: jobs}."""
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_paper_scale_plans_three_tasks_and_warns_about_the_gpu():
    proc = _run("-n", "--config", "scale=paper")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for task in ("PushCube", "PickCube", "StackCube"):
        assert f"outputs/paper/datasets/{task}.h5" in out
    # the paper scale's demos are cluster jobs: 24 planning ranges of 50 seeds and 20 rendering
    # blocks of 50 episodes per task, merged per task
    counts = _job_counts(out)
    assert counts["plan_shard"] == 3 * 24 and counts["merge_plans"] == 3
    assert counts["render_shard"] == 3 * 20 and counts["merge_dataset"] == 3
    assert "outputs/paper/demos/PushCube/shards/seeds_1150_1200/plan_report.json" in out
    assert "outputs/paper/datasets/shards/StackCube/episodes_950_1000.h5" in out
    if "GPU not found" in out:
        assert "plans training for a GPU and none is present" in out


def test_scales_write_to_separate_folders(tmp_path):
    smoke = _run("-n", "--config", "scale=smoke", workdir=tmp_path).stdout
    reduced = _run("-n", "--config", "scale=reduced", workdir=tmp_path).stdout
    assert "outputs/smoke/" in smoke and "outputs/reduced/" not in smoke
    assert "outputs/reduced/" in reduced and "outputs/smoke/" not in reduced
    assert "results/smoke/table2.csv" in smoke and "results/reduced/table2.csv" in reduced


def test_bad_scale_fails_in_one_line_with_the_known_scales():
    proc = _run("-n", "--config", "scale=huge")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: unknown scale 'huge': no workflows/config/huge.yaml; known scales: paper, reduced, rehearsal, smoke")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_config_key_is_named_not_ignored():
    proc = _run("-n", "--config", "scales=smoke")  # one letter off: must not plan the paper scale
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out and "Building DAG" not in out
    assert "unknown --config key(s) 'scales'; known keys: scale" in out and "config_file" in out


def test_unknown_method_in_a_config_file_is_named(tmp_path):
    import yaml

    from harness.paths import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    data["methods"] = ["act", "parr"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = _run("-n", "--config", f"config_file={cfg}")
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "methods: unknown method 'parr'; known: act" in proc.stderr


def test_headline_command_plans_the_paper_dag_on_a_fresh_clone(tmp_path):
    # an empty working folder is what a fresh clone has below results/ and outputs/
    proc = _run("-n", "--cores", "8", "results/table2.csv", workdir=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Nothing to be done" not in out
    from harness.config import load_config

    paper = load_config("paper")
    counts = _job_counts(out)
    table2_methods = [m for m in paper.data["methods"] if m not in ("par_noar", "par_discrete")]
    # each (method, task) is evaluated in 5 blocks of 5 initial states, gathered into one file
    assert counts["train"] == counts["gather_rollouts"] == 3 * len(table2_methods)
    assert counts["evaluate_block"] == 5 * 3 * len(table2_methods)
    assert counts["table"] == 1 and "outputs/paper/eval/par/StackCube.csv" in out
    assert "outputs/paper/eval/par/StackCube/init_states_20_25.csv" in out
    # PAR trains from NOVA-VAE latents made once per task; each trained method's training memory
    # is projected before its GPU jobs are sized (the chance level trains nothing)
    assert counts["features"] == 3 and counts["memory"] == len(table2_methods) - 1


def test_gpu_training_jobs_are_sized_by_the_memory_projection(tmp_path):
    projection = tmp_path / "outputs" / "paper" / "memory" / "act.json"
    projection.parent.mkdir(parents=True)
    projection.write_text('{"projections": [{"resources": {"mem_mb": 5555, "gpu_mem_mb": 7777}}]}')
    proc = _run("-n", "-p", "--cores", "8", "results/table2.csv",
                *(f"results/figures/fig{n}/PushCube.png" for n in (4, 5, 6)), workdir=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    jobs = out.split("\nrule ")
    act = [j for j in jobs if j.startswith("train:") and "wildcards: method=act," in j]
    dp = [j for j in jobs if j.startswith("train:") and "wildcards: method=dp," in j]
    par = [j for j in jobs if j.startswith("train:") and "wildcards: method=par," in j]
    assert len(act) == len(dp) == len(par) == 3
    assert all("gpu_mem_mb=7777" in j and "mem_mb=5555" in j and "gpu=1" in j for j in act)
    assert all("outputs/paper/memory/dp.json" in j for j in dp)  # made first by rule memory
    assert all("--features outputs/paper/features/" in j for j in par)
    assert not any("--features" in j for j in act + dp)
    # a job that loads the trained model asks for the host memory training's job asks for it
    # (the rehearsal measured paper-preset models at several GB, above a rollout worker's 3000 MB)
    from harness.config import load_config

    workers = load_config("paper").data["evaluation"]["workers"]
    act_eval = [j for j in jobs if j.startswith("evaluate_block:") and "wildcards: method=act," in j]
    assert act_eval and all("outputs/paper/memory/act.json" in j and f"mem_mb={5555 + 3000 * (workers - 1)}," in j
                            for j in act_eval)
    chance = [j for j in jobs if j.startswith("evaluate_block:") and "wildcards: method=random," in j]
    assert chance and not any("/memory/" in j for j in chance)
    figures = [j for j in jobs if j.split(":")[0] in ("predicted_frames", "attention_map", "failure_case")]
    assert len(figures) == 3 and all("outputs/paper/memory/par.json" in j for j in figures)


def test_no_file_a_rule_writes_is_committed():
    tracked = subprocess.run(["git", "ls-files", "results", "outputs"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    data = ["results/paper_reference.csv", "results/parameter_reference.csv"]
    assert set(data) <= set(tracked)
    assert [p for p in tracked if p not in data and not p.startswith("results/measured/")] == []
    written = ["results/table2.csv", "results/table3.csv", "results/figures/fig4/PushCube.png",
               "results/smoke/table2.csv", "results/reduced/figures/fig4/PickCube.json", "results/table1.csv",
               "results/reproduction.md", "results/smoke/figures/table2_success.pdf",
               "results/figures/fig5/PushCube.npz"]
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=REPO_ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored == written


@pytest.mark.parametrize("target, scale, owner, own_path", [
    ("results/table2.csv", "smoke", "paper", "results/smoke/table2.csv"),
    ("results/smoke/table3.csv", "paper", "smoke", "results/table3.csv"),
    ("results/reduced/figures/fig4/PushCube.png", "smoke", "reduced", "results/smoke/figures/fig4/PushCube.png"),
])
def test_another_scales_result_is_refused_with_its_owner(target, scale, owner, own_path):
    proc = _run("-n", target, "--config", f"scale={scale}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{target} belongs to the '{owner}' scale, and this run is scale '{scale}'" in out
    assert f"ask this one for {own_path}" in out


def test_cli_help_lists_every_step():
    proc = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("plan-demos", "render-dataset", "verify-render", "dataset-info", "check-device",
                "predicted-frames"):
        assert cmd in proc.stdout


def test_unknown_method_override_field_is_named(tmp_path):
    import yaml

    from harness.paths import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    data["method_overrides"] = {"act": {"chunk_sise": 4}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--config-file", str(cfg), "--method", "act",
                           "--task", "PushCube", "--dataset", str(tmp_path / "none.h5"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "method_overrides.act" in proc.stderr and "chunk_sise" in proc.stderr


@pytest.mark.parametrize("entry, says", [
    ("config_file=nope.yaml", "config file nope.yaml (--config-file, or snakemake's --config config_file=) does not exist"),
    ("config_file=", "--config config_file= is given no path"),
])
def test_a_missing_config_file_is_one_line_not_a_traceback(entry, says):
    proc = _run("-n", "--config", entry)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out and "Building DAG" not in out
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {says}")


def test_the_slurm_profiles_template_values_are_refused_before_any_job(tmp_path):
    # the profile as shipped, less its executor (the SLURM plugin is not installed here): the
    # Snakefile's check sees the same resources either way
    text = (REPO_ROOT / "workflows" / "profiles" / "slurm" / "config.yaml").read_text()
    profile = tmp_path / "slurm"
    profile.mkdir()
    (profile / "config.yaml").write_text(text.replace("executor: slurm\n", ""))
    proc = _run("--profile", str(profile), "-n", "--config", "scale=smoke", workdir=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out and "Building DAG" not in out
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the cluster profile still holds template values: default-resources: "
                            "slurm_partition is <PARTITION>, fill in a CPU partition (`sinfo -s` lists them); "
                            "default-resources: slurm_account is <ACCOUNT>, fill in your account")
    assert "set-resources train: slurm_partition is <GPU_PARTITION>, fill in the partition with GPUs" in error
    filled = text.replace("executor: slurm\n", "").replace("<PARTITION>", "cpu").replace("<ACCOUNT>", "me")
    (profile / "config.yaml").write_text(filled.replace("<GPU_PARTITION>", "gpu"))
    proc = _run("--profile", str(profile), "-n", "--config", "scale=smoke", workdir=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
