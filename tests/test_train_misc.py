"""VGGish-ish trained by the generic loop and reused as LPAPS backbone; NaN stop; split lists."""

import jax
import numpy as np
import pytest

from avjax.train import loop
from avjax.train.tasks import load_vggishish_backbone, make_task
from configs import specvqgan_vggsound, vggishish_vggsound
from data_pipelines.inputs import make_inputs
from data_pipelines.preprocess import write_split_lists


def test_classifier_trains_and_serves_as_lpaps_backbone(tmp_path):
    c = vggishish_vggsound.get_config("tiny")
    c.train.num_steps, c.train.log_every, c.train.eval_every = 12, 4, 12
    inputs = make_inputs(c)
    last = loop.train(
        c, tmp_path / "cls", make_task(c, inputs.stats), inputs.train_iter, inputs.eval_iter_fn
    )
    assert last["step"] == 12 and np.isfinite(last["train/loss"])
    assert 0.0 <= last["eval/accuracy"] <= 1.0

    feats = load_vggishish_backbone(tmp_path / "cls")
    assert sorted(feats) == ["features_0", "features_3", "features_6"]

    v = specvqgan_vggsound.get_config("tiny")
    v.loss.lpaps_backbone = str(tmp_path / "cls")
    v.loss.lpaps_layers = c.model.conv_layers
    task = make_task(v, inputs.stats)
    state = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    got = jax.jit(task.init)(jax.random.PRNGKey(0))["lpaps"]["params"]["net"]
    assert jax.tree.map(lambda x: x.shape, got) == jax.tree.map(
        lambda x: x.shape, state["lpaps"]["params"]["net"]
    )
    for a, b in zip(jax.tree.leaves(feats), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


def test_classifier_needs_matching_num_classes():
    c = vggishish_vggsound.get_config("tiny")
    c.model.num_classes = 7
    with pytest.raises(ValueError, match=r"config\.model\.num_classes=7 but the dataset"):
        make_inputs(c)


def test_non_finite_metric_stops_naming_metric_and_step():
    loop._check_finite({"train/a": 1.0, "train/b": 2.0}, 3)
    with pytest.raises(FloatingPointError, match=r"train/b=nan at step 7"):
        loop._check_finite({"train/a": 1.0, "train/b": float("nan")}, 7)


def test_bad_lpaps_backbone_path_is_named(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"config\.loss\.lpaps_backbone"):
        load_vggishish_backbone(tmp_path / "weights.bin")


def test_split_lists_for_preprocessed_folder(tmp_path):
    mel_dir = tmp_path / "melspec_10s_22050hz"
    mel_dir.mkdir()
    for i in range(10):
        np.save(mel_dir / f"clip{i}_mel.npy", np.zeros((80, 860), np.float32))
    counts = write_split_lists(tmp_path, 0.1)
    assert counts["train"] + counts["valid"] == 10 and counts["valid"] >= 1
    train = (tmp_path / "vggsound_train.txt").read_text().split()
    valid = (tmp_path / "vggsound_valid.txt").read_text().split()
    assert not set(train) & set(valid)
    assert write_split_lists(tmp_path, 0.5) == counts  # existing lists are kept


def test_epoch_schedules_follow_the_dataset_and_batch():
    """Sound2Sight's 1001 epochs: steps come from the data size and the global batch."""
    from avjax.errors import UserError
    from avjax.train import schedule
    from configs import sound2sight_m3so_nb

    c = sound2sight_m3so_nb.get_config()
    assert c.train.num_steps is None and c.train.num_epochs == 1001
    schedule.resolve_steps(c, num_train_examples=8000)
    assert (c.train.steps_per_epoch, c.train.num_steps) == (72, 1001 * 72)  # 8000 // 110

    c = sound2sight_m3so_nb.get_config()
    c.data.global_batch_size = 16  # overriding the batch keeps the epochs
    schedule.resolve_steps(c, num_train_examples=8000)
    assert (c.train.steps_per_epoch, c.train.num_steps) == (500, 1001 * 500)

    c = sound2sight_m3so_nb.get_config()
    c.train.num_steps = 30  # an explicit run length wins
    schedule.resolve_steps(c, num_train_examples=8000)
    assert (c.train.steps_per_epoch, c.train.num_steps) == (72, 30)

    c = sound2sight_m3so_nb.get_config("tiny")  # explicit short epochs are kept
    schedule.resolve_steps(c, num_train_examples=64)
    assert (c.train.steps_per_epoch, c.train.num_steps) == (5, 30)

    with pytest.raises(UserError, match="global_batch_size=110 is larger than the 50"):
        schedule.resolve_steps(sound2sight_m3so_nb.get_config(), num_train_examples=50)


def test_read_config_fills_fields_added_since_a_run_was_written(tmp_path):
    """A Sound2Sight run written before `data.flow` existed still loads, with flow off."""
    import json

    from avjax import runs
    from configs import sound2sight_m3so_nb

    c = json.loads(sound2sight_m3so_nb.get_config("tiny").to_json())
    del c["data"]["flow"]
    (tmp_path / "config.json").write_text(json.dumps(c))
    got = runs.read_config(tmp_path, "sound2sight")
    assert got.data.flow is False and got.data.n_past == c["data"]["n_past"]
    c["data"]["flow"] = True  # a value the run has is kept
    (tmp_path / "config.json").write_text(json.dumps(c))
    assert runs.read_config(tmp_path).data.flow is True


def test_host_helpers_and_process_major_mesh():
    """`avjax.multihost` on one process: gathered values equal the arrays; first rows cut."""
    from avjax import multihost
    from avjax.train import sharding as shd

    mesh = shd.make_mesh([("data", 4), ("fsdp", 2)])
    assert [d.process_index for d in mesh.devices.flat] == [0] * 8
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    batch = shd.global_batch({"x": x, "y": x[:, 0]}, mesh)
    assert len(batch["x"].sharding.device_set) == 8
    got = multihost.to_host({"batch": batch, "scalar": 2.5})
    np.testing.assert_array_equal(got["batch"]["x"], x)
    assert isinstance(got["batch"]["y"], np.ndarray) and got["scalar"] == 2.5
    first = multihost.first_rows(batch, 3)
    np.testing.assert_array_equal(first["x"], x[:3])
    np.testing.assert_array_equal(first["y"], [0.0, 4.0, 8.0])
    assert multihost.is_main()
