"""Training PAR on one GPU: frame latents cached per dataset (``harness features``), the
instruction's text states cached with Phi released, and gradient checkpointing."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.dataset import DemoDataset, encode_image, write_dataset
from harness.features import FeatureCache, FeatureError, write_features
from harness.train import BatchPreparer, collate
from harness.windows import WindowDataset
from methods.par import PARAdapter

from conftest import SYNTH_META, synthetic_episode

STATS = {key: {s: np.zeros(dim) if s == "mean" else np.ones(dim) for s in ("mean", "std", "min", "max", "q01", "q99")}
         for key, dim in (("actions", 8), ("obs_qpos", 9))}


def _dataset(path, seeds=((0, 30), (1, 20))):
    """Frames with texture (a random picture per step), 32x32 as the smoke preset's."""
    episodes = []
    for seed, n in seeds:
        ep = synthetic_episode(seed, n, size=(32, 32))
        rng = np.random.default_rng(seed)
        ep.frames = [encode_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "png") for _ in ep.frames]
        episodes.append(ep)
    return write_dataset(path, episodes, dict(SYNTH_META, image_size=[32, 32]))


def _cfg(**over):
    return resolve_config(PARAdapter, "smoke", None, over)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    data_path = _dataset(folder / "data.h5")
    spec = PARAdapter.frame_features(_cfg())
    feats = write_features(spec, data_path, folder / "features.h5", progress=False)
    return data_path, feats


def test_cached_latents_are_the_vae_latents_of_each_frame(cached):
    data_path, feats = cached
    cfg = _cfg()
    ds = DemoDataset(data_path)
    cache = FeatureCache(feats, PARAdapter.frame_features(cfg), ds)
    adapter = PARAdapter(cfg, DataInfo(8, 9, (32, 32), ds.instruction, STATS))
    rows = np.array([0, 7, 7, 31, 3])  # any order, repeats
    frames = torch.as_tensor(np.stack([ds.frame(int(r)) for r in rows])).permute(0, 3, 1, 2).float() / 255
    online = adapter.model.frame_latents(frames)
    stored = torch.as_tensor(cache.rows(rows))
    assert stored.shape == online.shape == (5, 4, 4, 4)
    scale = online.abs().max()
    assert (stored - online).abs().max() <= 1e-3 * scale  # float16 storage
    assert not torch.equal(stored[0], stored[1])


def test_training_from_the_cache_matches_training_from_frames(cached):
    """The same windows, once with decoded frames and once with cached latents, give the same
    loss (up to float16 storage) through the adapter's forward."""
    data_path, feats = cached
    cfg = _cfg()
    ds = DemoDataset(data_path)
    spec = PARAdapter.window_spec(cfg)
    info = DataInfo(8, 9, (32, 32), ds.instruction, STATS)
    adapter = PARAdapter(cfg, info)
    prepare = BatchPreparer(info, PARAdapter.normalization, torch.device("cpu"))
    idx = [3, 25, 40]
    from_frames = prepare(collate([WindowDataset(ds, spec)[i] for i in idx]))
    from_cache = prepare(collate([WindowDataset(ds, spec, FeatureCache(feats, PARAdapter.frame_features(cfg), ds))[i]
                                  for i in idx]))
    assert "frames" not in from_cache and from_cache["latents"].shape == (3, cfg.context_steps + 1, 4, 4, 4)
    losses = []
    for batch in (from_frames, from_cache):
        torch.manual_seed(5)
        losses.append(adapter(batch)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    # training from the cache never builds the VAE, and Phi is gone once the instruction is encoded
    fresh = PARAdapter(cfg, info)
    fresh(from_cache)[0].backward()
    assert fresh.model.frozen.resident == {"vae": False, "phi": False}


def test_a_feature_file_of_another_dataset_or_encoder_or_damaged_is_refused_by_name(cached, tmp_path):
    data_path, feats = cached
    other = DemoDataset(_dataset(tmp_path / "other.h5", seeds=((5, 30), (6, 20))))
    cfg = _cfg()
    with pytest.raises(FeatureError, match=r"features\.h5 does not fit.*another dataset"):
        FeatureCache(feats, PARAdapter.frame_features(cfg), other)
    ds = DemoDataset(data_path)
    with pytest.raises(FeatureError, match=r"features\.h5 does not fit.*encoder config"):
        FeatureCache(feats, PARAdapter.frame_features(_cfg(image_size=(64, 64))), ds)
    with pytest.raises(FeatureError, match="does not exist"):
        FeatureCache(tmp_path / "missing.h5", PARAdapter.frame_features(cfg), ds)
    damaged = tmp_path / "damaged.h5"
    raw = bytearray(feats.read_bytes())
    raw[-2000:-1000] = bytes(1000)  # inside the last chunks of features
    damaged.write_bytes(bytes(raw))
    cache = FeatureCache(damaged, PARAdapter.frame_features(cfg), ds)
    with pytest.raises(FeatureError, match=r"damaged\.h5: rows .* cannot be read"):
        cache.rows(np.arange(len(ds.qpos)))


def test_the_pixel_codec_has_no_features_and_train_refuses_a_feature_file(cached, tmp_path):
    data_path, feats = cached
    assert PARAdapter.frame_features(resolve_config(PARAdapter, "reduced")) is None
    from harness.registry import get_method
    from harness.train import TrainingError, train

    act = get_method("act").load()
    with pytest.raises(TrainingError, match="act at this config encodes no frame features"):
        train(act, resolve_config(act, "smoke"), data_path, tmp_path / "run", progress=False, features=feats)


def test_train_from_features_records_the_file(cached, tmp_path):
    from harness.train import train

    data_path, feats = cached
    run = train(PARAdapter, _cfg(steps=2, checkpoint_every=2), data_path, tmp_path / "run", progress=False,
                features=feats)
    assert json.loads((run / "run_config.json").read_text())["features"] == str(feats)
    assert (run / "model.safetensors").exists()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_gradient_checkpointing_keeps_loss_and_gradients(level, cached):
    data_path, feats = cached
    ds = DemoDataset(data_path)
    info = DataInfo(8, 9, (32, 32), ds.instruction, STATS)
    spec = PARAdapter.window_spec(_cfg())
    batch = BatchPreparer(info, PARAdapter.normalization, torch.device("cpu"))(
        collate([WindowDataset(ds, spec)[i] for i in (3, 25)]))
    grads, calls = [], []
    for lvl in (0, level):
        torch.manual_seed(0)
        adapter = PARAdapter(_cfg(gradient_checkpointing=lvl), info)
        count = {}
        for stack in ("temporal", "spatial", "frame_mlp"):  # count each stack's first block's runs
            blk = getattr(adapter.model, stack).blocks[0]
            blk._forward = (lambda f, k: lambda *a: (count.__setitem__(k, count.get(k, 0) + 1), f(*a))[1])(
                blk._forward, stack)
        torch.manual_seed(1)
        loss, _ = adapter(batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None})
        calls.append(count)
    # the chosen stacks, and only those, run again in the backward pass
    stacks = {"temporal": 1, "spatial": 2, "frame_mlp": 3}
    assert {k: calls[1][k] - calls[0][k] for k in stacks} == {
        k: calls[0][k] if level >= lvl else 0 for k, lvl in stacks.items()}
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-5), name
    with pytest.raises(ValueError, match="gradient_checkpointing must be 0, 1, 2 or 3"):
        PARAdapter(_cfg(gradient_checkpointing=4), info)


def test_a_cpu_encodes_a_few_frames_at_a_time_and_the_latents_do_not_depend_on_it(cached, tmp_path):
    """On a CPU each frame's activations sit in host memory (NOVA's VAE at 512x512 in batches of
    16 peaked at 13.3 GB in the rehearsal): the default batch there is small."""
    from harness.features import BATCH_SIZE

    data_path, feats = cached
    spec = PARAdapter.frame_features(_cfg())
    build = spec.encoder
    seen = []

    def spying(device):
        encode = build(device)
        return lambda frames: (seen.append(len(frames)), encode(frames))[1]

    small = write_features(dataclasses.replace(spec, encoder=spying), data_path, tmp_path / "cpu.h5", device="cpu", progress=False)
    ds = DemoDataset(data_path)
    assert max(seen) == BATCH_SIZE["cpu"] < 16 and sum(seen) == len(ds.qpos)
    rows = np.arange(len(ds.qpos))
    a = FeatureCache(feats, spec, ds).rows(rows)
    b = FeatureCache(small, spec, ds).rows(rows)
    assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= 1e-3 * np.abs(a).max()
