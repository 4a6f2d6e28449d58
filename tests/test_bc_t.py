"""BC-T (robomimic's BC_Transformer): its size per module, the token it is trained on, its
rollout context, its two heads and robomimic's learning-rate schedule."""

import pytest
import torch

from harness.adapter import DataInfo, resolve_config
from harness.registry import get_method
from harness.train import make_lr_scheduler

BCT = get_method("bc_t").load()


def _data(qpos_dim=8, action_dim=8, size=(32, 32)):
    return DataInfo(action_dim=action_dim, qpos_dim=qpos_dim, image_size=size, instruction="push")


# BASELINES.md's breakdown, computed there from robomimic's module definitions with one RGB
# camera, an 8-dim low-dim observation and 8-dim actions
ROBOMIMIC_COUNTS = {"Image encoder": 11_197_088, "GPT": 18_906_112, "Embedding": 43_520, "Head": 4_104}


def test_paper_config_matches_robomimic_per_module():
    counts = BCT.parameter_groups(resolve_config(BCT), _data())
    assert {k: counts[k] for k in ROBOMIMIC_COUNTS} == ROBOMIMIC_COUNTS
    assert counts["Total"] == sum(ROBOMIMIC_COUNTS.values()) == 30_150_824


def test_gmm_variant_has_robomimic_gmm_head():
    counts = BCT.parameter_groups(resolve_config(BCT, variant="bc_t_gmm"), _data())
    # mean and scale: Linear(512, 5 x 8) each; logits: Linear(512, 5)
    assert counts["Head"] == 2 * (512 * 40 + 40) + (512 * 5 + 5) == 43_605
    assert round(counts["Total"] / 1e6, 2) == 30.19


def test_our_nine_dim_qpos_widens_only_the_input_projection():
    """Our datasets' qpos is 9-dim (7 arm joints + 2 fingers), BASELINES.md assumed 8."""
    counts = BCT.parameter_groups(resolve_config(BCT), _data(qpos_dim=9))
    assert counts["Embedding"] == ROBOMIMIC_COUNTS["Embedding"] + 512
    assert counts["Image encoder"] == ROBOMIMIC_COUNTS["Image encoder"]


def test_window_is_the_frame_stack_and_the_newest_action():
    spec = BCT.window_spec(resolve_config(BCT))
    assert list(spec.frame_offsets) == list(range(-9, 1)) and list(spec.action_steps) == [0]


def _model(variant=None, **overrides):
    torch.manual_seed(0)
    cfg = resolve_config(BCT, "smoke", variant, overrides)
    return BCT(cfg, _data(qpos_dim=9)).eval()


def _obs(g):
    return {"frame": torch.rand(3, 32, 32, generator=g), "qpos": torch.randn(9, generator=g),
            "instruction": "push", "step": 0}


@pytest.mark.parametrize("variant", [None, "bc_t_gmm"])
def test_rollout_context_is_the_last_steps_padded_with_the_first(variant):
    """act() keeps per-frame features between calls; that must equal encoding the whole
    frame stack afresh, as robomimic's FrameStackWrapper feeds it (first frame repeated)."""
    model = _model(variant)
    n = model.config.context_length
    g = torch.Generator().manual_seed(1)
    observations = [_obs(g) for _ in range(n + 2)]

    def fresh(stack):
        frames = torch.stack([o["frame"] for o in stack])[None]
        qpos = torch.stack([o["qpos"] for o in stack])[None]
        return model._last_hidden(model._features(frames, qpos))

    model.reset()
    with torch.no_grad():
        for t, obs in enumerate(observations):
            model.act(obs)
            stack = observations[max(0, t - n + 1):t + 1]
            stack = [stack[0]] * (n - len(stack)) + stack
            cached = model._last_hidden(torch.stack(list(model._tokens))[None])
            torch.testing.assert_close(cached, fresh(stack))


def test_deterministic_head_trains_on_the_newest_step_with_mse():
    model = _model()
    torch.manual_seed(0)
    b, n = 3, model.config.context_length
    batch = {"frames": torch.rand(b, n, 3, 32, 32), "qpos": torch.randn(b, n, 9),
             "actions": torch.rand(b, 1, 1, 8) * 2 - 1}
    # evaluation mode (no dropout, centre crop): the loss is a function of the batch
    loss, logs = model(batch)
    expected = ((model.head(model._last_hidden(model._features(batch["frames"], batch["qpos"])))
                 - batch["actions"][:, 0, 0]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert logs["mse"] == pytest.approx(loss.item())
    action = model.act(_obs(torch.Generator().manual_seed(0)))
    assert action.shape == (1, 8) and action.abs().max() <= 1  # one action per step, tanh range


def test_gmm_head_trains_by_likelihood_and_samples_a_mode_in_evaluation():
    model = _model("bc_t_gmm")
    hidden = torch.randn(4, model.config.embed_dim)
    train_dist = model.head(hidden, low_noise=False)
    target = torch.rand(4, 8) * 2 - 1
    assert torch.isfinite(train_dist.log_prob(target)).all()
    means = train_dist.component_distribution.base_dist.loc  # (4, modes, 8), tanh range
    assert means.shape == (4, model.config.num_modes, 8) and means.abs().max() <= 1
    assert (train_dist.component_distribution.base_dist.scale >= model.config.min_std).all()
    sample = model.head(hidden, low_noise=True).sample()
    distance = (sample[:, None] - means).abs().amax(-1).amin(-1)  # to the nearest mode's mean
    assert (distance < 1e-2).all()


def test_lr_falls_linearly_per_epoch_to_the_floor_then_stays():
    cfg = resolve_config(BCT)  # 100 steps per epoch, 0.1x after 100 epochs
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_lr_scheduler(opt, cfg, BCT)
    lrs = {}
    for step in range(1, 12_001):
        opt.step()
        sched.step()
        lrs[step] = sched.get_last_lr()[0]
    assert lrs[99] == pytest.approx(1e-4)  # LinearLR steps once per epoch
    assert lrs[100] == pytest.approx(1e-4 * (1 - 0.9 / 100))
    assert lrs[5_000] == pytest.approx(1e-4 * 0.55)
    assert lrs[10_000] == pytest.approx(1e-5) and lrs[12_000] == pytest.approx(1e-5)
    # resumable: a fresh scheduler loaded from the state continues where this one is
    cfg = cfg.replace(lr_decay_epochs=200)
    opt, opt2 = (torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr) for _ in range(2))
    sched, sched2 = make_lr_scheduler(opt, cfg, BCT), make_lr_scheduler(opt2, cfg, BCT)
    for _ in range(5_000):
        opt.step()
        sched.step()
    sched2.load_state_dict(sched.state_dict())
    for _ in range(100):
        for o, sc in ((opt, sched), (opt2, sched2)):
            o.step()
            sc.step()
    assert sched2.get_last_lr() == sched.get_last_lr() and sched.get_last_lr()[0] == pytest.approx(1e-4 * (1 - 0.9 * 51 / 200))


def test_a_warmup_multiplies_the_decay():
    cfg = resolve_config(BCT, overrides={"warmup_steps": 10})
    multiplier = BCT.lr_multiplier(cfg)
    assert multiplier(0) == 0 and multiplier(5) == pytest.approx(0.5) and multiplier(10) == 1.0
    assert multiplier(10_000) == pytest.approx(0.1)


def test_the_reduced_preset_holds_the_lr_after_its_warmup():
    """The reduced preset's lr: the warmup, then 1e-4 to the last step (the decay to 1e-5 by step
    140 left BC-T at 0/125; results/measured/reduced/bc_t_controlled/)."""
    cfg = resolve_config(BCT, "reduced")
    multiplier = BCT.lr_multiplier(cfg)
    assert multiplier(50) == pytest.approx(0.5)
    assert multiplier(100) == multiplier(140) == multiplier(cfg.steps) == 1.0 and cfg.lr == 1e-4


def test_an_unknown_head_is_refused_by_name():
    with pytest.raises(ValueError, match="BCTConfig.head"):
        _model(head="mdn")
