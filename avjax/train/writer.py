"""Metric writing: TensorBoard event files (no TensorFlow needed) and a console line.

Only process 0 writes; the others get a writer whose methods do nothing. A workdir URI
(`gs://`, `avjax.paths`) is written through `etils.epath`: object stores cannot append, so
the event file and `metrics.jsonl` are uploaded whole, at most every minute and at close.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import threading
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

from avjax import paths
from avjax.errors import UserError

REMOTE_FLUSH_S = 60.0  # seconds between uploads of a remote workdir's growing files


def _is_tb_thread(thread) -> bool:
    return type(thread).__module__.startswith("tensorboardX")


class MetricWriter:
    """Scalars, images and audio to `WORKDIR/tensorboard`, plus `metrics.jsonl`.

    tensorboardX writes from a background thread; when that thread dies (a full disk) its
    queue fills and the next write would block forever. Writes check the thread first and
    stop TensorBoard output with one warning instead; `metrics.jsonl` failing on a full
    disk raises `UserError` naming the file.
    """

    def __init__(self, workdir: paths.PathLike, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = paths.as_path(workdir)
        self._tb = None
        self._tb_failed = False
        if self.enabled:
            from tensorboardX import SummaryWriter

            local = paths.is_local(self.workdir)
            if not local:
                _register_remote_events(str(self.workdir))
            flush_secs = 10 if local else REMOTE_FLUSH_S
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), flush_secs=flush_secs)
            jsonl = self.workdir / "metrics.jsonl"
            self._jsonl = open(jsonl, "a") if local else RemoteAppend(jsonl)  # noqa: SIM115
            self._previous_hook = threading.excepthook
            threading.excepthook = self._thread_hook

    def _thread_hook(self, args):
        if _is_tb_thread(args.thread) and issubclass(args.exc_type, OSError):
            return  # reported by `_tb_ok` at the next write, in one line
        self._previous_hook(args)

    def _tb_ok(self) -> bool:
        if not self.enabled or self._tb_failed:
            return False
        for fw in list((getattr(self._tb, "all_writers", None) or {}).values()):
            worker = getattr(fw.event_writer, "_worker", None)
            if worker is not None and not worker.is_alive():
                self._stop_tb("its writer thread failed, e.g. on a full disk")
                return False
        return True

    def _stop_tb(self, why: str):
        self._tb_failed = True
        logging.warning("TensorBoard output in %s stopped (%s)", self.workdir / "tensorboard", why)
        for fw in list((getattr(self._tb, "all_writers", None) or {}).values()):
            fw.event_writer._closed = True  # no more queueing; the atexit hook skips it

    def scalars(self, step: int, metrics: Mapping[str, float]):
        if not self.enabled:
            return
        for k, v in metrics.items():
            if self._tb_ok():
                self._tb.add_scalar(k, float(v), step)
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        try:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise UserError(
                    f"{self.workdir / 'metrics.jsonl'}: no space left on device while logging "
                    f"step {step}"
                ) from None
            raise

    def image(self, step: int, tag: str, image: np.ndarray):
        """`image`: [H, W] or [H, W, C] floats in [0, 1] or uint8."""
        if self._tb_ok():
            image = np.asarray(image)
            self._tb.add_image(
                tag, image if image.ndim == 3 else image[..., None], step, dataformats="HWC"
            )

    def audio(self, step: int, tag: str, wave: np.ndarray, sample_rate: int):
        if self._tb_ok():
            from avjax.audio.io import fit_full_scale  # scaled, never hard-clipped

            self._tb.add_audio(tag, fit_full_scale(wave), step, sample_rate)

    def text(self, step: int, tag: str, text: str):
        if self._tb_ok():
            self._tb.add_text(tag, text, step)

    def flush(self):
        if self._tb_ok():
            self._tb.flush()

    def close(self):
        """Closes the files; a failing final flush (a full disk) is one warning line.

        Otherwise tensorboardX would retry that flush at exit and print tracebacks.
        """
        if not self.enabled:
            return
        if self._tb_ok():
            try:
                self._tb.close()
            except OSError as e:
                with contextlib.suppress(Exception):
                    for fw in list((getattr(self._tb, "all_writers", None) or {}).values()):
                        worker = fw.event_writer._worker
                        if worker is not None and worker.is_alive():
                            worker.stop()
                self._stop_tb(f"final flush: {e.strerror}")
        if threading.excepthook == self._thread_hook:
            threading.excepthook = self._previous_hook
        try:
            self._jsonl.close()
        except OSError as e:
            logging.warning("metrics.jsonl in %s not all written (%s)", self.workdir, e)


def parameter_overview(params) -> str:
    """A table of parameter paths, shapes and counts, with the total."""
    rows, total = [], 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        n = int(np.prod(x.shape))
        total += n
        rows.append(f"| {name} | {tuple(x.shape)} | {n:,} |")
    head = ["| name | shape | size |", "|---|---|---|"]
    return "\n".join([*head, *rows, f"| **total** | | **{total:,}** |"])


def count_params(params) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


class RemoteAppend:
    """Append-only text file at a URI: kept in memory, uploaded whole (object stores cannot
    append) at most every `REMOTE_FLUSH_S` seconds and at `close`."""

    def __init__(self, path: paths.PathLike, every_s: float = REMOTE_FLUSH_S):
        self.path = paths.as_path(path)
        self._text = io.StringIO()
        if self.path.exists():
            self._text.write(self.path.read_text())
        self._every, self._last = every_s, time.monotonic()

    def write(self, text: str):
        self._text.write(text)

    def flush(self, force: bool = False):
        if force or time.monotonic() - self._last >= self._every:
            self.path.write_text(self._text.getvalue())
            self._last = time.monotonic()

    def close(self):
        self.flush(force=True)


class _RemoteEvents:
    """A TensorBoard event file at a URI, uploaded whole at each of tensorboardX's flushes."""

    def __init__(self, path: str):
        self.path = paths.as_path(path)
        self._buffer = io.BytesIO()

    def write(self, data: bytes):
        self._buffer.write(data)

    def flush(self):
        self.path.write_bytes(self._buffer.getvalue())

    def close(self):
        self.flush()


class _RemoteEventsFactory:
    def open(self, path: str) -> _RemoteEvents:
        return _RemoteEvents(path)

    def directory_check(self, path: str):
        paths.as_path(path).mkdir(parents=True, exist_ok=True)


def _register_remote_events(workdir: str):
    """Routes tensorboardX's event files for `workdir`'s scheme through `etils.epath`.

    tensorboardX's own `gs://` / `s3://` writers need google-cloud-storage / boto3; epath
    reaches the store with what Orbax already uses.
    """
    from tensorboardX import record_writer

    record_writer.register_writer_factory(workdir.split("://", 1)[0], _RemoteEventsFactory())
