"""What a model family gives the generic loop: pure init / train_step / eval_step.

`init`, `train_step` and `eval_step` are pure functions of arrays (the loop jits them
with shardings); `write_samples` runs on the host and writes files people open.

Several processes: the batch is global (process p holds rows [p*B, (p+1)*B), the same
examples in the same order on any process count), so randomness a step draws over the
batch's global shape from one key (dropout, noise) is the same on every device layout.
`write_samples` is called on every process: computations over the state run on all of
them (`avjax.multihost` gathers the results) and process 0 writes.
"""

from __future__ import annotations

import pathlib
from typing import Any, Protocol

State = Any
Batch = dict[str, Any]


class Task(Protocol):
    def init(self, rng) -> State:
        """Builds the full train state (params, optimizer states, step, rng) from a key."""

    def train_step(self, state: State, batch: Batch) -> tuple[State, dict]:
        """One update of every optimizer; returns the new state and scalar metrics."""

    def eval_step(self, state: State, batch: Batch) -> dict:
        """Scalar metrics of one eval batch (no updates, deterministic)."""

    def trainable_params(self, state: State) -> Any:
        """The parameter subtree(s) the optimizers update, for the overview."""

    def write_samples(self, state: State, batch: Batch, writer, step: int, out_dir: pathlib.Path):
        """Writes samples (TensorBoard and files under `out_dir`) for `batch`."""
