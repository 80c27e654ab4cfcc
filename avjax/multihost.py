"""Host-side work with several processes: gather what the host needs, process 0 writes.

A global `jax.Array` of a multi-process run spans devices other processes own; reading it
(`jax.device_get`, `np.asarray`) fails there ("spans non-addressable devices"). The
helpers here are called by *every* process at the same point (they run collectives):
`to_host` gathers such arrays (a replicated one is read from the local copy), and
`first_rows` cuts the first rows of a global batch inside one jitted computation before
gathering, so only those rows move. With one process they are plain `jax.device_get`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging


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
