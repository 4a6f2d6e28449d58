"""PAR's paper configuration loads NOVA-0.6B tensor by tensor.

The stand-in checkpoint has exactly the names and shapes of NOVA's osp480 transformer
(tests/data/nova_osp480_transformer_state_dict.json: 643 tensors, dumped from
baaivision/NOVA@2cd254a's own NOVATransformer3DModel; a copy of ../shared/nova/), with seeded
random values. It is loaded through the adapter, as a user's run loads it, into the paper
configuration (every NOVA-shaped module at its paper size; only the image is smaller, which
changes no tensor shape, so a forward pass is cheap). That NOVA's code computes the same
functions is checked by benchmarks/par_nova_parity.py, which needs NOVA's checkout.
"""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from methods.par import PAPER_PARAMETER_COUNTS_M, PARAdapter
from methods.par.weights import NOVA_TO_PAR, NOVA_UNUSED

MANIFEST = json.loads((Path(__file__).parent / "data" / "nova_osp480_transformer_state_dict.json").read_text())
NOVA_SHAPES = {name: tuple(shape) for name, shape in MANIFEST["tensors"].items()}
STATS = {key: {s: np.zeros(dim) if s == "mean" else np.ones(dim) for s in ("mean", "std", "min", "max", "q01", "q99")}
         for key, dim in (("actions", 8), ("obs_qpos", 9))}
DATA = DataInfo(8, 9, (32, 32), "push", STATS)
VAE_STANDIN = Path(__file__).parent / "data" / "nova_opensora_vae_tiny"  # NOVA's VAE format, stride 4
# Phi-2's hidden size (2560, transformers' PhiConfig of microsoft/phi-2) with one small layer
PHI_2560 = dict(vocab_size=256, hidden_size=2560, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=32, max_position_embeddings=64)
# the paper configuration; only sizes that shape no tensor are small: 32x32 frames through the
# stand-in VAE (stride 4: 8x8 latents, 2x2 frame tokens, 4x4 spatial tokens) and 16 text
# positions ("push" fills 4, NOVA's padding table the rest)
PAPER_SMALL_IMAGE = dict(image_size=(32, 32), vae_stride=4, text_tokens=16, random_init_phi=PHI_2560, phi_path=None)


def _write_standin(folder: Path, shapes: dict, seed: int = 0) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    # N(0, 0.02): NOVA's own init scale, so activations stay in range through 48 blocks
    tensors = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in shapes.items()}
    (folder / "transformer").mkdir(parents=True)
    save_file(tensors, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # what NOVA's vae/ holds
        shutil.copy(VAE_STANDIN / name, folder / "vae" / name)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "_noise_class_name": "FlowMatchEulerDiscreteScheduler",
         "num_train_timesteps": 1000, "shift": 1.0}))


@pytest.fixture(scope="module")
def nova(tmp_path_factory):
    """(folder, adapter): the 643-tensor stand-in and the paper-config PAR that loaded it."""
    folder = tmp_path_factory.mktemp("nova")
    _write_standin(folder, NOVA_SHAPES)
    torch.manual_seed(0)
    cfg = resolve_config(PARAdapter, None, None, dict(PAPER_SMALL_IMAGE, nova_path=str(folder)))
    return folder, PARAdapter(cfg, DATA)


def _nova_tensor(folder, name):
    from safetensors import safe_open

    with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        return f.get_tensor(name)


def test_every_nova_tensor_lands_or_is_documented_unused(nova):
    folder, adapter = nova
    report = adapter.load_report
    assert set(report["loaded"]) | set(report["unused"]) == set(NOVA_SHAPES)
    assert not set(report["loaded"]) & set(report["unused"]) and report["not_in_variant"] == []
    assert sorted(report["unused"]) == ["mask_embed.bos_token"] + sorted(n for n in NOVA_SHAPES if n.startswith("motion_embed."))
    assert all(len(reason) > 40 for reason in report["unused"].values())
    # every NOVA-derived tensor of ours was filled; only the action modules start from scratch
    assert {n.split(".")[0] for n in report["random_init"]} == {"action_tokenizer", "action_dit"}
    assert len({target for target, _ in report["loaded"].values()}) == len(report["loaded"])  # one to one


def _expected_par_value(nova_value, layout, cfg):
    """NOVA's tensor in PAR's layout, written out here independently of the loader."""
    if layout == "same":
        return nova_value
    if layout == "conv":  # (out, C, kh, kw) -> (out, C*kh*kw), PAR's token order (C, row, col)
        out, c, kh, kw = nova_value.shape
        return torch.stack([nova_value[:, ci, r, q] for ci in range(c) for r in range(kh) for q in range(kw)], 1)
    assert layout == "head_rows"  # NOVA's row (r, q, c) -> PAR's row (c, r, q)
    p, c = cfg.spatial_patch, cfg.latent_channels
    order = [(r * p + q) * c + ci for ci in range(c) for r in range(p) for q in range(p)]
    return nova_value[order]


def test_loaded_values_equal_novas_after_the_layout_change(nova):
    folder, adapter = nova
    ours = adapter.model.state_dict()
    for name, (target, _) in adapter.load_report["loaded"].items():
        # the layout each NOVA tensor needs, decided here from NOVA's module types
        layout = ("conv" if name.endswith("patch_embed.proj.weight") else
                  "head_rows" if name.startswith("image_decoder.head.") else "same")
        expected = _expected_par_value(_nova_tensor(folder, name), layout, adapter.config)
        assert torch.equal(ours[target], expected), (name, target, layout)


def _loss(adapter):
    """The training loss of a fixed 2-step window (fixed noise, masks and diffusion times)."""
    gen = torch.Generator().manual_seed(5)
    frames = torch.rand(1, 3, 3, 32, 32, generator=gen)
    actions = torch.randn(1, 3, 8, 8, generator=gen)
    obs_pad = torch.zeros(1, 3, dtype=torch.bool)
    act_pad = torch.zeros(1, 3, 8, dtype=torch.bool)
    total = 0.0
    for seed in (6, 7, 8):  # three masks: one may hide every patch (a ratio near 1 is NOVA's mode)
        torch.manual_seed(seed)
        with torch.no_grad():
            total += float(adapter.model.training_loss(frames, actions, obs_pad, act_pad, ["push"])[0])
    return total


def test_perturbing_a_loaded_tensor_changes_the_output(nova):
    """One tensor per row of the name map (and the last block of each stack): a tensor that
    landed on a module the forward pass never uses would leave the loss unchanged."""
    folder, adapter = nova
    assert adapter.config.frame_prediction_type == "flow"  # from the stand-in's scheduler config
    params = dict(adapter.model.named_parameters())
    params.update(adapter.model.named_buffers())
    sample = {}
    for name, (target, _) in adapter.load_report["loaded"].items():
        rule = next(i for i, (pattern, _, _) in enumerate(NOVA_TO_PAR) if re.fullmatch(pattern, name))
        sample.setdefault(rule, target)
    sample["last temporal block"] = "temporal.blocks.15.mlp.2.weight"
    sample["last spatial block"] = "spatial.blocks.31.attn.qkv.weight"
    assert len(sample) == len(NOVA_TO_PAR) + 2
    base = _loss(adapter)
    assert math.isfinite(base) and _loss(adapter) == base  # deterministic
    for target in sample.values():
        tensor = params[target]
        saved = tensor.detach().clone()
        with torch.no_grad():
            tensor.add_(torch.randn_like(tensor) * 0.5)
        changed = _loss(adapter)
        with torch.no_grad():
            tensor.copy_(saved)
        assert changed != base, f"perturbing {target} left the output unchanged"


def test_causal_transformer_count_is_novas():
    """NOVA's parameters minus its image decoder (PAR's Frame-DeTokenizer row), its motion
    embedding and its BOS token (both unused), from the manifest; Table 1 within 0.1%."""
    counts = PARAdapter.parameter_groups(resolve_config(PARAdapter, None), DATA)
    buffers = {"text_embed.weight"}  # NOVA's padding table is a buffer, not a parameter
    size = {n: math.prod(s) for n, s in NOVA_SHAPES.items() if n not in buffers}
    assert sum(size.values()) == MANIFEST["parameter_count"]
    unused = sum(v for n, v in size.items() if any(re.fullmatch(p, n) for p in NOVA_UNUSED))
    decoder = sum(v for n, v in size.items() if n.startswith("image_decoder."))
    assert counts["Causal-Transformer"] == MANIFEST["parameter_count"] - decoder - unused == 608_647_168
    assert counts["Frame-DeTokenizer"] == decoder
    assert counts["Causal-Transformer"] / 1e6 == pytest.approx(PAPER_PARAMETER_COUNTS_M["Causal-Transformer"], rel=1e-3)
    assert counts["Total"] / 1e6 == pytest.approx(PAPER_PARAMETER_COUNTS_M["Total"], rel=1e-3)


def test_a_rollout_step_runs_on_the_loaded_weights(nova):
    folder, adapter = nova
    adapter.reset()
    chunk = adapter.act({"frame": torch.rand(3, 32, 32), "qpos": torch.zeros(9), "instruction": "push", "step": 0})
    assert chunk.shape == (8, 8) and torch.isfinite(chunk).all()
    # NOVA's VAE (its own format) and transformer were read from the folder and recorded
    assert [Path(f.path).relative_to(folder).as_posix() for f in adapter.pretrained_files] == [
        "vae/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors"]
    assert not any(f.action_pretrained for f in adapter.pretrained_files)
    vae = adapter.model.frozen.vae
    assert vae.decoder.up_blocks[0].upsamplers[0].interpolate is False  # NOVA's bilinear upsampling


def test_par_noar_takes_only_novas_input_embeddings(nova):
    folder, _ = nova
    cfg = resolve_config(PARAdapter, None, "par_noar", dict(PAPER_SMALL_IMAGE, nova_path=str(folder)))
    report = PARAdapter(cfg, DATA).load_report
    assert sorted(t for t, _ in report["loaded"].values()) == [
        "frame_embed.bias", "frame_embed.weight", "text_norm.bias", "text_norm.weight", "text_pad",
        "text_proj.bias", "text_proj.weight"]
    assert len(report["not_in_variant"]) == len(NOVA_SHAPES) - len(report["loaded"]) - len(report["unused"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("video_encoder.blocks.7.attn.proj.bias"), r"lack 1 tensors .*temporal\.blocks\.7\.attn\.proj\.bias"),
    (lambda s: s.update({"video_encoder.blocks.0.norm1.weight": (1000,)}), r"do not fit .*video_encoder\.blocks\.0\.norm1\.weight"),
    (lambda s: s.update({"label_embed.weight": (1001, 1024)}), r"does not know .*label_embed\.weight"),
])
def test_a_checkpoint_that_is_not_novas_is_refused_by_name(tmp_path, edit, message):
    shapes = {n: s for n, s in NOVA_SHAPES.items() if not n.startswith(("image_encoder.blocks", "image_decoder"))}
    # a small but complete checkpoint: the paper config with 2 spatial blocks and the MLP removed
    shapes.update({n: s for n, s in NOVA_SHAPES.items() if n.startswith(("image_encoder.blocks.0.", "image_encoder.blocks.1.", "image_decoder"))})
    edit(shapes)
    _write_standin(tmp_path, shapes)
    cfg = resolve_config(PARAdapter, None, None, dict(PAPER_SMALL_IMAGE, spatial_depth=2, nova_path=str(tmp_path)))
    with pytest.raises(ValueError, match=message):
        PARAdapter(cfg, DATA)


@pytest.mark.parametrize("scheduler, expected", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, dict(frame_prediction_type="flow", frame_flow_shift=3.0)),
    ({"_class_name": "DDPMScheduler", "prediction_type": "epsilon",
      "beta_schedule": "squaredcos_cap_v2"}, dict(frame_prediction_type="epsilon")),
    ({"_class_name": "DDPMScheduler"}, "beta_schedule"),  # NOVA's DDPM default is linear
    ({"_class_name": "DDPMScheduler", "prediction_type": "v_prediction",
      "beta_schedule": "squaredcos_cap_v2"}, "v_prediction"),
    (None, "scheduler_config.json is missing"),
])
def test_frame_objective_comes_from_the_checkpoint(tmp_path, scheduler, expected):
    from methods.par.weights import frame_objective_of_checkpoint

    if scheduler is not None:
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    cfg = resolve_config(PARAdapter, None, None, dict(nova_path=str(tmp_path)))
    if isinstance(expected, dict):
        assert frame_objective_of_checkpoint(cfg) == expected
    else:
        with pytest.raises((ValueError, FileNotFoundError), match=expected):
            frame_objective_of_checkpoint(cfg)
