"""The generic training loop every avjax model family runs through.

Mesh -> abstract state -> sharded init or restore -> jitted step (donated state) ->
periodic logging, evaluation, checkpoints and samples. What is model-specific lives in
a `Task` (see `avjax.train.task`); input iterators come from the caller, so the
library never depends on a particular input pipeline. Besides the task's `eval_step`
(`train.eval_every`), the evaluators a config declares in `config.evals` (`avjax.evals`,
big_vision style) run on the eval split every `config.evals.<name>.every` steps.

The workdir is a local folder or any URI Orbax and TensorBoard can write (`gs://` on TPU
VMs; `avjax.paths`). What a user has is never lost: a workdir holding another config is
refused before anything is written, one trainer at a time holds a local workdir (an
`flock` the kernel drops when the process dies, even by kill -9; remote workdirs have no
lock), the state is checked finite before every save,
a checkpoint is written before samples (whose failures only warn), and SIGTERM / SIGINT
(how SLURM and preemptible TPU VMs stop jobs) save the current step and return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
from absl import logging

from avjax import evals as evals_lib
from avjax import multihost, paths
from avjax.checkpoints import abstract_with_shardings
from avjax.errors import UserError
from avjax.train import checkpoint as ckpt_lib
from avjax.train import progress as progress_lib
from avjax.train import sharding as shd
from avjax.train import writer as writer_lib
from avjax.train.task import Task

# Config fields a resumed run may change without --allow_config_change: how long it runs
# and how often it logs, evaluates, writes samples and saves. Anything else (model, data,
# optimiser, seed) would silently mix two experiments in one workdir.
RESUMABLE_FIELDS = frozenset(
    {
        "data.dir",  # the same dataset, moved (or given to a converted run)
        "train.num_steps",
        "train.num_epochs",
        "train.steps_per_epoch",  # derived from the data at every start unless set
        "train.log_every",
        "train.eval_every",
        "train.eval_batches",
        "train.sample_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
    }
)
# ... and anything under `evals` (which evaluators run, how often, on how many clips).
RESUMABLE_PREFIXES = ("evals.",)
LOCK_FILE = "train.lock"
ABSENT = "<absent>"  # a field one of two compared configs does not have


def _resumable(field: str) -> bool:
    return field in RESUMABLE_FIELDS or field.startswith(RESUMABLE_PREFIXES)


def _to_json(config) -> str:
    return config.to_json(indent=2) if hasattr(config, "to_json") else json.dumps(config, indent=2)


def printable_path(path) -> str:
    """`path` as text that prints anywhere: undecodable bytes shown as `\\xNN`."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted fields whose values differ between two config dicts: `{field: (old, new)}`."""
    a, b = _flatten(old), _flatten(new)
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(set(a) | set(b))
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def check_workdir(config, workdir, allow_config_change: bool = False) -> bool:
    """Refuses, before anything is written, a workdir this run must not use.

    Raises `UserError` for a path that is not valid UTF-8 (Orbax's TensorStore cannot
    write to it) and for a workdir whose `config.json` differs from `config` in fields
    outside `RESUMABLE_FIELDS` / `RESUMABLE_PREFIXES`, naming them (old -> new). With
    `allow_config_change` the differences are only logged. Fields the old config lacks
    (added by a later avjax, whose defaults keep the old behaviour) are logged, not refused.

    Returns:
      Whether `config.json` needs (re)writing.
    """
    workdir = paths.as_path(workdir)
    try:
        str(paths.absolute(workdir)).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"workdir {printable_path(paths.absolute(workdir))} is not a valid UTF-8 path (Orbax "
            "checkpoints cannot be written there); choose a --workdir with a UTF-8 name"
        ) from None
    old_file = workdir / "config.json"
    if not old_file.is_file():
        return True
    new = json.loads(_to_json(config))
    try:
        old = json.loads(old_file.read_text())
    except (ValueError, OSError) as e:
        if not allow_config_change:
            raise UserError(
                f"{old_file} is unreadable ({type(e).__name__}); pass --allow_config_change "
                "to replace it with this run's config"
            ) from None
        old = {}
    diffs = {k: v for k, v in config_differences(old, new).items() if not _resumable(k)}
    added = {k: b for k, (a, b) in diffs.items() if a == ABSENT}
    if added:
        logging.warning(
            "config fields new since %s was made (their defaults): %s",
            printable_path(workdir),
            "; ".join(f"{k}={b!r}" for k, b in added.items()),
        )
        diffs = {k: v for k, v in diffs.items() if k not in added}
    if diffs and not allow_config_change:
        shown = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diffs.items())[:8]]
        more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
        raise UserError(
            f"{printable_path(workdir)} holds a run with a different config ({'; '.join(shown)}"
            f"{more}); use another --workdir, or --allow_config_change to change it deliberately"
        )
    if diffs:
        logging.warning(
            "config of %s changed deliberately (--allow_config_change): %s",
            printable_path(workdir),
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()),
        )
    return old != new


@contextlib.contextmanager
def workdir_lock(workdir: paths.PathLike):
    """Holds `WORKDIR/train.lock` (flock) for one trainer; a second gets `UserError`.

    The kernel releases an flock when its process dies, kill -9 included, so a killed run
    never leaves the workdir locked. The file keeps the holder's PID for the message.
    Local workdirs only: object stores (`gs://`) have no locks, so a remote workdir is not
    guarded against a second trainer (logged once).
    """
    if not paths.is_local(workdir):
        logging.info("%s is not local: not guarding it against a second trainer", workdir)
        yield
        return
    path = os.path.join(os.fspath(workdir), LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"another trainer (pid {holder}) is running in {printable_path(workdir)}; "
                "wait for it to finish or stop it, or use another --workdir"
            ) from None
        except OSError as e:  # a filesystem without flock (some network/FUSE mounts)
            logging.warning("cannot lock %s (%s); not guarding against a second trainer", path, e)
            yield
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class _StopSignals:
    """SIGTERM and SIGINT set a flag that the loop reads at the next step boundary.

    Single process only: on several processes JAX's preemption sync manager catches
    SIGTERM and `CheckpointManager.reached_preemption` makes all processes agree on the
    step. A second signal stops at once (the default action).
    """

    def __init__(self, multiprocess: bool):
        self.received: str | None = None
        self._old = {}
        if multiprocess or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        logging.warning("%s received: saving a checkpoint at the end of this step", self.received)

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


def _check_finite(metrics: dict[str, float], step: int, last_saved: int | None = None):
    for name, value in sorted(metrics.items()):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite metric {name}={value} at step {step}; stopping "
                f"({_saved_text(last_saved)}): lower the learning rate or check the input data"
            )


def _saved_text(last_saved: int | None) -> str:
    if last_saved is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint, step {last_saved}, is untouched"


def _leaf_finite(state):
    """Per floating leaf: all finite (one bool each; a cheap on-device reduction)."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(state)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def _check_state_finite(finite_fn, state, step: int, last_saved: int | None):
    ok = np.asarray(jax.device_get(finite_fn(state)))
    if ok.all():
        return
    names = [
        jax.tree_util.keystr(k)
        for k, x in jax.tree_util.tree_leaves_with_path(state)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    bad = [n for n, good in zip(names, ok) if not good]
    raise FloatingPointError(
        f"non-finite values in the train state at step {step} ({bad[0]}"
        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); not saved "
        f"({_saved_text(last_saved)}): lower the learning rate or check the input data"
    )


def _mean_metrics(batches: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([b[k] for b in batches])) for k in batches[0]}


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The sharded train step of a config and task: what `train` runs, what
    `launch/compile_check.py` compiles.

    `abstract_state`: ShapeDtypeStructs of the state (no shardings; `state_shardings` has
    them); `init`: rng -> state, `task.init` as traced once for `abstract_state` (jit it
    with `out_shardings=state_shardings`; Flax is not traced again); `step`:
    `jax.jit(task.train_step)` with explicit shardings and the state donated.
    """

    mesh: jax.sharding.Mesh
    abstract_state: Any
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    replicated: jax.sharding.NamedSharding
    init: Callable[[jax.Array], Any]
    step: Any


def build_train_step(config, task: Task, devices=None) -> TrainStep:
    """The mesh (`config.mesh` over `devices`, default all), state shardings (FSDP over
    `config.train.fsdp_min_size`) and the jitted step, built abstractly (nothing allocated)."""
    mesh = shd.make_mesh(config.mesh, devices)
    # One trace of the model's init serves both the shapes and the initialisation (a
    # second trace through Flax costs about as much as the first: ~1 s for a tiny model).
    traced = jax.jit(task.init).trace(jax.random.PRNGKey(config.seed))
    abstract = traced.out_info

    def init(rng):
        return jax.tree.unflatten(
            traced.out_tree, jax_core.jaxpr_as_fun(traced.jaxpr)(*jax.tree.leaves(rng))
        )

    state_sh = shd.state_shardings(abstract, mesh, min_size=config.train.fsdp_min_size)
    batch_sh = shd.batch_sharding(mesh)
    repl = shd.replicated(mesh)
    step = jax.jit(
        task.train_step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    return TrainStep(mesh, abstract, state_sh, batch_sh, repl, init, step)


def compile_then_wait(jitted, name: str):
    """`jitted`, compiled at its first call with each argument shape, then run once every
    process has compiled that program.

    XLA:CPU's cross-process collectives (Gloo) give up when processes reach a program's first
    collective more than 30 s apart ("GetKeyValue() timed out", fixed in XLA; neither
    `--initialization_timeout` nor `--xla_cpu_collective_timeout_seconds` changes it), as
    when one process compiles faster than another (a loaded machine, a warm compilation
    cache). Every process must call with the same sequence of shapes (global batches do).
    """
    compiled: dict = {}

    def call(*args):
        key = (
            jax.tree.structure(args),
            tuple((np.shape(x), np.result_type(x)) for x in jax.tree.leaves(args)),
        )
        exe = compiled.get(key)
        if exe is None:
            exe = compiled[key] = jitted.lower(*args).compile()
            multihost.wait_for_processes(f"avjax_{name}_compiled_{len(compiled)}")
        return exe(*args)

    return call


def train(
    config,
    workdir: paths.PathLike,
    task: Task,
    train_iter: Iterator[dict],
    eval_iter_fn: Callable[[], Iterator[dict]] | None = None,
    *,
    allow_config_change: bool = False,
) -> dict:
    """Trains `task` until `config.train.num_steps`, resuming from `workdir` if possible.

    Args:
      config: the experiment ConfigDict; reads `seed`, `mesh`, `train.*`.
      workdir: run directory (config.json, checkpoints/, tensorboard/, samples/, eval/): a
        local path or a URI such as `gs://bucket/run` (`avjax.paths`).
      task: the model family's init / train_step / eval_step / samples.
      train_iter: checkpointable Grain iterator of process-local train batches.
      eval_iter_fn: returns a fresh finite iterator of process-local eval batches (the
        task's `eval_step` and the `config.evals` evaluators read them).
      allow_config_change: resume a workdir whose config.json differs from `config`
        outside `RESUMABLE_FIELDS` (and rewrite it); refused with `UserError` otherwise.

    Returns:
      The last logged train metrics (host floats), plus `step`; plus `stopped_by`
      (`"SIGTERM"` / `"SIGINT"`) when a signal stopped the run after saving that step.

    Raises:
      UserError: a bad `config.evals` section, another config's workdir, a non-UTF-8
        workdir, a (local) workdir another trainer holds, a full (local) disk while saving.
      FloatingPointError: a non-finite metric or train state; nothing non-finite is saved.
    """
    workdir = paths.as_path(workdir)
    is_main = jax.process_index() == 0
    evaluators = evals_lib.loop_evaluators(config, task)  # config mistakes stop here
    if evaluators and eval_iter_fn is None:
        raise UserError(
            f"config.evals ({', '.join(evaluators)}) needs an eval split: "
            "set config.data.eval_split"
        )
    write_config = check_workdir(config, workdir, allow_config_change)
    with contextlib.ExitStack() as stack:
        if is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(workdir_lock(workdir))
            if write_config:
                # atomic: the other processes read it (check_workdir) meanwhile
                paths.write_text_atomic(workdir / "config.json", _to_json(config))
        return _train_locked(config, workdir, task, train_iter, eval_iter_fn, evaluators)


def _train_locked(config, workdir, task, train_iter, eval_iter_fn, evaluators) -> dict:
    tc = config.train
    is_main = jax.process_index() == 0

    # Mesh, state shardings and the jitted step.
    built = build_train_step(config, task)
    mesh, abstract, state_sh = built.mesh, built.abstract_state, built.state_shardings
    batch_sh, repl = built.batch_sharding, built.replicated
    logging.info(
        "mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count()
    )
    rng = jax.random.PRNGKey(config.seed)

    # Restore or initialise (sharded from the start).
    ckpt = ckpt_lib.Checkpointer(
        workdir / "checkpoints", every=tc.checkpoint_every, keep=tc.keep_checkpoints
    )
    try:
        restored = ckpt.restore_latest(abstract_with_shardings(abstract, state_sh), train_iter)
    except BaseException:
        ckpt.close()  # removes its log filter and excepthook
        raise
    if restored is None:
        state = jax.jit(built.init, out_shardings=state_sh)(rng)
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

    train_step = built.step
    eval_step = jax.jit(task.eval_step, in_shardings=(state_sh, batch_sh), out_shardings=repl)
    finite_fn = jax.jit(_leaf_finite, out_shardings=repl)
    multiprocess = jax.process_count() > 1
    if multiprocess:  # every cross-process program starts once all processes compiled it
        train_step = compile_then_wait(train_step, "train_step")
        eval_step = compile_then_wait(eval_step, "eval_step")
        finite_fn = compile_then_wait(finite_fn, "finite")

    def next_batch():
        return shd.global_batch(next(train_iter), mesh)

    progress = progress_lib.Progress(tc.num_steps, start)
    # Pauses the ETA leaves out; the first of each names what it compiles.
    evaluate_ = progress.excluding("evaluating", evaluate, " (compiling the eval step)")
    run_evaluator_ = progress.excluding("running config.evals", run_evaluator)
    save_ = progress.excluding("saving a checkpoint", ckpt.maybe_save)
    write_samples = progress.excluding(
        "writing samples", task.write_samples, " (compiling the sampler, then drawing)"
    )
    last: dict = {"step": start}
    sample_batch = None
    signals = _StopSignals(multiprocess)
    try:
        for step in range(start + 1, tc.num_steps + 1):
            batch = next_batch()
            if sample_batch is None:
                sample_batch = batch
            if step == start + 1:
                progress.compiling("the train step")
            # No implicit host<->device copies inside the step (an accidental round trip
            # is an error, as in big_vision); the batch arrives as global arrays.
            with (
                jax.profiler.StepTraceAnnotation("train", step_num=step),
                jax.transfer_guard("disallow"),
            ):
                state, metrics = train_step(state, batch)
            if step == start + 1:
                progress.reset(step)
            progress.update(step)
            ckpt.check()  # a failed background save is reported one step later
            if step % tc.log_every == 0 or step == tc.num_steps:
                host = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step, ckpt.latest())
                host["train/steps_per_sec"] = progress.steps_per_sec(step)
                writer.scalars(step, host)
                progress.log(step, host)
                last = {"step": step, **host}
            if (
                eval_iter_fn is not None
                and tc.eval_every
                and (step % tc.eval_every == 0 or step == tc.num_steps)
            ):
                results = evaluate_(eval_step, state, eval_iter_fn(), mesh, tc.eval_batches)
                writer.scalars(step, {f"eval/{k}": v for k, v in results.items()})
                logging.info("eval at step %d: %s", step, progress_lib.console_metrics(results))
                last.update({f"eval/{k}": v for k, v in results.items()})
            for name, (every, run_eval) in evaluators.items():
                if step % every == 0 or step == tc.num_steps:
                    results = run_evaluator_(run_eval, state, eval_iter_fn, step, mesh)
                    results = {f"evals/{name}/{k}": v for k, v in results.items()}
                    writer.scalars(step, results)
                    logging.info(
                        "evals/%s at step %d: %s", name, step, progress_lib.console_metrics(results)
                    )
                    last.update(results)
            if multiprocess:
                stop = "SIGTERM" if ckpt.reached_preemption(step) else None
            else:
                stop = signals.received
            force = step == tc.num_steps or stop is not None
            if ckpt.due(step, force=force):
                _check_state_finite(finite_fn, state, step, ckpt.latest())
                save_(step, state, train_iter, force=force)
            if stop is not None:
                ckpt.wait()
                last = {**last, "step": step, "stopped_by": stop}
                logging.info("stopped by %s at step %d; checkpoint saved", stop, step)
                break
            if tc.sample_every and (step % tc.sample_every == 0 or step == tc.num_steps):
                try:
                    with paths.local_dir(workdir / "samples" / str(step)) as out_dir:
                        write_samples(state, sample_batch, writer, step, out_dir)
                except (OSError, UnicodeError) as e:
                    logging.warning(
                        "writing samples of step %d failed (%s: %s); training continues",
                        step,
                        type(e).__name__,
                        printable_path(e),
                    )
        ckpt.wait()
    finally:
        signals.restore()
        progress.close()
        ckpt.close()
        writer.close()
    return last


def run_evaluator(run_eval, state, eval_iter_fn, step: int, mesh) -> dict:
    """One `config.evals` evaluator over the eval split: its scalars (the same on every process).

    Every process runs it: the evaluator's jitted computations read the sharded train state
    and the global eval batches (each process contributes its rows), and gather their
    per-clip results to every host; process 0's writer logs them.
    """
    batches = (shd.global_batch(local, mesh) for local in eval_iter_fn())
    return {k: float(v) for k, v in run_eval(state, batches, step).items()}


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
