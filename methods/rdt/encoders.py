"""RDT's encoders, transformers' own classes: a SigLIP vision tower and a T5 text encoder, loaded
from local folders when given, otherwise small randomly initialised models of the same classes.

Upstream (thu-ml/RoboticsDiffusionTransformer@deb71d8: models/multimodal_encoder/) freezes both:
SigLIP so400m-patch14-384 gives 729 tokens of 1152 per image (its last hidden state, no pooling);
T5-v1.1-XXL gives the instruction's tokens (4096 each). Nothing is ever downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.errors import HarnessError

SIGLIP_MEAN = (0.5, 0.5, 0.5)
"""SigLIP's pixel mean and std (transformers' SiglipImageProcessor defaults), used by the stand-in."""


def _local_folder(path: str, what: str, field: str, example: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise HarnessError(f"RDT's {what} not found at {folder} (RDTConfig.{field}): expected a folder in "
                           f"transformers' format (config.json and weights), e.g. `huggingface-cli download "
                           f"{example} --local-dir {folder}` on a machine with network, then copy it here; or leave "
                           f"{field} unset for the small randomly initialised stand-in.")
    return folder


@dataclass
class VisionSpec:
    """What the DiT needs to know of the vision encoder before building it."""

    image_size: int
    patch_size: int
    hidden_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def small_siglip_config(cfg):
    """transformers' SiglipVisionConfig of the stand-in, as wide as ``img_token_dim``."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=cfg.img_token_dim, intermediate_size=4 * cfg.img_token_dim,
                              num_hidden_layers=cfg.small_encoder_layers, num_attention_heads=cfg.small_encoder_heads,
                              image_size=cfg.vision_image_size, patch_size=cfg.vision_patch_size)


def vision_spec(cfg) -> VisionSpec:
    """From the given folder's config (and image processor, if it has one), else the stand-in's."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig

    if cfg.vision_encoder is None:
        c = small_siglip_config(cfg)
        return VisionSpec(c.image_size, c.patch_size, c.hidden_size, SIGLIP_MEAN, SIGLIP_MEAN)
    folder = _local_folder(cfg.vision_encoder, "vision encoder", "vision_encoder", "google/siglip-so400m-patch14-384")
    c = SiglipVisionConfig.from_pretrained(folder, local_files_only=True)  # a full SigLIP folder gives its vision part
    mean, std = SIGLIP_MEAN, SIGLIP_MEAN
    if (folder / "preprocessor_config.json").is_file():
        processor = SiglipImageProcessor.from_pretrained(folder, local_files_only=True)
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    if c.hidden_size != cfg.img_token_dim:
        raise HarnessError(f"the vision encoder at {folder} is {c.hidden_size} wide but RDTConfig.img_token_dim is "
                           f"{cfg.img_token_dim}; set img_token_dim to {c.hidden_size} (the image adaptor's input)")
    return VisionSpec(c.image_size, c.patch_size, c.hidden_size, mean, std)


def build_vision_encoder(cfg):
    """SiglipVisionModel: from the local folder (frozen), or the stand-in (trainable)."""
    from transformers import SiglipVisionModel

    if cfg.vision_encoder is None:
        return SiglipVisionModel(small_siglip_config(cfg))
    model = SiglipVisionModel.from_pretrained(Path(cfg.vision_encoder), local_files_only=True)
    model.requires_grad_(False)
    return model.eval()


def preprocess(frames: torch.Tensor, spec: VisionSpec) -> torch.Tensor:
    """Frames (N, 3, H, W) in [0, 1] -> SigLIP's input: padded to a square with the mean colour
    (`image_aspect_ratio: pad`), resized bicubically to its input size, normalised."""
    n, _, h, w = frames.shape
    if h != w:
        side = max(h, w)
        canvas = background(n, side, spec, frames)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, :, top:top + h, left:left + w] = frames
        frames = canvas
    if frames.shape[-1] != spec.image_size:
        frames = F.interpolate(frames, size=(spec.image_size, spec.image_size), mode="bicubic",
                               antialias=True, align_corners=False).clamp_(0, 1)
    mean = frames.new_tensor(spec.mean).view(1, 3, 1, 1)
    std = frames.new_tensor(spec.std).view(1, 3, 1, 1)
    return (frames - mean) / std


def background(n: int, side: int, spec: VisionSpec, like: torch.Tensor) -> torch.Tensor:
    """The image that stands for an empty camera slot or a dropped image: the pixel mean as an
    8-bit colour (int(mean * 255)), as upstream paints it."""
    colour = like.new_tensor([int(m * 255) / 255 for m in spec.mean]).view(1, 3, 1, 1)
    return colour.expand(n, 3, side, side).clone()


def encode_instruction(cfg, texts: list[str], features: bool = True) -> list[torch.Tensor]:
    """Each text's T5 token features (L_i, lang_token_dim), computed once with no gradient; the
    encoder is dropped afterwards (it is frozen, and the instruction is fixed per task). A given
    encoder runs in bfloat16, as upstream's T5Embedder loads it. ``features=False``: zeros of
    the same shapes, from the tokenizer alone (for a state dict that holds the features)."""
    from transformers import AutoConfig, AutoTokenizer, ByT5Tokenizer, T5Config, T5EncoderModel

    if cfg.text_encoder is None:
        tokenizer = ByT5Tokenizer()
        d = cfg.lang_token_dim
        config = T5Config(vocab_size=len(tokenizer), d_model=d, d_kv=d // cfg.small_encoder_heads, d_ff=2 * d,
                          num_layers=cfg.small_encoder_layers, num_heads=cfg.small_encoder_heads,
                          feed_forward_proj="gated-gelu")
        load = lambda: T5EncoderModel(config)  # noqa: E731
    else:
        folder = _local_folder(cfg.text_encoder, "text encoder", "text_encoder", "google/t5-v1_1-xxl")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        load = lambda: T5EncoderModel.from_pretrained(folder, local_files_only=True,  # noqa: E731
                                                      dtype=torch.bfloat16)
    if config.d_model != cfg.lang_token_dim:
        raise HarnessError(f"the text encoder at {cfg.text_encoder} is {config.d_model} wide but "
                           f"RDTConfig.lang_token_dim is {cfg.lang_token_dim}; set lang_token_dim to "
                           f"{config.d_model} (the language adaptor's input)")
    ids = [tokenizer(text, return_tensors="pt").input_ids for text in texts]
    if not features:
        return [torch.zeros(i.shape[1], cfg.lang_token_dim) for i in ids]
    model = load().eval()
    with torch.no_grad():
        return [model(input_ids=i).last_hidden_state[0].float() for i in ids]
