import pytest
import yaml

from harness.config import ConfigError, load_config
from harness.paths import CONFIG_DIR


@pytest.mark.parametrize("scale", ["smoke", "reduced", "paper"])
def test_shipped_configs_validate(scale):
    cfg = load_config(scale)
    assert cfg.scale == scale
    assert cfg.tasks == ["PushCube", "PickCube", "StackCube"]
    assert str(cfg.output_root) == f"outputs/{scale}"
    for name in cfg.tasks:
        task = cfg.task(name)
        assert task.image_size == task.spec.image_size[scale]


def test_paper_scale_is_the_papers_protocol():
    cfg = load_config("paper")
    assert cfg.demos["num_demos"] == 1000
    assert cfg.data["compute"]["wants_gpu"] is True


def _write(tmp_path, data):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _smoke():
    return yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())


def test_unknown_key_is_named_with_its_path(tmp_path):
    data = _smoke()
    data["demos"]["num_demo"] = 3
    with pytest.raises(ConfigError) as err:
        load_config(path=_write(tmp_path, data))
    assert "unknown key 'demos.num_demo'" in str(err.value)
    assert "num_demos" in str(err.value)  # the allowed keys are listed


def test_unknown_top_level_key(tmp_path):
    data = dict(_smoke(), trainning={})
    with pytest.raises(ConfigError, match="unknown key 'trainning'"):
        load_config(path=_write(tmp_path, data))


def test_wrong_type_names_the_key(tmp_path):
    data = _smoke()
    data["demos"]["num_demos"] = "many"
    with pytest.raises(ConfigError, match=r"key 'demos\.num_demos': 'many' is not of type 'integer'"):
        load_config(path=_write(tmp_path, data))


def test_unknown_task_in_config(tmp_path):
    data = dict(_smoke(), tasks=["PushCube", "OpenDoor"])
    with pytest.raises(ConfigError, match=r"key 'tasks\.1'"):
        load_config(path=_write(tmp_path, data))


def test_unknown_scale_lists_known_ones():
    with pytest.raises(ConfigError, match="known scales: paper, reduced, rehearsal, smoke"):
        load_config("huge")


def test_defaults_filled_and_overrides_applied(tmp_path):
    data = _smoke()
    data["scale"] = "tiny"
    data["task_overrides"] = {"PushCube": {"image_size": [24, 32], "max_episode_steps": 50}}
    cfg = load_config(path=_write(tmp_path, data))
    assert cfg.demos["image_codec"] == "jpeg" and cfg.demos["seed_start"] == 0
    push = cfg.task("PushCube")
    assert push.image_size == (24, 32) and push.max_episode_steps == 50
    with pytest.raises(ConfigError, match="task_overrides.PickCube.image_size"):
        cfg.task("PickCube")  # custom scale without a default size


def test_config_hash_changes_with_content(tmp_path):
    data = _smoke()
    a = load_config(path=_write(tmp_path, data)).config_hash()
    data["demos"]["num_demos"] = 3
    b = load_config(path=_write(tmp_path, data)).config_hash()
    assert a != b and len(a) == 12


def test_unknown_method_in_methods_is_named_with_the_known_ones(tmp_path):
    data = dict(_smoke(), methods=["act", "dp_unnet"])
    with pytest.raises(ConfigError) as err:
        load_config(path=_write(tmp_path, data))
    assert "methods: unknown method 'dp_unnet'" in str(err.value)
    assert "dp_unet" in str(err.value) and "par_noar" in str(err.value)  # the known ones


@pytest.mark.parametrize("overrides, culprit", [
    ({"actt": {"chunk_size": 4}}, "method_overrides: unknown method 'actt'"),
    ({"act": {"chunk_sise": 4}}, "method_overrides.act: ACTConfig has no field(s) chunk_sise"),
    ({"par_noar": {"widht": 4}}, "method_overrides.par_noar: PARConfig has no field(s) widht"),
])
def test_unknown_method_override_is_refused_when_the_config_loads(tmp_path, overrides, culprit):
    data = dict(_smoke(), method_overrides=overrides)
    with pytest.raises(ConfigError) as err:
        load_config(path=_write(tmp_path, data))
    assert culprit in str(err.value)
    assert "known fields" in str(err.value) or "known:" in str(err.value)


def test_a_batch_that_does_not_divide_into_its_micro_batches_is_refused_when_the_config_loads(tmp_path):
    data = dict(_smoke(), method_overrides={"icrt": {"batch_size": 6, "grad_accum_steps": 4}})
    with pytest.raises(ConfigError, match=r"method_overrides.icrt: ICRTConfig.batch_size 6 must divide into "
                                          r"grad_accum_steps 4"):
        load_config(path=_write(tmp_path, data))


def test_method_overrides_are_checked_at_the_configs_own_method_scale(tmp_path):
    """ICRT's paper preset accumulates 8 micro-batches, its smoke preset none: a smoke batch of 3
    is valid there, though the paper defaults would refuse it."""
    data = dict(_smoke(), method_overrides={"icrt": {"batch_size": 3}})
    assert load_config(path=_write(tmp_path, data)).method("icrt")[2].batch_size == 3


def test_snakemake_config_keys_are_checked():
    from harness.config import load_workflow_config

    assert load_workflow_config({"scale": "smoke"}).scale == "smoke"
    with pytest.raises(ConfigError, match=r"unknown --config key\(s\) 'scales'; known keys: scale .*config_file"):
        load_workflow_config({"scales": "smoke"})
    with pytest.raises(ConfigError, match="known scales: paper, reduced, rehearsal, smoke"):
        load_workflow_config({"scale": "smok"})


def test_a_scale_contradicting_the_config_file_is_refused(tmp_path):
    from harness.config import load_workflow_config

    path = _write(tmp_path, dict(_smoke(), scale="mine"))
    assert load_workflow_config({"config_file": str(path)}).scale == "mine"
    assert load_workflow_config({"config_file": str(path), "scale": "mine"}).scale == "mine"
    with pytest.raises(ConfigError, match="scale=smoke contradicts"):
        load_workflow_config({"config_file": str(path), "scale": "smoke"})


@pytest.mark.parametrize("scale", ["paper", "smoke", "mine"])
def test_each_scale_has_its_own_results_folder(tmp_path, scale):
    from pathlib import Path

    cfg = load_config(path=_write(tmp_path, dict(_smoke(), scale=scale)))
    assert cfg.results_dir == (Path("results") if scale == "paper" else Path("results") / scale)


def test_scale_names_that_would_collide_with_committed_results_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="scale 'measured' is reserved"):
        load_config(path=_write(tmp_path, dict(_smoke(), scale="measured")))


def test_the_init_state_seed_start_is_one_number():
    """The schema's default and the paper config repeat the protocol's constant (JSON and
    YAML cannot import it); they must agree with it."""
    import json

    from harness.paths import SCHEMA_PATH
    from harness.protocol import Protocol
    from harness.tasks import EVAL_INIT_STATE_SEED_START

    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["properties"]["evaluation"]["properties"]["init_state_seed_start"]["default"] == EVAL_INIT_STATE_SEED_START
    assert load_config("paper").protocol("PushCube").init_state_seed_start == EVAL_INIT_STATE_SEED_START
    assert Protocol().init_state_seed_start == EVAL_INIT_STATE_SEED_START == 20241201


def test_one_evaluation_job_per_task_is_no_part_of_the_hash_and_excludes_sharding(tmp_path):
    """evaluation.one_job_per_task changes which process rolls out, not a row (the rows are
    checked equal in tests/test_pipeline_sim.py), so it leaves the config hash; it cannot be
    combined with sharding a cell's initial states over jobs."""
    data = _smoke()
    data["evaluation"]["one_job_per_task"] = True
    together = load_config(path=_write(tmp_path, data)).config_hash()
    data["evaluation"]["one_job_per_task"] = False
    assert load_config(path=_write(tmp_path, data)).config_hash() == together
    data["evaluation"].update(one_job_per_task=True, init_states_per_job=1)
    with pytest.raises(ConfigError, match="one_job_per_task and evaluation.init_states_per_job"):
        load_config(path=_write(tmp_path, data))
