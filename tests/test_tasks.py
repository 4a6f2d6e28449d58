import pytest

from harness.tasks import (EVAL_INIT_STATE_SEED_START, TASKS, UnknownTaskError,
                           check_seed_ranges_disjoint, eval_init_state_seeds, get_task)


def test_registry_has_the_papers_three_tasks():
    assert sorted(TASKS) == ["PickCube", "PushCube", "StackCube"]
    for spec in TASKS.values():
        assert spec.env_id == f"{spec.name}-v1"
        assert spec.control_mode == "pd_joint_pos"
        assert spec.instruction and spec.instruction.endswith(".")
        assert set(spec.image_size) == {"smoke", "reduced", "paper"}
        assert spec.image_size["paper"] == (512, 512)


def test_lookup_by_name_or_env_id():
    assert get_task("PickCube") is get_task("PickCube-v1")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(UnknownTaskError) as err:
        get_task("PourWater")
    msg = str(err.value)
    assert "PourWater" in msg
    for name in ("PushCube", "PickCube", "StackCube"):
        assert name in msg


def test_demo_and_eval_seed_ranges_are_disjoint():
    evals = eval_init_state_seeds()
    assert evals[0] == EVAL_INIT_STATE_SEED_START == 20241201 and len(evals) == 25
    for spec in TASKS.values():
        check_seed_ranges_disjoint(spec.demo_seed_range, evals)  # must not raise
        assert max(spec.demo_seed_range) < min(evals)


def test_seed_overlap_is_refused_with_the_seeds_named():
    with pytest.raises(ValueError, match=r"2 evaluation init-state seed\(s\).*: 3, 4"):
        check_seed_ranges_disjoint(range(0, 5), range(3, 10))
