"""ICRT (Max-Fu/icrt): the paper config's parameter count against the repository's module
definitions, the transformer against Llama's own formulation, the KV-cache of rollouts, the
loss that skips the prompt, temporal ensembling, and the ViT path with weights in timm's format."""

import math

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.errors import HarnessError
from methods.icrt import ICRTAdapter
from methods.icrt.model import LlamaTransformer


def _data(action_dim=8, qpos_dim=8, size=(32, 32)):
    stats = {k: {s: np.zeros(d) for s in ("mean", "std", "min", "max", "q01", "q99")}
             for k, d in (("actions", action_dim), ("obs_qpos", qpos_dim))}
    return DataInfo(action_dim, qpos_dim, size, "push it", stats)


def _mlp(i, o, h=None):  # timm's Mlp: hidden = in unless given, biases on
    h = h or i
    return i * h + h + h * o + o


def test_paper_config_counts_match_max_fu_icrt_with_our_observation():
    """92.17M trainable for Max-Fu/icrt@e0c9588 with one camera, 8-dim qpos and 8-dim actions
    (issue), from its modules: Llama (custom_transformer.json, llama.py), AttentionPool
    (encoders.py: latent, q, kv, proj, LayerNorm, Mlp x4), LayerNorm on the ViT tokens,
    proprio/action Mlps, the 768-128-16A decoder (icrt.py); plus the frozen ViT-B/16."""
    import timm

    d, hidden, layers, q, a = 768, 2048, 12, 8, 8
    llama = layers * (4 * d * d + 3 * d * hidden + 2 * d) + d
    pool = d + (d * d + d) + (d * 2 * d + 2 * d) + (d * d + d) + 2 * d + _mlp(d, d, 4 * d)
    state = 2 * d + _mlp(q, d) + pool
    expected = {"Transformer": llama, "State tokens": state, "Action encoder": _mlp(a, d),
                "Action decoder": _mlp(d, 16 * a, 128), "Image encoder": 0}
    expected["Total"] = sum(expected.values())
    assert llama == 84_953_856  # BASELINES.md
    cfg = resolve_config(ICRTAdapter, None)
    counts = ICRTAdapter.parameter_groups(cfg, _data(a, q))
    frozen = counts.pop("Image encoder (frozen)")
    assert counts == expected and counts["Total"] == 92_171_408 and round(counts["Total"] / 1e6, 2) == 92.17
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="")
    assert frozen == sum(p.numel() for p in vit.parameters()) - sum(p.numel() for p in vit.norm.parameters())
    assert round(frozen / 1e6, 1) == 85.8
    # our 9-dim qpos adds its share of the proprio MLP only
    nine = ICRTAdapter.parameter_groups(cfg, _data(a, 9))
    assert nine["Total"] - counts["Total"] == _mlp(9, d) - _mlp(8, d)


def _llama_reference(x, model: LlamaTransformer, n_heads, theta=10000.0):
    """Llama-2's forward as Max-Fu/icrt@e0c9588:icrt/models/policy/llama.py writes it: complex
    RoPE over consecutive channel pairs (torch.polar), causal softmax attention, SwiGLU."""
    B, T, D = x.shape
    hd = D // n_heads
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(T, hd // 2), torch.outer(torch.arange(T).float(), freqs))

    def rms(v, w, eps=1e-5):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def rotate(v):
        vc = torch.view_as_complex(v.float().reshape(*v.shape[:-1], -1, 2))
        return torch.view_as_real(vc * freqs_cis[None, :, None]).flatten(3)

    h = x
    for layer in model.layers:
        at = layer.attention
        xn = rms(h, layer.attention_norm.weight)
        xq, xk, xv = (m(xn).view(B, T, n_heads, hd) for m in (at.wq, at.wk, at.wv))
        xq, xk = rotate(xq), rotate(xk)
        scores = torch.einsum("bthd,bshd->bhts", xq, xk) / math.sqrt(hd)
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
        out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), xv).reshape(B, T, D)
        h = h + at.wo(out)
        ff = layer.feed_forward
        hn = rms(h, layer.ffn_norm.weight)
        h = h + ff.w2(torch.nn.functional.silu(ff.w1(hn)) * ff.w3(hn))
    return rms(h, model.norm.weight)


def test_transformer_computes_llamas_forward():
    torch.manual_seed(0)
    model = LlamaTransformer(dim=32, n_layers=2, n_heads=4, multiple_of=16, eps=1e-5, theta=10000.0)
    with torch.no_grad():
        for p in model.parameters():  # RMSNorm weights away from 1, so they matter
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(model(x), _llama_reference(x, model, 4), rtol=1e-4, atol=1e-5)


def test_the_kv_cache_gives_the_full_forward():
    """A rollout feeds tokens a few at a time; each output must equal the full causal pass."""
    torch.manual_seed(1)
    model = LlamaTransformer(dim=32, n_layers=3, n_heads=2, multiple_of=16, eps=1e-5, theta=10000.0).eval()
    x = torch.randn(1, 11, 32)
    full = model(x)
    caches, pos, outs = model.new_cache(), 0, []
    for n in (5, 1, 2, 1, 2):  # a prompt, then (state) and (action, state) pairs
        outs.append(model(x[:, pos:pos + n], pos, caches))
        pos += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


def _smoke_model(**over):
    cfg = resolve_config(ICRTAdapter, "smoke", overrides=over)
    torch.manual_seed(0)
    return ICRTAdapter(cfg, _data(qpos_dim=9)), cfg


def test_prompt_mask_starts_at_a_demo_boundary_but_never_the_first():
    model, _ = _smoke_model()
    starts = torch.zeros(3, 12, dtype=torch.bool)
    starts[0, [0, 3, 7, 10]] = True  # boundaries (s > 0): 3, 7, 10 -> the cut is 7 or 10
    starts[1, 5] = True  # one boundary: the cut is there
    cuts = set()
    for seed in range(40):
        torch.manual_seed(seed)
        mask = model._loss_mask(starts)
        cut = int(torch.nonzero(mask[0])[0])
        cuts.add(cut)
        assert mask[0, cut:].all() and not mask[0, :cut].any()
        assert mask[1].tolist() == [0.0] * 5 + [1.0] * 7
        assert not mask[2].any()  # no boundary, no loss (upstream's create_prompt_mask)
    assert cuts == {7, 10}


def test_the_loss_ignores_the_prompt_steps_targets(tmp_path):
    """Only steps after the prompt are supervised. With demo boundaries at steps 4 and 8 the
    prompt ends at 8 (never the first boundary): changing the targets of steps 0-7 (not the
    action fed as a token, which is the chunk's first) leaves the loss unchanged; changing
    those of the last step does not."""
    model, cfg = _smoke_model()
    B, S, L, A = 2, 12, cfg.num_pred_steps, 8
    starts = torch.zeros(B, S, dtype=torch.bool)
    starts[:, [4, 8]] = True
    batch = {"frames": torch.rand(B, S, 3, 32, 32), "qpos": torch.randn(B, S, 9),
             "actions": torch.randn(B, S, L, A), "episode_start": starts}

    def loss(b):
        torch.manual_seed(0)
        return model(b)[0]

    base = loss(batch)
    prompt_changed = dict(batch, actions=batch["actions"].clone())
    prompt_changed["actions"][:, :8, 1:] += 5.0
    torch.testing.assert_close(loss(prompt_changed), base, rtol=0, atol=0)
    target_changed = dict(batch, actions=batch["actions"].clone())
    target_changed["actions"][:, -1, 1:] += 5.0
    assert loss(target_changed) > base


def test_rollout_tokens_are_the_training_layout():
    """prompt() then act() build the sequence training sees: the demo's (state, action) pairs
    (its last observation left out), then the rollout's states with the executed actions
    between them; each act's chunk equals _predict's at that step of the whole sequence
    (evaluation crop, no augmentation)."""
    model, cfg = _smoke_model()
    model.eval()
    T, L = 5, cfg.num_pred_steps
    g = torch.Generator().manual_seed(0)
    demo = {"frames": torch.rand(T + 1, 3, 32, 32, generator=g), "qpos": torch.randn(T + 1, 9, generator=g),
            "actions": torch.randn(T, 8, generator=g), "seed": 0}
    obs = [{"frame": torch.rand(3, 32, 32, generator=g), "qpos": torch.randn(9, generator=g)} for _ in range(3)]
    chunks = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x)
            chunks.append(out.detach().clone())
            return out

    model.reset()
    model.prompt([demo])
    model.action_decoder = Spy(model.action_decoder)
    executed = [model.act(o)[0] for o in obs]
    frames = torch.cat([demo["frames"][:T], torch.stack([o["frame"] for o in obs])])[None]
    qpos = torch.cat([demo["qpos"][:T], torch.stack([o["qpos"] for o in obs])])[None]
    actions = torch.cat([demo["actions"], torch.stack(executed)])[None]
    with torch.no_grad():
        pred = model._predict(frames, qpos, actions, model._eval_thetas(T + 3, "cpu"))[0]
    assert len(chunks) == 3 + 1  # _predict decodes every step at once
    for k in range(3):
        torch.testing.assert_close(chunks[k].view(L, -1), pred[T + k], rtol=1e-4, atol=1e-5)


def test_temporal_ensembling_weighs_newer_chunks_more():
    """Upstream's get_action_eval: the chunks covering this step, weights exp(0.05 i), i = 0
    oldest; the executed (ensembled) action is the next action token."""
    model, cfg = _smoke_model()
    model.eval()
    L = cfg.num_pred_steps
    chunks = [torch.randn(L, 8) for _ in range(L + 2)]
    fed = []

    class Scripted(torch.nn.Module):  # the decoder's outputs, one chunk per call
        def __init__(self):
            super().__init__()
            self.calls = iter(chunks)

        def forward(self, out):
            return next(self.calls).flatten()

    class Spy(torch.nn.Module):  # the action encoder, remembering what it is fed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, a):
            fed.append(a.clone())
            return self.inner(a)

    model.action_decoder = Scripted()
    model.action_encoder = Spy(model.action_encoder)
    obs = {"frame": torch.rand(3, 32, 32), "qpos": torch.randn(9), "instruction": "", "step": 0}
    model.reset()
    for t in range(L + 2):
        action = model.act(obs)[0]
        covering = [(i, chunks[i][t - i]) for i in range(max(0, t - L + 1), t + 1)]
        w = torch.tensor([math.exp(0.05 * k) for k in range(len(covering))])
        expected = sum(wk * c for wk, (_, c) in zip(w / w.sum(), covering))
        torch.testing.assert_close(action, expected)
        if t > 0:
            torch.testing.assert_close(fed[-1][0], previous)
        previous = action


def test_vit_weights_load_frozen_from_a_local_timm_checkpoint(tmp_path):
    """The ViT path with a stand-in saved by timm's own ViT class (a tiny variant, same names):
    its values land in the encoder, frozen; the file is recorded as not action-pretrained."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(32, 32))
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, _ = _smoke_model(vision_encoder="vit_tiny_patch16_224", vision_weights=str(path))
    loaded = model.encoder.model.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith("norm."):  # the final norm is replaced by our trainable LayerNorm
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(id(p) not in {id(q) for g in model.optim_groups() for q in g["params"]}
               for p in model.encoder.parameters())
    assert [(f.path, f.action_pretrained) for f in model.pretrained_files] == [(str(path), False)]
    model.train()
    assert not model.encoder.model.training  # stays in eval mode
    assert model.act({"frame": torch.rand(3, 32, 32), "qpos": torch.randn(9)}).shape == (1, 8)


def test_missing_or_foreign_vit_weights_are_refused_by_path(tmp_path):
    from safetensors.torch import save_file

    missing = tmp_path / "nope.pth"
    with pytest.raises(HarnessError, match="nope.pth.*vision_weights"):
        _smoke_model(vision_encoder="vit_tiny_patch16_224", vision_weights=str(missing))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(foreign))
    with pytest.raises(HarnessError, match="foreign.safetensors is not a checkpoint of vit_tiny_patch16_224"):
        _smoke_model(vision_encoder="vit_tiny_patch16_224", vision_weights=str(foreign))
