"""Torchvision-style state dict <-> Flax variables, by name, checked against a model's shapes.

Naming rule (torchvision Inception3 / ResNet and the Flax modules that mirror them):
  * split the key on "."; a purely numeric part is joined to the one before it with "_"
    (`layer1.0.downsample.1.bn` -> `layer1_0/downsample_1/bn`);
  * leaf: conv `weight` (O, I, kh, kw) -> `kernel` (kh, kw, I, O); Linear `weight` (O, I) ->
    `kernel` (I, O); BatchNorm `weight` -> `scale`; `bias` -> `bias`; `running_mean` /
    `running_var` -> collection `batch_stats`, `mean` / `var`; `num_batches_tracked` dropped.
Values are numpy arrays (or anything with `.detach()`); torch is never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]


def to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch.Tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """The bare state dict inside a `{"model": ...}` / `{"state_dict": ...}` checkpoint dict."""
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def torch_to_flax(key: str, ndim: int) -> tuple[str, Path] | None:
    """(collection, path) of a torch key with a value of `ndim` dims; None when dropped."""
    merged: list[str] = []
    for part in key.split("."):
        if part.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    *module, leaf = merged
    if leaf == "num_batches_tracked":
        return None
    if leaf in ("running_mean", "running_var"):
        return "batch_stats", (*module, leaf[len("running_") :])
    if leaf == "weight":
        return "params", (*module, "kernel" if ndim >= 2 else "scale")
    return "params", (*module, leaf)


def flax_to_torch(collection: str, path: Path, indexed: tuple[str, ...] = ()) -> str:
    """Inverse of `torch_to_flax` (names only), for messages and test layouts.

    `indexed` names the torch containers whose children are numbered (`layer1`, `downsample`):
    only `<name>_<i>` with such a name is split back into `<name>.<i>` (Inception's own
    `branch3x3_1` stays whole).
    """
    *module, leaf = path
    parts = []
    for name in module:
        head, _, tail = name.rpartition("_")
        parts += [head, tail] if head in indexed and tail.isdigit() else [name]
    if collection == "batch_stats":
        leaf = "running_" + leaf
    else:
        leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*parts, leaf])


def torch_value_to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def flax_shape_to_torch(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def convert(
    state_dict: Mapping[str, Any],
    abstract: Mapping[str, Any],
    what: str,
    indexed: tuple[str, ...] = (),
) -> dict:
    """Torch state dict -> Flax variables shaped like `abstract` ({collection: tree}).

    Raises:
      ValueError listing every missing key, unexpected key and shape mismatch, in torch names
      and torch layouts.
    """
    expected = {
        (col, path): leaf
        for col, tree in abstract.items()
        for path, leaf in traverse_util.flatten_dict(tree).items()
    }
    out: dict[str, dict[Path, np.ndarray]] = {}
    missing, unexpected, shapes = [], [], []
    seen = set()
    for key, value in unwrap(state_dict).items():
        value = to_numpy(value)
        target = torch_to_flax(key, value.ndim)
        if target is None:
            continue
        spec = expected.get(target)
        if spec is None:
            unexpected.append(key)
            continue
        seen.add(target)
        value = torch_value_to_flax(value, target[1][-1])
        if tuple(value.shape) != tuple(spec.shape):
            got = flax_shape_to_torch(value.shape, target[1][-1])
            want = flax_shape_to_torch(spec.shape, target[1][-1])
            shapes.append(f"{key}: got {got}, expected {want}")
            continue
        out.setdefault(target[0], {})[target[1]] = np.asarray(value, dtype=spec.dtype)
    missing = [flax_to_torch(c, p, indexed) for c, p in expected if (c, p) not in seen]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"mis-shaped keys [{'; '.join(shapes)}]")
    if problems:
        raise ValueError(f"{what} state dict does not match the model: " + "; ".join(problems))
    return {col: traverse_util.unflatten_dict(flat) for col, flat in out.items()}


def torch_layout(
    abstract: Mapping[str, Any], indexed: tuple[str, ...] = ()
) -> dict[str, tuple[int, ...]]:
    """{torch key: torch shape} that `convert` expects for `abstract` (no num_batches_tracked)."""
    return {
        flax_to_torch(col, path, indexed): flax_shape_to_torch(tuple(leaf.shape), path[-1])
        for col, tree in abstract.items()
        for path, leaf in traverse_util.flatten_dict(tree).items()
    }


def abstract_variables(module, *example_shapes, **kwargs) -> dict:
    """`jax.eval_shape` of `module.init` on zeros of the given shapes (no real init)."""
    xs = [jax.ShapeDtypeStruct(s, np.float32) for s in example_shapes]
    return jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *xs)
