"""Loads pickled numpy arrays (SpecVQGAN's visual-feature `.pkl` files) without running code.

The official features are plain `pickle.dump(ndarray)` files. Pickles are untrusted input, so
`load_array_pickle` uses an Unpickler that resolves only the globals a numeric ndarray pickle
needs (protocols 0-5, numpy 1.x `numpy.core.*` and numpy 2.x `numpy._core.*` module paths);
any other global (e.g. `os.system`, `builtins.eval`) is refused before it is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import Any

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

__all__ = ["UnsafePickleError", "load_array_pickle", "loads_array_pickle"]


class UnsafePickleError(ValueError):
    """A pickle asked for a global outside the numpy-array allow-list, or is not an array."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocols 0-2 store raw bytes as `_codecs.encode(str, "latin1")`.
        ("_codecs", "encode"): codecs.encode,
        # Empty buffers are pickled as `bytes()` / `bytearray()`.
        ("builtins", "bytes"): bytes,
        ("builtins", "bytearray"): bytearray,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        # Protocol 5 pickles arrays via `numeric._frombuffer(buffer, dtype, shape, order)`.
        allowed[(f"{mod}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _ArrayUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, name: str):
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        key = ("builtins" if module == "__builtin__" else module, name)  # protocol <= 2
        try:
            return _ALLOWED[key]
        except KeyError:
            raise UnsafePickleError(
                f"{self._name}: refused global '{module}.{name}'; only numpy array pickles "
                "(numpy.ndarray, numpy.dtype, numpy[._]core.multiarray._reconstruct, "
                "numpy[._]core.numeric._frombuffer, _codecs.encode) are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._name}: refused persistent id {pid!r}")


def loads_array_pickle(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Unpickles `data` that must hold a single numeric numpy array.

    Args:
      data: the pickle bytes.
      name: how to name the input in errors (a file path).

    Returns:
      The array (any shape, numeric or bool dtype).

    Raises:
      UnsafePickleError: a refused global, or the pickle holds something other than a
        numeric ndarray. ValueError: the bytes are not a readable pickle.
    """
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), name).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / corrupt / not a pickle at all
        raise ValueError(
            f"{name}: not a readable pickled numpy array ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, np.ndarray):
        raise UnsafePickleError(
            f"{name}: expected a pickled numpy.ndarray, got {type(obj).__name__}"
        )
    if obj.dtype.hasobject:
        raise UnsafePickleError(f"{name}: expected a numeric array, got dtype {obj.dtype}")
    return obj


def load_array_pickle(path: str | os.PathLike) -> np.ndarray:
    """Loads a `.pkl` file holding one numeric ndarray, refusing anything else.

    Args:
      path: the pickle file, e.g. `feature_resnet50_dim2048_21.5fps/video_00331.pkl`.

    Returns:
      The array as stored, e.g. [215, 2048] float32.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return loads_array_pickle(data, name=path)
