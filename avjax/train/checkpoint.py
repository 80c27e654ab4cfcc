"""Orbax checkpoints of the train state together with the Grain iterator state.

One step directory holds both items, so a resumed run continues with exactly the
batches and RNG an uninterrupted run would have seen. Restore walks steps newest to
oldest: a damaged latest step (Orbax does not fall back by itself) is reported and
the previous good one used.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Periodic async saves with keep-N, and restore of the latest good step."""

    def __init__(self, directory: str | pathlib.Path, *, every: int, keep: int, async_save=True):
        self.directory = pathlib.Path(directory).absolute()
        self.every = every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def maybe_save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
        """Saves `state` (and the iterator) at `step` if due; returns whether it saved."""
        if not force and (step % self.every or step in self._manager.all_steps()):
            return False
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        return True

    def restore_latest(self, abstract_state, data_iter=None) -> tuple[Any, int] | None:
        """Restores the newest readable step into `abstract_state`'s shapes and shardings.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set.
          data_iter: a Grain iterator whose position is restored in place; left as it is
            when the step has no iterator state (imported weights, `save_imported`).

        Returns:
          `(state, step)`, or None when the directory holds no checkpoint.
        """
        for step in reversed(self.steps()):
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            has_data = (self.directory / str(step) / "data").is_dir()
            if data_iter is not None and has_data:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
            elif data_iter is not None:
                logging.warning("step %d has no data iterator state; the data starts afresh", step)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:
                logging.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s); trying an older step",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "",
                )
                continue
            return restored["state"], step
        if self.steps():
            raise RuntimeError(
                f"no readable checkpoint in {self.directory} (steps {self.steps()} all failed); "
                "move the directory aside to start from scratch"
            )
        return None

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_shardings(abstract_state, shardings):
    """Attaches shardings to a pytree of ShapeDtypeStructs (restore targets)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )


def restore_state(workdir: str | pathlib.Path, step: int | None = None) -> dict:
    """The whole train state of a run's latest (or given) checkpoint on one local device.

    Needs no target tree (it is read from the checkpoint's metadata), and restores a run
    saved on any number of devices.
    """
    directory = pathlib.Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints/ folder in {workdir}: is it an avjax workdir?")
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint steps in {directory}")
        # An explicit single-device target: runs saved on N devices restore on any machine.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step)["state"],
        )
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        restored = manager.restore(step, args=args)
    return dict(restored["state"])


def restore_params(workdir: str | pathlib.Path, step: int | None = None) -> dict:
    """`params` of a run's latest (or given) checkpoint (see `restore_state`)."""
    return restore_state(workdir, step)["params"]


def save_imported(workdir: str | pathlib.Path, config_json: str, state: dict, step: int = 0):
    """Writes imported weights as an avjax run (config.json + checkpoints/<step>/state).

    The result serves inference (`launch/codec.py`, `launch/evaluate.py`) and
    `restore_params`. Training resumes from it only when `state` is a whole task state
    (`--kind sound2sight`); the data iterator then starts from the beginning.
    """
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_json)
    with ocp.CheckpointManager(workdir / "checkpoints") as manager:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        manager.wait_until_finished()
    return workdir
