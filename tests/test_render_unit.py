import numpy as np
import pytest

from harness.render import _pose_deviation, replay_with_maniskill, state_at


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


def _scene(size: int, x0: int) -> np.ndarray:
    """A grey frame with a bright square whose left edge is at column ``x0``."""
    frame = np.full((size, size, 3), 90, np.uint8)
    frame[size // 4: size // 2, x0: x0 + size // 4] = 220
    return frame


def test_compare_frames_allows_edge_pixels_a_float32_offset_flips_at_any_resolution():
    from harness.render import PIXEL_TOLERANCE, compare_frames

    for size in (128, 512):
        ours = np.stack([_scene(size, 40)] * 3)
        ref = ours.copy()
        ref[0] += PIXEL_TOLERANCE  # one level of shading everywhere
        ref[1, 50, 40] = 90  # one edge pixel flipped whole, as at 512x512 in the rehearsal
        ref[2] = _scene(size, 43)  # the square 3 px to the right, at poses the replay says agree
        report = compare_frames(ours, ref, np.zeros(3))
        assert report["frames_with_identical_poses"] == 3
        assert report["mismatches_at_identical_poses"] == [2], size
        assert report["max_changed_pixels_at_identical_poses"] == 2 * 3 * (size // 4)  # both edges


def test_compare_frames_judges_only_frames_whose_poses_agree():
    from harness.render import POSE_TOLERANCE, compare_frames

    ours = np.stack([_scene(128, 40)] * 2)
    ref = np.stack([_scene(128, 40), _scene(128, 60)])
    report = compare_frames(ours, ref, np.array([0.0, 10 * POSE_TOLERANCE]))  # physics drifted at 1
    assert report["mismatches_at_identical_poses"] == [] and report["differing_frame_steps"] == [1]
    assert report["frames_with_identical_poses"] == 1
    report = compare_frames(ours, ref, np.zeros(2))
    assert report["mismatches_at_identical_poses"] == [1]


def test_a_replay_folder_whose_path_holds_dot_h5_is_refused_by_name(tmp_path):
    """replay_trajectory would look for its JSON at the path with every ".h5" replaced and fail
    on a file that does not exist; the harness says why before copying anything."""
    workdir = tmp_path / "tmp.h5KEHdg6LN" / "replay"
    with pytest.raises(ValueError, match=r"tmp\.h5KEHdg6LN.*TMPDIR"):
        replay_with_maniskill(tmp_path / "trajectories.h5", 1, "base_camera", (8, 8), workdir)
    assert not workdir.exists()
