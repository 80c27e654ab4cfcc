"""Trains an avjax experiment.

  python launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir workdirs/tiny
  python launch/train.py --config configs/specvqgan_vggsound.py --workdir W --config.data.dir=D

Runs resume automatically from the latest good checkpoint in --workdir. On a multi-host
slice pass --multihost (calls `jax.distributed.initialize()` before anything else).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/, data_pipelines/

import jax
from absl import flags, logging
from ml_collections import config_flags

from avjax.models.specvqgan.code_encoder import CodeEncoder
from avjax.train import loop
from avjax.train.tasks import make_task
from avjax.train.validate import check_config
from data_pipelines.inputs import ModelFns, make_inputs
from launch import common

config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (default: workdirs/<config name>)")
flags.DEFINE_bool("multihost", False, "initialise jax.distributed (multi-host GPU/TPU)")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    common.setup_jax(multihost=FLAGS.multihost)
    config = FLAGS.config
    workdir = pathlib.Path(FLAGS.workdir or common.default_workdir(sys.argv))
    check_config(config, jax.device_count(), jax.process_count())  # before any data or compile
    inputs = make_inputs(config, ModelFns(code_encoder=CodeEncoder))  # codes on first use
    task = make_task(config, inputs.stats)
    last = loop.train(config, workdir, task, inputs.train_iter, inputs.eval_iter_fn)
    if jax.process_index() == 0:
        logging.info("final metrics: %s", last)
        print(f"run written to {workdir.resolve()} (step {last['step']})", flush=True)


if __name__ == "__main__":
    common.run(main)
