"""Our RDT against upstream's own RDTRunner, run side by side from a local checkout of
thu-ml/RoboticsDiffusionTransformer (nothing of it is copied here; it is imported from the path
you give):

    git clone https://github.com/thu-ml/RoboticsDiffusionTransformer /tmp/rdt-upstream  # on a machine with network
    .venv/bin/python benchmarks/rdt_upstream_parity.py --upstream /tmp/rdt-upstream

At a small config (64 wide, 2 blocks), upstream's RDTRunner is built, its weights perturbed (so
that its zero-initialised output layer does not hide differences) and saved; ours loads that file
through `RDTConfig.pretrained`. Compared: the freshly initialised position tables, the DiT's
output on the same random inputs, and a whole 5-step DPM-Solver++ sample from the same noise and
conditions. Writes results/rdt_upstream_parity.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_result  # noqa: E402


def _upstream_runner(root: Path):
    import yaml

    sys.path.insert(0, str(root))
    from models.rdt_runner import RDTRunner  # upstream's, from the checkout

    model_cfg = copy.deepcopy(yaml.safe_load((root / "configs" / "base.yaml").read_text())["model"])
    model_cfg["rdt"].update(hidden_size=64, depth=2, num_heads=4)
    return RDTRunner(action_dim=128, pred_horizon=64, config=model_cfg, lang_token_dim=16, img_token_dim=24,
                     state_token_dim=128, max_lang_cond_len=32, img_cond_len=2 * 3 * 4,
                     img_pos_embed_config=[("image", (2, 3, -4))], lang_pos_embed_config=[("lang", -32)],
                     dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path, help="a checkout of thu-ml/RoboticsDiffusionTransformer")
    args = parser.parse_args()
    from safetensors.torch import save_file

    from harness.adapter import DataInfo, resolve_config
    from methods.rdt import RDTAdapter

    import subprocess

    commit = subprocess.run(["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown (not a git checkout)"
    torch.manual_seed(0)
    upstream = _upstream_runner(args.upstream.resolve())
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max")} for k, d in (("actions", 8), ("obs_qpos", 9))}
    data = DataInfo(8, 9, (32, 32), "push it", stats)
    cfg = resolve_config(RDTAdapter).replace(hidden_size=64, depth=2, num_heads=4, lang_token_dim=16, img_token_dim=24,
                                             max_lang_cond_len=32, vision_image_size=32, vision_patch_size=16,
                                             small_encoder_layers=1, small_encoder_heads=2)
    fresh = RDTAdapter(cfg, data)
    result = {"upstream_commit": commit, "position_tables_max_abs_diff": {
        name: float((getattr(upstream.model, name) - getattr(fresh.model, name)).detach().abs().max())
        for name in ("x_pos_embed", "lang_cond_pos_embed", "img_cond_pos_embed")}}

    with torch.no_grad():
        for p in upstream.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upstream.safetensors"
        save_file({k: v.contiguous() for k, v in upstream.state_dict().items()}, str(path))
        ours = RDTAdapter(cfg.replace(pretrained=str(path)), data)

    g = torch.Generator().manual_seed(1)
    b = 3
    x, lang, img = torch.randn(b, 65, 64, generator=g), torch.randn(b, 7, 64, generator=g), torch.randn(b, 24, 64, generator=g)
    freq, t = torch.tensor([25.0, 0.0, 25.0]), torch.tensor([3, 500, 999])
    lang_mask = torch.ones(b, 7, dtype=torch.bool)
    lang_mask[1, 3:] = False
    with torch.no_grad():
        theirs = upstream.model(x, freq, t, lang, img, lang_mask=lang_mask)
        mine = ours.model(x, freq, t, lang, img, lang_mask=lang_mask)
    result["dit_output_max_abs_diff"] = float((theirs - mine).abs().max())
    result["dit_output_max_abs"] = float(theirs.abs().max())

    # a whole rollout call's sampling: upstream's predict_action against the same steps of ours
    lang_tokens, img_tokens = torch.randn(1, 7, 16, generator=g), torch.randn(1, 24, 24, generator=g)
    state = torch.zeros(1, 1, 128)
    state[0, 0, ours.unified_index] = torch.randn(8, generator=g)
    mask = ours.state_elem_mask.view(1, 1, 128)
    torch.manual_seed(2)
    theirs = upstream.predict_action(lang_tokens, torch.ones(1, 7, dtype=torch.bool), img_tokens, state, mask,
                                     torch.tensor([25]))
    torch.manual_seed(2)
    with torch.no_grad():
        lang_c, img_c = ours.lang_adaptor(lang_tokens), ours.img_adaptor(img_tokens)
        state_c = ours.state_adaptor(torch.cat([state, mask], dim=2))
        sample = torch.randn(1, 64, 128)
        masks = mask.expand(-1, 64, -1)
        ours.sample_scheduler.set_timesteps(cfg.num_inference_timesteps)
        for step in ours.sample_scheduler.timesteps:
            traj = torch.cat([state_c, ours.state_adaptor(torch.cat([sample, masks], dim=2))], dim=1)
            out = ours.model(traj, torch.tensor([25.0]), step.reshape(1), lang_c, img_c,
                             lang_mask=torch.ones(1, 7, dtype=torch.bool))
            sample = ours.sample_scheduler.step(out, step, sample).prev_sample
    result["dpm_solver_sample_max_abs_diff"] = float((theirs - sample * masks).abs().max())
    result["dpm_solver_sample_max_abs"] = float(theirs.abs().max())

    lines = ["# RDT against upstream's RDTRunner (small config, same weights and inputs)", "",
             f"Upstream: thu-ml/RoboticsDiffusionTransformer at {commit}.", "", "| what | max abs difference | scale |", "|---|---|---|"]
    for name, diff in result["position_tables_max_abs_diff"].items():
        lines.append(f"| initial `{name}` | {diff:.3g} | sin-cos, <= 1 |")
    lines.append(f"| DiT output | {result['dit_output_max_abs_diff']:.3g} | {result['dit_output_max_abs']:.3g} |")
    lines.append(f"| 5-step DPM-Solver++ sample | {result['dpm_solver_sample_max_abs_diff']:.3g} | "
                 f"{result['dpm_solver_sample_max_abs']:.3g} |")
    write_result("rdt_upstream_parity", result, "\n".join(lines))


if __name__ == "__main__":
    main()
