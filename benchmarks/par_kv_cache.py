"""PAR inference: one physical step with the KV-cache vs recomputing the whole context,
at 5, 10 and 25 steps of context.

    .venv/bin/python benchmarks/par_kv_cache.py [--preset reduced] [--image 128] [--repeats 5]

Times only the causal transformer (the part the cache saves); float32 on the CPU, one
thread. Target: >= 5x at 25 steps. Writes results/par_kv_cache.*.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="reduced", help="PAR scale preset for the model size")
    p.add_argument("--image", type=int, default=128, help="frame size (sets frame tokens per step)")
    p.add_argument("--contexts", type=int, nargs="+", default=[5, 10, 25])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    from harness.adapter import resolve_config
    from methods.par import PARAdapter
    from methods.par.model import PARModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = resolve_config(PARAdapter, args.preset, None, dict(image_size=(args.image, args.image)))
    model = PARModel(cfg, 8, frozen=None).eval()
    d, ko, L = cfg.width, cfg.frame_tokens, cfg.action_chunk_len
    rows = []
    with torch.no_grad():
        for n in args.contexts:
            text = torch.randn(1, cfg.text_tokens, d)
            frames = torch.randn(1, n, ko, d)
            actions = torch.randn(1, n, L, d)
            full, cached = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                f_full, a_full = model.run_temporal(text, frames, actions)
                full.append(time.perf_counter() - start)
                caches = model.start_context(text)
                for s in range(n - 1):
                    model.extend_context(caches, s, frames[:, s], actions[:, s])
                start = time.perf_counter()
                f_new, a_new = model.extend_context(caches, n - 1, frames[:, -1], actions[:, -1])
                cached.append(time.perf_counter() - start)
            diff = max(float((f_new - f_full[:, -1]).abs().max()), float((a_new - a_full[:, -1]).abs().max()))
            rows.append({"context_steps": n, "tokens": cfg.text_tokens + n * (ko + L),
                         "full_ms": 1000 * statistics.median(full), "cached_ms": 1000 * statistics.median(cached),
                         "speedup": statistics.median(full) / statistics.median(cached), "max_abs_diff": diff})
    lines = [f"# PAR KV-cache vs full recompute ({args.preset} preset: width {d}, {cfg.temporal_depth} "
             f"temporal blocks; {ko} frame + {L} action tokens per step; CPU, 1 thread, float32)", "",
             "| context steps | tokens | full recompute ms | KV-cache ms | speedup | max abs diff |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['context_steps']} | {r['tokens']} | {r['full_ms']:.1f} | {r['cached_ms']:.1f} | "
              f"{r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |" for r in rows]
    write_result("par_kv_cache", {"command": "benchmarks/par_kv_cache.py " + " ".join(argv or sys.argv[1:]),
                                  "rows": rows, "preset": args.preset, "image": args.image}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
