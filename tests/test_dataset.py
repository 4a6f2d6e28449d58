import json

import h5py
import numpy as np
import pytest

from harness.dataset import DatasetError, DemoDataset, decode_image, encode_image, write_dataset

from conftest import SYNTH_META, synthetic_episode


def test_round_trip(synthetic_dataset):
    ds = DemoDataset(synthetic_dataset)
    assert ds.num_episodes == 3
    assert list(ds.seeds) == [0, 1, 2] and list(ds.num_steps) == [5, 12, 3]
    assert ds.actions.shape == (20, 8) and ds.qpos.shape == (23, 9)
    assert ds.meta["control_mode"] == "pd_joint_pos" and ds.meta["num_steps"] == 20
    frames = ds.episode_frames(1)
    assert frames.shape == (13, 16, 20, 3)
    assert list(frames[:, 0, 0, 0]) == list(range(13)) and (frames[..., 1] == 1).all()
    ds.verify()


def test_stats_are_computed_from_the_data(synthetic_dataset):
    ds = DemoDataset(synthetic_dataset)
    np.testing.assert_allclose(ds.stats["actions"]["mean"], ds.actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["obs_qpos"]["max"], ds.qpos.max(0))


def test_jpeg_is_lossy_but_close_and_png_exact():
    rng = np.random.default_rng(0)
    noise = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    assert (decode_image(encode_image(noise, "png")) == noise).all()
    # a smooth, sim-like image: a gradient with a flat square on it
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([yy * 4, xx * 4, (yy + xx) * 2], -1).astype(np.uint8)
    img[8:16, 8:16] = (200, 30, 30)
    back = decode_image(encode_image(img, "jpeg", 95))
    assert back.shape == img.shape and np.abs(back.astype(int) - img).mean() < 3


def test_missing_file_says_how_to_build_it(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*render-dataset"):
        DemoDataset(tmp_path / "nope.h5")


def test_truncated_file_is_named(synthetic_dataset):
    data = synthetic_dataset.read_bytes()
    synthetic_dataset.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"{synthetic_dataset}.*corrupt or truncated"):
        DemoDataset(synthetic_dataset)


def test_flipped_frame_byte_is_caught_on_read(synthetic_dataset):
    with h5py.File(synthetic_dataset, "r") as f:
        offset = f["obs/frame_bytes"].id.get_chunk_info(0).byte_offset  # chunked storage
    raw = bytearray(synthetic_dataset.read_bytes())
    raw[offset + 100] ^= 0xFF  # corrupt one byte inside the stored frames
    synthetic_dataset.write_bytes(bytes(raw))
    ds = DemoDataset(synthetic_dataset)  # small arrays are intact
    with pytest.raises(DatasetError, match=f"{synthetic_dataset}: frame 0 cannot be read"):
        ds.frame(0)
    with pytest.raises(DatasetError, match=str(synthetic_dataset)):
        ds.verify()


def test_other_file_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="is not a par-harness-demos file"):
        DemoDataset(path)


def test_settings_mismatch_names_file_and_fields(synthetic_dataset):
    with pytest.raises(DatasetError) as err:
        DemoDataset(synthetic_dataset, expect={"control_mode": "pd_ee_delta_pose",
                                               "image_size": (128, 128)})
    msg = str(err.value)
    assert str(synthetic_dataset) in msg
    assert "control_mode: file has 'pd_joint_pos', config asks for 'pd_ee_delta_pose'" in msg
    assert "image_size: file has [16, 20], config asks for [128, 128]" in msg
    DemoDataset(synthetic_dataset, expect={"control_mode": "pd_joint_pos", "image_size": (16, 20)})


def test_inconsistent_episode_table_is_refused(tmp_path):
    path = write_dataset(tmp_path / "d.h5", [synthetic_episode(0, 4)], SYNTH_META)
    with h5py.File(path, "a") as f:
        del f["episodes/num_steps"]
        f["episodes/num_steps"] = np.array([7])
    with pytest.raises(DatasetError, match="inconsistent.*actions has 4 rows, episodes need 7"):
        DemoDataset(path)


def test_write_is_atomic(tmp_path):
    path = tmp_path / "d.h5"
    write_dataset(path, [synthetic_episode(0, 2)], SYNTH_META)
    assert path.exists() and not (tmp_path / "d.h5.partial").exists()
    assert json.loads(h5py.File(path, "r").attrs["meta"])["seeds"] == [0]
