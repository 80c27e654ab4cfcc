"""`load_run`: the one way to get a trained (or imported) run's config and state back.

A run is a workdir with `config.json` and `checkpoints/<step>/` (see the README's workdir
layout), local or at a URI (`gs://bucket/run`, `avjax.paths`). Models, vocoders, metrics
and evaluators load runs through here, so nothing below the trainer imports `avjax.train`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections

from avjax import checkpoints, paths
from avjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Run:
    """A restored run: its config (as trained), its state (`params`, ...) and step."""

    workdir: paths.Path
    config: ml_collections.ConfigDict
    state: dict[str, Any]
    step: int

    @property
    def params(self) -> dict:
        return self.state["params"]


# Fields configs gained after runs were written: task -> {dotted field: the value that keeps
# the old behaviour}. `read_config` fills them in, so a run written before still loads.
ADDED_FIELDS = {"sound2sight": {"data.flow": False}}


def read_config(workdir: paths.PathLike, task: str | tuple[str, ...] | None = None):
    """A run's `config.json` as a ConfigDict, checked to be of `task` (one name or several).

    Raises:
      UserError naming the workdir: no `config.json`, unreadable JSON, or another task.
    """
    workdir = paths.as_path(workdir)
    path = workdir / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: is {workdir} an avjax run?")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable config ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(config).__name__}")
    wanted = (task,) if isinstance(task, str) else task
    if wanted and config.get("task") not in wanted:
        names = " or ".join(repr(t) for t in wanted)
        raise UserError(f"{workdir} is a {config.get('task')!r} run, not a {names} run")
    for field, value in ADDED_FIELDS.get(config.get("task"), {}).items():
        *parents, leaf = field.split(".")
        node = config
        for name in parents:
            node = node.setdefault(name, {})
        node.setdefault(leaf, value)
    return ml_collections.ConfigDict(config)


def load_run(
    workdir: paths.PathLike,
    task: str | tuple[str, ...] | None = None,
    *,
    step: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Run:
    """Reads a run's config and restores its latest good (or the given) step.

    Args:
      workdir: the run directory.
      task: the expected `config.task` (e.g. "vqgan"), or None to accept any run.
      step: a specific checkpoint step; default the newest readable one.
      sharding: where the state goes (default one local device; see
        `avjax.checkpoints.restore_state`).

    Returns:
      `Run(workdir, config, state, step)`.

    Raises:
      UserError naming the workdir: not a run, the wrong task, or no readable step.
    """
    workdir = paths.as_path(workdir)
    config = read_config(workdir, task)
    state, restored_step = checkpoints.restore_state(workdir, step, sharding)
    return Run(workdir=workdir, config=config, state=state, step=restored_step)
