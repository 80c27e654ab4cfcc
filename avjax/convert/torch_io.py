"""Reading official PyTorch checkpoint files into numpy state dicts (torch is optional)."""

from __future__ import annotations

import pathlib
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
