"""Saturated units of bounded activations (tanh, sigmoid), found on the training windows themselves.

A tanh head trained with MSE (BC-T's, robomimic's ``TransformerActorNetwork``) can drive a unit so
far into tanh's tail that no gradient comes back: the joint is then commanded to one extreme on
every step, and the policy fails while its loss looks ordinary (issue 28; docs/bc_t.md). Nothing
here is method-specific: during a training forward pass every call of ``torch.tanh`` /
``torch.sigmoid`` (``Tensor.tanh``, ``F.tanh``, ``nn.Tanh``, ... all dispatch through them) is
recorded with its input, the pre-activation, so any method with a bounded output is checked
without declaring anything.

A unit is **saturated** when its pre-activation lies beyond the bound, with one sign, on at least
``SATURATED_FRACTION`` of the batch's windows. The bounds are where the activation passes at most
1% of its largest gradient: tanh'(z) = 1 - tanh(z)^2 <= 0.0099 for |z| >= 3 (its peak is 1 at
0), sigmoid'(z) <= 0.0025 for |z| >= 6 (its peak is 0.25). A unit there on nearly every window
has stopped learning from all of them. The one-sign rule keeps a unit that fits a two-valued
target (a gripper open or closed, min-max normalised to -1 and +1, which tanh reaches only in
its tails) from being reported; a target that sits at one extreme on 95% of windows would be,
and is worth a look anyway.

Training records it at every checkpoint (``harness.train``: the ``saturated_units`` column of
``train_log.csv`` and a warning); the smoke DAG's test asserts that no smoke run has one.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

BOUNDS = {"tanh": 3.0, "sigmoid": 6.0}
SATURATED_FRACTION = 0.95


class BoundedActivations(TorchFunctionMode):
    """Records the input of every tanh / sigmoid call inside the ``with`` block, in call order.

    ``calls`` holds ``(site, pre-activation)`` pairs, ``site`` being ``"tanh#k"`` for the k-th
    tanh call (each call site of a forward pass in order; a loop that calls it twice counts
    twice). The pre-activations are detached float32 copies, shaped (windows, units): every
    dimension after the first (the batch) is a unit.
    """

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, torch.Tensor]] = []
        self._count: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in BOUNDS and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
            pre = args[0].detach().float()
            self.calls.append((f"{name}#{self._count[name]}", pre.reshape(pre.shape[0], -1)))
            self._count[name] += 1
        return func(*args, **(kwargs or {}))


def saturated_units(calls: list[tuple[str, torch.Tensor]], fraction: float = SATURATED_FRACTION) -> list[str]:
    """``"tanh#0[3]"`` for unit 3 of the first tanh call, for every saturated unit (module doc)."""
    out = []
    for site, pre in calls:
        bound = BOUNDS[site.split("#")[0]]
        high = (pre >= bound).float().mean(0)
        low = (pre <= -bound).float().mean(0)
        stuck = torch.nonzero((high >= fraction) | (low >= fraction)).flatten().tolist()
        out.extend(f"{site}[{unit}]" for unit in stuck)
    return out


def describe(calls: list[tuple[str, torch.Tensor]], units: list[str]) -> str:
    """Each saturated unit with its mean pre-activation, for a warning."""
    means = {}
    for site, pre in calls:
        for unit in units:
            if unit.startswith(site + "["):
                means[unit] = float(pre[:, int(unit[len(site) + 1:-1])].mean())
    return ", ".join(f"{u} (mean pre-activation {m:+.2f})" for u, m in means.items())
