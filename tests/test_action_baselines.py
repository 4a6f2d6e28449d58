"""benchmarks/action_baselines.py on the synthetic dataset, whose values are known exactly:
action[t] = seed*1000 + t + dim/10 and qpos[t] = seed*1000 + t, so in min-max units (range
2002, half-range 1001) holding the last action is off by 1/1001 on every dimension and copying
the joint positions is off by dim/10/1001 on the arm's."""

import json
import sys

import pytest

from harness.dataset import DemoDataset
from harness.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


def test_the_action_baselines_are_what_the_data_make_them(synthetic_dataset, tmp_path):
    import action_baselines

    dataset = DemoDataset(synthetic_dataset)
    result = action_baselines.baselines(dataset)
    dataset.close()
    assert result["windows"] == 5 + 12 + 3
    assert result["hold_last_mse"] == pytest.approx(1 / 1001 ** 2, rel=1e-3)
    assert result["hold_last_mse_per_dim"] == pytest.approx([1 / 1001 ** 2] * 8, rel=1e-3)
    arm = [(d / 10 / 1001) ** 2 for d in range(7)]
    assert result["copy_qpos_mse_arm"] == pytest.approx(sum(arm) / 7, rel=1e-2)  # float32 storage of values near 2000
    assert action_baselines.main(["--dataset", str(synthetic_dataset), "--name", "ab", "--out-dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "ab.json").read_text())["copy_qpos_mse_arm"] == pytest.approx(sum(arm) / 7, rel=1e-2)  # float32 storage of values near 2000
