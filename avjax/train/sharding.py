"""Device mesh and sharding rules: batch over ('data', 'fsdp'), big params FSDP-sharded.

The mesh comes from config (`[("data", -1), ("fsdp", 1)]`: -1 takes the remaining
devices). Axes are `Auto` (GSPMD propagation): Flax layers do not pass `out_sharding`,
so an Explicit-axis mesh (the `jax.make_mesh` default in jax 0.10) would fail on FSDP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh from `[(name, size), ...]`; one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in axes)
    sizes = [int(size) for _, size in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {list(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"config.mesh: {len(devices)} devices do not fit the fixed axes {list(axes)}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"config.mesh: axes {dict(zip(names, sizes))} need {math.prod(sizes)} devices, "
            f"{len(devices)} are available"
        )
    return jax.make_mesh(
        tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices
    )


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the leading (batch) dimension is split over."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading dim split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], mesh: Mesh, axis: str = "fsdp", min_size: int = 2**18) -> P:
    """Shards the largest dimension divisible by the `axis` size; small arrays replicate.

    `min_size` (elements) keeps biases, norms and small kernels replicated: sharding them
    costs more in collectives than it saves in memory.
    """
    n = mesh.shape.get(axis, 1)
    if n == 1 or math.prod(shape) < min_size:
        return P()
    for dim in np.argsort(shape)[::-1]:
        if shape[dim] % n == 0:
            spec = [None] * len(shape)
            spec[dim] = axis
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, min_size: int = 2**18):
    """NamedShardings for every leaf of a (abstract) train state by the FSDP size rule."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh, min_size=min_size)),
        abstract_state,
    )


def global_batch(local_batch, mesh: Mesh):
    """Assembles global jax.Arrays from this process's slice of the batch."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
