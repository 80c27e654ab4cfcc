"""Import of the official Melception (`melception-21-05-10T09-28-40.pt`) into Flax variables.

The checkpoint is `{"model": state_dict}` of a torchvision `Inception3` (580 entries with BN
buffers): `Conv2d_1a_3x3.conv.weight` -> params `Conv2d_1a_3x3/conv/kernel` (OIHW -> HWIO),
`Mixed_5b.branch1x1.bn.weight` / `.bias` -> `.../bn/scale` / `bias`,
`.bn.running_mean` / `running_var` -> batch_stats `.../bn/mean` / `var`,
`AuxLogits.fc.weight` (309, 768) and `fc.weight` (309, 2048) -> `kernel` transposed;
`num_batches_tracked` is dropped. The rule is `avjax.convert.torchvision_names`; shapes are
checked against the Melception the config describes (`config.model`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from avjax import io_safety
from avjax.convert import torchvision_names as tvn
from avjax.errors import UserError
from avjax.models.specvqgan.melception import make_model


def load_official_mel_stats(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Per-mel-bin {"mean", "std"} [F] of [0, 1] mels.

    Reads the official `train_means_stds_melspec_10s_22050hz.txt` (F rows "mean std",
    `np.loadtxt(...).T` as `StandardNormalizeAudio`) or an `.npz` with `mean` and `std`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mel stats file {path} does not exist")
    if path.suffix == ".npz":
        z = io_safety.load_npz(path)
        if "mean" not in z or "std" not in z:
            raise UserError(f"{path}: expected arrays 'mean' and 'std', got {sorted(z)}")
        mean, std = z["mean"], z["std"]
    else:
        table = np.loadtxt(path, dtype=np.float32)
        if table.ndim != 2 or table.shape[1] != 2:
            raise ValueError(f"{path}: expected rows 'mean std' (F x 2), got shape {table.shape}")
        mean, std = table.T
    return {"mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32)}


def melception_from_torch(state_dict: Mapping[str, Any], config=None) -> dict:
    """Official Melception state dict -> avjax classifier state subset.

    Args:
      state_dict: torchvision Inception3 keys (numpy or torch values), bare or under "model".
      config: the experiment config (`configs/melception_vggsound.py`); `config.model` gives
        the architecture, `config.data.mel_stats_file` (optional) the official per-bin stats.
    Returns:
      {"params", "batch_stats"} (and "mel_stats" {"mean", "std"} when the stats file is set),
      the layout of `ClassifierTask`'s state for arch='melception'.
    """
    model_cfg = {} if config is None else config.model
    model = make_model(model_cfg)
    abstract = tvn.abstract_variables(model, (1, 80, 848))
    state = tvn.convert(state_dict, abstract, "Melception")
    stats_file = None if config is None else config.get("data", {}).get("mel_stats_file")
    if stats_file:
        state["mel_stats"] = load_official_mel_stats(stats_file)
    return state
