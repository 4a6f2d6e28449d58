"""Cell by cell: does a measured success rate reproduce the paper's?

For every (table, method, task) cell with rollouts: our successes k of n and their 95% Wilson
interval; the paper's rate with the rollouts behind it and where that number comes from
(results/paper_reference.csv); an exact test of k/n against the paper (Fisher's exact
two-proportion test where the paper's n is known, an exact binomial test of k/n against the
paper's rate taken as fixed where it is not); a verdict at ``ALPHA``; the margin over the
chance row (``random``) on the same task, with a one-sided Fisher test that the cell beats
it; and the ways the cell's protocol differs from the paper's. A cell measured at another
scale than ``paper`` (fewer demonstrations, smaller models, a shorter cap) is compared all
the same, but its reading says what it is: never a failed reproduction of a paper-scale number.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.paths import REFERENCE_CSV
from harness.report import (TASK_ORDER, code_note, joined, load_rows, paper_reference, state_interval, state_rates,
                            succeeded, wilson_interval)

ALPHA = 0.05
CHANCE = "random"
# the paper's protocol (paper §5.1.2: 25 init states x 5 seeds; the cap and image size as
# harness.protocol.Protocol and harness.tasks document their sources)
PAPER_PROTOCOL = {"scale": "paper", "rollouts": 125, "max_episode_steps": 400, "image": "512x512"}


def paper_test(k: int, n: int, paper_percent: float, paper_n: int | None) -> tuple[str, float]:
    """(test name, two-sided p-value) of k/n against the paper's rate."""
    from scipy.stats import binomtest, fisher_exact

    p0 = paper_percent / 100
    if paper_n:
        paper_k = round(p0 * paper_n)  # the paper gives a rounded rate; its count is the nearest one
        _, p = fisher_exact([[k, n - k], [paper_k, paper_n - paper_k]], alternative="two-sided")
        return f"Fisher's exact, {k}/{n} vs {paper_k}/{paper_n}", float(p)
    return f"exact binomial, {k}/{n} vs the paper's {paper_percent:g}% (its n unknown)", \
        float(binomtest(k, n, p0).pvalue)


def verdict(k: int, n: int, paper_percent: float, paper_n: int | None, alpha: float = ALPHA) -> dict:
    """``consistent`` (the test keeps the paper's rate at ``alpha``), ``below`` or ``above``."""
    if n == 0:
        raise ValueError("a cell with no rollouts has no verdict")
    if paper_percent is None or (isinstance(paper_percent, float) and math.isnan(paper_percent)):
        return {"test": "", "p_value": float("nan"), "verdict": "no paper number"}
    test, p = paper_test(k, n, paper_percent, paper_n)
    if p >= alpha:
        word = "consistent"
    else:
        word = "below" if k / n < paper_percent / 100 else "above"
    return {"test": test, "p_value": p, "verdict": word}


def beats_chance(k: int, n: int, chance_k: int, chance_n: int) -> float:
    """One-sided Fisher p-value that the cell's rate is above the chance row's."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k, n - k], [chance_k, chance_n - chance_k]], alternative="greater")[1])


class PairingError(HarnessError, ValueError):
    """Two sets of rollouts that are not the same rollouts of two policies."""


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Two policies on the same rollouts (task, policy seed, init state: the same initial
    state and the same sampling seed, ``harness.protocol.rollout_seed``), compared pair by pair:
    each one's successes, the discordant pairs (``a_only``: a succeeded where b failed;
    ``b_only``) and the exact McNemar p-value (two-sided binomial test of the discordant pairs
    against 1/2). Paired, it sees a difference the two rates' intervals hide when both
    policies fail or succeed on the same hard or easy states."""
    from scipy.stats import binomtest

    key = ["task", "policy_seed", "init_state_seed"]
    sides = []
    for name, rows in (("first", a), ("second", b)):
        if rows.duplicated(key).any():
            raise PairingError(
                f"the {name} rollouts hold one (task, policy seed, init state) twice; give one run's rows per file")
        sides.append(succeeded(rows).set_axis(pd.MultiIndex.from_frame(rows[key])))
    only_a, only_b = sorted(set(sides[0].index) - set(sides[1].index)), sorted(set(sides[1].index) - set(sides[0].index))
    if only_a or only_b:
        raise PairingError(
            f"the two sets of rollouts are not the same rollouts: {len(only_a)} only in the first "
            f"(e.g. {only_a[:2]}), {len(only_b)} only in the second (e.g. {only_b[:2]}); evaluate both "
            "under one protocol (the same tasks, init states and policy seeds)")
    for column in ("max_episode_steps", "control_mode", "image_height", "image_width"):
        if column in a and column in b and set(a[column].astype(str)) != set(b[column].astype(str)):
            raise PairingError(f"the two sets of rollouts ran under different protocols: {column} "
                               f"{sorted(set(a[column].astype(str)))} against {sorted(set(b[column].astype(str)))}")
    x, y = sides[0], sides[1].reindex(sides[0].index)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    p = float(binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"n": int(len(x)), "a_successes": int(x.sum()), "b_successes": int(y.sum()),
            "a_only": a_only, "b_only": b_only, "mcnemar_p": p}


def state_sign_test(a: pd.DataFrame, b: pd.DataFrame, alternative: str = "two-sided") -> dict:
    """Two cells on the same initial states, compared state by state: the states where a's rate
    (over its policy seeds) is higher (``a_states``) and lower (``b_states``), and the exact sign
    test of those counts against 1/2 (``alternative="greater"``: that a is higher). The
    initial states are the independent units (``state_interval``); states the two tie on carry
    no information. Rows of states one cell lacks are refused."""
    from scipy.stats import binomtest

    x, y = state_rates(a), state_rates(b)
    if set(x.index) != set(y.index):
        raise PairingError(f"the two cells ran on different initial states: {sorted(set(x.index) ^ set(y.index))[:4]}")
    d = x - y.reindex(x.index)
    up, down = int((d > 0).sum()), int((d < 0).sum())
    p = float(binomtest(up, up + down, 0.5, alternative=alternative).pvalue) if up + down else 1.0
    return {"a_states": up, "b_states": down, "sign_p": p}


# the tables whose claim is an order of methods, tested pair by pair on the same rollouts: paper
# §5.3 on Table 3, "PAR-Full consistently outperforms both baselines by a large margin"; its
# numbers also put PAR-Discrete above PAR-NoAR on every task
ORDERED_TABLES = ("table3",)


def orderings(rows: pd.DataFrame, table: str, methods: list[str] | None = None,
              reference_csv: Path = REFERENCE_CSV, alpha: float = ALPHA) -> pd.DataFrame:
    """Each pair of ``table``'s methods on one task whose paper rates differ, the paper's
    higher one first, compared on the same rollouts (``paired_comparison``, the exact McNemar
    test) and on the same initial states (``state_sign_test``): ``the paper's order`` or
    ``reversed`` where the state-level sign test rejects a tie at ``alpha``, else ``not
    resolved``. The rollout-level test is reported beside it but does not decide: the policy
    seeds of one initial state are not independent trials (``state_interval``), so it
    overstates the evidence. A pair whose rollouts are not the same ones says why instead."""
    reference = paper_reference(table, reference_csv)
    names = methods or list(dict.fromkeys(rows["name"]))
    cell_rows = dict(tuple(rows.groupby(["name", "task"])))
    out = []
    for task in [t for t in TASK_ORDER if t in set(rows["task"])]:
        paper = {r["method"]: float(r["success_rate_percent"])
                 for r in reference[reference["task"] == task].to_dict("records")}
        ranked = sorted((n for n in names if n in paper and (n, task) in cell_rows), key=lambda n: -paper[n])
        for i, higher in enumerate(ranked):
            for lower in ranked[i + 1:]:
                if paper[higher] == paper[lower]:
                    continue
                rec = {"table": table, "task": task, "higher": higher, "lower": lower,
                       "paper_higher": paper[higher], "paper_lower": paper[lower]}
                try:
                    c = paired_comparison(cell_rows[higher, task], cell_rows[lower, task])
                    st = state_sign_test(cell_rows[higher, task], cell_rows[lower, task])
                except PairingError as e:
                    out.append(rec | {"finding": f"not paired: {e}"})
                    continue
                if st["sign_p"] < alpha:
                    finding = "the paper's order" if st["a_states"] > st["b_states"] else "reversed"
                else:
                    finding = "not resolved"
                out.append(rec | {"rollouts": c["n"], "higher_successes": c["a_successes"],
                                  "lower_successes": c["b_successes"], "higher_only": c["a_only"],
                                  "lower_only": c["b_only"], "mcnemar_p": float(f"{c['mcnemar_p']:.4g}"),
                                  "higher_states": st["a_states"], "lower_states": st["b_states"],
                                  "states_sign_p": float(f"{st['sign_p']:.4g}"), "finding": finding})
    return pd.DataFrame(out)


def differences(cell: pd.DataFrame) -> list[str]:
    """How the rows of one cell depart from the paper's protocol."""
    out = []
    scales = sorted(set(cell["scale"].astype(str)))
    if scales != ["paper"]:
        out.append(f"scale {'/'.join(scales)} (the paper's: 1,000 demonstrations per task, each "
                   "method's paper config)")
    if len(cell) != PAPER_PROTOCOL["rollouts"]:
        out.append(f"{len(cell)} rollouts (paper: {PAPER_PROTOCOL['rollouts']})")
    caps = sorted({int(c) for c in cell["max_episode_steps"]})
    if caps != [PAPER_PROTOCOL["max_episode_steps"]]:
        out.append(f"episode cap {'/'.join(map(str, caps))} steps (paper: {PAPER_PROTOCOL['max_episode_steps']})")
    images = sorted({f"{h}x{w}" for h, w in zip(cell["image_height"], cell["image_width"])})
    if images != [PAPER_PROTOCOL["image"]]:
        out.append(f"images {'/'.join(images)} (paper: {PAPER_PROTOCOL['image']})")
    return out


def reading(row: dict) -> str:
    """One line a reader can take away from the cell."""
    v = row["verdict"]
    if v == "no paper number":
        return "no paper number to compare with"
    what = {"consistent": "consistent with", "below": "below", "above": "above"}[v]
    if row["scale"] != "paper":
        return (f"{row['scale']}-scale measurement, {what} the paper's paper-scale number at "
                f"{ALPHA}; not a reproduction test")
    if row["protocol_differences"]:
        return f"{what} the paper's number at {ALPHA}, under a different protocol"
    return {"consistent": "reproduces the paper's number (consistent at 0.05)",
            "below": "does not reproduce: below the paper's number at 0.05",
            "above": "above the paper's number at 0.05"}[v]


def cells(rows: pd.DataFrame, table: str, methods: list[str] | None = None,
          reference_csv: Path = REFERENCE_CSV) -> pd.DataFrame:
    """One row per (method, task) cell of ``table`` with rollouts."""
    reference = paper_reference(table, reference_csv)
    names = methods or list(dict.fromkeys(rows["name"]))
    out = []
    for task in [t for t in TASK_ORDER if t in set(rows["task"])]:
        chance = rows[(rows["name"] == CHANCE) & (rows["task"] == task)]
        chance_k, chance_n = int(chance["success"].sum()), len(chance)
        for name in names:
            cell = rows[(rows["name"] == name) & (rows["task"] == task)]
            if cell.empty:
                continue
            k, n = int(cell["success"].sum()), len(cell)
            lo, hi = wilson_interval(k, n)
            ref = reference[(reference["method"] == name) & (reference["task"] == task)]
            paper = float(ref["success_rate_percent"].iloc[0]) if len(ref) else float("nan")
            paper_n = int(ref["n"].iloc[0]) if len(ref) and not pd.isna(ref["n"].iloc[0]) else None
            rec = {"table": table, "method": name, "task": task, "successes": k, "rollouts": n,
                   "success_rate": round(100 * k / n, 1), "ci95_low": round(100 * lo, 1),
                   "ci95_high": round(100 * hi, 1), "paper_success_rate": paper,
                   "paper_n": paper_n if paper_n else ("unknown" if len(ref) else ""),
                   "paper_source": ref["source"].iloc[0] if len(ref) else "",
                   "paper_n_source": ref["n_source"].iloc[0] if len(ref) else ""}
            rec.update(state_interval(cell))
            rec.update(verdict(k, n, paper, paper_n))
            rec["p_value"] = float(f"{rec['p_value']:.4g}") if not math.isnan(rec["p_value"]) else ""
            if chance_n and name != CHANCE:
                rec["chance_rate"] = round(100 * chance_k / chance_n, 1)
                rec["margin_over_chance"] = round(100 * (k / n - chance_k / chance_n), 1)
                rec["above_chance_p"] = float(f"{beats_chance(k, n, chance_k, chance_n):.4g}")
                try:
                    st = state_sign_test(cell, chance, alternative="greater")
                    rec.update(states_above_chance=st["a_states"], states_below_chance=st["b_states"],
                               above_chance_states_p=float(f"{st['sign_p']:.4g}"))
                except PairingError:  # another protocol's initial states: no state-level test
                    rec.update(states_above_chance="", states_below_chance="", above_chance_states_p="")
            else:
                rec["chance_rate"] = round(100 * chance_k / chance_n, 1) if chance_n else ""
                rec["margin_over_chance"] = "" if chance_n else "no chance row"
                rec.update(above_chance_p="", states_above_chance="", states_below_chance="", above_chance_states_p="")
            rec["scale"] = ";".join(sorted(set(cell["scale"].astype(str))))
            rec["protocol_differences"] = "; ".join(differences(cell))
            rec["reading"] = reading(rec)
            rec["code_note"] = code_note(cell)
            rec["git_sha"] = joined(cell["git_sha"])
            for column in ("code_id", "train_method_id", "method_id"):
                rec[column] = joined(cell[column])
            rec["config_hash"] = joined(cell["config_hash"])
            out.append(rec)
    return pd.DataFrame(out)


def _p(p) -> str:
    return "-" if p == "" else ("<0.0001" if p < 1e-4 else f"{p:.4f}".rstrip("0").rstrip("."))


def markdown(table_cells: pd.DataFrame, title: str = "Reproduction report",
             table_orderings: pd.DataFrame | None = None) -> str:
    """The Markdown summary: one section per table, one line per cell, the protocol differences
    listed once under each table, and the paper's order of its methods tested pair by pair
    where ``table_orderings`` (``orderings``) has that table's pairs."""
    lines = [f"# {title}", "",
             f"Verdicts at alpha = {ALPHA}: Fisher's exact test where the paper's n is known, an exact "
             "binomial test against the paper's rate where it is not. Margins are percentage points over "
             f"the chance row (`{CHANCE}`) on the same task, with the one-sided Fisher p-value that the cell "
             "beats it. A cell at another scale than `paper` is a measurement, not a reproduction test.", "",
             "Those tests and the first interval count every rollout as an independent trial. They are not: "
             "a rollout's outcome depends on its initial state, and a deterministic policy gives the same "
             "outcome under all five policy seeds. The *by initial state* columns take the states as the "
             "units: the states solved at least once and those whose seeds disagree (of all states), the "
             "effective number of trials n_eff with its Wilson interval (harness.report.state_interval), "
             "and, over chance, the states where the cell's rate is above / below the chance row's with the "
             "one-sided exact sign test. Where the two disagree, trust the state-level one.", ""]
    for table, sub in table_cells.groupby("table", sort=True):
        notes = list(dict.fromkeys(sub["protocol_differences"]))
        mark = {text: f"[{chr(ord('a') + i)}]" for i, text in enumerate(notes)}
        # a cell whose rows are not one method code's, trained and evaluated alike, says so
        code_notes = [text for text in dict.fromkeys(sub["code_note"]) if text]
        code_mark = {"": ""} | {text: f" †{i + 1}" for i, text in enumerate(code_notes)}
        lines += [f"## Table {table[-1]}", "",
                  "| method | task | ours k/n (%) [95% CI] | by initial state: solved, split / states; n_eff [95% CI] "
                  "| paper % (n) | test p | verdict | over chance (p) | states over chance +/- (p) | reading | protocol |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sub.to_dict("records"):
            paper = "" if pd.isna(r["paper_success_rate"]) else f"{r['paper_success_rate']:g} ({r['paper_n'] or '?'})"
            margin = r["margin_over_chance"]
            margin = f"{margin:+g} pp ({_p(r['above_chance_p'])})" if isinstance(margin, float) else (margin or "-")
            states = (f"{r['states_solved']}, {r['states_split']} / {r['states']}; {r['n_eff']:g} "
                      f"[{r['ci95_low_states']:g}, {r['ci95_high_states']:g}]")
            over = ("-" if r["above_chance_states_p"] == "" else
                    f"+{r['states_above_chance']}/-{r['states_below_chance']} ({_p(r['above_chance_states_p'])})")
            lines.append(f"| {r['method']} | {r['task']} | {r['successes']}/{r['rollouts']} "
                         f"({r['success_rate']:g}) [{r['ci95_low']:g}, {r['ci95_high']:g}]{code_mark[r['code_note']]} | "
                         f"{states} | {paper} | {_p(r['p_value'])} | {r['verdict']} | {margin} | {over} | {r['reading']} | "
                         f"{mark[r['protocol_differences']]} |")
        pairs = [] if table_orderings is None or table_orderings.empty else \
            table_orderings[table_orderings["table"] == table].to_dict("records")
        if pairs:
            lines += ["", "The paper's order, pair by pair on the same rollouts (exact McNemar test of the "
                      "discordant rollouts) and on the same initial states (exact sign test of the states where "
                      f"one rate is higher, which decides the finding; alpha = {ALPHA}):", "",
                      "| task | paper: higher > lower | ours | higher only / lower only | McNemar p "
                      "| states higher / lower | sign p | finding |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in pairs:
                paper = f"{r['higher']} {r['paper_higher']:g} > {r['lower']} {r['paper_lower']:g}"
                if r["finding"].startswith("not paired"):
                    lines.append(f"| {r['task']} | {paper} | - | - | - | - | - | {r['finding']} |")
                    continue
                lines.append(f"| {r['task']} | {paper} | {r['higher_successes']}/{r['rollouts']} vs "
                             f"{r['lower_successes']}/{r['rollouts']} | {r['higher_only']} / {r['lower_only']} | "
                             f"{_p(r['mcnemar_p'])} | {r['higher_states']} / {r['lower_states']} | "
                             f"{_p(r['states_sign_p'])} | {r['finding']} |")
        lines += ["", "Protocol, as against the paper's:", ""]
        lines += [f"- {mark[text]} {text or 'the paper protocol'}" for text in notes]
        lines += ["", "Code (harness/provenance.py): every cell without a † was trained and evaluated by one "
                  "method code" + (":" if code_notes else "."), ""]
        lines += [f"- †{i + 1} {text}" for i, text in enumerate(code_notes)]
        sources = sub.drop_duplicates("method")[["method", "paper_source", "paper_n_source"]]
        lines += ["", "Paper numbers:", ""]
        lines += [f"- {s['method']}: {s['paper_source'] or 'none'}; n: {s['paper_n_source'] or 'none'}"
                  for s in sources.to_dict("records")]
        lines.append("")
    return "\n".join(lines)


def write_report(tables: dict[str, list], out_csv: str | Path, out_md: str | Path,
                 methods: dict[str, list[str]] | None = None, title: str = "Reproduction report") -> pd.DataFrame:
    """``tables``: table name -> its rollout files. Writes the per-cell CSV and the Markdown
    (with the paper's order tested for the ``ORDERED_TABLES``)."""
    frames, orders = [], []
    for table, paths in tables.items():
        rows, names = load_rows(paths), (methods or {}).get(table)
        frames.append(cells(rows, table, names))
        if table in ORDERED_TABLES:
            orders.append(orderings(rows, table, names))
    df = pd.concat(frames, ignore_index=True)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    Path(out_md).write_text(markdown(df, title, pd.concat(orders, ignore_index=True) if orders else None))
    return df
