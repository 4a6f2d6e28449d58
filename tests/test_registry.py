from importlib.metadata import EntryPoint

import pytest

import harness.registry as registry


def test_builtin_methods_and_variants_are_listed():
    names = {e.name: e for e in registry.list_methods()}
    assert {"act", "bc_t", "bc_t_gmm", "dp", "dp_unet", "icrt", "par", "par_noar", "rdt", "dummy"} <= set(names)
    assert names["bc_t_gmm"].method == "bc_t" and names["bc_t_gmm"].variant == "bc_t_gmm"
    assert names["dp_unet"].method == "dp_unet" and names["dp_unet"].variant is None  # its own adapter
    assert names["par_noar"].method == "par" and names["par_noar"].variant == "par_noar"
    assert names["act"].source == "built-in"


def test_unknown_method_lists_known_ones():
    with pytest.raises(registry.UnknownMethodError, match=r"unknown method 'nope'; known: act, bc_t, bc_t_gmm, dp, dp_unet"):
        registry.get_method("nope")


def test_methods_from_other_packages_via_entry_points(monkeypatch):
    ep = EntryPoint(name="my_method", value="methods.dummy:DummyAdapter", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    entry = registry.get_method("my_method")
    assert entry.source.startswith("entry point") and entry.load().name == "dummy"
    assert "my_method" in {e.name for e in registry.list_methods()}


def test_entry_point_cannot_shadow_a_builtin(monkeypatch):
    ep = EntryPoint(name="act", value="x:Y", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    with pytest.raises(RuntimeError, match="clashes"):
        registry.list_methods()


def test_finding_a_variant_imports_only_the_adapter_it_is_named_after():
    import subprocess
    import sys

    code = ("import sys; from harness.registry import get_method; e = get_method('par_noar'); "
            "print(e.method, 'methods.act' in sys.modules, 'methods.dp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["par", "False", "False"]
