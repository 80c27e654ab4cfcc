"""Reading user-supplied `.npy` / `.npz` files without running code, with one-line errors.

numpy's own errors for a bad file are unhelpful here: an object array ends in "Object
arrays cannot be loaded when allow_pickle=False" (which invites the unsafe fix), a
truncated file in a bare `EOFError` or `BadZipFile` without the file name. These helpers
always pass `allow_pickle=False` and turn every such failure into a `UserError` that names
the file and says what was expected.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from avjax.errors import UserError

__all__ = ["load_npy", "load_npz"]

_PICKLED = (
    "holds Python objects (a pickled object array), which avjax never unpickles; expected "
    "numeric arrays"
)


def _explain(path: pathlib.Path, e: Exception, what: str) -> UserError:
    if isinstance(e, ValueError) and "allow_pickle" in str(e):
        return UserError(f"{path}: {_PICKLED}")
    return UserError(f"{path}: not a readable {what} ({type(e).__name__}: {e})")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Reads one numeric array from a `.npy` file (never unpickles).

    Args:
      path: the file.
    Returns:
      The array as stored.
    Raises:
      UserError: the file is missing, truncated, not a `.npy`, or holds an object array.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a numpy .npy file)")
    try:
        out = np.load(path, allow_pickle=False)
    except Exception as e:
        raise _explain(path, e, "numpy .npy file") from None
    if not isinstance(out, np.ndarray):
        raise UserError(f"{path}: expected a .npy array, got an .npz archive")
    return out


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
