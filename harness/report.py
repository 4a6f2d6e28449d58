"""Tables computed from the per-rollout rows, never typed in.

A table has one row per method (or variant) and, per task, the success rate, its 95% Wilson
interval and the number of rollouts, then the average over tasks, whether the models were
trained from scratch or from pretrained weights that saw robot actions, and the paper's
reference numbers with the rollouts behind each and how that model was pretrained (read from
results/paper_reference.csv, which is data, not code).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.paths import PARAMETER_REFERENCE_CSV, REFERENCE_CSV
from harness.provenance import IDENTITY_COLUMNS, UNKNOWN

TASK_ORDER = ["PushCube", "PickCube", "StackCube"]


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well-behaved at 0% and 100%)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def succeeded(rows: pd.DataFrame) -> pd.Series:
    """The rows' outcomes as booleans, from ints or from a CSV's strings ("1", "True")."""
    return rows["success"].astype(str).str.lower().isin(["1", "true"])


def state_rates(cell: pd.DataFrame) -> pd.Series:
    """Each initial state's success rate over its rollouts (its policy seeds), by init-state seed."""
    return succeeded(cell).groupby(cell["init_state_seed"].astype(int)).mean()


def state_interval(cell: pd.DataFrame) -> dict:
    """The cell's rate with its initial states as the independent units. A rollout's outcome
    depends on its initial state, and a deterministic policy (ACT, BC-T, a regression head) gives
    the same outcome under every policy seed: its 125 rollouts are 25 trials, each counted
    five times. The rate's variance is estimated from the spread of the states' rates (the
    cluster-sampling estimator, states of equal size), giving an effective number of trials
    n_eff = p(1-p) / var (Kish), kept between the number of states and of rollouts (a cell whose
    states all agree, as at 0% or 100%, has n_eff = its number of states); the interval is
    Wilson's at n_eff. Returns the states, the states solved at least once, the states whose
    outcome differs between policy seeds, n_eff and the interval (percent)."""
    rates = state_rates(cell)
    g, n = len(rates), len(cell)
    p = float(succeeded(cell).mean()) if n else float("nan")
    var = float(((rates - rates.mean()) ** 2).sum() / (g * (g - 1))) if g > 1 else 0.0
    if p in (0.0, 1.0):
        n_eff = float(g)  # every state agrees; nothing tells copies from independent trials
    else:  # states that all share one rate (var 0) are no more alike than independent rollouts
        n_eff = float(n) if var < 1e-12 else min(float(n), max(float(g), p * (1 - p) / var))
    lo, hi = wilson_interval(p * n_eff, n_eff) if n else (float("nan"), float("nan"))
    return {"states": g, "states_solved": int((rates > 0).sum()),
            "states_split": int(((rates > 0) & (rates < 1)).sum()), "n_eff": round(n_eff, 1),
            "ci95_low_states": round(100 * lo, 1), "ci95_high_states": round(100 * hi, 1)}


def load_rows(paths, required=None) -> pd.DataFrame:
    """Every rollout row of ``paths``, each file validated on read (``harness.rollouts``;
    ``required``: the columns the caller reads, default a table's); a rollout (method, task,
    policy seed, init state) found twice is refused, naming where."""
    from harness.rollouts import TABLE_COLUMNS, RolloutFileError, read_rollouts

    # hashes stay text: an all-digit config hash must not turn into a number
    text = {"variant": str, "config_hash": str, "git_sha": str, "train_git_sha": str,
            "pretrained_weights": str, "action_pretrained": str, "prompt_demo_seeds": str,
            **{column: str for column in IDENTITY_COLUMNS}}
    paths = list(paths)
    if not paths:
        raise RolloutFileError("no rollout files given")
    frames = [read_rollouts(p, required or TABLE_COLUMNS, dtype=text) for p in paths]
    rows = pd.concat(frames, ignore_index=True)
    files = [str(p) for p, frame in zip(paths, frames) for _ in range(len(frame))]
    # rows from before these columns: no method then loaded pretrained weights
    # (harness.runs.pretrained_columns) or was prompted with demonstrations
    # (and rows from before code identities: empty, which every table cell of them says)
    for column, before in (("pretrained_weights", ""), ("action_pretrained", "false"), ("prompt_demo_seeds", ""),
                           *((column, "") for column in IDENTITY_COLUMNS)):
        rows[column] = rows[column].replace("", before).fillna(before) if column in rows else before
    if "variant" not in rows:
        rows["variant"] = ""
    rows["name"] = [v if v else m for m, v in zip(rows["method"], rows["variant"])]
    key = ["name", "task", "policy_seed", "init_state_seed"]
    dup = rows.duplicated(key, keep=False)
    if dup.any():
        first = rows[dup].iloc[0]
        same = (rows[key] == first[key]).all(axis=1)
        where = sorted({files[i] for i in same[same].index})
        raise RolloutFileError(
            f"{int(rows.duplicated(key).sum())} rollouts appear twice (same method, task, policy seed and init "
            f"state; the first: {first['name']} on {first['task']}, policy seed {first['policy_seed']}, init state "
            f"{first['init_state_seed']}, in {' and '.join(where)}). Give each rollout file once; a file that "
            "holds a rollout twice was gathered from overlapping blocks: gather it again from its blocks "
            "(`python -m harness gather-rollouts`), or delete it and rerun its snakemake target")
    return rows


def joined(values) -> str:
    """A column's distinct values in one cell, ``;``-separated."""
    return ";".join(sorted(set(map(str, values))))


def code_note(cell: pd.DataFrame) -> str:
    """What the rows of one table cell say of the code behind them: empty when one known method
    code (``method_id``) trained and evaluated every row at one code identity, else a sentence
    for each way it does not (rows mixing identities, trained by other method code than
    evaluated them, identities unknown or not recorded). Never silent: tables and the
    reproduction report carry it in the cell."""
    ids = cell.reindex(columns=list(IDENTITY_COLUMNS), fill_value="").astype(str)
    if (ids == "").any().any():
        return ("no code identity recorded for some rows (rows from before identities; "
                "`python -m harness provenance --fill-rows` derives them from their commits)")
    notes = []
    for column, what in (("train_method_id", "trained by"), ("method_id", "evaluated by"),
                         ("code_id", "evaluated at code")):
        if ids[column].nunique() > 1:
            notes.append(f"rows mix code: {what} {ids[column].nunique()} identities ({joined(ids[column])})")
    other = ids[ids["train_method_id"] != ids["method_id"]]
    if len(other):
        notes.append(f"{len(other)} of {len(ids)} rows trained by method code {joined(other['train_method_id'])} "
                     f"and evaluated by other method code, {joined(other['method_id'])}")
    if ids.apply(lambda col: col.str.contains(UNKNOWN)).any().any():
        notes.append("the code of some rows is not fully known (uncommitted changes, or a commit "
                     "outside this repository's history)")
    return "; ".join(notes)


def paper_reference(table: str, reference_csv: Path = REFERENCE_CSV) -> pd.DataFrame:
    """The paper's numbers for ``table`` (results/paper_reference.csv), its n as a nullable int."""
    reference = pd.read_csv(reference_csv, dtype={"n_source": str, "source": str})
    return reference[reference["table"] == table].astype({"n": "Int64"})


def compile_table(rows: pd.DataFrame, table: str, reference_csv: Path = REFERENCE_CSV,
                  methods: list[str] | None = None) -> pd.DataFrame:
    """Wide table: one row per method name, columns per task, an average, paper references."""
    reference = paper_reference(table, reference_csv)
    tasks = [t for t in TASK_ORDER if t in set(rows["task"])]
    names = methods or list(dict.fromkeys(rows["name"]))
    out = []
    for name in names:
        sub = rows[rows["name"] == name]
        if sub.empty:
            continue
        rec = {"method": name}
        rates = []
        for task in tasks:
            cell = sub[sub["task"] == task]
            n, k = len(cell), int(cell["success"].sum())
            lo, hi = wilson_interval(k, n)
            rate = 100 * k / n if n else float("nan")
            states = state_interval(cell) if n else {}
            rec.update({f"{task}_success_rate": round(rate, 1), f"{task}_ci95_low": round(100 * lo, 1),
                        f"{task}_ci95_high": round(100 * hi, 1),
                        # the interval with the initial states as the units (``state_interval``)
                        f"{task}_ci95_low_states": states.get("ci95_low_states", float("nan")),
                        f"{task}_ci95_high_states": states.get("ci95_high_states", float("nan")),
                        f"{task}_rollouts": n,
                        f"{task}_code_note": code_note(cell)})
            rates.append(rate)
        rec["average_success_rate"] = round(sum(rates) / len(rates), 1) if rates else float("nan")
        # how this row's models started: from scratch, or from pretrained weights (which saw
        # robot actions or not), read from the rows themselves
        rec["from_scratch"] = bool((sub["pretrained_weights"] == "").all())
        rec["action_pretrained"] = bool((sub["action_pretrained"] == "true").any())
        paper = reference[reference["method"] == name].set_index("task")
        ref = paper["success_rate_percent"]
        for task in tasks:
            rec[f"paper_{task}"] = ref.get(task, float("nan"))
        rec["paper_average"] = round(ref.reindex(tasks).mean(), 1) if len(ref) else float("nan")
        for task in tasks:  # the rollouts behind the paper's number; empty where unknown
            rec[f"paper_{task}_n"] = paper["n"].get(task, float("nan"))
        rec["paper_pretrained"] = paper["pretrained"].iloc[0] if len(paper) else ""
        rec["paper_action_pretrained"] = bool(paper["action_pretrained"].iloc[0]) if len(paper) else ""
        rec["scale"] = joined(sub["scale"])
        rec["git_sha"] = joined(sub["git_sha"])
        for column in ("code_id", "train_method_id", "method_id"):
            rec[column] = joined(sub[column])
        rec["config_hash"] = joined(sub["config_hash"])
        out.append(rec)
    df = pd.DataFrame(out)
    for column in [c for c in df.columns if c.startswith("paper_") and c.endswith("_n")]:
        df[column] = df[column].astype("Int64")  # counts: 125, not 125.0 where a row has none
    return df


def write_table(paths, table: str, out_csv: str | Path, methods: list[str] | None = None) -> pd.DataFrame:
    df = compile_table(load_rows(paths), table, methods=methods)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return df


def parameter_counts(name: str, scale: str | None = "paper", action_dim: int = 8, qpos_dim: int = 9,
                     image_size: tuple[int, int] = (512, 512)) -> dict[str, int]:
    """Trainable parameters per module of method (or variant) ``name`` at a scale preset, counted
    on the meta device (``Adapter.parameter_groups``); our datasets' dims by default."""
    import numpy as np

    from harness.adapter import DataInfo, resolve_config
    from harness.registry import get_method

    entry = get_method(name)
    adapter_cls = entry.load()
    cfg = resolve_config(adapter_cls, scale, entry.variant)
    stats = {key: {s: np.zeros(dim) for s in ("mean", "std", "min", "max", "q01", "q99")}
             for key, dim in (("actions", action_dim), ("obs_qpos", qpos_dim))}
    counts = adapter_cls.parameter_groups(cfg, DataInfo(action_dim, qpos_dim, tuple(image_size), "", stats))
    return counts


def parameter_table(methods: list[str], reference_csv: Path = PARAMETER_REFERENCE_CSV) -> pd.DataFrame:
    """Table 1 for every method: parameters per module at the paper preset (meta-device count)
    beside the paper's (PAR) or the method's source's (baselines) number, where one exists."""
    from harness.provenance import code_id, git_sha

    reference = pd.read_csv(reference_csv, dtype={"note": str}, keep_default_na=False)
    out = []
    for name in methods:
        counts = parameter_counts(name)
        for module, n in counts.items():
            ref = reference[(reference["method"] == name) & (reference["module"] == module)]
            rec = {"method": name, "module": module, "parameters": int(n), "parameters_M": round(n / 1e6, 2)}
            if len(ref):
                r = ref.iloc[0]
                rec.update(reference_parameters=int(r["parameters"]),
                           reference_M=round(r["parameters"] / 1e6, 2),
                           difference_percent=round(100 * (n - r["parameters"]) / r["parameters"], 2),
                           reference_source=r["source"], note=r["note"])
            else:
                rec.update(reference_parameters="", reference_M="", difference_percent="",
                           reference_source="none: neither the paper nor the method's source states it" if
                           module == "Total" else "", note="")
            out.append(rec)
    df = pd.DataFrame(out)
    df["preset"] = "paper"
    df["git_sha"] = git_sha()
    df["code_id"] = code_id()
    return df
