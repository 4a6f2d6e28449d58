"""Saturated units of bounded activations (tanh, sigmoid), found on the training windows themselves.

A tanh head trained with MSE (BC-T's, robomimic's ``TransformerActorNetwork``) can drive a unit so
far into tanh's tail that no gradient comes back: the joint is then commanded to one extreme on
every step, and the policy fails while its loss looks ordinary (issue 28; docs/bc_t.md). Nothing
here is method-specific: during a training forward pass every call of ``torch.tanh`` /
``torch.sigmoid`` (``Tensor.tanh``, ``F.tanh``, ``nn.Tanh``, ... all dispatch through them) on a
tensor that is part of the trained graph (``requires_grad``) and has the batch's windows as its
first dimension is counted, per unit, so any method with a bounded output is checked without
declaring anything. Not counted: in-place ``tanh_``, calls made inside C++ operators, and the tanh
inside GELU's tanh approximation (``transformers.activations``), which bounds nothing.

A unit is **saturated** when its pre-activation lies beyond the bound, with one sign, on at least
``SATURATED_FRACTION`` of the batch's windows. The bounds are where the activation passes at most
1% of its largest gradient: tanh'(z) = 1 - tanh(z)^2 <= 0.0099 for |z| >= 3 (its peak is 1 at
0), sigmoid'(z) <= 0.0025 for |z| >= 6 (its peak is 0.25). A unit there on nearly every window
has stopped learning from all of them. The one-sign rule keeps a unit that fits a two-valued
target (a gripper open or closed, min-max normalised to -1 and +1, which tanh reaches only in
its tails) from being reported; a target that sits at one extreme on 95% of windows would be,
and is worth a look anyway. A unit is numbered over every dimension after the batch, flattened:
for BC-T's GMM head, ``tanh#0[k]`` is mode ``k // A``, action dimension ``k % A``.

Training counts them at every checkpoint (``harness.train``: the ``saturated_units`` column of
``train_log.csv`` and a warning); the smoke DAG's test asserts that no smoke run has one.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

BOUNDS = {"tanh": 3.0, "sigmoid": 6.0}
SATURATED_FRACTION = 0.95
# callers whose tanh is part of an activation function, not a bound on an output
NOT_BOUNDS = ("transformers.activations", "diffusers.models.activations")


@dataclass
class Site:
    """One call of a bounded activation: per unit, how many windows were beyond +bound and -bound,
    and the summed pre-activation (for the mean); ``windows`` in all."""

    name: str
    windows: int
    high: torch.Tensor
    low: torch.Tensor
    total: torch.Tensor


class BoundedActivations(TorchFunctionMode):
    """Counts, inside the ``with`` block, the pre-activations of every tanh / sigmoid call.

    ``sites`` holds one ``Site`` per call, in call order, named ``"tanh#k"`` for the k-th tanh
    call (each call site of a forward pass in order; a loop that calls it twice counts twice).
    Only per-unit counts are kept, never the tensors. ``windows``: the batch's size; a call whose
    first dimension is not that (a learned gate of shape (1,), a table) is not counted.
    """

    def __init__(self, windows: int | None = None, trained_only: bool = True):
        super().__init__()
        self.windows, self.trained_only = windows, trained_only
        self.sites: list[Site] = []
        self._count: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in BOUNDS and args and isinstance(args[0], torch.Tensor):
            self._record(name, args[0])
        return func(*args, **(kwargs or {}))

    def _record(self, name: str, x: torch.Tensor) -> None:
        if x.dim() < 1 or x.numel() == 0 or (self.trained_only and not x.requires_grad):
            return
        if self.windows is not None and x.shape[0] != self.windows:
            return
        caller = sys._getframe(2).f_globals.get("__name__", "")
        if caller.startswith(NOT_BOUNDS):
            return
        with torch.no_grad():
            pre = x.detach().float().reshape(x.shape[0], -1)
            bound = BOUNDS[name]
            self.sites.append(Site(f"{name}#{self._count[name]}", pre.shape[0],
                                   (pre >= bound).sum(0).cpu(), (pre <= -bound).sum(0).cpu(), pre.sum(0).cpu()))
        self._count[name] += 1


def saturated_units(sites: list[Site], fraction: float = SATURATED_FRACTION) -> list[str]:
    """``"tanh#0[3]"`` for unit 3 of the first tanh call, for every saturated unit (module doc)."""
    out = []
    for site in sites:
        need = fraction * site.windows
        stuck = torch.nonzero((site.high >= need) | (site.low >= need)).flatten().tolist()
        out.extend(f"{site.name}[{unit}]" for unit in stuck)
    return out


def describe(sites: list[Site], units: list[str]) -> str:
    """Each saturated unit with its mean pre-activation, for a warning."""
    means = {}
    for site in sites:
        for unit in units:
            if unit.startswith(site.name + "["):
                means[unit] = float(site.total[int(unit[len(site.name) + 1:-1])]) / site.windows
    return ", ".join(f"{u} (mean pre-activation {m:+.2f})" for u, m in means.items())
