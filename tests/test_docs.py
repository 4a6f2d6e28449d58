"""Every command the README and the docs show runs as written.

Each distinct `snakemake` command in README.md, docs/*.md and results/**/README.md is dry-run from the
repository root, exactly as written plus `-n --nolock`, two at a time. Commands that are templates for the user to
fill in say so in their comment (`# template: ...`) and are skipped by name; a command that reads a
finished run (`# after a run: ...`) runs after the smoke DAG in tests/test_pipeline_sim.py. The README's
`python -m harness` walkthrough runs in order, at the smoke scale, as one bash script.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load_config
from harness.paths import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")),
        *sorted((REPO_ROOT / "results").rglob("README.md"))]


def _code_lines(text: str):
    """(line number, line) of the lines inside fenced or 4-space-indented code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            yield number, line


def snakemake_commands():
    """(where, command, comment) of every snakemake command, continuation lines joined."""
    found = []
    for doc in DOCS:
        lines = list(_code_lines(doc.read_text()))
        i = 0
        while i < len(lines):
            number, line = lines[i]
            if line.strip().startswith("snakemake "):
                command = line.strip()
                while command.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command[:-1].rstrip() + " " + lines[i][1].strip()
                command, _, comment = command.partition(" #")
                found.append((f"{doc.relative_to(REPO_ROOT)}:{number}", command.strip(), comment.strip()))
            i += 1
    return found


COMMANDS = snakemake_commands()


def distinct_commands():
    """(where, command, comment) once per distinct command (``where``: every place it is shown):
    the same command in two documents is dry-run once."""
    places = {}
    for where, command, comment in COMMANDS:
        places.setdefault(command, ([], comment))[0].append(where)
    return [(", ".join(wheres), command, comment) for command, (wheres, comment) in places.items()]


DISTINCT = distinct_commands()


def test_the_docs_show_the_headline_and_smoke_commands():
    shown = {command for _, command, _ in COMMANDS}
    assert "snakemake --cores 8 results/table2.csv" in shown
    assert "snakemake --cores 2 results/smoke/table2.csv --config scale=smoke" in shown
    assert len(COMMANDS) >= 6


def _dry_run(command: str) -> tuple[int, str]:
    words = shlex.split(command)
    assert words[0] == "snakemake"
    # --nolock: the dry runs share the repository and run side by side (a dry run writes nothing)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", *words[1:]], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dry_runs():
    """Every runnable command's dry run, two at a time (each is mostly one process parsing the
    workflow: about half the suite's time in this file when run one after another)."""
    from concurrent.futures import ThreadPoolExecutor

    runnable = [c for _, c, comment in DISTINCT if not comment.startswith(("template", "after a run"))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(runnable, pool.map(_dry_run, runnable)))


@pytest.mark.parametrize("where, command, comment", DISTINCT, ids=[w.split(", ")[0] for w, _, _ in DISTINCT])
def test_snakemake_command_dry_runs_as_written(where, command, comment, dry_runs):
    if comment.startswith("template"):
        pytest.skip(f"{where} is a template for the user to fill in: {command}")
    if comment.startswith("after a run"):  # needs a run's outputs: tests/test_pipeline_sim.py runs it
        pytest.skip(f"{where} runs after the smoke DAG in tests/test_pipeline_sim.py: {command}")
    returncode, out = dry_runs[command]
    assert returncode == 0, f"{where}: `{command}` failed:\n{out[-3000:]}"
    assert not re.search(r"\b(Error|Exception)\b", out), f"{where}: `{command}`:\n{out[-3000:]}"


def readme_walkthrough() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Every step without Snakemake", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.sim
def test_readme_walkthrough_runs_in_order_at_the_smoke_scale(tmp_path):
    script = readme_walkthrough()
    assert script.count("python -m harness") >= 14
    # TMPDIR: the walkthrough's `mktemp -d` folder lives in this test's tmp_path, which pytest
    # cleans, so a failed run leaves nothing behind in /tmp
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # print the folder at the end so the test can look at what the walkthrough made
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script + '\necho "WORK=$work"\n'],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"walkthrough failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    work = Path(proc.stdout.strip().splitlines()[-1].removeprefix("WORK="))
    assert work.parent == tmp_path
    try:
        assert (work / "push.h5").exists() and (work / "table2.csv").exists()
        smoke = load_config("smoke").protocol("PushCube")  # header + one row per rollout
        assert len((work / "rollouts.csv").read_text().splitlines()) == 1 + len(smoke.jobs())
        assert (work / "fig4.png").stat().st_size > 0
    finally:
        subprocess.run(["rm", "-rf", str(work)])


_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set:
    return {_anchor(line.lstrip("#")) for line in doc.read_text().splitlines() if line.startswith("#")}


def broken_links(doc: Path) -> list:
    """The relative links and images of a markdown file whose file, or heading anchor in a
    markdown file, does not exist (links to the web are not followed: no network)."""
    broken = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path) if path else doc
            if not resolved.exists():
                broken.append(f"{doc.relative_to(REPO_ROOT)}:{number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{doc.relative_to(REPO_ROOT)}:{number}: {target} (no such heading)")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    assert [b for doc in DOCS for b in broken_links(doc)] == []


def test_a_broken_link_or_anchor_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    (tmp_path / "there.md").write_text("# A heading, with commas\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](there.md#a-heading-with-commas) [gone](missing.md) [bad](there.md#nope)\n"
                   "[web](https://example.org/x) ![img](there.md)\n")
    assert broken_links(doc) == ["doc.md:1: missing.md (no such file)",
                                 "doc.md:1: there.md#nope (no such heading)"]
