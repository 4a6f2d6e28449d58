"""benchmarks/controlled.py: controlled runs summarised against their baseline (paired, on the
same rollouts) and the chance row, with a baseline whose files live in another folder (a grid
cell) and a run that has not been evaluated yet."""

import json
import sys

import pandas as pd
import pytest

from harness.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))


def _rollouts(path, successes, method="bc_t"):
    rows = [{"task": "PushCube", "method": method, "policy_seed": seed, "init_state_seed": 100 + state,
             "success": successes[5 * seed + state], "success_step": 30 if successes[5 * seed + state] else "",
             "method_id": f"{method}-id", "train_method_id": f"{method}-id"}
            for seed in range(2) for state in range(5)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _folder(tmp_path, runs):
    folder = tmp_path / "controlled"
    folder.mkdir()
    (folder / "runs.json").write_text(json.dumps({"chance": "../grid/random.csv", "runs": runs}))
    return folder


def test_a_run_is_paired_with_a_baseline_kept_elsewhere(tmp_path):
    import controlled

    _rollouts(tmp_path / "grid" / "random.csv", [0] * 10, method="random")
    base = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    run = [0, 1, 1, 1, 1, 1, 1, 1, 1, 0]  # gains 8 states, loses the baseline's only success
    _rollouts(tmp_path / "grid" / "bc_t.csv", base)
    folder = _folder(tmp_path, [
        {"name": "grid", "baseline": True, "change": "none", "files": {"rollouts": "../grid/bc_t.csv"}},
        {"name": "nodecay", "change": "no lr decay"},
        {"name": "later", "change": "not evaluated yet"}])
    _rollouts(folder / "rollouts_nodecay.csv", run)
    assert controlled.main([str(folder)]) == 0
    df = pd.read_csv(folder / "summary.csv").set_index("run")
    assert df.loc["grid", "successes"] == 1 and df.loc["nodecay", "successes"] == 8
    assert (df.loc["nodecay", "vs_baseline_gained"], df.loc["nodecay", "vs_baseline_lost"]) == (8, 1)
    assert df.loc["nodecay", "mcnemar_p"] == pytest.approx(0.0390625)  # 2 * P(X <= 1), X ~ Bin(9, 1/2)
    # by initial state: 4 of 5 states higher, the fifth tied (0.5 each): sign p = 2 / 2**4
    assert (df.loc["nodecay", "vs_baseline_states_up"], df.loc["nodecay", "vs_baseline_states_down"]) == (4, 0)
    assert df.loc["nodecay", "states_sign_p"] == pytest.approx(0.125)
    assert df.loc["nodecay", "states_p_vs_chance"] == pytest.approx(1 / 2 ** 5)  # every state above, one-sided
    assert df.loc["nodecay", "p_vs_chance"] < 0.01 < df.loc["grid", "p_vs_chance"]
    assert pd.isna(df.loc["later", "successes"])
    text = (folder / "summary.md").read_text()
    assert "| nodecay | no lr decay | 8/10 (80.0%) |" in text and "| +8/-1 (0.039); +4/-0 (0.12) |" in text and "| later | not evaluated yet | not yet |" in text


def test_runs_json_needs_one_baseline(tmp_path):
    import controlled

    _rollouts(tmp_path / "grid" / "random.csv", [0] * 10, method="random")
    folder = _folder(tmp_path, [{"name": "a", "change": "x"}, {"name": "b", "change": "y"}])
    with pytest.raises(SystemExit, match="exactly one run must be the baseline"):
        controlled.main([str(folder)])
    with pytest.raises(SystemExit, match="runs.json is missing"):
        controlled.main([str(tmp_path)])
