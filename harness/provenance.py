"""Provenance recorded next to every dataset, checkpoint and result: code, config, packages.

Two identities say which code made a number, computed from git's content ids, not from a commit,
so that a commit touching only docs, results, benchmarks or tests keeps them (docs/provenance.md):

- the **code identity** (``code_id``): every file that decides results (``CODE_PATHS``);
- a **method identity** (``method_id``): the method's own package, any shared module of
  ``methods/`` it imports, and the harness modules its training and rollouts run through (the
  static import closure of ``RUN_ENTRY_MODULES`` and of the package, within this repository).

Each is ``<12 hex>`` (a SHA-256 over the committed files' paths and blob ids), plus
``-dirty-<8 hex>`` (a SHA-256 over the uncommitted content of those files) when the working tree
differs from the commit in them.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness.paths import REPO_ROOT

TRACKED_PACKAGES = ("mani_skill", "sapien", "mplib", "numpy", "torch", "h5py",
                    "opencv-python-headless", "lerobot", "transformers", "diffusers")


def git_sha() -> str:
    """The repository's commit, with ``-dirty`` when the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_id(root: Path = REPO_ROOT) -> str:
    """The code identity of the working tree (``CodeState``), recorded in every dataset, run and row."""
    return CodeState(root).code().id


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages results depend on ("absent" when not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- code identities
# What decides a result: the paths below, less the files that only describe it. A commit that
# touches nothing else (docs, results, benchmarks, tests, report captions, the SLURM profile's
# resource template) keeps every identity.
CODE_PATHS = ("harness", "methods", "workflows", "Snakefile", "pyproject.toml", "constraints")
NOT_CODE_PREFIXES = ("workflows/report/", "workflows/profiles/")
NOT_CODE_SUFFIXES = (".md", ".rst")
# the harness modules every method's training and rollouts run through; a method's identity
# covers their static import closure within this repository (harness/cli.py, which parses
# arguments and imports every command's module, is left out)
RUN_ENTRY_MODULES = ("harness.train", "harness.evaluate", "harness.features")
ID_LEN, DIRTY_LEN = 12, 8
UNKNOWN = "unknown"
DELETED = "deleted"


def is_code(path: str) -> bool:
    """Whether a repository path decides results (``CODE_PATHS`` less descriptions)."""
    inside = any(path == p or path.startswith(p + "/") for p in CODE_PATHS)
    return inside and not path.startswith(NOT_CODE_PREFIXES) and not path.endswith(NOT_CODE_SUFFIXES)


def _git(root: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                          input=stdin).stdout


def _digest(entries: dict[str, str], length: int) -> str:
    text = "".join(f"{path}\0{blob}\n" for path, blob in sorted(entries.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Identity:
    """The identity of a set of code files (``id``), the commit it was read at, and the files."""

    id: str
    commit: str
    files: dict = field(default_factory=dict)
    """{path: git blob id of the content used} (``deleted`` for a committed file removed)."""

    def record(self) -> dict:
        return {"id": self.id, "commit": self.commit, "files": self.files}


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The paths whose content differs between two ``Identity.files``."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


# {(path, git blob id): the modules the file imports}: a file's imports depend on its content
# alone, so every CodeState of a process shares them (an evaluation of several runs parses
# harness/ once; the warm-start zygote parses every method's files once, before it forks)
_IMPORTS: dict[tuple[str, str], set[str]] = {}


def _blob_id(text: str) -> str:
    """Git's blob id of a file's content (what ``git hash-object`` prints)."""
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def preload_identities() -> None:
    """Parse every registered method's files into the imports cache (the warm-start zygote
    calls this once, so that no job it forks parses them again)."""
    from harness.registry import list_methods

    state = CodeState()
    if state.known:
        for entry in list_methods(load_variants=False):  # a variant's files are its method's
            if entry.source == "built-in":  # another package's: hashed by each job (the zygote's key does not see it)
                state.method(entry.name)


class CodeState:
    """The code files of the working tree (``commit=None``) or of a past commit, read once;
    the code identity and every method identity come from it."""

    def __init__(self, root: Path = REPO_ROOT, commit: str | None = None):
        self.root, self.at_commit = Path(root), commit is not None
        self.head: dict[str, str] = {}
        self.changes: dict[str, str] = {}
        try:
            self.commit = _git(self.root, "rev-parse", "--verify", "-q", f"{commit or 'HEAD'}^{{commit}}").strip()
            listing = _git(self.root, "ls-tree", "-r", "-z", self.commit, "--", *CODE_PATHS)
            for line in filter(None, listing.split("\0")):
                meta, path = line.split("\t", 1)
                _, kind, blob = meta.split()
                if kind == "blob" and is_code(path):
                    self.head[path] = blob
            if not self.at_commit:
                self.changes = self._working_changes()
        except (OSError, subprocess.CalledProcessError):
            self.commit, self.head, self.changes = "", {}, {}
        self.files = {**self.head, **self.changes}
        self._imports: dict[str, set[str]] = {}

    @property
    def known(self) -> bool:
        return bool(self.commit)

    def _working_changes(self) -> dict[str, str]:
        """{path: blob id of the working file, or ``deleted``} for every code file that differs
        from HEAD: modified, staged, deleted or new (untracked and not ignored)."""
        names = _git(self.root, "diff", "--name-only", "--no-renames", "-z", "HEAD", "--", *CODE_PATHS)
        names += _git(self.root, "ls-files", "--others", "--exclude-standard", "-z", "--", *CODE_PATHS)
        paths = sorted({p for p in names.split("\0") if p and is_code(p)})
        present = [p for p in paths if (self.root / p).is_file()]
        blobs = _git(self.root, "hash-object", "--stdin-paths", stdin="\n".join(present) + "\n").split() \
            if present else []
        now = dict(zip(present, blobs))
        now.update({p: DELETED for p in paths if p not in now})
        return {p: b for p, b in now.items() if self.head.get(p) != b}

    def identity(self, select=lambda path: True, external: dict[str, str] | None = None) -> Identity:
        """The identity of the code files ``select`` keeps; ``external``: {name: content hash}
        of files outside the repository (a method installed from elsewhere), counted as committed."""
        if not self.known:
            return Identity(UNKNOWN, "")
        head = {p: b for p, b in self.head.items() if select(p)} | (external or {})
        changes = {p: b for p, b in self.changes.items() if select(p)}
        ident = _digest(head, ID_LEN) + (f"-dirty-{_digest(changes, DIRTY_LEN)}" if changes else "")
        files = {p: b for p, b in self.files.items() if select(p)} | (external or {})
        return Identity(ident, self.commit, files)

    def code(self) -> Identity:
        """The code identity: every file that decides results."""
        return self.identity()

    # ------------------------------------------------------------ a method's files
    def _read(self, path: str) -> str:
        if self.at_commit:
            return _git(self.root, "show", f"{self.commit}:{path}")
        return (self.root / path).read_text()

    def module_path(self, module: str) -> str | None:
        """The repository file of a module (``a/b.py`` or ``a/b/__init__.py``), if it is one."""
        base = module.replace(".", "/")
        for path in (base + ".py", base + "/__init__.py"):
            if self.files.get(path, DELETED) != DELETED:
                return path
        return None

    def imports(self, path: str) -> set[str]:
        """Every module a Python file imports, at any depth of its code (lazy imports too), with
        the packages above it (importing ``a.b`` runs ``a/__init__.py``)."""
        if path not in self._imports and (path, self.files.get(path)) in _IMPORTS:  # same content, parsed before
            self._imports[path] = _IMPORTS[path, self.files[path]]
        if path not in self._imports:
            package = path[:-len("/__init__.py")] if path.endswith("/__init__.py") else path.rpartition("/")[0]
            names, text = set(), self._read(path)
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    parts = package.split("/")
                    base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
                    module = ".".join(p for p in (base, node.module or "") if p)
                    names.add(module)
                    names.update(f"{module}.{a.name}" for a in node.names)
            self._imports[path] = {".".join(n.split(".")[:i]) for n in names
                                   for i in range(1, len(n.split(".")) + 1)}
            if self.files.get(path, DELETED) == _blob_id(text):  # keyed by its content (edited since: not kept)
                _IMPORTS[path, self.files[path]] = self._imports[path]
        return self._imports[path]

    def closure(self, paths) -> set[str]:
        """``paths`` and every repository module they import, transitively."""
        todo, seen = list(paths), set()
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            if path.endswith(".py"):
                todo.extend(p for m in self.imports(path) if (p := self.module_path(m)) and p not in seen)
        return seen

    def method(self, name: str) -> Identity:
        """The method identity of ``name`` (a method or variant of the registry)."""
        from harness.registry import get_method

        return self.method_of_module(get_method(name).target.split(":")[0])

    def method_of_module(self, module: str) -> Identity:
        """The method identity of the adapter defined in ``module``: its package (``methods.par``
        for ``methods.par.adapter``; the module alone where it is no package's), the packages
        above it, and what all of them and ``RUN_ENTRY_MODULES`` import from this repository."""
        parts = module.split(".")
        package = self.module_path(".".join(parts[:2]))
        own_file = package if package and package.endswith("/__init__.py") else self.module_path(module)
        external = None
        if own_file is None:  # installed from outside this repository: hash its package's files
            own, external = set(), {} if self.at_commit else _external_package(module)
            if not self.known or not external:
                return Identity(UNKNOWN, self.commit)
        elif own_file.endswith("/__init__.py"):
            prefix = own_file[:-len("__init__.py")]
            own = {p for p in self.files if p.startswith(prefix)}
        else:
            own = {own_file}
        roots = [p for p in own if p.endswith(".py") and self.files[p] != DELETED]
        # the packages above the adapter's module run when it is imported
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        roots += [p for m in (*parents, *RUN_ENTRY_MODULES) if (p := self.module_path(m))]
        selected = self.closure(roots) | own
        return self.identity(lambda p: p in selected, external)


def _external_package(module: str) -> dict[str, str]:
    """{"external:<module>/<file>": SHA-256} of the Python files of a module's package outside
    this repository."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return {}
    origin = Path(spec.origin)
    files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
    return {f"external:{module}/{f.relative_to(origin.parent).as_posix()}":
            hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def identity_at(sha: str, method: str | None = None, root: Path = REPO_ROOT) -> str:
    """The code identity (or ``method``'s identity) a commit recorded as ``git_sha`` implies:
    ``<sha>-dirty`` gives ``<id>-dirty-unknown`` (what was uncommitted is not known), a commit
    not in this repository's history ``unknown``."""
    commit, dirty = (sha[:-len("-dirty")], True) if sha.endswith("-dirty") else (sha, False)
    state = CodeState(root, commit=commit) if commit else None
    if state is None or not state.known:
        return UNKNOWN
    ident = (state.method(method) if method else state.code()).id
    return ident + ("-dirty-unknown" if dirty and ident != UNKNOWN else "")


def run_code_ids(run_config: dict, state: CodeState, module: str) -> tuple[dict, str | None]:
    """The code identities of a run's rollout rows, and whether its method code is this code.

    Returns ``(ids, difference)``: ``ids`` has ``code_id``/``method_id`` of ``state`` (the code
    that evaluates; ``module``: the run's adapter module) and ``train_code_id``/
    ``train_method_id`` of the code that trained the run (derived from its ``git_sha`` for run
    folders from before identities were recorded); ``difference`` is None when the two method
    identities are one known identity, else a sentence naming the files that changed.
    """
    now = state.method_of_module(module)
    sha = run_config.get("git_sha", "")
    ids = {"code_id": state.code().id, "method_id": now.id,
           "train_code_id": run_config.get("code_id") or identity_at(sha),
           "train_method_id": run_config.get("method_id") or identity_at(sha, run_config["method"])}
    if ids["train_method_id"] == now.id and state.known:
        return ids, None
    trained_files = run_config.get("method_files")
    if trained_files is None and ids["train_method_id"] != UNKNOWN:  # an older run: its commit's files
        old = CodeState(state.root, commit=sha.removesuffix("-dirty"))
        trained_files = old.method_of_module(module).files if old.known else None
    changed = changed_files(trained_files, now.files) if trained_files is not None else None
    what = ("this is not a git checkout, so the code evaluating cannot be identified" if not state.known else
            f"changed: {', '.join(changed)}" if changed else
            "the files that changed are not known" if changed is None else "uncommitted changes differ")
    return ids, (f"was trained by method code {ids['train_method_id']} (commit {sha or 'not recorded'}); "
                 f"this code is {now.id} (commit {state.commit or 'unknown'}); {what}")


def run_provenance(run_dir, state: CodeState) -> tuple[str, bool]:
    """A line saying whether the code that trained ``run_dir`` is ``state``'s, and whether it is."""
    from harness.runs import read_run_config, run_adapter

    adapter_cls, run_config = run_adapter(read_run_config(run_dir))
    ids, difference = run_code_ids(run_config, state, adapter_cls.__module__)
    if difference is None:
        return f"{run_dir}: {run_config['method']} trained by method code {ids['method_id']}: this code", True
    return f"{run_dir}: {run_config['method']} {difference}", False


IDENTITY_COLUMNS = ("code_id", "method_id", "train_code_id", "train_method_id")


def fill_row_identities(path, train_commit: str | None = None, root: Path = REPO_ROOT) -> str:
    """Fill in the identity columns of a rollout CSV written before they existed, from each
    row's ``git_sha`` (evaluation) and ``train_git_sha`` (training; ``train_commit`` where the
    row records none) and the history of the repository at ``root`` (``identity_at``). Cells
    already filled are kept. Returns a line saying what was filled."""
    import csv

    from harness.rollouts import check_rollout_file

    path = Path(path)
    check_rollout_file(path, required=("git_sha",))  # never rewrite a cut-off file as if whole
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    missing = [c for c in IDENTITY_COLUMNS if c not in fields]
    if missing:
        at = fields.index("train_git_sha") + 1 if "train_git_sha" in fields else len(fields)
        fields[at:at] = missing
    cache: dict[tuple[str, str | None], str] = {}

    def ident(sha: str, method: str | None) -> str:
        if (sha, method) not in cache:
            cache[(sha, method)] = identity_at(sha, method, root) if sha else UNKNOWN
        return cache[(sha, method)]

    filled = 0
    for row in rows:
        train_sha = row.get("train_git_sha") or train_commit or ""
        for column, sha, method in (("code_id", row["git_sha"], None), ("method_id", row["git_sha"], row["method"]),
                                    ("train_code_id", train_sha, None),
                                    ("train_method_id", train_sha, row["method"])):
            if not row.get(column):
                row[column] = ident(sha, method)
                filled += 1
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    pairs = sorted({(r["train_method_id"], r["method_id"]) for r in rows})
    return f"{path}: {filled} cells filled; (train_method_id, method_id): " + \
        ", ".join(f"({a}, {b})" + ("" if a == b else " differ") for a, b in pairs)
