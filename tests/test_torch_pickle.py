"""The numpy-only PyTorch checkpoint reader: real layouts load, nothing in a file runs.

Files are written without torch (`torchfiles`): stand-in classes registered under torch's
and the official code's real names while writing, the zip and legacy layouts of
torch/serialization.py. A cross-check against `torch.save` runs when torch is installed.
"""

import argparse
import builtins
import collections
import copyreg
import io
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torchfiles
from torchfiles import Storage, Tensor

from avjax import io_safety
from avjax.convert import torch_io, torch_pickle
from avjax.errors import UserError

SAVERS = {"zip": torchfiles.save_zip, "legacy": torchfiles.save_legacy}
MODULE_CLASSES = (
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.rnn.LSTMCell",
    "torch.nn.modules.loss.MSELoss",
    "models.lstm.lstm",
    "models.dcgan_48.encoder",
)
CALLBACKS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


def _rng_array(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(-100 if np.dtype(dtype).kind == "i" else 0, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int64, np.int32, np.uint8]
DTYPES.append(np.bool_)


@pytest.mark.parametrize("fmt", SAVERS)
def test_tensors_of_every_dtype_views_and_parameters(tmp_path, fmt):
    """Contiguous tensors of each dtype, 0-d and empty tensors, and views sharing a storage
    (transposed, offset, strided) come back as the exact numpy values."""
    sd = {f"t_{np.dtype(d).name}": _rng_array((3, 4), d, i) for i, d in enumerate(DTYPES)}
    base = np.arange(24, dtype=np.float32)
    shared = Storage(base)
    views = {
        "full": Tensor(shared, 0, (4, 6), (6, 1)),
        "transposed": Tensor(shared, 0, (6, 4), (1, 6)),
        "offset_rows": Tensor(shared, 6, (2, 6), (6, 1)),
        "every_other": Tensor(shared, 1, (3, 4), (8, 2)),
        "broadcast": Tensor(shared, 5, (3, 2), (0, 1)),
    }
    expect_views = {
        "full": base.reshape(4, 6),
        "transposed": base.reshape(4, 6).T,
        "offset_rows": base[6:18].reshape(2, 6),
        "every_other": base[1 + 8 * np.arange(3)[:, None] + 2 * np.arange(4)],
        "broadcast": np.broadcast_to(base[5:7], (3, 2)),
    }
    with torchfiles.fake_globals():
        obj = collections.OrderedDict((k, torchfiles.param(v)) for k, v in sd.items())
        obj.update(views)
        obj["scalar"] = torchfiles.tensor(np.array(7, np.int64))
        obj["empty"] = torchfiles.tensor(np.zeros((0, 3), np.float32))
        SAVERS[fmt](obj, tmp_path / "sd.pt")
    if fmt == "zip":
        with zipfile.ZipFile(tmp_path / "sd.pt") as z:
            stored = [n for n in z.namelist() if "/data/" in n]
        assert len(stored) == len(sd) + 1 + 2  # the five views share one storage
    got = torch_io.load_state_dict(tmp_path / "sd.pt")
    assert list(got) == [*sd, *views, "scalar", "empty"]
    for k, v in sd.items():
        assert got[k].dtype == np.dtype(v.dtype), k
        np.testing.assert_array_equal(got[k], v)
    for k, v in expect_views.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].flags.writeable and got[k].flags.c_contiguous, k
    assert got["scalar"].shape == () and got["scalar"] == 7
    assert got["empty"].shape == (0, 3)


def _lightning_ckpt(cls, sd):
    """What pytorch-lightning 1.x saves: callbacks keyed by their class."""
    return {
        "epoch": 41,
        "global_step": 123456,
        "pytorch-lightning_version": "1.2.10",
        "state_dict": collections.OrderedDict((k, torchfiles.tensor(v)) for k, v in sd.items()),
        "callbacks": {
            cls["ModelCheckpoint"]: {
                "monitor": "val/rec_loss",
                "best_model_score": torchfiles.tensor(np.array(0.25, np.float32)),
                "best_model_path": "/logs/checkpoints/epoch=41.ckpt",
            },
            cls["EarlyStopping"]: {"wait_count": 1, "patience": 2, "stopped_epoch": 0},
        },
        "optimizer_states": [
            {
                "state": {0: {"step": 10, "exp_avg": torchfiles.tensor(np.ones(3, np.float32))}},
                "param_groups": [{"lr": 1.35e-5, "betas": (0.5, 0.9), "params": [0, 1]}],
            }
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"ckpt_path": None, "ignore_keys": [], "monitor": "val/rec_loss"},
    }


@pytest.mark.parametrize("fmt", SAVERS)
def test_lightning_ckpt_with_callback_classes(tmp_path, fmt):
    sd = {"encoder.conv_in.weight": _rng_array((4, 1, 3, 3), np.float32), "x.bias": np.ones(4)}
    with torchfiles.fake_globals(*CALLBACKS) as cls:
        SAVERS[fmt](_lightning_ckpt(cls, sd), tmp_path / "last.ckpt")
    got = torch_io.load_state_dict(tmp_path / "last.ckpt")
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v)
    raw = torch_pickle.load(tmp_path / "last.ckpt")
    names = sorted(c.__global__ for c in raw["callbacks"])
    assert names == sorted(CALLBACKS)
    (ckpt_cb,) = [v for c, v in raw["callbacks"].items() if c.__name__ == "ModelCheckpoint"]
    assert ckpt_cb["best_model_score"] == np.float32(0.25)
    assert raw["optimizer_states"][0]["param_groups"][0]["betas"] == (0.5, 0.9)


@pytest.mark.parametrize("fmt", SAVERS)
def test_vggishish_pt_with_numpy_float64_metrics(tmp_path, fmt):
    """`vggishish16.pt` / `melception-*.pt`: {"model": state dict, "metrics": numpy scalars}."""
    sd = {"features.0.weight": _rng_array((8, 1, 3, 3), np.float32), "fc.bias": np.zeros(5)}
    with torchfiles.fake_globals():
        obj = {
            "model": collections.OrderedDict((k, torchfiles.tensor(v)) for k, v in sd.items()),
            "metrics": {"valid": {"accuracy": np.float64(0.4449), "mAP": np.float64(0.4758)}},
            "epoch": 27,
        }
        SAVERS[fmt](obj, tmp_path / "vggishish16.pt")
    got = torch_io.load_state_dict(tmp_path / "vggishish16.pt")
    assert sorted(got) == sorted(sd)
    metrics = torch_pickle.load(tmp_path / "vggishish16.pt")["metrics"]["valid"]
    assert type(metrics["accuracy"]) is np.float64 and metrics["accuracy"] == 0.4449


@pytest.mark.parametrize("fmt", SAVERS)
def test_sound2sight_whole_module_pickle(tmp_path, fmt):
    """Nested modules with BN buffers, a None bias, a non-persistent buffer, `opt` as an
    argparse.Namespace and `loss` as MSELoss, flattened exactly like state_dict()."""
    with torchfiles.fake_globals(*MODULE_CLASSES) as cls:
        torchfiles.mark_module_classes(*cls.values())
        conv = torchfiles.module(
            cls["Conv2d"], params={"weight": _rng_array((4, 1, 4, 4), np.float32), "bias": None}
        )
        bn = torchfiles.module(
            cls["BatchNorm2d"],
            params={"weight": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)},
            buffers={
                "running_mean": _rng_array((4,), np.float32, 1),
                "running_var": np.ones(4, np.float32),
                "num_batches_tracked": np.array(17, np.int64),
            },
        )
        encoder = torchfiles.module(
            cls["encoder"],
            modules={"c1": torchfiles.module(cls["Sequential"], modules={"0": conv, "1": bn})},
        )
        cell = torchfiles.module(
            cls["LSTMCell"],
            params={k: _rng_array((8, 4), np.float32, 2) for k in ("weight_ih", "weight_hh")},
        )
        lstm = torchfiles.module(
            cls["lstm"],
            modules={"lstm": torchfiles.module(cls["ModuleList"], modules={"0": cell})},
            buffers={"pe": np.ones(3, np.float32), "hidden": np.zeros(2, np.float32)},
            non_persistent=["hidden"],
        )
        ckpt = {
            "encoder": encoder,
            "frame_predictor": lstm,
            "loss": torchfiles.module(cls["MSELoss"]),
            "opt": argparse.Namespace(lr=0.002, n_past=5, dataset="m3so"),
        }
        SAVERS[fmt](ckpt, tmp_path / "model.pth")
    if fmt == "legacy":  # `_legacy_save` records each module class with its source
        assert b"models/lstm.py" in (tmp_path / "model.pth").read_bytes()
    flat = torch_io.load_module_checkpoint(tmp_path / "model.pth")
    assert list(flat) == [
        "encoder.c1.0.weight",
        "encoder.c1.1.weight",
        "encoder.c1.1.bias",
        "encoder.c1.1.running_mean",
        "encoder.c1.1.running_var",
        "encoder.c1.1.num_batches_tracked",
        "frame_predictor.pe",
        "frame_predictor.lstm.0.weight_ih",
        "frame_predictor.lstm.0.weight_hh",
    ]
    assert flat["encoder.c1.1.num_batches_tracked"] == 17
    np.testing.assert_array_equal(flat["encoder.c1.0.weight"], _rng_array((4, 1, 4, 4), np.float32))
    raw = torch_pickle.load(tmp_path / "model.pth")
    assert raw["opt"].lr == 0.002 and raw["opt"].dataset == "m3so"
    assert type(raw["encoder"]).__global__ == "models.dcgan_48.encoder"


# --- hostile files ------------------------------------------------------------------------


class _Payload:
    """Pickles as a call of `fn(*args)`, the way a hostile checkpoint runs code."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (os.system, f"touch {marker}"),
        "builtins.exec": (builtins.exec, touch),
        "builtins.eval": (builtins.eval, touch),
        "subprocess.call": (subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("fmt", [*SAVERS, "bare pickle"])
@pytest.mark.parametrize(
    "payload", ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"]
)
def test_a_pickled_payload_is_refused_and_never_runs(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    fn, arg = _payloads(marker)[payload]
    path = tmp_path / "evil.pth"
    with torchfiles.fake_globals():
        # Hidden among real tensors, as a file would carry it.
        obj = {
            "state_dict": {"w": torchfiles.tensor(np.ones(2, np.float32))},
            "x": _Payload(fn, arg),
        }
        if fmt == "bare pickle":
            path.write_bytes(pickle.dumps(obj["x"], protocol=2))
        else:
            SAVERS[fmt](obj, path)
    for load in (torch_pickle.load, torch_io.load_state_dict, torch_io.load_module_checkpoint):
        with pytest.raises(UserError) as e:
            load(path)
        qualified = f"{fn.__module__}.{fn.__name__}"  # os.system pickles as posix.system
        assert str(e.value).startswith(f"{path}: refused global '{qualified}'")
    assert not marker.exists()


def test_allowed_callables_cannot_be_turned_on_other_classes(tmp_path):
    """Object reconstruction only makes placeholders; a typed-tensor rebuild only calls the
    reader's own tensor rebuilders."""
    path = tmp_path / "reconstruct.pth"
    payload = _Payload(copyreg._reconstructor, collections.OrderedDict, object, None)
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="refused object reconstruction"):
        torch_pickle.load(path)

    def _rebuild_from_type_v2(*args):
        raise AssertionError("never called")

    _rebuild_from_type_v2.__module__ = "torch._tensor"
    _rebuild_from_type_v2.__qualname__ = "_rebuild_from_type_v2"
    with torchfiles.fake_globals("torch._tensor.Unused"):
        sys.modules["torch._tensor"]._rebuild_from_type_v2 = _rebuild_from_type_v2
        args = (collections.OrderedDict, object, ([("a", 1)],), {})
        data = pickle.dumps(_Payload(_rebuild_from_type_v2, *args), protocol=2)
    (tmp_path / "typed.pth").write_bytes(data)
    with pytest.raises(UserError, match="refused tensor rebuild"):
        torch_pickle.load(tmp_path / "typed.pth")


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    with torchfiles.fake_globals():
        obj = {"w": torchfiles.tensor(np.ones((64, 64), np.float32))}
        torchfiles.save_legacy(obj, tmp_path / "legacy.pt")
        torchfiles.save_zip(obj, tmp_path / "zip.pt")
    data = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError, match=r"cut\.pt: truncated in storage"):
        torch_io.load_state_dict(tmp_path / "cut.pt")
    buf = io.BytesIO()
    with zipfile.ZipFile(tmp_path / "zip.pt") as src, zipfile.ZipFile(buf, "w") as dst:
        for n in src.namelist():
            body = src.read(n)
            dst.writestr(n, body[:-8] if "/data/" in n else body)
    (tmp_path / "short.pt").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match=r"short\.pt: storage .* holds 16376 bytes"):
        torch_io.load_state_dict(tmp_path / "short.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(UserError, match=r"notes\.pt: not a PyTorch checkpoint"):
        torch_io.load_state_dict(tmp_path / "notes.pt")
    with pytest.raises(UserError, match=r"gone\.pt does not exist"):
        torch_io.load_state_dict(tmp_path / "gone.pt")


def test_object_arrays_in_npy_and_npz_are_refused_without_allow_pickle_advice(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.array([_Payload(os.system, f"touch {marker}")], dtype=object)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", w=np.ones(2), x=evil)
    calls = {
        "evil.npy": [io_safety.load_npy, torch_io.load_state_dict],
        "evil.npz": [io_safety.load_npz, torch_io.load_state_dict, torch_io.load_module_checkpoint],
    }
    for name, fns in calls.items():
        for fn in fns:
            with pytest.raises(UserError) as e:
                fn(tmp_path / name)
            msg = str(e.value)
            assert msg.startswith(str(tmp_path / name)) and "Python objects" in msg, msg
            assert "allow_pickle" not in msg
    (tmp_path / "cut.npz").write_bytes((tmp_path / "evil.npz").read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut\.npz: not a readable numpy \.npz"):
        io_safety.load_npz(tmp_path / "cut.npz")
    assert not marker.exists()


def test_matches_torch_save_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is optional; the reader never needs it")
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    sd = conv.state_dict()
    sd["view"] = torch.arange(24.0).reshape(4, 6).t()[1:, ::2]
    for legacy in (False, True):
        path = tmp_path / f"sd_{legacy}.pt"
        torch.save(
            {"state_dict": sd, "metrics": np.float64(1.5)},
            path,
            _use_new_zipfile_serialization=not legacy,
        )
        got = torch_io.load_state_dict(path)
        assert sorted(got) == sorted(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k], v.numpy())
        torch.save({"net": conv, "opt": argparse.Namespace(lr=1)}, path)
        flat = torch_io.load_module_checkpoint(path)
        assert sorted(flat) == sorted(f"net.{k}" for k in conv.state_dict())


def test_a_lightning_state_dict_is_read_without_the_optimizer_storages(tmp_path):
    """Only the selected part's storages are read from a zip: a damaged optimizer moment
    does not stop `load_state_dict`, while reading everything reports it."""
    sd = {"w": np.ones((2, 2), np.float32)}
    with torchfiles.fake_globals(*CALLBACKS) as cls:
        torchfiles.save_zip(_lightning_ckpt(cls, sd), tmp_path / "full.ckpt")
    moment = None
    with zipfile.ZipFile(tmp_path / "full.ckpt") as src:
        raw = src.read("archive/data.pkl")
        for n in src.namelist():
            if "/data/" in n and len(src.read(n)) == 12:  # exp_avg: 3 float32
                moment = n
        with zipfile.ZipFile(tmp_path / "cut.ckpt", "w") as dst:
            for n in src.namelist():
                dst.writestr(n, src.read(n)[:4] if n == moment else src.read(n))
    assert moment is not None and raw
    np.testing.assert_array_equal(torch_io.load_state_dict(tmp_path / "cut.ckpt")["w"], sd["w"])
    with pytest.raises(UserError, match=rf"cut\.ckpt: storage {moment} holds 4 bytes"):
        torch_pickle.load(tmp_path / "cut.ckpt")
