"""Reading official PyTorch checkpoint files into numpy state dicts, without torch.

Every file goes through `torch_pickle.load`, an unpickler that resolves only tensor,
container, numpy-scalar and (inert) model classes, so no checkpoint can run code and
PyTorch need not be installed. A numpy `.npz` of the flat state dict is read with
`allow_pickle=False`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np

from avjax import io_safety
from avjax.convert import torch_pickle
from avjax.errors import UserError


def _flat_tensors(obj: Mapping, path: pathlib.Path) -> dict[str, np.ndarray]:
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
        elif torch_pickle.is_module(v):
            out.update(torch_pickle.module_state_dict(v, f"{k}."))
    if not out:
        raise UserError(f"{path}: no tensors found (keys {sorted(map(str, obj))[:8]})")
    return out


def _numpy_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    """An `.npz` state dict; an `.npy` (one array, no keys) is refused after a safe read."""
    if path.suffix == ".npy":
        io_safety.load_npy(path)  # names the file for object arrays and bad files
        raise UserError(
            f"{path}: a single numpy array, not a state dict; save the {{key: array}} dict "
            "with np.savez (.npz)"
        )
    return io_safety.load_npz(path)


def _state_dict_part(obj):
    """The state dict inside a Lightning (`state_dict`) or `{"model": ...}` checkpoint."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Loads a `.pt`/`.pth`/`.ckpt` state dict (or an `.npz` of one) as {key: numpy array}.

    Lightning checkpoints (`checkpoint['state_dict']`, whatever their `callbacks`,
    `optimizer_states` and `hyper_parameters` hold) and `{"model": ..., "metrics": ...}`
    files (`vggishish16.pt`, `melception-*.pt`) are unwrapped; only the tensors are kept,
    and only the state dict's storages are read from a zip file (not the optimizer's).

    Raises:
      UserError: missing or unreadable file, a refused global, or no state dict inside.
    """
    path = pathlib.Path(path)
    if path.suffix in (".npz", ".npy"):
        return _numpy_file(path)
    obj = torch_pickle.load(path, select=_state_dict_part)
    if torch_pickle.is_module(obj):  # a whole pickled module
        return torch_pickle.module_state_dict(obj)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return _flat_tensors(obj, path)


def load_module_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A checkpoint of pickled modules `{name: nn.Module, ...}` -> `{"name.key": array}`.

    Sound2Sight's `model.pth` pickles whole modules plus `opt` (`train.py` of the official
    repository, the `torch.save({...})` of the training loop). The module classes
    (`models.lstm.lstm`, `torch.nn.modules.conv.Conv2d`, ...) are read as inert
    placeholders, so neither torch nor the official repository is needed: each entry's
    parameters and persistent buffers are flattened under its name as `state_dict()`
    would (`encoder.c2.main.0.weight`); `opt` (the options namespace) is skipped and
    `loss` (`nn.MSELoss`) adds nothing. A `.npz` of the flat dict is read as is.

    Raises:
      UserError: missing or unreadable file, a refused global, or no modules inside.
    """
    path = pathlib.Path(path)
    if path.suffix in (".npz", ".npy"):
        return _numpy_file(path)
    obj = torch_pickle.load(path)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict of modules, got {type(obj).__name__}")
    flat = {}
    for name, entry in obj.items():
        if torch_pickle.is_module(entry):
            flat.update(torch_pickle.module_state_dict(entry, f"{name}."))
        elif isinstance(entry, np.ndarray):
            flat[str(name)] = entry
    if not flat:
        raise UserError(
            f"{path}: no pickled modules or tensors found (keys {sorted(map(str, obj))[:8]})"
        )
    return flat
