"""Import of official VGGish-ish (`vggishish16.pt`) and LPAPS PyTorch weights into Flax variables.

Conv (O, I, kh, kw) -> (kh, kw, I, O); Linear (O, I) -> (I, O). `classifier.0` reads torch's
flatten of NCHW [C, H, W]; its input axis is permuted to the NHWC flatten used in Flax.
Only the BatchNorm-free layout (the released model) is supported.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avjax.models.specvqgan.classifiers import VGGISHISH16_LAYERS, feature_layout, tap_indices


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch.Tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v, np.float32)


def _unwrap(state_dict: Mapping[str, Any], wrapper_keys: Sequence[str]) -> Mapping[str, Any]:
    for key in wrapper_keys:
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def _check(sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raises a ValueError listing missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: got {tuple(np.shape(sd[k]))}, expected {shape}"
        for k, shape in expected.items()
        if k in sd and tuple(np.shape(sd[k])) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"mis-shaped keys [{'; '.join(shapes)}]")
    if problems:
        raise ValueError(
            f"{what} state dict does not match the expected layout: " + "; ".join(problems)
        )


def _conv_shapes(conv_layers: Sequence[int | str], names: Mapping[int, str], bias: bool = True):
    shapes, in_ch = {}, 1
    for idx, kind, ch in feature_layout(conv_layers):
        if kind == "conv":
            shapes[f"{names[idx]}.weight"] = (ch, in_ch, 3, 3)
            if bias:
                shapes[f"{names[idx]}.bias"] = (ch,)
            in_ch = ch
    return shapes, in_ch


def _conv_params(sd: Mapping[str, Any], conv_layers, names: Mapping[int, str]) -> dict:
    params = {}
    for idx, kind, _ in feature_layout(conv_layers):
        if kind == "conv":
            w = _to_numpy(sd[f"{names[idx]}.weight"])
            b = _to_numpy(sd[f"{names[idx]}.bias"])
            params[f"features_{idx}"] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
    return params


def vggishish_from_torch(
    state_dict: Mapping[str, Any],
    conv_layers: Sequence[int | str] = VGGISHISH16_LAYERS,
    num_classes: int = 309,
    hidden: int = 4096,
    pool_size: tuple[int, int] = (5, 10),
) -> dict:
    """Official VGGishish state dict -> Flax `params` for `VGGishish(conv_layers, ...)`.

    Args:
      state_dict: `features.{i}.weight/bias`, `classifier.{0,2,4}.weight/bias` (numpy or torch
        values), or the checkpoint dict holding them under "model" (as `vggishish16.pt` does).
      conv_layers, num_classes, hidden, pool_size: the model config the weights belong to.
    Returns:
      {"features_0": {"kernel", "bias"}, ..., "classifier_4": {...}}; use as {"params": ...}.
    """
    sd = _unwrap(state_dict, ("model", "state_dict"))
    names = {idx: f"features.{idx}" for idx, _, _ in feature_layout(conv_layers)}
    expected, last_ch = _conv_shapes(conv_layers, names)
    ph, pw = pool_size
    dims = [last_ch * ph * pw, hidden, hidden, num_classes]
    for j, (i, o) in enumerate(itertools.pairwise(dims)):
        expected[f"classifier.{2 * j}.weight"] = (o, i)
        expected[f"classifier.{2 * j}.bias"] = (o,)
    _check(sd, expected, "VGGishish")

    params = _conv_params(sd, conv_layers, names)
    for j in range(3):
        w = _to_numpy(sd[f"classifier.{2 * j}.weight"])
        if j == 0:  # (O, C*H*W) -> (O, C, H, W) -> (H, W, C, O) -> (H*W*C, O)
            w = w.reshape(hidden, last_ch, ph, pw).transpose(2, 3, 1, 0).reshape(-1, hidden)
        else:
            w = w.T
        params[f"classifier_{2 * j}"] = {
            "kernel": w,
            "bias": _to_numpy(sd[f"classifier.{2 * j}.bias"]),
        }
    return params


def lpaps_from_torch(
    state_dict: Mapping[str, Any],
    prefix: str = "loss.perceptual_loss.",
    conv_layers: Sequence[int | str] = VGGISHISH16_LAYERS,
    num_bins: int = 80,
) -> dict:
    """Official LPAPS weights (e.g. inside a SpecVQGAN checkpoint) -> Flax LPAPS variables.

    Keys read (after `prefix`): `scaling_layer.shift/scale` (1, 1, F, 1),
    `net.slice{s}.{i}.weight/bias` (torch `features` indices), `lin{k}.model.1.weight` (1, C, 1, 1).
    Keys outside `prefix` are ignored; a "state_dict" or "model" wrapper is unwrapped.

    Returns:
      {"params": {"net": {"features_{i}": ...}, "lin{k}": {"model_1": {"kernel"}}},
       "stats": {"shift": [F], "scale": [F]}}
    """
    sd = _unwrap(state_dict, ("state_dict", "model"))
    sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    taps = tap_indices(conv_layers)
    names = {}
    for idx, _, _ in feature_layout(conv_layers):
        s = next((n for n, t in enumerate(taps) if idx <= t), len(taps) - 1)
        names[idx] = f"net.slice{s + 1}.{idx}"
    expected, _ = _conv_shapes(conv_layers, names)
    expected["scaling_layer.shift"] = expected["scaling_layer.scale"] = (1, 1, num_bins, 1)
    layout = dict((idx, ch) for idx, _, ch in feature_layout(conv_layers))
    for k, t in enumerate(taps):
        expected[f"lin{k}.model.1.weight"] = (1, layout[t], 1, 1)
    _check(sd, expected, f"LPAPS (prefix {prefix!r})")

    params = {"net": _conv_params(sd, conv_layers, names)}
    for k in range(len(taps)):
        w = _to_numpy(sd[f"lin{k}.model.1.weight"])
        params[f"lin{k}"] = {"model_1": {"kernel": w.transpose(2, 3, 1, 0)}}
    stats = {n: _to_numpy(sd[f"scaling_layer.{n}"]).reshape(num_bins) for n in ("shift", "scale")}
    return {"params": params, "stats": stats}
