import numpy as np

from harness.render import _pose_deviation, state_at


def _states(t=3):
    rng = np.random.default_rng(0)
    return {"actors": {"cube": rng.random((t, 13)).astype(np.float32)},
            "articulations": {"panda": rng.random((t, 13 + 9 + 9)).astype(np.float32)}}


def test_pose_deviation_ignores_velocities_only():
    a = _states()
    b = {k: {n: v.copy() for n, v in d.items()} for k, d in a.items()}
    b["actors"]["cube"][1, 7:13] += 5.0  # linear/angular velocity
    b["articulations"]["panda"][1, 22:31] += 5.0  # joint velocities
    assert _pose_deviation(a, b, 1) == 0.0
    b["articulations"]["panda"][1, 13 + 8] += 0.25  # a finger joint position
    assert abs(_pose_deviation(a, b, 1) - 0.25) < 1e-6
    b["actors"]["cube"][2, 3] -= 0.5  # orientation
    assert abs(_pose_deviation(a, b, 2) - 0.5) < 1e-6


def test_state_at_picks_one_step_of_nested_states():
    a = _states()
    s = state_at(a, 2)
    assert s["actors"]["cube"].shape == (13,)
    assert (s["articulations"]["panda"] == a["articulations"]["panda"][2]).all()
