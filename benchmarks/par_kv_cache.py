"""PAR's KV-cache as rollouts use it: the causal transformer's time per ``act`` call over a
rollout's call pattern, without a cache and with each ``rollout_context`` mode, and how far
the actions move when the cache is reused approximately.

    .venv/bin/python benchmarks/par_kv_cache.py --preset reduced [--run outputs/reduced/runs/par/PushCube \\
        --dataset outputs/reduced/datasets/PushCube.h5]
    .venv/bin/python benchmarks/par_kv_cache.py --preset paper --measured-calls 7

A rollout calls ``act`` once per action chunk: cap / L calls (reduced: 200 / 8 = 25, paper:
400 / 8 = 50); the context holds min(n + 1, context_steps) steps at call n. Per call this times
the part the cache changes, the causal transformer, on random tokens of the preset's shapes:

- ``recompute``: no cache, a teacher-forced pass over the whole context every call;
- ``window`` (the default): the cache grows while the context fills; once full, each call
  re-encodes the kept steps (exact);
- ``reuse``: once full, the oldest step's keys and values are dropped and one step is encoded
  (approximate).

With ``--measured-calls k`` only the first k calls run and the rest take the mean time of the
last two measured ones (from call context_steps + 1 on, every call does the same work).
With ``--run`` and ``--dataset`` it also replays real observations (a demo episode's frame
every L steps, the model's own previous chunk) through a trained run in ``window`` and ``reuse``
mode with the same sampling noise per call, and reports how far the action chunks differ.
CPU, float32. Writes results/par_kv_cache_<preset>.*.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import write_result  # noqa: E402

CAPS = {"reduced": 200, "paper": 400}  # workflows/config/<scale>.yaml evaluation caps (paper: the task's)
MODES = ("recompute", "window", "reuse")


def transformer_call_times(adapter, mode: str, calls: int, measured: int) -> list[float]:
    """Seconds of the causal transformer in each of a rollout's ``act`` calls: the adapter's own
    ``advance`` (``window``, ``reuse``), or a teacher-forced pass over the context (``recompute``)."""
    import torch

    adapter.config = dataclasses.replace(adapter.config, rollout_context="window" if mode == "recompute" else mode)
    adapter.reset()
    model, cfg = adapter.model, adapter.config
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, cfg.text_tokens, cfg.width, generator=g)
    history, times = [], []
    for _ in range(min(calls, measured)):
        f_tok = torch.randn(1, cfg.frame_tokens, cfg.width, generator=g)
        a_tok = torch.randn(1, cfg.action_chunk_len, cfg.width, generator=g)
        start = time.perf_counter()
        if mode == "recompute":
            history = (history + [(f_tok, a_tok)])[-cfg.context_steps:]
            model.run_temporal(text, torch.stack([f for f, _ in history], 1), torch.stack([a for _, a in history], 1))
        else:
            adapter.advance(text, f_tok, a_tok)
        times.append(time.perf_counter() - start)
    steady = statistics.mean(times[-2:])
    return times + [steady] * (calls - len(times))


def action_drift(run: str, dataset: str, episodes: int) -> dict:
    """Replay demo observations through a trained run in window and reuse mode."""
    import numpy as np
    import torch

    from harness.dataset import DemoDataset
    from harness.runs import load_trained, normalizers

    adapter, run_config = load_trained(run)
    norms = normalizers(adapter.data.stats, run_config["normalization"])
    ds = DemoDataset(dataset)
    L = adapter.config.action_chunk_len
    diffs, per_call = [], {}
    for e in range(episodes):
        frames = ds.episode_frames(e)[::L]
        chunks = {}
        for mode in ("window", "reuse"):
            adapter.config = dataclasses.replace(adapter.config, rollout_context=mode)
            adapter.reset()
            chunks[mode] = []
            for n, frame in enumerate(frames):
                obs = {"frame": torch.as_tensor(frame).permute(2, 0, 1).float() / 255,
                       "qpos": torch.zeros(adapter.data.qpos_dim), "instruction": ds.instruction, "step": n * L}
                torch.manual_seed(1000 * e + n)  # the same sampling noise in both modes
                chunks[mode].append(adapter.act(obs))
        for n, (w, r) in enumerate(zip(chunks["window"], chunks["reuse"])):
            d = (norms.actions.unnormalize(w) - norms.actions.unnormalize(r)).abs()
            diffs.append({"episode": e, "call": n, "max_rad": float(d.max()), "mean_rad": float(d.mean()),
                          "max_normalised": float((w - r).abs().max())})
            per_call.setdefault(n, []).append(float(d.mean()))
    ds.close()
    full = adapter.config.context_steps
    after = [d for d in diffs if d["call"] >= full]
    before = [d for d in diffs if d["call"] < full]
    # the spread of the policy itself: window mode under another noise seed, for scale
    return {"episodes": episodes, "calls": len(diffs), "context_steps": full,
            "before_full_max_rad": max(d["max_rad"] for d in before),
            "after_full_mean_rad": float(np.mean([d["mean_rad"] for d in after])) if after else None,
            "after_full_max_rad": max(d["max_rad"] for d in after) if after else None,
            "after_full_max_normalised": max(d["max_normalised"] for d in after) if after else None,
            "mean_rad_by_call": {n: float(np.mean(v)) for n, v in per_call.items()}, "rows": diffs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="reduced", choices=sorted(CAPS))
    p.add_argument("--calls", type=int, default=None, help="act calls per rollout (default: cap / L)")
    p.add_argument("--measured-calls", type=int, default=None, help="default: all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", default=None, help="a trained PAR run for the action drift of reuse")
    p.add_argument("--dataset", default=None, help="demo episodes whose frames the drift replays")
    p.add_argument("--episodes", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    import numpy as np

    from harness.adapter import DataInfo, resolve_config
    from methods.par import PARAdapter

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = PARAdapter.without_pretrained(resolve_config(PARAdapter, args.preset))
    calls = args.calls or CAPS[args.preset] // cfg.action_chunk_len
    measured = args.measured_calls or calls
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max", "q01", "q99")}
             for k, d in (("actions", 8), ("obs_qpos", 9))}
    adapter = PARAdapter(cfg, DataInfo(8, 9, (512, 512), "push the cube", stats)).eval()
    rows = {}
    with torch.no_grad():
        for mode in MODES:
            transformer_call_times(adapter, mode, 2, 2)  # warm-up, not timed
            rows[mode] = transformer_call_times(adapter, mode, calls, measured)
            print(f"{mode}: {sum(rows[mode]):.2f} s over {calls} calls")
    base = sum(rows["recompute"])
    summary = {m: {"total_s": sum(t), "mean_ms": 1000 * sum(t) / calls,
                   "steady_ms": 1000 * statistics.mean(t[cfg.context_steps:]) if calls > cfg.context_steps else None,
                   "speedup_vs_recompute": base / sum(t), "per_call_ms": [1000 * x for x in t]} for m, t in rows.items()}
    drift = action_drift(args.run, args.dataset, args.episodes) if args.run else None
    tokens = cfg.text_tokens + cfg.context_steps * (cfg.frame_tokens + cfg.action_chunk_len)
    lines = [f"# PAR's KV-cache over a rollout's calls ({args.preset} preset)", "",
             f"{calls} `act` calls per rollout (cap {CAPS[args.preset]} / L {cfg.action_chunk_len}); "
             f"context up to {cfg.context_steps} steps ({tokens} tokens: {cfg.text_tokens} text + "
             f"{cfg.context_steps} x ({cfg.frame_tokens} frame + {cfg.action_chunk_len} action)); causal transformer "
             f"of width {cfg.width}, {cfg.temporal_depth} blocks; CPU, {args.threads} threads, float32; "
             "time of the causal transformer per call"
             + (f"; calls {measured + 1}-{calls} take the mean of calls {measured - 1}-{measured}" if measured < calls
                else "") + ".", "",
             "| mode | ms per call, mean over the rollout | ms per call once the context is full | "
             "rollout total s | speedup vs recompute |", "|---|---|---|---|---|"]
    for m in MODES:
        r = summary[m]
        lines.append(f"| {m} | {r['mean_ms']:.1f} | {r['steady_ms']:.1f} | {r['total_s']:.2f} | "
                     f"{r['speedup_vs_recompute']:.2f}x |")
    first = ", ".join(f"{x:.0f}" for x in summary["window"]["per_call_ms"][:cfg.context_steps + 2])
    lines += ["", f"`window`, calls 1-{cfg.context_steps + 2} (ms): {first}: the cache saves work only while "
              "the context fills; `reuse` keeps it saving at the price of an approximation."]
    if drift:
        lines += ["", f"## How far `reuse` moves the actions ({Path(args.run).as_posix()})", "",
                  f"{drift['episodes']} demo episodes of {Path(args.dataset).name} replayed (a frame every "
                  f"{cfg.action_chunk_len} steps, the model's own previous chunk), the same sampling noise per call "
                  f"in both modes; {drift['calls']} calls. Up to call {drift['context_steps']} the modes are the "
                  f"same computation (max |difference| {drift['before_full_max_rad']:.1e} rad). After it:",
                  "", f"- mean |difference| of the joint targets: {drift['after_full_mean_rad']:.4f} rad",
                  f"- max |difference|: {drift['after_full_max_rad']:.4f} rad "
                  f"({drift['after_full_max_normalised']:.3f} in normalised units)"]
    write_result(f"par_kv_cache_{args.preset}", {"command": "benchmarks/par_kv_cache.py " + " ".join(argv or sys.argv[1:]),
                                                 "preset": args.preset, "calls": calls, "measured_calls": measured,
                                                 "modes": summary, "drift": drift}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
