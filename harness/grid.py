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
grid-status`` says which cells are done, missing or stale.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.paths import REPO_ROOT

GRID_FILE = "grid.json"
CELL_FILE = "cell.json"
CELL_FILES = ("rollouts.csv", "train_log.csv", "probe.json", "probe.md", CELL_FILE)
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
    actions, states, seeds), so two builds hash equal exactly when every array is equal."""
    import h5py

    with h5py.File(path, "r") as f:
        checksums = json.loads(f.attrs["checksums"])
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()[:16]


def cell_dir(folder: str | Path, method: str, task: str) -> Path:
    return Path(folder) / task / method


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GridError(f"{path} cannot be read ({exc}); delete the cell folder and make it again") from None


# --------------------------------------------------------------------------- the pin
def current_pin(cfg, root: Path = REPO_ROOT) -> dict:
    """The grid identity this checkout would give: its commit, config hash and every method's
    identity (uncommitted code changes show in the ids as ``-dirty-...``)."""
    from harness.provenance import CodeState

    state = CodeState(root)
    methods = list(dict.fromkeys(m for m, _ in grid_cells(cfg)))
    return {"scale": cfg.scale, "config_hash": cfg.config_hash(), "git_sha": state.commit,
            "code_id": state.code().id, "method_ids": {m: state.method(m).id for m in methods}}


def open_grid(folder: str | Path, cfg, method: str, root: Path = REPO_ROOT, allow_dirty: bool = False) -> dict:
    """The grid's pin, written on first use from this checkout. A cell joins only with the
    grid's scale and config and the grid's identity of its method: a checkout at a later commit
    that left ``method``'s code alone may add its cells; one that changed it may not
    (``allow_dirty``: tests only)."""
    folder = Path(folder)
    pin = current_pin(cfg, root)
    if not allow_dirty and "-dirty-" in pin["method_ids"][method]:
        raise GridError(f"{root} has uncommitted changes to {method}'s code; a grid cell must come from a "
                        "commit (commit them, or run from a clean worktree: git worktree add --detach DIR SHA)")
    path = folder / GRID_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**pin, "datasets": {}}, indent=1) + "\n")
        return _read_json(path)
    grid = _read_json(path)
    for key in ("scale", "config_hash"):
        if grid.get(key) != pin[key]:
            raise GridError(f"{folder} is the grid of {key} {grid.get(key)}; this checkout's config has "
                            f"{pin[key]}. Use the grid's config, or start a new grid folder")
    if grid["method_ids"].get(method) != pin["method_ids"][method]:
        raise GridError(
            f"{folder} holds {method} at method code {grid['method_ids'].get(method)}; this checkout's is "
            f"{pin['method_ids'][method]}. Run the cell from a worktree at the grid's commit (git worktree "
            f"add --detach DIR {grid['git_sha']}), or start a new grid folder")
    return grid


DATASET_RULES = ("plan_demos", "render_dataset", "verify_render", "val_dataset")


def record_datasets(folder: Path, grid: dict, task: str, hashes: dict, out: Path | None = None) -> None:
    """Fix a task's dataset hashes in the pin (first cell of the task), with what building the
    datasets cost (``out``: the DAG's output folder), or refuse a cell whose rebuilt datasets
    differ from the ones the grid's other cells used."""
    known = grid["datasets"].get(task)
    if known is None:
        grid["datasets"][task] = hashes
        (folder / GRID_FILE).write_text(json.dumps(grid, indent=1) + "\n")
        for rule in DATASET_RULES if out is not None else ():
            record_shared_job(folder, grid, f"{rule}/{task}", out / "benchmarks" / rule / f"{task}.tsv")
    elif known != hashes:
        raise GridError(
            f"the {task} datasets built here ({hashes}) differ from the grid's ({known}): this "
            "machine's planner or renderer gives other demos, so its cells cannot join the grid. "
            "Compare the two builds (python -m harness dataset-info) before going on")


def record_shared_job(folder: Path, grid: dict, name: str, benchmark: Path) -> None:
    """A job several cells share (a task's datasets, a frame-feature cache): its cost, counted
    once in the grid's total (``shared_jobs``), from its Snakemake benchmark file."""
    shared = grid.setdefault("shared_jobs", {})
    if name not in shared and (cost := _benchmark(benchmark)) is not None:
        shared[name] = cost
        (folder / GRID_FILE).write_text(json.dumps(grid, indent=1) + "\n")


# --------------------------------------------------------------------------- one cell
def _benchmark(path: Path) -> dict | None:
    """A Snakemake benchmark file's last row: wall seconds, CPU seconds, peak RSS (MB)."""
    if not path.exists():
        return None
    with path.open() as f:
        row = list(csv.DictReader(f, delimiter="\t"))[-1]

    def num(key):
        try:
            return round(float(row[key]), 1)
        except (KeyError, TypeError, ValueError):
            return None

    return {"seconds": num("s"), "cpu_seconds": num("cpu_time"), "max_rss_mb": num("max_rss")}


def _run_measured(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run a command (its output to ``log``); its wall and CPU seconds and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                              cwd=cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise GridError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(cpu, 1),
            "max_rss_mb": round(after.ru_maxrss / 1024, 1)}


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

    def benchmark(self, rule: str) -> Path:
        return self.out / "benchmarks" / rule / self.method / f"{self.task}.tsv"


def snakemake_command(cfg, targets: list[str], threads: int, workers: int, root: Path = REPO_ROOT,
                      config_file: str | None = None, workdir: Path | None = None) -> list[str]:
    """Snakemake asked for ``targets`` with this scale's config; ``threads`` per training job and
    ``workers`` per evaluation job (``--set-threads``: not part of the config, so not of its hash)."""
    config = [f"config_file={config_file}"] if config_file else [f"scale={cfg.scale}"]
    return [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(workdir or root),
            "--cores", str(max(threads, workers)), "--rerun-incomplete", "--config", *config,
            "--set-threads", f"train={threads}", f"features={threads}", f"evaluate={workers}",
            f"evaluate_block={workers}", "--", *targets]


def par_figures(cfg, task: str, workdir: Path) -> dict[str, Path]:
    """The DAG's PAR figures of one task (paper Figs. 4, 5 and 6; workflows/methods.smk and
    report.smk), in ``workdir``."""
    figures = workdir / cfg.results_dir / "figures"
    return {name: figures / name / f"{task}.png" for name in ("fig4", "fig5", "fig6")}


def run_cell(cfg, method: str, task: str, folder: str | Path, *, threads: int = 1, workers: int = 1,
             root: Path = REPO_ROOT, workdir: Path | None = None, config_file: str | None = None,
             probe_seeds: int = 3, allow_dirty: bool = False, log=print) -> Path:
    """Make one cell of the grid in ``folder`` (see the module docstring) with the code of the
    checkout ``root``, its outputs in ``workdir`` (default: the checkout); resumable: a rerun
    after an interruption redoes only what is missing."""
    if (method, task) not in grid_cells(cfg):
        raise GridError(f"({method}, {task}) is no cell of the {cfg.scale} grid: its tasks are {cfg.tasks}, "
                        f"its methods {sorted({m for m, _ in grid_cells(cfg)})}")
    folder = Path(folder)
    grid = open_grid(folder, cfg, method, root, allow_dirty)
    workdir = Path(workdir or root)
    paths = CellPaths(workdir / cfg.output_root, method, task)
    trains = method not in cfg.untrained_methods()
    probes = trains and bool(cfg.demos["num_val_demos"])
    targets = [str(paths.rollouts.relative_to(workdir))]
    if probes:
        targets.append(str(paths.val_dataset.relative_to(workdir)))
    figures = par_figures(cfg, task, workdir) if method == "par" else {}
    targets += [str(f.relative_to(workdir)) for f in figures.values()]
    logs = paths.out / "logs" / "grid" / method
    logs.mkdir(parents=True, exist_ok=True)
    log(f"grid cell ({method}, {task}): Snakemake for {', '.join(targets)} (log: {logs / task}.snakemake.log)")
    _run_measured(snakemake_command(cfg, targets, threads, workers, root, config_file, workdir),
                  logs / f"{task}.snakemake.log", cwd=root)
    hashes = {"train": dataset_hash(paths.dataset)}
    if probes:
        hashes["validation"] = dataset_hash(paths.val_dataset)
    record_datasets(folder, grid, task, hashes, paths.out)

    cell = cell_dir(folder, method, task)
    cell.mkdir(parents=True, exist_ok=True)
    jobs = {"train": _benchmark(paths.benchmark("train")), "evaluate": _benchmark(paths.benchmark("evaluate"))}
    fingerprint = cfg.feature_fingerprints().get(method)
    if fingerprint:  # the frame-feature cache, shared by the methods with this encoder: counted once
        record_shared_job(folder, grid, f"features/{fingerprint}/{task}",
                          paths.out / "benchmarks" / "features" / fingerprint / f"{task}.tsv")
    if probes:
        log(f"grid cell ({method}, {task}): probe on {paths.val_dataset.name}")
        jobs["probe"] = _run_measured(
            [sys.executable, "-m", "harness", "probe", "--run", str(paths.run_dir), "--val-dataset",
             str(paths.val_dataset), "--seeds", str(probe_seeds), "--out", str(cell / "probe.json")],
            logs / f"{task}.probe.log", env={"OMP_NUM_THREADS": str(threads)}, cwd=root)
    collect_cell(cell, paths, grid, jobs, threads=threads, workers=workers)
    for name, figure in figures.items():  # PAR's Figs. 4-6 of this task, with their data files
        (cell / "figures").mkdir(exist_ok=True)
        for path in sorted(figure.parent.glob(figure.stem + ".*")):
            shutil.copyfile(path, cell / "figures" / f"{name}{path.suffix}")
    log(f"grid cell ({method}, {task}) -> {cell}")
    return cell


def collect_cell(cell: Path, paths: CellPaths, grid: dict, jobs: dict, *, threads: int, workers: int) -> dict:
    """Copy a finished cell's rows and train log into ``cell`` and write its ``cell.json``;
    refuse rows whose method code differs from the grid's or that other code trained."""
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
    shutil.copyfile(paths.rollouts, cell / "rollouts.csv")
    if (paths.run_dir / "train_log.csv").exists():
        shutil.copyfile(paths.run_dir / "train_log.csv", cell / "train_log.csv")
    run_config = json.loads((paths.run_dir / "run_config.json").read_text())
    steps = run_config.get("method_config", {}).get("steps")
    successes = sum(int(r["success"]) for r in rows)
    record = {
        "method": paths.method, "task": paths.task, "scale": grid["scale"],
        "git_sha": grid["git_sha"], "method_id": method_id, "config_hash": config_hash,
        "datasets": grid["datasets"][paths.task],
        "successes": successes, "rollouts": len(rows), "steps": steps,
        "threads": threads, "workers": workers,
        "jobs": {k: v for k, v in jobs.items() if v is not None},
        "machine": machine(),
    }
    (cell / CELL_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


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


def cell_status(folder: str | Path, cfg, pin: dict | None = None) -> list[CellStatus]:
    """Every cell of the config's grid as done / missing / stale / broken. ``pin``: this
    checkout's identities (``current_pin``), to say which cells the current code would redo."""
    folder = Path(folder)
    grid = _read_json(folder / GRID_FILE) if (folder / GRID_FILE).exists() else None
    out = []
    for method, task in grid_cells(cfg):
        cell = cell_dir(folder, method, task)
        if grid is None or not (cell / CELL_FILE).exists():
            out.append(CellStatus(method, task, "missing", "no cell.json"))
            continue
        try:
            record = _read_json(cell / CELL_FILE)
        except GridError as exc:
            out.append(CellStatus(method, task, "broken", str(exc)))
            continue
        status, detail = "done", ""
        missing = [name for name in ("rollouts.csv",) if not (cell / name).exists()]
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
        out.append(CellStatus(method, task, status, detail, current, record.get("successes"),
                              record.get("rollouts"), cpu))
    return out


def status_markdown(statuses: list[CellStatus], grid: dict | None) -> str:
    """The status table: one line per cell, and the totals."""
    lines = []
    if grid:
        lines.append(f"Grid of commit {grid['git_sha'][:12]}, config {grid['config_hash']} ({grid['scale']}).")
        lines.append("")
    lines += ["| task | method | status | success | CPU-hours | this checkout's code | detail |",
              "|---|---|---|---|---|---|---|"]
    for s in statuses:
        success = f"{s.successes}/{s.rollouts}" if s.rollouts else ""
        hours = f"{s.cpu_seconds / 3600:.2f}" if s.cpu_seconds else ""
        same = {None: "", True: "same", False: "differs: main would redo it"}[s.current]
        lines.append(f"| {s.task} | {s.method} | {s.status} | {success} | {hours} | {same} | {s.detail} |")
    counts = {k: sum(s.status == k for s in statuses) for k in ("done", "missing", "stale", "broken")}
    cells = sum(s.cpu_seconds for s in statuses) / 3600
    shared = sum(j.get("cpu_seconds") or 0.0 for j in (grid or {}).get("shared_jobs", {}).values()) / 3600
    lines += ["", ", ".join(f"{v} {k}" for k, v in counts.items()) + f" of {len(statuses)} cells. "
              f"CPU-hours: {cells:.1f} in the cells' training, probe and evaluation, {shared:.1f} in the "
              f"jobs they share (datasets, frame features), {cells + shared:.1f} in all."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the grid's tables
def grid_report(folder: str | Path, cfg, out_dir: str | Path | None = None) -> list[Path]:
    """Tables 2 and 3, their plots, the reproduction report and the status table from a grid
    folder's cells (into ``out_dir``, default the folder). Every cell of the scale's grid is in
    the tables: a cell not collected, or collected under other code, config or datasets than
    the grid's, says so in its ``<task>_grid`` column (and has no number where it has no rows)."""
    import pandas as pd

    from harness import plots
    from harness.figures import fig4_all_tasks
    from harness.report import compile_table, load_rows, parameter_table
    from harness.reproduction import write_report

    folder = Path(folder)
    out = Path(out_dir or folder)
    out.mkdir(parents=True, exist_ok=True)
    grid = _read_json(folder / GRID_FILE) if (folder / GRID_FILE).exists() else None
    statuses = {(s.method, s.task): s for s in cell_status(folder, cfg, current_pin(cfg))}
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
        if rows is not None:
            report_tables[table], report_methods[table] = files, methods
            written += plots.success_plot(rows, table, out / "figures" / f"{table}_success", methods)
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
    (out / "costs.md").write_text(cost_markdown(costs))
    written += [out / "costs.csv", out / "costs.md"]
    parameter_table(list(cfg.data["methods"])).to_csv(out / "table1.csv", index=False)
    written.append(out / "table1.csv")
    # PAR's Fig. 4 over every task whose PAR cell is collected; Figs. 5 and 6 are in the cells
    frames = [cell_dir(folder, "par", t) / "figures" / "fig4.npz" for t in cfg.tasks
              if statuses.get(("par", t)) and statuses["par", t].status in ("done", "stale")]
    frames = [f for f in frames if f.exists()]
    if frames:
        written.append(Path(fig4_all_tasks(frames, out / "figures" / "fig4.png")))
    return written


PROJECTION_CORES = (2, 8, 32)


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
        for job, cost in record.get("jobs", {}).items():
            rows.append({"task": task, "method": method, "job": job,
                         "threads": record.get("workers") if job == "evaluate" else record.get("threads"),
                         **cost, "cpu": record.get("machine", {}).get("cpu", "")})
    grid = _read_json(folder / GRID_FILE) if (folder / GRID_FILE).exists() else {}
    for name, cost in grid.get("shared_jobs", {}).items():
        rule, *rest = name.split("/")
        rows.append({"task": rest[-1], "method": "(shared)", "job": "/".join([rule, *rest[:-1]]), "threads": "",
                     **cost, "cpu": ""})
    columns = ["task", "method", "job", "threads", "seconds", "cpu_seconds", "max_rss_mb", "cpu"]
    return pd.DataFrame(rows, columns=columns)


def cost_markdown(costs) -> str:
    """Wall time and peak memory per cell (its jobs summed; peak: the largest), the shared jobs,
    the totals, and what the measured CPU time projects to on a machine of k cores."""
    lines = ["| task | method | wall hours | CPU hours | peak RSS (GB) | jobs |", "|---|---|---|---|---|---|"]
    for (task, method), jobs in costs.groupby(["task", "method"], sort=False):
        lines.append(f"| {task} | {method} | {jobs['seconds'].sum() / 3600:.2f} | {jobs['cpu_seconds'].sum() / 3600:.2f} | "
                     f"{jobs['max_rss_mb'].max() / 1024:.1f} | {', '.join(jobs['job'])} |")
    wall, cpu = costs["seconds"].sum() / 3600, costs["cpu_seconds"].sum() / 3600
    peak = costs["max_rss_mb"].max() / 1024 if len(costs) else 0.0
    lines += ["", f"Total: {wall:.1f} wall hours of jobs run one after another, {cpu:.1f} CPU-hours, peak RSS "
              f"of any job {peak:.1f} GB (CPU: {', '.join(sorted(set(costs['cpu']) - {''})) or 'not recorded'}).", "",
              "Projection from the measured CPU time, for the whole grid on one machine of k cores with every "
              "core busy (a lower bound on the wall time; cells with several threads scale less than linearly):", "",
              "| cores | wall hours |", "|---|---|"]
    lines += [f"| {k} | {cpu / k:.1f} |" for k in PROJECTION_CORES]
    return "\n".join(lines) + "\n"
