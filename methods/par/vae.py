"""PAR's frozen frame VAE from a local folder, in either of the formats NOVA ships.

NOVA's osp480 video checkpoint ships Open-Sora-Plan's causal video VAE in diffnext's
``AutoencoderKLOpenSora`` format (baaivision/NOVA@2cd254a:diffnext/models/autoencoders/
autoencoder_kl_opensora.py; NOVA's docs/training.md loads it so), not diffusers'
``AutoencoderKL``: its later levels are causal 3D convolutions. PAR encodes every observation
as one image, which is NOVA's own 4D path through that VAE (``encode`` adds a time axis of
length 1, ``decode`` removes it). On a single frame that VAE is exactly a 2D ``AutoencoderKL``
with the same names:

- a causal ``Conv3d`` pads kernel_t - 1 copies of the first frame in front and none behind,
  so on one frame it is a ``Conv2d`` whose kernel is the 3D kernel summed over time (the
  strided 3D downsamplers too: the same (0, 1, 0, 1) spatial padding as diffusers'
  ``Downsample2D``);
- a decoder upsampler whose convolution has time kernel 3 interpolates trilinearly with scale
  (1, 2, 2), which on one frame is bilinear x2 (align_corners False), not diffusers' nearest:
  those upsamplers get a bilinear pre-hook; the others repeat pixels (= nearest);
- GroupNorms have 32 groups in diffnext whatever the config says.

``load_frame_vae`` builds that ``AutoencoderKL`` and loads the converted tensors strictly.
Not supported (PAR does not need them): multi-frame video latents and the VAE's time
compression. Latents are NOVA's: ``(mean - shift_factor) * scaling_factor`` (``scale_``).
``tests/test_par_vae.py`` checks encode and decode against NOVA's own outputs on a stand-in
saved by NOVA's code (tests/data/make_nova_vae_standin.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

OPENSORA = "AutoencoderKLOpenSora"
_WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_frame_vae(folder: Path):
    """The frozen VAE in ``folder`` (config.json + diffusion_pytorch_model.safetensors), as a
    diffusers ``AutoencoderKL`` in eval mode without gradients."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} is missing: the VAE folder needs config.json and {_WEIGHTS}")
    config = json.loads(config_path.read_text())
    if config.get("_class_name") == OPENSORA:
        vae = _from_opensora(config, folder / _WEIGHTS)
    else:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    vae.requires_grad_(False)
    return vae.eval()


def _from_opensora(config: dict, weights: Path):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: NOVA's VAE folder holds config.json and {_WEIGHTS}")
    levels = len(config["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config["block_out_channels"]), layers_per_block=config.get("layers_per_block", 2),
        act_fn=config.get("act_fn", "silu"), latent_channels=config.get("latent_channels", 16),
        norm_num_groups=32, sample_size=config.get("sample_size", 256),
        scaling_factor=config.get("scaling_factor", 0.18215), shift_factor=config.get("shift_factor"),
        force_upcast=config.get("force_upcast", True), use_quant_conv=config.get("use_quant_conv", True),
        use_post_quant_conv=config.get("use_post_quant_conv", True))
    source = load_file(str(weights))
    ours = vae.state_dict()
    converted, problems = {}, []
    for name, tensor in source.items():
        if name not in ours:
            problems.append(f"unexpected {name}")
            continue
        value = tensor.to(ours[name].dtype)  # before summing: a float16 sum would round
        value = value.sum(dim=2) if value.dim() == 5 else value  # causal 3D kernel on one frame
        if value.shape != ours[name].shape:
            problems.append(f"{name} {tuple(tensor.shape)} does not fit {tuple(ours[name].shape)}")
            continue
        converted[name] = value
    problems += [f"missing {name}" for name in ours if name not in source]
    if problems:
        raise ValueError(f"{weights} is not the {OPENSORA} its config.json describes "
                         f"({len(problems)} problems): {problems[:5]}")
    vae.load_state_dict(converted)
    for i, block in enumerate(vae.decoder.up_blocks):
        kernel = source.get(f"decoder.up_blocks.{i}.upsamplers.0.conv.weight")
        if kernel is not None and kernel.dim() == 5 and kernel.shape[2] > 1:
            up = block.upsamplers[0]
            up.interpolate = False  # the hook does NOVA's interpolation, then the conv runs
            up.register_forward_pre_hook(_bilinear_x2)
    return vae


def _bilinear_x2(module, args):
    x, *rest = args
    return (F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False), *rest)


def latent_scale(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of NOVA's latents: latent = (mean - shift) * scale."""
    return float(vae.config.get("scaling_factor") or 1.0), float(vae.config.get("shift_factor") or 0.0)
