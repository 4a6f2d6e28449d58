"""Reading rollout CSVs back (``evaluate`` writes them; tables, reports, plots, figures and
``gather-rollouts`` read them), validated on read in one place.

A rollout file that was cut off (a killed job, a full disk, a copy that stopped), or edited
by hand, must not be counted as if it were whole: pandas fills a short last row with empty
cells, and a table then counts it and joins its half-written ``config_hash`` into the row's
provenance. Here every line has the header's number of fields, the file ends with a line
end, the columns a reader needs exist, and the numeric columns parse; anything else is a
``RolloutFileError`` naming the file, the line and the column, and saying how to rebuild it.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from harness.errors import HarnessError

# columns that hold integers (empty allowed where a rollout may have none), and floats
INT_COLUMNS = {"policy_seed": False, "init_state_seed": False, "success": False, "success_step": True,
               "episode_len": False, "max_episode_steps": False, "num_init_states": False,
               "num_policy_seeds": False, "image_height": False, "image_width": False, "train_seed": False}
FLOAT_COLUMNS = ("seconds",)
TABLE_COLUMNS = ("task", "method", "policy_seed", "init_state_seed", "success")
"""What a table, report or plot reads of every row."""
_INT = re.compile(r"-?[0-9]+")


class RolloutFileError(HarnessError, ValueError):
    """A rollout CSV that is missing, cut off or does not parse; the message names the file,
    the line and the column, and how to make the file again."""


def rebuild_hint(path: str | Path, verb: str = "Delete it and make it again") -> str:
    """How to make a rollout file again: its ``evaluate`` command, or its Snakemake target
    (a workflow path ``outputs/<scale>/eval/<method>/<task>[/init_states_<a>_<b>].csv``)."""
    path = Path(path)
    block = re.fullmatch(r"init_states_([0-9]+)_([0-9]+)\.csv", path.name)
    flags = f" --init-states {block[1]} {block[2]}" if block else ""
    return (f"{verb}: `python -m harness evaluate --run <run folder> --task <Task>{flags} "
            f"--out {path}`, or in the workflow `snakemake --cores 1 {path} --config scale=<scale>`")


def check_rollout_file(path: str | Path, required=TABLE_COLUMNS) -> None:
    """Refuse a rollout CSV that is missing, empty, cut off, has a line with another number of
    fields than its header, lacks a ``required`` column, or has a value that does not parse in a
    numeric column (``success``: 0 or 1)."""
    path = Path(path)
    if not path.is_file():
        raise RolloutFileError(f"rollout file {path} does not exist. {rebuild_hint(path, 'Make it')}.")
    with path.open(newline="") as f:
        text = f.read()
    if not text.strip():
        raise RolloutFileError(f"rollout file {path} is empty. {rebuild_hint(path)}.")
    lines = text.splitlines()
    if not text.endswith(("\n", "\r")):
        raise RolloutFileError(f"rollout file {path}: its last line (line {len(lines)}) is cut off (no line end): "
                               f"the file was not written to the end. {rebuild_hint(path)}.")
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise RolloutFileError(f"rollout file {path} has no column {', '.join(missing)} (its header, line 1: "
                                   f"{','.join(header)[:200]}): not a file written by `python -m harness "
                                   f"evaluate`. {rebuild_hint(path)}.")
        checks = [(i, c) for i, c in enumerate(header) if c in INT_COLUMNS or c in FLOAT_COLUMNS]
        for record in reader:
            line = reader.line_num
            if not record:
                continue
            if len(record) != len(header):
                raise RolloutFileError(f"rollout file {path}, line {line}: {len(record)} fields, the header has "
                                       f"{len(header)} (a cut-off or damaged row). {rebuild_hint(path)}.")
            for i, column in checks:
                value = record[i]
                if column in INT_COLUMNS:
                    ok = (value == "" and INT_COLUMNS[column]) or bool(_INT.fullmatch(value))
                    ok = ok and (column != "success" or value in ("0", "1"))
                    kind = "0 or 1" if column == "success" else "an integer"
                else:
                    ok, kind = _is_float(value), "a number"
                if not ok:
                    raise RolloutFileError(f"rollout file {path}, line {line}: column {column} is {value!r}, "
                                           f"not {kind}. {rebuild_hint(path)}.")
    except csv.Error as exc:
        raise RolloutFileError(f"rollout file {path}, line {reader.line_num}: not valid CSV ({exc}). "
                               f"{rebuild_hint(path)}.") from None


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_rollouts(path: str | Path, required=TABLE_COLUMNS, dtype=str):
    """A rollout CSV as a DataFrame after ``check_rollout_file``: empty cells stay empty
    strings; ``dtype`` as pandas takes it (default: every column as text)."""
    import pandas as pd

    check_rollout_file(path, required)
    return pd.read_csv(path, dtype=dtype, keep_default_na=False)
