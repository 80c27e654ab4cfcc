"""Reading user-supplied `.npy` / `.npz` files without running code, with one-line errors.

numpy's own errors for a bad file are unhelpful here: an object array ends in "Object
arrays cannot be loaded when allow_pickle=False" (which invites the unsafe fix), a
truncated file in a bare `EOFError` or `BadZipFile` without the file name. These helpers
always pass `allow_pickle=False` and turn every such failure into a `UserError` that names
the file and says what was expected.
"""

from __future__ import annotations

import io
import os
import pathlib
import threading

import numpy as np

from avjax.errors import UserError

__all__ = ["load_npy", "load_npz", "npy_shape"]

_NPY_LOCK = threading.Lock()

_PICKLED = (
    "holds Python objects (a pickled object array), which avjax never unpickles; expected "
    "numeric arrays"
)


def _explain(path: pathlib.Path, e: Exception, what: str) -> UserError:
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return UserError(f"{path}: {_PICKLED}")
    return UserError(f"{path}: not a readable {what} ({type(e).__name__}: {e})")


def _read_header(f) -> tuple[tuple[int, ...], np.dtype | None]:
    """(shape, dtype) from an open `.npy` file's header; dtype None for unknown versions.

    Call under `_NPY_LOCK`: numpy parses the header with `ast.literal_eval`, which
    intermittently raises SystemError under threads on CPython 3.11.7.
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return (), None
    return tuple(shape), dtype


def npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The array shape in a `.npy` header, without reading the data; thread-safe."""
    with open(path, "rb") as f, _NPY_LOCK:
        return _read_header(f)[0]


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Reads one numeric `.npy` array without unpickling; thread-safe.

    Raises:
      UserError naming the file: missing, not a .npy file, truncated, or an object array.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    with _NPY_LOCK:  # see _read_header
        buf = io.BytesIO(data)
        try:
            _, dtype = _read_header(buf)
        except Exception as e:
            raise UserError(
                f"{path}: unreadable, not a .npy array file ({type(e).__name__}: {e})"
            ) from e
        if dtype is not None and dtype.hasobject:
            raise UserError(
                f"{path}: holds Python objects (dtype {dtype}), which avjax never unpickles; "
                "expected a numeric array, e.g. np.save(path, x.astype(np.float32))"
            )
        buf.seek(0)
        try:
            return np.load(buf, allow_pickle=False)
        except Exception as e:
            raise UserError(
                f"{path}: unreadable .npy file, truncated or corrupt ({type(e).__name__})"
            ) from e


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of a `.npz` archive into a dict (never unpickles).

    Args:
      path: the file, e.g. a flat `{torch key: array}` state dict saved by `np.savez`.
    Returns:
      {name: array} in archive order.
    Raises:
      UserError: the file is missing, not a zip, truncated, or holds an object array.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a numpy .npz file)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise _explain(path, e, "numpy .npz archive") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: expected an .npz archive of named arrays, got a single array")
    out = {}
    with z:
        for k in z.files:
            try:
                out[k] = z[k]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise UserError(f"{path}: array '{k}' {_PICKLED}") from None
                raise _explain(path, e, "numpy .npz archive") from None
            except Exception as e:
                raise _explain(path, e, "numpy .npz archive") from None
    return out
