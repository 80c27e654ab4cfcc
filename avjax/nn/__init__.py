"""Shared neural-network blocks; `Conv`, `ConvTranspose`, `max_pool` and `ConvLSTMCell` are
the routed layers of `avjax/nn/layers.py` (matmul kernels on CPU, XLA's own ops elsewhere)."""

from avjax.nn.layers import (
    Conv,
    ConvLSTMCell,
    ConvTranspose,
    conv_general_dilated,
    conv_transpose,
    max_pool,
)

__all__ = [
    "Conv",
    "ConvLSTMCell",
    "ConvTranspose",
    "conv_general_dilated",
    "conv_transpose",
    "max_pool",
]
