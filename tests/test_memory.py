"""The training-memory projection (``python -m harness memory``): its tensor accounting on a
module whose bytes are known, and the command's output."""

import json
import subprocess
import sys

import pytest
import torch

from harness import memory
from harness.memory import measure_pass


class _MLP(torch.nn.Module):
    """Linear(64, 256) -> GELU -> Linear(256, 64), loss mean(y^2); a frozen 4096-float table."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        self.frozen = torch.nn.Parameter(torch.zeros(4096), requires_grad=False)

    def forward(self, batch):
        return self.net(batch["x"]).pow(2).mean(), {}


def test_a_pass_is_split_into_parameters_gradients_and_activations():
    model = _MLP()
    trainable = sum(p.numel() for p in model.net.parameters()) * 4
    small, large = (measure_pass(model, {"x": torch.randn(b, 64)}, bf16=False) for b in (256, 1024))
    # parameters (the frozen table too); gradients of the trainable ones only
    assert small["fixed"] == large["fixed"] == trainable + 4096 * 4
    assert small["gradients"] == large["gradients"] == trainable
    # what a sample holds for the backward pass: its input (64 floats), pre-GELU and GELU
    # outputs (256 each), the output and its square (64 each): 2816 bytes; backward
    # temporaries add some
    per_sample = (large["activations"] - small["activations"]) / 768
    assert 2816 <= per_sample <= 1.6 * 2816
    assert all(p.grad is None for p in model.parameters())  # the pass leaves no gradients behind


def test_bf16_autocast_halves_what_the_matmuls_keep():
    model = _MLP()
    fp32, bf16 = (measure_pass(model, {"x": torch.randn(1024, 64)}, bf16=b)["activations"] for b in (False, True))
    assert bf16 < 0.8 * fp32


@pytest.mark.parametrize("method, rows", [("act", 1), ("par", 2)])
def test_memory_command_projects_each_method_and_sizes_its_training_job(tmp_path, method, rows):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "memory", "--method", method, "--scale", "smoke",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    projections = json.loads(out.read_text())["projections"]
    assert len(projections) == rows  # PAR: its own gradient_checkpointing level and the other end
    first = projections[0]
    assert first["batch_size"] == 2 and first["precision"] == "float32"  # the smoke config, on a CPU scale
    assert first["projected_peak_bytes"] >= (first["parameter_and_buffer_bytes"] + first["gradient_bytes"]
                                             + first["adamw_state_bytes"])
    assert first["resources"]["mem_mb"] > 0 and "gpu_mem_mb" not in first["resources"]
    assert "projected peak GiB" in proc.stdout and "training job resources" in proc.stdout
    if method == "par":
        assert [p["gradient_checkpointing"] for p in projections] == [3, 0]


def test_a_batch_larger_than_the_synthetic_windows_wraps_round(tmp_path):
    """ICRT's paper batch (64 multi-episode prompts) is larger than the windows three synthetic
    episodes give: the measured batch repeats windows rather than indexing past the end."""
    from harness.adapter import DataInfo
    from harness.config import load_config
    from harness.dataset import DemoDataset
    from harness.memory import _batch, synthetic_dataset
    from harness.windows import training_samples

    cfg = load_config("smoke")
    _, adapter_cls, method_cfg = cfg.method("icrt")
    image_size = tuple(cfg.task("PushCube").image_size)
    dataset = DemoDataset(synthetic_dataset(tmp_path / "synthetic.h5", image_size))
    try:
        windows = len(training_samples(dataset, adapter_cls.window_spec(method_cfg), None))
        data = DataInfo(8, 9, image_size, dataset.instruction, dataset.stats)
        batch = _batch(adapter_cls, method_cfg, dataset, data, windows + 3, torch.device("cpu"))
        assert batch["actions"].shape[0] == windows + 3
    finally:
        dataset.close()


def test_with_gradient_accumulation_the_projection_holds_one_micro_batch(tmp_path):
    """Training prepares and runs one micro-batch at a time (harness/train.py), so the projected
    activations at batch 4 in 2 micro-batches are those of batch 2 in one; an indivisible batch is refused."""
    from harness.config import load_config
    from harness.memory import project

    _, adapter_cls, cfg = load_config("smoke").method("dp")
    whole = project(adapter_cls, cfg.replace(batch_size=2), image_size=(32, 32), device=torch.device("cpu"),
                    bf16=False, progress=lambda *_: None)
    split = project(adapter_cls, cfg.replace(batch_size=4, grad_accum_steps=2), image_size=(32, 32),
                    device=torch.device("cpu"), bf16=False, progress=lambda *_: None)
    assert split["micro_batch_size"] == 2 and split["batch_size"] == 4
    assert split["activation_bytes"] == whole["activation_bytes"]
    with pytest.raises(ValueError, match="batch 3 does not divide into dp's grad_accum_steps 2"):
        project(adapter_cls, cfg.replace(batch_size=4, grad_accum_steps=2), image_size=(32, 32),
                device=torch.device("cpu"), bf16=False, batch_size=3, progress=lambda *_: None)


def test_on_a_cpu_a_gpu_scale_is_measured_and_sized_as_a_cpu_trains(tmp_path):
    """A scale that wants a GPU (the rehearsal's, the paper's) measured on a CPU: training there
    runs in float32 (harness/train.py), and bf16 autocast on a CPU without native bf16 ran ~80x
    slower than float32 (PAR's paper-preset memory job passed 45 min in the rehearsal)."""
    import yaml

    from harness.paths import REPO_ROOT

    cfg = yaml.safe_load((REPO_ROOT / "workflows" / "config" / "smoke.yaml").read_text())
    cfg["compute"] = dict(cfg.get("compute") or {}, wants_gpu=True)
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "memory", "--method", "act", "--config-file",
                           str(tmp_path / "gpu.yaml"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(out.read_text())["projections"][0]
    assert first["precision"] == "float32" and first["measured_on"] == "cpu"
    # and the job, which trains on this CPU, asks for all of it in host memory (the rehearsal's
    # ICRT memory job projected 8.4 GiB; sized as for a GPU its training job asked for 5454 MB)
    assert "gpu_mem_mb" not in first["resources"]
    assert first["resources"]["mem_mb"] * 2**20 >= first["projected_peak_bytes"]


def test_a_cpu_training_job_asks_for_what_the_rehearsal_measured():
    """The fourth rehearsal's ICRT training at its paper shapes on the CPU peaked at 10,665 MB
    RSS with 8.44 GiB of tensors projected (benchmarks/results/rehearsal.md); sized with the GPU
    overhead's 1 GiB, its job asked for 10,535 MB and would have been killed under that limit."""
    gib = memory.GIB
    icrt = {"parameter_and_buffer_bytes": 0.66 * gib, "projected_peak_bytes": 8.44 * gib,
            "with_gpu_overhead_gib": 10.29}
    assert memory.resources(icrt, wants_gpu=False)["mem_mb"] >= 10_665
    # on a GPU the tensors are on the card: the host holds the model and the process
    on_gpu = memory.resources(icrt, wants_gpu=True)
    assert on_gpu["gpu_mem_mb"] >= 10.29 * 1024 and on_gpu["mem_mb"] < 10_665
