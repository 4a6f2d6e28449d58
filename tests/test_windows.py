import itertools

import numpy as np
import pytest

from harness.dataset import DemoDataset
from harness.windows import Normalizer, SequenceDataset, SequenceSpec, WindowDataset, WindowSpec


def _sample(path, spec, episode, t):
    wd = WindowDataset(DemoDataset(path), spec)
    i = int(np.flatnonzero((wd.index[:, 0] == episode) & (wd.index[:, 1] == t))[0])
    return wd[i]


def test_one_sample_per_action_step(synthetic_dataset):
    wd = WindowDataset(DemoDataset(synthetic_dataset), WindowSpec())
    assert len(wd) == 5 + 12 + 3


def test_act_style_chunk_pads_past_the_end(synthetic_dataset):
    # ACT: current frame, the next L=4 actions; episode 1 has 12 steps, anchor t=10
    s = _sample(synthetic_dataset, WindowSpec(action_chunk_len=4), episode=1, t=10)
    assert s["frames"].shape == (1, 16, 20, 3) and s["frames"][0, 0, 0, 0] == 10
    assert s["actions"].shape == (1, 4, 8)
    np.testing.assert_allclose(s["actions"][0, :, 0], [1010, 1011, 1011, 1011])  # last action repeated
    assert s["action_is_pad"].tolist() == [[False, False, True, True]]
    assert s["instruction"] == "push it" and s["seed"] == 1


def test_dp_style_history_pads_before_the_start(synthetic_dataset):
    # Diffusion Policy: 2 frames of history, 6 actions starting one step back
    spec = WindowSpec(obs_history=2, action_chunk_len=6, action_offset=-1)
    s = _sample(synthetic_dataset, spec, episode=0, t=0)
    assert s["obs_steps"].tolist() == [-1, 0] and s["obs_is_pad"].tolist() == [True, False]
    assert s["frames"][:, 0, 0, 0].tolist() == [0, 0]  # first frame repeated
    np.testing.assert_allclose(s["qpos"][:, 0], [0, 0])
    np.testing.assert_allclose(s["actions"][0, :, 0], [0, 0, 1, 2, 3, 4])
    assert s["action_is_pad"][0].tolist() == [True, False, False, False, False, False]


def test_par_style_physical_tokens_at_chunk_stride(synthetic_dataset):
    # PAR: one frame per action chunk (stride L=3), 3 frames of history + 1 future frame,
    # chunk n holds the L actions taken after frame n.
    L, N = 3, 3
    spec = WindowSpec(obs_history=N, obs_stride=L, obs_future=1, action_chunk_len=L,
                      num_action_chunks=N, action_offset=-(N - 1) * L)
    s = _sample(synthetic_dataset, spec, episode=1, t=6)
    assert s["obs_steps"].tolist() == [0, 3, 6, 9]
    assert s["frames"][:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    np.testing.assert_allclose(s["qpos"][:, 0], [1000, 1003, 1006, 1009])
    np.testing.assert_allclose(s["actions"][:, :, 0] - 1000, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    assert not s["action_is_pad"].any() and not s["obs_is_pad"].any()
    # near the end, the future frame is past the last observation (step 12 exists, 15 not)
    s = _sample(synthetic_dataset, spec, episode=1, t=11)
    assert s["obs_steps"].tolist() == [5, 8, 11, 14]
    assert s["obs_is_pad"].tolist() == [False, False, False, True]
    assert s["frames"][-1, 0, 0, 0] == 12  # the last observation, repeated
    assert s["action_is_pad"][-1].tolist() == [False, True, True]


def test_windows_never_cross_episodes(synthetic_dataset):
    spec = WindowSpec(obs_history=4, obs_future=2, action_chunk_len=5, action_offset=-2,
                      load_frames=False)
    wd = WindowDataset(DemoDataset(synthetic_dataset), spec)
    for i in range(len(wd)):
        s = wd[i]
        # values encode the seed in the thousands: every row must come from this episode
        assert (np.floor(s["actions"] / 1000) == s["seed"]).all()
        assert (np.floor(s["qpos"] / 1000) == s["seed"]).all()
        assert "frames" not in s


def test_bad_spec_is_refused():
    with pytest.raises(ValueError, match="WindowSpec.obs_stride must be >= 1"):
        WindowSpec(obs_stride=0)


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "identity"])
def test_normalisation_round_trip(synthetic_dataset, mode):
    ds = DemoDataset(synthetic_dataset)
    norm = Normalizer(ds.stats["actions"], mode)
    y = norm.normalize(ds.actions)
    np.testing.assert_allclose(norm.unnormalize(y), ds.actions, rtol=1e-5, atol=1e-3)
    if mode == "mean_std":
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(y.std(0), 1, atol=1e-4)
    if mode == "min_max":
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5


def test_normalisation_of_torch_tensors_and_constant_dims():
    torch = pytest.importorskip("torch")
    stats = {"mean": np.array([1.0, 5.0]), "std": np.array([2.0, 0.0]),
             "min": np.array([0.0, 5.0]), "max": np.array([4.0, 5.0])}
    norm = Normalizer(stats, "min_max")
    x = torch.tensor([[4.0, 5.0], [0.0, 5.0]])
    y = norm.normalize(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # constant dim: not divided by 0
    assert torch.allclose(norm.unnormalize(y), x)


# --- SequenceSpec: runs of whole demonstrations (in-context methods) -----------------------------
def test_a_sequence_runs_from_its_start_through_whole_other_episodes(synthetic_dataset):
    # episodes of 5, 12 and 3 steps (seeds 0, 1, 2); samples start every 2nd step
    sd = SequenceDataset(DemoDataset(synthetic_dataset), SequenceSpec(sequence_length=14, action_chunk_len=3,
                                                                      start_stride=2))
    assert len(sd) == 3 + 6 + 2
    i = int(np.flatnonzero((sd.index[:, 0] == 0) & (sd.index[:, 1] == 2))[0])
    s = sd[i]
    episodes, steps = s["episodes"], s["steps"]
    assert len(steps) == 14 and episodes[0] == 0 and steps[:3].tolist() == [2, 3, 4]
    # after the start: whole episodes from their first step, another episode than the start's
    assert episodes[3] != 0 and steps[3] == 0
    assert s["episode_start"].tolist() == (steps == 0).tolist()
    for k in range(14):  # each step holds its own frame, qpos and the chunk from it, in its episode
        seed, t, n = episodes[k], steps[k], [5, 12, 3][episodes[k]]
        assert s["frames"][k, 0, 0, 0] == t and s["frames"][k, 0, 0, 1] == seed
        assert s["qpos"][k, 0] == seed * 1000 + t
        expect = [seed * 1000 + min(t + j, n - 1) for j in range(3)]
        np.testing.assert_allclose(s["actions"][k, :, 0], expect)
        assert s["action_is_pad"][k].tolist() == [t + j >= n for j in range(3)]
    assert not s["obs_is_pad"].any()


def test_a_sequence_is_a_function_of_its_index_and_repeats_are_bounded(synthetic_dataset):
    spec = SequenceSpec(sequence_length=60, start_stride=4, max_repeats=2, load_frames=False)
    a = SequenceDataset(DemoDataset(synthetic_dataset), spec)
    b = SequenceDataset(DemoDataset(synthetic_dataset), spec)
    tapes = [a.tape(i) for i in range(len(a))]
    for i, (episodes, steps) in enumerate(tapes):
        np.testing.assert_array_equal(episodes, b.tape(i)[0])  # resumable: no hidden state
        runs = [e for k, e in enumerate(episodes) if steps[k] == 0]  # the episodes played, in order
        longest = max(len(list(g)) for _, g in itertools.groupby(runs))
        assert longest <= 2
    # with repeats allowed, some sample plays an episode twice in a row
    assert any(any(r1 == r2 for r1, r2 in zip(runs, runs[1:]))
               for runs in ([e for k, e in enumerate(ep) if st[k] == 0] for ep, st in tapes))


def test_two_episodes_keep_the_repeat_bound(tmp_path):
    """With two demos the first pass holds only the other one; later passes hold both and do not
    begin with the episode just played, so no episode plays more than max_repeats in a row."""
    from harness.dataset import write_dataset

    from conftest import SYNTH_META, synthetic_episode

    path = write_dataset(tmp_path / "two.h5", [synthetic_episode(0, 4), synthetic_episode(1, 6)], SYNTH_META)
    for swap in (False, True):
        sd = SequenceDataset(DemoDataset(path), SequenceSpec(sequence_length=80, max_repeats=2,
                                                            swap_adjacent=swap, load_frames=False))
        for i in range(len(sd)):
            episodes, steps = sd.tape(i)
            runs = [e for k, e in enumerate(episodes) if steps[k] == 0]
            longest = max(len(list(g)) for _, g in itertools.groupby(runs))
            assert longest <= 2 and {0, 1} <= set(runs)


def test_sequence_spec_rejects_empty_sizes():
    with pytest.raises(ValueError, match="sequence_length"):
        SequenceSpec(sequence_length=0)
