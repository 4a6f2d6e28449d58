"""Controlled runs at the reduced scale, summarised from their committed files (issues 27, 28).

A controlled run changes one thing against a baseline and is evaluated on the same 125 rollouts
(the same initial states and sampling seeds), so the two can be compared pair by pair. Each
folder of them (``results/measured/reduced/par_controlled/``, ``.../bc_t_controlled/``) holds a
``runs.json``::

    {"chance": "<rollouts of the chance row, relative to the folder>",
     "runs": [{"name": ..., "change": <the one thing it changes>, "config": <its --config-file>,
               "baseline": true (on one run), "files": {"rollouts": ..., "probe": ...,
               "train_log": ...} (optional: files kept elsewhere, e.g. a grid cell's)}, ...]}

and, per run, the files its commands wrote: ``rollouts_<name>.csv`` (125 rollouts),
``probe_<name>.json`` (``python -m harness probe``) and ``train_log_<name>.csv``, unless
``files`` points elsewhere. Writes ``summary.csv`` and ``summary.md`` into the folder: success
k/n with its 95% Wilson interval, the one-sided Fisher p-value against the chance row, the
paired exact McNemar test against the baseline, both also by initial state (the exact sign
test of the states where one rate is higher: the independent units, where a policy's seeds
give the same outcome; ``harness.reproduction.state_sign_test``), the method identities that
trained and evaluated the rows, and the probe's headline numbers (chunk error against the hold-last
baseline, frame / qpos / history sensitivity against the expert's episode gap).

    python benchmarks/controlled.py results/measured/reduced/par_controlled
    python benchmarks/controlled.py results/measured/reduced/bc_t_controlled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.report import succeeded, wilson_interval  # noqa: E402
from harness.reproduction import beats_chance, paired_comparison, state_sign_test  # noqa: E402
from harness.rollouts import read_rollouts  # noqa: E402

PROBE_KEYS = ("rmse", "first_call_rmse", "hold_last", "repeat_chunk", "seed_spread", "frame_swap",
              "qpos_swap", "history_swap", "episode_gap")


def _rows(path: Path) -> pd.DataFrame:
    return read_rollouts(path)


def _file(folder: Path, run: dict, kind: str, default: str) -> Path:
    given = (run.get("files") or {}).get(kind)
    return (folder / given) if given else folder / default


def read_runs(folder: Path) -> tuple[Path, list[dict]]:
    """The chance row's rollouts and the runs of ``folder/runs.json``, checked."""
    path = folder / "runs.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: a folder of controlled runs needs its runs.json (see this script's doc)")
    spec = json.loads(path.read_text())
    if not isinstance(spec, dict) or "chance" not in spec or "runs" not in spec:
        raise SystemExit(f"{path}: expected an object with 'chance' and 'runs'")
    runs = spec["runs"]
    baselines = [r["name"] for r in runs if r.get("baseline")]
    if len(baselines) != 1:
        raise SystemExit(f"{path}: exactly one run must be the baseline (\"baseline\": true), found {baselines}")
    return folder / spec["chance"], runs


def summarise(folder: Path) -> pd.DataFrame:
    chance_path, runs = read_runs(folder)
    chance_rows = _rows(chance_path)
    chance = succeeded(chance_rows)
    baseline = next(r for r in runs if r.get("baseline"))
    base_path = _file(folder, baseline, "rollouts", f"rollouts_{baseline['name']}.csv")
    base_rows = _rows(base_path) if base_path.exists() else None
    out = []
    for run in runs:
        name = run["name"]
        row = {"run": name, "change": run["change"]}
        rollouts = _file(folder, run, "rollouts", f"rollouts_{name}.csv")
        if rollouts.exists():
            rows = _rows(rollouts)
            ok = succeeded(rows)
            k, n = int(ok.sum()), len(ok)
            low, high = wilson_interval(k, n)
            row.update(successes=k, rollouts=n, rate=round(100 * k / n, 1), ci_low=round(100 * low, 1),
                       ci_high=round(100 * high, 1),
                       p_vs_chance=beats_chance(k, n, int(chance.sum()), len(chance)),
                       train_method_id=";".join(sorted(set(rows["train_method_id"]))),
                       method_id=";".join(sorted(set(rows["method_id"]))),
                       mean_success_step=round(pd.to_numeric(rows.loc[ok, "success_step"]).mean(), 1) if k else None)
            states = state_sign_test(rows, chance_rows, alternative="greater")  # the states as the units
            row.update(states_over_chance=states["a_states"], states_under_chance=states["b_states"],
                       states_p_vs_chance=states["sign_p"])
            if base_rows is not None and name != baseline["name"]:
                paired = paired_comparison(rows, base_rows)
                states = state_sign_test(rows, base_rows)
                row.update(vs_baseline_gained=paired["a_only"], vs_baseline_lost=paired["b_only"],
                           mcnemar_p=paired["mcnemar_p"], vs_baseline_states_up=states["a_states"],
                           vs_baseline_states_down=states["b_states"], states_sign_p=states["sign_p"])
        probe = _file(folder, run, "probe", f"probe_{name}.json")
        if probe.exists():
            p = json.loads(probe.read_text())
            row.update({f"probe_{k}": round(p[k]["overall"], 3) for k in PROBE_KEYS if k in p})
        log = _file(folder, run, "train_log", f"train_log_{name}.csv")
        if log.exists():
            tl = pd.read_csv(log)
            row["train_steps"] = int(tl["step"].max())
            row["train_seconds"] = round(float(tl["seconds"].sum()))
            if "val_rmse" in tl:
                val = tl.dropna(subset=["val_rmse"])
                row["val_rmse_by_step"] = " ".join(f"{int(s)}:{v:.3f}" for s, v in zip(val["step"], val["val_rmse"]))
        out.append(row)
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    lines = ["| run | change | success | 95% CI | vs chance (one-sided Fisher p; states +/-, sign p) "
             "| vs baseline: +/- (McNemar p; states +/-, sign p) | probe rmse "
             "(hold last) | frame / qpos / history swap (episode gap) |", "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        has = pd.notna(r.get("successes"))
        success = f"{int(r['successes'])}/{int(r['rollouts'])} ({r['rate']}%)" if has else "not yet"
        ci = f"{r['ci_low']}-{r['ci_high']}" if has else ""
        chance = (f"{r['p_vs_chance']:.2g}; +{int(r['states_over_chance'])}/-{int(r['states_under_chance'])} "
                  f"({r['states_p_vs_chance']:.2g})" if has else "")
        paired = (f"+{int(r['vs_baseline_gained'])}/-{int(r['vs_baseline_lost'])} ({r['mcnemar_p']:.2g}); "
                  f"+{int(r['vs_baseline_states_up'])}/-{int(r['vs_baseline_states_down'])} ({r['states_sign_p']:.2g})"
                  if pd.notna(r.get("mcnemar_p", float("nan"))) else "")
        probe = (f"{r['probe_rmse']} ({r['probe_hold_last']})" if pd.notna(r.get("probe_rmse", float("nan"))) else "")
        swaps = (f"{r['probe_frame_swap']} / {r['probe_qpos_swap']} / {r['probe_history_swap']} "
                 f"({r['probe_episode_gap']})" if pd.notna(r.get("probe_rmse", float("nan"))) else "")
        lines.append(f"| {r['run']} | {r['change']} | {success} | {ci} | {chance} | {paired} | {probe} | {swaps} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of controlled runs, with its runs.json")
    folder = parser.parse_args(argv).folder
    df = summarise(folder)
    df.to_csv(folder / "summary.csv", index=False)
    text = markdown(df)
    (folder / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
