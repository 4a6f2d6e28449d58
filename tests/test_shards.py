"""Sharded demos and evaluations merge back into exactly what one job writes (constructed
shards; the real ones, against an unsharded build: tests/test_pipeline_sim.py)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import SYNTH_META, synthetic_episode

from harness.dataset import DatasetError, DemoDataset, write_dataset
from harness.demos import PlanningError
from harness.protocol import Protocol
from harness.rollouts import RolloutFileError
from harness.shards import (ShardError, gather_rollouts, init_state_blocks, merge_datasets, merge_plans,
                            plan_shard_ranges, render_shard_ranges)


def _shard(root, a, b, failed=()):
    """A planning shard over seeds [a, b): every seed succeeds but those in ``failed``."""
    d = root / f"seeds_{a}_{b}"
    d.mkdir()
    ok = [s for s in range(a, b) if s not in failed]
    with h5py.File(d / "trajectories.h5", "w") as f:
        for i, seed in enumerate(ok):
            f.create_dataset(f"traj_{i}/actions", data=np.full((3, 2), seed, dtype=np.float32))
    episodes = [{"episode_id": i, "episode_seed": s, "elapsed_steps": 10 + s} for i, s in enumerate(ok)]
    (d / "trajectories.json").write_text(json.dumps({"env_info": {"env_id": "X"}, "episodes": episodes}))
    (d / "plan_report.json").write_text(json.dumps({
        "env_id": "X", "control_mode": "pd_joint_pos", "succeeded_seeds": ok,
        "failed_seeds": {str(s): "no plan" for s in failed if a <= s < b}, "seed_range": [a, b],
        "seconds": 1.0, "git_sha": "abc", "versions": {}}))
    return d


def test_ranges_cover_every_seed_an_unsharded_plan_could_try():
    assert plan_shard_ranges(1000, 200, 50) == [(a, a + 50) for a in range(0, 1200, 50)]
    assert plan_shard_ranges(2, 10, 5, seed_start=3) == [(3, 8), (8, 13), (13, 15)]
    assert render_shard_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert init_state_blocks(25, 5) == [(a, a + 5) for a in range(0, 25, 5)] and init_state_blocks(25, None) == [(0, 25)]


def test_merge_keeps_the_first_successes_in_seed_order(tmp_path):
    shards = [_shard(tmp_path, 0, 3, failed={1}), _shard(tmp_path, 3, 6, failed={3})]
    report = merge_plans(shards, tmp_path / "plan", num_demos=3, max_failed_seeds=5, task_name="T")
    # an unsharded plan tries 0, 1 (fails), 2, 3 (fails), 4 and stops: seed 5 is not kept
    assert report["succeeded_seeds"] == [0, 2, 4] and report["failed_seeds"] == {"1": "no plan", "3": "no plan"}
    info = json.loads((tmp_path / "plan" / "trajectories.json").read_text())
    assert [(e["episode_id"], e["episode_seed"]) for e in info["episodes"]] == [(0, 0), (1, 2), (2, 4)]
    with h5py.File(tmp_path / "plan" / "trajectories.h5") as f:
        assert sorted(f) == ["traj_0", "traj_1", "traj_2"]
        assert [f[f"traj_{i}/actions"][0, 0] for i in range(3)] == [0, 2, 4]


def test_merge_fails_as_an_unsharded_plan_would_and_names_a_missing_shard(tmp_path):
    shards = [_shard(tmp_path, 0, 3, failed={0, 1}), _shard(tmp_path, 3, 6)]
    with pytest.raises(PlanningError, match="2 seeds failed"):
        merge_plans(shards, tmp_path / "p1", num_demos=2, max_failed_seeds=1, task_name="T")
    with pytest.raises(ShardError, match="hold 4 successful seeds, 5 are needed"):
        merge_plans(shards, tmp_path / "p2", num_demos=5, max_failed_seeds=5, task_name="T")
    gap = _shard(tmp_path, 7, 9)
    with pytest.raises(ShardError, match="covers seeds 7:9; the shard before ended at 6"):
        merge_plans(shards + [gap], tmp_path / "p3", num_demos=2, max_failed_seeds=5, task_name="T")
    (shards[1] / "plan_report.json").unlink()
    with pytest.raises(ShardError, match="plan shard 1 did not finish"):
        merge_plans(shards, tmp_path / "p4", num_demos=2, max_failed_seeds=5, task_name="T")


def test_a_missing_or_foreign_plan_shard_is_refused_with_the_command_that_plans_it(tmp_path):
    shards = [_shard(tmp_path, 0, 3), _shard(tmp_path, 3, 6)]
    (shards[1] / "plan_report.json").unlink()
    with pytest.raises(ShardError, match="plan shard 1 did not finish. Plan it: `python -m harness plan-demos "
                                         f"--task T --seed-range 3 6 --out-dir {shards[1]}`.* `snakemake --cores 1 "
                                         f"{shards[1]}/plan_report.json"):
        merge_plans(shards, tmp_path / "p1", num_demos=2, max_failed_seeds=5, task_name="T")
    other = _shard(tmp_path, 6, 9)
    report = json.loads((other / "plan_report.json").read_text())
    (other / "plan_report.json").write_text(json.dumps(dict(report, env_id="Y", seed_range=[3, 6])))
    with pytest.raises(ShardError, match="its env_id is 'Y', the first shard has 'X'.*--seed-range 6 9"):
        merge_plans([shards[0], other], tmp_path / "p2", num_demos=2, max_failed_seeds=5, task_name="T")
    (other / "plan_report.json").write_text(json.dumps(dict(report, task="PickCube", seed_range=[3, 6])))
    with pytest.raises(ShardError, match="its task is 'PickCube', merge-plans --task asks for 'T'"):
        merge_plans([shards[0], other], tmp_path / "p3", num_demos=2, max_failed_seeds=5, task_name="T")
    assert not any((tmp_path / p).exists() for p in ("p1", "p2", "p3"))


def _block(path, seeds, size=(16, 20), **meta):
    """A rendered block as ``render-dataset --episodes`` writes it."""
    episodes = [synthetic_episode(s, 3, size=size) for s in seeds]
    meta = {"image_size": list(size), "config_hash": "h1", "scale": "smoke", "code_id": "c1",
            "source_trajectories": "plan/trajectories.h5", **meta}
    return write_dataset(path, episodes, {**SYNTH_META, **meta})


def test_blocks_rendered_at_another_size_or_config_are_not_merged(tmp_path):
    first = _block(tmp_path / "episodes_0_2.h5", [0, 1])
    bigger = _block(tmp_path / "episodes_2_4.h5", [2, 3], size=(24, 24), config_hash="h2")
    with pytest.raises(ShardError, match=f"their image_size differs \\(\\[16, 20\\] in {first}; \\[24, 24\\] in "
                                         f"{bigger}\\).*render-dataset .*--episodes 2 4 --out {bigger}"):
        merge_datasets([first, bigger], tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists()
    other_code = _block(tmp_path / "episodes_2_4.h5", [2, 3], code_id="c2")
    with pytest.raises(ShardError, match="their code_id differs"):
        merge_datasets([first, other_code], tmp_path / "merged.h5")
    merged = merge_datasets([first, _block(tmp_path / "episodes_2_4.h5", [2, 3])], tmp_path / "merged.h5")
    DemoDataset(merged).verify()


def test_a_dataset_that_mixes_image_sizes_fails_verify(tmp_path):
    # what merge-datasets wrote before it compared the blocks: 16x20 metadata, a 24x24 episode
    episodes = [synthetic_episode(0, 3), synthetic_episode(1, 3, size=(24, 24))]
    path = write_dataset(tmp_path / "mixed.h5", episodes, SYNTH_META)
    with pytest.raises(DatasetError, match="episode 1 \\(seed 1\\) has 24x24 frames, its metadata says 16x20.*"
                                           f"snakemake --cores 1 {path}"):
        DemoDataset(path).verify()


def test_a_missing_or_damaged_block_says_how_to_render_it_again(tmp_path):
    first = _block(tmp_path / "episodes_0_2.h5", [0, 1])
    with pytest.raises(ShardError, match=f"block {tmp_path}/episodes_2_4.h5 is missing. Render it: `python -m "
                                         "harness render-dataset .*--episodes 2 4"):
        merge_datasets([first, tmp_path / "episodes_2_4.h5"], tmp_path / "merged.h5")
    damaged = _block(tmp_path / "episodes_2_4.h5", [2, 3])
    with h5py.File(damaged, "r+") as f:  # a changed value under a valid HDF5 checksum
        f["actions"][0, 0] += 1.0
    with pytest.raises(DatasetError, match=f"block {damaged} cannot be merged: {damaged}: array actions does not "
                                           "match its checksum. Delete it and render the block again: .*--episodes 2 4"):
        merge_datasets([first, damaged], tmp_path / "merged.h5")


def _blocks(root, protocol, per_block=2, **columns):
    """Rollout blocks of ``protocol`` as ``evaluate --init-states`` writes them (``columns``:
    equal in every row, or {block index: value} per block)."""
    seeds = list(protocol.init_state_seeds)
    parts = []
    for k, (a, b) in enumerate(init_state_blocks(protocol.num_init_states, per_block)):
        rows = [{"task": "PushCube", "method": "act", "run_dir": "runs/act/PushCube", "config_hash": "h1",
                 **{c: v[k] if isinstance(v, dict) else v for c, v in columns.items()},
                 "policy_seed": p, "init_state_seed": s, "success": (p + s) % 2, "seconds": 0.1}
                for p in reversed(protocol.policy_seeds) for s in seeds[a:b]]  # each block in its own order
        parts.append(root / f"init_states_{a}_{b}.csv")
        pd.DataFrame(rows).to_csv(parts[-1], index=False)
    return parts


def test_gathered_rollouts_are_the_protocols_in_order(tmp_path):
    protocol = Protocol(num_init_states=4, policy_seeds=(0, 1))
    parts = _blocks(tmp_path, protocol)
    out = gather_rollouts(parts, tmp_path / "all.csv", protocol, task="PushCube")
    rows = pd.read_csv(out)
    assert list(zip(rows["policy_seed"], rows["init_state_seed"])) == protocol.jobs()


def test_a_missing_or_overlapping_block_is_refused_with_what_to_run(tmp_path):
    protocol = Protocol(num_init_states=4, policy_seeds=(0, 1))
    parts = _blocks(tmp_path, protocol)
    with pytest.raises(ShardError, match="4 \\(policy seed, init state\\) missing .* evaluate them "
                                         "\\(`python -m harness evaluate --run runs/act/PushCube --task PushCube "
                                         f"--init-states 2 4 --out {tmp_path}/init_states_2_4.csv`"):
        gather_rollouts(parts[:1], tmp_path / "x.csv", protocol)
    with pytest.raises(ShardError, match="init_states_0_2.csv is given twice: give each block once"):
        gather_rollouts(parts + parts[:1], tmp_path / "y.csv", protocol)
    overlap = tmp_path / "copy.csv"
    overlap.write_bytes(parts[0].read_bytes())
    with pytest.raises(ShardError, match=f"4 twice \\(first: \\(0, 20241201\\), in {overlap} and {parts[0]}\\): "
                                         "give each block once"):
        gather_rollouts(parts + [overlap], tmp_path / "z.csv", protocol)
    with pytest.raises(ShardError, match="4 not in this config's protocol"):
        gather_rollouts(parts, tmp_path / "w.csv", Protocol(num_init_states=2, policy_seeds=(0, 1)))
    assert not any((tmp_path / n).exists() for n in ("x.csv", "y.csv", "z.csv", "w.csv"))


@pytest.mark.parametrize("column, values", [
    ("method", {0: "act", 1: "dp"}),  # blocks of two runs
    ("config_hash", {0: "h1", 1: "h2"}),
    ("code_id", {0: "c1", 1: "c2"}),
])
def test_blocks_of_different_evaluations_are_not_gathered(tmp_path, column, values):
    protocol = Protocol(num_init_states=4, policy_seeds=(0, 1))
    parts = _blocks(tmp_path, protocol, **{column: values})
    with pytest.raises(ShardError, match=f"do not belong together: their {column} differs "
                                         f"\\('{values[0]}' in {parts[0]}; '{values[1]}' in {parts[1]}\\)"):
        gather_rollouts(parts, tmp_path / "all.csv", protocol)
    assert not (tmp_path / "all.csv").exists()


def test_blocks_of_another_task_or_cut_off_are_refused(tmp_path):
    protocol = Protocol(num_init_states=4, policy_seeds=(0, 1))
    parts = _blocks(tmp_path, protocol)
    with pytest.raises(ShardError, match="hold rollouts on PushCube, and gather-rollouts --task asks for PickCube"):
        gather_rollouts(parts, tmp_path / "all.csv", protocol, task="PickCube")
    parts[1].write_bytes(parts[1].read_bytes()[:-5])
    with pytest.raises(RolloutFileError, match=f"{parts[1]}: its last line \\(line 5\\) is cut off.* "
                                               "--init-states 2 4 --out"):
        gather_rollouts(parts, tmp_path / "all.csv", protocol)
