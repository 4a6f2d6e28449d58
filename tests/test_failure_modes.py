"""benchmarks/failure_modes.py: the per-episode flags it counts, on constructed step records
and on the real PickCube env (its ``evaluate()`` flags and the cube/goal geometry)."""

import sys

import numpy as np
import pytest
import torch

from harness.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import failure_modes  # noqa: E402


def test_an_episode_summary_gives_each_flags_first_step_and_the_cubes_closest_approach():
    steps = [{"is_grasped": False, "is_obj_placed": False, "cube_z": 0.02, "goal_dist": 0.30},
             {"is_grasped": True, "is_obj_placed": False, "cube_z": 0.05, "goal_dist": 0.10},
             {"is_grasped": True, "is_obj_placed": True, "cube_z": 0.21, "goal_dist": 0.01},
             {"is_grasped": False, "is_obj_placed": False, "cube_z": 0.02, "goal_dist": 0.20}]
    s = failure_modes.summarise(steps, {"cube_z": 0.02})
    assert s["steps"] == 4
    assert (s["is_grasped_ever"], s["is_grasped_first"], s["is_grasped_last"]) == (True, 2, False)
    assert (s["is_obj_placed_ever"], s["is_obj_placed_first"]) == (True, 3)
    assert s["max_lift_m"] == pytest.approx(0.19) and s["lifted_ever"]
    assert (s["min_goal_dist_m"], s["final_goal_dist_m"]) == (0.01, 0.2)


def test_a_cube_pushed_or_tipped_below_the_threshold_is_not_lifted():
    steps = [{"cube_z": 0.02 + failure_modes.LIFT_M * 0.9}]
    s = failure_modes.summarise(steps, {"cube_z": 0.02})
    assert not s["lifted_ever"] and "is_grasped_ever" not in s


def test_flags_are_the_batched_boolean_entries_of_info_without_success():
    info = {"success": torch.tensor([True]), "is_grasped": torch.tensor([True]),
            "is_obj_placed": np.array([False]), "elapsed_steps": torch.tensor([3]), "reward_part": torch.tensor([0.5])}
    assert failure_modes.flags_of(info) == {"is_grasped": True, "is_obj_placed": False}


@pytest.mark.sim
def test_the_recorder_keeps_the_pickcube_envs_own_flags_and_geometry_at_every_step():
    from harness.sim import make_env

    env = make_env("PickCube-v1", "pd_joint_pos", max_episode_steps=5)
    try:
        rec = failure_modes.Recorder(env)
        rec.reset(seed=20241201)
        u = env.unwrapped
        assert rec.start["cube_z"] == pytest.approx(float(u.cube.pose.p[0, 2]))
        hold = u.agent.robot.get_qpos()[0, :8].cpu().numpy()  # the arm's 7 joints and a gripper target
        for _ in range(2):
            rec.step(hold)
        assert len(rec.steps) == 2
        assert {"is_grasped", "is_obj_placed", "is_robot_static"} <= set(rec.steps[-1])
        goal = float(np.linalg.norm((u.goal_site.pose.p - u.cube.pose.p)[0].cpu().numpy()))
        assert rec.steps[-1]["goal_dist"] == pytest.approx(goal)
        assert rec.steps[-1]["is_grasped"] is False  # the gripper starts open, above the cube
    finally:
        env.close()


def test_the_counts_are_by_rollout_by_initial_state_and_by_demo_and_rebuild_from_a_saved_result(tmp_path):
    import json

    rollouts = [{"policy_seed": seed, "init_state_seed": state, "success": False, "committed_success": False,
                 "is_grasped_ever": state == 1 or (state == 2 and seed == 0), "min_goal_dist_m": 0.1 * (state + 1)}
                for seed in range(5) for state in range(3)]
    demos = [{"demo": 0, "success": True, "is_grasped_ever": True, "min_goal_dist_m": 0.01}]
    saved = tmp_path / "failure_modes_x.json"
    saved.write_text(json.dumps({"run": "r", "rows": "rows.csv", "task": "PickCube", "method": "act",
                                 "rollouts": 15, "seconds": 1.0, "per_rollout": rollouts, "per_demo": demos}))
    assert failure_modes.main(["--tabulate", str(saved)]) == 0
    result = json.loads(saved.read_text())
    assert result["rollout_counts"]["is_grasped_ever"] == {"count": 6, "of": 15}
    assert result["state_counts"]["is_grasped_ever"] == {"count": 2, "of": 3}  # states 1 and 2
    assert result["demo_counts"]["success"] == {"count": 1, "of": 1} and result["replay_mismatches"] == []
    assert "| is_grasped_ever | 6/15 | 2/3 | 1/1 |" in saved.with_suffix(".md").read_text()
    rollouts[0]["success"] = True  # a replay that disagrees with the committed row is named
    saved.write_text(json.dumps({**result, "per_rollout": rollouts}))
    failure_modes.main(["--tabulate", str(saved)])
    assert json.loads(saved.read_text())["replay_mismatches"] == [[0, 0]]
