"""benchmarks/gpu_check.py's CPU mode: the GPU check runs end to end on the smoke presets, so
the script is ready (and cannot rot) for the day a GPU is lent."""

import json
import sys

from harness.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


def test_the_gpu_check_runs_in_its_cpu_mode(tmp_path):
    import gpu_check

    assert gpu_check.main(["--cpu", "--out-dir", str(tmp_path), "--steps", "1", "--rollout-calls", "1"]) == 0
    result = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"par", "rdt", "icrt"} and result["scale"] == "smoke"
    for r in rows.values():
        t = r["training"]
        assert t["batch_size"] == r["preset_batch_size"] and t["step_seconds"] > 0 and t["samples_per_second"] > 0
        assert r["projected_peak_gib"] >= 0 and r["measured_peak_gib"] > 0 and r["measured_over_projected"] is None
    assert rows["par"]["rollout"]["calls"] == 2 and rows["par"]["rollout"]["call_seconds"] > 0
    assert "| par | 2 | float32 |" in (tmp_path / "gpu_check_cpu.md").read_text()
