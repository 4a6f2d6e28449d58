"""Where methods come from: the built-in registry and the ``harness.methods`` entry-point group.

A method outside this repository registers itself in its own package's metadata::

    [project.entry-points."harness.methods"]
    my_method = "my_package.my_module:MyAdapter"

and is then trained and evaluated like the built-in ones, with no edit here. Modules are
imported lazily: listing methods does not import torch models.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

from harness.errors import HarnessError

ENTRY_POINT_GROUP = "harness.methods"

BUILTIN: dict[str, str] = {
    "act": "methods.act:ACTAdapter",
    "bc_t": "methods.bc_t:BCTAdapter",
    "dp": "methods.dp:DPAdapter",
    "dp_unet": "methods.dp_unet:DPUNetAdapter",
    "icrt": "methods.icrt:ICRTAdapter",
    "par": "methods.par:PARAdapter",
    "rdt": "methods.rdt:RDTAdapter",
    # any trainable LeRobot policy through LeRobot's own factory (methods/lerobot_policy)
    "lerobot_act": "methods.lerobot_policy:LeRobotACTAdapter",
    "lerobot_diffusion": "methods.lerobot_policy:LeRobotDiffusionAdapter",
    "lerobot_vqbet": "methods.lerobot_policy:LeRobotVQBeTAdapter",
    "lerobot_pretrained": "methods.lerobot_policy:LeRobotPretrainedAdapter",  # a LeRobot checkpoint, as it is
    # chance level: uniform joint targets in the training actions' range (every table's floor)
    "random": "methods.random_policy:RandomAdapter",
    # the smallest complete method: template and test double, not a paper baseline
    "dummy": "methods.dummy:DummyAdapter",
}

# names a user may try that cannot run under this protocol, with the reason (methods/lerobot_policy)
REFUSED: dict[str, str] = {
    "lerobot_tdmpc": "TD-MPC learns a value function from rewards, and the harness's demos have none",
    "lerobot_sac": "SAC learns from rewards (reinforcement learning), and the harness's demos have none",
    "lerobot_pi0": "pi0 needs PaliGemma's pretrained weights and tokenizer from the Hugging Face Hub",
    "lerobot_pi0fast": "pi0-FAST needs PaliGemma's pretrained weights and the FAST tokenizer from the Hub",
    "lerobot_smolvla": "SmolVLA needs SmolVLM's pretrained weights and tokenizer from the Hugging Face Hub",
}


@dataclass(frozen=True)
class MethodEntry:
    """A runnable name: a method, or one of its variants."""

    name: str
    """What configs and tables call it (``par``, ``par_noar``)."""
    method: str
    """The adapter's registry name."""
    variant: str | None
    target: str
    """``module:Class`` of the adapter."""
    source: str
    """``built-in`` or ``entry point (<distribution>)``."""

    def load(self):
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


class UnknownMethodError(HarnessError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_ENTRY_POINTS: dict[tuple, list] = {}


def _installed_entry_points() -> list:
    """The method entry points of the installed distributions. Reading every distribution's
    metadata takes ~30 ms, and a job evaluating several runs looks methods up many times: the
    result is kept while the folders on ``sys.path`` are unchanged (installing or removing a
    distribution changes its folder's mtime)."""
    key = (entry_points, tuple((p, os.stat(p).st_mtime_ns) for p in sys.path if p and os.path.isdir(p)))
    if key not in _ENTRY_POINTS:
        _ENTRY_POINTS.clear()
        _ENTRY_POINTS[key] = list(entry_points(group=ENTRY_POINT_GROUP))
    return _ENTRY_POINTS[key]


def _method_targets() -> dict[str, tuple[str, str]]:
    targets = {name: (target, "built-in") for name, target in BUILTIN.items()}
    for ep in _installed_entry_points():
        dist = getattr(ep.dist, "name", "?") if getattr(ep, "dist", None) else "?"
        if ep.name in targets:
            raise RuntimeError(f"method name {ep.name!r} from entry point {ep.value} ({dist}) "
                               f"clashes with {targets[ep.name][0]}")
        targets[ep.name] = (ep.value, f"entry point ({dist})")
    return targets


def list_methods(load_variants: bool = True) -> list[MethodEntry]:
    """Every method and, when ``load_variants``, every variant (imports the adapter modules)."""
    entries = []
    for name, (target, source) in sorted(_method_targets().items()):
        entry = MethodEntry(name, name, None, target, source)
        entries.append(entry)
        if load_variants:
            for variant in sorted(entry.load().variants):
                entries.append(MethodEntry(variant, name, variant, target, source))
    return entries


def get_method(name: str) -> MethodEntry:
    """Look up a method or variant by name; unknown names fail with the known ones."""
    targets = _method_targets()
    if name in targets:
        return MethodEntry(name, name, None, *targets[name])
    # a variant: ask the methods it is named after first (par_noar -> par), so that finding it
    # imports one adapter module, not all of them
    for method in sorted(targets, key=lambda m: not name.startswith(m + "_")):
        target, source = targets[method]
        if name in MethodEntry(method, method, None, target, source).load().variants:
            return MethodEntry(name, method, name, target, source)
    if name in REFUSED:
        raise UnknownMethodError(f"method {name!r} is not offered: {REFUSED[name]}")
    known = ", ".join(e.name for e in list_methods())
    raise UnknownMethodError(f"unknown method {name!r}; known: {known}")
