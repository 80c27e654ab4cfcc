"""Import of an official SpecVQGAN transformer (`Net2NetTransformer`) into Flax GPT params.

Keys under `transformer.` are converted; `first_stage_model.*` (the frozen codebook: import
it with `--kind codebook`), `first_stage_permuter.*` / `cond_stage_permuter.*` buffers and
every `attn.mask` (the causal-mask buffer) are dropped. Naming, torch -> Flax:
  tok_emb.weight [V, C]                 -> tok_emb/embedding
  pos_emb [1, block, C]                 -> pos_emb [block, C]
  blocks.i.{ln1,ln2}.{weight,bias}      -> blocks_i/{ln1,ln2}/{scale,bias}
  blocks.i.attn.{key,query,value,proj}.weight [out, in] -> .../kernel [in, out]
  blocks.i.mlp.{0,2}.weight             -> blocks_i/mlp_{0,2}/kernel (transposed)
  ln_f.*, head.weight (no bias)         -> ln_f/*, head/kernel
  embedder.weight [C, D, 1] (Conv1d, GPTFeats)    -> feat_embedder/kernel [D, C]
  embedder.weight [K, C] (Embedding, GPTClass)    -> cls_embedder/embedding
  feat_embedder.*, cls_embedder.* (GPTFeatsClass) -> the same two.
A Linear feature embedder ([C, D] weight) is transposed like the other Linear layers.
Values are numpy arrays; torch is never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from avjax.models.specvqgan.gpt import GPT, make_model

_DROPPED = ("first_stage_model.", "first_stage_permuter.", "cond_stage_permuter.")


def _strip(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = list(state_dict)
    prefixed = any(k.startswith("transformer.") for k in keys)
    out = {}
    for k in keys:
        if k.startswith(_DROPPED) or k.endswith("attn.mask"):
            continue
        if prefixed:
            if not k.startswith("transformer."):
                continue
            k2 = k[len("transformer.") :]
        else:
            k2 = k
        out[k2] = np.asarray(state_dict[k])
    return out


def _map(key: str, value: np.ndarray, model: GPT) -> tuple[tuple[str, ...], np.ndarray]:
    parts = key.split(".")
    leaf = parts[-1]
    if key == "pos_emb":
        return ("pos_emb",), value.reshape(value.shape[-2:])
    if key == "tok_emb.weight":
        return ("tok_emb", "embedding"), value
    if parts[0] in ("embedder", "feat_embedder", "cls_embedder"):
        is_class = (
            parts[0] == "cls_embedder"
            or (
                parts[0] == "embedder"
                and value.ndim == 2
                and leaf == "weight"
                and not model.feat_dim
            )
            or (parts[0] == "embedder" and leaf == "bias" and not model.feat_dim)
        )
        if is_class:
            if leaf != "weight":
                raise ValueError(f"{key}: a class embedding has no {leaf}")
            return ("cls_embedder", "embedding"), value
        if leaf == "weight":
            w = value[..., 0] if value.ndim == 3 else value  # Conv1d [C, D, 1] or Linear [C, D]
            return ("feat_embedder", "kernel"), w.T
        return ("feat_embedder", "bias"), value
    # blocks.i.ln1.weight, blocks.i.attn.key.weight, blocks.i.mlp.0.weight, ln_f.bias, head.weight
    merged: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    module = merged[-1]
    if leaf == "weight":
        if module.startswith("ln"):
            return (*merged, "scale"), value
        return (*merged, "kernel"), value.T
    return (*merged, leaf), value


def gpt_params_from_torch(state_dict: Mapping[str, np.ndarray], model: GPT) -> dict:
    """Official transformer state dict -> Flax params of `model` (shapes checked)."""
    flat = {}
    for key, value in _strip(state_dict).items():
        path, v = _map(key, value, model)
        flat[path] = np.asarray(v, np.float32)
    feats = jnp.zeros((1, 1, model.feat_dim), jnp.float32) if model.feat_dim else None
    labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    expect = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32), feats, labels)
    )["params"]
    expect = traverse_util.flatten_dict(expect)
    missing = sorted("/".join(p) for p in set(expect) - set(flat))
    extra = sorted("/".join(p) for p in set(flat) - set(expect))
    if missing or extra:
        raise ValueError(
            f"transformer state dict does not match the configured GPT: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}"
            f"{'...' if len(extra) > 8 else ''} (check config.model: n_layer, feat_dim, "
            "num_classes)"
        )
    for path, spec in expect.items():
        if flat[path].shape != spec.shape:
            raise ValueError(
                f"{'/'.join(path)}: checkpoint shape {flat[path].shape}, model expects "
                f"{spec.shape} (check config.model)"
            )
    return traverse_util.unflatten_dict(flat)


def transformer_from_torch(state_dict: Mapping[str, np.ndarray], config) -> dict:
    """`launch/convert_checkpoint.py --kind transformer`: {"params": GPT params} of the run."""
    return {"params": gpt_params_from_torch(state_dict, make_model(config.model))}
