"""LeRobot's trainable policies as harness methods (methods/lerobot_policy): presets copied from
LeRobot's classes, LeRobot's windows and parameter groups, VQ-BeT's two phases, and the policies
that cannot run here refused by name with the reason. The method contract suite
(tests/test_method_contract.py) covers them like every other method."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.registry import REFUSED, UnknownMethodError, get_method
from harness.train import make_lr_scheduler

NAMES = ["lerobot_act", "lerobot_diffusion", "lerobot_vqbet"]
DATA = DataInfo(action_dim=8, qpos_dim=9, image_size=(64, 64), instruction="push the cube")


def _adapter(name):
    return get_method(name).load()


@pytest.mark.parametrize("name", NAMES)
def test_the_paper_preset_is_lerobots_training_preset(name):
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.policies.factory import make_policy_config

    cls = _adapter(name)
    ours, theirs = cls.config_class(), make_policy_config(cls.policy_type)
    optimizer = theirs.get_optimizer_preset()
    assert ours.policy == {}  # LeRobot's model as LeRobot defines it
    assert (ours.lr, ours.weight_decay, tuple(ours.betas), ours.grad_clip_norm) == (
        optimizer.lr, optimizer.weight_decay, tuple(optimizer.betas), optimizer.grad_clip_norm)
    pipeline = {f.name: f.default for f in dataclasses.fields(TrainPipelineConfig)}
    assert (ours.steps, ours.batch_size) == (pipeline["steps"], pipeline["batch_size"])
    scheduler = theirs.get_scheduler_preset()
    if scheduler is None:
        assert (ours.lr_schedule, ours.warmup_steps) == ("constant", 0)
    else:
        assert ours.warmup_steps == scheduler.num_warmup_steps
    modes = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max"}
    assert cls.normalization == {"actions": modes[theirs.normalization_mapping["ACTION"].name],
                                 "qpos": modes[theirs.normalization_mapping["STATE"].name]}


@pytest.mark.parametrize("name", ["lerobot_diffusion", "lerobot_vqbet"])
def test_the_paper_preset_crops_lerobots_share_of_the_frames_at_any_size(name):
    """LeRobot's crop (84 x 84 of PushT's 96 px frames) as a share: at the paper scale's frame
    size, not 84 px of it; crop_fraction None keeps LeRobot's pixels."""
    from harness.config import load_config

    cls = _adapter(name)
    size = tuple(load_config("paper").task("PushCube").image_size)
    paper = dataclasses.replace(DATA, image_size=size)
    assert cls.lerobot_config(cls.config_class(), paper).crop_shape == tuple(round(s * 84 / 96) for s in size)
    assert cls.lerobot_config(cls.config_class(crop_fraction=None), paper).crop_shape == (84, 84)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [None, "smoke", "reduced"])
def test_windows_are_lerobots_delta_indices(name, scale):
    cls = _adapter(name)
    config = resolve_config(cls, scale)
    theirs = cls.lerobot_config(config)
    spec = cls.window_spec(config)
    obs = theirs.observation_delta_indices or [0]
    assert spec.obs_history == len(obs) and obs[-1] == 0
    actions = list(theirs.action_delta_indices)
    assert (spec.action_offset, spec.action_chunk_len) == (actions[0], len(actions))


@pytest.mark.parametrize("name", NAMES)
def test_the_harness_schedule_is_lerobots_schedule(name):
    """Per step, the lr the harness trains with is the one LeRobot's own scheduler gives."""
    cls = _adapter(name)
    config = resolve_config(cls, None).replace(steps=3_000)
    if config.warmup_steps:  # a preset with a scheduler: a shorter warmup, to see it end
        config = config.replace(warmup_steps=100)
    if name == "lerobot_vqbet":
        config = config.replace(policy={"n_vqvae_training_steps": 500})
    model = torch.nn.Linear(2, 2)
    ours = make_lr_scheduler(torch.optim.AdamW(model.parameters(), lr=1.0), config, cls)
    theirs_preset = cls.lerobot_config(config).get_scheduler_preset()
    steps = [0, 1, 50, 99, 100, 499, 500, 550, 600, 1_500, 2_999]
    got = []
    for step in range(max(steps) + 1):
        if step in steps:
            got.append(ours.get_last_lr()[0])
        ours.step()
    if theirs_preset is None:
        want = [1.0] * len(steps)
    else:
        fn = theirs_preset.build(torch.optim.SGD(model.parameters(), lr=1.0), config.steps).lr_lambdas[0]
        want = [fn(s) for s in steps]
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_the_optimizer_groups_hold_every_trainable_parameter_once(name):
    cls = _adapter(name)
    model = cls(resolve_config(cls, "smoke"), DATA)
    grouped = [id(p) for g in model.optim_groups() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_vqbet_trains_its_vq_vae_first_then_the_policy_with_its_own_groups():
    cls = _adapter("lerobot_vqbet")
    config = resolve_config(cls, "smoke")
    torch.manual_seed(0)
    model = cls(config, DATA)
    spec = cls.window_spec(config)
    groups = model.optim_groups()
    vq = model.policy.vqbet.action_head.vqvae_model
    vq_params = {id(p) for m in (vq.encoder, vq.decoder, vq.vq_layer) for p in m.parameters()}
    vq_group = [g for g in groups if {id(p) for p in g["params"]} == vq_params]
    assert len(vq_group) == 1 and vq_group[0]["lr"] == 1e-3 and vq_group[0]["weight_decay"] == 1e-4
    b, n_obs, length = 2, spec.obs_history, spec.action_chunk_len
    batch = {"frames": torch.rand(b, n_obs, 3, 64, 64), "qpos": torch.randn(b, n_obs, 9),
             "actions": torch.randn(b, 1, length, 8), "action_is_pad": torch.zeros(b, 1, length, dtype=torch.bool),
             "obs_is_pad": torch.zeros(b, n_obs, dtype=torch.bool), "instruction": ["push"] * b}
    phases = []
    for _ in range(config.policy["n_vqvae_training_steps"] + 2):
        loss, _ = model(batch)
        loss.backward()
        phases.append(bool(vq.discretized.item()))
    assert phases == [False, True, True, True]  # discretized after its VQ-VAE steps
    # the phase's step count travels in the state dict (resume: tests/test_train.py); weights
    # saved before it did load, the count then starting at zero
    state = model.state_dict()
    assert int(state["vqvae_optimized_steps"]) == vq.optimized_steps == config.policy["n_vqvae_training_steps"]
    old = cls(config, DATA)
    old.load_state_dict({k: v for k, v in state.items() if k != "vqvae_optimized_steps"})
    assert old.policy.vqbet.action_head.vqvae_model.optimized_steps == 0
    assert bool(old.policy.vqbet.action_head.vqvae_model.discretized)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_policies_that_cannot_run_here_are_refused_with_the_reason(name):
    with pytest.raises(UnknownMethodError, match="not offered") as err:
        get_method(name)
    assert REFUSED[name] in str(err.value)


def test_an_unknown_lerobot_name_lists_the_known_ones():
    with pytest.raises(UnknownMethodError, match="lerobot_vqbet"):
        get_method("lerobot_nope")


def test_a_lerobot_checkpoint_acts_as_lerobot_makes_it_act(tmp_path):
    """lerobot_pretrained hands raw joint positions to the checkpoint, which normalises them with
    its own statistics, and returns its raw actions: the same as LeRobot's own select_action."""
    from lerobot.policies.act.modeling_act import ACTPolicy

    from conftest import lerobot_act_checkpoint

    folder = lerobot_act_checkpoint(tmp_path / "pretrained_model", (32, 32), seed=3)
    cls = _adapter("lerobot_pretrained")
    data = DataInfo(action_dim=8, qpos_dim=9, image_size=(32, 32), instruction="push")
    ours = cls(resolve_config(cls, "smoke").replace(path=str(folder)), data).eval()
    theirs = ACTPolicy.from_pretrained(folder).eval()
    assert [f.path for f in ours.pretrained_files] == [str(folder / "model.safetensors")]
    g = torch.Generator().manual_seed(0)
    for step in range(6):  # across a chunk boundary (n_action_steps 4): the queues agree too
        frame, qpos = torch.rand(3, 32, 32, generator=g), torch.randn(9, generator=g) * 3
        got = ours.act({"frame": frame, "qpos": qpos, "instruction": "push", "step": step})
        want = theirs.select_action({"observation.image": frame[None], "observation.state": qpos[None]})
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert cls.normalization == {"actions": "identity", "qpos": "identity"}


def test_lerobot_pretrained_says_what_is_missing_or_does_not_fit(tmp_path):
    from harness.adapter import ConfigFieldError

    from conftest import lerobot_act_checkpoint

    cls = _adapter("lerobot_pretrained")
    config = resolve_config(cls, "smoke")
    with pytest.raises(ConfigFieldError, match="method_overrides"):
        cls(config, DATA)
    with pytest.raises(FileNotFoundError, match="pretrained-model folder"):
        cls(config.replace(path=str(tmp_path / "nowhere")), DATA)
    folder = lerobot_act_checkpoint(tmp_path / "pretrained_model", (32, 32))
    with pytest.raises(ValueError, match=r"observation.image: \(3, 32, 32\) in the checkpoint, \(3, 64, 64\) here"):
        cls(config.replace(path=str(folder)), DATA)  # DATA's frames are 64x64
    settings = json.loads((folder / "config.json").read_text())  # a second camera the harness does not have
    settings["input_features"]["observation.images.wrist"] = {"type": "VISUAL", "shape": [3, 32, 32]}
    (folder / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"observation.images.wrist: \(3, 32, 32\) in the checkpoint, no such feature"):
        cls(config.replace(path=str(folder)), dataclasses.replace(DATA, image_size=(32, 32)))


def test_a_policy_override_of_a_field_the_harness_sets_is_refused():
    from harness.adapter import ConfigFieldError

    cls = _adapter("lerobot_diffusion")
    config = resolve_config(cls, "smoke")
    with pytest.raises(ConfigFieldError, match="optimizer_lr"):
        cls.lerobot_config(config.replace(policy={"optimizer_lr": 1.0}))
    assert cls.lerobot_config(config.replace(policy={"num_inference_steps": 5})).num_inference_steps == 5


def test_a_checkpoint_that_names_imagenet_weights_downloads_nothing(tmp_path, monkeypatch):
    """A stock LeRobot ACT checkpoint says pretrained_backbone_weights=ResNet18 ImageNet; the
    checkpoint holds the backbone, so building it must not fetch torchvision's weights."""
    import json as _json

    import torchvision

    from conftest import lerobot_act_checkpoint

    folder = lerobot_act_checkpoint(tmp_path / "pretrained_model", (32, 32))
    config_file = folder / "config.json"
    config = _json.loads(config_file.read_text())
    config["pretrained_backbone_weights"] = "ResNet18_Weights.IMAGENET1K_V1"
    config_file.write_text(_json.dumps(config))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", no_download)
    cls = _adapter("lerobot_pretrained")
    cls(resolve_config(cls, "smoke").replace(path=str(folder)),
        DataInfo(action_dim=8, qpos_dim=9, image_size=(32, 32), instruction="push"))
