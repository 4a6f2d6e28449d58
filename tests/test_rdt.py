"""RDT (thu-ml/RoboticsDiffusionTransformer): the paper config against RDTRunner's own names,
shapes and count (manifests in tests/data, dumped from its code); its published weights loading
tensor by tensor; SigLIP and T5 from local folders built from transformers' own classes; the
ManiSkill recipe (16 actions stretched to 64 in the unified vector, condition dropout) and the
rollout (a 2-frame window starting empty, every 4th action executed)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.errors import HarnessError
from methods.rdt import RUNNER_PARTS, RDTAdapter, stretch
from methods.rdt.encoders import encode_instruction

MANIFESTS = Path(__file__).parent / "data"
INDICES = [0, 1, 2, 3, 4, 5, 6, 10]


def _manifest(name):
    return json.loads((MANIFESTS / name).read_text())


def _data(size=(32, 32), instruction="push it"):
    stats = {"actions": {"mean": np.zeros(8), "std": np.ones(8), "min": -np.ones(8), "max": np.ones(8)},
             "obs_qpos": {"mean": np.full(9, 0.25), "std": np.full(9, 0.1), "min": -np.ones(9), "max": np.ones(9)}}
    return DataInfo(8, 9, size, instruction, stats)


def _small(**changes):
    """The config of tests/data/rdt_small_state_dict.json (64 wide, 2 blocks, 4 heads, 16-wide
    language and 24-wide image tokens, 32 language positions, 2 x 3 x 4 image tokens)."""
    base = dict(hidden_size=64, depth=2, num_heads=4, lang_token_dim=16, img_token_dim=24, max_lang_cond_len=32,
                vision_image_size=32, vision_patch_size=16, small_encoder_layers=1, small_encoder_heads=2,
                num_train_timesteps=100)
    return resolve_config(RDTAdapter).replace(**{**base, **changes})


def test_paper_config_counts_rdt_1b_part_by_part():
    """1,228,319,872 with the adaptors (T5-XXL 4096 and SigLIP so400m 1152 inputs): each part as
    BASELINES.md gives it, and the total as RDTRunner's own state dict has it."""
    counts = RDTAdapter.parameter_groups(resolve_config(RDTAdapter, "paper"), _data())
    assert counts["DiT blocks"] == 28 * 41_969_920
    assert counts["Step + frequency embedders"] == 9_445_376
    assert counts["Final layer"] == 4_460_672
    assert counts["Position embeddings"] == 11_192_320
    assert counts["Adaptors"] == 28_063_744
    assert counts["DiT"] == 1_200_256_128
    assert counts["Total"] == 1_228_319_872 == _manifest("rdt_1b_state_dict.json")["parameters"]


def test_paper_config_has_rdt_runners_names_and_shapes():
    with torch.device("meta"):
        model = RDTAdapter(resolve_config(RDTAdapter, "paper"), _data())
    ours = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith(RUNNER_PARTS)}
    assert ours == _manifest("rdt_1b_state_dict.json")["tensors"]


def _checkpoint(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in _manifest("rdt_small_state_dict.json")["tensors"].items()}


@pytest.mark.parametrize("fmt", ["safetensors", "hub_bin", "deepspeed_pt"])
def test_published_weights_load_tensor_by_tensor(tmp_path, fmt):
    from safetensors.torch import save_file

    state = _checkpoint()
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    elif fmt == "hub_bin":  # robotics-diffusion-transformer/rdt-1b's pytorch_model.bin: a bare state dict
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    else:  # DeepSpeed's mp_rank_00_model_states.pt: the weights under `module`, beside pickled state
        path = tmp_path / "mp_rank_00_model_states.pt"
        torch.save({"module": state, "client_state": {"step": 3, "path": tmp_path}}, path)
    model = RDTAdapter(_small(pretrained=str(path)), _data())
    loaded = model.state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
    assert [(f.path, f.action_pretrained) for f in model.pretrained_files] == [(str(path), True)]


def test_missing_or_foreign_weights_are_refused_by_path(tmp_path):
    missing = tmp_path / "rdt-1b" / "pytorch_model.bin"
    with pytest.raises(HarnessError, match=r"not found at .*pytorch_model\.bin \(RDTConfig\.pretrained\)"):
        RDTAdapter(_small(pretrained=str(missing)), _data())
    state = _checkpoint()
    state["model.final_layer.ffn_final.fc2.weight"] = torch.zeros(7, 64)
    del state["img_adaptor.2.bias"]
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    with pytest.raises(HarnessError, match=r"missing: img_adaptor\.2\.bias.*other shape: model\.final_layer"):
        RDTAdapter(_small(pretrained=str(path)), _data())


@pytest.fixture(scope="module")
def encoder_folders(tmp_path_factory):
    """A SigLIP vision tower and a T5 encoder with its tokenizer, saved by transformers' own
    classes from their own configs (small widths; the layout and file names are the real ones)."""
    from transformers import (ByT5Tokenizer, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel, T5Config,
                              T5EncoderModel)

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16)).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                         image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "siglip")
    T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                            feed_forward_proj="gated-gelu")).save_pretrained(root / "t5")
    ByT5Tokenizer().save_pretrained(root / "t5")
    return root


def test_encoders_load_from_local_folders_frozen_and_recorded(encoder_folders):
    from transformers import AutoTokenizer, T5EncoderModel

    cfg = _small(vision_encoder=str(encoder_folders / "siglip"), text_encoder=str(encoder_folders / "t5"),
                 action_chunk_size=8, real_chunk_size=4, execute_stride=2, image_aug=False)
    model = RDTAdapter(cfg, _data(instruction="push the cube"))
    tokenizer = AutoTokenizer.from_pretrained(encoder_folders / "t5")
    t5 = T5EncoderModel.from_pretrained(encoder_folders / "t5", dtype=torch.bfloat16)  # as upstream runs it
    with torch.no_grad():
        expected = t5(input_ids=tokenizer("push the cube", return_tensors="pt").input_ids).last_hidden_state[0]
    assert torch.equal(model.lang_embed, expected.float())
    assert model.vision_spec.mean == pytest.approx((0.4, 0.5, 0.6))  # the folder's image processor
    assert not any(p.requires_grad for p in model.vision.parameters())
    trainable = {id(p) for group in model.optim_groups() for p in group["params"]}
    assert not trainable & {id(p) for p in model.vision.parameters()}
    assert sorted((Path(f.path).parent.name, f.action_pretrained) for f in model.pretrained_files) == \
        [("siglip", False), ("t5", False)]
    model.eval()
    model.reset()
    obs = {"frame": torch.rand(3, 32, 32), "qpos": torch.zeros(9), "instruction": "push the cube", "step": 0}
    assert model.act(obs).shape == (4, 8)


def test_frozen_vision_stays_out_of_checkpoints_and_reloads_from_its_folder(encoder_folders):
    from transformers import SiglipVisionModel

    cfg = _small(vision_encoder=str(encoder_folders / "siglip"), text_encoder=str(encoder_folders / "t5"))
    model = RDTAdapter(cfg, _data())
    state = model.state_dict()
    assert not [k for k in state if k.startswith("vision.")] and "lang_embed" in state
    again = RDTAdapter(cfg, _data())
    again.load_state_dict(state)  # strict: the frozen tower is not missing
    folder = SiglipVisionModel.from_pretrained(encoder_folders / "siglip").state_dict()
    assert all(torch.equal(v, folder[k]) for k, v in again.vision.state_dict().items())


def test_restoring_a_run_skips_the_text_encoder_and_the_published_weights(encoder_folders, tmp_path):
    """Built to receive a trained state dict (evaluation), RDT neither runs T5 (its features are
    buffers of that state dict) nor reads RDT-1B's file, yet still records it."""
    from harness.adapter import restoring_weights

    path = tmp_path / "pytorch_model.bin"
    torch.save(_checkpoint(), path)
    cfg = _small(text_encoder=str(encoder_folders / "t5"), pretrained=str(path))
    trained = RDTAdapter(cfg, _data())
    with restoring_weights():
        restored = RDTAdapter(cfg, _data())
    assert restored.lang_embed.shape == trained.lang_embed.shape and not restored.lang_embed.any()
    assert not torch.equal(restored.model.x_pos_embed, trained.model.x_pos_embed)
    assert [f.path for f in restored.pretrained_files] == [str(encoder_folders / "t5" / "model.safetensors"), str(path)]
    restored.load_state_dict(trained.state_dict())
    assert torch.equal(restored.lang_embed, trained.lang_embed)


@pytest.mark.parametrize("scale", ["smoke", "reduced", "paper"])
def test_every_task_instruction_fits_the_language_positions(scale):
    from harness.tasks import TASKS

    cfg = resolve_config(RDTAdapter, scale)
    for task in TASKS.values():  # the byte-level stand-in: one token per byte, plus the end token
        (tokens,) = encode_instruction(cfg, [task.instruction], features=False)
        assert tokens.shape[0] <= cfg.max_lang_cond_len, (task.name, scale)


def test_so400m_config_gives_729_tokens_and_the_paper_count(tmp_path):
    """A folder holding only SigLIP so400m-patch14-384's config (transformers' class, its values)
    is enough to size the image tokens; the count is RDT-1B's."""
    from transformers import SiglipVisionConfig

    SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       image_size=384, patch_size=14).save_pretrained(tmp_path)
    cfg = resolve_config(RDTAdapter, "paper").replace(vision_encoder=str(tmp_path))
    assert RDTAdapter.parameter_groups(cfg, _data())["Total"] == 1_228_319_872


def test_encoder_width_and_missing_folder_are_named(encoder_folders, tmp_path):
    with pytest.raises(HarnessError, match="img_token_dim is 32; set img_token_dim to 24"):
        RDTAdapter(_small(vision_encoder=str(encoder_folders / "siglip"), img_token_dim=32), _data())
    with pytest.raises(HarnessError, match="lang_token_dim is 8; set lang_token_dim to 16"):
        RDTAdapter(_small(text_encoder=str(encoder_folders / "t5"), lang_token_dim=8), _data())
    with pytest.raises(HarnessError, match=r"text encoder not found at .*t5-v1_1-xxl \(RDTConfig\.text_encoder\)"):
        RDTAdapter(_small(text_encoder=str(tmp_path / "t5-v1_1-xxl")), _data())


def test_stretch_keeps_the_ends_and_interpolates_linearly():
    actions = torch.arange(16.0).view(1, 16, 1).repeat(2, 1, 3)
    out = stretch(actions, 64)
    assert out.shape == (2, 64, 3)
    assert torch.allclose(out[0, :, 0], torch.linspace(0, 15, 64))


def _training_batch(b=3, t=2, chunk=16):
    g = torch.Generator().manual_seed(0)
    return {"frames": torch.rand(b, t, 3, 32, 32, generator=g), "qpos": torch.rand(b, t, 9, generator=g) * 2 - 1,
            "actions": torch.rand(b, 1, chunk, 8, generator=g) * 2 - 1,
            "obs_is_pad": torch.tensor([[True, False]] + [[False, False]] * (b - 1)),
            "action_is_pad": torch.zeros(b, 1, chunk, dtype=torch.bool), "instruction": ["push it"] * b}


class _Recorder:
    """Wraps a callable, keeping the arguments and the result of every call."""

    def __init__(self, fn):
        self.fn, self.calls, self.results = fn, [], []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        self.results.append(self.fn(*args, **kwargs))
        return self.results[-1]


def _record(model):
    rec = {name: _Recorder(getattr(model, name)) for name in ("state_adaptor", "_image_tokens")}
    rec["model"] = _Recorder(model.model.forward)
    rec["add_noise"] = _Recorder(model.train_scheduler.add_noise)
    object.__setattr__(model, "state_adaptor", rec["state_adaptor"])  # shadows the registered module
    model._image_tokens, model.model.forward = rec["_image_tokens"], rec["model"]
    model.train_scheduler.add_noise = rec["add_noise"]
    return rec


def test_training_sample_is_the_maniskill_recipe():
    """No dropout: the state (qpos[:8]) and 16 actions stretched to 64 sit at indices 0-6 and 10
    of the 128-wide vector, the mask marks them, the control frequency is 25, the padded first
    frame is an empty slot, the instruction is whole."""
    model = RDTAdapter(_small(cond_mask_prob=0.0, state_noise_snr=None, image_aug=False), _data())
    rec, batch = _record(model), _training_batch()
    model(batch)
    clean = rec["add_noise"].calls[0][0][0]
    expected = torch.zeros(3, 64, 128)
    expected[..., INDICES] = stretch(batch["actions"][:, 0], 64)
    assert torch.equal(clean, expected)
    traj = rec["state_adaptor"].calls[0][0][0]  # (B, 65, 256): values, then the mask
    state = torch.zeros(3, 128)
    state[:, INDICES] = batch["qpos"][:, -1, :8]
    assert torch.equal(traj[:, 0, :128], state)
    mask = torch.zeros(128)
    mask[INDICES] = 1
    assert torch.equal(traj[..., 128:], mask.expand(3, 65, 128))
    args, kwargs = rec["model"].calls[0]
    assert torch.equal(args[1], torch.full((3,), 25.0))
    assert kwargs["lang_mask"].all()
    assert rec["_image_tokens"].calls[0][0][1].tolist() == [[False, True], [True, True], [True, True]]


def test_condition_dropout_drops_every_condition():
    """cond_mask_prob 1: frequency 0, the dataset's mean state, a zero mask, every image slot
    empty, the empty instruction (train/dataset.py)."""
    model = RDTAdapter(_small(cond_mask_prob=1.0, state_noise_snr=None, image_aug=False), _data())
    rec = _record(model)
    model(_training_batch())
    traj = rec["state_adaptor"].calls[0][0][0]
    assert torch.equal(traj[:, 0, INDICES], torch.full((3, 8), 0.25))  # mean 0.25 in [-1, 1] is 0.25
    assert not traj[..., 128:].any()
    args, kwargs = rec["model"].calls[0]
    assert not args[1].any()
    assert kwargs["lang_mask"].sum(1).tolist() == [model.empty_lang_embed.shape[0]] * 3
    assert not rec["_image_tokens"].calls[0][0][1].any()


def test_augmentation_touches_only_real_images_and_training_runs():
    torch.manual_seed(0)
    model = RDTAdapter(_small(), _data())  # image_aug, state noise and dropout on, as the recipe
    frames = torch.rand(4, 2, 3, 32, 32)
    valid = torch.tensor([[False, True]] * 4)
    out = model._augment(frames, valid)
    assert torch.equal(out[:, 0], frames[:, 0]) and not torch.equal(out[:, 1], frames[:, 1])
    assert out.min() >= 0 and out.max() <= 1
    loss, _ = model(_training_batch())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_rollout_window_starts_empty_and_every_fourth_action_runs():
    model = RDTAdapter(_small(), _data()).eval()
    rec = _record(model)
    steps = _Recorder(model.sample_scheduler.step)
    model.sample_scheduler.step = steps
    model.reset()
    frames = [torch.full((3, 32, 32), i / 20) for i in range(20)]
    obs = lambda i: {"frame": frames[i], "qpos": torch.zeros(9), "instruction": "push it", "step": i}  # noqa: E731
    first = model.act(obs(0))
    # 5 DPM-Solver++ steps; 64 actions, of which every 4th (at our 8 indices of the 128) is executed
    assert len(steps.calls) == 5 and torch.equal(first, steps.results[-1].prev_sample[0, ::4][:, INDICES])
    assert rec["_image_tokens"].calls[0][0][1].tolist() == [[False, True]]
    for i in range(1, 16):
        model.observe(obs(i))
    model.act(obs(16))
    window, valid = rec["_image_tokens"].calls[1][0]
    assert valid.tolist() == [[True, True]]
    assert torch.equal(window[0, 0], frames[15]) and torch.equal(window[0, 1], frames[16])
    model.reset()
    model.act(obs(0))
    assert rec["_image_tokens"].calls[2][0][1].tolist() == [[False, True]]
