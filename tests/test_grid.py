"""The results grid's bookkeeping (harness/grid.py): which cells a scale's grid has, the pin
that every cell must match, and the status of each cell. A cell made for real from the smoke
DAG is in tests/test_pipeline_sim.py."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from harness import grid
from harness.config import load_config

SMOKE = load_config("smoke")


def test_the_cells_are_tables_2_and_3_on_every_task():
    rows = grid.table_methods(SMOKE.data["methods"])
    assert rows["table2"][0] == rows["table3"][0] == "random"  # the chance row leads both tables
    assert rows["table3"] == ["random", "par_noar", "par_discrete", "par"]
    assert "par_noar" not in rows["table2"] and "par" in rows["table2"]
    cells = grid.grid_cells(SMOKE)
    assert len(cells) == len(set(cells)) == len(SMOKE.data["methods"]) * len(SMOKE.tasks)


def _pin(**method_ids):
    return {"scale": "smoke", "config_hash": SMOKE.config_hash(), "git_sha": "a" * 40, "code_id": "c",
            "method_ids": {m: method_ids.get(m, f"id-{m}") for m, _ in grid.grid_cells(SMOKE)},
            "datasets": {"PushCube": {"train": "d1", "validation": "v1"}}}


def _cell(folder, method, task, **changes):
    cell = grid.cell_dir(folder, method, task)
    cell.mkdir(parents=True)
    # 5 rollouts: 3 initial states, the first solved under both its seeds, the second under one of two
    outcomes = [(20241201, 1), (20241201, 1), (20241202, 1), (20241202, 0), (20241203, 0)]
    (cell / "rollouts.csv").write_text("task,method,policy_seed,init_state_seed,success\n" + "".join(
        f"{task},{method},{i % 2},{state},{ok}\n" for i, (state, ok) in enumerate(outcomes)))
    record = {"method": method, "task": task, "method_id": f"id-{method}", "config_hash": SMOKE.config_hash(),
              "datasets": {"train": "d1", "validation": "v1"}, "successes": 3, "rollouts": 5,
              "jobs": {"train": {"cpu_seconds": 1800.0}, "evaluate": {"cpu_seconds": 1800.0}}}
    (cell / grid.CELL_FILE).write_text(json.dumps({**record, **changes}))


def test_status_says_done_missing_and_stale(tmp_path):
    (tmp_path / grid.GRID_FILE).write_text(json.dumps({
        **_pin(), "shared_jobs": {"plan_demos/PushCube": {"cpu_seconds": 3600.0}}}))
    _cell(tmp_path, "act", "PushCube")
    _cell(tmp_path, "dp", "PushCube", method_id="id-other")  # trained by other code than the grid's
    _cell(tmp_path, "icrt", "PushCube", datasets={"train": "d2", "validation": "v1"},  # another dataset
          # resumed: its benchmark saw a last session of half an hour, its train log 1.5 hours of steps
          jobs={"train": {"seconds": 1800.0, "cpu_seconds": 1800.0}, "evaluate": {"cpu_seconds": 1800.0}},
          train_log_seconds=5400.0)
    _cell(tmp_path, "rdt", "PushCube", config_hash="0" * 12)
    (grid.cell_dir(tmp_path, "par", "PushCube")).mkdir(parents=True)  # started, never collected
    status = {(s.method, s.task): s for s in grid.cell_status(tmp_path, SMOKE, pin=_pin(act="id-moved"))}
    assert status["act", "PushCube"].status == "done"
    assert not status["act", "PushCube"].current  # this checkout's act code is not the cell's
    assert status["dp", "PushCube"].status == "stale" and "id-other" in status["dp", "PushCube"].detail
    assert status["icrt", "PushCube"].status == "stale" and "d2" in status["icrt", "PushCube"].detail
    assert status["rdt", "PushCube"].status == "stale" and "config" in status["rdt", "PushCube"].detail
    assert status["par", "PushCube"].status == "missing"
    assert status["act", "StackCube"].status == "missing"
    text = grid.status_markdown(list(status.values()), json.loads((tmp_path / grid.GRID_FILE).read_text()))
    # solved in 2 of its 3 initial states, one of them split between its policy seeds
    assert "| PushCube | act | done | 3/5 | 2/3 (1) | 1.00 | differs: main would redo it |" in text
    # the resumed cell counts its earlier sessions' hour (at its last session's CPU/wall ratio of 1)
    assert "| PushCube | icrt | stale | 3/5 | 2/3 (1) | 2.00 |" in text
    # 4 collected cells of 1 CPU-hour each, the resumed one's earlier hour, and the shared dataset job's hour
    assert f"1 done, {len(status) - 4} missing, 3 stale, 0 broken of {len(status)} cells" in text
    assert "5.00 in the cells' training, probe and evaluation, 1.00 in the jobs they share" in text
    assert "6.00 in all" in text  # two decimals: the parts add up to the total as printed


def test_a_cell_without_its_files_or_with_a_bad_record_is_broken(tmp_path):
    _cell(tmp_path, "icrt", "PushCube")
    status = {s.method: s for s in grid.cell_status(tmp_path, SMOKE) if s.task == "PushCube"}
    assert status["icrt"].status == "broken" and "no grid.json" in status["icrt"].detail
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    _cell(tmp_path, "act", "PushCube")
    (grid.cell_dir(tmp_path, "act", "PushCube") / "rollouts.csv").unlink()
    _cell(tmp_path, "dp", "PushCube")
    (grid.cell_dir(tmp_path, "dp", "PushCube") / grid.CELL_FILE).write_text("{not json")
    _cell(tmp_path, "rdt", "PushCube", files=["rollouts.csv", "probe.json", grid.CELL_FILE])  # its probe is gone
    _cell(tmp_path, "rdt", "StackCube")
    with open(grid.cell_dir(tmp_path, "rdt", "StackCube") / "rollouts.csv", "a") as f:
        f.write("StackCube,rdt,0,20241204\n")  # a row cut short
    status = {s.method: s for s in grid.cell_status(tmp_path, SMOKE) if s.task == "PushCube"}
    assert status["act"].status == "broken" and "rollouts.csv" in status["act"].detail
    assert status["dp"].status == "broken" and "cell.json" in status["dp"].detail
    assert status["rdt"].status == "broken" and status["rdt"].detail == "no probe.json"
    assert status["icrt"].status == "done"
    cut = next(s for s in grid.cell_status(tmp_path, SMOKE) if (s.method, s.task) == ("rdt", "StackCube"))
    assert cut.status == "broken" and "line 7: 4 fields" in cut.detail


def test_a_checkout_with_other_method_code_or_config_cannot_add_cells(tmp_path, monkeypatch):
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    # a later commit that left act's code alone adds act's cells; dp's changed, so not dp's
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: {**_pin(dp="id-dp-new"), "git_sha": "b" * 40})
    assert grid.open_grid(tmp_path, SMOKE, "act")["git_sha"] == "a" * 40
    with pytest.raises(grid.GridError, match=f"dp at method code id-dp; this checkout's is id-dp-new.*"
                                             f"git worktree add --detach DIR {'a' * 40}"):
        grid.open_grid(tmp_path, SMOKE, "dp")
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: {**_pin(), "config_hash": "0" * 12})
    with pytest.raises(grid.GridError, match="grid of config_hash"):
        grid.open_grid(tmp_path, SMOKE, "act")
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: _pin(act="id-act-dirty-0123"))
    with pytest.raises(grid.GridError, match="act's code is not committed"):
        grid.open_grid(tmp_path, SMOKE, "act")
    assert grid.open_grid(tmp_path, SMOKE, "dp")["git_sha"] == "a" * 40  # dp's code is clean
    # a new grid pins every method's identity: none may be uncommitted, whichever cell starts it
    with pytest.raises(grid.GridError, match="the code of act is not committed"):
        grid.open_grid(tmp_path / "new", SMOKE, "dp")
    assert not (tmp_path / "new" / grid.GRID_FILE).exists()
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: _pin())
    assert grid.open_grid(tmp_path / "new", SMOKE, "act") == {**_pin(), "datasets": {}}


def test_a_fixed_method_is_repinned_and_its_old_cells_retired(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    folder, history = tmp_path / "grid", tmp_path / "history"
    folder.mkdir()
    (folder / grid.GRID_FILE).write_text(json.dumps(_pin()))
    for method, task in (("act", "PushCube"), ("bc_t", "PushCube"), ("bc_t", "StackCube")):
        _cell(folder, method, task)
    fixed = {**_pin(bc_t="id-bc_t-fixed", bc_t_gmm="id-bc_t-fixed"), "git_sha": "b" * 40}  # one package
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: fixed)
    with pytest.raises(grid.GridError, match="bc_t has 2 cells made at its old code; give --retire-to"):
        grid.repin_methods(folder, SMOKE, ["bc_t"], "lr held after the warmup")
    with pytest.raises(grid.GridError, match="say why"):
        grid.repin_methods(folder, SMOKE, ["bc_t"], " ", retire_to=history)
    with pytest.raises(grid.GridError, match="already holds act at this checkout's method code"):
        grid.repin_methods(folder, SMOKE, ["act"], "nothing changed", retire_to=history)
    with pytest.raises(grid.GridError, match="no_such is no method of the grid"):
        grid.repin_methods(folder, SMOKE, ["no_such"], "typo", retire_to=history)
    assert json.loads((folder / grid.GRID_FILE).read_text()) == _pin()  # refused: nothing moved

    assert main(["grid-repin", "--scale", "smoke", str(folder), "--method", "bc_t", "--method", "bc_t_gmm", "--method", "bc_t",
                 "--reason", "lr held after the warmup", "--retire-to", str(history)]) == 0
    assert "make its cells from a worktree there" in capsys.readouterr().out
    pinned = json.loads((folder / grid.GRID_FILE).read_text())
    assert pinned["method_ids"]["bc_t"] == pinned["method_ids"]["bc_t_gmm"] == "id-bc_t-fixed"
    assert pinned["method_ids"]["act"] == "id-act" and pinned["git_sha"] == "a" * 40  # the others keep theirs
    assert grid.method_commit(pinned, "bc_t") == "b" * 40 and grid.method_commit(pinned, "act") == "a" * 40
    assert [(r["method"], r["from_method_id"], r["to_commit"], len(r["retired_cells"])) for r in pinned["repins"]] == [
        ("bc_t", "id-bc_t", "b" * 40, 2), ("bc_t_gmm", "id-bc_t_gmm", "b" * 40, 0)]
    # the old cells are in history, whole; the grid says bc_t's are to be made, act's is done
    assert json.loads((history / "StackCube" / "bc_t" / grid.CELL_FILE).read_text())["method_id"] == "id-bc_t"
    status = {(s.method, s.task): s.status for s in grid.cell_status(folder, SMOKE)}
    assert status["bc_t", "PushCube"] == status["bc_t", "StackCube"] == "missing"
    assert status["act", "PushCube"] == "done"
    assert "(smoke). Re-pinned at bbbbbbbbbbbb: bc_t, bc_t_gmm.\n" in grid.status_markdown(
        [], pinned)
    # the fixed checkout now adds bc_t's cells; one with the old code is sent to the new commit
    assert grid.open_grid(folder, SMOKE, "bc_t")["method_ids"]["bc_t"] == "id-bc_t-fixed"
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: _pin())
    with pytest.raises(grid.GridError, match=f"git worktree add --detach DIR {'b' * 40}"):
        grid.open_grid(folder, SMOKE, "bc_t")
    # a cell of the method being collected (or cut off mid-collection) holds the re-pin back
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: _pin(dp="id-dp-fixed"))
    (folder / "PickCube" / "dp.partial").mkdir(parents=True)
    with pytest.raises(grid.GridError, match="dp.partial: a cell of dp is being collected"):
        grid.repin_methods(folder, SMOKE, ["dp"], "x", retire_to=history)
    # a re-pin moves code only: another config, or code not committed, is refused
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: {**fixed, "config_hash": "0" * 12})
    with pytest.raises(grid.GridError, match="not the config: start a new grid"):
        grid.repin_methods(folder, SMOKE, ["dp"], "x", retire_to=history)
    monkeypatch.setattr(grid, "current_pin", lambda cfg, root: _pin(dp="id-dp-dirty-0123"))
    with pytest.raises(grid.GridError, match="dp's code is not committed"):
        grid.repin_methods(folder, SMOKE, ["dp"], "x", retire_to=history)


def test_a_rebuilt_dataset_must_hash_as_the_grids(tmp_path):
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    grid.record_datasets(tmp_path, "PushCube", {"train": "d1", "validation": "v1"})  # the same: fine
    with pytest.raises(grid.GridError, match="PushCube datasets built here .* differ from the grid's"):
        grid.record_datasets(tmp_path, "PushCube", {"train": "d9", "validation": "v1"})
    grid.record_datasets(tmp_path, "PickCube", {"train": "p1", "validation": "q1"})  # the first of its task
    assert json.loads((tmp_path / grid.GRID_FILE).read_text())["datasets"]["PickCube"] == {
        "train": "p1", "validation": "q1"}


def test_grid_updates_keep_what_another_cell_wrote_meanwhile(tmp_path):
    """Two cells made side by side: each records into grid.json as it is on disk, not as it
    was when the cell started, so neither loses the other's entries."""
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    seen_at_start = json.loads((tmp_path / grid.GRID_FILE).read_text())  # what a second cell read first
    grid.record_datasets(tmp_path, "PickCube", {"train": "p1", "validation": "q1"})
    bench = tmp_path / "features.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tcpu_time\n60.0\t0:01:00\t900.0\t50.0\n")
    grid.record_shared_job(tmp_path, "features/abc/PushCube", [bench])
    assert "PickCube" not in seen_at_start["datasets"]
    now = json.loads((tmp_path / grid.GRID_FILE).read_text())
    assert now["datasets"]["PickCube"] and now["shared_jobs"]["features/abc/PushCube"] == {
        "seconds": 60.0, "cpu_seconds": 50.0, "max_rss_mb": 900.0, "jobs": 1}
    assert not list(tmp_path.glob("*.partial"))


def test_a_grid_is_read_at_its_own_scale(tmp_path):
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    with pytest.raises(grid.GridError, match="grid of the smoke scale, not of reduced: pass --scale smoke"):
        grid.cell_status(tmp_path, load_config("reduced"))


def test_grid_commands_take_the_scale_from_the_grid_when_none_is_given(tmp_path, capsys):
    """`grid-status FOLDER`, as the docs first show it, needs no --scale: grid.json says it;
    an explicit other scale is still refused by name."""
    from harness.cli import main

    (tmp_path / grid.GRID_FILE).write_text(json.dumps(_pin()))
    _cell(tmp_path, "act", "PushCube")
    assert main(["grid-status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(smoke)" in out and "| PushCube | act | done" in out
    assert main(["grid-status", "--scale", "reduced", str(tmp_path)]) == 2
    assert "not of reduced: pass --scale smoke" in capsys.readouterr().err


def test_measured_commands_report_their_own_peak_memory(tmp_path):
    """A command's peak RSS is its own, not the largest of every child run before it."""
    big = grid._run_measured([sys.executable, "-c", "import time; x = b'1' * (300 * 2**20); time.sleep(1)"],
                             tmp_path / "big.log")
    small = grid._run_measured([sys.executable, "-c", "pass"], tmp_path / "small.log")
    assert big["max_rss_mb"] > 300 and small["max_rss_mb"] < 100
    with pytest.raises(grid.GridError, match="failed \\(3\\); see .*fail.log"):
        grid._run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "fail.log")


def test_a_lock_left_by_a_killed_snakemake_is_named_with_the_command_that_lifts_it(tmp_path):
    """A cell's Snakemake killed mid-way (a session's end) leaves its working directory locked; the
    next cell's error shows the log's tail and the unlock command, which works as printed."""
    (tmp_path / "Snakefile").write_text('rule cell:\n    output: "cell.txt"\n'
                                        '    shell: "if [ -e hold ]; then sleep 60; fi; touch {output}"\n')
    (tmp_path / "hold").touch()

    def command(target):
        return [sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path),
                "--cores", "1", "--", target]

    holder = subprocess.Popen(command("cell.txt"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    locks = tmp_path / ".snakemake" / "locks"
    for _ in range(600):
        if locks.is_dir() and any(locks.iterdir()):
            break
        time.sleep(0.1)
    os.killpg(holder.pid, signal.SIGKILL)  # as a session's end kills it: the lock stays
    holder.wait()
    assert any(locks.iterdir())
    (tmp_path / "hold").unlink()
    with pytest.raises(grid.GridError) as err:
        grid._run_measured(command("cell.txt"), tmp_path / "cell.log")
    message = str(err.value)
    assert "LockException" in message and f"found {tmp_path} locked" in message
    unlock = message.splitlines()[-1].strip()
    assert unlock.endswith("--unlock")
    subprocess.run(shlex.split(unlock), check=True, capture_output=True)
    grid._run_measured(command("cell.txt"), tmp_path / "cell.log")
    assert (tmp_path / "cell.txt").exists()


def test_a_cell_outside_the_grid_is_refused(tmp_path):
    with pytest.raises(grid.GridError, match="no cell of the smoke grid"):
        grid.run_cell(SMOKE, "act", "LiftPegUpright", tmp_path / "g")


def test_the_grid_tables_hold_every_cell_and_say_which_are_missing_or_stale(tmp_path):
    """Tables from a grid folder with two cells done, one stale and the rest missing: every
    method and task is in them, the numbers are the cells' rows, and the status is per cell."""
    import pandas as pd

    from harness.paths import REPO_ROOT

    reduced = load_config("reduced")
    measured = REPO_ROOT / "results" / "measured" / "reduced" / "history" / "pushcube_seven_commits"
    pin = {"scale": "reduced", "config_hash": reduced.config_hash(), "git_sha": "a" * 40, "code_id": "c",
           "method_ids": {m: f"id-{m}" for m, _ in grid.grid_cells(reduced)},
           "datasets": {"PushCube": {"train": "d1", "validation": "v1"}}}
    (tmp_path / grid.GRID_FILE).write_text(json.dumps(pin))
    for method, method_id in (("random", "id-random"), ("act", "id-act"), ("dp", "id-old")):
        cell = grid.cell_dir(tmp_path, method, "PushCube")
        cell.mkdir(parents=True)
        (cell / "rollouts.csv").write_bytes((measured / f"rollouts_{method}_PushCube.csv").read_bytes())
        (cell / grid.CELL_FILE).write_text(json.dumps({
            "method_id": method_id, "config_hash": pin["config_hash"], "datasets": pin["datasets"]["PushCube"],
            "successes": 0, "rollouts": 125, "threads": 2, "workers": 2, "machine": {"cpu": "Xeon"},
            "jobs": {"train": {"seconds": 3600.0, "cpu_seconds": 7200.0, "max_rss_mb": 2048.0},
                     "evaluate": {"seconds": 600.0, "cpu_seconds": 1200.0, "max_rss_mb": 1024.0}}}))
    (tmp_path / "figures").mkdir()  # an earlier report's Fig. 4, of a PAR cell since retired by a re-pin
    (tmp_path / "figures" / "fig4.png").write_bytes(b"an earlier report's figure")
    written = grid.grid_report(tmp_path, reduced)
    table2 = pd.read_csv(tmp_path / "table2.csv", keep_default_na=False).set_index("method")
    assert list(table2.index) == grid.table_methods(reduced.data["methods"])["table2"]
    act = pd.read_csv(measured / "rollouts_act_PushCube.csv")
    assert float(table2.loc["act", "PushCube_success_rate"]) == round(100 * act["success"].mean(), 1)
    assert table2.loc["act", "PushCube_grid"] == "done"
    assert table2.loc["dp", "PushCube_grid"].startswith("stale: method code id-old")
    assert table2.loc["bc_t", "PushCube_grid"] == "missing" and table2.loc["bc_t", "PushCube_success_rate"] == ""
    assert set(table2["StackCube_grid"]) == {"missing"}
    table3 = pd.read_csv(tmp_path / "table3.csv", keep_default_na=False).set_index("method")
    assert list(table3.index) == ["random", "par_noar", "par_discrete", "par"]
    assert table3.loc["random", "PushCube_grid"] == "done" and table3.loc["par", "PushCube_grid"] == "missing"
    assert (tmp_path / "reproduction.md").exists() and (tmp_path / "figures" / "table2_success.png").exists()
    assert tmp_path / "status.md" in written
    table1 = pd.read_csv(tmp_path / "table1.csv")
    assert set(table1["method"]) == set(reduced.data["methods"])
    assert not (tmp_path / "figures" / "fig4.png").exists()  # no PAR cell collected: no Fig. 4, not a stale one
    costs = (tmp_path / "costs.md").read_text()
    assert "| PushCube | act | 1.17 | 2.33 | 2.0 | 2 |  | train, evaluate |" in costs  # no load recorded
    assert "Total: 3.5 wall hours of jobs run one after another, 7.0 CPU-hours" in costs  # three cells
    assert "| 2 | 3.5 |" in costs and "| 8 | 0.9 |" in costs
    assert "for the 3 collected cells of the grid's 33 and the jobs they share (the 30 others" in costs


def test_the_cost_projection_says_which_cells_it_covers():
    import pandas as pd

    costs = pd.DataFrame([{"task": "PushCube", "method": m, "job": "train", "threads": 1, "seconds": 3600.0,
                           "cpu_seconds": 3600.0, "max_rss_mb": 1024.0, "cpu": "EPYC", "load_1min": None, "cores": None,
                           "train_log_seconds": 3500.0} for m in ("random", "act")])
    assert "for the whole grid (2 cells) on one machine" in grid.cost_markdown(costs, cells_in_grid=2)
    partial = grid.cost_markdown(costs, cells_in_grid=33)
    assert "the 2 collected cells of the grid's 33" in partial and "whole grid" not in partial
    costs["load_1min"], costs["cores"] = [3.65, None], [2, None]  # random collected beside other work
    loaded = grid.cost_markdown(costs, cells_in_grid=2)
    assert "| PushCube | random | 1.00 | 1.00 | 1.0 | 1 | 3.6 / 2 | train |" in loaded
    assert "| PushCube | act | 1.00 | 1.00 | 1.0 | 1 |  | train |" in loaded
    assert "Resumed" not in loaded  # both trainings ran in one session: the log's steps fit the benchmark
    costs["train_log_seconds"] = [3500.0, 4954.0]  # act stopped and resumed: its benchmark saw the last session
    resumed = grid.cost_markdown(costs, cells_in_grid=2)
    assert ("- PushCube act: 4,954 s of training steps in all, 3,600 s of training in the last session; before it "
            "0.38 wall hours, 0.38 CPU-hours") in resumed
    # the cell's row, the totals and the projection count the sessions before the last, not only the benchmarks
    assert "| PushCube | act | 1.38 | 1.38 | 1.0 | 1 |  | train (resumed: with its earlier sessions) |" in resumed
    assert "Total: 2.4 wall hours of jobs run one after another, 2.4 CPU-hours (of them 0.4 wall hours" in resumed
    assert "| 2 | 1.2 |" in resumed and "| 2 | 1.0 |" in loaded
    assert "PushCube random:" not in resumed
