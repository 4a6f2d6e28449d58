"""A results grid built cell by cell: the (method, task) cells of Tables 2 and 3 at one scale,
trained and evaluated at one method identity per method (a pinned commit's code), collected
into one folder with everything a reader needs to trust them.

A grid folder (``results/measured/<scale>/grid/``) holds

- ``grid.json``: the pin: the commit, the config hash, every method's identity at that commit,
  and each task's dataset hashes (training and held-out), fixed by the first cell of the task;
- ``<task>/<method>/``: one cell: ``rollouts.csv`` (the evaluation's rows), ``train_log.csv``,
  ``probe.json`` / ``probe.md`` (``harness.probe`` on the held-out demos) and ``cell.json``
  (identities, dataset hashes, and each job's wall time, CPU time, peak memory and threads).

``python -m harness grid-cell`` makes one cell, from a checkout with the grid's code of the
cell's method (a git worktree pinned at the grid's commit, so main can move while the grid
runs): it asks Snakemake for the cell's rollouts (the same rules as the full DAG: datasets,
render check, frame features, training, evaluation; every step resumes), runs the probe, and
collects. ``python -m harness
grid-status`` says which cells are done, missing or stale. ``python -m harness grid-repin``
moves one method's pin to a later commit's code (a method fixed after the grid was pinned),
retiring that method's old cells to a history folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import REPO_ROOT

GRID_FILE = "grid.json"
CELL_FILE = "cell.json"
# Table 3's rows, in the paper's order: the ablations, then the full model
ABLATION_ROWS = ("par_noar", "par_discrete", "par")
CHANCE = ("random",)


class GridError(HarnessError, ValueError):
    """A cell that cannot join its grid (other code, another dataset, another config); the
    message says what differs and what to do."""


def table_methods(methods: list[str]) -> dict[str, list[str]]:
    """{table: its rows} for the configured ``methods``: the chance level first in both, the
    ablations and PAR in Table 3, every other method in Table 2 (the paper's split)."""
    chance = [m for m in CHANCE if m in methods]
    return {
        "table2": [m for m in methods if m not in ABLATION_ROWS[:2]],
        "table3": chance + [m for m in ABLATION_ROWS if m in methods],
    }


def grid_cells(cfg) -> list[tuple[str, str]]:
    """Every (method, task) cell of the config's Tables 2 and 3, each once, tasks outermost."""
    rows = table_methods(list(cfg.data["methods"]))
    methods = list(dict.fromkeys(rows["table2"] + rows["table3"]))
    return [(m, t) for t in cfg.tasks for m in methods]


def dataset_hash(path: str | Path) -> str:
    """The content hash of a harness dataset: SHA-256 over its arrays' recorded SHA-256s (frames,
    actions, states, seeds), so two builds hash equal exactly when every array is equal. The
    file is opened as the harness reads it (a corrupt one is refused by name)."""
    from harness.dataset import DemoDataset

    dataset = DemoDataset(path)
    dataset.close()
    return hashlib.sha256(json.dumps(dataset.checksums, sort_keys=True).encode()).hexdigest()[:16]


def cell_dir(folder: str | Path, method: str, task: str) -> Path:
    return Path(folder) / task / method


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GridError(f"{path} cannot be read ({exc}); delete it and make it again") from None


def read_grid(folder: str | Path) -> dict | None:
    """The folder's grid.json (its pin, repins and shared jobs), or None before its first cell."""
    path = Path(folder) / GRID_FILE
    return _read_json(path) if path.exists() else None


def _write_json(path: Path, data: dict) -> None:
    """Write whole or not at all: a crash mid-write leaves the previous file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


@contextmanager
def _locked(folder: Path):
    """The grid folder's lock: two cells made side by side update ``grid.json`` in turn."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".grid.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update_grid(folder: Path, change) -> dict:
    """Apply ``change(grid)`` to the grid file as it is now on disk (re-read under the lock, so
    a concurrent cell's entries are kept) and write it back; returns the updated grid."""
    with _locked(folder):
        grid = _read_json(folder / GRID_FILE)
        change(grid)
        _write_json(folder / GRID_FILE, grid)
    return grid


# --------------------------------------------------------------------------- the pin
def current_pin(cfg, root: Path = REPO_ROOT) -> dict:
    """The grid identity this checkout would give: its commit, config hash and every method's
    identity (uncommitted code changes show in the ids as ``-dirty-...``)."""
    from harness.provenance import CodeState

    state = CodeState(root)
    methods = list(dict.fromkeys(m for m, _ in grid_cells(cfg)))
    return {"scale": cfg.scale, "config_hash": cfg.config_hash(), "git_sha": state.commit,
            "code_id": state.code().id, "method_ids": {m: state.method(m).id for m in methods}}


def _clean_checkout_hint(root: Path) -> str:
    return (f"{root} has uncommitted code changes; commit them, or run from a clean worktree "
            "(git worktree add --detach DIR SHA)")


def open_grid(folder: str | Path, cfg, method: str, root: Path = REPO_ROOT, allow_dirty: bool = False) -> dict:
    """The grid's pin, written on first use from this checkout (every method's code committed).
    A cell joins only with the grid's scale and config and the grid's identity of its method: a
    checkout at a later commit that left ``method``'s code alone may add its cells; one that
    changed it may not (``allow_dirty``: tests only)."""
    folder = Path(folder)
    pin = current_pin(cfg, root)
    dirty = sorted(m for m, i in pin["method_ids"].items() if "-dirty-" in i)
    with _locked(folder):
        if not (folder / GRID_FILE).exists():
            if dirty and not allow_dirty:  # the pin is every method's identity: all committed
                raise GridError(f"{_clean_checkout_hint(root)}: the code of {', '.join(dirty)} is not committed, "
                                "and a new grid pins every method's identity")
            _write_json(folder / GRID_FILE, {**pin, "datasets": {}})
    grid = _read_json(folder / GRID_FILE)
    if method in dirty and not allow_dirty:
        raise GridError(f"{_clean_checkout_hint(root)}: {method}'s code is not committed")
    for key in ("scale", "config_hash"):
        if grid.get(key) != pin[key]:
            raise GridError(f"{folder} is the grid of {key} {grid.get(key)}; this checkout's config has "
                            f"{pin[key]}. Use the grid's config (--scale {grid.get('scale')}), or start a new "
                            "grid folder")
    if grid["method_ids"].get(method) != pin["method_ids"][method]:
        raise GridError(
            f"{folder} holds {method} at method code {grid['method_ids'].get(method)}; this checkout's is "
            f"{pin['method_ids'][method]}. Run the cell from a worktree at the grid's commit of {method} (git "
            f"worktree add --detach DIR {method_commit(grid, method)}), re-pin {method} to this checkout's "
            "code (python -m harness grid-repin), or start a new grid folder")
    return grid


def method_commit(grid: dict, method: str) -> str:
    """The commit whose code the grid holds for ``method``: the grid's own, or the one the
    method was re-pinned at (``grid-repin``)."""
    return grid.get("method_commits", {}).get(method, grid["git_sha"])


def repin_methods(folder: str | Path, cfg, methods: list[str], reason: str, retire_to: str | Path | None = None,
                  root: Path = REPO_ROOT) -> dict:
    """Move the grid's pin of ``methods`` to this checkout's code: for a method fixed after the
    grid was pinned, so that its cells are made again at the fixed code while every other method
    keeps its pin and its cells. The grid then still holds one identity per method. The
    method's cells made at the old identity are moved whole to ``retire_to/<task>/<method>/``
    (a record of the old code's numbers, not the grid's); without ``retire_to`` a method that has
    cells is refused. The grid's config and datasets stay: a change there is a new grid.
    ``reason`` (what was fixed, and the evidence) is kept in ``grid.json``'s ``repins``."""
    folder, methods = Path(folder), list(dict.fromkeys(methods))  # a method named twice is re-pinned once
    if not (folder / GRID_FILE).exists():
        raise GridError(f"{folder} has no {GRID_FILE}: there is no grid to re-pin (grid-cell starts one)")
    if not reason.strip():
        raise GridError("say why the pin moves (--reason): what was fixed, and the evidence")
    pin = current_pin(cfg, root)
    with _locked(folder):
        grid = _read_json(folder / GRID_FILE)
        for key in ("scale", "config_hash"):
            if grid.get(key) != pin[key]:
                raise GridError(f"{folder} is the grid of {key} {grid.get(key)}; this checkout's config has "
                                f"{pin[key]}. A re-pin moves a method's code, not the config: start a new grid")
        cells = {}
        for method in methods:
            old, new = grid["method_ids"].get(method), pin["method_ids"].get(method)
            if old is None:
                raise GridError(f"{method} is no method of the grid in {folder}: its methods are "
                                f"{sorted(grid['method_ids'])}")
            if "-dirty-" in new:
                raise GridError(f"{_clean_checkout_hint(root)}: {method}'s code is not committed")
            if new == old:
                raise GridError(f"the grid already holds {method} at this checkout's method code {new}")
            cells[method] = [c for task in cfg.tasks if (c := cell_dir(folder, method, task)).exists()]
            partial = [str(c) for task in cfg.tasks
                       if (c := cell_dir(folder, method, task).with_name(method + ".partial")).exists()]
            if partial:
                raise GridError(f"{', '.join(partial)}: a cell of {method} is being collected or was cut off "
                                "there; let it finish (or delete it) first")
        held = {m: c for m, c in cells.items() if c}
        if held and retire_to is None:
            raise GridError(f"{', '.join(f'{m} has {len(c)} cells' for m, c in held.items())} made at its old code; "
                            "give --retire-to DIR (a history folder) to move them there: the grid keeps one "
                            "identity per method")
        moves = [(c, Path(retire_to) / c.parent.name / m) for m, cs in held.items() for c in cs]
        clash = [str(dst) for _, dst in moves if dst.exists()]
        if clash:
            raise GridError(f"{', '.join(clash)} already exist: retire the old cells to another folder")
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for method in methods:
            grid.setdefault("repins", []).append({
                "method": method, "from_method_id": grid["method_ids"][method],
                "from_commit": method_commit(grid, method), "to_method_id": pin["method_ids"][method],
                "to_commit": pin["git_sha"], "date": when, "reason": reason,
                "retired_cells": [str(dst) for src, dst in moves if dst.name == method]})
            grid["method_ids"][method] = pin["method_ids"][method]
            grid.setdefault("method_commits", {})[method] = pin["git_sha"]
        _write_json(folder / GRID_FILE, grid)
    return grid


# the jobs that build a task's datasets (sharded or not: workflows/demos.smk), shared by its cells
DATASET_RULES = ("plan_demos", "plan_shard", "merge_plans", "render_dataset", "render_shard", "merge_dataset",
                 "verify_render", "val_dataset")


def record_datasets(folder: Path, task: str, hashes: dict, out: Path | None = None) -> dict:
    """Fix a task's dataset hashes in the pin (first cell of the task), with what building the
    datasets cost (``out``: the DAG's output folder), or refuse a cell whose rebuilt datasets
    differ from the ones the grid's other cells used. Returns the updated grid."""

    def change(grid):
        known = grid["datasets"].get(task)
        if known is None:
            grid["datasets"][task] = hashes
            for rule in DATASET_RULES if out is not None else ():
                _add_shared(grid, f"{rule}/{task}", _task_benchmarks(out, rule, task))
        elif known != hashes:
            raise GridError(
                f"the {task} datasets built here ({hashes}) differ from the grid's ({known}): the planner "
                "or renderer here gave other demos, or the config asks for other held-out demos, so this "
                "cell cannot join the grid. Compare the two builds (python -m harness dataset-info) first")

    return _update_grid(folder, change)


def record_shared_job(folder: Path, name: str, benchmarks: list[Path]) -> dict:
    """A job several cells share (a frame-feature cache): its cost, counted once in the grid's
    total (``shared_jobs``), from its Snakemake benchmark files."""
    return _update_grid(folder, lambda grid: _add_shared(grid, name, benchmarks))


def _add_shared(grid: dict, name: str, benchmarks: list[Path]) -> None:
    shared = grid.setdefault("shared_jobs", {})
    if name not in shared and (cost := _benchmark(benchmarks)) is not None:
        shared[name] = cost


# --------------------------------------------------------------------------- one cell
def _task_benchmarks(out: Path, rule: str, task: str, method: str | None = None) -> list[Path]:
    """A rule's benchmark files for one task (and method): the whole job's, or its shards'."""
    base = out / "benchmarks" / rule / (method or "")
    return [p for p in [base / f"{task}.tsv", *sorted((base / task).glob("*.tsv"))] if p.exists()]


def _benchmark(paths: list[Path]) -> dict | None:
    """Snakemake benchmark files (each file's last row), summed: wall seconds, CPU seconds, and
    the largest peak RSS (MB); None if there are none."""
    rows = []
    for path in paths:
        with path.open() as f:
            rows.append(list(csv.DictReader(f, delimiter="\t"))[-1])
    if not rows:
        return None

    def num(row, key):
        try:
            return float(row[key])
        except (KeyError, TypeError, ValueError):
            return 0.0

    return {"seconds": round(sum(num(r, "s") for r in rows), 1),
            "cpu_seconds": round(sum(num(r, "cpu_time") for r in rows), 1),
            "max_rss_mb": round(max(num(r, "max_rss") for r in rows), 1), "jobs": len(rows)}


def _failure_hint(cmd: list[str], log: Path, lines: int = 8) -> str:
    """The last lines of a failed command's log and, where Snakemake found its working directory
    locked (a run killed mid-way, e.g. at a session's end, leaves the lock behind), how to lift it."""
    tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    hint = "\n  " + "\n  ".join(tail) if tail else ""
    if "snakemake" in cmd and any("LockException" in line or "cannot be locked" in line for line in tail):
        workdir = cmd[cmd.index("-d") + 1] if "-d" in cmd else "its working directory"
        unlock = [*cmd[:cmd.index("--")], "--unlock"] if "--" in cmd else [*cmd, "--unlock"]
        hint += (f"\nSnakemake found {workdir} locked. If no other Snakemake runs there (one killed mid-way "
                 f"leaves its lock), lift it and run the cell again:\n  {shlex.join(unlock)}")
    return hint


def _run_measured(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
                  interval: float = 0.2) -> dict:
    """Run a command (its output to ``log``); its own wall and CPU seconds, and its peak RSS with
    its children's, sampled every ``interval`` seconds as Snakemake's benchmarks sample it (the
    kernel's ru_maxrss of a child counts the RSS of the process it was forked from)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    peak = 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=cwd)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
            except psutil.Error:  # it or a child ended between the listing and the reading
                pass
            time.sleep(interval)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child was reaped by poll()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise GridError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}{_failure_hint(cmd, log)}")
    return {"seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(cpu, 1),
            "max_rss_mb": round(peak / 2**20, 1), "jobs": 1}


@dataclass
class CellPaths:
    """Where the DAG keeps a cell's outputs (``outputs/<scale>/``)."""

    out: Path
    method: str
    task: str

    @property
    def rollouts(self) -> Path:
        return self.out / "eval" / self.method / f"{self.task}.csv"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.method / self.task

    @property
    def dataset(self) -> Path:
        return self.out / "datasets" / f"{self.task}.h5"

    @property
    def val_dataset(self) -> Path:
        return self.out / "datasets" / f"{self.task}.val.h5"

    def benchmarks(self, rule: str, per_method: bool = True) -> list[Path]:
        return _task_benchmarks(self.out, rule, self.task, self.method if per_method else None)


def snakemake_command(cfg, targets: list[str], threads: int, workers: int, root: Path = REPO_ROOT,
                      config_file: str | None = None, workdir: Path | None = None) -> list[str]:
    """Snakemake asked for ``targets`` with this scale's config; ``threads`` per training (and
    frame-feature) job and ``workers`` per evaluation job (``--set-threads``: not part of the
    config, so not of its hash)."""
    config = [f"config_file={config_file}"] if config_file else [f"scale={cfg.scale}"]
    return [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir or root),
            "--cores", str(max(threads, workers)), "--rerun-incomplete", "--config", *config,
            "--set-threads", f"train={threads}", f"features={threads}", f"evaluate={workers}",
            f"evaluate_block={workers}", f"evaluate_task={workers}", "--", *targets]


def par_figures(cfg, task: str, workdir: Path) -> dict[str, Path]:
    """The DAG's PAR figures of one task (paper Figs. 4, 5 and 6; workflows/methods.smk and
    report.smk), in ``workdir``."""
    figures = workdir / cfg.results_dir / "figures"
    return {name: figures / name / f"{task}.png" for name in ("fig4", "fig5", "fig6")}


PAR_FIGURE_RULES = ("predicted_frames", "attention_map", "failure_case")


def run_cell(cfg, method: str, task: str, folder: str | Path, *, threads: int = 1, workers: int = 1,
             root: Path = REPO_ROOT, workdir: Path | None = None, config_file: str | None = None,
             probe_seeds: int = 3, allow_dirty: bool = False, log=print) -> Path:
    """Make one cell of the grid in ``folder`` (see the module docstring) with the code of the
    checkout ``root``, its outputs in ``workdir`` (default: the checkout); resumable: a rerun
    after an interruption redoes only what is missing. The cell folder is replaced whole, only
    once everything in it is made."""
    if (method, task) not in grid_cells(cfg):
        raise GridError(f"({method}, {task}) is no cell of the {cfg.scale} grid: its tasks are {cfg.tasks}, "
                        f"its methods {sorted({m for m, _ in grid_cells(cfg)})}")
    folder = Path(folder)
    grid = open_grid(folder, cfg, method, root, allow_dirty)
    workdir = Path(workdir or root)
    paths = CellPaths(workdir / cfg.output_root, method, task)
    validation = bool(cfg.demos["num_val_demos"])  # every cell builds them: one dataset record per task
    probes = validation and method not in cfg.untrained_methods()
    figures = par_figures(cfg, task, workdir) if method == "par" else {}
    targets = [paths.rollouts, *([paths.val_dataset] if validation else []), *figures.values()]
    logs = paths.out / "logs" / "grid" / method
    logs.mkdir(parents=True, exist_ok=True)
    log(f"grid cell ({method}, {task}): Snakemake for {len(targets)} targets (log: {logs / task}.snakemake.log)")
    _run_measured(snakemake_command(cfg, [str(t.relative_to(workdir)) for t in targets], threads, workers,
                                    root, config_file, workdir), logs / f"{task}.snakemake.log", cwd=root)
    identity = check_cell_rows(paths, grid)  # before anything is written into the grid
    hashes = {"train": dataset_hash(paths.dataset)}
    if validation:
        hashes["validation"] = dataset_hash(paths.val_dataset)
    grid = record_datasets(folder, task, hashes, paths.out)
    fingerprint = cfg.feature_fingerprints().get(method)
    if fingerprint:  # the frame-feature cache, shared by the methods with this encoder: counted once
        grid = record_shared_job(folder, f"features/{fingerprint}/{task}",
                                 _task_benchmarks(paths.out, f"features/{fingerprint}", task))
    if cfg.data["evaluation"]["one_job_per_task"]:  # every method of the task evaluated by one job
        grid = record_shared_job(folder, f"evaluate_task/{task}", _task_benchmarks(paths.out, "evaluate_task", task))

    cell = cell_dir(folder, method, task)
    tmp = cell.with_name(cell.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = {rule: cost for rule in ("train", "evaluate") if (cost := _benchmark(paths.benchmarks(rule)))}
    if figures:
        jobs["figures"] = _benchmark([p for rule in PAR_FIGURE_RULES for p in paths.benchmarks(rule, False)])
    if probes:
        log(f"grid cell ({method}, {task}): probe on {paths.val_dataset.name}")
        jobs["probe"] = _run_measured(
            [sys.executable, "-m", "harness", "probe", "--run", str(paths.run_dir), "--val-dataset",
             str(paths.val_dataset), "--seeds", str(probe_seeds), "--out", str(tmp / "probe.json")],
            logs / f"{task}.probe.log", env={"OMP_NUM_THREADS": str(threads)}, cwd=root)
    for name, figure in figures.items():  # PAR's Figs. 4-6 of this task, with their data files
        (tmp / "figures" / name).mkdir(parents=True)
        for path in sorted(figure.parent.glob(figure.stem + ".*")):
            shutil.copyfile(path, tmp / "figures" / name / path.name)
    collect_cell(tmp, paths, grid, identity, jobs, threads=threads, workers=workers)
    with _locked(folder):
        shutil.rmtree(cell, ignore_errors=True)
        os.replace(tmp, cell)
    log(f"grid cell ({method}, {task}) -> {cell}")
    return cell


def check_cell_rows(paths: CellPaths, grid: dict) -> dict:
    """The rows' method identity and config hash, refused where they mix identities, were
    trained by other method code than evaluated them, or differ from the grid's."""
    from harness.rollouts import read_rollouts

    rows = read_rollouts(paths.rollouts).to_dict("records")
    ids = {(r["method_id"], r["train_method_id"] or r["method_id"], r["config_hash"]) for r in rows}
    if len(ids) != 1:
        raise GridError(f"{paths.rollouts} mixes code or config identities {sorted(ids)}")
    method_id, train_method_id, config_hash = ids.pop()
    expected = grid["method_ids"][paths.method]
    if {method_id, train_method_id} != {expected} or config_hash != grid["config_hash"]:
        raise GridError(
            f"{paths.rollouts} was trained by method code {train_method_id} and evaluated by {method_id} "
            f"(config {config_hash}); the grid's is {expected} (config {grid['config_hash']}). Delete "
            f"{paths.run_dir} and {paths.rollouts} and make the cell again")
    return {"method_id": method_id, "config_hash": config_hash,
            "successes": sum(int(r["success"]) for r in rows), "rollouts": len(rows)}


def collect_cell(cell: Path, paths: CellPaths, grid: dict, identity: dict, jobs: dict, *, threads: int,
                 workers: int) -> dict:
    """Copy a finished cell's rows and train log into ``cell`` and write its ``cell.json``."""
    shutil.copyfile(paths.rollouts, cell / "rollouts.csv")
    if (paths.run_dir / "train_log.csv").exists():
        shutil.copyfile(paths.run_dir / "train_log.csv", cell / "train_log.csv")
    run_config = json.loads((paths.run_dir / "run_config.json").read_text())
    steps = run_config.get("method_config", {}).get("steps")
    record = {
        "method": paths.method, "task": paths.task, "scale": grid["scale"],
        "git_sha": method_commit(grid, paths.method),
        **identity, "datasets": grid["datasets"][paths.task], "steps": steps,
        "threads": threads, "workers": workers,
        # the training job's benchmark covers its last session only; its steps' wall time over
        # every session is the train log's
        "train_log_seconds": _train_log_seconds(cell / "train_log.csv"),
        "jobs": {k: v for k, v in jobs.items() if v is not None},
        "machine": machine(),
    }
    record["files"] = sorted(str(p.relative_to(cell)) for p in cell.rglob("*") if p.is_file()) + [CELL_FILE]
    (cell / CELL_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _train_log_seconds(path: Path) -> float | None:
    if not path.exists():
        return None
    with path.open() as f:
        return round(sum(float(r["seconds"]) for r in csv.DictReader(f) if r.get("seconds")), 1)


def machine() -> dict:
    """What the timings were measured on: CPU model, cores, load when the cell was collected."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}


# --------------------------------------------------------------------------- status
@dataclass
class CellStatus:
    method: str
    task: str
    status: str
    """``done``, ``missing``, ``stale`` (other code or config than the grid's, or a dataset
    other than the grid's) or ``broken`` (files missing or unreadable)."""
    detail: str = ""
    current: bool | None = None
    """Whether this checkout's method identity is still the cell's (else main has moved on);
    None where not asked."""
    successes: int | None = None
    rollouts: int | None = None
    cpu_seconds: float = 0.0
    states: dict | None = None
    """``harness.report.state_interval`` of a done cell's rows: its initial states, those solved
    under any policy seed and those the seeds split (a deterministic policy splits none)."""


def cell_status(folder: str | Path, cfg, pin: dict | None = None) -> list[CellStatus]:
    """Every cell of the config's grid as done / missing / stale / broken. ``pin``: this
    checkout's identities (``current_pin``), to say which cells the current code would redo."""
    folder = Path(folder)
    grid = read_grid(folder)
    if grid is not None and grid.get("scale") != cfg.scale:
        raise GridError(f"{folder} is a grid of the {grid.get('scale')} scale, not of {cfg.scale}: "
                        f"pass --scale {grid.get('scale')} (or its --config-file)")
    out = []
    for method, task in grid_cells(cfg):
        cell = cell_dir(folder, method, task)
        if not (cell / CELL_FILE).exists():
            out.append(CellStatus(method, task, "missing", "no cell.json"))
            continue
        if grid is None:
            out.append(CellStatus(method, task, "broken", f"no {GRID_FILE} in {folder}"))
            continue
        try:
            record = _read_json(cell / CELL_FILE)
        except GridError as exc:
            out.append(CellStatus(method, task, "broken", str(exc)))
            continue
        status, detail = "done", ""
        missing = [name for name in record.get("files", ["rollouts.csv"]) if not (cell / name).exists()]
        if missing:
            status, detail = "broken", f"no {', '.join(missing)}"
        elif record.get("method_id") != grid["method_ids"].get(method):
            status, detail = "stale", f"method code {record.get('method_id')}, grid's {grid['method_ids'].get(method)}"
        elif record.get("config_hash") != grid["config_hash"]:
            status, detail = "stale", f"config {record.get('config_hash')}, grid's {grid['config_hash']}"
        elif record.get("datasets") != grid["datasets"].get(task):
            status, detail = "stale", f"datasets {record.get('datasets')}, grid's {grid['datasets'].get(task)}"
        current = None if pin is None else pin["method_ids"].get(method) == record.get("method_id")
        cpu = sum((j or {}).get("cpu_seconds") or 0.0 for j in record.get("jobs", {}).values())
        train = record.get("jobs", {}).get("train") or {}
        cpu += earlier_sessions(record.get("train_log_seconds"), train.get("seconds"), train.get("cpu_seconds"))[1]
        states = None
        if status != "broken":
            try:
                states = _states(cell / "rollouts.csv")
            except HarnessError as exc:  # a rollouts file that no longer reads (hand-edited, cut)
                status, detail = "broken", str(exc)
        out.append(CellStatus(method, task, status, detail, current, record.get("successes"),
                              record.get("rollouts"), cpu, states))
    return out


def _states(rollouts: Path) -> dict | None:
    """The cell's rows by initial state (``harness.report.state_interval``), None where it
    keeps no rows."""
    if not rollouts.exists():
        return None
    from harness.report import state_interval
    from harness.rollouts import read_rollouts

    return state_interval(read_rollouts(rollouts))


def status_markdown(statuses: list[CellStatus], grid: dict | None) -> str:
    """The status table: one line per cell, and the totals."""
    lines = []
    if grid:
        by_commit = {}
        for method, sha in sorted(grid.get("method_commits", {}).items()):
            by_commit.setdefault(sha, []).append(method)
        moved = "".join(f" Re-pinned at {sha[:12]}: {', '.join(ms)}." for sha, ms in by_commit.items())
        lines.append(f"Grid of commit {grid['git_sha'][:12]}, config {grid['config_hash']} ({grid['scale']}).{moved}")
        lines.append("")
    lines += ["| task | method | status | success | states solved (split) | CPU-hours | this checkout's code | detail |",
              "|---|---|---|---|---|---|---|---|"]
    for s in statuses:
        success = f"{s.successes}/{s.rollouts}" if s.rollouts else ""
        states = f"{s.states['states_solved']}/{s.states['states']} ({s.states['states_split']})" if s.states else ""
        hours = f"{s.cpu_seconds / 3600:.2f}" if s.cpu_seconds else ""
        same = {None: "", True: "same", False: "differs: main would redo it"}[s.current]
        lines.append(f"| {s.task} | {s.method} | {s.status} | {success} | {states} | {hours} | {same} | {s.detail} |")
    counts = {k: sum(s.status == k for s in statuses) for k in ("done", "missing", "stale", "broken")}
    cells = sum(s.cpu_seconds for s in statuses) / 3600
    shared = sum(j.get("cpu_seconds") or 0.0 for j in (grid or {}).get("shared_jobs", {}).values()) / 3600
    lines += ["", ", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(statuses)} cells. "
              f"CPU-hours: {cells:.2f} in the cells' training, probe and evaluation, {shared:.2f} in the "
              f"jobs they share (datasets, frame features, a task's evaluation), {cells + shared:.2f} in all."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the grid's tables
def grid_report(folder: str | Path, cfg, out_dir: str | Path | None = None) -> list[Path]:
    """Tables 2 and 3, their plots, the reproduction report and the status table from a grid
    folder's cells (into ``out_dir``, default the folder). Every cell of the scale's grid is in
    the tables: a cell not collected, or collected under other code, config or datasets than
    the grid's, says so in its ``<task>_grid`` column (and has no number where it has no rows).
    The reproduction report, which gives each cell a verdict, reads the ``done`` cells only."""
    import pandas as pd

    from harness import plots
    from harness.figures import fig4_all_tasks
    from harness.report import compile_table, load_rows, parameter_table
    from harness.reproduction import write_report

    folder = Path(folder)
    out = Path(out_dir or folder)
    out.mkdir(parents=True, exist_ok=True)
    grid = read_grid(folder)
    statuses = {(s.method, s.task): s for s in cell_status(folder, cfg, current_pin(cfg))}
    # Table 1 records the checkout's commit: taken before this report rewrites its own files,
    # so a report made from a clean checkout does not call itself dirty
    parameters = parameter_table(list(cfg.data["methods"]))
    written = []
    (out / "status.md").write_text(status_markdown(list(statuses.values()), grid))
    written.append(out / "status.md")

    def label(s: CellStatus) -> str:
        return s.status if not s.detail or s.status == "missing" else f"{s.status}: {s.detail}"

    report_tables, report_methods = {}, {}
    for table, methods in table_methods(list(cfg.data["methods"])).items():
        if not set(methods) - set(CHANCE):
            continue
        files = [cell_dir(folder, m, t) / "rollouts.csv" for t in cfg.tasks for m in methods
                 if statuses[m, t].status in ("done", "stale")]
        done = [cell_dir(folder, m, t) / "rollouts.csv" for t in cfg.tasks for m in methods
                if statuses[m, t].status == "done"]
        rows = load_rows(files) if files else None
        compiled = compile_table(rows, table, methods=methods) if rows is not None else pd.DataFrame()
        # every row and task of the table, the ones without rollouts too
        df = pd.DataFrame({"method": methods}).merge(compiled, on="method", how="left") if len(compiled) \
            else pd.DataFrame({"method": methods})
        for column in [c for c in df.columns if c.endswith("_rollouts")]:
            df[column] = df[column].astype("Int64")
        status = pd.DataFrame({f"{task}_grid": [label(statuses[m, task]) for m in methods] for task in cfg.tasks})
        df = pd.concat([df[["method"]], status, df.drop(columns="method")], axis=1)
        df.to_csv(out / f"{table}.csv", index=False)
        written.append(out / f"{table}.csv")
        if done:  # the reproduction report judges the cells at the grid's identities only
            report_tables[table], report_methods[table] = done, methods
        if rows is not None:
            cells = {(m, t): statuses[m, t].status for t in cfg.tasks for m in methods}
            written += plots.success_plot(rows, table, out / "figures" / f"{table}_success", methods, cells=cells)
            written += plots.outcome_plot(rows, out / "figures" / f"{table}_outcomes", methods)
            logs = [(m, t, cell_dir(folder, m, t) / "train_log.csv") for t in cfg.tasks for m in methods
                    if (cell_dir(folder, m, t) / "train_log.csv").exists()]
            if logs:
                written += plots.training_plot(logs, out / "figures" / f"{table}_training")
    if report_tables:
        write_report(report_tables, out / "reproduction.csv", out / "reproduction.md", report_methods,
                     title=f"Reproduction report ({cfg.scale} grid, {folder})")
        written += [out / "reproduction.csv", out / "reproduction.md"]
    costs = cost_table(folder, cfg)
    costs.to_csv(out / "costs.csv", index=False)
    (out / "costs.md").write_text(cost_markdown(costs, cells_in_grid=len(grid_cells(cfg))))
    written += [out / "costs.csv", out / "costs.md"]
    parameters.to_csv(out / "table1.csv", index=False)
    written.append(out / "table1.csv")
    # PAR's Fig. 4 over every task whose PAR cell is collected; Figs. 5 and 6 are in the cells
    frames = [cell_dir(folder, "par", t) / "figures" / "fig4" / f"{t}.npz" for t in cfg.tasks
              if statuses.get(("par", t)) and statuses["par", t].status in ("done", "stale")]
    frames = [f for f in frames if f.exists()]
    if frames:
        written.append(Path(fig4_all_tasks(frames, out / "figures" / "fig4.png")))
    else:  # an earlier report's figure shows cells the grid no longer holds (retired by a re-pin)
        (out / "figures" / "fig4.png").unlink(missing_ok=True)
    return written


PROJECTION_CORES = (2, 8, 32)


def _projected_cells(costs, cells_in_grid: int) -> str:
    """What the projection covers: the whole grid, or its collected cells and their shared jobs."""
    collected = len(costs.loc[costs["method"] != "(shared)", ["task", "method"]].drop_duplicates())
    if collected >= cells_in_grid:
        return f"the whole grid ({cells_in_grid} cells)"
    return (f"the {collected} collected cells of the grid's {cells_in_grid} and the jobs they share (the "
            f"{cells_in_grid - collected} others have no measured cost yet and are not in it)")


RESUMED_MARGIN = 1.05
"""A training whose train log's step times exceed its benchmark's wall time by more than this
factor (and a minute) ran in more than one session: its benchmark saw only the last."""


def earlier_sessions(train_log_seconds, seconds, cpu_seconds) -> tuple[float, float]:
    """What a resumed training's sessions before its last took, (wall seconds, CPU seconds); (0, 0)
    for a training that ran in one session. Wall: its train log's step time beyond its last
    session's benchmark (at least that much ran before it). CPU, which no benchmark saw: that wall
    time at the CPU/wall ratio the same training measured in its last session."""
    try:
        logged, seconds, cpu_seconds = float(train_log_seconds), float(seconds), float(cpu_seconds)
    except (TypeError, ValueError):
        return 0.0, 0.0
    if not seconds > 0 or not logged > RESUMED_MARGIN * seconds + 60:  # NaN compares False
        return 0.0, 0.0
    wall = logged - seconds
    return wall, wall * cpu_seconds / seconds


def cost_table(folder: str | Path, cfg):
    """What each collected cell's jobs took (wall seconds, CPU seconds, peak RSS in MB, threads)
    and each shared job once, as measured by Snakemake's benchmark files and the probe's run;
    one row per job."""
    import pandas as pd

    folder = Path(folder)
    rows = []
    for method, task in grid_cells(cfg):
        path = cell_dir(folder, method, task) / CELL_FILE
        if not path.exists():
            continue
        record = _read_json(path)
        machine = record.get("machine", {})
        for job, cost in record.get("jobs", {}).items():
            rows.append({"task": task, "method": method, "job": job,
                         "threads": record.get("workers") if job == "evaluate" else record.get("threads"),
                         **cost, "cpu": machine.get("cpu", ""), "load_1min": machine.get("load_1min"),
                         "cores": machine.get("cores"),
                         "train_log_seconds": record.get("train_log_seconds") if job == "train" else None})
    grid = read_grid(folder) or {}
    for name, cost in grid.get("shared_jobs", {}).items():
        rule, *rest = name.split("/")
        rows.append({"task": rest[-1], "method": "(shared)", "job": "/".join([rule, *rest[:-1]]), "threads": "",
                     **cost, "cpu": "", "load_1min": None, "cores": None})
    columns = ["task", "method", "job", "threads", "seconds", "cpu_seconds", "max_rss_mb", "cpu", "load_1min", "cores",
               "train_log_seconds"]
    return pd.DataFrame(rows, columns=columns)


def cost_markdown(costs, cells_in_grid: int) -> str:
    """Wall time and peak memory per cell (its jobs summed; peak: the largest), the shared jobs,
    the totals, and what the measured CPU time projects to on a machine of k cores. While cells
    are missing the projection covers the collected ones only, and says how many those are.
    ``costs``: ``cost_table``'s frame (its columns)."""
    lines = ["Wall hours depend on what ran beside a cell: the load column is the machine's 1-minute load "
             "average when the cell was collected, over its cores (2.0 / 2: both cores busy). CPU hours are the "
             "figure to compare across cells.", "",
             "| task | method | wall hours | CPU hours | peak RSS (GB) | threads | load when collected | jobs |",
             "|---|---|---|---|---|---|---|---|"]
    trains = costs[costs["job"] == "train"]
    earlier = {(r.task, r.method): earlier_sessions(r.train_log_seconds, r.seconds, r.cpu_seconds)
               for r in trains.itertuples()}
    for (task, method), jobs in costs.groupby(["task", "method"], sort=False):
        load, cores = jobs["load_1min"].dropna(), jobs["cores"].dropna()
        seen = f"{load.iloc[0]:.1f} / {int(cores.iloc[0])}" if len(load) and len(cores) else ""
        threads = jobs.loc[jobs["job"] == "train", "threads"]
        e_wall, e_cpu = earlier.get((task, method), (0.0, 0.0))
        names = ", ".join(jobs["job"]) + (" (resumed: with its earlier sessions)" if e_wall else "")
        lines.append(f"| {task} | {method} | {(jobs['seconds'].sum() + e_wall) / 3600:.2f} | "
                     f"{(jobs['cpu_seconds'].sum() + e_cpu) / 3600:.2f} | "
                     f"{jobs['max_rss_mb'].max() / 1024:.1f} | {threads.iloc[0] if len(threads) else ''} | {seen} | "
                     f"{names} |")
    resumed = [(r, *earlier[(r.task, r.method)]) for r in trains.itertuples() if earlier[(r.task, r.method)][0]]
    if resumed:
        lines += ["", "Resumed trainings: a training stopped and resumed from its checkpoint has a benchmark of its "
                  "last session only. Its steps' wall time over every session is its train_log.csv's; the sessions "
                  "before the last add the difference, and their CPU time at the CPU/wall ratio the same training "
                  "measured in its last session (the rows above and the totals below include them):", ""]
        lines += [f"- {r.task} {r.method}: {r.train_log_seconds:,.0f} s of training steps in all, "
                  f"{r.seconds:,.0f} s of training in the last session; before it {e / 3600:.2f} wall hours, "
                  f"{c / 3600:.2f} CPU-hours" for r, e, c in resumed]
    before_wall = sum(e for _, e, _ in resumed) / 3600  # hours, where the per-cell e_wall, e_cpu are seconds
    before_cpu = sum(c for _, _, c in resumed) / 3600
    wall, cpu = costs["seconds"].sum() / 3600 + before_wall, costs["cpu_seconds"].sum() / 3600 + before_cpu
    before = (f" (of them {before_wall:.1f} wall hours and {before_cpu:.1f} CPU-hours in the earlier sessions of "
              "resumed trainings, listed above)") if resumed else ""
    peak = costs["max_rss_mb"].max() / 1024 if len(costs) else 0.0
    lines += ["", f"Total: {wall:.1f} wall hours of jobs run one after another, {cpu:.1f} CPU-hours{before}, peak RSS "
              f"of any job {peak:.1f} GB (CPU: {', '.join(sorted(set(costs['cpu']) - {''})) or 'not recorded'}).", "",
              f"Projection from the CPU time above, for {_projected_cells(costs, cells_in_grid)} on one machine "
              "of k cores with every core busy (a lower bound on the wall time; cells with several threads scale "
              "less than linearly):", "",
              "| cores | wall hours |", "|---|---|"]
    lines += [f"| {k} | {cpu / k:.1f} |" for k in PROJECTION_CORES]
    return "\n".join(lines) + "\n"
