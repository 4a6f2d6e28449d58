"""PAR's frame noise schedule and sampler, built from a NOVA checkpoint's DDPM scheduler config,
against NOVA's own DDPMScheduler on the same config. NOVA is imported from a local checkout of
baaivision/NOVA (package ``diffnext``); nothing of it is copied here:

    git clone https://github.com/baaivision/NOVA /tmp/nova  # on a machine with network
    .venv/bin/python benchmarks/par_nova_scheduler.py --upstream /tmp/nova

The release BAAI/nova-d48w1024-osp480 names diffusers' ``DDPMScheduler`` in its
model_index.json; its scheduler_config.json's values are not public here, so every
configuration NOVA's class accepts is tried: each beta schedule (and explicit betas, and the
zero-terminal-SNR rescale), each prediction type, each timestep spacing, with and without
``clip_sample``. For each, with PAR configured from that scheduler config
(``frame_prediction_type`` and ``frame_scheduler``, as ``weights.frame_objective_of_checkpoint``
sets them):

- ``alphas_cumprod``: NOVA's vs PAR's frame schedule;
- ``add_noise`` with one timestep per token (NOVA's ``get_losses`` draws them so): NOVA's
  ``add_noise`` vs ``PARModel.add_noise`` on the frame schedule;
- the training target: NOVA's ``get_velocity`` for v-prediction vs ``PARModel.velocity``;
- sampling: the timesteps of 25 steps, and one step (at the first, a middle and the last
  timestep, the same generator) of NOVA's ``step`` vs the sampler PAR builds
  (``model._frame_sampler``: diffusers' DDPMScheduler, the class the release names and NOVA's
  pipeline samples with).

Writes results/par_nova_scheduler.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_result  # noqa: E402

GRID = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"],
    "prediction_type": ["epsilon", "v_prediction", "sample"],
    "timestep_spacing": ["leading", "linspace", "trailing"],
    "clip_sample": [False, True],
}
EXTRA = [dict(trained_betas=list(np.linspace(1e-4, 0.02, 1000))), dict(rescale_betas_zero_snr=True),
         dict(variance_type="fixed_large"), dict(variance_type="fixed_small_log")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path, help="a checkout of baaivision/NOVA")
    args = parser.parse_args()
    sys.path.insert(0, str(args.upstream.resolve()))
    from diffnext.schedulers.scheduling_ddpm import DDPMScheduler as NOVADDPM  # NOVA's, from the checkout

    from harness.adapter import DataInfo, resolve_config
    from methods.par import PARAdapter
    from methods.par.model import _frame_sampler

    commit = subprocess.run(["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown (not a git checkout)"
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max")} for k, d in (("actions", 8), ("obs_qpos", 9))}
    data = DataInfo(8, 9, (32, 32), "push", stats)
    configs = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    configs += [dict(prediction_type="epsilon", **extra) for extra in EXTRA]
    rows = []
    for fields in configs:
        nova = NOVADDPM(**fields)
        sched = {"_class_name": "DDPMScheduler", **dict(nova.config)}
        kind = sched["prediction_type"]
        cfg = resolve_config(PARAdapter, "smoke", None, dict(frame_prediction_type=kind, frame_scheduler=sched))
        model = PARAdapter(cfg, data).model
        g = torch.Generator().manual_seed(0)
        x, noise = torch.randn(4, 6, 16, generator=g), torch.randn(4, 6, 16, generator=g)
        t = torch.randint(0, 1000, (4, 6), generator=g)
        row = {**{k: v for k, v in fields.items() if k != "trained_betas"},
               "trained_betas": "trained_betas" in fields}
        row["alphas_cumprod"] = float((nova.alphas_cumprod - model.frame_noise.alphas_cumprod).abs().max())
        row["add_noise"] = float((nova.add_noise(x, noise, t) - model.add_noise(x, noise, t, model.frame_noise)).abs().max())
        row["velocity"] = float((nova.get_velocity(x, noise, t) - model.velocity(x, noise, t, model.frame_noise)).abs().max()) \
            if kind == "v_prediction" else ""
        sampler = _frame_sampler(cfg)
        nova.set_timesteps(25)
        sampler.set_timesteps(25)
        row["timesteps_equal"] = bool(torch.equal(nova.timesteps.long(), sampler.timesteps.long()))
        steps = []
        for tt in (nova.timesteps[0], nova.timesteps[len(nova.timesteps) // 2], nova.timesteps[-1]):
            out = torch.randn(4, 6, 16, generator=g) * 2
            sample = torch.randn(4, 6, 16, generator=g) * 2
            theirs = nova.step(out, int(tt), sample, generator=torch.Generator().manual_seed(1)).prev_sample
            mine = sampler.step(out, tt, sample, generator=torch.Generator().manual_seed(1)).prev_sample
            steps.append(float((theirs - mine).abs().max()))
        row["step"] = max(steps)
        rows.append(row)
        print({k: row[k] for k in ("beta_schedule", "prediction_type", "timestep_spacing", "clip_sample",
                                   "alphas_cumprod", "add_noise", "step")} if "beta_schedule" in row else row,
              flush=True)
    worst = {k: max(float(r[k]) for r in rows if r[k] != "") for k in ("alphas_cumprod", "add_noise", "velocity")}

    def step_worst(spacing, clip):
        return max(r["step"] for r in rows if r.get("timestep_spacing", "leading") == spacing
                   and bool(r.get("clip_sample", True)) == clip)

    steps = {f"{spacing}, clip_sample {str(clip).lower()}": step_worst(spacing, clip)
             for spacing in GRID["timestep_spacing"] for clip in (False, True)}
    report = {"upstream_commit": commit, "configs": len(rows), "rows": rows, "worst": worst, "step_worst": steps,
              "all_timesteps_equal": all(r["timesteps_equal"] for r in rows)}
    lines = ["# PAR's frame DDPM schedule and sampler against NOVA's DDPMScheduler", "",
             f"Upstream: baaivision/NOVA at {commit}, `diffnext/schedulers/scheduling_ddpm.py`. {len(rows)} scheduler "
             "configs: every beta schedule x prediction type x timestep spacing x clip_sample, plus explicit "
             "betas, the zero-terminal-SNR rescale and two variance types (with diffusers' default "
             "clip_sample, true). PAR is configured from each (`frame_scheduler`), as from a checkpoint's "
             "scheduler_config.json.", "",
             "| quantity (every config) | max abs difference |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in worst.items()]
    lines += ["", f"Sampling timesteps (25 steps) equal in every config: {report['all_timesteps_equal']}.", "",
              "| one sampling step, timestep spacing | max abs difference |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in steps.items()]
    lines += ["", "Noising and the training targets are NOVA's exactly. One sampling step is NOVA's exactly "
              "with `leading` or `trailing` spacing and `clip_sample: false`. It differs in two documented "
              "ways, both between NOVA's own class and diffusers' DDPMScheduler, which the release's "
              "model_index.json names and NOVA's pipeline samples with (PAR samples with it too):",
              "- `clip_sample: true`: diffusers' clips the predicted clean sample to [-1, 1]; NOVA's class "
              "never clips;",
              "- `linspace` spacing, whose rounded timesteps are uneven: diffusers' steps to the next "
              "scheduled timestep, NOVA's to t - 1000 // steps (its `previous_timestep`)."]
    write_result("par_nova_scheduler", report, "\n".join(lines))
    print(worst, steps)


if __name__ == "__main__":
    main()
