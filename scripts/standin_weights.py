"""Writes stand-in pretrained weights laid out exactly as the releases are, with seeded random
values, so that the paper presets' loaders can be rehearsed end to end without the real
downloads (``workflows/config/rehearsal.yaml``, ``benchmarks/rehearsal.py``):

    .venv/bin/python scripts/standin_weights.py --out weights-standin --nova-upstream /path/to/NOVA

Every tensor's name and shape comes from the real class's config (transformers, diffusers, timm,
NOVA's own code) or from a names-and-shapes manifest dumped from the original code
(``tests/data/*_state_dict.json``); none from this project's modules. What is written:

| folder | as the release | size here |
|---|---|---|
| ``nova-d48w1024-osp480/`` | BAAI/nova-d48w1024-osp480: ``model_index.json``; ``transformer/`` (``config.json`` + the 646 tensors of the manifest, float32); ``vae/`` (``AutoencoderKLOpenSora``, float16); ``scheduler/`` (``DDPMScheduler``); ``text_encoder/`` (Phi); ``tokenizer/`` | transformer and VAE at full size; Phi-2 at its widths with ``--phi-layers`` of its 32 layers |
| ``rdt-1b/pytorch_model.bin`` | robotics-diffusion-transformer/rdt-1b: ``RDTRunner``'s bare state dict | full size (618 tensors, 1.23B values) |
| ``siglip-so400m-patch14-384/`` | google/siglip-so400m-patch14-384 (``SiglipModel``) and its image processor | vision tower full size; text tower (unused by RDT) 1 of 27 layers |
| ``t5-v1_1-xxl/`` | google/t5-v1_1-xxl's encoder (``T5EncoderModel``, bfloat16) and a tokenizer | its widths with ``--t5-layers`` of its 24 layers |
| ``vit_base_patch16_224.mae.safetensors`` | timm's ``vit_base_patch16_224.mae`` (ICRT's ViT) | full size |
| ``resnet18-f37072fd.pth`` | torchvision's ImageNet ResNet-18 file (ACT's backbone): a ``torch.save``'d state dict | full size |

Not the releases: the tokenizers' vocabularies (they cannot be fetched here; a byte-level BPE in
transformers' format for Phi-2's, a SentencePiece model with T5's special ids for T5's, learned
from the tasks' instructions, with ids inside the real vocabularies),
the scheduler's field values (diffusers' defaults: the release's are not public here), and the
values, which are random: N(0, 0.02) for the manifest-built files (NOVA's own init scale), each
class's own initialisation otherwise.

NOVA's VAE needs NOVA's checkout (``--nova-upstream``), whose ``AutoencoderKLOpenSora`` is built
at the release's config: 4 latent channels, block channels 128/256/512/512, down blocks 2D, 2D,
3D, 3D (the manifest), and up blocks 3D x 4 with 2 layers per block, the only combination whose
parameter count, 239,189,991, gives the release file's ~478 MB in 16 bits (2D/3D mixes and 3
layers give 288 to 604 MB). Without it, the VAE is written as diffusers' ``AutoencoderKL`` at the
same widths (2D throughout), the other format PAR's loader reads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NOVA_MANIFEST = REPO / "tests" / "data" / "nova_osp480_release_state_dict.json"
RDT_MANIFEST = REPO / "tests" / "data" / "rdt_1b_state_dict.json"
INSTRUCTIONS = ("push the cube to the goal region", "pick up the cube and move it to the goal position",
                "stack the red cube on top of the green cube")

# the releases' widths (transformers' configs of microsoft/phi-2, google/siglip-so400m-patch14-384
# and google/t5-v1_1-xxl)
PHI_2 = dict(vocab_size=51_200, hidden_size=2560, intermediate_size=10_240, num_attention_heads=32,
             num_key_value_heads=32, partial_rotary_factor=0.4, max_position_embeddings=2048,
             hidden_act="gelu_new", layer_norm_eps=1e-5)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
T5_XXL = dict(vocab_size=32_128, d_model=4096, d_kv=64, d_ff=10_240, num_heads=64, feed_forward_proj="gated-gelu",
              relative_attention_num_buckets=32, dropout_rate=0.1, tie_word_embeddings=False)
NOVA_VAE = dict(down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock3D",
                                  "DownEncoderBlock3D"),
                up_block_types=("UpDecoderBlock3D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, scaling_factor=0.18215)


def _manifest_tensors(manifest: Path, seed: int) -> dict[str, torch.Tensor]:
    shapes = json.loads(manifest.read_text())["tensors"]
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(tuple(shape), generator=gen) * 0.02 for name, shape in shapes.items()}


def write_nova(folder: Path, upstream: Path | None, phi_layers: int, seed: int) -> dict:
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file
    from transformers import PhiConfig, PhiForCausalLM

    release = json.loads(NOVA_MANIFEST.read_text())["release_files"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(release["model_index.json"], indent=2))
    (folder / "transformer").mkdir(exist_ok=True)
    (folder / "transformer" / "config.json").write_text(json.dumps(release["transformer/config.json"], indent=2))
    save_file(_manifest_tensors(NOVA_MANIFEST, seed), str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    DDPMScheduler().save_pretrained(folder / "scheduler")
    torch.manual_seed(seed + 1)
    if upstream is not None:
        sys.path.insert(0, str(upstream.resolve()))
        from diffnext.models.autoencoders.autoencoder_kl_opensora import AutoencoderKLOpenSora

        vae, vae_format = AutoencoderKLOpenSora(**NOVA_VAE), "AutoencoderKLOpenSora (NOVA's code)"
    else:
        from diffusers import AutoencoderKL

        levels = len(NOVA_VAE["block_out_channels"])
        vae = AutoencoderKL(**dict(NOVA_VAE, down_block_types=("DownEncoderBlock2D",) * levels,
                                   up_block_types=("UpDecoderBlock2D",) * levels))
        vae_format = "diffusers AutoencoderKL, 2D (no --nova-upstream)"
    vae.half().save_pretrained(folder / "vae")
    vae_parameters = sum(p.numel() for p in vae.parameters())
    del vae
    torch.manual_seed(seed + 2)
    PhiForCausalLM(PhiConfig(**PHI_2, num_hidden_layers=phi_layers)).save_pretrained(folder / "text_encoder")
    _byte_level_tokenizer(PHI_2["vocab_size"]).save_pretrained(folder / "tokenizer")
    return {"vae_format": vae_format, "vae_parameters": vae_parameters, "phi_layers": f"{phi_layers} of 32"}


def _byte_level_tokenizer(vocab_size: int):
    """A byte-level BPE in transformers' format (Phi-2's CodeGen tokenizer is one), its merges
    learned from the tasks' instructions; every id is inside the real vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(INSTRUCTIONS, trainer)
    assert tok.get_vocab_size() <= vocab_size
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=2048)


def _sentencepiece_tokenizer(folder: Path):
    """T5's tokenizer as google/t5-v1_1-xxl ships it: a SentencePiece unigram model
    (``spiece.model``, pad 0, eos 1, unk 2, no bos) with 100 extra ids, saved by transformers'
    ``T5Tokenizer`` (no ``tokenizer.json``: loading it converts the model, as the release's does)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(INSTRUCTIONS * 20), model_prefix=str(folder / "spiece"),
                                   vocab_size=48, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    (folder / "spiece.vocab").unlink()
    tokenizer = T5Tokenizer(vocab_file=str(folder / "spiece.model"), extra_ids=100, legacy=False)
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_rdt(path: Path, seed: int) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _manifest_tensors(RDT_MANIFEST, seed)
    torch.save(state, path)  # a bare state dict, as the hub's pytorch_model.bin
    return {"tensors": len(state), "parameters": sum(t.numel() for t in state.values())}


def write_siglip(folder: Path, seed: int, text_layers: int = 1) -> dict:
    """The whole SigLIP model, as the release is (RDT reads its vision tower): the vision tower
    at full size, the text tower (which RDT never runs) at its widths with ``text_layers`` of 27."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    text = dict(vocab_size=32_000, hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                max_position_embeddings=64, num_hidden_layers=text_layers)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=SIGLIP_SO400M))
    model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(folder)
    return {"vision_parameters": sum(p.numel() for p in model.vision_model.parameters()),
            "layers": f"vision 27 of 27, text {text_layers} of 27"}


def write_t5(folder: Path, layers: int, seed: int) -> dict:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(**T5_XXL, num_layers=layers)).to(torch.bfloat16)
    model.save_pretrained(folder)
    _sentencepiece_tokenizer(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": f"{layers} of 24"}


def write_vit(path: Path, seed: int) -> dict:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"parameters": sum(p.numel() for p in model.parameters())}


def write_resnet18(path: Path, seed: int) -> dict:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    torch.save(model.state_dict(), path)
    return {"parameters": sum(p.numel() for p in model.parameters())}


# where each part goes under --out: the releases' folder and file names
LAYOUT = {"nova": "nova-d48w1024-osp480", "rdt": "rdt-1b/pytorch_model.bin", "siglip": "siglip-so400m-patch14-384",
          "t5": "t5-v1_1-xxl", "vit": "vit_base_patch16_224.mae.safetensors",
          "resnet18": "resnet18-f37072fd.pth"}
PARTS = tuple(LAYOUT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, default=Path("weights-standin"))
    p.add_argument("--nova-upstream", type=Path, default=None,
                   help="a checkout of baaivision/NOVA: its AutoencoderKLOpenSora writes the VAE in the release's format")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--phi-layers", type=int, default=2, help="of Phi-2's 32 (full size is 11 GB in float32)")
    p.add_argument("--t5-layers", type=int, default=2, help="of T5-v1.1-XXL encoder's 24 (full size is 9.5 GB in bfloat16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        "nova": lambda: write_nova(out / LAYOUT["nova"], args.nova_upstream, args.phi_layers, args.seed),
        "rdt": lambda: write_rdt(out / LAYOUT["rdt"], args.seed),
        "siglip": lambda: write_siglip(out / LAYOUT["siglip"], args.seed),
        "t5": lambda: write_t5(out / LAYOUT["t5"], args.t5_layers, args.seed),
        "vit": lambda: write_vit(out / LAYOUT["vit"], args.seed),
        "resnet18": lambda: write_resnet18(out / LAYOUT["resnet18"], args.seed),
    }
    record_path = out / "STANDIN.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for part in args.parts:
        start = time.perf_counter()
        print(f"writing {part} ...", flush=True)
        target = out / LAYOUT[part]  # written afresh: no file of an earlier layout stays behind
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        record[part] = dict(writers[part](), seconds=round(time.perf_counter() - start, 1), seed=args.seed)
        record_path.write_text(json.dumps(record, indent=2))
    print(f"stand-in weights in {out} (random values, not the releases: {record_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
