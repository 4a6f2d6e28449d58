"""Every config field says where its default comes from, in its docstring, in one of three
forms: the paper (``paper §4.3``, ``ACT paper Table 5``, ``paper Fig. 3``), a line of code
(``<owner>/<repository>@<commit>:<path>``), or our own choice (``ours: <the reason>``)."""

import ast
import dataclasses
import inspect
import re
import textwrap

import pytest

from harness.adapter import MethodConfig
from harness.protocol import Protocol
from harness.registry import list_methods

SOURCE = re.compile(
    r"\bpaper (§\s?\d|Table \d|Tab\. ?\d|Fig\. ?\d|Figure \d|Sec\. ?\d|Eq\. ?\d)"
    r"|\b[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:[\w./-]+"
    r"|\bours: \S")


def field_docstrings(cls) -> dict[str, str]:
    """``{field: docstring}`` of the fields a class body declares (the string literal right
    after a field's annotated assignment)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = after.value.value
            else:
                docs[node.target.id] = ""
    return docs


def undocumented(cls) -> list[str]:
    """Fields of ``cls`` whose docstring (in the class that last set its default) names no source."""
    missing = []
    for f in dataclasses.fields(cls):
        owner = next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
        doc = field_docstrings(owner).get(f.name, "")
        if not SOURCE.search(doc):
            missing.append(f"{owner.__name__}.{f.name}")
    return missing


# by the name a user selects with -k: each method's own, then the harness's shared configs
CONFIGS = {e.name: e.load().config_class for e in list_methods(load_variants=False)}
CONFIGS.update({"MethodConfig": MethodConfig, "Protocol": Protocol})


def test_the_source_forms():
    for good in ("paper §4.3", "ACT paper Table 5: k = 100", "huggingface/lerobot@0878c68:src/x.py",
                 "ours: CPU budget", "paper Fig. 3"):
        assert SOURCE.search(good), good
    for bad in ("LeRobot default", "the paper", "ours", "original code", "repo@main:x.py"):
        assert not SOURCE.search(bad), bad


def test_a_field_without_a_source_is_found():
    @dataclasses.dataclass(frozen=True)
    class Config(MethodConfig):
        documented: int = 1
        """Width (ours: small on purpose)."""
        vague: int = 2
        """LeRobot's default."""
        bare: int = 3

    missing = undocumented(Config)
    assert "Config.vague" in missing and "Config.bare" in missing and "Config.documented" not in missing


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_defaults_are_documented(name):
    assert undocumented(CONFIGS[name]) == []
