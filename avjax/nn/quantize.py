"""Reduced-precision Dense weights for inference: bfloat16, and int8 weight-only quantisation.

Batch-1 autoregressive sampling reads every weight once per token, so its speed is the
bytes read over the memory bandwidth. bfloat16 kernels halve those bytes; int8 kernels
with one float32 scale per output channel (symmetric, `q = round(w / s)`,
`s = max|w[:, o]| / 127`) quarter them. Parameters on disk stay float32:
`convert_params` converts a loaded tree, and `Dense`, a drop-in for `flax.linen.Dense`
(same fields, parameter names and initialisation), computes with the kernel it is given:

* a float kernel (float32 or bfloat16): `x @ kernel + bias` in the module's dtype;
* an int8 `kernel` with a float32 `kernel_scale` [out] beside it:
  `(x @ kernel) * kernel_scale + bias`, the int8 kernel converted inside the jitted
  matmul (never stored as float), so int8 bytes are what is read from memory.

Inside a `lax.scan` (a sampler's token loop) the weights are loop-invariant, and XLA
would hoist their conversion out of the loop, reading float weights at every step
again. `Dense` ties a reduced kernel to the activations with an optimisation barrier so
that the conversion stays inside the loop body.

How the reduced matmul runs depends on the platform of the lowering
(`lax.platform_dependent`, as the routed convolutions of `avjax/nn/layers.py`):
* GPU / TPU: `x.astype(dtype) @ kernel.astype(dtype)`, in the compute dtype (bfloat16
  there); XLA fuses the int8 -> bf16 conversion into the matmul's operand load.
* CPU, int8 kernels, at most `NATIVE_MAX_ROWS` rows (sampling batches up to 16): a
  native kernel (`avjax/nn/native`, an XLA FFI call compiled on first use) computes
  `(x @ q) * scale` with float32 activations, widening each int8 weight in registers as it
  streams past, so each weight is read once per call as one byte, for all rows. On the
  2-core reference machine (loaded by other jobs) a batch-1 layer ran 2.3-2.9x faster
  than the route below, a batch-1 sampling step 1.6x; at 8-16 rows both are about as
  fast. Where it cannot be built (no C++ compiler), or with `AVJAX_NATIVE=0`, the route
  below is used.
* CPU otherwise: XLA:CPU converts a bfloat16 or int8 matrix-vector product to float32
  whole (reading more bytes, not fewer). Its matrix-matrix products (YNNPACK) take
  bfloat16 and int8 operands directly, so single rows are padded to two and the product
  runs as a bf16 x bf16 -> f32 dot (bfloat16 kernels; activations rounded to bfloat16) or
  an int8 x int8 -> int32 dot (int8 kernels; activations quantised per row to int8 with
  their own scale, `x = sx * qx`). Those run compute-bound: at batch 1 the int8 dot is
  1.2x faster than float32 and bfloat16 no faster (README, Benchmarks).
float32 stays the CPU default of `default_weights_dtype`.
`route` forces one ("cpu" / "plain"); tests use it. `AVJAX_NATIVE=0` in the environment
(read when a function is traced) keeps int8 products off the native kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from avjax.nn import native

WEIGHTS_DTYPES = ("float32", "bfloat16", "int8")
Route = Literal["auto", "cpu", "plain"]
SCALE = "kernel_scale"


def default_weights_dtype(platform: str | None = None) -> str:
    """bfloat16 on GPU / TPU, float32 on CPU (`platform`: default `jax.default_backend()`)."""
    platform = platform or jax.default_backend()
    return "float32" if platform == "cpu" else "bfloat16"


def check_weights_dtype(name: str) -> str:
    """`name` if it is one of `WEIGHTS_DTYPES`, else a ValueError naming them."""
    if name not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {WEIGHTS_DTYPES}, got {name!r}")
    return name


# ---------------------------------------------------------------------------- conversion
def quantize_int8(w) -> tuple[np.ndarray, np.ndarray]:
    """Kernel [in, out] -> (int8 [in, out], float32 scale [out]); symmetric per column.

    `w ~= q * scale`; an all-zero column gets scale 1 (and zeros).
    """
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q, scale) -> jax.Array:
    """int8 [in, out] and scale [out] -> float32 [in, out]."""
    return jnp.asarray(q, jnp.float32) * jnp.asarray(scale, jnp.float32)


def is_dense_kernel(path: tuple[str, ...], leaf) -> bool:
    """The default rule of what `convert_params` reduces: 2-D float leaves named "kernel"."""
    return (
        path[-1] == "kernel"
        and np.ndim(leaf) == 2
        and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    )


def convert_params(
    params,
    weights_dtype: str,
    include: Callable[[tuple[str, ...], Any], bool] = is_dense_kernel,
):
    """A float32 parameter tree with its Dense kernels in `weights_dtype`.

    float32: unchanged. bfloat16: every kernel `include` accepts is cast. int8: each is
    replaced by its int8 values and a `kernel_scale` [out] is added beside it (on the
    host; the result is numpy). Biases, norms and embeddings stay float32. Nested dicts
    only (Flax's layout); `include(path, leaf)` sees the key path as strings.
    """
    check_weights_dtype(weights_dtype)
    if weights_dtype == "float32":
        return params

    def walk(tree, path):
        out = {}
        for k, v in tree.items():
            p = (*path, str(k))
            if isinstance(v, dict) or hasattr(v, "items"):
                out[k] = walk(v, p)
            elif include(p, v):
                if weights_dtype == "bfloat16":
                    out[k] = jnp.asarray(v, jnp.bfloat16)
                else:
                    out[k], out[SCALE] = (jnp.asarray(a) for a in quantize_int8(v))
            else:
                out[k] = v
        return out

    return walk(params, ())


def param_bytes(params) -> int:
    """Bytes of all leaves of a parameter tree."""
    return int(
        sum(
            np.asarray(x).nbytes if not hasattr(x, "nbytes") else x.nbytes
            for x in jax.tree.leaves(params)
        )
    )


# -------------------------------------------------------------------------------- matmul
# int8 products of more rows take XLA's int8 x int8 dot. At 16 rows the two are about
# equally fast (one layer alone: XLA's 1.0-1.2x faster; a 4-layer sampling step: native
# 5% faster), and the native one keeps float32 activations.
NATIVE_MAX_ROWS = 16


def cpu_int8_route(rows: int) -> str:
    """The CPU route of an int8 product of `rows` rows: "native" or "xla" (module docstring)."""
    return "native" if rows <= NATIVE_MAX_ROWS and native.available() else "xla"


def _flat(x):
    return x.reshape(-1, x.shape[-1])


def _pad_rows(x2):
    """[m, k] -> [max(m, 2), k]: XLA:CPU's library dots take no single-row operands."""
    return jnp.pad(x2, ((0, 1), (0, 0))) if x2.shape[0] == 1 else x2


def _cpu_matmul(x, kernel, scale, dtype, use_native: bool | None = None):
    """[..., in] @ kernel on CPU with a bfloat16 or int8 kernel; result float32.

    `use_native`: whether an int8 kernel may take the native kernel (None: when
    `native.available()`, for at most `NATIVE_MAX_ROWS` rows).
    """
    x2 = _flat(x.astype(jnp.float32))
    if kernel.dtype == jnp.int8:
        if use_native is None:
            use_native = cpu_int8_route(x2.shape[0]) == "native"
        if use_native:
            y = native.int8_matmul(x2, kernel, scale)
            return y.reshape(*x.shape[:-1], kernel.shape[1])
    xp = _pad_rows(x2)
    dims = (((1,), (0,)), ((), ()))
    if kernel.dtype == jnp.int8:
        amax = jnp.max(jnp.abs(xp), axis=-1, keepdims=True)
        sx = jnp.where(amax > 0, amax / 127.0, 1.0)
        qx = jnp.clip(jnp.round(xp / sx), -127, 127).astype(jnp.int8)
        y = lax.dot_general(qx, kernel, dims, preferred_element_type=jnp.int32)
        y = y.astype(jnp.float32) * sx
    else:
        y = lax.dot_general(
            xp.astype(kernel.dtype), kernel, dims, preferred_element_type=jnp.float32
        )
    y = y[: x2.shape[0]]
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    return y.reshape(*x.shape[:-1], kernel.shape[1])


def _plain_matmul(x, kernel, scale, dtype):
    """[..., in] @ kernel.astype(dtype) (* scale) in `dtype`: the GPU / TPU form."""
    y = lax.dot_general(x.astype(dtype), kernel.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())))
    return y if scale is None else y * scale.astype(dtype)


def matmul(x, kernel, scale=None, dtype=jnp.float32, route: Route = "auto") -> jax.Array:
    """x [..., in] @ a reduced kernel [in, out] (bf16, or int8 with `scale` [out]) -> [..., out].

    The result is in `dtype`. See the module docstring for the per-platform forms.
    """
    if route not in ("auto", "cpu", "plain"):
        raise ValueError(f"route must be 'auto', 'cpu' or 'plain', got {route!r}")
    if kernel.dtype == jnp.int8 and scale is None:
        raise ValueError("an int8 kernel needs its per-column scale")
    args = (x, kernel) if scale is None else (x, kernel, scale)

    def cpu(x, kernel, scale=None):
        return _cpu_matmul(x, kernel, scale, dtype).astype(dtype)

    def plain(x, kernel, scale=None):
        return _plain_matmul(x, kernel, scale, dtype).astype(dtype)

    if route == "cpu":
        return cpu(*args)
    if route == "plain":
        return plain(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=plain)


# --------------------------------------------------------------------------------- Dense
class Dense(nn.Module):
    """`flax.linen.Dense` that also runs with reduced kernels (see `convert_params`).

    Attributes as `flax.linen.Dense`; `route` picks the reduced matmul's form ("auto":
    by the platform of the lowering). Float32 kernels compute exactly as `nn.Dense`.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    route: Route = "auto"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """[..., in] -> [..., features]."""
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        scale = self.get_variable("params", SCALE) if self.has_variable("params", SCALE) else None
        reduced = scale is not None or kernel.dtype == jnp.bfloat16
        if not reduced or (self.dtype is not None and jnp.dtype(self.dtype) == kernel.dtype):
            # Float kernels (and bf16 kernels computing in bf16): exactly nn.Dense.
            inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
            y = lax.dot_general(
                inputs,
                kernel,
                (((inputs.ndim - 1,), (0,)), ((), ())),
                precision=self.precision,
            )
        else:
            dtype = self.dtype or jnp.result_type(inputs, jnp.float32)
            # Tie the kernel to this call's inputs: inside a scan the kernel is loop-invariant
            # and XLA would otherwise convert it once, outside the loop (float reads again).
            kernel, inputs = lax.optimization_barrier((kernel, inputs))
            y = matmul(inputs, kernel, scale, dtype, self.route)
            bias = None if bias is None else bias.astype(dtype)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        return y
