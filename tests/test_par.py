"""PAR-specific checks: Table 1 sizes, the Fig. 3 mask, KV-cache equality, which output
predicts which token, pretrained-weight errors, LoRA, predicted frames."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.dataset import DemoDataset, write_dataset
from harness.windows import WindowDataset
from methods.par import PAPER_PARAMETER_COUNTS_M, PARAdapter
from methods.par.layers import physical_mask

from conftest import SYNTH_META, synthetic_episode

STATS = {key: {s: np.zeros(dim) if s == "mean" else np.ones(dim) for s in ("mean", "std", "min", "max", "q01", "q99")}
         for key, dim in (("actions", 8), ("obs_qpos", 9))}
DATA = DataInfo(8, 9, (32, 32), "push the cube", STATS)


def _smoke(variant=None, **over):
    torch.manual_seed(0)
    return PARAdapter(resolve_config(PARAdapter, "smoke", variant, over), DATA)


@pytest.mark.parametrize("variant", [None, "par_noar", "par_discrete"])
def test_table1_parameter_counts_at_the_paper_config(variant):
    counts = PARAdapter.parameter_groups(resolve_config(PARAdapter, None, variant), DATA)
    if variant is None:  # PAR-Full: every module of Table 1 within 2%
        for group, paper_m in PAPER_PARAMETER_COUNTS_M.items():
            assert counts[group] / 1e6 == pytest.approx(paper_m, rel=0.02), group
    elif variant == "par_noar":  # no causal transformer, no frame de-tokenizer
        assert counts["Frame-DeTokenizer"] == 0 and counts["Causal-Transformer"] < 5e6
    else:  # the generative action de-tokenizer replaced by a ~1M MLP
        assert counts["Action-DeTokenizer"] < 2e6 and counts["Causal-Transformer"] > 6e8


def test_params_command_prints_the_table1_groups():
    out = subprocess.run([sys.executable, "-m", "harness", "params", "--method", "par", "--scale", "paper"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for group in ("Action-Tokenizer", "Action-DeTokenizer", "Frame-DeTokenizer", "Causal-Transformer", "Total"):
        assert group in out.stdout
    assert "608.72M" in out.stdout and "663.27M" in out.stdout  # NOVA with its video mixer and BOS token


def test_mask_matches_figure_3():
    # Fig. 3's illustration: 3 text tokens; per step 2 frame and 2 action tokens; 2 steps
    m = physical_mask(3, 2, 2, 2).int().tolist()
    expected = [
        # t t t  f0 f0 a0 a0  f1 f1 a1 a1
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # text
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # frame of step 0: text + own frame (bidirectional)
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],  # action 0 of step 0: own frame (IK path) + causal
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # frame of step 1: all of step 0 + own frame
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # actions of step 1
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
    assert m == expected


def test_mask_blocks_at_scale():
    kt, ko, L, n = 4, 6, 8, 5
    mask = physical_mask(kt, ko, L, n)
    step = ko + L
    frames = lambda s: slice(kt + s * step, kt + s * step + ko)  # noqa: E731
    actions = lambda s: slice(kt + s * step + ko, kt + (s + 1) * step)  # noqa: E731
    for s in range(n):
        assert mask[frames(s), frames(s)].all()
        assert not mask[frames(s), actions(s)].any()  # frames never see their own actions
        assert mask[actions(s), frames(s)].all()
        assert torch.equal(mask[actions(s), actions(s)], torch.tril(torch.ones(L, L, dtype=torch.bool)))
        for later in range(s + 1, n):
            assert not mask[kt + s * step:kt + (s + 1) * step, kt + later * step:kt + (later + 1) * step].any()
        for earlier in range(s):
            assert mask[kt + s * step:kt + (s + 1) * step, kt + earlier * step:kt + (earlier + 1) * step].all()
    assert mask[:, :kt].all() and not mask[:kt, kt:].any()


def _step_inputs(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    text = torch.randn(1, cfg.text_tokens, cfg.width, generator=g)
    frames = torch.randn(1, n, cfg.frame_tokens, cfg.width, generator=g)
    actions = torch.randn(1, n, cfg.action_chunk_len, cfg.width, generator=g)
    return text, frames, actions


@pytest.mark.parametrize("mixer", [24, None], ids=["nova-mixer", "no-mixer"])
def test_kv_cache_equals_full_recompute_over_a_rollout(mixer):
    adapter = _smoke(temporal_depth=3, context_steps=6, video_mixer_rank=mixer)
    model = adapter.model.eval()
    n = 6
    text, frames, actions = _step_inputs(model, n)
    with torch.no_grad():
        full_f, full_a = model.run_temporal(text, frames, actions)
        caches, reference = model.start_context(text)
        assert (reference is None) == (mixer is None)
        for s in range(n):
            f, a = model.extend_steps(caches, s, frames[:, s:s + 1], actions[:, s:s + 1], reference)
            assert (f[:, 0] - full_f[:, s]).abs().max() <= 1e-5
            assert (a[:, 0] - full_a[:, s]).abs().max() <= 1e-5
        # several steps in one pass (the window re-encoding its kept steps), after two cached ones
        caches, reference = model.start_context(text)
        model.extend_steps(caches, 0, frames[:, :2], actions[:, :2], reference)
        f, a = model.extend_steps(caches, 2, frames[:, 2:], actions[:, 2:], reference)
        assert (f - full_f[:, 2:]).abs().max() <= 1e-5 and (a - full_a[:, 2:]).abs().max() <= 1e-5


def test_novas_mixer_conditions_every_frame_on_the_bos_slots_output():
    """NOVA's mixer (transformer_3d.py, train_video: ``cat([c0, mixer(c0, c_rest)])``;
    normalization.py, AdaLayerNorm with eps=None): each frame's condition is the BOS slot's
    output c0 scaled and shifted by a rank-r projection of the frame's own output, written out
    here from NOVA's formula; c0 depends on the text alone, so one reference serves a rollout."""
    model = _smoke(temporal_depth=2, video_mixer_rank=3).model.eval()
    text, frames, actions = _step_inputs(model, 3)
    with torch.no_grad():
        cond, _ = model.run_temporal(text, frames, actions)
        prefix = model.prefix(text)
        kt, ko, L, d = text.shape[1], model.cfg.frame_tokens, model.cfg.action_chunk_len, model.cfg.width
        seq = torch.cat([prefix, torch.cat([model.video_pos(frames, 0), actions], 2).flatten(1, 2)], 1)
        out = model.temporal(seq, mask=physical_mask(kt, ko, L, 3, ko),
                             rope=model.step_rope(0, 3, prefix.shape[1], seq.device))
        c0 = out[:, kt:kt + ko]
        raw = out[:, kt + ko:].reshape(1, 3, ko + L, d)[:, :, :ko]
        lora, proj = model.mixer.lora.weight, model.mixer.proj
        stats = torch.nn.functional.linear(torch.nn.functional.silu(raw) @ lora.T, proj.weight, proj.bias)
        expected = c0[:, None] * (1 + stats[..., :d]) + stats[..., d:]
        assert (cond - expected).abs().max() <= 1e-5
        assert lora.shape == (3, d) and proj.weight.shape == (2 * d, 3)
        # the reference is the text's alone: other frames and actions leave it as it is
        _, ref = model.start_context(text)
        assert torch.allclose(ref, c0, atol=1e-6)
        assert not torch.allclose(model.start_context(text + 1)[1], c0)
    # the text and the BOS slot see each other and nothing later; every step sees both
    mask = physical_mask(2, 3, 2, 2, bos_tokens=3)
    assert mask[:5, :5].all() and not mask[:5, 5:].any() and mask[5:, :5].all()
    assert torch.equal(physical_mask(2, 3, 2, 2, 0), physical_mask(2, 3, 2, 2))
    # with frames only, NOVA's own mask (embeddings.py, get_attn_mask): a token of group g
    # sees every group <= g, the text and the BOS slot being group 0
    group = torch.tensor([0, 0] + [0] * 3 + [1] * 3 + [2] * 3)
    assert torch.equal(physical_mask(2, 3, 0, 2, bos_tokens=3), group[:, None] >= group[None, :])


@pytest.mark.parametrize("mixer", [24, None], ids=["nova-mixer", "no-mixer"])
def test_the_window_context_equals_a_teacher_forced_pass_over_the_last_steps_at_every_call(mixer):
    adapter = _smoke(temporal_depth=3, video_mixer_rank=mixer).eval()  # context_steps 3 at the smoke scale
    model, full = adapter.model, adapter.config.context_steps
    text, frames, actions = _step_inputs(model, 7)
    adapter.reset()
    with torch.no_grad():
        for n in range(7):
            f, a = adapter.advance(text, frames[:, n], actions[:, n])
            lo = max(0, n + 1 - full)
            ref_f, ref_a = model.run_temporal(text, frames[:, lo:n + 1], actions[:, lo:n + 1])
            assert (f - ref_f[:, -1]).abs().max() <= 1e-5 and (a - ref_a[:, -1]).abs().max() <= 1e-5, n


def test_rollout_context_modes_agree_until_the_window_is_full_and_reuse_keeps_the_cache_bounded():
    """``window`` re-encodes the kept steps once the context is full; ``reuse`` drops the
    oldest step's keys and values: the same actions while the context fills, then an
    approximation whose cache never grows past the window."""
    chunks, sizes = {}, {}
    for mode in ("window", "reuse"):
        adapter = _smoke(rollout_context=mode).eval()
        adapter.reset()
        chunks[mode], sizes[mode] = [], []
        for n in range(6):
            torch.manual_seed(n)
            frame = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(n))
            chunks[mode].append(adapter.act({"frame": frame, "qpos": torch.zeros(9), "instruction": "push",
                                             "step": 8 * n}))
            sizes[mode].append(adapter._caches[0]["k"].shape[2])
    full = adapter.config.context_steps  # 3 at the smoke scale
    step = adapter.config.frame_tokens + adapter.config.action_chunk_len
    for n in range(full):
        assert torch.equal(chunks["window"][n], chunks["reuse"][n])
    assert not torch.allclose(chunks["window"][full], chunks["reuse"][full])
    assert sizes["reuse"] == sizes["window"] and max(sizes["reuse"]) == sizes["reuse"][0] + (full - 1) * step
    with pytest.raises(ValueError, match="rollout_context must be window or reuse"):
        _smoke(rollout_context="grow")


def test_output_of_step_n_depends_only_on_steps_up_to_n():
    """The output at step n's tokens conditions P_{n+1}: it must not see step n+1 or later,
    and it must see step n (the frame outputs feed the actions of the same step)."""
    model = _smoke().model.eval()
    n = 3
    text, frames, actions = _step_inputs(model, n)
    with torch.no_grad():
        f0, a0 = model.run_temporal(text, frames, actions)
        frames2 = frames.clone()
        frames2[:, 2] += 1.0  # change step 2's frame
        f1, a1 = model.run_temporal(text, frames2, actions)
        actions2 = actions.clone()
        actions2[:, 1, -1] += 1.0  # change the last action token of step 1
        f2, a2 = model.run_temporal(text, frames, actions2)
    assert torch.equal(f0[:, :2], f1[:, :2]) and torch.equal(a0[:, :2], a1[:, :2])  # past unaffected
    assert not torch.allclose(a0[:, 2], a1[:, 2])  # actions of step 2 see step 2's frame (IK path)
    assert torch.equal(f0[:, 1], f2[:, 1])  # frames do not see their step's actions
    assert torch.equal(a0[:, 1, :-1], a2[:, 1, :-1])  # earlier actions do not see later ones
    assert not torch.allclose(f0[:, 2], f2[:, 2])  # the next step sees the whole previous step


def test_training_window_alignment(tmp_path):
    """chunk k of a window holds the L actions leading to frame k; chunk 0 at the episode
    start is padding (replaced by BOA)."""
    path = write_dataset(tmp_path / "d.h5", [synthetic_episode(0, 40, size=(32, 32))],
                         dict(SYNTH_META, image_size=[32, 32]))
    cfg = resolve_config(PARAdapter, "smoke")
    L, N = cfg.action_chunk_len, cfg.context_steps
    windows = WindowDataset(DemoDataset(path), PARAdapter.window_spec(cfg))
    s = windows[10]  # anchor t = 10
    assert s["obs_steps"].tolist() == [10 + k * L for k in range(N + 1)]
    for k in range(N + 1):  # synthetic actions encode their step: action[t] = t (+ dim/10)
        np.testing.assert_allclose(s["actions"][k, :, 0], np.arange(10 + (k - 1) * L, 10 + k * L))
    assert windows[0]["action_is_pad"][0].all() and not windows[L]["action_is_pad"][0].any()


def test_training_step_and_rollout_with_predicted_frames():
    adapter = _smoke()
    frames = torch.rand(2, 4, 3, 32, 32)
    actions = torch.randn(2, 4, 8, 8)
    pads = torch.zeros(2, 4, 8, dtype=torch.bool)
    pads[0, 0] = True  # episode start: BOA
    loss, logs = adapter({"frames": frames, "actions": actions, "obs_is_pad": torch.zeros(2, 4, dtype=torch.bool),
                          "action_is_pad": pads, "instruction": ["push", "push"], "qpos": torch.zeros(2, 4, 9)})
    assert torch.isfinite(loss) and {"loss_frames", "loss_actions"} <= set(logs)
    adapter.eval()
    adapter.record_predictions = True
    adapter.reset()
    for step in range(5):  # more steps than context_steps (3): the context slides
        chunk = adapter.act({"frame": torch.rand(3, 32, 32), "qpos": torch.zeros(9), "instruction": "push", "step": step})
        assert chunk.shape == (8, 8)
    assert len(adapter.predicted_frames) == 5 and adapter.predicted_frames[0].shape == (3, 32, 32)
    assert len(adapter._history) == 3


def test_missing_pretrained_weights_name_the_path(tmp_path):
    cfg = resolve_config(PARAdapter, "smoke", None, dict(random_init_vae=None, nova_path=str(tmp_path / "nova")))
    with pytest.raises(FileNotFoundError, match=r"nova.*does not exist. Download the NOVA-0.6B video checkpoint"):
        PARAdapter(cfg, DATA)
    cfg = resolve_config(PARAdapter, "smoke", None, dict(random_init_phi=None, phi_path=str(tmp_path / "phi")))
    with pytest.raises(FileNotFoundError, match=r"phi.*Phi-2 in transformers format"):
        PARAdapter(cfg, DATA)


def _tiny_phi_folder(folder):
    """A random Phi-2-shaped model and a word-level tokenizer saved in transformers format."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PhiConfig, PhiModel, PreTrainedTokenizerFast

    from methods.par import _TINY_PHI

    words = ["[UNK]", "push", "the", "cube"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(1)
    PhiModel(PhiConfig(**_TINY_PHI)).save_pretrained(folder)


def _nova_folder(folder, shapes):
    """A NOVA-layout folder: a random diffusers VAE in vae/ and, in transformer/, one random
    tensor per NOVA name of ``shapes`` (NOVA name -> shape). Returns (tensors, the VAE)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from methods.par import _TINY_VAE

    torch.manual_seed(2)
    vae = AutoencoderKL(**_TINY_VAE)
    vae.save_pretrained(folder / "vae")
    tensors = {name: torch.randn(shape) for name, shape in shapes.items()}
    (folder / "transformer").mkdir()
    save_file(tensors, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    return tensors, vae


def test_pretrained_phi_loads_from_a_local_folder(tmp_path):
    """Phi and its tokenizer are read from a folder in transformers' format, and the file read
    is recorded for the rows. NOVA's transformer and VAE are tested in their real formats in
    tests/test_par_nova.py and tests/test_par_vae.py."""
    _tiny_phi_folder(tmp_path / "phi")
    adapter = _smoke(random_init_phi=None, phi_path=str(tmp_path / "phi"))
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in adapter.pretrained_files] == ["phi/model.safetensors"]
    assert not any(f.action_pretrained for f in adapter.pretrained_files)  # Phi never saw robot actions
    assert adapter.model.frozen.tokenizer("push the cube")["input_ids"] == [1, 2, 3]
    chunk = adapter.act({"frame": torch.rand(3, 32, 32), "qpos": torch.zeros(9),
                         "instruction": "push the cube", "step": 0})
    assert chunk.shape == (8, 8) and torch.isfinite(chunk).all()


def test_nova_weights_of_another_shape_are_refused_by_name(tmp_path):
    _nova_folder(tmp_path / "nova", {"video_encoder.blocks.0.attn.qkv.weight": (5, 7)})
    with pytest.raises(ValueError, match=r"do not fit this PAR config.*video_encoder\.blocks\.0\.attn\.qkv"):
        _smoke(random_init_vae=None, nova_path=str(tmp_path / "nova"))


def test_lora_trains_only_adapters_in_the_transformer():
    full = _smoke()
    lora = _smoke(finetune="lora", lora_rank=4)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert not any(n.startswith("model.temporal") and "lora_" not in n for n in trainable)
    assert any(n.startswith("model.action_dit") for n in trainable)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(lora) < count(full)


def test_pixel_frame_codec_decodes_exactly_and_checks_its_channels():
    # the reduced preset's stand-in for a pretrained VAE: predicted latents must map back to pixels
    adapter = _smoke(frame_codec="pixels", vae_stride=4, latent_channels=48, temporal_patch=2,
                     spatial_patch=2, random_init_vae=None)
    assert adapter.model.frozen.vae is None and adapter.load_report is None  # no NOVA weights wanted
    frames = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    latents = adapter.model.frame_latents(frames)
    assert latents.shape == (2, 48, 8, 8)
    assert torch.allclose(adapter.model.frozen.decode_frames(latents), frames, atol=1e-6)
    with pytest.raises(ValueError, match=r"latent_channels must be 3 \* vae_stride\*\*2 = 48"):
        _smoke(frame_codec="pixels", vae_stride=4, latent_channels=4)
    with pytest.raises(ValueError, match="frame_codec must be vae or pixels"):
        _smoke(frame_codec="jpeg")


def test_predicting_frames_leaves_the_actions_unchanged():
    # the Fig. 4 rollout must be the rollout that was scored
    adapter = _smoke()
    adapter.eval()
    obs = [{"frame": torch.rand(3, 32, 32), "qpos": torch.zeros(9), "instruction": "push", "step": s}
           for s in range(4)]
    chunks = _acts_with_and_without(adapter, "record_predictions", obs, seed=7)
    assert len(adapter.predicted_frames) == 4
    assert all(torch.equal(a, b) for a, b in zip(chunks[False], chunks[True]))


def test_frame_v_prediction_trains_and_samples():
    adapter = _smoke(frame_prediction_type="v_prediction")
    m = adapter.model
    x, noise, t = torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.tensor([[3] * 5, [900] * 5])
    noisy, v = m.add_noise(x, noise, t), m.velocity(x, noise, t)
    abar = m.noise.alphas_cumprod[t][..., None]
    # what a sampler recovers from the exact v: the clean tokens
    torch.testing.assert_close(abar.sqrt() * noisy - (1 - abar).sqrt() * v, x, atol=1e-5, rtol=0)
    # smoke: 32x32 frames -> 4x4x4 latents, one frame token of width 48
    assert torch.isfinite(m.frame_loss(torch.randn(2, 1, 48), torch.randn(2, 4, 4, 4), torch.ones(2)))
    prefix = torch.randn(1, 1, 48)
    assert m.sample_frame(prefix).shape == (1, 4, 4, 4)
    # the DDIM step count: the config's by default, another one when asked
    samples = {}
    for steps in (None, m.cfg.frame_sampling_steps, m.cfg.frame_sampling_steps + 3):
        torch.manual_seed(0)
        samples[steps] = m.sample_frame(prefix, ddim_steps=steps)
    assert torch.equal(samples[None], samples[m.cfg.frame_sampling_steps])
    assert not torch.equal(samples[None], samples[m.cfg.frame_sampling_steps + 3])
    with pytest.raises(ValueError, match="frame_prediction_type must be one of epsilon, v_prediction, sample, flow"):
        _smoke(frame_prediction_type="x0")
    with pytest.raises(ValueError, match="'checkpoint' reads the objective from NOVA's checkpoint"):
        _smoke(frame_prediction_type="checkpoint")  # smoke has no NOVA folder


def test_frame_flow_matching_trains_and_samples():
    """NOVA's flow matching: the sampler integrates the velocity the loss trains (noise - x)."""
    from methods.par.model import _frame_sampler

    adapter = _smoke(frame_prediction_type="flow", frame_flow_shift=3.0)
    m = adapter.model
    sigma, t = m.flow_times((4000,), "cpu")
    assert 0 < float(sigma.min()) and float(sigma.max()) <= 1 and torch.allclose(t, sigma * 1000)
    shifted = 3 * 0.5 / (1 + 2 * 0.5)  # the shift moves the median time towards noise (0.5 -> 0.75)
    assert float(sigma.median()) == pytest.approx(shifted, abs=0.02)
    x0, noise = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    sched = _frame_sampler(m.cfg)
    sched.set_timesteps(7)
    x = noise.clone()
    for step in sched.timesteps:  # the exact velocity at every step carries noise to the data
        x = sched.step(noise - x0, step, x).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)
    assert torch.isfinite(m.frame_loss(torch.randn(2, 1, 48), torch.randn(2, 4, 4, 4), torch.ones(2)))
    assert m.sample_frame(torch.randn(1, 1, 48)).shape == (1, 4, 4, 4)


def _acts_with_and_without(adapter, flag: str, observations, seed: int) -> dict[bool, list]:
    """The chunks of one rollout over ``observations`` with the recording ``flag`` off, then on
    (the flag is left on), from the same seed."""
    chunks = {}
    for record in (False, True):
        setattr(adapter, flag, record)
        adapter.reset()
        torch.manual_seed(seed)
        chunks[record] = [adapter.act(o) for o in observations]
    return chunks


def test_recorded_attention_is_the_rollout_passes_own_and_leaves_actions_alone():
    """Fig. 5's material: per act call, the action tokens' attention weights of every layer over
    the keys of that call's own pass; rows sum to 1, the mask holds, the actions are unchanged."""
    model = _smoke()
    model.eval()
    cfg = model.config
    obs = [{"frame": torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(k)), "qpos": torch.zeros(9),
            "instruction": "push the cube", "step": k} for k in range(cfg.context_steps + 2)]
    runs = _acts_with_and_without(model, "record_attention", obs, seed=0)
    for plain, recorded in zip(runs[False], runs[True]):
        torch.testing.assert_close(plain, recorded, rtol=0, atol=0)
    maps = model.attention_maps
    assert len(maps) == len(obs)
    ko, L = cfg.frame_tokens, cfg.action_chunk_len
    for call, m in enumerate(maps):
        assert m["steps"] == min(call + 1, cfg.context_steps)
        w = m["weights"]
        prefix = m["num_text"] + m["bos_tokens"]  # the smoke preset has NOVA's BOS slot (the mixer)
        assert m["bos_tokens"] == ko
        assert w.shape == (cfg.temporal_depth, cfg.num_heads, L, prefix + m["steps"] * (ko + L))
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        own = prefix + (m["steps"] - 1) * (ko + L) + ko  # this step's action tokens
        for j in range(L):  # action j sees its own step's actions up to itself, not after
            assert (w[:, :, j, own + j + 1:] == 0).all() and (w[:, :, j, own:own + j + 1] > 0).any()
        assert (w[..., :prefix] > 0).all()  # and the instruction and the BOS slot
        assert m["grid"][0] * m["grid"][1] == ko
    model.record_attention = False
    model.reset()
    model.act(obs[0])
    assert model.attention_maps == [] and all(b.attn.record is None for b in model.model.temporal.blocks)


def test_a_run_from_before_the_mixer_loads_without_one(tmp_path):
    """Run folders written before ``video_mixer_rank`` existed had no mixer and no BOS slot."""
    from harness.runs import load_trained

    adapter = _smoke(video_mixer_rank=None)
    config = dataclasses.asdict(adapter.config)
    config.pop("video_mixer_rank"), config.pop("frame_scheduler")
    run_config = {"method": "par", "method_config": config, "data_info": DATA.to_dict(),
                  "normalization": dict(PARAdapter.normalization), "checksums": "none"}
    upgraded = PARAdapter.upgrade_run_config(run_config)
    assert upgraded["method_config"]["video_mixer_rank"] is None
    assert PARAdapter.upgrade_run_config(upgraded) == upgraded
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "run_config.json").write_text(json.dumps(run_config, default=list))
    loaded, _ = load_trained(tmp_path)
    assert loaded.model.bos_tokens == 0 and not hasattr(loaded.model, "mixer")


@pytest.mark.parametrize("variant", [None, "par_noar"])
def test_qpos_switch_makes_the_chunk_read_the_joint_positions_and_is_off_by_default(variant):
    def chunks(adapter, qpos_value):
        adapter.eval()
        adapter.reset()
        torch.manual_seed(3)
        frame = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
        return [adapter.act({"frame": frame, "qpos": torch.full((9,), qpos_value), "instruction": "push", "step": s})
                for s in range(2)]

    off = _smoke(variant)
    assert not hasattr(off.model, "qpos_embed")
    assert all(torch.equal(a, b) for a, b in zip(chunks(off, 0.0), chunks(off, 2.0)))
    on = _smoke(variant, qpos_in_action_tokens=True)
    # it starts as a no-op (zero init) ...
    assert all(torch.equal(a, b) for a, b in zip(chunks(on, 0.0), chunks(on, 2.0)))
    # ... and once trained, the chunk depends on qpos
    torch.nn.init.normal_(on.model.qpos_embed.weight)
    assert not any(torch.allclose(a, b) for a, b in zip(chunks(on, 0.0), chunks(on, 2.0)))
    # the embedding counts with the action tokenizer, the paper config's total unchanged
    groups = PARAdapter.parameter_groups(resolve_config(PARAdapter, "smoke", variant, dict(qpos_in_action_tokens=True)),
                                         DATA)
    base = PARAdapter.parameter_groups(resolve_config(PARAdapter, "smoke", variant), DATA)
    assert groups["Action-Tokenizer"] - base["Action-Tokenizer"] == 9 * 48 + 48
    assert groups["Total"] - base["Total"] == 9 * 48 + 48
    # training reads the window's qpos
    batch = {"frames": torch.rand(2, 4, 3, 32, 32), "actions": torch.randn(2, 4, 8, 8),
             "obs_is_pad": torch.zeros(2, 4, dtype=torch.bool), "action_is_pad": torch.zeros(2, 4, 8, dtype=torch.bool),
             "instruction": ["push", "push"], "qpos": torch.randn(2, 4, 9)}
    on.train()
    loss, _ = on(batch)
    loss.backward()
    assert on.model.qpos_embed.weight.grad.abs().sum() > 0
