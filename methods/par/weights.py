"""Pretrained parts of PAR, loaded only from local files (no hub access at run time).

Expected layout (download once, elsewhere, then copy here):

    weights/phi-2/                       transformers format: config.json, tokenizer files, *.safetensors
    weights/nova-d48w1024-osp480/        NOVA-0.6B video (BAAI/nova-d48w1024-osp480)
        transformer/diffusion_pytorch_model.safetensors
        vae/config.json + diffusion_pytorch_model.safetensors   (diffusers AutoencoderKL format)

NOVA's checkpoint names map onto this implementation as follows (``NOVA_NAME_MAP``, applied
in order; ``{i}`` is a block index):

| NOVA (diffnext)                         | here                                   |
|-----------------------------------------|----------------------------------------|
| video_encoder.blocks.{i}.*              | temporal.blocks.{i}.*                  |
| video_encoder.norm.*                    | temporal.norm.*                        |
| video_encoder.patch_embed.proj.*        | frame_embed.*                          |
| image_encoder.blocks.{i}.* (i < D/2)    | spatial.encoder.blocks.{i}.*           |
| image_encoder.blocks.{i}.* (i >= D/2)   | spatial.decoder.blocks.{i - D/2}.*     |
| image_encoder.norm.*                    | spatial.decoder.norm.*                 |
| image_encoder.patch_embed.proj.*        | spatial.patch_embed.*                  |
| image_decoder.patch_embed.proj.*        | frame_mlp.patch_embed.*                |
| image_decoder.time_cond_embed.timestep_proj.* | frame_mlp.time_proj.*            |
| image_decoder.time_cond_embed.condition_proj.* | frame_mlp.cond_proj.*           |
| image_decoder.blocks.{i}.norm1.*        | frame_mlp.blocks.{i}.ada.*             |
| image_decoder.blocks.{i}.proj.*         | frame_mlp.blocks.{i}.mlp.*             |
| image_decoder.blocks.{i}.norm2.*        | frame_mlp.blocks.{i}.norm.*            |
| image_decoder.norm.*                    | frame_mlp.final_norm.*                 |
| image_decoder.head.*                    | frame_mlp.head.*                       |
| text_embed.proj.*                       | text_proj.*                            |
| mask_embed.mask_token                   | spatial.mask_token                     |

Block internals share NOVA's names (attn.qkv, attn.proj, norm1, norm2, mlp.fc1/fc2 -> mlp.0/mlp.2).
NOVA parts PAR does not use (motion/label embeddings, absolute position tables replaced by RoPE)
are reported as unused. The action modules have no pretrained weights.
"""

from __future__ import annotations

import re
from pathlib import Path

NOVA_DOWNLOAD = ("the NOVA-0.6B video checkpoint (Hugging Face: BAAI/nova-d48w1024-osp480), "
                 "with its transformer/ and vae/ folders")
PHI_DOWNLOAD = "Phi-2 in transformers format (Hugging Face: microsoft/phi-2)"


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


def load_vae(nova_path: str | None):
    from diffusers import AutoencoderKL

    folder = _require(nova_path, NOVA_DOWNLOAD, "nova_path") / "vae"
    if not folder.exists():
        raise FileNotFoundError(f"{folder} is missing: {NOVA_DOWNLOAD} must contain vae/")
    return AutoencoderKL.from_pretrained(folder, local_files_only=True)


def load_phi(phi_path: str | None):
    from transformers import AutoTokenizer, PhiModel

    folder = _require(phi_path, PHI_DOWNLOAD, "phi_path")
    return (PhiModel.from_pretrained(folder, local_files_only=True),
            AutoTokenizer.from_pretrained(folder, local_files_only=True))


_BLOCK = r"(?P<rest>(attn\.qkv|attn\.proj|norm1|norm2)\.(weight|bias))"
_MLP = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}


def map_nova_name(name: str, spatial_depth: int) -> str | None:
    """Our parameter name for a NOVA checkpoint name, or None when PAR has no such part."""
    half = spatial_depth // 2
    for old, new in _MLP.items():
        name = name.replace(old, new)
    m = re.fullmatch(r"video_encoder\.blocks\.(\d+)\.(.+)", name)
    if m:
        return f"temporal.blocks.{m[1]}.{m[2]}"
    m = re.fullmatch(r"image_encoder\.blocks\.(\d+)\.(.+)", name)
    if m:
        i = int(m[1])
        return (f"spatial.encoder.blocks.{i}.{m[2]}" if i < half
                else f"spatial.decoder.blocks.{i - half}.{m[2]}")
    table = [
        (r"video_encoder\.norm\.(.+)", "temporal.norm.{}"),
        (r"video_encoder\.patch_embed\.proj\.(.+)", "frame_embed.{}"),
        (r"image_encoder\.norm\.(.+)", "spatial.decoder.norm.{}"),
        (r"image_encoder\.patch_embed\.proj\.(.+)", "spatial.patch_embed.{}"),
        (r"image_decoder\.patch_embed\.proj\.(.+)", "frame_mlp.patch_embed.{}"),
        (r"image_decoder\.time_cond_embed\.timestep_proj\.(.+)", "frame_mlp.time_proj.{}"),
        (r"image_decoder\.time_cond_embed\.condition_proj\.(.+)", "frame_mlp.cond_proj.{}"),
        (r"image_decoder\.blocks\.(\d+)\.norm1\.(.+)", "frame_mlp.blocks.{}.ada.{}"),
        (r"image_decoder\.blocks\.(\d+)\.proj\.(.+)", "frame_mlp.blocks.{}.mlp.{}"),
        (r"image_decoder\.blocks\.(\d+)\.norm2\.(.+)", "frame_mlp.blocks.{}.norm.{}"),
        (r"image_decoder\.norm\.(.+)", "frame_mlp.final_norm.{}"),
        (r"image_decoder\.head\.(.+)", "frame_mlp.head.{}"),
        (r"text_embed\.proj\.(.+)", "text_proj.{}"),
        (r"mask_embed\.mask_token", "spatial.mask_token"),
    ]
    for pattern, target in table:
        m = re.fullmatch(pattern, name)
        if m:
            return target.format(*m.groups())
    return None


def load_nova_transformer(model, nova_path: str | None) -> dict:
    """Copy NOVA's transformer weights into ``model`` (a PARModel); returns a report of what
    was loaded, what NOVA has that PAR does not use, and what stays randomly initialised."""
    from safetensors.torch import load_file

    folder = _require(nova_path, NOVA_DOWNLOAD, "nova_path") / "transformer"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: {NOVA_DOWNLOAD} is incomplete")
    ours = model.state_dict()
    loaded, unused, mismatched = [], [], []
    for f in files:
        for name, tensor in load_file(str(f)).items():
            target = map_nova_name(name, model.cfg.spatial_depth)
            if target is None or target not in ours:
                unused.append(name)
            elif ours[target].shape != tensor.shape:
                mismatched.append(f"{name} {tuple(tensor.shape)} -> {target} {tuple(ours[target].shape)}")
            else:
                ours[target] = tensor
                loaded.append(target)
    if mismatched:
        raise ValueError(f"NOVA weights in {folder} do not fit this PAR config: {mismatched[:5]}")
    model.load_state_dict(ours)
    return {"loaded": len(loaded), "unused_from_nova": unused,
            "random_init": sorted(set(ours) - set(loaded))}
