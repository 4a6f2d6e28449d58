"""The Snakemake workflow's structure: lint, the paper-scale plan, scale separation."""

import subprocess
import sys

from harness.config import REPO_ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(REPO_ROOT)]


def _run(*args):
    return subprocess.run(SNAKEMAKE + list(args), capture_output=True, text=True)


def test_lint_is_clean():
    proc = _run("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_paper_scale_plans_three_tasks_and_warns_about_the_gpu():
    proc = _run("-n", "--config", "scale=paper")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for task in ("PushCube", "PickCube", "StackCube"):
        assert f"outputs/paper/datasets/{task}.h5" in out
    job_lines = [line.split() for line in out.splitlines() if line.strip().startswith(("plan_demos", "render_dataset"))]
    assert ["plan_demos", "3"] in job_lines and ["render_dataset", "3"] in job_lines
    if "GPU not found" in out:
        assert "plans training for a GPU and none is present" in out


def test_scales_write_to_separate_folders():
    smoke = _run("-n", "--config", "scale=smoke").stdout
    reduced = _run("-n", "--config", "scale=reduced").stdout
    assert "outputs/smoke/" in smoke and "outputs/reduced/" not in smoke
    assert "outputs/reduced/" in reduced and "outputs/smoke/" not in reduced


def test_bad_scale_fails_with_the_known_scales():
    proc = _run("-n", "--config", "scale=huge")
    assert proc.returncode != 0
    assert "known scales: paper, reduced, smoke" in proc.stdout + proc.stderr


def test_cli_help_lists_every_step():
    proc = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("plan-demos", "render-dataset", "verify-render", "dataset-info", "check-device",
                "predicted-frames"):
        assert cmd in proc.stdout


def test_unknown_method_override_field_is_named(tmp_path):
    import yaml

    from harness.config import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    data["method_overrides"] = {"act": {"chunk_sise": 4}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--config-file", str(cfg), "--method", "act",
                           "--task", "PushCube", "--dataset", str(tmp_path / "none.h5"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "method_overrides.act" in proc.stderr and "chunk_sise" in proc.stderr
