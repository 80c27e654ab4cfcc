"""Import of the official SpecVQGAN MelGAN (`vocoder/modules.py`) state dicts into Flax params.

Keys (torch -> Flax path), weight norm kept as is (`weight_g`, `weight_v`, `bias`):
  generator (`best_netG.pt`, 126 keys): `model.{i}.P` -> `model_{i}/P`,
    `model.{i}.block.{j}.P` -> `model_{i}/block_{j}/P`, `model.{i}.shortcut.P` ->
    `model_{i}/shortcut/P`;
  discriminator (`netD.pt`, optional, same dict or alone): `model.disc_{i}.model.layer_{n}.{0|1}.P`
    (or `...layer_{last}.P`) -> `disc_{i}/layer_{n}/P`.
Values: Conv1d `weight_v` (out, in/groups, k) -> [k, in/groups, out]; ConvTranspose1d
`weight_v` (in, out, k) -> [k, in, out] (not flipped: `WNConvTranspose1d` flips it);
`weight_g` (c, 1, 1) -> [c]; `bias` unchanged. Numpy in, no torch import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from avjax.models.specvqgan.melgan import make_model

_G = re.compile(r"model\.(\d+)\.(?:(block|shortcut)\.(?:(\d+)\.)?)?(weight_g|weight_v|bias)")
_D = re.compile(r"model\.disc_(\d+)\.model\.layer_(\d+)\.(?:\d+\.)?(weight_g|weight_v|bias)")

# The released VGGSound vocoder's architecture (its `args.yml` in the official release).
PAPER = {
    "model": {"n_mel_channels": 80, "ngf": 32, "n_residual_layers": 3, "ratios": (8, 8, 2, 2)},
    "disc": {"num_D": 3, "ndf": 16, "n_layers": 4, "downsampling_factor": 4},
}


def _flax_path(key: str) -> tuple[str, tuple[str, ...]] | None:
    """torch key -> ("generator" | "discriminator", Flax path), or None if unknown."""
    if m := _D.fullmatch(key):
        return "discriminator", (f"disc_{m[1]}", f"layer_{m[2]}", m[3])
    if m := _G.fullmatch(key):
        mod = [f"model_{m[1]}"]
        if m[2] == "block":
            mod.append(f"block_{m[3]}")
        elif m[2] == "shortcut":
            mod.append("shortcut")
        return "generator", (*mod, m[4])
    return None


def _to_flax(value: np.ndarray, leaf: str, transposed: bool) -> np.ndarray:
    if leaf == "weight_g":
        return value.reshape(-1)
    if leaf == "weight_v":
        return np.transpose(value, (2, 0, 1) if transposed else (2, 1, 0))
    return value


def melgan_from_torch(state_dict: Mapping[str, Any], config=None) -> dict[str, Any]:
    """Converts official MelGAN generator (and optionally discriminator) weights.

    Args:
      state_dict: torch key -> numpy array: `netG.state_dict()`, `netD.state_dict()` or both
        merged (their keys do not collide).
      config: an experiment config (`configs/melgan_vggsound.py`) or dict whose `model` /
        `disc` fields give the architecture; default `PAPER` (`vocoder/logs/vggsound/args.yml`).

    Returns:
      `{"params": {"generator": ..., "discriminator": ...}}` (the discriminator only when
      its keys are present), the layout `MelGANTask` and `load_vocoder` read.

    Raises:
      ValueError listing every missing key, unexpected key and shape mismatch.
    """
    config = PAPER if config is None else config
    gen, disc = make_model(config)
    # Torch Sequential indices of the transposed convs: 3, 3 + (n_res + 2), ...
    step = config["model"]["n_residual_layers"] + 2
    transposed = {f"model_{3 + step * i}" for i in range(len(config["model"]["ratios"]))}

    parts = {"generator": {}, "discriminator": {}}
    errors: dict[str, list[str]] = {"missing": [], "unexpected": [], "shape": []}
    for key, value in state_dict.items():
        mapped = _flax_path(key)
        if mapped is None:
            errors["unexpected"].append(key)
            continue
        part, path = mapped
        value = _to_flax(np.asarray(value), path[-1], part == "generator" and path[0] in transposed)
        parts[part][path] = (key, value)

    n_mels = config["model"]["n_mel_channels"]
    expected = {
        "generator": jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((1, 8, n_mels))),
        "discriminator": jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((1, 4096, 1))),
    }
    out = {}
    for part in ("generator", "discriminator"):
        if part == "discriminator" and not parts[part]:
            continue
        want = traverse_util.flatten_dict(expected[part]["params"])
        got = parts[part]
        for path, (key, value) in got.items():
            if path not in want:
                errors["unexpected"].append(key)
            elif value.shape != want[path].shape:
                errors["shape"].append(
                    f"{key}: got {value.shape} in Flax layout, expected {want[path].shape}"
                )
        errors["missing"] += [f"{part}:{'/'.join(p)}" for p in want if p not in got]
        out[part] = traverse_util.unflatten_dict(
            {p: jnp.asarray(v, jnp.float32) for p, (_, v) in got.items() if p in want}
        )
    if any(errors.values()):
        lines = ["MelGAN state dict does not match the Flax Generator/Discriminator:"]
        for kind, items in errors.items():
            if items:
                lines.append(f"  {kind} ({len(items)}):")
                lines += [f"    {e}" for e in sorted(items)]
        raise ValueError("\n".join(lines))
    return {"params": out}
