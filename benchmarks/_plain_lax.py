"""Helper of the benchmarks (not one itself): trace avjax's convolutions as plain lax."""

import contextlib
from unittest import mock

from avjax.nn import cpu_kernels


@contextlib.contextmanager
def plain_lax():
    """Within the block, every `avjax.nn.Conv` traces as plain `lax.conv_general_dilated`.

    For counting FLOPs: XLA's cost analysis counts the chunked kernel gradient's `scan` body
    once. It patches `cpu_kernels.conv_route`, the rule the routed layers consult, to answer
    "lax"; transposed convolutions and max-pools keep their routes (same FLOPs as matmuls).
    """
    with mock.patch.object(cpu_kernels, "conv_route", lambda *args, **kwargs: ("lax", None)):
        yield
