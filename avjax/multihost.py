"""Host-side work with several processes: gather what the host needs, process 0 writes.

A global `jax.Array` of a multi-process run spans devices other processes own; reading it
(`jax.device_get`, `np.asarray`) fails there ("spans non-addressable devices"). The
helpers here are called by *every* process at the same point (they run collectives):
`to_host` gathers such arrays (a replicated one is read from the local copy), and
`first_rows` cuts the first rows of a global batch inside one jitted computation before
gathering, so only those rows move. With one process they are plain `jax.device_get`.

XLA:CPU's cross-process collectives (Gloo) give up when processes reach a program's first
collective more than 30 s apart ("GetKeyValue() timed out"; neither
`--initialization_timeout` nor `--xla_cpu_collective_timeout_seconds` changes it), as
when one process compiles, writes a checkpoint or draws samples slower than another (a
loaded machine, a warm compilation cache). `wait_for_processes`, a barrier of JAX's
coordination service without that limit, runs before each such first collective: every
gather here, and every train / eval step's first call (`avjax.train.loop`).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np
from absl import logging

WAIT_S = 3600  # how long processes wait for each other at a barrier (a slow compile)
_BARRIERS = itertools.count()  # barrier ids are unique per call (every process counts alike)


def wait_for_processes(name: str, timeout_s: float = WAIT_S):
    """Returns once every process has called it with `name` (at once with one process).

    A barrier of JAX's coordination service, not a collective, so it has no 30 s limit.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    barrier = f"{name}_{next(_BARRIERS)}"
    distributed.global_state.client.wait_at_barrier(barrier, int(timeout_s * 1000))


def is_main() -> bool:
    """Whether this is process 0, the one that writes files and logs."""
    return jax.process_index() == 0


def _spans_other_processes(x) -> bool:
    return isinstance(x, jax.Array) and not x.is_fully_addressable


def to_host(tree: Any) -> Any:
    """`tree` with every array as host numpy, global arrays gathered from all processes.

    Every process must call it (with arrays of the same global shapes): gathering a
    sharded global array is a collective. Host values and process-local arrays are copied
    as they are.
    """
    leaves, treedef = jax.tree.flatten(tree)
    out, gather = [], []
    for i, x in enumerate(leaves):
        if not _spans_other_processes(x):
            out.append(np.asarray(jax.device_get(x)))
        elif x.is_fully_replicated:
            out.append(np.asarray(x.addressable_data(0)))
        else:
            out.append(None)
            gather.append(i)
    if gather:
        from jax.experimental import multihost_utils

        wait_for_processes("avjax_gather")  # a gather may be this program's first collective
        got = multihost_utils.process_allgather([leaves[i] for i in gather], tiled=True)
        for i, v in zip(gather, got):
            out[i] = np.asarray(v)
    return jax.tree.unflatten(treedef, out)


def first_rows(tree: Any, n: int) -> Any:
    """The first `n` rows (leading axis) of every array of `tree`, as host numpy.

    Global batch arrays are cut on the devices (every process calls this) and only the
    `n` rows are gathered.
    """
    if any(_spans_other_processes(x) for x in jax.tree.leaves(tree)):
        tree = jax.jit(lambda t: jax.tree.map(lambda x: x[:n], t))(tree)
        return to_host(tree)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[:n], tree)


def quiet_other_processes():
    """absl logging at WARNING on processes other than 0: one progress log per run."""
    if not is_main():
        logging.set_verbosity(logging.WARNING)
