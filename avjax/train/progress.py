"""Training progress on the console: a bar on a terminal, short lines otherwise.

Process 0 only. The rate and the ETA count train steps only: the first step (which
compiles the train step) and every pause the loop marks (`excluding`: evaluation, samples,
checkpoints, and the compiles inside them) are left out, so the ETA does not jump when an
evaluation compiles. Metric lines stay under `MAX_WIDTH` characters and show a few
metrics (`CONSOLE_METRICS`); every metric goes to TensorBoard and `metrics.jsonl`.
"""

from __future__ import annotations

import contextlib
import logging as py_logging
import math
import sys
import time
from collections.abc import Callable, Mapping

import jax
from absl import logging

MAX_WIDTH = 120
# The metrics worth a glance, in order of preference; at most `MAX_SHOWN` of them are shown.
CONSOLE_METRICS = (
    "loss",
    "total_loss",
    "g_loss",
    "rec_loss",
    "mel_l1",
    "mse",
    "kld",
    "accuracy",
    "disc_loss",
    "d_loss",
    "perplexity",
    "fid",
    "mkl",
    "isc",
)
MAX_SHOWN = 4


def format_seconds(seconds: float) -> str:
    """`75.2` -> `1m15s`; `3725` -> `1h02m`; NaN -> `?`."""
    if not math.isfinite(seconds):
        return "?"
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def console_metrics(metrics: Mapping[str, float], limit: int = MAX_SHOWN) -> str:
    """A few of `metrics` (keys may carry a `train/` prefix) as `k=v` pairs."""
    short = {k.split("/")[-1]: v for k, v in metrics.items() if k != "step"}
    picked = [k for k in CONSOLE_METRICS if k in short][:limit] or sorted(short)[:limit]
    return "  ".join(f"{k}={short[k]:.4g}" for k in picked)


class _ClearBar(py_logging.Filter):
    """Clears the progress bar before a log record is written, so lines never mix."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def filter(self, record) -> bool:
        self.bar.clear()
        return True


class Progress:
    """Steps done, steps/s and the ETA of a training run (module docstring).

    Args:
      total_steps: the run's last step.
      start_step: the step the run starts from (0, or the restored step).
      enabled: print anything (default: on process 0 only).
      stream: where the bar goes (default stderr); a terminal gets a tqdm bar, anything
        else one log line per `log` call.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        *,
        enabled: bool | None = None,
        stream=None,
    ):
        self.total = total_steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._s0, self._t0, self._paused = start_step, time.perf_counter(), 0.0
        self._bar = None
        self._filter = None
        self._seen: set[str] = set()
        self._compile_t0: float | None = None

    # ---------------------------------------------------------------------- timing
    def compiling(self, what: str = "the train step"):
        """Says that the next call compiles (before the first step); `reset` ends it."""
        self._compile_t0 = time.perf_counter()
        if self.enabled:
            logging.info("compiling %s (the first step; the later ones reuse it)", what)

    def reset(self, step: int):
        """Restarts the rate window at `step` (after the first, compiling, step)."""
        if self._compile_t0 is not None and self.enabled:
            logging.info("compiled in %.1f s; training", time.perf_counter() - self._compile_t0)
        self._compile_t0 = None
        self._s0, self._t0, self._paused = step, time.perf_counter(), 0.0
        if self.enabled and self.tty and self._bar is None and step < self.total:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=step,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
                desc="training",
            )
            handler = logging.get_absl_handler()
            self._filter = _ClearBar(self._bar)
            handler.addFilter(self._filter)

    def steps_per_sec(self, step: int) -> float:
        """Train steps per second since `reset`, pauses excluded."""
        dt = time.perf_counter() - self._t0 - self._paused
        return (step - self._s0) / dt if dt > 0 and step > self._s0 else 0.0

    def eta(self, step: int) -> float:
        """Seconds left at the current rate (NaN before the rate is known)."""
        rate = self.steps_per_sec(step)
        return (self.total - step) / rate if rate > 0 else float("nan")

    @contextlib.contextmanager
    def paused(self, label: str, first: str = ""):
        """Time spent inside is left out of the rate; the bar says what is happening.

        Without a bar, the first pause of each kind is announced as `label` + `first`
        (e.g. what it compiles), so a long first pause is explained.
        """
        t0 = time.perf_counter()
        if self._bar is not None:
            self._bar.set_description_str(label)
        elif self.enabled and label not in self._seen:
            logging.info("%s%s", label, first)
        self._seen.add(label)
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t0
            if self._bar is not None:
                self._bar.set_description_str("training")

    def excluding(self, label: str, fn: Callable, first: str = "") -> Callable:
        """`fn` whose calls count as a pause named `label` (`paused`)."""

        def wrapped(*args, **kwargs):
            with self.paused(label, first):
                return fn(*args, **kwargs)

        return wrapped

    # ---------------------------------------------------------------------- output
    def update(self, step: int):
        """Moves the bar to `step` (a terminal only; cheap, no device sync)."""
        if self._bar is not None:
            self._bar.n = step
            rate = self.steps_per_sec(step)
            self._bar.set_postfix_str(
                f"{rate:.2f} steps/s  eta {format_seconds(self.eta(step))}  {self._shown}",
                refresh=True,
            )

    _shown = ""

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        """`step 40/100  2.10 steps/s  eta 29s  loss=...`, at most `MAX_WIDTH` characters."""
        rate = self.steps_per_sec(step)
        head = f"step {step}/{self.total}  {rate:.2f} steps/s  eta {format_seconds(self.eta(step))}"
        text = f"{head}  {console_metrics(metrics)}".rstrip()
        return text if len(text) <= MAX_WIDTH else text[: MAX_WIDTH - 3].rstrip() + "..."

    def log(self, step: int, metrics: Mapping[str, float]):
        """Shows the metrics of a log step: in the bar's tail, or as one line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._shown = console_metrics(metrics, limit=3)
            self.update(step)
        else:
            logging.info("%s", self.line(step, metrics))

    def close(self):
        if self._bar is not None:
            self._bar.close()
            logging.get_absl_handler().removeFilter(self._filter)
            self._bar = None
