"""Pretrained parts of PAR, loaded only from local files (no hub access at run time).

Expected layout (download once, elsewhere, then copy here):

    weights/nova-d48w1024-osp480/        NOVA-0.6B video (BAAI/nova-d48w1024-osp480), as downloaded
        model_index.json                 (names the scheduler's class)
        text_encoder/ + tokenizer/       NOVA's frozen Phi-2 (transformers' Phi layout) and its tokenizer
        transformer/config.json + diffusion_pytorch_model.safetensors
        vae/config.json + diffusion_pytorch_model.safetensors   (NOVA's AutoencoderKLOpenSora
                                                                 or diffusers' AutoencoderKL; vae.py)
        scheduler/scheduler_config.json  (the frame objective, when frame_prediction_type=checkpoint)

NOVA's transformer (baaivision/NOVA@2cd254a, ``diffnext.models.transformers.transformer_nova``)
maps onto PAR tensor by tensor (``NOVA_TO_PAR``; ``{i}`` is a block index, fc1/fc2 of a
block's MLP are ``mlp.0``/``mlp.2`` here):

| NOVA                                           | here                              | layout |
|------------------------------------------------|-----------------------------------|--------|
| video_encoder.patch_embed.proj.{weight,bias}   | frame_embed                       | conv kernel (d, C, p, p) -> (d, C*p*p) |
| video_encoder.blocks.{i}.*, video_encoder.norm | temporal.blocks.{i}.*, temporal.norm | same |
| image_encoder.patch_embed.proj.{weight,bias}   | spatial.patch_embed               | conv kernel -> (d, C*p*p) |
| image_encoder.blocks.{i}.*, image_encoder.norm | spatial.blocks.{i}.*, spatial.norm | same |
| mask_embed.mask_token                          | spatial.mask_token                | same |
| text_embed.weight (padding table, a buffer)    | text_pad                          | same |
| text_embed.proj, text_embed.norm               | text_proj, text_norm              | same |
| video_pos_embed.time_proj, video_pos_embed.norm | video_pos.time_proj, video_pos.norm | same |
| image_decoder.patch_embed.proj                 | frame_mlp.patch_embed             | conv kernel -> (w, C*p*p) |
| image_decoder.time_cond_embed.timestep_proj    | frame_mlp.time_proj               | same |
| image_decoder.time_cond_embed.condition_proj   | frame_mlp.cond_proj               | same |
| image_decoder.blocks.{i}.norm1.proj            | frame_mlp.blocks.{i}.ada.proj     | same ((scale, shift, gate) in both) |
| image_decoder.blocks.{i}.proj.fc1/fc2          | frame_mlp.blocks.{i}.mlp.fc1/fc2  | same |
| image_decoder.blocks.{i}.norm2                 | frame_mlp.blocks.{i}.norm         | same |
| image_decoder.norm.proj                        | frame_mlp.final_norm.proj         | same |
| image_decoder.head.{weight,bias}               | frame_mlp.head                    | rows (p, p, C) -> (C, p, p) |
| mask_embed.bos_token                           | bos_token                         | same (with the mixer) |
| video_encoder.mixer.{lora,proj}.*              | mixer.{lora,proj}.*               | same (with the mixer) |

The release (BAAI/nova-d48w1024-osp480) sets ``video_mixer_rank: 24`` in its
transformer/config.json, so it holds NOVA's mixer (646 tensors; the repository's yaml builds
643). A PAR with ``video_mixer_rank`` set takes the mixer and the BOS token; the rank must be
the checkpoint's (its config.json is read when present). A PAR without it lists both as unused.

Every conv kernel flattens in (C, row, column) order, which is the order ``patchify`` gives a
token here, so the linear layer computes exactly NOVA's convolution. ``NOVA_UNUSED`` lists the
two NOVA parts PAR has no use for, with the reason; any other tensor in the file, a missing
one, or one of another shape is refused by name. ``benchmarks/par_nova_parity.py`` runs NOVA's
own code on the same weights and inputs and compares each module's output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

NOVA_DOWNLOAD = ("the NOVA-0.6B video checkpoint (Hugging Face: BAAI/nova-d48w1024-osp480), "
                 "with its transformer/, vae/ and scheduler/ folders")
PHI_DOWNLOAD = ("Phi-2 in transformers format: the NOVA-0.6B release's text_encoder/ (its tokenizer/ "
                "beside it; Hugging Face: BAAI/nova-d48w1024-osp480), or microsoft/phi-2 with its tokenizer")

_MLP_FC = {"fc1": "mlp.0", "fc2": "mlp.2"}
_BLOCK_REST = r"(norm1\.\w+|norm2\.\w+|attn\.qkv\.\w+|attn\.proj\.\w+|mlp\.fc[12]\.\w+)"

# (NOVA name pattern, our name (format string over the groups), layout)
NOVA_TO_PAR: list[tuple[str, str, str]] = [
    (r"video_encoder\.patch_embed\.proj\.weight", "frame_embed.weight", "conv"),
    (r"video_encoder\.patch_embed\.proj\.bias", "frame_embed.bias", "same"),
    (rf"video_encoder\.blocks\.(\d+)\.{_BLOCK_REST}", "temporal.blocks.{0}.{1}", "same"),
    (r"video_encoder\.norm\.(\w+)", "temporal.norm.{0}", "same"),
    (r"image_encoder\.patch_embed\.proj\.weight", "spatial.patch_embed.weight", "conv"),
    (r"image_encoder\.patch_embed\.proj\.bias", "spatial.patch_embed.bias", "same"),
    (rf"image_encoder\.blocks\.(\d+)\.{_BLOCK_REST}", "spatial.blocks.{0}.{1}", "same"),
    (r"image_encoder\.norm\.(\w+)", "spatial.norm.{0}", "same"),
    (r"mask_embed\.mask_token", "spatial.mask_token", "same"),
    (r"text_embed\.weight", "text_pad", "same"),
    (r"text_embed\.proj\.(\w+)", "text_proj.{0}", "same"),
    (r"text_embed\.norm\.(\w+)", "text_norm.{0}", "same"),
    (r"video_pos_embed\.time_proj\.([02]\.\w+)", "video_pos.time_proj.{0}", "same"),
    (r"video_pos_embed\.norm\.(\w+)", "video_pos.norm.{0}", "same"),
    (r"image_decoder\.patch_embed\.proj\.weight", "frame_mlp.patch_embed.weight", "conv"),
    (r"image_decoder\.patch_embed\.proj\.bias", "frame_mlp.patch_embed.bias", "same"),
    (r"image_decoder\.time_cond_embed\.timestep_proj\.(fc[12]\.\w+)", "frame_mlp.time_proj.{0}", "same"),
    (r"image_decoder\.time_cond_embed\.condition_proj\.(fc[12]\.\w+)", "frame_mlp.cond_proj.{0}", "same"),
    (r"image_decoder\.blocks\.(\d+)\.norm1\.proj\.(\w+)", "frame_mlp.blocks.{0}.ada.proj.{1}", "same"),
    (r"image_decoder\.blocks\.(\d+)\.proj\.(fc[12]\.\w+)", "frame_mlp.blocks.{0}.mlp.{1}", "same"),
    (r"image_decoder\.blocks\.(\d+)\.norm2\.(\w+)", "frame_mlp.blocks.{0}.norm.{1}", "same"),
    (r"image_decoder\.norm\.proj\.(\w+)", "frame_mlp.final_norm.proj.{0}", "same"),
    (r"image_decoder\.head\.(\w+)", "frame_mlp.head.{0}", "head_rows"),
    (r"mask_embed\.bos_token", "bos_token", "same"),
    (r"video_encoder\.mixer\.(lora\.weight|proj\.weight|proj\.bias)", "mixer.{0}", "same"),
]

# what a PAR without NOVA's mixer (``video_mixer_rank`` null) has no use for
NO_MIXER_UNUSED: dict[str, str] = {
    r"mask_embed\.bos_token": (
        "NOVA's begin-of-video token fills the slot before a clip's first frame; PAR keeps that "
        "slot only as the mixer's reference (PARConfig.video_mixer_rank), which this config "
        "leaves out, so its first physical token is the observed frame O_0 with BOA actions "
        "(paper §4.2.2)"),
    r"video_encoder\.mixer\..+": (
        "NOVA's video mixer (AdaLayerNorm of rank video_mixer_rank on the BOS slot's output); "
        "this config sets PARConfig.video_mixer_rank null, so the frame outputs condition the "
        "spatial decoder unmixed"),
}

NOVA_UNUSED: dict[str, str] = {
    r"motion_embed\..+": (
        "NOVA's motion-flow and frame-rate conditions (two tokens appended to the text, frozen in "
        "NOVA's training); PAR's inputs are instruction, frames and actions (paper §4.2.1), and "
        "Table 1's 608.7M excludes them"),
}


def _require(path: str | None, what: str, field: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"PARConfig.{field} is not set; point it at {what}, or set it to "
                                "null and use a random-init scale preset (smoke) instead")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist. Download {what} on a machine with internet "
                                f"access and copy it to {p} (or set PARConfig.{field}). Nothing is "
                                "downloaded at run time.")
    return p


def vae_folder(nova_path: str | None) -> Path:
    """``<nova_path>/vae``; a missing one is named with how to provide it."""
    folder = _require(nova_path, NOVA_DOWNLOAD, "nova_path") / "vae"
    if not folder.exists():
        raise FileNotFoundError(f"{folder} is missing: {NOVA_DOWNLOAD} must contain vae/")
    return folder


def load_vae(nova_path: str | None):
    from methods.par.vae import load_frame_vae

    return load_frame_vae(vae_folder(nova_path))


def load_phi(phi_path: str | None):
    from transformers import AutoTokenizer, PhiModel

    folder = _require(phi_path, PHI_DOWNLOAD, "phi_path")
    # NOVA's release keeps the tokenizer in a folder of its own beside text_encoder/; a Phi-2
    # download keeps it with the model
    tokenizer = folder if (folder / "tokenizer_config.json").exists() else folder.parent / "tokenizer"
    if not (tokenizer / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer for {folder}: neither it nor {tokenizer} holds a "
                                f"tokenizer_config.json ({PHI_DOWNLOAD})")
    # NOVA's PhiEncoderModel (diffnext/models/text_encoders/phi.py) is transformers' Phi layout
    # under ``model.`` with an LM head, which PhiModel reads as a base model
    return (PhiModel.from_pretrained(folder, local_files_only=True),
            AutoTokenizer.from_pretrained(tokenizer, local_files_only=True))


# what NOVA's DDPMScheduler (baaivision/NOVA@2cd254a:diffnext/schedulers/scheduling_ddpm.py) and
# diffusers' accept; anything else NOVA itself could not run (its __init__ raises
# NotImplementedError, its step or set_timesteps ValueError)
DDPM_ACCEPTS = {
    "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
    "prediction_type": ("epsilon", "sample", "v_prediction"),
    "timestep_spacing": ("linspace", "leading", "trailing"),
    # "learned" and "learned_range" read a predicted variance from a second half of the model's
    # output, which NOVA's diffusion MLP does not have (its head emits the token's values only)
    "variance_type": ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"),
}
DDPM_DEFAULTS = {"beta_schedule": "linear", "prediction_type": "epsilon", "timestep_spacing": "leading",
                 "variance_type": "fixed_small"}  # both classes' defaults


def check_ddpm_config(sched: dict, path) -> str:
    """The prediction type of a DDPM scheduler config NOVA can run; a field it could not is
    refused by name."""
    for field, accepted in DDPM_ACCEPTS.items():
        value = sched.get(field, DDPM_DEFAULTS[field])
        if field == "beta_schedule" and sched.get("trained_betas") is not None:
            continue  # explicit betas replace the schedule
        if value not in accepted:
            raise ValueError(f"{path}: {field} {value!r} is not one NOVA's DDPMScheduler runs "
                             f"({', '.join(accepted)})")
    if sched.get("thresholding"):
        raise ValueError(f"{path}: thresholding is set, which NOVA's DDPMScheduler does not implement "
                         "(its step never thresholds); diffusers' would, so the two would sample differently")
    return sched.get("prediction_type", DDPM_DEFAULTS["prediction_type"])


def frame_objective_of_checkpoint(cfg) -> dict:
    """The frame MLP's objective and noise schedule NOVA's checkpoint was trained with. The
    scheduler's class is the one ``<nova_path>/model_index.json`` names (the release: diffusers'
    DDPMScheduler; the scheduler config's ``_class_name`` where there is no index), its values
    ``<nova_path>/scheduler/scheduler_config.json``'s: NOVA's training pipeline loads that
    scheduler and trains with a NOVA scheduler of its class and config
    (baaivision/NOVA@2cd254a:diffnext/pipelines/nova/pipeline_train_t2v.py ->
    pipelines/builder.py, build_diffusion_scheduler), and samples with the loaded one.
    Returns the PARConfig fields to set: a flow-matching checkpoint sets ``flow`` and its shift;
    a DDPM one its prediction type and the whole config as ``frame_scheduler``."""
    root = _require(cfg.nova_path, NOVA_DOWNLOAD, "nova_path")
    path = root / "scheduler" / "scheduler_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing, so the objective NOVA's frame MLP was trained with "
                                "is unknown: copy the checkpoint's scheduler/ folder there, or set "
                                "PARConfig.frame_prediction_type to epsilon, v_prediction, sample or flow")
    sched = json.loads(path.read_text())
    index = root / "model_index.json"
    named = json.loads(index.read_text()).get("scheduler") if index.exists() else None
    name = named[1] if isinstance(named, list) and len(named) == 2 else sched.get("_class_name")
    if name == "FlowMatchEulerDiscreteScheduler":
        return dict(frame_prediction_type="flow", frame_flow_shift=float(sched.get("shift", 1.0)))
    if name == "DDPMScheduler":
        return dict(frame_prediction_type=check_ddpm_config(sched, path), frame_scheduler=sched)
    raise ValueError(f"{path}: unknown noise scheduler {name!r} (from {index if named else path}); "
                     "set PARConfig.frame_prediction_type")


def map_nova_name(name: str) -> tuple[str, str] | None:
    """(our tensor name, layout) for a NOVA checkpoint name, or None when unmapped."""
    for pattern, target, layout in NOVA_TO_PAR:
        m = re.fullmatch(pattern, name)
        if m:
            groups = [g.replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.2") for g in m.groups()]
            return target.format(*groups), layout
    return None


def unused_reason(name: str, cfg) -> str | None:
    """Why PAR (with config ``cfg``) leaves NOVA's tensor ``name`` unused; None if it uses it."""
    table = NOVA_UNUSED | (NO_MIXER_UNUSED if cfg.video_mixer_rank is None else {})
    for pattern, reason in table.items():
        if re.fullmatch(pattern, name):
            return reason
    return None


def check_transformer_config(folder: Path, cfg) -> None:
    """Refuse a checkpoint whose transformer/config.json (when the folder has one) sets another
    ``video_mixer_rank`` than this PAR: the mixer's shapes and whether there is one follow it
    (the release sets 24; the repository's yaml omits it). PAR-NoAR, which has no causal
    transformer to mix, takes none of it."""
    path = folder / "config.json"
    if not path.exists():
        return
    release = json.loads(path.read_text())
    theirs = release.get("video_mixer_rank")
    theirs = None if theirs is None else max(int(theirs), 0)  # NOVA: rank < 0 is the full-width AdaLN
    if cfg.autoregressive and theirs != cfg.video_mixer_rank:  # PAR-NoAR has no transformer to mix
        raise ValueError(f"{path} sets video_mixer_rank {release.get('video_mixer_rank')!r}; this PAR has "
                         f"PARConfig.video_mixer_rank = {cfg.video_mixer_rank!r}. Set it to {theirs!r} "
                         "(method_overrides.par.video_mixer_rank) to load this checkpoint as it was trained")


def to_par_layout(tensor: torch.Tensor, layout: str, cfg) -> torch.Tensor:
    """NOVA's tensor in PAR's layout (see the module table)."""
    if layout == "same":
        return tensor
    if layout == "conv":  # (out, C, p, p) -> (out, C*p*p), PAR's token order
        return tensor.reshape(tensor.shape[0], -1)
    if layout == "head_rows":  # rows in NOVA's (p, p, C) order -> (C, p, p)
        c, pp = cfg.latent_channels, cfg.spatial_patch ** 2
        rows = tensor.reshape(pp, c, *tensor.shape[1:]).transpose(0, 1)
        return rows.reshape(c * pp, *tensor.shape[1:])
    raise ValueError(f"unknown layout {layout!r}")


NOVA_PARTS = ("frame_embed.", "temporal.", "spatial.", "text_pad", "text_proj.", "text_norm.",
              "video_pos.", "frame_mlp.", "bos_token", "mixer.")  # PAR's tensors that NOVA's checkpoint provides


@torch.no_grad()
def load_nova_transformer(model, nova_path: str | None) -> dict:
    """Copy NOVA's transformer weights into ``model`` (a PARModel), one tensor at a time.

    Returns a report: ``loaded`` (NOVA name -> (our name, layout)), ``unused`` (NOVA name ->
    reason), ``not_in_variant`` (NOVA tensors whose PAR module this variant lacks, e.g. the
    causal transformer of PAR-NoAR) and ``random_init`` (our tensors NOVA has no weights for:
    the action modules). Raises on a tensor it does not know, one of another shape, or a NOVA
    part this model needs that the file lacks."""
    from safetensors import safe_open

    folder = _require(nova_path, NOVA_DOWNLOAD, "nova_path") / "transformer"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: {NOVA_DOWNLOAD} is incomplete")
    check_transformer_config(folder, model.cfg)
    ours = dict(model.named_parameters())
    ours.update(model.named_buffers())
    loaded, unused, not_in_variant, unknown, mismatched = {}, {}, [], [], []
    for f in files:
        with safe_open(str(f), framework="pt") as reader:
            for name in reader.keys():
                reason = unused_reason(name, model.cfg)
                mapped = map_nova_name(name)
                if reason is not None:
                    unused[name] = reason
                elif mapped is None:
                    unknown.append(name)
                elif mapped[0] not in ours:
                    not_in_variant.append(name)
                else:
                    target, layout = mapped
                    value = to_par_layout(reader.get_tensor(name), layout, model.cfg)
                    if value.shape != ours[target].shape:
                        mismatched.append(f"{name} {tuple(value.shape)} -> {target} {tuple(ours[target].shape)}")
                        continue
                    ours[target].copy_(value.to(ours[target].dtype))
                    loaded[name] = (target, layout)
    where = f"NOVA weights in {folder}"
    if model.cfg.autoregressive and not_in_variant:  # only PAR-NoAR lacks NOVA's modules
        unknown += not_in_variant
    landed = {t for t, _ in loaded.values()}
    if len(landed) != len(loaded):
        raise ValueError(f"{where}: two NOVA tensors map onto one PAR tensor; the name table is wrong")
    if unknown:
        raise ValueError(f"{where} hold tensors this loader does not know ({len(unknown)}): {unknown[:5]}; "
                         "is this NOVA's d48w1024 video transformer?")
    if mismatched:
        raise ValueError(f"{where} do not fit this PAR config ({len(mismatched)}): {mismatched[:5]}")
    saved = model.state_dict().keys()  # parameters and persistent buffers
    missing = sorted(n for n in saved if n.startswith(NOVA_PARTS) and n not in landed)
    if missing:
        hint = ("; a checkpoint without NOVA's video mixer loads with PARConfig.video_mixer_rank null"
                if any(n.startswith("mixer.") for n in missing) else "")
        raise ValueError(f"{where} lack {len(missing)} tensors this PAR takes from NOVA: {missing[:5]}{hint}")
    return {"loaded": loaded, "unused": unused, "not_in_variant": not_in_variant,
            "random_init": sorted(n for n in saved if n not in landed)}
