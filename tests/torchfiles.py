"""Writes PyTorch checkpoint files (zip and legacy formats) without torch, for reader tests.

`fake_globals(...)` registers stand-ins under the real dotted names torch and the official
code pickle (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`,
`torch.nn.modules.conv.Conv2d`, `pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`,
`models.lstm.lstm`, ...) by inserting fake modules into `sys.modules` while the file is
written, so the pickle names exactly the globals a real `torch.save` writes. Tensors are
`Tensor(storage, offset, size, stride)` views (element units, as torch); modules are plain
objects whose `__dict__` holds `_parameters`, `_buffers`, `_modules` like `nn.Module`'s.
The layouts follow torch/serialization.py (`_save` and `_legacy_save`) of PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np

STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Storage:
    """One flat storage (a 1-D numpy array)."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data).reshape(-1)


class Tensor:
    """A view of a storage: pickles as `torch._utils._rebuild_tensor_v2(...)`."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        fn = sys.modules["torch._utils"]._rebuild_tensor_v2
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False)
        return fn, (*args, OrderedDict())


class Parameter:
    """`nn.Parameter`: pickles as `torch._utils._rebuild_parameter(tensor, True, {})`."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce_ex__(self, protocol):
        return sys.modules["torch._utils"]._rebuild_parameter, (self.tensor, True, OrderedDict())


def tensor(array) -> Tensor:
    """A contiguous tensor over its own storage."""
    a = np.asarray(array)
    stride, acc = [], 1
    for n in reversed(a.shape):
        stride.insert(0, acc)
        acc *= n
    return Tensor(Storage(a), 0, a.shape, stride)


def param(array) -> Parameter:
    return Parameter(tensor(array))


def module(cls, params=(), buffers=(), modules=(), non_persistent=(), **attrs):
    """An instance of stand-in module class `cls` laid out like a pickled `nn.Module`."""
    m = cls.__new__(cls)
    m.__dict__.update(
        training=False,
        _parameters=OrderedDict(
            (k, None if v is None else param(v)) for k, v in dict(params).items()
        ),
        _buffers=OrderedDict(
            (k, None if v is None else tensor(v)) for k, v in dict(buffers).items()
        ),
        _non_persistent_buffers_set=set(non_persistent),
        _backward_hooks=OrderedDict(),
        _forward_hooks=OrderedDict(),
        _forward_pre_hooks=OrderedDict(),
        _state_dict_hooks=OrderedDict(),
        _load_state_dict_pre_hooks=OrderedDict(),
        _modules=OrderedDict(modules),
        **attrs,
    )
    return m


def _fn(module_name, name):
    def f(*args):
        raise AssertionError("a stand-in is never called by the reader under test")

    f.__module__, f.__name__, f.__qualname__ = module_name, name, name
    return f


@contextlib.contextmanager
def fake_globals(*names: str):
    """Registers torch's rebuild functions and storage classes, plus a stand-in class per
    dotted name in `names`, under their real module paths; yields {short name: class}."""
    saved = dict(sys.modules)
    modules: dict[str, types.ModuleType] = {}

    def mod(dotted):
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in modules:
                modules[sub] = types.ModuleType(sub)
                sys.modules[sub] = modules[sub]
                if i > 1:
                    setattr(modules[".".join(parts[: i - 1])], parts[i - 1], modules[sub])
        return modules[dotted]

    try:
        torch_utils = mod("torch._utils")
        for fn in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            setattr(torch_utils, fn, _fn("torch._utils", fn))
        torch = mod("torch")
        for name in STORAGE_NAMES.values():
            setattr(torch, name, type(name, (), {"__module__": "torch"}))
        classes = {}
        for dotted in names:
            module_name, _, short = dotted.rpartition(".")
            cls = type(short, (), {"__module__": module_name})
            setattr(mod(module_name), short, cls)
            classes[short] = cls
        yield classes
    finally:
        for k in list(sys.modules):
            if k not in saved:
                del sys.modules[k]


class _Pickler(pickle.Pickler):
    def __init__(self, f, legacy: bool):
        super().__init__(f, protocol=2)  # torch.save's default pickle protocol
        self.legacy = legacy
        self.storages: dict[int, tuple[str, Storage]] = {}
        self.module_classes: set = set()

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            key = self.storages.setdefault(id(obj), (str(len(self.storages)), obj))[0]
            storage_type = getattr(sys.modules["torch"], STORAGE_NAMES[obj.data.dtype])
            pid = ("storage", storage_type, key, "cpu", obj.data.size)
            return (*pid, None) if self.legacy else pid
        # `_legacy_save` records each pickled module class once, with its source code.
        if self.legacy and isinstance(obj, type) and "_parameters" in getattr(obj, "_marks", ()):
            if obj in self.module_classes:
                return None
            self.module_classes.add(obj)
            return ("module", obj, f"{obj.__module__.replace('.', '/')}.py", "class ...")
        return None


def save_zip(obj, path, archive="archive") -> None:
    """`torch.save(obj, path)` of torch >= 1.6: a zip of data.pkl and raw storages."""
    buf = io.BytesIO()
    p = _Pickler(buf, legacy=False)
    p.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for key, storage in p.storages.values():
            z.writestr(
                f"{archive}/data/{key}",
                storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes(),
            )
        z.writestr(f"{archive}/version", "3\n")


def save_legacy(obj, path) -> None:
    """`torch.save(obj, path, _use_new_zipfile_serialization=False)`: the pre-1.6 stream."""
    f = io.BytesIO()
    for header in (
        LEGACY_MAGIC,
        1001,
        {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        },
    ):
        pickle.dump(header, f, protocol=2)
    p = _Pickler(f, legacy=True)
    p.dump(obj)
    keys = sorted(k for k, _ in p.storages.values())
    pickle.dump(keys, f, protocol=2)
    by_key = dict(p.storages.values())
    for key in keys:
        data = by_key[key].data
        f.write(struct.pack("<q", data.size))
        f.write(data.tobytes())
    with open(path, "wb") as out:
        out.write(f.getvalue())


def mark_module_classes(*classes) -> None:
    """Marks stand-in classes as nn.Module subclasses (the legacy format records them)."""
    for cls in classes:
        cls._marks = ("_parameters",)


def modules_from_flat(flat: dict, cls, buffer_names=()) -> dict:
    """{"enc.c1.0.weight": array, ...} -> {"enc": module tree} of stand-in class `cls`.

    Leaves named in `buffer_names` become buffers, the rest parameters, so that
    `state_dict()` of each top-level module gives back its part of `flat`.
    """
    tree: dict = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(node):
        params = {
            k: v for k, v in node.items() if not isinstance(v, dict) and k not in buffer_names
        }
        bufs = {k: v for k, v in node.items() if not isinstance(v, dict) and k in buffer_names}
        subs = {k: build(v) for k, v in node.items() if isinstance(v, dict)}
        return module(cls, params=params, buffers=bufs, modules=subs)

    return {name: build(node) for name, node in tree.items()}
