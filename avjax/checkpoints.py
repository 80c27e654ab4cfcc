"""Orbax helpers for reading and writing whole runs: a leaf below the trainer.

`restore_state` reads any run's latest good step back without a target tree, onto the
devices you give it (by default one local device); `save_imported` writes converted
weights as a run. The trainer's periodic, resumable checkpoints (with the data iterator)
are `avjax.train.checkpoint.Checkpointer`; to get a trained run back, use
`avjax.runs.load_run`. Runs may live anywhere `etils.epath` reaches (`gs://`, `avjax.paths`).
"""

from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from avjax import paths
from avjax.errors import UserError

# Orbax saves an array replicated over N devices as N slices, one per replica, by default
# (off on GPU). Each slice is a dispatched `slice_in_dim`, compiled once per shape: for a
# small state replicated over 8 devices (600 arrays) that is ~4,700 dispatches, 5-12 s per
# save on CPU, for no gain. Slices below 4 MiB are written by one replica instead; large
# arrays on a pod keep the parallel write. Registered for every Orbax save in avjax.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 4 * 2**20
ocp.type_handlers.register_type_handler(
    jax.Array,
    ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES
    ),
    override=True,
)


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` (Orbax errors run to dozens of lines)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def abstract_with_shardings(abstract_state, shardings):
    """Attaches shardings to a pytree of ShapeDtypeStructs (restore targets)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )


def restore_state(
    workdir: paths.PathLike,
    step: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[dict, int]:
    """The whole train state of a run's latest (or given) checkpoint, and its step.

    Needs no target tree (it is read from the checkpoint's metadata), and restores a run
    saved on any number of devices onto `sharding` (default: one local device; pass a
    replicated `NamedSharding` to place it on every device of a mesh). Without `step`, an
    unreadable latest step is skipped with a one-line warning and the next older one used,
    as training does; being read-only, this never renames it (the next training run moves
    it aside).
    """
    directory = paths.absolute(workdir) / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"no checkpoints/ folder in {workdir}: is it an avjax workdir?")
    # A handler for the iterator item too, only so Orbax does not warn that it cannot read it.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
    }
    # An explicit target sharding: runs saved on N devices restore on any machine.
    device = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise UserError(f"no checkpoint steps in {directory}: has the run saved yet?")
        failures = []
        for s in steps:
            try:
                target = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                    manager.item_metadata(s)["state"],
                )
                args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
                restored = manager.restore(s, args=args)
            except Exception as e:
                if step is not None:
                    raise
                failures.append(f"{s} ({first_line(e)})")
                continue
            if failures:
                logging.warning(
                    "checkpoint step(s) %s in %s unreadable; using step %d",
                    "; ".join(failures),
                    directory,
                    s,
                )
            return dict(restored["state"]), s
    raise UserError(f"no readable checkpoint in {directory}: {'; '.join(failures)}")


def save_imported(workdir: paths.PathLike, config_json: str, state: dict, step: int = 0):
    """Writes imported weights as an avjax run (config.json + checkpoints/<step>/state).

    The result serves inference (`launch/codec.py`, `launch/evaluate.py`) and
    `avjax.runs.load_run`. Training resumes from it only when `state` is a whole task state
    (`--kind sound2sight`); the data iterator then starts from the beginning.
    """
    workdir = paths.absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_json)
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        manager.wait_until_finished()
    return workdir
