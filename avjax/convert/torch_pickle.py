"""A numpy-only reader of PyTorch checkpoint files that never runs the file's code.

`torch.save` writes a pickle, and unpickling may call any importable function the file
names (`os.system`, `builtins.exec`, ...). This reader resolves only an explicit
allow-list of globals, so official checkpoints load without PyTorch installed and a
hostile file is refused before anything of it runs:

* tensors: `torch._utils._rebuild_tensor{,_v2,_v3}`, `_rebuild_parameter{,_with_state}`,
  `torch._tensor._rebuild_from_type_v2`, the storage classes (`torch.FloatStorage`, ...,
  `torch.UntypedStorage`) and dtypes (`torch.float32`, ...): rebuilt as numpy arrays from
  the file's raw storage bytes;
* containers: `collections.OrderedDict`, `builtins.set` / `frozenset` / `dict` / `list` /
  `tuple`, `torch.Size`;
* numpy scalars and arrays (`numpy.core.multiarray.scalar`, `_reconstruct`, `numpy.dtype`;
  the `metrics` of `vggishish16.pt` hold float64 scalars), numeric dtypes only;
* inert placeholders, never called with effect: `torch.nn.*` (module classes and
  `torch.nn.functional` functions), the official repositories' classes (`models.*` of
  Sound2Sight; `specvqgan.*`, `taming.*` of SpecVQGAN, should a file name them),
  `pytorch_lightning.*` (the callbacks that key `checkpoint['callbacks']`), `omegaconf.*` and
  `typing.*` (hyper-parameters),
  `argparse.Namespace` (Sound2Sight's `opt`), `torch.Tensor`, `torch.device`. A
  placeholder ignores its constructor arguments and only records its pickled state, so a
  pickled `nn.Module` keeps its `_parameters` / `_buffers` / `_modules` dicts, which
  `module_state_dict` flattens like `Module.state_dict()`.

Any other global is refused with a `UserError` naming the file and the global, before
anything from the file is called. The NEWOBJ opcode can only instantiate classes of this
list; `copyreg._reconstructor` / `copyreg.__newobj__` (protocols 0 and 1) only
placeholders. The reader's own callables and placeholder classes are created per load,
so nothing a file does to them outlives it.

Formats (torch/serialization.py of the PyTorch repository): the zip archive of torch >= 1.6
(`<name>/data.pkl` with storages `<name>/data/<key>`, `<name>/byteorder`) and the legacy
stream (magic number, protocol version, sys info, the main pickle, the storage keys, then
per storage an int64 element count and its raw bytes).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import os
import pathlib
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from avjax.errors import UserError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

__all__ = ["Placeholder", "is_module", "load", "module_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_DTYPES = {  # torch dtype name -> numpy dtype
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}  # fmt: skip
_STORAGES = {  # torch.<Name>Storage -> numpy dtype
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}  # fmt: skip

# Module prefixes whose globals become inert placeholders (classes or functions that only
# describe the pickled objects; their code is never imported).
PLACEHOLDER_PREFIXES = (
    "torch.nn.",
    "models.",  # Sound2Sight: models.lstm, models.transformers, models.dcgan_48, ...
    "specvqgan.",
    "taming.",
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",  # Lightning `hyper_parameters` saved from an OmegaConf config
    "typing.",  # the type annotations OmegaConf's metadata pickles (`typing.Any`)
)
PLACEHOLDER_GLOBALS = {
    "argparse.Namespace",
    "torch.Tensor",
    "torch.device",
    "torch.nn.parameter.Parameter",
}


class Placeholder:
    """Inert stand-in for a class or function named by a checkpoint; records pickled state.

    `__global__` is the dotted name the file gave. Construction ignores its arguments
    (kept in `args`); `state` is what the pickle restored (a module's `__dict__`:
    `_parameters`, `_buffers`, `_modules`, ...).
    """

    __global__ = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        obj.__dict__["state"] = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __getattr__(self, name):  # `opt.lr` of a pickled argparse.Namespace, for reading
        state = self.__dict__.get("state")
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0]
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"{self.__global__} placeholder has no '{name}'")

    def __repr__(self):
        return f"<placeholder {self.__global__}>"


def is_module(obj: Any) -> bool:
    """Whether `obj` is a placeholder of a pickled `nn.Module` (has `_parameters`)."""
    return isinstance(obj, Placeholder) and isinstance(_module_dict(obj), Mapping)


def _module_dict(obj: Placeholder) -> Mapping | None:
    state = obj.__dict__.get("state")
    if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
        state = state[0]
    if isinstance(state, Mapping) and isinstance(state.get("_parameters"), Mapping):
        return state
    return None


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """`Module.state_dict()` of a pickled module placeholder: {"sub.0.weight": array}.

    Parameters then persistent buffers of each module, then its children in order; `None`
    entries and buffers named in `_non_persistent_buffers_set` are skipped, as torch does.
    """
    out: dict[str, np.ndarray] = {}
    seen: set[int] = set()

    def walk(m, pre):
        if id(m) in seen:
            return
        seen.add(id(m))
        st = _module_dict(m) if isinstance(m, Placeholder) else None
        if st is None:
            return
        skip = st.get("_non_persistent_buffers_set") or ()
        for name, p in st["_parameters"].items():
            if p is not None:
                out[pre + name] = _as_array(p, pre + name)
        for name, b in (st.get("_buffers") or {}).items():
            if b is not None and name not in skip:
                out[pre + name] = _as_array(b, pre + name)
        for name, child in (st.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{pre}{name}.")

    walk(obj, prefix)
    return out


def _as_array(x, key) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    raise UserError(f"{key}: expected a tensor, got {type(x).__name__}")


# --- storages and tensors -------------------------------------------------------------------


class _Storage:
    """One storage of the file: dtype, element count and its numpy data, read on first use.

    `read` (zip files) reads the bytes when a tensor over the storage is materialized, so
    storages nobody asks for (a Lightning file's optimizer moments) are never read; a
    legacy file's storages are assigned after its main pickle.
    """

    def __init__(self, dtype, numel, read=None):
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self._read = read
        self._data = None

    @property
    def data(self):
        if self._data is None and self._read is not None:
            self._data = self._read()
        return self._data

    @data.setter
    def data(self, value):
        self._data = value


class _StorageView:
    """A legacy-format view `root[offset:offset + size]` sharing the root storage."""

    def __init__(self, root, offset, size):
        self.root, self.offset, self.numel = root, offset, size
        self.dtype = root.dtype

    @property
    def data(self):
        d = self.root.data
        return None if d is None else d[self.offset : self.offset + self.numel]


class _LazyTensor:
    """A tensor as the pickle describes it; `_resolve` turns it into a numpy array."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _tensor(storage, offset, size, stride, name) -> _LazyTensor:
    if not isinstance(storage, _Storage | _StorageView):
        raise UserError(f"{name}: a tensor without a storage of this file")
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(offset)
    except (TypeError, ValueError):
        raise UserError(f"{name}: malformed tensor size/stride") from None
    return _LazyTensor(storage, offset, size, stride)


def _materialize(storage, offset, size, stride, name) -> np.ndarray:
    data = storage.data
    if data is None:
        raise UserError(f"{name}: a tensor's storage is missing from the file")
    if len(size) != len(stride) or min((*size, *stride, offset, 0)) < 0:
        raise UserError(f"{name}: malformed tensor (size {size}, stride {stride})")
    if 0 in size:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise UserError(
            f"{name}: tensor (offset {offset}, size {size}, stride {stride}) runs past its "
            f"storage of {data.size} elements; the file is truncated or corrupt"
        )
    base = data[offset:]
    item = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view, order="C")  # a C-contiguous copy, whatever the strides


# --- the unpickler ------------------------------------------------------------------------


def _allowed(name: str) -> tuple[dict[str, Any], Callable[[str], type]]:
    """Fresh allowed callables for one load (see the module docstring)."""
    placeholders: dict[str, type] = {}

    def rebuild_tensor(storage, storage_offset, size, stride, *rest):
        return _tensor(storage, storage_offset, size, stride, name)

    def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *m):
        return rebuild_tensor(storage, storage_offset, size, stride)

    def rebuild_parameter(data, *rest):
        if not isinstance(data, _LazyTensor):
            raise UserError(f"{name}: a parameter without tensor data")
        return data

    def rebuild_from_type_v2(func, new_type, args, state):
        if func not in rebuilders or not isinstance(args, tuple):
            raise UserError(f"{name}: refused tensor rebuild through {func!r}")
        return func(*args)

    def scalar(dtype, data=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
            raise UserError(f"{name}: refused numpy scalar of dtype {dtype!r}")
        if len(data) != dtype.itemsize:
            raise UserError(f"{name}: numpy scalar of {len(data)} bytes for dtype {dtype}")
        return np.frombuffer(data, dtype)[0]

    def reconstruct(cls, shape, dtype_char):
        if cls is not _NDARRAY:
            raise UserError(f"{name}: refused numpy array subclass {cls!r}")
        return _multiarray._reconstruct(np.ndarray, (0,), b"b")

    def frombuffer(buf, dtype, shape, order):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UserError(f"{name}: refused numpy buffer of dtype {dtype!r}")
        return _numeric._frombuffer(bytes(buf), dtype, shape, order)

    def encode(text, encoding="utf-8"):
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise UserError(f"{name}: refused _codecs.encode({encoding!r})")
        return codecs.encode(text, "latin1")

    def empty_bytes(*args):
        if args:
            raise UserError(f"{name}: refused bytes{args!r}")
        return b""

    def torch_size(dims=()):
        return tuple(int(d) for d in dims)

    def reconstructor(cls, base, state=None):  # copyreg._reconstructor (protocols 0, 1)
        if not (isinstance(cls, type) and issubclass(cls, Placeholder)) or base is not _OBJECT:
            raise UserError(f"{name}: refused object reconstruction of {cls!r}")
        return cls.__new__(cls)

    def newobj(cls, *args):  # copyreg.__newobj__
        if not (isinstance(cls, type) and issubclass(cls, Placeholder)):
            raise UserError(f"{name}: refused object creation of {cls!r}")
        return cls.__new__(cls)

    rebuilders = {rebuild_tensor, rebuild_tensor_v3, rebuild_parameter}
    fixed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch._utils._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch.Size": torch_size,
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set,
        "builtins.dict": dict,
        "builtins.list": list,
        "builtins.tuple": tuple,
        "builtins.frozenset": frozenset,
        "builtins.bytes": empty_bytes,
        "_codecs.encode": encode,
        "copyreg._reconstructor": reconstructor,
        "copyreg.__newobj__": newobj,
        "numpy.dtype": np.dtype,
        "numpy.ndarray": _NDARRAY,  # only an argument of _reconstruct, never called
        "builtins.object": _OBJECT,  # only an argument of copyreg._reconstructor
    }
    for mod in ("numpy.core", "numpy._core"):
        fixed[f"{mod}.multiarray.scalar"] = scalar
        fixed[f"{mod}.multiarray._reconstruct"] = reconstruct
        fixed[f"{mod}.numeric._frombuffer"] = frombuffer
    for storage_name, dtype in _STORAGES.items():
        fixed[f"torch.{storage_name}"] = _StorageType(dtype)
    fixed["torch.storage.UntypedStorage"] = _StorageType(np.uint8)
    for dtype_name, dtype in _DTYPES.items():
        fixed[f"torch.{dtype_name}"] = _TorchDtype(dtype)

    def placeholder(qualified: str) -> type:
        if qualified not in placeholders:
            module, _, short = qualified.rpartition(".")
            cls = type(short, (Placeholder,), {"__global__": qualified, "__module__": module})
            placeholders[qualified] = cls
        return placeholders[qualified]

    return fixed, placeholder


_NDARRAY = object()  # stands for `numpy.ndarray` as _reconstruct's first argument
_OBJECT = object()  # stands for `builtins.object` as copyreg._reconstructor's base


def _from_bytes(raw: bytes, dtype, numel: int, big: bool) -> np.ndarray:
    arr = np.frombuffer(raw, dtype, count=numel)
    return arr.byteswap() if big and arr.dtype.itemsize > 1 else arr


class _StorageType:
    """`torch.FloatStorage` and friends: only names an element dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def __repr__(self):
        return f"<storage type {self.dtype}>"


class _TorchDtype:
    """`torch.float32` and friends: only names a numpy dtype."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, name, persistent_load: Callable):
        super().__init__(file)
        self._name = name
        self._fixed, self._placeholder = _allowed(name)
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <= 2 files name Python 2 modules (`__builtin__`, `copy_reg`, `commands`).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self._fixed:
            return self._fixed[qualified]
        if qualified in PLACEHOLDER_GLOBALS or qualified.startswith(PLACEHOLDER_PREFIXES):
            return self._placeholder(qualified)
        raise UserError(
            f"{self._name}: refused global '{qualified}'; a checkpoint may only name tensor, "
            "container, numpy-scalar and model classes, so this file is not loaded (it could "
            "run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        return self._persistent(pid, self)


def _storage_from_pid(pid, name) -> tuple[str, np.dtype, int, Any]:
    """('storage', type, key, location, numel[, view]) -> (key, dtype, numel, view)."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise UserError(f"{name}: refused persistent id {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    if isinstance(storage_type, _StorageType | _TorchDtype):
        dtype = storage_type.dtype
    else:
        raise UserError(f"{name}: unknown storage type {storage_type!r}")
    if not isinstance(numel, int) or numel < 0:
        raise UserError(f"{name}: malformed storage size {numel!r}")
    return str(key), dtype, numel, (pid[5] if len(pid) > 5 else None)


def _load_zip(path: pathlib.Path, zf: zipfile.ZipFile, select: Callable) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise UserError(f"{path}: a zip file but not a PyTorch checkpoint (no <name>/data.pkl)")
    root = pkl[0][: -len("data.pkl")]
    big = f"{root}byteorder" in names and zf.read(f"{root}byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}

    def reader(member, dtype, numel):
        def read():
            try:
                raw = zf.read(member)
            except KeyError:
                msg = f"{path}: storage {member} is missing; the file is incomplete"
                raise UserError(msg) from None
            itemsize = np.dtype(dtype).itemsize
            if len(raw) < numel * itemsize:
                raise UserError(
                    f"{path}: storage {member} holds {len(raw)} bytes, expected {numel} x "
                    f"{itemsize}; the file is truncated or corrupt"
                )
            return _from_bytes(raw, dtype, numel, big)

        return read

    def persistent_load(pid, unpickler):
        key, dtype, numel, _ = _storage_from_pid(pid, path)
        if key not in storages:
            storages[key] = _Storage(dtype, numel, reader(f"{root}data/{key}", dtype, numel))
        st = storages[key]
        if st.dtype != np.dtype(dtype):  # one storage read as another dtype (rare)
            return _Storage(dtype, numel, lambda: st.data.view(dtype)[:numel])
        return st

    obj = _unpickle(path, io.BytesIO(zf.read(pkl[0])), persistent_load)
    return _resolve(select(obj), {}, path)  # reads only the storages `select` keeps


def _load_legacy(path: pathlib.Path, f, select: Callable) -> Any:
    def plain(what):
        try:
            return _Unpickler(f, path, _refuse_pid).load()
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{path}: not a PyTorch checkpoint ({what}: {e})") from None

    magic = plain("magic number")
    if magic != LEGACY_MAGIC:
        raise UserError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy file)"
        )
    if plain("protocol version") != 1001:
        raise UserError(f"{path}: unsupported legacy PyTorch protocol version")
    sys_info = plain("sys info")
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)

    roots: dict[str, _Storage] = {}
    views: dict[str, _StorageView] = {}

    def persistent_load(pid, unpickler):
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            cls = pid[1] if len(pid) > 1 else None
            if isinstance(cls, type) and issubclass(cls, Placeholder):
                return cls
            raise UserError(f"{path}: refused module record {pid[:2]!r}")
        key, dtype, numel, view = _storage_from_pid(pid, path)
        if key not in roots:
            roots[key] = _Storage(dtype, numel)
        root = roots[key]
        if view is None:
            return root
        view_key, offset, size = view
        if view_key not in views:
            views[view_key] = _StorageView(root, int(offset), int(size))
        return views[view_key]

    result = _unpickle(path, f, persistent_load)
    keys = plain("storage keys")
    if not isinstance(keys, list):
        raise UserError(f"{path}: malformed storage key list")
    for key in keys:
        st = roots.get(str(key))
        if st is None:
            raise UserError(f"{path}: storage {key!r} is not used by the checkpoint")
        head = f.read(8)
        if len(head) != 8:
            raise UserError(f"{path}: truncated before storage {key}")
        (count,) = struct.unpack("<q" if little else ">q", head)
        if count < 0:
            raise UserError(f"{path}: malformed size {count} of storage {key}")
        nbytes = count * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise UserError(f"{path}: truncated in storage {key} ({len(raw)} of {nbytes} bytes)")
        st.data = _from_bytes(raw, st.dtype, count, not little)
    return _resolve(select(result), {}, path)


def _resolve(obj, done: dict[int, np.ndarray], path, seen=None):
    """Replaces every `_LazyTensor` in `obj` (dicts, lists, tuples, placeholders) in place
    by its numpy array (`done` keeps one array per tensor object).

    Also refuses numpy arrays of Python objects (numeric data only).
    """
    seen = set() if seen is None else seen
    if isinstance(obj, _LazyTensor):
        if id(obj) not in done:
            done[id(obj)] = _materialize(obj.storage, obj.offset, obj.size, obj.stride, path)
        return done[id(obj)]
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        raise UserError(f"{path}: a numpy array of Python objects; only numeric arrays are read")
    if id(obj) in seen:
        return obj
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            obj[k] = _resolve(v, done, path, seen)
    elif isinstance(obj, list):
        seen.add(id(obj))
        obj[:] = [_resolve(v, done, path, seen) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v, done, path, seen) for v in obj)
    elif isinstance(obj, Placeholder):
        seen.add(id(obj))
        obj.__dict__["state"] = _resolve(obj.__dict__.get("state"), done, path, seen)
        obj.__dict__["args"] = _resolve(obj.__dict__.get("args"), done, path, seen)
    return obj


def _refuse_pid(pid, unpickler):
    raise UserError(f"{unpickler._name}: refused persistent id {pid!r}")


def _unpickle(path, f, persistent_load) -> Any:
    try:
        return _Unpickler(f, path, persistent_load).load()
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{path}: pickle nested too deeply") from None
    except Exception as e:
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from None


def load(path: str | os.PathLike, select: Callable[[Any], Any] | None = None) -> Any:
    """Reads a `torch.save` file (zip or legacy) without torch and without running its code.

    Args:
      path: e.g. `vggishish16.pt`, a Lightning `.ckpt`, Sound2Sight's `model.pth`.
      select: picks the part of the unpickled object to return (e.g. a Lightning file's
        `state_dict`), before any tensor is read: tensors outside it are never read from a
        zip file. Default: everything.
    Returns:
      The (selected) object with tensors as numpy arrays, allowed numpy scalars as numpy
      scalars and every other class as a `Placeholder` holding its pickled state.
    Raises:
      UserError: the file is missing, truncated, not a checkpoint, or names a global
        outside the allow-list (the message names the file and the global).
    """
    path = pathlib.Path(path)
    select = select or (lambda obj: obj)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as zf:
                    return _load_zip(path, zf, select)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
                msg = f"{path}: a damaged zip archive ({type(e).__name__}: {e})"
                raise UserError(msg) from None
        with open(path, "rb") as f:
            return _load_legacy(path, f, select)
    except RecursionError:
        raise UserError(f"{path}: objects nested too deeply for a checkpoint") from None
