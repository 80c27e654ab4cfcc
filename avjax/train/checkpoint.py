"""Orbax checkpoints of the train state together with the Grain iterator state.

One step directory holds both items, so a resumed run continues with exactly the
batches and RNG an uninterrupted run would have seen. Restore walks steps newest to
oldest: a damaged latest step (Orbax does not fall back by itself) is moved aside to
`<step>.damaged` (Orbax only lists all-digit step names, so it is neither restored nor
counted by `max_to_keep` again), reported in one line, and the previous good one used.
A failed background save (a full disk) is reported at the next step, not one checkpoint
interval later. The directory may be a URI (`gs://`, `avjax.paths`); the full-disk message
is for local disks, a remote failure is reported as a failed save.
"""

from __future__ import annotations

import contextlib
import errno
import logging as py_logging
import os
import shutil
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from avjax import multihost, paths
from avjax.checkpoints import first_line
from avjax.errors import UserError


def _find_errno(e: BaseException | None, code: int) -> OSError | None:
    """The first OSError with `code` in `e`'s cause/context chain (Orbax wraps them)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == code:
            return e
        if code == errno.ENOSPC and "No space left on device" in str(e):
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


class _HeldSaveErrors(py_logging.Filter):
    """Holds Orbax's error logs (tracebacks, from its background threads) during saves.

    A failed save logs hundreds of traceback lines; `Checkpointer` reports a full disk in
    one line instead and releases the held records for any other failure (or a save that
    succeeded after all). TensorStore also prints "Event loop is closed" tracebacks
    (through `sys.excepthook`) while a failed save winds down; those are dropped.
    """

    def __init__(self):
        super().__init__()
        self.held: list[py_logging.LogRecord] = []
        self.passing = False
        self.active = False  # only while a save is pending

    def filter(self, record: py_logging.LogRecord) -> bool:
        if not self.active or self.passing or record.levelno < py_logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        self.held.append(record)
        return False

    def release(self, logger: py_logging.Logger, emit: bool):
        held, self.held, self.active = self.held, [], False
        if emit:
            self.passing = True
            try:
                for record in held:
                    logger.handle(record)
            finally:
                self.passing = False


def _drop_unretrieved(record: py_logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)


def _closed_loop(exc_type, exc) -> bool:
    return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def _excepthook_without_closed_loops(previous):
    def hook(exc_type, exc, tb):
        if not _closed_loop(exc_type, exc):
            previous(exc_type, exc, tb)

    hook.avjax_previous = previous
    return hook


def _unraisablehook_without_closed_loops(previous):
    def hook(unraisable):
        if not _closed_loop(unraisable.exc_type, unraisable.exc_value):
            previous(unraisable)

    hook.avjax_previous = previous
    return hook


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _shapes(tree) -> dict[str, tuple]:
    """`{"a/b/0/c": shape}` for the leaves of a tree (dict keys, indices and attributes alike)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        "/".join(_key_name(k) for k in path): tuple(getattr(x, "shape", ())) for path, x in leaves
    }


def _tree_mismatch(abstract, metadata) -> str | None:
    """The first array whose shape differs, or that only one of the trees has.

    Scalars only on one side are ignored: Orbax's metadata and the live tree represent
    empty optimizer states and counters differently.
    """
    a, m = _shapes(abstract), _shapes(metadata)
    for name in sorted(set(a) | set(m)):
        if name in a and name in m:
            if a[name] != m[name]:
                return f"{name} has shape {m[name]} in the checkpoint, {a[name]} now"
        elif (a if name in a else m)[name]:
            return f"{name} is only in {'the model' if name in a else 'the checkpoint'}"
    return None


class Checkpointer:
    """Periodic async saves with keep-N, and restore of the latest good step."""

    def __init__(self, directory: paths.PathLike, *, every: int, keep: int, async_save=True):
        self.directory = paths.absolute(directory)
        self.every = every
        self._pending: int | None = None  # step of a background save not yet confirmed
        self._logger = py_logging.getLogger("absl")
        self._held = _HeldSaveErrors()
        self._logger.addFilter(self._held)
        self._hooked = False
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

    def latest(self) -> int | None:
        """The newest saved (or being saved) step, or None."""
        return self._manager.latest_step()

    def due(self, step: int, *, force: bool = False) -> bool:
        """Whether `maybe_save(step, force=force)` would save."""
        if step in self._manager.all_steps():
            return False
        return force or step % self.every == 0

    def reached_preemption(self, step: int) -> bool:
        """Whether all processes agreed to stop at `step` (JAX's preemption sync point)."""
        return self._manager.reached_preemption(step)

    def maybe_save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
        """Saves `state` (and the iterator) at `step` if due; returns whether it saved."""
        if not self.due(step, force=force):
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if self._pending is not None:
            self._finish()  # Orbax would wait for it anyway; its failure is reported as its own
        if not self._hooked:  # TensorStore reports these through either hook
            sys.excepthook = _excepthook_without_closed_loops(sys.excepthook)
            sys.unraisablehook = _unraisablehook_without_closed_loops(sys.unraisablehook)
            self._hooked = True
        self._held.active = True
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:
            self._raise_save_error(step, e)
        self._pending = step
        return True

    def check(self):
        """Raises if the last background save failed (call once per step: it is cheap).

        A full disk raises `UserError` naming the directory; the failed step's temporary
        folder is removed and the earlier steps are kept (Orbax deletes old steps only after
        a save commits).
        """
        if self._pending is None or self._manager.is_saving_in_progress():
            return
        self._finish()

    def _finish(self):
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._raise_save_error(step, e)
        self._held.release(self._logger, emit=True)

    def _raise_save_error(self, step: int, e: BaseException):
        if jax.process_index() == 0:
            for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                if paths.is_local(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        tmp.rmtree()
        self._manager.reload()
        kept = self.steps()
        kept = f"earlier checkpoints kept (steps {kept})" if kept else "no earlier checkpoint"
        full = paths.is_local(self.directory) and _find_errno(e, errno.ENOSPC) is not None
        self._held.release(self._logger, emit=not full)
        if full:
            # The failed writes' asyncio tasks log "exception was never retrieved" tracebacks
            # when they are collected (at exit); the one line below says it all.
            py_logging.getLogger("asyncio").addFilter(_drop_unretrieved)
            raise UserError(
                f"{self.directory}: no space left on device while saving step {step}; {kept}"
            ) from e
        raise RuntimeError(
            f"saving step {step} to {self.directory} failed ({first_line(e)}); {kept}"
        ) from e

    def restore_latest(self, abstract_state, data_iter=None) -> tuple[Any, int] | None:
        """Restores the newest readable step into `abstract_state`'s shapes and shardings.

        An unreadable step is renamed `<step>.damaged` (by process 0; reported in one warning
        line) and the next older one tried, so the retrained step is saved again and
        `max_to_keep` never counts the damaged one. A step that is readable but holds
        different shapes (another model) is never renamed: that raises `UserError`.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` set.
          data_iter: a Grain iterator whose position is restored in place; left as it is
            when the step has no iterator state (imported weights, `save_imported`).

        Returns:
          `(state, step)`, or None when the directory holds no checkpoint.
        """
        damaged = []
        try:
            for step in reversed(self.steps()):
                self._check_shapes(step, abstract_state)
                items = {"state": ocp.args.StandardRestore(abstract_state)}
                has_data = (self.directory / str(step) / "data").is_dir()
                if data_iter is not None and has_data:
                    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
                elif data_iter is not None:
                    logging.warning(
                        "step %d has no data iterator state; the data starts afresh", step
                    )
                try:
                    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
                except Exception as e:
                    damaged.append(self._move_aside(step, e))
                    continue
                return restored["state"], step
        finally:
            if damaged:
                multihost.wait_for_processes("avjax_checkpoint_moved_aside")
                self._manager.reload()
        if damaged:
            raise RuntimeError(
                f"no readable checkpoint in {self.directory}: every step was damaged and moved "
                f"aside ({', '.join(damaged)}); the run starts again only once you remove them"
            )
        return None

    def _check_shapes(self, step: int, abstract_state):
        try:
            meta = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
        except Exception:
            return  # unreadable metadata: the restore attempt reports the step as damaged
        tree = getattr(meta, "tree", meta)
        diff = _tree_mismatch(abstract_state, tree)
        if diff is not None:
            raise UserError(
                f"checkpoint step {step} in {self.directory} holds a different model than the "
                f"config ({diff}); use a new --workdir for a new model"
            )

    def _move_aside(self, step: int, e: BaseException) -> str:
        src = self.directory / str(step)
        dst = self.directory / f"{step}.damaged"
        i = 1
        while dst.exists():
            dst, i = self.directory / f"{step}.damaged.{i}", i + 1
        if jax.process_index() == 0 and src.exists():
            src.rename(dst)
        logging.warning(
            "checkpoint step %d is unreadable (%s); moved it aside to %s, using an older step",
            step,
            first_line(e),
            dst,
        )
        return dst.name

    def wait(self):
        """Blocks until the last save is committed; raises like `check` if it failed."""
        if self._pending is not None:
            self._finish()
        self._manager.wait_until_finished()

    def close(self):
        """Waits for the last save and closes; errors are not raised here (`wait` reports them).

        A failed save is re-raised by every Orbax wait, so after one was reported (or while
        another exception propagates) closing must not raise it again.
        """
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()
        with contextlib.suppress(Exception):
            self._manager.close()
        self._logger.removeFilter(self._held)
        self._held.release(self._logger, emit=False)  # only left after a reported failure
        if self._hooked:
            for name in ("excepthook", "unraisablehook"):
                previous = getattr(getattr(sys, name), "avjax_previous", None)
                if previous is not None:
                    setattr(sys, name, previous)
            self._hooked = False
