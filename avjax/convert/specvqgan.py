"""Import of an official SpecVQGAN codebook checkpoint (taming `VQModel`) into Flax params.

Naming rule, torch key -> Flax path (one to one, no special cases other than the codebook):
  * split the key on "."; a purely numeric part is joined to the part before it with "_"
    (`down.0.block.1` -> `down_0/block_1`; `mid.block_1` stays `mid/block_1`);
  * the leaf is renamed: conv `weight` (O, I, kh, kw) -> `kernel` (kh, kw, I, O);
    GroupNorm / BatchNorm `weight` -> `scale`; `bias` -> `bias`;
    `quantize.embedding.weight` -> `quantize/embedding`;
    BatchNorm `running_mean` / `running_var` -> collection `batch_stats`, `mean` / `var`;
    `num_batches_tracked` is dropped.
  * `loss.discriminator.` keys go to the discriminator (`main.3.weight` -> `main_3/scale`);
    `loss.perceptual_loss.` keys are ignored (LPAPS has its own converter).
Example: `encoder.down.0.block.1.norm1.weight` -> params `encoder/down_0/block_1/norm1/scale`,
`encoder.mid.attn_1.q.weight` -> `encoder/mid/attn_1/q/kernel` [1, 1, C, C].

Values are numpy arrays (anything `np.asarray` accepts); torch is never imported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from avjax.models.specvqgan.discriminator import NLayerDiscriminator
from avjax.models.specvqgan.vqgan import VQGAN

Path = tuple[str, ...]
_AE_ROOTS = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
_DISC = "loss.discriminator."
_IGNORED = ("loss.perceptual_loss.",)


def torch_to_flax(key: str) -> tuple[str, Path]:
    """Maps a torch key (without the `loss.discriminator.` prefix) to (collection, path)."""
    if key == "quantize.embedding.weight":
        return "params", ("quantize", "embedding")
    merged: list[str] = []
    for part in key.split("."):
        if part.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    *module, leaf = merged
    if leaf == "running_mean":
        return "batch_stats", (*module, "mean")
    if leaf == "running_var":
        return "batch_stats", (*module, "var")
    # A `weight` is a kernel for convs (4-D) and a scale for norms (1-D); resolved by shape.
    return "params", (*module, leaf)


def flax_to_torch(collection: str, path: Path) -> str:
    """Inverse of `torch_to_flax` (names only), used to report missing keys in torch terms."""
    if path == ("quantize", "embedding"):
        return "quantize.embedding.weight"
    *module, leaf = path
    parts = []
    for i, name in enumerate(module):
        m = re.fullmatch(r"(.+)_(\d+)", name)
        # torch's `mid.block_1`, `mid.attn_1`, `mid.block_2` carry the digit in the name.
        if m and not (i > 0 and module[i - 1] == "mid"):
            parts += [m.group(1), m.group(2)]
        else:
            parts.append(name)
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
    else:
        leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*parts, leaf])


def _to_flax_value(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    return tuple(shape)


def _expected(module, x_shape) -> dict[tuple[str, Path], Any]:
    """Flat {(collection, path): ShapeDtypeStruct} of `module`'s variables (no real init)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    flat = {}
    for col, tree in variables.items():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            flat[(col, path)] = leaf
    return flat


def _convert_section(
    sd: Mapping[str, np.ndarray],
    expected: dict[tuple[str, Path], Any],
    torch_prefix: str,
    errors: dict[str, list[str]],
) -> dict[str, Any]:
    """Converts one module's keys against its expected variables, recording every problem."""
    out: dict[str, dict[Path, jax.Array]] = {}
    seen = set()
    for key, value in sd.items():
        col, path = torch_to_flax(key)
        if col == "params" and path[-1] == "weight":
            path = (*path[:-1], "kernel" if np.ndim(value) == 4 else "scale")
        spec = expected.get((col, path))
        if spec is None:
            errors["unexpected"].append(torch_prefix + key)
            continue
        seen.add((col, path))
        value = _to_flax_value(np.asarray(value), path[-1])
        if tuple(value.shape) != tuple(spec.shape):
            got = _torch_shape(value.shape, path[-1])
            want = _torch_shape(spec.shape, path[-1])
            errors["shape"].append(f"{torch_prefix}{key}: got {got}, expected {want}")
            continue
        out.setdefault(col, {})[path] = jnp.asarray(value, dtype=spec.dtype)
    for col, path in expected:
        if (col, path) not in seen:
            errors["missing"].append(torch_prefix + flax_to_torch(col, path))
    return {col: traverse_util.unflatten_dict(flat) for col, flat in out.items()}


def _unwrap(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    sd = state_dict
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if prefix:
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}


def vqgan_from_torch(
    state_dict: Mapping[str, Any],
    model: VQGAN | None = None,
    disc: NLayerDiscriminator | None = None,
    *,
    prefix: str = "",
) -> dict[str, Any]:
    """Converts a SpecVQGAN `VQModel` state dict to Flax variables.

    Args:
        state_dict: torch key -> numpy array, bare (`encoder.conv_in.weight`, ...) or a
            Lightning checkpoint dict holding it under "state_dict".
        model: the VQGAN whose params to fill; default the official config with `n_embed`
            read from `quantize.embedding.weight` (1024 VGGSound, 128 VAS).
        disc: the discriminator; default `NLayerDiscriminator` with `ndf` and `n_layers`
            read from the `loss.discriminator.main.*` keys.
        prefix: only keys starting with it are used, with it stripped (e.g.
            "first_stage_model." inside a transformer checkpoint).
    Returns:
        {"ae": VQGAN params tree (apply with {"params": ae}),
         "disc": {"params": ..., "batch_stats": ...} or None without discriminator keys}.
    Raises:
        ValueError listing every missing key, unexpected key and shape mismatch (torch names
        and torch layouts).
    """
    sd = _unwrap(state_dict, prefix)
    ae_sd, disc_sd = {}, {}
    errors: dict[str, list[str]] = {"missing": [], "unexpected": [], "shape": []}
    for key, value in sd.items():
        if key.startswith(_AE_ROOTS):
            ae_sd[key] = value
        elif key.startswith(_DISC):
            disc_sd[key[len(_DISC) :]] = value
        elif not key.startswith(_IGNORED):
            errors["unexpected"].append(key)

    if model is None:
        emb = ae_sd.get("quantize.embedding.weight")
        model = VQGAN(n_embed=1024 if emb is None else int(np.shape(emb)[0]))
    size = 2 ** (len(model.ch_mult) - 1)
    ae_expected = _expected(model, (1, size, size, model.in_channels))
    ae = _convert_section(ae_sd, ae_expected, "", errors).get("params", {})

    disc_vars = None
    if disc_sd:
        if disc is None:
            w0 = disc_sd.get("main.0.weight")
            n_bn = sum(k.endswith(".running_mean") for k in disc_sd)
            disc = NLayerDiscriminator(
                ndf=64 if w0 is None else int(np.shape(w0)[0]), n_layers=n_bn or 3
            )
        c_in = int(np.shape(disc_sd["main.0.weight"])[1]) if "main.0.weight" in disc_sd else 1
        size = 2 ** (disc.n_layers + 2)
        disc_expected = _expected(disc, (1, size, size, c_in))
        converted = _convert_section(disc_sd, disc_expected, _DISC, errors)
        disc_vars = {
            "params": converted.get("params", {}),
            "batch_stats": converted.get("batch_stats", {}),
        }

    if any(errors.values()):
        lines = ["SpecVQGAN state dict does not match the Flax VQGAN/NLayerDiscriminator:"]
        for kind, label in (
            ("missing", "missing keys"),
            ("unexpected", "unexpected keys"),
            ("shape", "shape mismatches"),
        ):
            if errors[kind]:
                lines.append(f"  {label} ({len(errors[kind])}):")
                lines += [f"    {e}" for e in sorted(errors[kind])]
        raise ValueError("\n".join(lines))
    return {"ae": ae, "disc": disc_vars}
