"""Reading official PyTorch checkpoint files into numpy state dicts (torch is optional)."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping

import numpy as np


def load_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Loads a `.pt`/`.ckpt` file (weights only) and flattens it to {key: numpy array}.

    Lightning (`state_dict`) and `{"model": ...}` wrappers are unwrapped. Needs the
    optional extra: `pip install -e '.[torch]'`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install -e '.[torch]' (the converters "
            "themselves only need numpy arrays)"
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def load_module_checkpoint(
    path: str | pathlib.Path, repo_dir: str | pathlib.Path | None = None
) -> dict[str, np.ndarray]:
    """A checkpoint of pickled modules `{name: nn.Module, ...}` -> `{"name.key": array}`.

    Sound2Sight's `model.pth` pickles whole modules (spec 1.9), so unpickling imports
    their classes (`models.lstm`, `models.transformers`, `models.dcgan_48`): `repo_dir`,
    the official repository, goes on `sys.path` while loading, and `torch.load` needs
    `weights_only=False` (the weights-only unpickler refuses arbitrary classes). That runs
    the file's pickle code: load only checkpoints you trust. Every entry with a
    `state_dict()` is flattened under its name (`encoder.c2.main.0.weight`); other entries
    (`opt`, the options namespace) are skipped, and `loss` (`nn.MSELoss`) adds nothing. A
    `.npz` of the flat dict is read with numpy alone.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs PyTorch: pip install -e '.[torch]' (or pass an .npz of the "
            "flat state dict)"
        ) from None
    added = repo_dir is not None and str(repo_dir) not in sys.path
    if added:
        sys.path.insert(0, str(repo_dir))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{path} pickles modules of the official repository ({e}); pass its checkout as "
            f"repo_dir (--official_repo), the folder that holds models/"
        ) from e
    finally:
        if added:
            sys.path.remove(str(repo_dir))
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of modules, got {type(obj).__name__}")
    flat = {}
    for name, entry in obj.items():
        if not callable(getattr(entry, "state_dict", None)):
            continue
        for key, value in entry.state_dict().items():
            flat[f"{name}.{key}"] = value.detach().cpu().numpy()
    return flat
