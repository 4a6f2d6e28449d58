"""Figures drawn from rollouts: the predicted frames next to the executed ones (paper Fig. 4).

A method that predicts the future while it acts (PAR; ``Adapter.predicts_frames``) fills
``predicted_frames`` when ``record_predictions`` is set (the adapter API: one ``(3, H, W)``
tensor in [0, 1] per ``act`` call, the frame it expects once the returned action chunk has
been executed). One rollout under the evaluation protocol's seeding gives the raw material
of Fig. 4: for each ``act`` call at env step ``s`` returning ``k`` actions, the predicted
frame is paired with the frame the simulator rendered at step ``s + k``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

log = logging.getLogger(__name__)


class FigureError(HarnessError, ValueError):
    """A figure that cannot be drawn from this run or rollout; the message says why."""


class _CallRecorder:
    """Passes every call through to the adapter and remembers when ``act`` was called."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.calls: list[tuple[int, int]] = []  # (env step of the call, actions returned)

    def reset(self):
        self.calls = []
        self.adapter.reset()

    def act(self, observation):
        chunk = self.adapter.act(observation)
        self.calls.append((int(observation["step"]), chunk.reshape(-1, chunk.shape[-1]).shape[0]))
        return chunk

    def observe(self, observation):
        self.adapter.observe(observation)


def recorded_rollout(run_dir: str | Path, policy_seed: int, init_state_seed: int, max_episode_steps: int,
                     predictions: bool = False, attention: bool = False) -> tuple[dict, object, list, dict]:
    """One rollout of ``run_dir`` under the protocol's seeding with its frames recorded, and
    the adapter's predicted frames (``record_predictions``) or attention maps
    (``record_attention``, PAR) when asked. Returns (result, adapter, calls, run_config):
    ``calls`` holds (env step, actions returned) per ``act`` call."""
    from harness.dataset import DemoDataset
    from harness.evaluate import open_rollout, run_rollout, task_info_of
    from harness.runs import read_run_config

    run_config = read_run_config(run_dir)
    task_info = task_info_of(DemoDataset(run_config["dataset"]).meta)
    adapter, env, observe, actions = open_rollout(run_dir, task_info, max_episode_steps)
    recorder = _CallRecorder(adapter)
    name = run_config.get("name") or run_config["method"]
    try:
        if predictions and not adapter.predicts_frames():
            raise FigureError(f"{run_dir}: method {name!r} does not predict frames (Adapter.predicts_frames); "
                              "PAR does")
        if attention and not hasattr(adapter, "attention_maps"):
            raise FigureError(f"{run_dir}: method {name!r} records no attention maps (record_attention); "
                              "PAR does")
        adapter.record_predictions = predictions
        if attention:
            adapter.record_attention = True
        result = run_rollout(env, recorder, observe, actions, max_episode_steps, policy_seed,
                             init_state_seed, record=True)
    finally:
        env.close()
    result.update(task=task_info["task"], method=run_config["method"], policy_seed=policy_seed,
                  init_state_seed=init_state_seed)
    return result, adapter, recorder.calls, run_config


def predicted_vs_executed(run_dir: str | Path, policy_seed: int, init_state_seed: int,
                          max_episode_steps: int) -> dict:
    """Roll out ``run_dir`` once and pair each predicted frame with the executed one.

    Returns ``{"pairs", "success", "success_step", "episode_len", "task", "method"}``; each
    pair is a dict of ``step`` (the env step of the ``act`` call), ``target`` (the step the
    prediction is of), and HxWx3 uint8 images ``predicted``, ``executed`` (at ``target``)
    and ``source`` (at ``step``, what the method saw). Predictions whose target lies beyond
    the episode's end (it stopped at success or at the cap) are left out.
    """
    result, adapter, calls, _ = recorded_rollout(run_dir, policy_seed, init_state_seed, max_episode_steps,
                                                 predictions=True)
    executed = result["frames"]  # frames[i]: the observation at env step i
    pairs = []
    for (step, length), predicted in zip(calls, adapter.predicted_frames):
        target = step + length
        if target >= len(executed):
            continue
        image = (predicted.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        pairs.append({"step": step, "target": target, "predicted": image,
                      "executed": executed[target], "source": executed[step]})
    return {"pairs": pairs, **{k: result[k] for k in ("success", "success_step", "episode_len", "task", "method",
                                                       "policy_seed", "init_state_seed")}}


def _outcome(result: dict) -> str:
    return (f"success at step {result['success_step']}" if result["success"] else
            f"no success in {result['episode_len']} steps")


def _save_figure(fig, out_png: str | Path) -> Path:
    """Lay out, write (150 dpi, creating the folder) and close ``fig``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return out_png


def spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices evenly spread over ``range(n)``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int)) if n else np.zeros(0, dtype=int)


def draw_pairs(ax_at, pairs: list[dict], picks) -> None:
    """Predicted frames above executed ones, one column per picked pair; ``ax_at(row, col)``
    gives the axes to draw in."""
    for col, i in enumerate(picks):
        for row, key in enumerate(("predicted", "executed")):
            ax = ax_at(row, col)
            ax.imshow(pairs[i][key])
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(key)
            if row == 1:
                ax.set_xlabel(f"step {pairs[i]['target']}")


def save_prediction_figure(result: dict, out_png: str | Path, max_columns: int = 8) -> Path:
    """Two rows, predicted above executed, at evenly spread steps of the rollout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["pairs"]
    if not pairs:
        raise FigureError("the rollout ended before any predicted frame could be compared "
                         "(raise the episode cap)")
    picks = spread(len(pairs), max_columns)
    fig, axes = plt.subplots(2, len(picks), figsize=(1.6 * len(picks), 3.6), squeeze=False)
    draw_pairs(lambda row, col: axes[row, col], pairs, picks)
    fig.suptitle(f"{result['method']} on {result['task']}: {_outcome(result)}")
    return _save_figure(fig, out_png)


def save_prediction_arrays(result: dict, out_npz: str | Path) -> Path:
    """Every pair as arrays (step, target, predicted, executed, source), for one's own
    figure or metric."""
    pairs = result["pairs"]
    np.savez_compressed(out_npz, **{key: np.stack([p[key] for p in pairs])
                                    for key in ("step", "target", "predicted", "executed", "source")})
    return Path(out_npz)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 HxWx3 image resized (antialiased bilinear) to ``size`` = (H, W)."""
    import torch
    import torch.nn.functional as F

    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images of the same shape."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def prediction_figure(run_dir: str | Path, policy_seed: int, init_state_seed: int,
                      max_episode_steps: int, out_png: str | Path) -> dict:
    """One rollout -> ``out_png`` (the figure), ``.npz`` (the frames) and ``.json`` (summary).

    The summary gives each prediction's PSNR against the executed frame, both at the
    prediction's resolution, and the floor a useful prediction has to beat: the PSNR of
    repeating the frame the method saw when it predicted (as if nothing moved).
    """
    from harness.provenance import git_sha, package_versions

    result = predicted_vs_executed(run_dir, policy_seed, init_state_seed, max_episode_steps)
    out_png = Path(out_png)
    save_prediction_figure(result, out_png)
    save_prediction_arrays(result, out_png.with_suffix(".npz"))
    predicted, repeat = [], []
    for p in result["pairs"]:
        size = p["predicted"].shape[:2]
        target = resize(p["executed"], size)
        predicted.append(psnr(p["predicted"], target))
        repeat.append(psnr(resize(p["source"], size), target))
    summary = {
        "run_dir": str(run_dir), "method": result["method"], "task": result["task"],
        "policy_seed": policy_seed, "init_state_seed": init_state_seed,
        "max_episode_steps": max_episode_steps, "success": result["success"],
        "success_step": result["success_step"], "episode_len": result["episode_len"],
        "targets": [p["target"] for p in result["pairs"]],
        "psnr_predicted_db": [round(v, 2) for v in predicted],
        "psnr_repeat_last_db": [round(v, 2) for v in repeat],
        "mean_psnr_predicted_db": round(float(np.mean(predicted)), 2),
        "mean_psnr_repeat_last_db": round(float(np.mean(repeat)), 2),
        "git_sha": git_sha(), "versions": package_versions(),
    }
    out_png.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    log.info("%s on %s: %d predicted frames, mean PSNR %.2f dB (repeating the last frame: %.2f dB) -> %s",
             result["method"], result["task"], len(predicted), summary["mean_psnr_predicted_db"],
             summary["mean_psnr_repeat_last_db"], out_png)
    return summary


# --------------------------------------------------------------------------- Fig. 5: attention
def key_groups(m: dict) -> list[tuple[str, slice]]:
    """The keys of one recorded call, named: the instruction, NOVA's begin-of-video slot (PAR
    with the video mixer), then per physical step in the context its frame (O) and action (A)
    tokens, the current step n last."""
    groups = [("text", slice(0, m["num_text"]))]
    bos = m.get("bos_tokens", 0)
    if bos:
        groups.append(("BOS", slice(m["num_text"], m["num_text"] + bos)))
    step = m["frame_tokens"] + m["action_tokens"]
    for i in range(m["steps"]):
        lag = m["steps"] - 1 - i
        label = "n" if lag == 0 else f"n-{lag}"
        lo = m["num_text"] + bos + i * step
        groups += [(f"O_{label}", slice(lo, lo + m["frame_tokens"])),
                   (f"A_{label}", slice(lo + m["frame_tokens"], lo + step))]
    return groups


def token_attention(m: dict) -> tuple[np.ndarray, list[str]]:
    """(layers, heads, groups): each head's attention mass on each key group, averaged over the
    call's action queries."""
    w = m["weights"].numpy()  # (layers, heads, L, keys)
    groups = key_groups(m)
    mass = np.stack([w[..., sl].sum(-1).mean(-1) for _, sl in groups], axis=-1)
    return mass, [name for name, _ in groups]


def pixel_attention(m: dict) -> np.ndarray:
    """(rows, cols): the action queries' attention over the current frame's patches, averaged
    over layers, heads and queries, renormalised to sum to 1 over the patches."""
    _, sl = key_groups(m)[-2]  # O_n
    grid = m["weights"][..., sl].mean(dim=(0, 1, 2)).numpy()
    return (grid / max(grid.sum(), 1e-12)).reshape(m["grid"])


def attention_figure(run_dir: str | Path, policy_seed: int, init_state_seed: int, max_episode_steps: int,
                     out_png: str | Path, panels: int = 4) -> dict:
    """Paper Fig. 5 from one rollout's own forward passes (not a teacher-forced pass).

    Top: token level, for the last call whose context is full (else the last call): per head
    of the last layer, and averaged over all layers and heads, how the predicted action tokens
    split their attention between the instruction and each step's frame and action tokens.
    Bottom: pixel level, at ``panels`` calls spread over the rollout: the action tokens'
    attention over the current frame's patches, over the frame the model saw. Writes the PNG,
    an ``.npz`` of every call's maps and a ``.json`` summary.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from harness.provenance import git_sha, package_versions

    result, adapter, calls, _ = recorded_rollout(run_dir, policy_seed, init_state_seed, max_episode_steps,
                                                 attention=True)
    maps = adapter.attention_maps
    if not maps:
        raise FigureError(f"{run_dir}: the rollout made no act call")
    full = [i for i, m in enumerate(maps) if m["steps"] == max(x["steps"] for x in maps)]
    chosen = full[-1]
    mass, names = token_attention(maps[chosen])
    heads = mass[-1]  # the last layer's heads
    table = np.concatenate([heads, mass.mean(axis=(0, 1))[None]], axis=0)
    rows = [f"head {h}" for h in range(heads.shape[0])] + ["all layers, heads"]
    picks = spread(len(maps), panels)

    sns.set_theme(style="white", context="paper")
    fig = plt.figure(figsize=(max(7, 0.75 * len(names) + 2), 3.2 + 0.22 * len(rows)))
    grid = fig.add_gridspec(2, len(picks), height_ratios=[0.3 * len(rows) + 0.8, 2.6])
    ax = fig.add_subplot(grid[0, :])
    sns.heatmap(table, ax=ax, cmap="Greys", vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=names, yticklabels=rows, cbar_kws={"label": "attention mass"})
    step = calls[chosen][0]
    ax.set_title(f"token level: the action tokens A_n of the call at env step {step}\n"
                 f"(last layer's heads; keys: instruction, then each step's frame O and actions A)", fontsize=9)
    for col, i in enumerate(picks):
        ax = fig.add_subplot(grid[1, col])
        frame = result["frames"][calls[i][0]]
        patches = pixel_attention(maps[i])
        heat = resize_map(patches, frame.shape[:2])
        heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)  # stretched to [0, 1]
        overlay = matplotlib.colormaps["inferno"](heat)
        overlay[..., 3] = 0.8 * heat  # opaque where attention is, the frame clear elsewhere
        ax.imshow(frame)
        ax.imshow(overlay)
        peak = float(patches.max()) * patches.size  # 1.0: no patch above a uniform share
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"env step {calls[i][0]}\n(peak {peak:.1f}x uniform)", fontsize=8)
        if col == 0:
            ax.set_ylabel("pixel level:\nattention on O_n")
    fig.suptitle(f"{result['method']} on {result['task']} (policy seed {policy_seed}, init state "
                 f"{init_state_seed}): {_outcome(result)}")
    out_png = _save_figure(fig, out_png)
    np.savez_compressed(out_png.with_suffix(".npz"),
                        steps=np.array([c[0] for c in calls[:len(maps)]]),
                        pixel=np.stack([pixel_attention(m) for m in maps]),
                        **{f"call{i}": m["weights"].numpy().astype(np.float16) for i, m in enumerate(maps)})
    summary = {"run_dir": str(run_dir), "method": result["method"], "task": result["task"],
               "policy_seed": policy_seed, "init_state_seed": init_state_seed,
               "max_episode_steps": max_episode_steps, "success": result["success"],
               "success_step": result["success_step"], "episode_len": result["episode_len"],
               "calls": len(maps), "token_level_call_step": step, "key_groups": names,
               "token_level_last_layer": np.round(heads, 4).tolist(),
               "token_level_mean": np.round(mass.mean(axis=(0, 1)), 4).tolist(),
               "pixel_level_steps": [int(calls[i][0]) for i in picks],
               "git_sha": git_sha(), "versions": package_versions()}
    out_png.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (rows, cols) float map upsampled bilinearly to ``size`` = (H, W)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------- Fig. 6: a failure
def first_failure(rollouts_csv: str | Path) -> tuple[int, int] | None:
    """The rule that picks Fig. 6's rollout: the first failed (policy seed, init state) in the
    protocol's order (policy seed, then init state: harness.protocol.Protocol.jobs)."""
    from harness.rollouts import read_rollouts

    rows = read_rollouts(rollouts_csv, ("policy_seed", "init_state_seed", "success"), dtype=None)
    rows = rows.sort_values(["policy_seed", "init_state_seed"])
    failed = rows[rows["success"].astype(int) == 0]
    if failed.empty:
        return None
    first = failed.iloc[0]
    return int(first["policy_seed"]), int(first["init_state_seed"])


def failure_figure(run_dir: str | Path, rollouts_csv: str | Path, max_episode_steps: int,
                   out_png: str | Path, columns: int = 8, last: int = 3) -> dict:
    """Paper Fig. 6: the first failed rollout of an evaluation (``first_failure``) played again,
    its predicted frames above the executed ones across the episode, and its last ``last``
    predictions enlarged beside what happened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.provenance import git_sha

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    picked = first_failure(rollouts_csv)
    summary = {"run_dir": str(run_dir), "rollouts": str(rollouts_csv),
               "rule": "the first failed (policy seed, init state) in the protocol's order", "git_sha": git_sha()}
    if picked is None:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no failed rollout in {rollouts_csv}: nothing to show", ha="center", va="center")
        _save_figure(fig, out_png)
        out_png.with_suffix(".json").write_text(json.dumps({**summary, "failure": None}, indent=2))
        return summary
    result = predicted_vs_executed(run_dir, *picked, max_episode_steps)
    pairs = result["pairs"]
    if not pairs:
        raise FigureError("the failed rollout ended before any predicted frame could be compared")
    picks = spread(len(pairs), columns)
    tail = list(range(max(0, len(pairs) - last), len(pairs)))
    fig = plt.figure(figsize=(1.7 * len(picks), 3.6 + 2.9))
    grid = fig.add_gridspec(3, 1, height_ratios=[1, 1, 1.9])
    top = grid[0:2].subgridspec(2, len(picks))
    draw_pairs(lambda row, col: fig.add_subplot(top[row, col]), pairs, picks)
    bottom = grid[2].subgridspec(1, 2 * len(tail))
    for j, i in enumerate(tail):
        for k, key in enumerate(("predicted", "executed")):
            ax = fig.add_subplot(bottom[0, 2 * j + k])
            ax.imshow(pairs[i][key])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{key}, step {pairs[i]['target']}", fontsize=8)
    fig.suptitle(f"{result['method']} on {result['task']}: a failure (policy seed {picked[0]}, init state "
                 f"{picked[1]}; {result['episode_len']} steps); the last steps enlarged below")
    _save_figure(fig, out_png)
    summary.update(failure={"policy_seed": picked[0], "init_state_seed": picked[1]},
                   success_on_replay=result["success"], episode_len=result["episode_len"],
                   targets=[p["target"] for p in pairs], enlarged=[pairs[i]["target"] for i in tail])
    out_png.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- Fig. 4: every task
def _frames_npz(path) -> dict:
    """A ``predicted-frames`` .npz, refused by name (with the command that makes it) when it is
    missing, damaged or lacks the frames."""
    remedy = (f"Make it with `python -m harness predicted-frames --run <PAR run of {Path(path).stem}> --task "
              f"{Path(path).stem} --out {Path(path).with_suffix('.png')}`, or in the workflow `snakemake --cores 1 "
              f"{path} --config scale=<scale>`")
    if not Path(path).is_file():
        raise FigureError(f"{path} does not exist. {remedy}")
    try:
        with np.load(path) as data:
            return {key: data[key] for key in ("predicted", "executed", "target")}
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise FigureError(f"{path} is not the frames of a predicted-frames run ({type(exc).__name__}: {exc}). "
                          f"{remedy}") from None


def fig4_all_tasks(npz_files: list[str | Path], out_png: str | Path, columns: int = 6) -> Path:
    """Paper Fig. 4 as the paper shows it: for each task (one ``predicted-frames`` .npz each),
    predicted frames above executed ones at evenly spread steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import TASK_ORDER

    order = {task: i for i, task in enumerate(TASK_ORDER)}
    npz_files = sorted(npz_files, key=lambda p: order.get(Path(p).stem, len(order)))
    arrays = [_frames_npz(path) for path in npz_files]
    columns = max(1, min(columns, max(len(a["target"]) for a in arrays)))
    fig, axes = plt.subplots(2 * len(npz_files), columns, figsize=(1.6 * columns + 0.6, 3.3 * len(npz_files)),
                             squeeze=False)
    for t, (path, data) in enumerate(zip(npz_files, arrays)):
        pairs = [{key: data[key][j] for key in ("predicted", "executed", "target")} for j in range(len(data["target"]))]
        picks = spread(len(pairs), columns)
        draw_pairs(lambda row, col: axes[2 * t + row, col], pairs, picks)
        axes[2 * t, 0].set_ylabel(f"{Path(path).stem}\npredicted")
        for row in (0, 1):
            for col in range(len(picks), columns):
                axes[2 * t + row, col].axis("off")
    fig.suptitle("PAR per task: predicted frames\nabove executed ones" if columns < 4 else
                 "PAR per task: predicted frames above executed ones")
    return _save_figure(fig, out_png)
