"""PAR's NOVA modules against NOVA's own code, on the same weights and inputs. NOVA is imported
from a local checkout of baaivision/NOVA (package ``diffnext``); nothing of it is copied here:

    git clone https://github.com/baaivision/NOVA /tmp/nova  # on a machine with network
    .venv/bin/python benchmarks/par_nova_parity.py --upstream /tmp/nova

NOVA's ``NOVATransformer3DModel`` is built from the release's transformer/config.json
(BAAI/nova-d48w1024-osp480, as tests/data/nova_osp480_release_state_dict.json records it:
the repository's configs/nova_d48w1024_osp480.yaml plus ``video_mixer_rank: 24``), randomly
initialised, every tensor perturbed by N(0, 0.02) (so LayerNorms at 1/0 and zero-initialised
layers hide nothing), and saved as the release lays it out (``model_index.json``,
``transformer/config.json``, ``transformer/diffusion_pytorch_model.safetensors``). The
paper-config PAR loads that folder through its user-facing loader. Then, in float32 at NOVA's
480x768 resolution:

- text embedding: NOVA's ``text_embed`` vs ``text_proj`` + ``text_norm`` on the same Phi states;
- frame patch embedding and absolute positions: NOVA's ``video_encoder.patch_embed`` ->
  ``video_pos_embed`` over [BOS; T frames] (the frames' slots) vs ``frame_embed`` ->
  ``video_pos`` (O_n at slot n + 1);
- temporal encoder: NOVA's ``video_encoder`` over [text; BOS slot; T frames] with its
  block-causal mask vs ``temporal`` on PAR's prefix (text and BOS slot) and the same frame
  tokens, with PAR's own mask for frames-only steps (checked equal to NOVA's) and no RoPE
  (PAR's action tokens and RoPE are the paper's additions, docs/par.md);
- the video mixer, training path: NOVA's ``train_video`` split, ``cat([c0, mixer(c0, c_rest)])``,
  vs ``PARModel.mix`` of the BOS slot's output and the frames';
- the video mixer, cached path: NOVA's ``generate_video`` (KV-cache on, the BOS slot's output
  at t = 0 kept as ``states["*"]``, each later slot mixed with it) vs ``start_context``'s
  reference and one frame slot at a time through the cache;
- spatial encoder/decoder (masked AR): NOVA's ``image_encoder`` on masked patch embeddings
  with the visible ids vs ``spatial`` on the same tokens and visibility;
- diffusion MLP: NOVA's ``image_decoder`` vs ``frame_mlp`` (output reordered (C,p,p) ->
  (p,p,C)) on the same noisy latents, timesteps and conditions.

Writes results/par_nova_parity.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import write_result  # noqa: E402


RELEASE_MANIFEST = Path(__file__).resolve().parent.parent / "tests" / "data" / "nova_osp480_release_state_dict.json"


def _nova(root: Path, release: dict):
    sys.path.insert(0, str(root))
    from diffnext.models.transformers.transformer_nova import NOVATransformer3DModel  # NOVA's, from the checkout

    return NOVATransformer3DModel(**release["transformer/config.json"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, type=Path, help="a checkout of baaivision/NOVA")
    parser.add_argument("--frames", type=int, default=2, help="latent frames through the temporal encoder")
    args = parser.parse_args()
    from safetensors.torch import save_file

    from harness.adapter import DataInfo, resolve_config
    from methods.par import PARAdapter
    from methods.par.layers import physical_mask
    from methods.par.model import patchify

    commit = subprocess.run(["git", "-C", str(args.upstream), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown (not a git checkout)"
    torch.manual_seed(0)
    release = json.loads(RELEASE_MANIFEST.read_text())["release_files"]
    nova = _nova(args.upstream.resolve(), release)
    nova.eval()
    with torch.no_grad():
        for t in list(nova.parameters()) + list(nova.buffers()):
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.02)
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max")} for k, d in (("actions", 8), ("obs_qpos", 9))}
    data = DataInfo(8, 9, (480, 768), "push", stats)
    t_frames = args.frames
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "transformer").mkdir()
        save_file({k: v.contiguous() for k, v in nova.state_dict().items()},
                  str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        (folder / "transformer" / "config.json").write_text(json.dumps(release["transformer/config.json"]))
        (folder / "model_index.json").write_text(json.dumps(release["model_index.json"]))
        tiny_phi = dict(vocab_size=256, hidden_size=2560, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=32, max_position_embeddings=64)
        tiny_vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32,) * 4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
        # the paper config; the clip of the absolute time code is the compared number of frames
        cfg = resolve_config(PARAdapter, None, None, dict(
            nova_path=str(folder), random_init_phi=tiny_phi, random_init_vae=tiny_vae, phi_path=None,
            frame_prediction_type="flow", context_steps=t_frames))
        ours = PARAdapter(cfg, data).model.eval()
    report = {"upstream_commit": commit, "frames": t_frames, "dtype": "float32",
              "image_size": list(cfg.image_size), "modules": {}}

    def record(name, theirs, mine, seconds):
        diff = float((theirs - mine).abs().max())
        report["modules"][name] = {"max_abs_diff": diff, "max_abs": float(theirs.abs().max()),
                                   "shape": list(theirs.shape), "seconds": round(seconds, 1)}
        print(f"{name}: max |diff| {diff:.3g} (values up to {float(theirs.abs().max()):.3g})", flush=True)

    g = torch.Generator().manual_seed(1)
    h, w = cfg.latent_size
    latents = torch.randn(1, 4, t_frames, h, w, generator=g)  # NOVA's video latents (B, C, T, H, W)
    phi_states = torch.randn(1, cfg.text_tokens, cfg.text_hidden, generator=g)
    with torch.no_grad():
        start = time.time()
        text_theirs = nova.text_embed(phi_states)
        text_mine = ours.text_norm(ours.text_proj(phi_states))
        record("text embedding", text_theirs, text_mine, time.time() - start)

        start = time.time()
        # NOVA's video input: the BOS slot, then the T frames, each slot timed as in train_video
        c = nova.video_encoder.patch_embed(latents)  # (B, T, 360, d)
        bov = nova.mask_embed.bos_token.expand(1, 1, c.size(-2), -1)
        c = nova.video_pos_embed(torch.cat([bov, c], dim=1))[:, 1:]  # the frames' slots 1..T
        frames = latents.transpose(1, 2).flatten(0, 1)  # (T, C, H, W)
        tok = ours.frame_tokens(frames).unflatten(0, (1, t_frames))
        tok = ours.video_pos(tok, 0)  # O_n at slot n + 1 of T + 1
        record("frame patch embedding and absolute positions (slots 1..T of NOVA's clip)", c, tok,
               time.time() - start)

        start = time.time()
        # NOVA's clip: the BOS slot (its token at slot 0's positions), then the frames' slots
        clip = nova.video_pos_embed(torch.cat([bov, nova.video_encoder.patch_embed(latents)], dim=1))
        mask = nova.mask_embed.get_attn_mask(clip, text_theirs, persistent=False)  # NOVA's block-causal
        kt, ko = text_mine.shape[1], cfg.frame_tokens
        ours_mask = physical_mask(kt, ko, 0, t_frames, bos_tokens=ko)  # frames-only steps
        report["masks_equal"] = bool(torch.equal(ours_mask, mask == 0))
        print("PAR's mask (frames only, BOS slot) equals NOVA's:", report["masks_equal"], flush=True)
        for blk in nova.video_encoder.blocks:
            blk.attn.attn_mask = mask
        temporal_theirs = nova.video_encoder(clip.flatten(1, 2).clone(), text_theirs)
        prefix = ours.prefix(text_mine)  # the text, then PAR's BOS slot
        seq = torch.cat([prefix, tok.flatten(1, 2)], dim=1)
        temporal_mine = ours.temporal(seq, mask=ours_mask)[:, kt:]
        record("temporal encoder over [text; BOS slot; frames] (16 blocks, norm; PAR's mask)",
               temporal_theirs, temporal_mine, time.time() - start)

        start = time.time()  # NOVA's train_video: cat([c0, mixer(c0, c_rest)])
        c0, rest = temporal_theirs.view(1, t_frames + 1, ko, -1).split([1, t_frames], 1)
        mixed_theirs = nova.video_encoder.mixer(c0, rest)
        out = temporal_mine.view(1, t_frames + 1, ko, -1)
        mixed_mine = ours.mix(out[:, 0], out[:, 1:])
        record("video mixer, training path (the frames' conditions)", mixed_theirs, mixed_mine, time.time() - start)

        start = time.time()  # NOVA's generate_video: KV-cache on, states["*"] kept from t = 0
        for blk in nova.video_encoder.blocks:
            blk.attn.attn_mask = None
        nova.video_encoder.enable_kvcache(True)
        reference_theirs = nova.video_encoder(clip[:, 0].clone(), text_theirs)
        cached_theirs = [nova.video_encoder.mixer(reference_theirs, nova.video_encoder(clip[:, k].clone(), None))
                         for k in range(1, t_frames + 1)]
        nova.video_encoder.enable_kvcache(False)
        caches, reference_mine = ours.start_context(text_mine)
        cached_mine = []
        for k in range(t_frames):
            past = caches[0]["k"].shape[2]
            step_out = ours.temporal(tok[:, k], mask=torch.ones(ko, past + ko, dtype=torch.bool), caches=caches)
            cached_mine.append(ours.mix(reference_mine, step_out[:, None])[:, 0])
        record("video mixer, cached path (BOS reference kept; one slot at a time)",
               torch.stack(cached_theirs, 1), torch.stack(cached_mine, 1), time.time() - start)
        temporal_theirs = temporal_theirs[:, ko:]  # the frames' outputs, as before the mixer

        start = time.time()
        x = latents[:, :, 0]  # one frame (B, C, H, W)
        z = nova.image_encoder.patch_embed(x)  # (B, 1440, d)
        k = z.shape[1]
        keep = torch.randperm(k, generator=g)[: k // 5].sort().values  # 20% of the patches visible
        visible = torch.zeros(1, k, dtype=torch.bool)
        visible[0, keep] = True
        m = (~visible).float()[..., None]
        masked = z * (1 - m) + nova.mask_embed.mask_token * m
        cond = mixed_theirs[:, 0]  # the first frame's conditions, as NOVA mixes them
        spatial_theirs = nova.image_encoder((masked.clone(), keep.view(1, -1, 1)), cond)
        tokens = patchify(x, cfg.spatial_patch)
        spatial_mine = ours.spatial(tokens, cond, visible)
        record("spatial encoder/decoder (masked, 32 blocks, norm)", spatial_theirs, spatial_mine, time.time() - start)

        start = time.time()
        x_t = torch.randn(1, 4, h, w, generator=g)
        timestep = torch.tensor([637.5])
        mlp_theirs = nova.image_decoder(x_t, timestep, spatial_theirs)  # (B, 1440, p*p*C)
        out = ours.frame_mlp(patchify(x_t, cfg.spatial_patch), timestep.expand(1, k), spatial_theirs)
        p, ch = cfg.spatial_patch, cfg.latent_channels
        mlp_mine = out.unflatten(-1, (ch, p * p)).transpose(-1, -2).flatten(-2)  # (C,p,p) -> (p,p,C)
        record("diffusion MLP (3 adaLN blocks, head)", mlp_theirs, mlp_mine, time.time() - start)

    lines = ["# PAR's NOVA modules against NOVA's own code (same weights and inputs, float32)", "",
             f"Upstream: baaivision/NOVA at {commit}, NOVATransformer3DModel at the release's "
             f"transformer/config.json (video_mixer_rank 24), weights perturbed by N(0, 0.02), laid "
             f"out as the release and loaded into the paper-config PAR through its loader. {t_frames} "
             f"latent frames at {cfg.image_size[0]}x{cfg.image_size[1]}. PAR's mask over text, BOS "
             f"slot and frames-only steps equals NOVA's: {report['masks_equal']}.", "",
             "| module | max abs difference | largest value | seconds |", "|---|---|---|---|"]
    for name, row in report["modules"].items():
        lines.append(f"| {name} | {row['max_abs_diff']:.3g} | {row['max_abs']:.3g} | {row['seconds']} |")
    write_result("par_nova_parity", report, "\n".join(lines))
    print(json.dumps({k: v["max_abs_diff"] for k, v in report["modules"].items()}))


if __name__ == "__main__":
    main()
