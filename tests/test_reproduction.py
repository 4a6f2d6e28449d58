"""The per-cell verdicts of the reproduction report, on constructed k/n cases."""

import csv
import json

import pandas as pd
import pytest

from harness.report import load_rows
from harness.reproduction import PairingError, cells, markdown, orderings, paired_comparison, verdict


def test_consistent_when_the_paper_rate_is_within_reach():
    v = verdict(62, 125, 48.0, 125)  # 49.6% vs 60/125
    assert v["verdict"] == "consistent" and v["p_value"] > 0.5
    assert v["test"].startswith("Fisher's exact, 62/125 vs 60/125")


def test_clearly_below_and_clearly_above():
    below = verdict(10, 125, 73.0, 125)
    assert below["verdict"] == "below" and below["p_value"] < 1e-6
    above = verdict(120, 125, 30.0, 125)
    assert above["verdict"] == "above" and above["p_value"] < 1e-6


def test_a_perfect_paper_cell_with_known_n_is_a_two_proportion_test():
    # 117/125 vs the paper's 125/125: a binomial test against a fixed 100% would reject any
    # failure (p = 0); the two-proportion test keeps the paper's own sampling in the test
    v = verdict(117, 125, 100.0, 125)
    assert v["verdict"] == "below" and 0 < v["p_value"] < 0.05
    assert verdict(124, 125, 100.0, 125)["verdict"] == "consistent"


def test_unknown_paper_n_takes_the_rate_as_fixed_and_says_so():
    v = verdict(95, 125, 76.0, None)
    assert v["verdict"] == "consistent" and "n unknown" in v["test"]
    assert verdict(70, 125, 76.0, None)["verdict"] == "below"
    # the same k/n against the same rate is judged more strictly without the paper's sampling
    assert verdict(85, 125, 76.0, None)["p_value"] < verdict(85, 125, 76.0, 125)["p_value"]


def test_a_cell_without_a_paper_number_has_no_verdict():
    assert verdict(3, 10, float("nan"), None)["verdict"] == "no paper number"


def _rows(path, name, task, successes, n, scale="paper", cap=400, size=512):
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["task", "method", "variant", "policy_seed", "init_state_seed", "success", "scale",
                        "max_episode_steps", "image_height", "image_width", "git_sha", "config_hash"])
        for i in range(n):
            w.writerow([task, name, "", i % 5, 20241201 + i // 5, int(i < successes), scale, cap, size, size,
                        "abc", "h"])


def test_cells_give_margin_over_chance_and_never_call_a_reduced_cell_a_failed_reproduction(tmp_path):
    paper, reduced = tmp_path / "paper.csv", tmp_path / "reduced.csv"
    _rows(paper, "random", "PushCube", 19, 125)
    _rows(paper, "par", "PushCube", 60, 125)
    _rows(paper, "act", "PushCube", 95, 125)
    df = cells(load_rows([paper]), "table2").set_index("method")
    assert df.loc["par", "verdict"] == "below" and df.loc["par", "reading"].startswith("does not reproduce")
    assert df.loc["par", "margin_over_chance"] == pytest.approx(100 * (60 - 19) / 125, abs=0.05)
    assert df.loc["par", "above_chance_p"] < 1e-6
    assert df.loc["act", "verdict"] == "consistent" and df.loc["act", "paper_n"] == "unknown"
    assert df.loc["par", "protocol_differences"] == ""
    assert df.loc["random", "margin_over_chance"] == ""

    _rows(reduced, "random", "PushCube", 19, 125, scale="reduced", cap=200, size=128)
    _rows(reduced, "par", "PushCube", 44, 125, scale="reduced", cap=200, size=128)
    cell = cells(load_rows([reduced]), "table2").set_index("method").loc["par"]
    assert cell["verdict"] == "below"
    assert cell["reading"].startswith("reduced-scale measurement") and "not a reproduction" in cell["reading"]
    assert "episode cap 200 steps (paper: 400)" in cell["protocol_differences"]
    assert "images 128x128" in cell["protocol_differences"]
    text = markdown(cells(load_rows([reduced]), "table2"))
    assert "| par | PushCube | 44/125 (35.2)" in text and "does not reproduce" not in text
    assert "[a] scale reduced" in text


def test_a_table_without_a_chance_row_says_so(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "par", "PushCube", 60, 125)
    assert cells(load_rows([path]), "table2").iloc[0]["margin_over_chance"] == "no chance row"


def _identified(path, name, ids_of_rows):
    """Rows of one PushCube cell, each with (code_id, method_id, train_code_id, train_method_id)."""
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["task", "method", "variant", "policy_seed", "init_state_seed", "success", "scale",
                        "max_episode_steps", "image_height", "image_width", "git_sha", "config_hash",
                        "code_id", "method_id", "train_code_id", "train_method_id"])
        for i, ids in enumerate(ids_of_rows):
            w.writerow(["PushCube", name, "", i % 5, 20241201 + i // 5, i % 2, "paper", 400, 512, 512, "abc", "h",
                        *ids])


def test_a_cell_of_mixed_or_mismatched_code_is_marked_in_the_table_the_report_and_the_plot(tmp_path):
    from harness.plots import success_summary
    from harness.report import compile_table

    same = ("c1", "m1", "c1", "m1")
    path = tmp_path / "rows.csv"
    _identified(path, "random", [same] * 10)
    _identified(path, "act", [same] * 5 + [("c2", "m2", "c1", "m1")] * 5)  # two evaluations, one mismatched
    _identified(path, "par", [("c2", "m2", "c1", "m1")] * 10)  # trained by m1, evaluated by m2
    _identified(path, "dp", [("c2", "m1", "c1", "m1")] * 10)  # other harness code, same method code
    rows = load_rows([path])
    table = compile_table(rows, "table2").set_index("method")["PushCube_code_note"]
    assert table["random"] == "" and table["dp"] == ""
    assert "rows mix code: evaluated by 2 identities (m1;m2)" in table["act"]
    assert "5 of 10 rows trained by method code m1 and evaluated by other method code, m2" in table["act"]
    assert table["par"] == "10 of 10 rows trained by method code m1 and evaluated by other method code, m2"
    report = cells(rows, "table2").set_index("method")
    assert report.loc["par", "code_note"] == table["par"] and report.loc["random", "code_note"] == ""
    text = markdown(cells(rows, "table2"))
    par_line = next(line for line in text.splitlines() if line.startswith("| par |"))
    random_line = next(line for line in text.splitlines() if line.startswith("| random |"))
    assert "†" in par_line and "†" not in random_line
    assert f"- †2 {table['par']}" in text and f"- †1 {table['act']}" in text
    plotted = success_summary(rows, "table2").set_index("method")["code_note"]
    assert plotted["par"] == table["par"] and plotted["random"] == ""


def test_rows_without_identities_or_with_unknown_code_say_so():
    from harness.report import code_note

    import pandas as pd

    assert "no code identity recorded" in code_note(pd.DataFrame({"method": ["a"], "code_id": ["c"]}))
    unknown = pd.DataFrame({"code_id": ["c-dirty-unknown"], "method_id": ["m-dirty-unknown"],
                            "train_code_id": ["c-dirty-unknown"], "train_method_id": ["m-dirty-unknown"]})
    assert "not fully known" in code_note(unknown)


def _paired(path, outcomes):
    """Rollout rows of one run: outcomes[i] for policy seed i // 5, init state 20241201 + i % 5."""
    import pandas as pd

    pd.DataFrame([{"method": "par", "task": "PushCube", "policy_seed": i // 5, "init_state_seed": 20241201 + i % 5,
                   "success": int(s)} for i, s in enumerate(outcomes)]).to_csv(path, index=False)  # as evaluate writes
    return str(path)


def test_paired_comparison_counts_discordant_pairs_and_refuses_unpaired_rows(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    from harness.reproduction import PairingError, paired_comparison

    a = _paired(tmp_path / "a.csv", [1] * 12 + [0] * 13)
    b = _paired(tmp_path / "b.csv", [0] * 10 + [1] * 2 + [0] * 12 + [1])
    r = paired_comparison(pd.read_csv(a), pd.read_csv(b))
    assert (r["n"], r["a_successes"], r["b_successes"], r["a_only"], r["b_only"]) == (25, 12, 3, 10, 1)
    assert r["mcnemar_p"] == pytest.approx(2 * 12 / 2 ** 11)  # P(X <= 1), X ~ Bin(11, 1/2), two-sided
    same = paired_comparison(pd.read_csv(a), pd.read_csv(a))
    assert same["a_only"] == same["b_only"] == 0 and same["mcnemar_p"] == 1.0
    short = _paired(tmp_path / "short.csv", [1] * 20)
    with pytest.raises(PairingError, match="5 only in the first"):
        paired_comparison(pd.read_csv(a), pd.read_csv(short))
    done = subprocess.run([sys.executable, "-m", "harness", "compare", a, short], capture_output=True, text=True)
    assert done.returncode == 2 and "not the same rollouts" in done.stderr
    capped = pd.read_csv(b).assign(max_episode_steps=200)
    with pytest.raises(PairingError, match="max_episode_steps"):
        paired_comparison(pd.read_csv(a).assign(max_episode_steps=400), capped)
    done = subprocess.run([sys.executable, "-m", "harness", "compare", a, b, "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads((tmp_path / "c.json").read_text())["b_only"] == 1
    result = json.loads((tmp_path / "c.json").read_text())  # every state higher in a: 5 of 5
    assert (result["a_states"], result["b_states"], result["states_sign_p"]) == (5, 0, pytest.approx(2 / 2 ** 5))


def test_the_ablation_order_is_tested_pair_by_pair_on_the_same_rollouts(tmp_path):
    from harness.reproduction import orderings, write_report

    # _rows makes each cell's successes the first k rollouts: discordant pairs = the difference
    path = tmp_path / "t3.csv"
    _rows(path, "random", "PushCube", 19, 125)
    _rows(path, "par", "PushCube", 60, 125)  # paper: par 100 > par_discrete 87.2 > par_noar 29.6
    _rows(path, "par_discrete", "PushCube", 55, 125)
    _rows(path, "par_noar", "PushCube", 100, 125)
    df = orderings(load_rows([path]), "table3").set_index(["higher", "lower"])
    assert len(df) == 3  # the chance row has no paper number: in no pair
    full_discrete = df.loc[("par", "par_discrete")]
    assert (full_discrete["higher_only"], full_discrete["lower_only"]) == (5, 0)
    assert full_discrete["mcnemar_p"] == pytest.approx(2 / 2 ** 5)  # 0.0625: no verdict at 0.05
    assert full_discrete["finding"] == "not resolved"
    assert df.loc[("par", "par_noar"), "finding"] == "reversed"  # 40 pairs the other way
    assert df.loc[("par_discrete", "par_noar"), "lower_only"] == 45

    _rows(tmp_path / "t3b.csv", "par", "PushCube", 60, 125)
    _rows(tmp_path / "t3b.csv", "par_noar", "PushCube", 20, 125)
    _rows(tmp_path / "t3b.csv", "par_discrete", "PushCube", 50, 120)  # not the same rollouts
    df = orderings(load_rows([tmp_path / "t3b.csv"]), "table3").set_index(["higher", "lower"])
    assert df.loc[("par", "par_noar"), "finding"] == "the paper's order"
    assert df.loc[("par", "par_discrete"), "finding"].startswith("not paired: the two sets of rollouts")

    write_report({"table2": [path], "table3": [path]}, tmp_path / "r.csv", tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    table2, table3 = text.split("## Table 3")
    assert "The paper's order" not in table2  # Table 2's claim is no order of its methods
    assert "| PushCube | par 100 > par_noar 29.6 | 60/125 vs 100/125 | 0 / 40 | <0.0001 | 0 / 8 | 0.0078 | reversed |" in table3
    assert "| PushCube | par 100 > par_discrete 87.2 | 60/125 vs 55/125 | 5 / 0 | 0.0625 | 1 / 0 | 1 | not resolved |" in table3


def _cell(per_state, seeds=5, name="par", task="PushCube"):
    """Rows of one cell: ``per_state[i]`` successes among the ``seeds`` policy seeds of initial state i."""
    return pd.DataFrame([{"task": task, "method": name, "policy_seed": s, "init_state_seed": 20241201 + i,
                          "success": int(s < k)} for i, k in enumerate(per_state) for s in range(seeds)])


def test_a_deterministic_policys_seeds_are_copies_so_its_states_are_the_trials():
    from harness.reproduction import state_interval
    from harness.report import wilson_interval

    copies = state_interval(_cell([5] * 10 + [0] * 15))  # each state: all five seeds alike
    assert (copies["states"], copies["states_solved"], copies["states_split"], copies["n_eff"]) == (25, 10, 0, 25)
    lo, hi = wilson_interval(10, 25)  # 10 of 25 states, not 50 of 125 rollouts
    assert (copies["ci95_low_states"], copies["ci95_high_states"]) == (round(100 * lo, 1), round(100 * hi, 1))
    spread = state_interval(_cell([2] * 25))  # every state alike at 2/5: no state is easier
    assert spread["states_split"] == 25 and spread["n_eff"] == 125
    lo, hi = wilson_interval(50, 125)
    assert spread["ci95_low_states"] == round(100 * lo, 1)
    nothing = state_interval(_cell([0] * 25))
    assert nothing["n_eff"] == 25 and nothing["ci95_high_states"] == round(100 * wilson_interval(0, 25)[1], 1)
    between = state_interval(_cell([5, 4, 1, 0] * 6 + [3]))  # partly alike within states
    assert 25 < between["n_eff"] < 125


def test_the_table_and_the_plot_give_the_interval_over_initial_states(tmp_path):
    from harness.plots import success_summary
    from harness.report import compile_table, wilson_interval

    path = tmp_path / "rows.csv"
    _cell([5] * 10 + [0] * 15, name="act").assign(variant="", scale="reduced", max_episode_steps=200, image_height=128,
                                                  image_width=128, git_sha="abc", config_hash="h").to_csv(path, index=False)
    rows = load_rows([path])
    row = compile_table(rows, "table2").set_index("method").loc["act"]
    lo, hi = wilson_interval(10, 25)
    assert (row["PushCube_ci95_low_states"], row["PushCube_ci95_high_states"]) == (round(100 * lo, 1), round(100 * hi, 1))
    assert row["PushCube_ci95_low"] == round(100 * wilson_interval(50, 125)[0], 1)  # over rollouts, narrower
    drawn = success_summary(rows, "table2").set_index("method").loc["act"]
    assert (drawn["low"], drawn["high"]) == (round(100 * lo, 1), round(100 * hi, 1))
    assert drawn["low_rollouts"] == pytest.approx(100 * wilson_interval(50, 125)[0])


def test_over_chance_and_the_papers_order_are_also_tested_state_by_state(tmp_path):
    from harness.reproduction import state_sign_test

    # three more states solved, every seed alike: 15 discordant rollouts, but three states
    a, b = _cell([5] * 8 + [0] * 17), _cell([5] * 5 + [0] * 20)
    assert paired_comparison(a.assign(task="PushCube"), b)["mcnemar_p"] < 1e-4
    st = state_sign_test(a, b)
    assert (st["a_states"], st["b_states"]) == (3, 0) and st["sign_p"] == pytest.approx(2 / 2 ** 3)
    assert state_sign_test(a, b, alternative="greater")["sign_p"] == pytest.approx(1 / 2 ** 3)
    with pytest.raises(PairingError, match="different initial states"):
        state_sign_test(a, _cell([5] * 24))

    path = tmp_path / "t3.csv"
    pd.concat([_cell([5] * 8 + [0] * 17, name="par"), _cell([5] * 5 + [0] * 20, name="par_discrete"),
               _cell([1] * 25, name="random")]).assign(
        variant="", scale="reduced", max_episode_steps=200, image_height=128, image_width=128, git_sha="abc",
        config_hash="h").to_csv(path, index=False)
    rows = load_rows([path])
    order = orderings(rows, "table3").set_index(["higher", "lower"]).loc[("par", "par_discrete")]
    assert (order["higher_only"], order["lower_only"], order["higher_states"], order["lower_states"]) == (15, 0, 3, 0)
    assert order["mcnemar_p"] < 0.05 and order["finding"] == "not resolved"  # the states decide
    cell = cells(rows, "table3").set_index("method").loc["par"]
    assert cell["above_chance_p"] < 0.05  # 40/125 against 25/125, rollout by rollout
    assert (cell["states_above_chance"], cell["states_below_chance"]) == (8, 17)
    assert cell["above_chance_states_p"] > 0.9
    text = markdown(cells(rows, "table3"), table_orderings=orderings(rows, "table3"))
    assert "| par | PushCube | 40/125 (32) [24.5, 40.6]" in text and "| 8, 0 / 25; 25 [17.2, 51.6] |" in text
    assert "| +8/-17 (" in text and "| 15 / 0 | <0.0001 | 3 / 0 | 0.25 | not resolved |" in text
