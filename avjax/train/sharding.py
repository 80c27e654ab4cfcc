"""Device mesh and sharding rules: batch over ('data', 'fsdp'), big params FSDP-sharded.

The mesh comes from config (`[("data", -1), ("fsdp", 1)]`: -1 takes the remaining
devices). Axes are `Auto` (GSPMD propagation): Flax layers do not pass `out_sharding`,
so an Explicit-axis mesh (the `jax.make_mesh` default in jax 0.10) would fail on FSDP.
"""

from __future__ import annotations

import functools
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
    axis_types = (AxisType.Auto,) * len(names)
    mesh = jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)
    procs = [d.process_index for d in mesh.devices.flat]
    if procs != sorted(procs):
        # Process p must hold rows [p*B, (p+1)*B) of the global batch (`global_batch`), so
        # that a batch is the same examples in the same order on any number of processes.
        # (TPU meshes follow the chips' physical order, which may interleave hosts.)
        order = sorted(devices, key=lambda d: (d.process_index, d.id))
        mesh = Mesh(np.asarray(order).reshape(sizes), names, axis_types=axis_types)
    return mesh


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


@functools.lru_cache(maxsize=64)
def _check_process_rows(sharding: NamedSharding, local_rows: int, process: int, count: int):
    """Raises unless this process's devices hold exactly rows [p*B, (p+1)*B) of the batch."""
    rows = local_rows * count
    lo, hi = process * local_rows, (process + 1) * local_rows
    for index in sharding.addressable_devices_indices_map((rows,)).values():
        start, stop, _ = index[0].indices(rows)
        if start < lo or stop > hi:
            raise ValueError(
                f"the mesh puts rows [{start}, {stop}) of the global batch on process "
                f"{process}, whose input holds rows [{lo}, {hi}); build it with "
                "avjax.train.sharding.make_mesh (process-major device order)"
            )


def global_batch(local_batch, mesh: Mesh):
    """Assembles global jax.Arrays from this process's rows of the batch.

    Process p's `local_batch` is rows [p*B, (p+1)*B) of the global batch (the input
    pipelines' order); `make_mesh` lays the devices out so that they land there.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() > 1:
        rows = {len(x) for x in jax.tree.leaves(local_batch)}
        for r in rows:
            _check_process_rows(sharding, r, jax.process_index(), jax.process_count())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
