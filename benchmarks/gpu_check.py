"""The GPU check for the paper scale: what one training step of PAR, RDT and ICRT at their paper
presets costs on one GPU, against what `harness memory` projects, and PAR's rollout latency.

    .venv/bin/python benchmarks/gpu_check.py                 # one GPU, the paper presets, bf16
    .venv/bin/python benchmarks/gpu_check.py --cpu --out-dir /tmp/g   # tiny (smoke presets), CPU

Per method, at its paper preset with random weights of the pretrained shapes
(``Adapter.without_pretrained``: no weight files needed), on real training batches cut from a
synthetic dataset at the paper image size (frames through the method's feature cache where it
has one, as training reads them):

- ``harness.memory.project`` at the batch measured: the projected peak (and with the GPU
  overhead ``harness memory`` adds before judging a card);
- training steps as ``harness/train.py`` runs them (its ``make_optimizer``, ``accumulate_gradients``
  over ``micro_batches`` and ``optimizer_step``: AdamW over ``optim_groups``, gradient clipping;
  bf16 autocast on a GPU, the preset's gradient checkpointing): the first step (allocations, kernel choice) and
  the mean of the next ``--steps``, samples/s, and the peak memory: ``torch.cuda.max_memory_allocated``
  on a GPU, the process's peak RSS on a CPU (not comparable with the projection there);
  measured / projected is the ratio the paper scale's memory requests rest on;
- at the preset's batch (PAR 8, as the paper; RDT and ICRT as their sources), or, where that runs
  out of memory, the largest power-of-two batch below it that fits, said so in the row;
- PAR only: ``act`` calls as a rollout makes them (the KV-cache of ``rollout_context``), the first
  call and the mean of the next ``--rollout-calls``.

The GPU machine lent to a task runs its own torch and transformers; the project needs beyond
them what ``pyproject.toml`` lists (diffusers, h5py, safetensors, timm, ...): carry those wheels.
The CPU mode runs in the tests (``tests/test_gpu_check.py``) so the script cannot rot; its
numbers are not the point. Writes ``<out-dir>/gpu_check[_cpu].{json,md}`` (default
``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402,F401
from common import RESULTS, write_result  # noqa: E402

METHODS = ("par", "rdt", "icrt")
GIB = 2**30


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def train_steps(adapter_cls, cfg, data, dataset, batch_size, device, bf16: bool, steps: int) -> dict:
    """``steps`` + 1 optimizer steps at ``batch_size``; the first timed apart."""
    import torch

    from harness.memory import _batch
    from harness.train import accumulate_gradients, make_optimizer, micro_batches, optimizer_step

    torch.manual_seed(0)
    adapter = adapter_cls(cfg, data).to(device).train()
    optimizer = make_optimizer(adapter, cfg)
    # prepared on the host and moved a micro-batch at a time, as training keeps one on the device
    batch = _batch(adapter_cls, cfg, dataset, data, batch_size, torch.device("cpu"))
    times, loss = [], None

    def to_device(part):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in part.items()}

    try:
        for _ in range(steps + 1):
            _sync(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, _, _ = accumulate_gradients(adapter, micro_batches(batch, cfg.grad_accum_steps), to_device,
                                              device.type, bf16)
            optimizer_step(adapter, optimizer, cfg)
            _sync(device)
            times.append(time.perf_counter() - start)
        later = times[1:] or times
        mean = sum(later) / len(later)
        return {"batch_size": batch_size, "first_step_seconds": round(times[0], 3),
                "step_seconds": round(mean, 4), "samples_per_second": round(batch_size / mean, 2),
                "peak_bytes": _peak_bytes(device), "loss": loss}
    finally:  # nothing of this batch size may stay alive into a retry at a smaller one
        del adapter, optimizer, batch, loss
        if device.type == "cuda":
            torch.cuda.empty_cache()


def rollout_latency(adapter_cls, cfg, data, device, calls: int) -> dict:
    """PAR's ``act`` as a rollout calls it: once per chunk, ``observe`` on the chunk's other steps."""
    import torch

    torch.manual_seed(0)
    adapter = adapter_cls(cfg, data).to(device).eval()
    g = torch.Generator().manual_seed(0)

    def obs(step):
        return {"frame": torch.rand(3, *data.image_size, generator=g).to(device),
                "qpos": torch.randn(data.qpos_dim, generator=g).to(device),
                "instruction": data.instruction, "step": step}

    adapter.reset()
    times, step = [], 0
    with torch.no_grad():
        for _ in range(calls + 1):
            _sync(device)
            start = time.perf_counter()
            chunk = adapter.act(obs(step))
            _sync(device)
            times.append(time.perf_counter() - start)
            length = chunk.reshape(-1, chunk.shape[-1]).shape[0]
            for i in range(1, length):
                adapter.observe(obs(step + i))
            step += length
    later = times[1:] or times
    return {"rollout_context": getattr(cfg, "rollout_context", None), "calls": len(times),
            "first_call_seconds": round(times[0], 3), "call_seconds": round(sum(later) / len(later), 4)}


def check_method(name: str, scale: str, device, bf16: bool, steps: int, calls: int, batch_size: int | None,
                 progress=print) -> dict:
    import torch

    from harness.adapter import DataInfo
    from harness.config import load_config
    from harness.dataset import DemoDataset
    from harness.memory import project, synthetic_dataset

    cfg = load_config(scale)
    entry, adapter_cls, method_cfg = cfg.method(name)
    method_cfg = adapter_cls.without_pretrained(method_cfg)
    image_size = tuple(cfg.task("PushCube").image_size)
    row = {"method": name, "scale": scale, "image_size": list(image_size), "precision": "bf16 autocast" if bf16 else
           "float32", "gradient_checkpointing": getattr(method_cfg, "gradient_checkpointing", None),
           "preset_batch_size": method_cfg.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = DemoDataset(synthetic_dataset(Path(tmp) / "synthetic.h5", image_size))
        data = DataInfo(8, 9, image_size, dataset.instruction, dataset.stats)
        batch = batch_size or method_cfg.batch_size
        while "training" not in row:
            # the preset's gradient accumulation, as far as the batch tried divides into it
            step_cfg = method_cfg.replace(batch_size=batch, grad_accum_steps=math.gcd(batch, method_cfg.grad_accum_steps))
            progress(f"{name}: training steps at batch {batch} ({step_cfg.grad_accum_steps} micro-batches) on {device}")
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after a failed try, once its frames are gone
                torch.cuda.reset_peak_memory_stats(device)
            try:
                row["training"] = train_steps(adapter_cls, step_cfg, data, dataset, batch, device, bf16, steps)
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                row.setdefault("out_of_memory_at", []).append(batch)
                batch //= 2
        row["training"]["micro_batch_size"] = batch // step_cfg.grad_accum_steps
        progress(f"{name}: projecting its memory at batch {batch}")
        projection = project(adapter_cls, step_cfg, image_size=image_size, device=device, bf16=bf16,
                             batch_size=batch, progress=lambda *_: None)
        row["projected_peak_gib"] = projection["projected_peak_gib"]
        row["projected_with_gpu_overhead_gib"] = projection["with_gpu_overhead_gib"]
        row["measured_peak_gib"] = round(row["training"]["peak_bytes"] / GIB, 3)
        # a CPU's peak RSS holds the interpreter and every library: no ratio there
        row["measured_over_projected"] = (round(row["training"]["peak_bytes"] / projection["projected_peak_bytes"], 3)
                                          if device.type == "cuda" else None)
        if name == "par":
            progress(f"{name}: {calls + 1} rollout calls")
            row["rollout"] = rollout_latency(adapter_cls, method_cfg, data, device, calls)
        dataset.close()
    return row


def markdown(rows: list[dict], device_name: str, cpu: bool, failed: dict | None = None) -> str:
    lines = [f"# GPU check: one training step at the paper presets{' (CPU mode: smoke presets)' if cpu else ''}", "",
             f"Device: {device_name}.", "",
             "| method | batch | precision | checkpointing | first step s | step s | samples/s | peak GiB (measured) "
             "| projected GiB | measured / projected |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["training"]
        oom = f" (OOM at {', '.join(map(str, r['out_of_memory_at']))})" if r.get("out_of_memory_at") else ""
        micro = t.get("micro_batch_size", t["batch_size"])
        accum = f" ({t['batch_size'] // micro} x {micro})" if micro != t["batch_size"] else ""
        lines.append(f"| {r['method']} | {t['batch_size']}{accum}{oom} | {r['precision']} | "
                     f"{r['gradient_checkpointing'] if r['gradient_checkpointing'] is not None else '-'} | "
                     f"{t['first_step_seconds']} | {t['step_seconds']} | {t['samples_per_second']} | "
                     f"{r['measured_peak_gib']} | {r['projected_peak_gib']} | {r['measured_over_projected'] or '-'} |")
    for r in rows:
        if "rollout" in r:
            ro = r["rollout"]
            lines += ["", f"{r['method']} rollout (`rollout_context: {ro['rollout_context']}`): first `act` "
                          f"{ro['first_call_seconds']} s, then {ro['call_seconds']} s per call ({ro['calls']} calls)."]
    for method, error in (failed or {}).items():
        lines += ["", f"{method}: FAILED ({error})."]
    if cpu:
        lines += ["", "CPU mode: the peak is the process's peak RSS, not comparable with the projection; it checks "
                      "the script, not the paper scale."]
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="the tiny CPU mode: smoke presets, float32")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps after the first")
    p.add_argument("--rollout-calls", type=int, default=8, help="timed PAR act calls after the first")
    p.add_argument("--batch-size", type=int, default=None, help="default: each preset's")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.cpu:
        device, scale, bf16, name = torch.device("cpu"), "smoke", False, "gpu_check_cpu"
        device_name = "CPU"
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device: this check needs one GPU (run with --cpu for the tiny CPU mode)")
        device, scale, bf16, name = torch.device("cuda"), "paper", True, "gpu_check"
        device_name = torch.cuda.get_device_name(device)
    start, rows, failed = time.perf_counter(), [], {}
    for method in args.methods:
        try:
            rows.append(check_method(method, scale, device, bf16, args.steps, args.rollout_calls, args.batch_size))
        except Exception as e:  # the other methods are still measured; the failure is recorded
            traceback.print_exc()
            failed[method] = f"{type(e).__name__}: {e}"
        # written after each method: a lent GPU's time is short, what was measured is kept
        result = {"device": device_name, "scale": scale, "rows": rows, "failed": failed,
                  "wall_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__}
        write_result(name, result, markdown(rows, device_name, args.cpu, failed), folder=args.out_dir)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
