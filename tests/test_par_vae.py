"""PAR's frame VAE in NOVA's format: tests/data/nova_opensora_vae_tiny/ was saved by NOVA's own
AutoencoderKLOpenSora (tests/data/make_nova_vae_standin.py, 2D and causal-3D levels, float16),
with NOVA's encode and decode outputs beside it; methods/par/vae.py must reproduce both."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from methods.par.vae import latent_scale, load_frame_vae

STANDIN = Path(__file__).parent / "data" / "nova_opensora_vae_tiny"


def test_novas_opensora_vae_encodes_and_decodes_a_frame_as_nova_does():
    vae = load_frame_vae(STANDIN)
    expected = load_file(str(STANDIN / "expected.safetensors"))
    with torch.no_grad():
        mean = vae.encode(expected["image"]).latent_dist.mean
        decoded = vae.decode(expected["latent_mean"]).sample
    torch.testing.assert_close(mean, expected["latent_mean"], atol=1e-4, rtol=0)
    torch.testing.assert_close(decoded, expected["decoded"], atol=1e-4, rtol=0)
    assert latent_scale(vae) == (pytest.approx(0.7), pytest.approx(0.3))
    assert not any(p.requires_grad for p in vae.parameters())


def test_a_diffusers_vae_folder_still_loads(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    vae.save_pretrained(tmp_path)
    loaded = load_frame_vae(tmp_path)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)
    assert latent_scale(loaded) == (pytest.approx(0.18215), 0.0)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("encoder.mid_block.attentions.0.to_q.weight"), r"missing encoder\.mid_block\.attentions\.0\.to_q\.weight"),
    (lambda t: t.update({"decoder.conv_in.weight": torch.zeros(32, 5, 3, 3, 3)}), r"decoder\.conv_in\.weight \(32, 5, 3, 3, 3\) does not fit"),
    (lambda t: t.update({"encoder.extra.weight": torch.zeros(1)}), r"unexpected encoder\.extra\.weight"),
])
def test_a_vae_file_that_does_not_match_its_config_is_refused_by_name(tmp_path, edit, message):
    folder = tmp_path / "vae"
    shutil.copytree(STANDIN, folder)
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=message):
        load_frame_vae(folder)


def test_a_missing_vae_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vae/config\.json is missing"):
        load_frame_vae(tmp_path / "vae")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLOpenSora",
                                                              "block_out_channels": [32]}))
    with pytest.raises(FileNotFoundError, match=r"vae/diffusion_pytorch_model\.safetensors is missing"):
        load_frame_vae(tmp_path / "vae")
