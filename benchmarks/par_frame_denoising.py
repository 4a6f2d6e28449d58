"""PAR's frame de-tokenizer on a trained run: how well it denoises, per noise level, and
what its sampler makes of that.

    .venv/bin/python benchmarks/par_frame_denoising.py --run outputs/reduced/runs/par/PushCube

Teacher-forced on training windows of the run's own dataset: the causal transformer sees
the real context, and the frame de-tokenizer (no patch visible, as at the first set of
sampling) denoises the true next frame noised to level t. Per t: the model's epsilon MSE,
the MSE of the trivial predictor eps = x_t / sqrt(1 - abar_t) (which knows nothing of the
frame), and the PSNR of the one-step estimate of the clean frame. Then the PSNR of frames
sampled the way rollouts sample them (``--sampling-steps`` tries other DDIM step counts),
next to repeating the last seen frame. Where the model's epsilon is worse than the trivial
one, sampling starts from a wrong picture.
Writes results/<--name>.* (default par_frame_denoising).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained PAR run folder")
    p.add_argument("--windows", type=int, default=8, help="training windows, spread over the dataset")
    p.add_argument("--t", type=int, nargs="+", default=[10, 100, 300, 500, 700, 900, 950])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampling-steps", type=int, nargs="+", default=None,
                   help="DDIM steps to sample frames with (default: the run's frame_sampling_steps)")
    p.add_argument("--name", default="par_frame_denoising", help="results/<name>.json|md")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from harness.dataset import DemoDataset
    from harness.figures import psnr
    from harness.runs import load_trained
    from harness.train import BatchPreparer, collate
    from harness.windows import WindowDataset
    from methods.par.model import patchify, unpatchify

    torch.manual_seed(args.seed)
    adapter, run_config = load_trained(args.run, device="cpu")
    adapter.eval()
    m = adapter.model
    if not m.cfg.autoregressive:
        raise SystemExit(f"{args.run}: {run_config['method']} has no frame de-tokenizer")
    windows = WindowDataset(DemoDataset(run_config["dataset"]), type(adapter).window_spec(adapter.config))
    # windows whose predicted frame is a real one (not padding past the episode's end)
    real = [i for i in range(len(windows)) if not windows[i]["obs_is_pad"][-1]]
    picks = np.asarray(real)[np.linspace(0, len(real) - 1, args.windows).round().astype(int)]
    prepare = BatchPreparer.of_run(run_config)
    batch = prepare(collate([windows[int(i)] for i in picks]))
    frozen = m.frozen

    def to_images(latents):  # (B, C, h, w) -> uint8 (B, H, W, 3)
        return (frozen.decode_frames(latents).permute(0, 2, 3, 1) * 255).round().byte().numpy()

    def mean_psnr(a, b):
        return float(np.mean([psnr(x, y) for x, y in zip(to_images(a), to_images(b))]))

    with torch.no_grad():
        latents, text, frame_tok, act_tok = m.embed_window(batch["frames"], batch["actions"],
                                                           batch["action_is_pad"], batch["instruction"])
        z_frame, _ = m.run_temporal(text, frame_tok, act_tok)
        prefix, target, seen = z_frame[:, -1], latents[:, -1], latents[:, -2]
        tokens = patchify(target, m.cfg.spatial_patch)
        cond = m.spatial(tokens, prefix, torch.zeros(tokens.shape[:2], dtype=torch.bool))
        h, w = target.shape[-2:]
        rows = []
        for t in args.t:
            steps = torch.full(tokens.shape[:2], t)
            noise = torch.randn_like(tokens)
            noisy = m.add_noise(tokens, noise, steps)
            out = m.frame_mlp(noisy, steps, cond)
            abar = m.noise.alphas_cumprod[t]
            if m.cfg.frame_prediction_type == "epsilon":
                eps = out
                clean = (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()
            else:  # v = sqrt(abar) eps - sqrt(1 - abar) x0
                eps = abar.sqrt() * out + (1 - abar).sqrt() * noisy
                clean = abar.sqrt() * noisy - (1 - abar).sqrt() * out
            rows.append({
                "t": t, "alphas_cumprod": float(abar),
                "eps_mse_model": float((eps - noise).pow(2).mean()),
                "eps_mse_trivial": float((noisy / (1 - abar).sqrt() - noise).pow(2).mean()),
                "one_step_clean_psnr_db": mean_psnr(unpatchify(clean, m.cfg.spatial_patch, target.shape[1], h, w),
                                                    target),
            })
        own_steps, rng = m.cfg.frame_sampling_steps, torch.get_rng_state()
        sampled = {}  # DDIM steps -> PSNR; every count starts from the same noise stream
        for n in args.sampling_steps or [own_steps]:
            torch.set_rng_state(rng)
            sampled[n] = mean_psnr(m.sample_frame(prefix, ddim_steps=n), target)
    result = {"run": args.run, "method": run_config["method"], "windows": picks.tolist(),
              "frame_prediction_type": m.cfg.frame_prediction_type,
              "train_steps": adapter.config.steps, "frame_sampling_steps": own_steps,
              "per_t": rows, "sampled_psnr_db_by_steps": sampled,
              "repeat_last_psnr_db": mean_psnr(seen, target)}
    lines = [f"# PAR frame de-tokenizer, {args.run} ({len(picks)} windows)", "",
             "| t | abar_t | eps MSE model | eps MSE trivial | one-step clean PSNR (dB) |", "|---|---|---|---|---|"]
    lines += [f"| {r['t']} | {r['alphas_cumprod']:.4f} | {r['eps_mse_model']:.4f} | {r['eps_mse_trivial']:.4f} "
              f"| {r['one_step_clean_psnr_db']:.1f} |" for r in rows]
    lines += [""] + [f"Sampled ({n} DDIM steps{' (the run)' if n == own_steps else ''}, "
                     f"{m.cfg.spatial_ar_steps} sets): {psnr_db:.1f} dB" for n, psnr_db in sampled.items()]
    lines += [f"Repeating the last seen frame: {result['repeat_last_psnr_db']:.1f} dB."]
    write_result(args.name, result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
