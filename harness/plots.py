"""The plots a reader looks at first, drawn with seaborn from the per-rollout rows (never typed in).

- ``success_plot``: per task, each method's success rate with its 95% interval, the initial
  states as the units (filled circle and bar; ``harness.report.state_interval``), and the
  paper's number beside it (open diamond); black and gray only, so it reads in grayscale. PNG
  for a README, PDF for a paper.
- ``outcome_plot``: per method and task, when the successes happen (the env step of each) and
  how the rollouts end (success, the episode cap reached, or stopped before the cap), so a low
  cell shows why it is low.
- ``training_plot``: each run's training loss against the optimizer step (``train_log.csv``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.paths import REFERENCE_CSV
from harness.report import TASK_ORDER, code_note, paper_reference, state_interval, wilson_interval

ROW_COLUMNS = ("task", "method", "policy_seed", "init_state_seed", "success", "episode_len", "max_episode_steps",
               "scale")
"""What the plots read of every rollout row (how a rollout ended, beside a table's columns)."""
GRAYS = {"ours": "black", "paper": "0.45", "chance": "0.6"}
OUTCOMES = ["success", "cap reached", "stopped before the cap"]
OUTCOME_STYLE = {"success": ("0.15", ""), "cap reached": ("0.85", "//"), "stopped before the cap": ("0.55", "..")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
    return plt, sns


def _save(fig, out: str | Path, formats=("png",)) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out.with_suffix(f".{fmt}")
        # no creation date in a PDF: the same rows give the same bytes, so a rerun report leaves git clean
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None)
        written.append(path)
    return written


def _tasks(rows: pd.DataFrame) -> list[str]:
    return [t for t in TASK_ORDER if t in set(rows["task"])]


def success_summary(rows: pd.DataFrame, table: str, methods: list[str] | None = None,
                    reference_csv: Path = REFERENCE_CSV) -> pd.DataFrame:
    """Long form: one row per (method, task) with k, n, rate, its 95% interval with the initial
    states as the units (``low``, ``high``: ``harness.report.state_interval``; over rollouts:
    ``low_rollouts``, ``high_rollouts``), the paper's rate."""
    reference = paper_reference(table, reference_csv).set_index(["method", "task"])["success_rate_percent"]
    names = methods or list(dict.fromkeys(rows["name"]))
    out = []
    for name in names:
        for task in _tasks(rows):
            cell = rows[(rows["name"] == name) & (rows["task"] == task)]
            if cell.empty:
                continue
            k, n = int(cell["success"].sum()), len(cell)
            lo, hi = wilson_interval(k, n)
            states = state_interval(cell)  # the interval drawn: the initial states as the units
            out.append({"method": name, "task": task, "successes": k, "rollouts": n, "rate": 100 * k / n,
                        "low": states["ci95_low_states"], "high": states["ci95_high_states"],
                        "low_rollouts": 100 * lo, "high_rollouts": 100 * hi,
                        "paper": reference.get((name, task), np.nan),
                        "code_note": code_note(cell)})
    return pd.DataFrame(out)


def success_plot(rows: pd.DataFrame, table: str, out: str | Path, methods: list[str] | None = None,
                 title: str = "", cells: dict[tuple[str, str], str] | None = None) -> list[Path]:
    """Per task, each method's rate with its 95% interval, the paper's number beside it.

    ``cells`` (a results grid's): every (method, task) of the table with a word for the ones not
    to read as done: ``missing`` is written where the point would be, ``stale`` in its row below the point;
    every method in ``methods`` and every task in ``cells`` then has its place, rows or not."""
    plt, sns = _pyplot()
    data = success_summary(rows, table, methods)
    names = list(methods) if cells else list(dict.fromkeys(data["method"]))
    tasks = [t for t in TASK_ORDER if t in {task for _, task in cells}] if cells else _tasks(rows)
    grid = sns.FacetGrid(data, col="task", col_order=tasks, height=0.45 * len(names) + 1.6, aspect=1.1,
                         sharey=True, xlim=(-2, 102), despine=False)

    def draw(data, color=None, label=None):
        ax = plt.gca()
        y = np.array([names.index(m) for m in data["method"]])
        ax.errorbar(data["rate"], y - 0.12, xerr=[data["rate"] - data["low"], data["high"] - data["rate"]],
                    fmt="o", color=GRAYS["ours"], ms=6, capsize=3, lw=1.2,
                    label="ours (95% CI, initial states as units)")
        paper = data["paper"].notna().to_numpy()
        ax.plot(data["paper"][paper], y[paper] + 0.12, "D", mfc="white", mec=GRAYS["ours"], ms=6, mew=1.3,
                ls="none", label="paper")
        chance = data.loc[data["method"] == "random", "rate"]
        if len(chance):  # the chance level through every row
            ax.axvline(float(chance.iloc[0]), ls=":", lw=1.2, color=GRAYS["chance"], zorder=0, label="chance (random)")
        for x, yy, k, n, note in zip(data["rate"], y, data["successes"], data["rollouts"], data["code_note"]):
            ax.annotate(f"{k}/{n}" + (" †" if note else ""), (x, yy - 0.12), xytext=(0, -9), textcoords="offset points",
                        ha="center", va="top", fontsize=7, color="0.3")

    grid.map_dataframe(draw)
    for (method, task), word in (cells or {}).items():
        if word == "done" or method not in names:
            continue
        has_point = ((data["method"] == method) & (data["task"] == task)).any() if len(data) else False
        grid.axes_dict[task].annotate(word, (50, names.index(method) + (0.3 if has_point else 0)), ha="center",
                                      va="center", fontsize=7, style="italic", color="0.45")
    for ax in grid.axes.flat:
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.6)
        if "random" in names:  # the chance row, shaded
            ax.axhspan(names.index("random") - 0.5, names.index("random") + 0.5, color="0.93", zorder=0)
    grid.set_axis_labels("success rate (%)", "")
    grid.set_titles(col_template="{col_name}")
    handles, labels = grid.axes.flat[0].get_legend_handles_labels()
    grid.figure.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False,
                       bbox_to_anchor=(0.5, 0.0))
    scales = "/".join(sorted(set(rows["scale"].astype(str))))
    grid.figure.suptitle(title or f"Table {table[-1]} ({scales} scale): success rate per method and task", y=1.02)
    if (data["code_note"] != "").any():  # never silent about a cell of mixed or mismatched code
        grid.figure.text(0.5, -0.06, "† its rollouts' code is mixed, differs between training and "
                         "evaluation, or is not known (the reproduction report says which)",
                         ha="center", va="top", fontsize=8)
    paths = _save(grid.figure, out, ("png", "pdf"))
    plt.close(grid.figure)
    return paths


def outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    """Each rollout's ending: ``success``, ``cap reached`` or ``stopped before the cap``."""
    ended = np.where(rows["success"].astype(int) == 1, "success",
                     np.where(rows["episode_len"].astype(int) >= rows["max_episode_steps"].astype(int),
                              "cap reached", "stopped before the cap"))
    return rows.assign(outcome=ended)


def outcome_plot(rows: pd.DataFrame, out: str | Path, methods: list[str] | None = None,
                 title: str = "") -> list[Path]:
    """Top: the env step of every success per method (box and points); bottom: how rollouts ended."""
    plt, sns = _pyplot()
    data = outcomes(rows)
    names = [m for m in (methods or list(dict.fromkeys(data["name"]))) if m in set(data["name"])]
    tasks = _tasks(data)
    h = 0.42 * len(names) + 1.2
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 2 * h), squeeze=False, sharey="row")
    for col, task in enumerate(tasks):
        sub = data[data["task"] == task]
        cap = int(sub["max_episode_steps"].max())
        ax = axes[0, col]
        wins = sub[sub["outcome"] == "success"].assign(success_step=lambda d: d["success_step"].astype(float))
        if len(wins):
            sns.boxplot(data=wins, x="success_step", y="name", order=names, color="0.9", fliersize=0,
                        linecolor="0.2", width=0.6, ax=ax)
            state = np.random.get_state()  # seaborn jitters with numpy's global generator: seed it here only
            np.random.seed(0)
            try:
                sns.stripplot(data=wins, x="success_step", y="name", order=names, color="black", size=2.5,
                              alpha=0.6, jitter=0.2, ax=ax)
            finally:
                np.random.set_state(state)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlim(0, cap)
        ax.set_title(f"{task}: step of each success (cap {cap})")
        ax.set_xlabel("env step")
        ax.set_ylabel("")
        ax = axes[1, col]
        counts = pd.crosstab(sub["name"], sub["outcome"]).reindex(index=names, columns=OUTCOMES, fill_value=0)
        share = counts.div(counts.sum(axis=1).replace(0, 1), axis=0) * 100
        left = np.zeros(len(names))
        for outcome in OUTCOMES:
            color, hatch = OUTCOME_STYLE[outcome]
            ax.barh(range(len(names)), share[outcome], left=left, color=color, hatch=hatch, edgecolor="0.3",
                    lw=0.5, label=outcome)
            left += share[outcome].to_numpy()
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of rollouts")
        ax.set_title(f"{task}: how the rollouts ended")
    axes[1, 0].legend(loc="upper center", bbox_to_anchor=(0.5 * len(tasks), -0.35 if len(names) > 3 else -0.5),
                      ncol=3, frameon=False)
    fig.suptitle(title or "When successes happen and how failures end", y=1.0)
    fig.tight_layout()
    paths = _save(fig, out, ("png", "pdf"))
    plt.close(fig)
    return paths


def read_train_logs(logs: list[tuple[str, str, str | Path]]) -> pd.DataFrame:
    """``logs``: (method, task, train_log.csv) triples; runs without a log (nothing trained) are
    skipped."""
    frames = []
    for method, task, path in logs:
        path = Path(path)
        if not path.exists() or path.stat().st_size == 0:
            continue
        log = pd.read_csv(path)
        if {"step", "loss"} <= set(log.columns) and len(log):
            if "val_rmse" not in log.columns:  # runs trained without held-out demos
                log["val_rmse"] = float("nan")
            frames.append(log[["step", "loss", "val_rmse"]].assign(method=method, task=task))
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=["step", "loss", "val_rmse", "method", "task"]))


def training_plot(logs: list[tuple[str, str, str | Path]], out: str | Path, title: str = "") -> list[Path]:
    """Loss vs optimizer step, one panel per method (each its own loss and scale), a line per task;
    where a run logged the probe's validation error (``val_rmse``, at its checkpoints), its
    points on a right-hand axis."""
    plt, sns = _pyplot()
    data = read_train_logs(logs)
    if data.empty:
        fig, ax = plt.subplots(figsize=(5, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no training log among these runs\n(none of their methods trains)", ha="center",
                va="center")
        paths = _save(fig, out)
        plt.close(fig)
        return paths
    methods = list(dict.fromkeys(m for m, _, _ in logs if m in set(data["method"])))
    tasks = [t for t in TASK_ORDER if t in set(data["task"])]
    grid = sns.relplot(data=data, x="step", y="loss", col="method", col_order=methods, hue="task",
                       hue_order=tasks, style="task", style_order=tasks, kind="line", palette="gray",
                       col_wrap=min(4, len(methods)), height=2.4, aspect=1.25,
                       facet_kws=dict(sharey=False, sharex=False))
    for ax in grid.axes.flat:
        values = data.loc[data["method"] == ax.get_title().split(" = ")[-1], "loss"]
        if len(values) and (values > 0).all() and values.max() / max(values.min(), 1e-12) > 20:
            ax.set_yscale("log")
        val = data[(data["method"] == ax.get_title().split(" = ")[-1]) & data["val_rmse"].notna()]
        if len(val):
            right = ax.twinx()
            for marker, (task, points) in zip("osD^v", val.groupby("task", sort=False)):
                right.plot(points["step"], points["val_rmse"], marker=marker, ls=":", color="black", ms=3.5,
                           label=f"{task} val")
            right.set_ylabel("val chunk error\n(std units)", fontsize=7)
            right.tick_params(labelsize=7)
    grid.set_titles(col_template="{col_name}")
    grid.set_axis_labels("optimizer step", "training loss")
    grid.figure.suptitle(title or "Training loss per run (dotted, right axis: held-out chunk error)"
                         if data["val_rmse"].notna().any() else title or "Training loss per run", y=1.03)
    paths = _save(grid.figure, out)
    plt.close(grid.figure)
    return paths
