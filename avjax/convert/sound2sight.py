"""Import of an official Sound2Sight checkpoint (`model.pth`) into Sound2Sight's variables.

Input: the flat numpy dict `{"<module>.<torch key>": array}` that
`torch_io.load_module_checkpoint` makes of the pickled modules (the official `train.py`
saves whole `nn.Module`s), e.g.
`encoder.c2.main.0.weight`, `frame_predictor.lstm.0.weight_ih`, `disc_std.bias`.
Official module -> ours (`Sound2Sight` = params/batch_stats "gen", `Discriminator` = "disc"):

  encoder, decoder, audio_enc            -> gen encoder, decoder, audio_encoder
  video_rnn_prior, video_rnn_posterior,  -> gen prior_transformer, posterior_transformer,
    audio_rnn                                audio_transformer
  prior, posterior, frame_predictor      -> gen prior, posterior, predictor
  disc_encoder, disc_audio_enc, disc,    -> disc frame_encoder, audio_encoder, seq, frame_cls
    disc_std

Weights, PyTorch -> ours (the official `models/` definitions, mapped onto our module layout):
  Conv2d weight (O, I, kh, kw)            -> <block>/conv/kernel (kh, kw, I, O)
  ConvTranspose2d weight (I, O, kh, kw)   -> <block>/conv/kernel (kh, kw, I, O)
                                             (`avjax.nn.ConvTranspose`, no flip)
  BatchNorm2d weight, bias                -> <block>/bn/scale, bias;
    running_mean, running_var             -> batch_stats <block>/bn/mean, var
  Linear weight (out, in)                 -> kernel (in, out)
  LSTMCell lstm.i weight_ih, weight_hh    -> lstm_i/ih/kernel, lstm_i/hh/kernel (in, 4H),
    bias_ih + bias_hh                     -> lstm_i/ih/bias; gate order i, f, g, o kept
  MultiheadAttention in_proj_weight       -> qkv/kernel (d, 3, heads, d/heads), rows [q; k; v];
    (3d, d), in_proj_bias                    qkv/bias (3, heads, d/heads)
    out_proj.weight (d, d)                -> attn_out/kernel (heads, d/heads, d)
  TransformerEncoderLayer linear1/2, norm1/2 -> ff1/2, norm1/2 (LayerNorm eps 1e-5 in the model)
  lstm `output.0`, `mu_net`, `logvar_net` -> output, mu, logvar; transformer `output_trans.0`
    -> out.
Conv blocks (`c2.main.0` = conv, `.1` = BN of a `dcgan_conv`; `c5.0`, `c5.1` of a plain
Sequential): 48 px encoder c2, c3, c4, c5 -> c1, c2, c3, c_out (the official `c1` is the
commented-out 96 px level); 64 px encoder c1..c4, c5 -> c1..c4, c_out; decoder upc1..upc4
-> same names, upc5 -> upc_out; audio encoder c1..c5 -> same names.

Dropped: `*.num_batches_tracked` (our BatchNorm has a fixed momentum), each transformer's
`pos_encoder.pe` (recomputed: same sinusoids) and `encoder_layer.*` (the template layer
`nn.TransformerEncoder` copies; forward never uses it), and the `loss` / `opt` entries.
Anything else that our model has no place for is an error, as is a missing key or a
mis-shaped array; the message names the torch keys and both shapes. The head count
(`config.model.num_heads`, official 4) is not visible in the weights: the config must say it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Shape = tuple[int, ...]

# our top-level module -> (official module, layout kind), per part of the state.
MODULES = {
    "gen": {
        "encoder": ("encoder", "frame_encoder"),
        "decoder": ("decoder", "frame_decoder"),
        "audio_encoder": ("audio_enc", "audio_encoder"),
        "prior_transformer": ("video_rnn_prior", "transformer"),
        "posterior_transformer": ("video_rnn_posterior", "transformer"),
        "audio_transformer": ("audio_rnn", "transformer"),
        "prior": ("prior", "lstm"),
        "posterior": ("posterior", "lstm"),
        "predictor": ("frame_predictor", "lstm"),
    },
    "disc": {
        "frame_encoder": ("disc_encoder", "frame_encoder"),
        "audio_encoder": ("disc_audio_enc", "audio_encoder"),
        "seq": ("disc", "lstm"),
        "frame_cls": ("disc_std", "linear"),
    },
}
_TRANSFORMERS = ("video_rnn_prior", "video_rnn_posterior", "audio_rnn")
_NOT_WEIGHTS = ("loss", "opt")
_LAYER = "transformer_encoder.layers.0."

# transform -> (torch array, our shape -> our array; our shape -> the torch shape it needs)
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    "copy": (lambda w, s: w, lambda s: s),
    "linear": (lambda w, s: w.T, lambda s: s[::-1]),
    "conv": (lambda w, s: w.transpose(2, 3, 1, 0), lambda s: (s[3], s[2], s[0], s[1])),
    "conv_t": (lambda w, s: w.transpose(2, 3, 0, 1), lambda s: (s[2], s[3], s[0], s[1])),
    # (3d, d) rows [q; k; v], head-major within each -> (d, 3, heads, d/heads)
    "in_proj": (
        lambda w, s: w.reshape(s[1], s[2], s[3], s[0]).transpose(3, 0, 1, 2),
        lambda s: (s[1] * s[2] * s[3], s[0]),
    ),
    "in_proj_bias": (lambda w, s: w.reshape(s), lambda s: (int(np.prod(s)),)),
    "out_proj": (lambda w, s: w.T.reshape(s), lambda s: (s[2], s[0] * s[1])),
}


def conv_block_names(kind: str, image_size: int, audio_shape: Shape) -> dict[str, str]:
    """Our `ConvBlock` names -> official Sequential prefixes of one conv stack."""
    if kind == "frame_encoder":
        if image_size == 48:
            return {"c1": "c2.main", "c2": "c3.main", "c3": "c4.main", "c_out": "c5"}
        return {**{f"c{i}": f"c{i}.main" for i in range(1, 5)}, "c_out": "c5"}
    if kind == "frame_decoder":
        levels = 3 if image_size == 48 else 4
        return {
            "upc1": "upc1",
            **{f"upc{i}": f"upc{i}.main" for i in range(2, levels + 1)},
            "upc_out": "upc5",
        }
    plain = 1 if tuple(audio_shape) == (23, 21) else 2  # leading non-`dcgan_conv` blocks
    return {f"c{i}": f"c{i}" if i <= plain or i == 5 else f"c{i}.main" for i in range(1, 6)}


def _dense_like(path: tuple[str, ...], torch_module: str) -> tuple[tuple[str, ...], str]:
    """kernel / scale / bias of a Dense or LayerNorm -> (torch keys, transform)."""
    leaf = path[-1]
    if leaf == "kernel":
        return (f"{torch_module}.weight",), "linear"
    if leaf == "scale":
        return (f"{torch_module}.weight",), "copy"
    return (f"{torch_module}.{leaf}",), "copy"


def torch_source(kind: str, path: tuple[str, ...], config) -> tuple[tuple[str, ...], str]:
    """Our variable path inside one module -> (torch keys inside the official module, transform).

    Several keys are summed (an LSTM's two biases).
    """
    d = config.data
    if kind in ("frame_encoder", "frame_decoder", "audio_encoder"):
        block, layer, leaf = path
        prefix = conv_block_names(kind, d.image_size, d.audio_shape)[block]
        if layer == "conv" and leaf == "kernel":
            return (f"{prefix}.0.weight",), "conv_t" if kind == "frame_decoder" else "conv"
        if layer == "conv":
            return (f"{prefix}.0.bias",), "copy"
        name = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
        return (f"{prefix}.1.{name[leaf]}",), "copy"
    if kind == "lstm":
        head = {"embed": "embed", "mu": "mu_net", "logvar": "logvar_net", "output": "output.0"}
        if path[0] in head:
            return _dense_like(path, head[path[0]])
        layer, gate_set, leaf = path  # lstm_i, ih | hh, kernel | bias
        i = layer.removeprefix("lstm_")
        if leaf == "bias":  # ours: one bias on `ih`; torch adds bias_ih and bias_hh
            return (f"lstm.{i}.bias_ih", f"lstm.{i}.bias_hh"), "copy"
        return (f"lstm.{i}.weight_{gate_set}",), "linear"
    if kind == "transformer":
        name, leaf = path
        if name == "qkv":
            key = "in_proj_weight" if leaf == "kernel" else "in_proj_bias"
            return (f"{_LAYER}self_attn.{key}",), "in_proj" if leaf == "kernel" else "in_proj_bias"
        if name == "attn_out":
            if leaf == "kernel":
                return (f"{_LAYER}self_attn.out_proj.weight",), "out_proj"
            return (f"{_LAYER}self_attn.out_proj.bias",), "copy"
        torch_name = {
            "embed": "embed",
            "out": "output_trans.0",
            "ff1": f"{_LAYER}linear1",
            "ff2": f"{_LAYER}linear2",
            "norm1": f"{_LAYER}norm1",
            "norm2": f"{_LAYER}norm2",
        }[name]
        return _dense_like(path, torch_name)
    if kind == "linear":
        return (("weight",), "linear") if path[-1] == "kernel" else (("bias",), "copy")
    raise ValueError(f"unknown layout kind {kind!r}")


def ignored(key: str) -> bool:
    """Official entries with no counterpart in our state, dropped on purpose."""
    module, _, rest = key.partition(".")
    if module in _NOT_WEIGHTS or key.endswith(".num_batches_tracked"):
        return True
    return module in _TRANSFORMERS and (
        rest == "pos_encoder.pe" or rest.startswith("encoder_layer.")
    )


def _convert(sd: Mapping[str, np.ndarray], config, abstract: dict) -> dict:
    sd = {k: np.asarray(v) for k, v in sd.items()}
    errors: dict[str, list[str]] = {"missing": [], "shape": [], "unexpected": []}
    used: set[str] = set()
    out: dict = {"params": {}, "batch_stats": {}}
    for col in out:
        for part, modules in MODULES.items():
            flat = {}
            for path, spec in traverse_util.flatten_dict(abstract[col][part]).items():
                if path[0] not in modules:
                    raise RuntimeError(
                        f"{col}/{part}/{path[0]} is not in MODULES: update this converter"
                    )
                module, kind = modules[path[0]]
                keys, tf = torch_source(kind, path[1:], config)
                to_ours, torch_shape = TRANSFORMS[tf]
                want = tuple(torch_shape(spec.shape))
                values = []
                for key in (f"{module}.{k}" for k in keys):
                    used.add(key)
                    if key not in sd:
                        errors["missing"].append(f"{key} {want}")
                    elif sd[key].shape != want:
                        errors["shape"].append(f"{key}: got {sd[key].shape}, expected {want}")
                    else:
                        values.append(to_ours(sd[key].astype(np.float32), spec.shape))
                if len(values) == len(keys):
                    flat[path] = jnp.asarray(sum(values[1:], values[0]), spec.dtype)
            out[col][part] = traverse_util.unflatten_dict(flat)
    errors["unexpected"] = sorted(k for k in sd if k not in used and not ignored(k))
    if any(errors.values()):
        raise ValueError(_report(errors))
    return out


_LABELS = {"missing": "missing keys", "shape": "shape mismatches", "unexpected": "unexpected keys"}


def _report(errors: dict[str, list[str]], limit: int = 20) -> str:
    lines = ["Sound2Sight checkpoint does not match the configured model:"]
    for kind in ("missing", "shape", "unexpected"):
        found = errors[kind]
        if found:
            lines.append(f"  {_LABELS[kind]} ({len(found)}):")
            lines += [f"    {e}" for e in found[:limit]]
            if len(found) > limit:
                lines.append(f"    ... and {len(found) - limit} more")
    lines.append(
        "  (check --config: widths g_dim, z_dim, rnn_size, nf, audio_nf, dim_ff, disc.rnn_size; "
        "LSTM layer counts; data.image_size, channels, audio_shape)"
    )
    return "\n".join(lines)


def sound2sight_from_torch(sd: Mapping[str, np.ndarray], config, variables: dict) -> dict:
    """Official flat state dict -> the weight-holding part of the Sound2Sight task state.

    Args:
      sd: `{"<module>.<torch key>": array}` (see the module docstring).
      config: the experiment config (`configs/sound2sight_*.py`) describing the architecture
        (conv block names depend on `data.image_size` and `data.audio_shape`).
      variables: the tree to fill, `{"params": {"gen", "disc"}, "batch_stats": {"gen",
        "disc"}}` of arrays or `jax.ShapeDtypeStruct`s (only shapes and dtypes are read),
        e.g. `jax.eval_shape(task.init, rng)` of the Sound2Sight task; other entries are
        ignored.

    Returns:
      {"params": {"gen", "disc"}, "batch_stats": {"gen", "disc"}} of those shapes and dtypes.

    Raises:
      ValueError naming every missing, mis-shaped (torch shapes) or unexpected torch key.
    """
    return _convert(sd, config, variables)
