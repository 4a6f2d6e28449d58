"""The plots and the figure rules, on constructed rollout rows (no simulator)."""

import csv

import pandas as pd
import pytest

from harness import plots
from harness.figures import first_failure, key_groups, spread
from harness.report import load_rows


def _rows(path, method, task, outcomes, cap=20):
    """outcomes: per rollout, the success step or None (failed at ``episode_len``)."""
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(["task", "method", "variant", "policy_seed", "init_state_seed", "success", "success_step",
                        "episode_len", "max_episode_steps", "scale", "git_sha", "config_hash"])
        for i, (step, length) in enumerate(outcomes):
            w.writerow([task, method, "", i // 3, 20241201 + i % 3, int(step is not None),
                        "" if step is None else step, length, cap, "smoke", "abc", "h"])


def test_first_failure_follows_the_protocol_order(tmp_path):
    path = tmp_path / "par.csv"
    # rows written in another order than the protocol's (policy seed, then init state)
    pd.DataFrame({"policy_seed": [1, 0, 0, 0], "init_state_seed": [20241201, 20241203, 20241202, 20241201],
                  "success": [0, 0, 1, 1]}).to_csv(path, index=False)
    assert first_failure(path) == (0, 20241203)
    pd.DataFrame({"policy_seed": [0], "init_state_seed": [20241201], "success": [1]}).to_csv(path, index=False)
    assert first_failure(path) is None


def test_outcomes_tell_the_cap_from_an_early_stop(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "PushCube", [(5, 5), (None, 20), (None, 12)])
    assert plots.outcomes(load_rows([path]))["outcome"].tolist() == ["success", "cap reached", "stopped before the cap"]


def test_success_summary_has_the_wilson_interval_and_the_paper(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "act", "PushCube", [(5, 5)] * 4 + [(None, 20)] * 2)
    _rows(path, "random", "PushCube", [(None, 20)] * 6)
    summary = plots.success_summary(load_rows([path]), "table2").set_index("method")
    assert summary.loc["act", "rate"] == pytest.approx(400 / 6) and summary.loc["act", "paper"] == 76
    assert summary.loc["act", "low"] < summary.loc["act", "rate"] < summary.loc["act", "high"]
    assert pd.isna(summary.loc["random", "paper"])


def test_plots_are_written_and_a_run_without_a_log_is_left_out(tmp_path):
    path = tmp_path / "rows.csv"
    _rows(path, "random", "PushCube", [(None, 20)] * 3)
    _rows(path, "act", "PushCube", [(7, 7), (None, 20), (9, 9)])
    rows = load_rows([path])
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss\n1,2.0\n2,1.0\n")
    written = plots.success_plot(rows, "table2", tmp_path / "f" / "t_success", ["random", "act"])
    written += plots.outcome_plot(rows, tmp_path / "f" / "t_outcomes", ["random", "act"])
    written += plots.training_plot([("random", "PushCube", tmp_path / "none.csv"), ("act", "PushCube", log)],
                                   tmp_path / "f" / "t_training")
    assert [p.name for p in written] == ["t_success.png", "t_success.pdf", "t_outcomes.png", "t_outcomes.pdf",
                                         "t_training.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert plots.read_train_logs([("random", "PushCube", tmp_path / "none.csv")]).empty


def test_the_same_rows_draw_the_same_bytes(tmp_path):
    """A rerun report leaves its committed figures unchanged: no date in the PDFs, the success
    points' jitter seeded (and numpy's global generator left as it was)."""
    import numpy as np

    path = tmp_path / "rows.csv"
    _rows(path, "act", "PushCube", [(7, 7), (None, 20), (9, 9), (8, 8), (12, 12)])
    rows = load_rows([path])
    first = plots.outcome_plot(rows, tmp_path / "a" / "t", ["act"]) + plots.success_plot(rows, "table2", tmp_path / "a" / "s")
    np.random.seed(1)
    before = np.random.get_state()[1].copy()
    second = plots.outcome_plot(rows, tmp_path / "b" / "t", ["act"]) + plots.success_plot(rows, "table2", tmp_path / "b" / "s")
    assert (np.random.get_state()[1] == before).all()
    assert [p.name for p in first] == ["t.png", "t.pdf", "s.png", "s.pdf"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_attention_key_groups_cover_every_key_once():
    m = {"num_text": 3, "steps": 2, "frame_tokens": 4, "action_tokens": 2}
    groups = key_groups(m)
    assert [name for name, _ in groups] == ["text", "O_n-1", "A_n-1", "O_n", "A_n"]
    covered = [i for _, sl in groups for i in range(sl.start, sl.stop)]
    assert covered == list(range(3 + 2 * 6))
    with_bos = key_groups(dict(m, bos_tokens=4))  # PAR with NOVA's video mixer: the BOS slot after the text
    assert [name for name, _ in with_bos] == ["text", "BOS", "O_n-1", "A_n-1", "O_n", "A_n"]
    assert [i for _, sl in with_bos for i in range(sl.start, sl.stop)] == list(range(3 + 4 + 2 * 6))
    assert spread(25, 4).tolist() == [0, 8, 16, 24] and spread(2, 4).tolist() == [0, 1]


def test_the_training_plot_draws_the_logged_validation_error(tmp_path):
    with_val = tmp_path / "par.csv"
    with_val.write_text("step,loss,val_rmse\n1,2.0,\n2,1.0,0.8\n3,0.9,\n4,0.7,0.5\n")
    without = tmp_path / "act.csv"
    without.write_text("step,loss\n1,2.0\n2,1.0\n")
    logs = [("par", "PushCube", with_val), ("act", "PushCube", without)]
    data = plots.read_train_logs(logs)
    assert data.loc[data["method"] == "par", "val_rmse"].dropna().tolist() == [0.8, 0.5]
    assert data.loc[data["method"] == "act", "val_rmse"].isna().all()
    plt, _ = plots._pyplot()
    drawn = []
    original = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        plots.training_plot(logs, tmp_path / "training")
    finally:
        plt.Axes.plot = original
    assert drawn.count("PushCube val") == 1  # par's panel only


def test_a_grids_plot_gives_every_cell_its_place_and_says_which_are_missing_or_stale(tmp_path, monkeypatch):
    """A grid with PushCube's random and act rows (act stale) and nothing on PickCube: both tasks
    are panels, every method a row, and the cells not to read as done say why."""
    import matplotlib.axes

    path = tmp_path / "rows.csv"
    _rows(path, "random", "PushCube", [(None, 20)] * 3)
    _rows(path, "act", "PushCube", [(7, 7), (None, 20), (9, 9)])
    notes = []
    annotate = matplotlib.axes.Axes.annotate

    def spy(ax, text, xy, *args, **kwargs):
        notes.append((ax.get_title(), text, xy[1]))
        return annotate(ax, text, xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", spy)
    cells = {("random", "PushCube"): "done", ("act", "PushCube"): "stale", ("dp", "PushCube"): "missing",
             ("random", "PickCube"): "missing", ("act", "PickCube"): "missing", ("dp", "PickCube"): "missing"}
    plots.success_plot(load_rows([path]), "table2", tmp_path / "g", ["random", "act", "dp"], cells=cells)
    placed = sorted((title, text, y) for title, text, y in notes if text in ("missing", "stale"))
    assert placed == [("task = PickCube", "missing", 0), ("task = PickCube", "missing", 1),
                      ("task = PickCube", "missing", 2), ("task = PushCube", "missing", 2),
                      ("task = PushCube", "stale", 1.3)]
