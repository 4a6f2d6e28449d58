"""PAR's paper configuration loads NOVA-0.6B tensor by tensor, as the release is downloaded.

The stand-in folder is laid out as the release BAAI/nova-d48w1024-osp480: model_index.json and
transformer/config.json with the release's values, and the transformer's exact names and
shapes (tests/data/nova_osp480_release_state_dict.json: 646 tensors, NOVA's video mixer
included, dumped from baaivision/NOVA@2cd254a's own NOVATransformer3DModel at the release's
config; a copy of ../shared/nova/) with seeded random values; a scheduler/ of the class the
index names (diffusers' DDPMScheduler, its field values diffusers' defaults: the release's are
not public here) and NOVA's VAE format. It is loaded through the adapter, as a user's run loads it, into the paper
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
from methods.par.model import patchify
from methods.par.weights import NOVA_TO_PAR, NOVA_UNUSED

MANIFEST = json.loads((Path(__file__).parent / "data" / "nova_osp480_release_state_dict.json").read_text())
RELEASE = MANIFEST["release_files"]
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


def _ddpm_config(**fields) -> dict:
    """A scheduler_config.json as diffusers writes one for its DDPMScheduler (every field)."""
    from diffusers import DDPMScheduler

    return {"_class_name": "DDPMScheduler", **dict(DDPMScheduler(**fields).config)}


def _write_standin(folder: Path, shapes: dict, seed: int = 0, transformer_config: dict | None = None) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    # N(0, 0.02): NOVA's own init scale, so activations stay in range through 48 blocks
    tensors = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in shapes.items()}
    (folder / "transformer").mkdir(parents=True)
    save_file(tensors, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    config = RELEASE["transformer/config.json"] if transformer_config is None else transformer_config
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps(RELEASE["model_index.json"]))
    (folder / "vae").mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):  # what NOVA's vae/ holds
        shutil.copy(VAE_STANDIN / name, folder / "vae" / name)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_ddpm_config()))
    _write_text_encoder(folder)


def _write_text_encoder(folder: Path) -> None:
    """text_encoder/ and tokenizer/ as the release keeps them apart: NOVA's PhiEncoderModel is
    transformers' Phi layout (``model.*`` and ``lm_head``), here a PhiForCausalLM of Phi-2's width
    with one small layer; a word-level tokenizer in transformers format stands in for the
    release's CodeGen one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    words = ["[UNK]", "push", "the", "cube"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        PhiForCausalLM(PhiConfig(**PHI_2560)).save_pretrained(folder / "text_encoder")


@pytest.fixture(scope="module")
def nova(tmp_path_factory):
    """(folder, adapter): the release's 646-tensor stand-in and the paper-config PAR that loaded it."""
    folder = tmp_path_factory.mktemp("nova")
    _write_standin(folder, NOVA_SHAPES)
    torch.manual_seed(0)
    # everything from the folder, as a user's paper run reads it: Phi from its text_encoder/
    cfg = resolve_config(PARAdapter, None, None, dict(PAPER_SMALL_IMAGE, nova_path=str(folder), random_init_phi=None,
                                                      phi_path=str(folder / "text_encoder")))
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
    assert len(NOVA_SHAPES) == 646 and RELEASE["transformer/config.json"]["video_mixer_rank"] == 24
    assert sorted(report["unused"]) == sorted(n for n in NOVA_SHAPES if n.startswith("motion_embed."))
    # the video mixer and the BOS token land on PAR's
    assert {report["loaded"][n][0] for n in NOVA_SHAPES if "mixer" in n or "bos_token" in n} == {
        "bos_token", "mixer.lora.weight", "mixer.proj.weight", "mixer.proj.bias"}
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


def _loss(adapter, grad=False):
    """The training loss of a fixed 2-step window (fixed noise, masks and diffusion times), and
    the outputs of each stage on it: the causal transformer's (the frame de-tokenizer's mixed
    conditions, the action outputs), the spatial decoder's on a fixed third of the patches, and
    the diffusion MLP's at a fixed noise level. With random weights some tensors move the loss
    by less than float32 resolves (a spatial block's attention bias, the video mixer), so each
    stage's output is compared too. ``grad``: as tensors in the autograd graph (the loss a
    tensor)."""
    gen = torch.Generator().manual_seed(5)
    frames = torch.rand(1, 3, 3, 32, 32, generator=gen)
    actions = torch.randn(1, 3, 8, 8, generator=gen)
    obs_pad = torch.zeros(1, 3, dtype=torch.bool)
    act_pad = torch.zeros(1, 3, 8, dtype=torch.bool)
    total = 0.0
    m = adapter.model
    for seed in (6, 7, 8):  # three masks: one may hide every patch (a ratio near 1 is NOVA's mode)
        torch.manual_seed(seed)
        with torch.set_grad_enabled(grad):
            loss = m.training_loss(frames, actions, obs_pad, act_pad, ["push"])[0]
        total = total + (loss if grad else float(loss))
    with torch.set_grad_enabled(grad):  # and each stage on its own: transformer, spatial decoder, diffusion MLP
        latents, text, frame_tok, act_tok = m.embed_window(frames, actions, act_pad, ["push"])
        cond, act_out = m.run_temporal(text, frame_tok, act_tok)
        tokens = patchify(latents[0, 1:], m.cfg.spatial_patch)  # (2, 16, 16)
        visible = torch.arange(tokens.shape[1]) % 3 == 0
        z = m.spatial(tokens, cond[0], visible.expand(2, -1))
        t = torch.full(tokens.shape[:2], 400)
        mlp = m.frame_mlp(m.add_noise(tokens, torch.ones_like(tokens), t, m.frame_noise), t, z)
        outputs = torch.cat([o.flatten() for o in (cond, act_out, z, mlp)])
    return total, outputs


def test_perturbing_a_loaded_tensor_changes_the_output(nova):
    """One tensor per row of the name map (and the last block of each stack): a tensor that
    landed on a module the forward pass never uses would leave the loss and the outputs unchanged.
    A parameter shows it by its gradient (of the loss plus a fixed random projection of the
    outputs, one backward pass for all of them); a buffer, which has none, by being perturbed."""
    folder, adapter = nova
    # the release's model_index.json names a DDPM scheduler: its config is the frames' schedule
    assert adapter.config.frame_prediction_type == "epsilon"
    assert adapter.config.frame_scheduler == json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    params = dict(adapter.model.named_parameters())
    params.update(adapter.model.named_buffers())
    sample = {}
    for name, (target, _) in adapter.load_report["loaded"].items():
        rule = next(i for i, (pattern, _, _) in enumerate(NOVA_TO_PAR) if re.fullmatch(pattern, name))
        sample.setdefault(rule, target)
    sample["last temporal block"] = "temporal.blocks.15.mlp.2.weight"
    sample["last spatial block"] = "spatial.blocks.31.attn.qkv.weight"
    assert len(sample) == len(NOVA_TO_PAR) + 2
    base, base_out = _loss(adapter)
    again, again_out = _loss(adapter)
    assert math.isfinite(base) and again == base and torch.equal(again_out, base_out)  # deterministic
    weights = dict(adapter.model.named_parameters())
    trainable = {name: p.requires_grad for name, p in weights.items()}
    try:
        for p in weights.values():
            p.requires_grad_(True)
            p.grad = None
        total, outputs = _loss(adapter, grad=True)
        projection = torch.randn(outputs.shape, generator=torch.Generator().manual_seed(9))
        (total + (outputs * projection).sum()).backward()
        for target in (t for t in sample.values() if t in weights):
            grad = weights[target].grad
            assert grad is not None and bool(grad.abs().sum() > 0), f"{target} does not reach the output"
    finally:
        for name, p in weights.items():
            p.grad = None
            p.requires_grad_(trainable[name])
    for target in (t for t in sample.values() if t not in weights):  # buffers
        tensor = params[target]
        saved = tensor.detach().clone()
        with torch.no_grad():
            tensor.add_(torch.randn_like(tensor) * 0.5)
        changed, changed_out = _loss(adapter)
        with torch.no_grad():
            tensor.copy_(saved)
        assert changed != base or not torch.equal(changed_out, base_out), \
            f"perturbing {target} left the output unchanged"


def test_causal_transformer_count_is_novas():
    """The release's parameters (its video mixer included) minus its image decoder (PAR's
    Frame-DeTokenizer row) and its motion embedding (unused), from the manifest; Table 1 within
    0.1%."""
    counts = PARAdapter.parameter_groups(resolve_config(PARAdapter, None), DATA)
    buffers = {"text_embed.weight"}  # NOVA's padding table is a buffer, not a parameter
    size = {n: math.prod(s) for n, s in NOVA_SHAPES.items() if n not in buffers}
    assert sum(size.values()) == MANIFEST["parameter_count"]
    unused = sum(v for n, v in size.items() if any(re.fullmatch(p, n) for p in NOVA_UNUSED))
    decoder = sum(v for n, v in size.items() if n.startswith("image_decoder."))
    assert MANIFEST["parameter_count"] == 644_194_320
    assert counts["Causal-Transformer"] == MANIFEST["parameter_count"] - decoder - unused == 608_723_968
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
        "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors"]
    assert adapter.model.frozen.tokenizer("push the cube")["input_ids"] == [1, 2, 3]  # from tokenizer/
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


def test_the_mixer_follows_the_checkpoints_config(tmp_path):
    """The release's transformer/config.json decides the mixer: a PAR of another rank is refused
    by name; a NOVA without one (the repository's yaml: 643 tensors, no rank) loads into a PAR
    without one, which lists the BOS token as unused, and is refused, with the remedy, by a PAR
    that expects one."""
    small = {n: s for n, s in NOVA_SHAPES.items() if not n.startswith(("image_encoder.blocks", "image_decoder"))}
    small.update({n: s for n, s in NOVA_SHAPES.items() if n.startswith(("image_encoder.blocks.0.", "image_encoder.blocks.1.", "image_decoder"))})
    release = tmp_path / "release"
    _write_standin(release, small)
    over = dict(PAPER_SMALL_IMAGE, spatial_depth=2, nova_path=str(release))
    with pytest.raises(ValueError, match=r"sets video_mixer_rank 24; this PAR has PARConfig.video_mixer_rank = 8"):
        PARAdapter(resolve_config(PARAdapter, None, None, dict(over, video_mixer_rank=8)), DATA)
    repository = tmp_path / "repository"
    config = {k: v for k, v in RELEASE["transformer/config.json"].items() if k != "video_mixer_rank"}
    _write_standin(repository, {n: s for n, s in small.items() if "mixer" not in n}, transformer_config=config)
    over["nova_path"] = str(repository)
    report = PARAdapter(resolve_config(PARAdapter, None, None, dict(over, video_mixer_rank=None)), DATA).load_report
    assert sorted(report["unused"])[0] == "mask_embed.bos_token" and "video_mixer_rank" in report["unused"]["mask_embed.bos_token"]
    (repository / "transformer" / "config.json").unlink()  # no config to say so: the missing tensors do
    with pytest.raises(ValueError, match=r"lack 3 tensors .*mixer.*video_mixer_rank null"):
        PARAdapter(resolve_config(PARAdapter, None, None, over), DATA)


@pytest.mark.parametrize("scheduler, expected", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, dict(frame_prediction_type="flow", frame_flow_shift=3.0)),
    (_ddpm_config(), "epsilon"),  # diffusers' defaults: linear betas, epsilon
    (_ddpm_config(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), "v_prediction"),
    (_ddpm_config(beta_schedule="sigmoid", prediction_type="sample", timestep_spacing="trailing"), "sample"),
    (_ddpm_config(trained_betas=[1e-4] * 1000), "epsilon"),
    ({"_class_name": "DDPMScheduler"}, "epsilon"),  # every field at its default
    (dict(_ddpm_config(), beta_schedule="cosine"), "beta_schedule 'cosine' is not one NOVA's DDPMScheduler runs"),
    (_ddpm_config(variance_type="learned_range"), "variance_type 'learned_range'"),
    (_ddpm_config(prediction_type="flow"), "prediction_type 'flow'"),
    (_ddpm_config(thresholding=True), "thresholding"),
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
    elif scheduler is not None and expected in ("epsilon", "v_prediction", "sample"):
        assert frame_objective_of_checkpoint(cfg) == dict(frame_prediction_type=expected, frame_scheduler=scheduler)
    else:
        with pytest.raises((ValueError, FileNotFoundError), match=expected):
            frame_objective_of_checkpoint(cfg)


def test_the_index_names_the_scheduler_class(tmp_path):
    """model_index.json's class wins over the scheduler config's own ``_class_name``."""
    from methods.par.weights import frame_objective_of_checkpoint

    (tmp_path / "scheduler").mkdir()
    config = dict(_ddpm_config(), _class_name="FlowMatchEulerDiscreteScheduler")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    (tmp_path / "model_index.json").write_text(json.dumps(RELEASE["model_index.json"]))
    cfg = resolve_config(PARAdapter, None, None, dict(nova_path=str(tmp_path)))
    assert frame_objective_of_checkpoint(cfg)["frame_prediction_type"] == "epsilon"


@pytest.mark.parametrize("fields", [dict(), dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                                    dict(beta_schedule="scaled_linear", prediction_type="sample", clip_sample=False,
                                         timestep_spacing="trailing", rescale_betas_zero_snr=True)])
def test_a_ddpm_checkpoints_schedule_trains_and_samples_the_frames(fields):
    """With a checkpoint's DDPM config the frames are noised by its alphas, trained on its
    prediction type, and sampled by its step; the actions keep their own (MAR's) schedule."""
    from diffusers import DDPMScheduler

    from methods.par.model import _frame_sampler

    config = _ddpm_config(**fields)
    kind = config["prediction_type"]
    cfg = resolve_config(PARAdapter, "smoke", None, dict(frame_prediction_type=kind, frame_scheduler=config))
    m = PARAdapter(cfg, DATA).model
    reference = DDPMScheduler.from_config(config)
    x, noise = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    t = torch.tensor([[0, 10, 500, 998, 999]] * 2)
    flat = (x.flatten(0, 1), noise.flatten(0, 1), t.flatten())  # diffusers takes one t per row; PAR one per token
    torch.testing.assert_close(m.add_noise(x, noise, t, m.frame_noise), reference.add_noise(*flat).view_as(x))
    assert m.frame_noise is not m.noise and torch.equal(m.frame_noise.alphas_cumprod, reference.alphas_cumprod)
    if kind == "v_prediction":
        torch.testing.assert_close(m.velocity(x, noise, t, m.frame_noise), reference.get_velocity(*flat).view_as(x))
    assert torch.isfinite(m.frame_loss(torch.randn(2, 1, 48), torch.randn(2, 4, 4, 4), torch.ones(2)))
    sampler = _frame_sampler(cfg)
    assert type(sampler) is DDPMScheduler and dict(sampler.config) == dict(reference.config)
    torch.manual_seed(0)
    assert m.sample_frame(torch.randn(1, 1, 48)).shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="differs from frame_scheduler's prediction_type"):
        resolve_config(PARAdapter, "smoke", None, dict(frame_prediction_type="flow", frame_scheduler=config))
