"""A launcher-sized probe of `--multihost`: initialises jax.distributed like launch/train.py.

Run once per process (tests/test_multihost.py starts two over localhost). Prints one JSON
line: this process's index, the process and device counts, where the arguments came from,
and the sum over all processes of a global array (each device holds its position in the
mesh, so 0 + 1 + ... + 7 = 28 on 8 devices).
"""

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from launch import common

common.define_multihost_flags()
flags.DEFINE_float("sleep_before_collective", 0.0, "seconds (to test a late process)")
flags.DEFINE_bool("barrier", False, "wait for every process before the first collective")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    args = common.setup_jax(multihost=FLAGS.multihost)
    time.sleep(FLAGS.sleep_before_collective)
    if FLAGS.barrier:
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier("probe", 120_000)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), devices=jax.devices())
    sharding = NamedSharding(mesh, P("data"))
    position = {d: i for i, d in enumerate(mesh.devices.flat)}
    local = np.array([position[d] for d in mesh.local_devices], np.float32)
    ids = jax.make_array_from_process_local_data(sharding, local)
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))(ids)
    print(
        json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "local_device_count": jax.local_device_count(),
                "source": args.source,
                "sum_of_positions": float(total),
            }
        ),
        flush=True,
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    common.run(main)
