import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.protocol import Protocol, check_no_leakage, rollout_seed
from harness.paths import REFERENCE_CSV
from harness.report import compile_table, load_rows, wilson_interval, write_table
from harness.rollouts import RolloutFileError

REPO = Path(__file__).resolve().parents[1]


def test_protocol_is_125_rollouts_on_the_rdt_seeds():
    p = Protocol()
    jobs = p.jobs()
    assert len(jobs) == 125 and len(set(jobs)) == 125
    assert {s for _, s in jobs} == set(range(20241201, 20241226))
    assert {s for s, _ in jobs} == {0, 1, 2, 3, 4}


def test_rollout_seed_is_stable_and_distinct():
    # Literal values (zlib.crc32 of "policy_seed/init_state_seed"): a change of the seeding
    # scheme would silently change every published rollout, so it has to fail here.
    assert rollout_seed(0, 20241201) == 1162442365
    assert rollout_seed(4, 20241225) == 2046390428
    jobs = Protocol().jobs()
    here = [rollout_seed(p, s) for p, s in jobs]
    # the same in another process with a different string-hash salt (workers are processes)
    code = ("import json; from harness.protocol import Protocol, rollout_seed; "
            "print(json.dumps([rollout_seed(p, s) for p, s in Protocol().jobs()]))")
    for hashseed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        assert json.loads(out.strip().splitlines()[-1]) == here
    assert len(set(here)) == 125


def test_seed_overlap_with_demos_fails_before_any_rollout():
    check_no_leakage({"seeds": [0, 1, 2], "failed_seeds": {"3": "x"}}, Protocol(), "d.h5")
    with pytest.raises(ValueError, match=r"d.h5: 1 evaluation init-state seed\(s\) are also demonstration seeds: 20241203"):
        check_no_leakage({"seeds": [0, 20241203]}, Protocol(), "d.h5")
    with pytest.raises(ValueError, match="20241201"):  # a failed plan's seed is a seen state too
        check_no_leakage({"seeds": [0], "failed_seeds": {"20241201": "no plan"}}, Protocol(), "d.h5")


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 25)
    assert lo == 0.0 and hi == pytest.approx(0.1332, abs=1e-4)
    lo, hi = wilson_interval(125, 125)
    assert hi == 1.0 and lo == pytest.approx(0.9702, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def _rows(path, name, variant, task, successes, n):
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["task", "method", "variant", "policy_seed", "init_state_seed", "success",
                        "scale", "git_sha", "config_hash"])
        for i in range(n):
            w.writerow([task, name, variant, i % 5, 20241201 + i // 5, int(i < successes), "smoke", "abc", "h"])


def test_table_is_computed_from_rows_with_paper_reference(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 100, 125)
    _rows(path, "act", "", "PickCube", 25, 125)
    _rows(path, "dp_unet", "", "PushCube", 5, 10)  # a method of its own
    _rows(path, "par", "par_noar", "PushCube", 1, 10)  # a variant: its name is the variant's
    df = compile_table(load_rows([path]), "table2").set_index("method")
    assert df.loc["act", "PushCube_success_rate"] == 80.0 and df.loc["act", "PushCube_rollouts"] == 125
    assert df.loc["act", "PickCube_success_rate"] == 20.0
    assert df.loc["act", "average_success_rate"] == 50.0
    # averages run over the tasks present, for ours and the paper alike: (76 + 20) / 2
    assert df.loc["act", "paper_PushCube"] == 76 and df.loc["act", "paper_average"] == pytest.approx(48.0)
    lo, hi = wilson_interval(100, 125)
    assert df.loc["act", "PushCube_ci95_low"] == round(100 * lo, 1)
    assert df.loc["dp_unet", "PushCube_success_rate"] == 50.0
    assert pd.isna(df.loc["dp_unet", "paper_PushCube"])  # no reference for our extra method
    assert df.loc["par_noar", "PushCube_success_rate"] == 10.0


def test_duplicate_rollouts_are_refused_naming_the_rollout_and_its_files(tmp_path):
    path, other = tmp_path / "rows.csv", tmp_path / "other.csv"
    _rows(path, "act", "", "PushCube", 1, 2)
    _rows(other, "act", "", "PushCube", 1, 2)
    with pytest.raises(RolloutFileError, match="2 rollouts appear twice .* the first: act on PushCube, policy seed 0, "
                                               f"init state 20241201, in {other} and {path}.*gather it again"):
        load_rows([path, other])


def _cut(path, keep_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def test_a_cut_off_or_damaged_rollout_file_is_refused_with_its_file_and_line(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 1, 3)
    whole = path.read_bytes()
    _cut(path, len(whole) - 6)  # the last row cut short, as a killed copy leaves it
    with pytest.raises(RolloutFileError, match=f"rollout file {path}: its last line \\(line 4\\) is cut off"):
        load_rows([path])
    path.write_bytes(whole.replace(b",smoke,abc,h\r\n", b",smoke\r\n", 1))  # a row with fields missing
    with pytest.raises(RolloutFileError, match="line 2: 7 fields, the header has 9"):
        load_rows([path])
    for column, was, now, what in (("policy_seed", b"act,,0,", b"act,,x,", "'x', not an integer"),
                                   ("success", b",1,smoke", b",2,smoke", "'2', not 0 or 1")):
        path.write_bytes(whole.replace(was, now, 1))
        with pytest.raises(RolloutFileError, match=f"line 2: column {column} is {what}"):
            load_rows([path])
    path.write_text("task,method\nPushCube,act\n")
    with pytest.raises(RolloutFileError, match="has no column policy_seed, init_state_seed, success"):
        load_rows([path])
    with pytest.raises(RolloutFileError, match="does not exist. Make it: `python -m harness evaluate"):
        load_rows([tmp_path / "none.csv"])


def _with_pretrained(path, method, listed, action_pretrained):
    """Rows of the current format: the two pretrained columns filled for ``method``."""
    rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    mine = rows["method"] == method
    rows["pretrained_weights"] = ""
    rows["action_pretrained"] = "false"
    rows.loc[mine, "pretrained_weights"] = listed
    rows.loc[mine, "action_pretrained"] = action_pretrained
    rows.to_csv(path, index=False)


def test_tables_say_how_each_row_and_its_reference_started(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "rdt", "", "PickCube", 3, 5)
    _rows(path, "par", "", "PickCube", 2, 5)
    _rows(path, "act", "", "PickCube", 1, 5)
    _with_pretrained(path, "rdt", '[{"path": "/w/rdt.pt", "sha256": "ab"}]', "true")
    df = compile_table(load_rows([path]), "table2").set_index("method")
    assert df.loc["rdt", "from_scratch"] == False and df.loc["rdt", "action_pretrained"] == True  # noqa: E712
    assert df.loc["act", "from_scratch"] == True and df.loc["act", "action_pretrained"] == False  # noqa: E712
    # the paper's RDT was action-pretrained, its PAR was not; RDT's 77.2 is 193 of 250 trials
    assert df.loc["rdt", "paper_action_pretrained"] == True and df.loc["par", "paper_action_pretrained"] == False  # noqa: E712
    assert df.loc["rdt", "paper_PickCube_n"] == 250 and df.loc["par", "paper_PickCube_n"] == 125
    assert pd.isna(df.loc["act", "paper_PickCube_n"])  # no public source


def test_the_papers_trial_counts_are_written_as_integers(tmp_path):
    """A table with a row whose reference has no trial count (the chance row) still writes the
    others' counts as counts: 125, not 125.0 (seen in the grid's Table 3)."""
    measured = REPO / "results" / "measured" / "reduced" / "history" / "pushcube_seven_commits"
    files = [measured / f"rollouts_{m}_PushCube.csv" for m in ("random", "par")]
    for table in ("table2", "table3"):
        write_table(files, table, tmp_path / f"{table}.csv")
        written = pd.read_csv(tmp_path / f"{table}.csv", dtype=str, keep_default_na=False).set_index("method")
        assert (written.loc["par", "paper_PushCube_n"], written.loc["random", "paper_PushCube_n"]) == ("125", "")


def test_rows_from_before_the_pretrained_columns_read_as_from_scratch(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "", "PushCube", 1, 5)  # the old header: no pretrained columns
    df = compile_table(load_rows([path]), "table2").set_index("method")
    assert df.loc["act", "from_scratch"] == True and df.loc["act", "action_pretrained"] == False  # noqa: E712


def test_reference_rows_carry_their_n_and_its_source():
    ref = pd.read_csv(REFERENCE_CSV, keep_default_na=False, dtype=str)
    for _, row in ref.iterrows():
        assert row["n_source"], row.to_dict()
        assert row["action_pretrained"] in ("true", "false")
        assert row["n"] in ("", "125", "250"), row.to_dict()
    by_method = ref.groupby("method")["n"].apply(set).to_dict()
    assert by_method["rdt"] == by_method["dp"] == {"250"}  # the RDT README's table
    assert by_method["act"] == by_method["bc_t"] == by_method["bc_t_gmm"] == by_method["icrt"] == {""}  # unknown
    table3 = ref[ref["table"] == "table3"]  # one decimal: exactly k of 125
    assert all(float(v) * 1.25 == round(float(v) * 1.25) for v in table3["success_rate_percent"])
