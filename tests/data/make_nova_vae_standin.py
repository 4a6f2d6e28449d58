"""Writes tests/data/nova_opensora_vae_tiny/: a tiny VAE in NOVA's own AutoencoderKLOpenSora
format, saved by NOVA's code, plus what NOVA's code computes with it. Run against a checkout
of baaivision/NOVA (nothing of it is copied into this repository):

    .venv/bin/python tests/data/make_nova_vae_standin.py --upstream /tmp/nova

The model mixes 2D and 3D (causal, time-kernel) levels as Open-Sora-Plan's VAE does: 2D then
3D levels in the encoder (stride 4 here), 3D levels in the decoder (NOVA's Decoder.forward never returns to
4D, so a decoder that starts 3D stays 3D), with a time-kernel-3 upsampler (NOVA interpolates it
trilinearly) and a (1, 3, 3) one (pixel repeat). Every tensor, GroupNorm affines included,
is random (seeded) and stored in float16. expected.safetensors holds a seeded 64x64 image in [-1, 1], NOVA's
encode(image).latent_dist.mean and NOVA's decode(that mean).sample, all float32.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "nova_opensora_vae_tiny")
    args = parser.parse_args()
    sys.path.insert(0, str(args.upstream.resolve()))
    from diffnext.models.autoencoders.autoencoder_kl_opensora import AutoencoderKLOpenSora
    from safetensors.torch import save_file

    commit = subprocess.run(["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    torch.manual_seed(0)
    vae = AutoencoderKLOpenSora(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock3D", "DownEncoderBlock3D"),
        up_block_types=("UpDecoderBlock3D",) * 3, block_out_channels=(32, 32, 32), layers_per_block=1,
        latent_channels=4, scaling_factor=0.7, shift_factor=0.3).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        vae.half().float()  # stored in float16 (small, and the loader must convert); outputs from those values
    vae.half().save_pretrained(args.out)
    vae.float()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(image.clone()).latent_dist.mean
        decoded = vae.decode(mean.clone()).sample
    save_file({"image": image.contiguous(), "latent_mean": mean.contiguous(), "decoded": decoded.contiguous()},
              str(args.out / "expected.safetensors"))
    (args.out / "SOURCE.txt").write_text(
        f"Written by tests/data/make_nova_vae_standin.py with baaivision/NOVA at {commit}\n"
        "(diffnext.models.autoencoders.autoencoder_kl_opensora.AutoencoderKLOpenSora, save_pretrained).\n")
    print("latent", tuple(mean.shape), "decoded", tuple(decoded.shape))


if __name__ == "__main__":
    main()
