"""The generic training loop every avjax model family runs through.

Mesh -> abstract state -> sharded init or restore -> jitted step (donated state) ->
periodic logging, evaluation, samples and checkpoints. What is model-specific lives in
a `Task` (see `avjax.train.task`); input iterators come from the caller, so the
library never depends on a particular input pipeline.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from avjax.train import checkpoint as ckpt_lib
from avjax.train import sharding as shd
from avjax.train import writer as writer_lib
from avjax.train.task import Task


def _to_json(config) -> str:
    return config.to_json(indent=2) if hasattr(config, "to_json") else json.dumps(config, indent=2)


def _check_finite(metrics: dict[str, float], step: int):
    for name, value in sorted(metrics.items()):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite metric {name}={value} at step {step}; stopping (the last checkpoint "
                "is untouched: lower the learning rate or check the input data)"
            )


def _mean_metrics(batches: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([b[k] for b in batches])) for k in batches[0]}


def train(
    config,
    workdir: str | pathlib.Path,
    task: Task,
    train_iter: Iterator[dict],
    eval_iter_fn: Callable[[], Iterator[dict]] | None = None,
) -> dict:
    """Trains `task` until `config.train.num_steps`, resuming from `workdir` if possible.

    Args:
      config: the experiment ConfigDict; reads `seed`, `mesh`, `train.*`.
      workdir: run directory (config.json, checkpoints/, tensorboard/, samples/, eval/).
      task: the model family's init / train_step / eval_step / samples.
      train_iter: checkpointable Grain iterator of process-local train batches.
      eval_iter_fn: returns a fresh finite iterator of process-local eval batches.

    Returns:
      The last logged train metrics (host floats), plus `step`.
    """
    workdir = pathlib.Path(workdir)
    tc = config.train
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(_to_json(config))

    # Mesh and state shardings.
    mesh = shd.make_mesh(config.mesh)
    logging.info(
        "mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count()
    )
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(task.init, rng)
    state_sh = shd.state_shardings(abstract, mesh, min_size=tc.get("fsdp_min_size", 2**18))
    batch_sh = shd.batch_sharding(mesh)
    repl = shd.replicated(mesh)

    # Restore or initialise (sharded from the start).
    ckpt = ckpt_lib.Checkpointer(
        workdir / "checkpoints", every=tc.checkpoint_every, keep=tc.keep_checkpoints
    )
    restored = ckpt.restore_latest(ckpt_lib.abstract_with_shardings(abstract, state_sh), train_iter)
    if restored is None:
        state = jax.jit(task.init, out_shardings=state_sh)(rng)
        start = 0
        logging.info("initialised a new run in %s", workdir)
    else:
        state, start = restored
        logging.info("resumed from step %d of %s", start, ckpt.directory)

    writer = writer_lib.MetricWriter(workdir)
    if start == 0:
        overview = writer_lib.parameter_overview(task.trainable_params(abstract))
        writer.text(0, "config", "```\n" + _to_json(config) + "\n```")
        writer.text(0, "parameters", overview)
        if is_main:
            (workdir / "parameters.md").write_text(overview + "\n")
        logging.info(
            "trainable parameters: %s",
            f"{writer_lib.count_params(task.trainable_params(abstract)):,}",
        )

    train_step = jax.jit(
        task.train_step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    eval_step = jax.jit(task.eval_step, in_shardings=(state_sh, batch_sh), out_shardings=repl)

    def next_batch():
        return shd.global_batch(next(train_iter), mesh)

    progress = writer_lib.Progress(tc.num_steps, start)
    last: dict = {"step": start}
    sample_batch = None
    try:
        for step in range(start + 1, tc.num_steps + 1):
            batch = next_batch()
            if sample_batch is None:
                sample_batch = batch
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, batch)
            if step == start + 1:
                progress.reset(step)
            if step % tc.log_every == 0 or step == tc.num_steps:
                host = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step)
                host["train/steps_per_sec"] = progress.steps_per_sec(step)
                writer.scalars(step, host)
                progress.log(step, host)
                last = {"step": step, **host}
            if (
                eval_iter_fn is not None
                and tc.eval_every
                and (step % tc.eval_every == 0 or step == tc.num_steps)
            ):
                results = evaluate(eval_step, state, eval_iter_fn(), mesh, tc.get("eval_batches"))
                writer.scalars(step, {f"eval/{k}": v for k, v in results.items()})
                logging.info("eval at step %d: %s", step, results)
                last.update({f"eval/{k}": v for k, v in results.items()})
            if tc.sample_every and (step % tc.sample_every == 0 or step == tc.num_steps):
                task.write_samples(
                    state, sample_batch, writer, step, workdir / "samples" / str(step)
                )
            ckpt.maybe_save(step, state, train_iter, force=step == tc.num_steps)
    finally:
        ckpt.close()
        writer.close()
    return last


def evaluate(eval_step, state, eval_iter, mesh, max_batches: int | None = None) -> dict[str, float]:
    """Means of per-batch eval metrics over (at most `max_batches` of) `eval_iter`."""
    results = []
    for i, local in enumerate(eval_iter):
        if max_batches and i >= max_batches:
            break
        results.append(jax.device_get(eval_step(state, shd.global_batch(local, mesh))))
    if not results:
        raise ValueError(
            "the eval split produced no full batch; lower config.data.global_batch_size"
        )
    return _mean_metrics(results)
