"""Code and method identities (harness/provenance.py) on a throwaway git repository holding a
copy of this checkout's code: which commits keep them, which change them, dirty trees, and
the identities a past commit implies."""

import csv
import shutil
import subprocess

import pytest

from harness.paths import REPO_ROOT
from harness.provenance import (CODE_PATHS, UNKNOWN, CodeState, changed_files, fill_row_identities,
                                identity_at, is_code)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_all(repo, message):
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path):
    """A git repository with this checkout's code files (as they are on disk) and a few docs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in CODE_PATHS:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    (repo / "README.md").write_text("# readme\n")
    (repo / "docs").mkdir()
    (repo / "docs" / "x.md").write_text("doc\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.org")
    git(repo, "config", "user.name", "t")
    commit_all(repo, "start")
    return repo


def ids(repo, commit=None):
    state = CodeState(repo, commit=commit)
    return {"code": state.code().id, "par": state.method("par").id, "act": state.method("act").id,
            "par_noar": state.method("par_noar").id}


def append(path, text="# changed\n"):
    path.write_text(path.read_text() + text)


def test_what_counts_as_code():
    assert is_code("harness/train.py") and is_code("methods/par/model.py") and is_code("Snakefile")
    assert is_code("workflows/config/paper.yaml") and is_code("constraints/lock.txt")
    for path in ("README.md", "docs/par.md", "results/measured/reduced/README.md", "tests/test_par.py",
                 "benchmarks/par_kv_cache.py", "workflows/report/fig4.rst", "harness/notes.md",
                 "workflows/profiles/slurm/config.yaml", "harnessx/a.py"):
        assert not is_code(path), path


def test_a_commit_touching_only_docs_results_benchmarks_or_tests_keeps_every_identity(repo):
    before = ids(repo)
    assert all(len(v) == 12 and "dirty" not in v for v in before.values())
    append(repo / "README.md")
    append(repo / "docs" / "x.md")
    for path in ("results/r.csv", "benchmarks/b.py", "tests/test_x.py", "workflows/report/new.rst"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x\n")
    commit_all(repo, "docs, results, benchmarks, tests")
    assert ids(repo) == before


def test_a_change_under_methods_par_changes_pars_identity_not_acts(repo):
    before = ids(repo)
    append(repo / "methods" / "par" / "model.py")
    commit_all(repo, "par")
    after = ids(repo)
    assert after["par"] != before["par"] and after["code"] != before["code"]
    assert after["par_noar"] == after["par"]  # a variant runs its method's code
    assert after["act"] == before["act"]


def test_a_harness_module_the_training_runs_through_changes_every_method(repo):
    before = ids(repo)
    append(repo / "harness" / "windows.py")
    commit_all(repo, "windows")
    after = ids(repo)
    assert after["par"] != before["par"] and after["act"] != before["act"]


def test_a_module_no_method_runs_through_changes_the_code_id_only(repo):
    before = ids(repo)
    append(repo / "harness" / "plots.py")
    commit_all(repo, "plots")
    after = ids(repo)
    assert after["code"] != before["code"]
    assert (after["par"], after["act"]) == (before["par"], before["act"])


def test_a_shared_method_module_counts_for_the_methods_that_import_it(repo):
    state = CodeState(repo)
    assert "methods/robomimic_vision.py" in state.method("bc_t").files
    assert "methods/robomimic_vision.py" not in state.method("act").files
    assert "methods/par/model.py" not in state.method("act").files
    before = ids(repo)
    append(repo / "methods" / "robomimic_vision.py")
    commit_all(repo, "shared")
    assert ids(repo)["act"] == before["act"]
    assert CodeState(repo).method("bc_t").id != state.method("bc_t").id


def test_a_dirty_tree_gets_a_suffix_that_depends_on_the_diff(repo):
    clean = ids(repo)
    model = repo / "methods" / "par" / "model.py"
    original = model.read_text()
    append(model, "# one\n")
    one = ids(repo)
    assert one["par"].startswith(clean["par"] + "-dirty-") and one["code"].startswith(clean["code"] + "-dirty-")
    assert one["act"] == clean["act"]
    model.write_text(original + "# two\n")
    two = ids(repo)
    assert two["par"].startswith(clean["par"] + "-dirty-") and two["par"] != one["par"]
    model.write_text(original + "# one\n")
    assert ids(repo) == one  # the same diff, the same id
    model.write_text(original)
    assert ids(repo) == clean
    (repo / "methods" / "par" / "extra.py").write_text("x = 1\n")  # a new, untracked file of the package
    assert ids(repo)["par"].startswith(clean["par"] + "-dirty-")
    (repo / "methods" / "par" / "extra.py").unlink()
    # the identity is of the code that runs: a removal staged while the file stays on disk keeps it
    git(repo, "rm", "-q", "--cached", "methods/par/layers.py")
    assert ids(repo) == clean
    git(repo, "reset", "-q")
    (repo / "methods" / "par" / "layers.py").unlink()  # deleted from the working tree
    gone = CodeState(repo).method("par")
    assert gone.id.startswith(clean["par"] + "-dirty-") and gone.files["methods/par/layers.py"] == "deleted"


def test_the_identity_of_a_past_commit_and_the_files_that_changed(repo):
    first = git(repo, "rev-parse", "HEAD")
    then = ids(repo)
    append(repo / "methods" / "par" / "model.py")
    commit_all(repo, "par")
    assert ids(repo, commit=first) == then
    assert identity_at(first, "par", root=repo) == then["par"]
    assert identity_at(first, root=repo) == then["code"]
    assert identity_at(first + "-dirty", "par", root=repo) == then["par"] + "-dirty-unknown"
    assert identity_at("f" * 40, "par", root=repo) == UNKNOWN
    old, new = CodeState(repo, commit=first).method("par"), CodeState(repo).method("par")
    assert changed_files(old.files, new.files) == ["methods/par/model.py"]


def test_outside_a_git_checkout_every_identity_is_unknown(tmp_path):
    state = CodeState(tmp_path)
    assert not state.known and state.code().id == UNKNOWN and state.method("par").id == UNKNOWN


def test_rows_from_before_identities_are_filled_from_their_commits(repo, tmp_path):
    first = git(repo, "rev-parse", "HEAD")
    then = ids(repo)
    append(repo / "methods" / "par" / "model.py")
    second = commit_all(repo, "par")
    rows = tmp_path / "rows.csv"
    rows.write_text("task,method,git_sha,train_git_sha,success\n"
                    f"PushCube,par,{second},{first},1\nPushCube,par,{second},,0\n")
    line = fill_row_identities(rows, train_commit=first, root=repo)  # the rows' commits are the repository's

    filled = list(csv.DictReader(rows.open()))
    assert list(filled[0])[:8] == ["task", "method", "git_sha", "train_git_sha", "code_id", "method_id",
                                   "train_code_id", "train_method_id"]
    for row in filled:  # the second row has no train_git_sha: --train-commit stands in
        assert row["train_method_id"] == then["par"] and row["train_code_id"] == then["code"]
        assert row["method_id"] == ids(repo)["par"] != then["par"]
    assert "differ" in line


def test_the_provenance_command_says_whether_a_run_is_this_codes(tmp_path, capsys):
    import json

    from harness.adapter import resolve_config
    from harness.cli import main
    from harness.dataset import write_dataset
    from harness.registry import get_method
    from harness.train import train

    from conftest import SYNTH_META, synthetic_episode

    dataset = write_dataset(tmp_path / "d.h5", [synthetic_episode(s, 12, size=(32, 32)) for s in (0, 1)],
                            dict(SYNTH_META, image_size=[32, 32]))
    cls = get_method("dummy").load()
    run = train(cls, resolve_config(cls, "smoke", None, dict(steps=2, checkpoint_every=2)), dataset,
                tmp_path / "run", device="cpu", progress=False)
    state = CodeState()
    assert main(["provenance", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"code_id  {state.code().id}" in out and f"dummy      {state.method('dummy').id}" in out
    assert f"{run}: dummy trained by method code {state.method('dummy').id}: this code" in out
    config = json.loads((run / "run_config.json").read_text())
    config.update(method_id="0123456789ab",
                  method_files=dict(config["method_files"], **{"harness/windows.py": "0" * 40}))
    (run / "run_config.json").write_text(json.dumps(config))
    assert main(["provenance", "--run", str(run)]) == 1
    assert "trained by method code 0123456789ab" in capsys.readouterr().out
    # and evaluate refuses it when asked to, before anything starts
    assert main(["evaluate", "--scale", "smoke", "--run", str(run), "--task", "PushCube",
                 "--out", str(tmp_path / "rows.csv"), "--require-same-code"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "changed: harness/windows.py" in err


def test_an_edited_import_changes_the_method_files_within_one_process(repo):
    """The imports of a file are kept per process by content (blob id): after an edit, the
    next CodeState reads the new imports, never the ones parsed before."""
    state = CodeState(repo)
    assert "harness/grid.py" not in state.method("act").files  # ACT's code never imports the grid
    act = repo / "methods" / "act" / "__init__.py"
    append(act, "\n\ndef _unused():\n    import harness.grid  # noqa: F401\n")
    edited = CodeState(repo)
    assert "harness/grid.py" in edited.method("act").files
    assert edited.method("act").id != state.method("act").id
