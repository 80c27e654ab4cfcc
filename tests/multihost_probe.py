"""A launcher-sized probe of `--multihost`: initialises jax.distributed like launch/train.py.

Run once per process (tests/test_multihost.py starts two over localhost). Prints one JSON
line: this process's index, the process and device counts, where the arguments came from,
and the sum over all processes of a global array (each device holds its position in the
mesh, so 0 + 1 + ... + 7 = 28 on 8 devices). With --train_workdir, also trains a one-vector
task through `avjax.train.loop.train` for 4 steps (w <- 0.9 w + mean(x), w0 = 0, step s
feeds x = s on every row) and reports its last loss, mean(w^2) = (0.9^3 + 0.9^2*2 + 0.9*3
+ 4)^2 = 9.049^2.
"""

import json
import pathlib
import sys
import time

import grain
import jax.numpy as jnp
import ml_collections

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from avjax import multihost
from avjax.train import loop
from configs import common as config_common
from launch import common

common.define_multihost_flags()
flags.DEFINE_float("sleep_before_collective", 0.0, "seconds (to test a late process)")
flags.DEFINE_bool("barrier", False, "wait for every process before the first collective")
flags.DEFINE_string("train_workdir", None, "also train a one-vector task there (4 steps)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    args = common.setup_jax(multihost=FLAGS.multihost)
    time.sleep(FLAGS.sleep_before_collective)
    if FLAGS.barrier:
        multihost.wait_for_processes("probe", timeout_s=120)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())
    sharding = NamedSharding(mesh, P("data"))
    position = {d: i for i, d in enumerate(mesh.devices.flat)}
    local = np.array([position[d] for d in mesh.local_devices], np.float32)
    ids = jax.make_array_from_process_local_data(sharding, local)
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(ids)
    result = {"sum_of_positions": float(total)}
    if FLAGS.train_workdir:
        result["last_loss"] = train(FLAGS.train_workdir)["train/loss"]
    print(
        json.dumps(
            {
                **result,
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "local_device_count": jax.local_device_count(),
                "source": args.source,
            }
        ),
        flush=True,
    )
    jax.distributed.shutdown()


class _Vector:
    """w <- 0.9 w + mean(x) on 64 floats, starting from zeros."""

    def init(self, rng):
        return {"w": jnp.zeros((64,)), "step": jnp.zeros((), jnp.int32)}

    def train_step(self, state, batch):
        w = state["w"] * 0.9 + jnp.mean(batch["x"])
        return {"w": w, "step": state["step"] + 1}, {"loss": jnp.mean(w**2)}

    def eval_step(self, state, batch):
        return {}

    def trainable_params(self, state):
        return {"w": state["w"]}

    def write_samples(self, state, batch, writer, step, out_dir):
        pass


def train(workdir: str) -> dict:
    c = ml_collections.ConfigDict({"seed": 0, "mesh": (("data", -1),)})
    c.train = config_common.train(
        4, log_every=1, checkpoint_every=2, eval_every=0, eval_batches=1, sample_every=0
    )
    rows = 8 // jax.process_count()
    local = grain.MapDataset.range(10**6).map(
        lambda i: {"x": np.full((rows, 1), i + 1, np.float32)}  # step s = i + 1: x = s
    )
    return loop.train(c, workdir, _Vector(), iter(local.to_iter_dataset()))


if __name__ == "__main__":
    common.run(main)
