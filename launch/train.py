"""Trains an avjax experiment.

  python launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir workdirs/tiny
  python launch/train.py --config configs/specvqgan_vggsound.py --workdir W --config.data.dir=D

Runs resume automatically from the latest good checkpoint in --workdir; a workdir made by
another config is refused (--allow_config_change to change it deliberately). SIGTERM or
Ctrl-C saves the current step and exits with 128 + the signal number (143, 130), as
SLURM and preemptible VMs expect; a non-finite loss or state exits 1 with one line and
nothing non-finite saved.

Several processes (a TPU slice, SLURM nodes, hosts you start yourself): pass --multihost on
every process. The coordinator address, process count and id come from --coordinator_address
/ --num_processes / --process_id, else $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES /
$JAX_PROCESS_ID, else the TPU VM, SLURM or Open MPI environment (README "Multi-host / pod
training"); --workdir must then be storage every host sees (gs:// on TPU VMs).
"""

import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/, data_pipelines/

import jax
from absl import flags, logging
from ml_collections import config_flags

from avjax import multihost, paths
from avjax.train.validate import check_config
from launch import common

config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (default: workdirs/<config name>)")
common.define_multihost_flags()
flags.DEFINE_bool(
    "allow_config_change", False, "resume a workdir whose config.json differs (rewrites it)"
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    common.setup_jax(multihost=FLAGS.multihost)
    multihost.quiet_other_processes()  # progress and info lines from process 0 only
    config = FLAGS.config
    workdir = paths.as_path(FLAGS.workdir or common.default_workdir(sys.argv))  # or gs://...
    check_config(config, jax.device_count(), jax.process_count())  # before any data or compile
    # Imported once the flags and config are known good: a mistake there fails in 0.7 s,
    # not after 1.7 s of importing the models, Orbax, Grain and TFDS.
    from avjax.models.specvqgan.code_encoder import CodeEncoder
    from avjax.train import loop, progress, schedule
    from avjax.train.tasks import make_task
    from data_pipelines.inputs import ModelFns, make_inputs

    loop.check_workdir(config, workdir, FLAGS.allow_config_change)  # before any work
    inputs = make_inputs(config, ModelFns(code_encoder=CodeEncoder))  # codes on first use
    schedule.resolve_steps(config, inputs.num_train_examples)  # epochs -> steps
    task = make_task(config, inputs.stats)
    try:
        last = loop.train(
            config,
            workdir,
            task,
            inputs.train_iter,
            inputs.eval_iter_fn,
            allow_config_change=FLAGS.allow_config_change,
        )
    except FloatingPointError as e:  # divergence: one line, not a traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    if "stopped_by" in last:
        print(
            f"stopped by {last['stopped_by']} at step {last['step']}; checkpoint saved, "
            "resume with the same command",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + signal.Signals[last["stopped_by"]].value)
    if jax.process_index() == 0:
        metrics = {k: v for k, v in last.items() if k.startswith("train/")}
        logging.info(
            "final train metrics: %s (all of them: metrics.jsonl)",
            progress.console_metrics(metrics),
        )
        shown = workdir.resolve() if paths.is_local(workdir) else workdir
        print(f"run written to {shown} (step {last['step']})", flush=True)


if __name__ == "__main__":
    common.run(main)
