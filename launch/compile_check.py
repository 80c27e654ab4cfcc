"""Compiles the real train step for a device topology you do not have (a dry run).

  python launch/compile_check.py --config configs/specvqgan_vggsound.py:tiny --topology cpu:8
  python launch/compile_check.py --config configs/specvqgan_vggsound.py --topology v5e-8x8 \\
      --config.dtype=bfloat16 --config.data.global_batch_size=64

Like MaxText's `train_compile.py`: the step `launch/train.py` would run (same mesh, state
shardings, batch sharding, donation) is lowered and compiled from abstract arrays, so
nothing is allocated and no data is read. It prints the per-device argument, output and
temporary memory (GiB), the FLOPs per step and whether the step fits the chip's memory;
exit status 0 when it fits, 1 with one `error:` line naming what does not fit or does not
divide (batch over the data axes and processes, mesh over the devices, the same checks
`launch/train.py` makes before anything else).

A config whose task reads another run that is not named compiles with a stand-in of its
shapes (MCAV's stage 2 without `--config.motion.workdir`: a zero MME; `make_task`'s
`dry_run`).

Topologies: `cpu:N` (N fake CPU devices), a TPU slice (`v5e-64` or `v5e-8x8`, `v4-32` or
`v4-2x2x4`, `v5p-128`, `v6e-16`; needs the `libtpu` wheel, `pip install libtpu`, and no
TPU), or `local` (the devices present, e.g. on a GPU machine). A paper-sized model takes
minutes to compile for a TPU slice on a CPU (the SpecVQGAN codebook and GPT: 15-17 min on
two cores).
"""

import contextlib
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/, data_pipelines/

import jax
from absl import flags
from ml_collections import config_flags

from avjax.checkpoints import abstract_with_shardings
from avjax.errors import UserError
from avjax.train import loop, schedule
from avjax.train.tasks import make_task
from avjax.train.validate import check_config
from data_pipelines.inputs import abstract_inputs
from launch import common

config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
flags.DEFINE_string(
    "topology", "cpu:8", "cpu:N | a TPU slice (v5e-64, v5e-8x8, v4-32, v5p-128, v6e-16) | local"
)
flags.DEFINE_float("hbm_gib", None, "memory per device in GiB (default: from the device kind)")
flags.DEFINE_integer(
    "steps_per_epoch", 1000, "stand-in for configs that count epochs (no dataset is opened)", 1
)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS

GIB = 2**30
# device_kind substring -> memory per device (GiB); the first match wins.
HBM_GIB = (
    ("TPU v4", 32),
    ("TPU v5 lite", 16),
    ("TPU v5e", 16),
    ("TPU v5p", 95),
    ("TPU v5", 95),  # libtpu names v5p chips "TPU v5"
    ("TPU v6 lite", 32),
    ("TPU v6e", 32),
    ("H200", 141),
    ("H100", 80),
    ("A100-SXM4-40GB", 40),
    ("A100-PCIE-40GB", 40),
    ("A100", 80),
)
# TPU generation -> (libtpu topology prefix, chip config, dimensions, TensorCores per chip
# in the slice name): v4-32 names 32 TensorCores = 16 megacore chips; v5e-64 names chips.
TPU_GENERATIONS = {
    "v4": ("v4", "megacore", 3, 2),
    "v5p": ("v5", "megacore", 3, 2),
    "v5e": ("v5e", "default", 2, 1),
    "v6e": ("v6e", "default", 2, 1),
}
# chips -> shape, for slice names given as a count
TPU_SHAPES = {
    2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"},
    3: {
        4: "2x2x1",
        8: "2x2x2",
        16: "2x2x4",
        32: "2x4x4",
        64: "4x4x4",
        128: "4x4x8",
        256: "4x8x8",
        512: "8x8x8",
        1024: "8x8x16",
        2048: "8x16x16",
        4096: "16x16x16",
    },
}


def tpu_topology(name: str) -> tuple[str, dict]:
    """`v5e-8x8` / `v5e:8x8` / `v5e-64` -> (libtpu topology name, get_topology_desc kwargs)."""
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)[-:](\d+(?:x\d+)*)", name)
    if m is None:
        raise UserError(
            f"--topology={name!r}: expected cpu:N, local, or a TPU slice such as v5e-64, "
            "v5e-8x8, v4-32, v4-2x2x4, v5p-128, v6e-16"
        )
    gen, size = m.groups()
    prefix, chip_config, ndim, cores = TPU_GENERATIONS[gen]
    if "x" in size:
        dims = [int(d) for d in size.split("x")]
        if len(dims) != ndim:
            raise UserError(f"--topology={name!r}: {gen} slices have {ndim} dimensions")
    else:
        chips = int(size) // cores
        if int(size) % cores or chips not in TPU_SHAPES[ndim]:
            known = ", ".join(f"{gen}-{c * cores}" for c in TPU_SHAPES[ndim])
            raise UserError(f"--topology={name!r}: unknown slice size; known: {known}")
        dims = [int(d) for d in TPU_SHAPES[ndim][chips].split("x")]
    if ndim == 2:  # v5e / v6e: a dimension of 16 chips closes into a ring
        wrap = (*(d == 16 for d in dims), False)
    else:  # v4 / v5p: full cubes of 4 x 4 x 4 and more are tori
        wrap = (all(d >= 4 for d in dims),) * 3
    kwargs = dict(
        chip_config_name=chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
        wrap=wrap,
    )
    return f"{prefix}:{'x'.join(map(str, dims))}", kwargs


def topology_devices(topology: str) -> list:
    """The devices to compile for (`--topology`)."""
    if topology.startswith("cpu:"):
        try:
            n = int(topology[4:])
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"--topology={topology!r}: expected cpu:N with N >= 1")
        with contextlib.suppress(Exception):  # fails once the CPU backend exists
            jax.config.update("jax_num_cpu_devices", n)
        devices = jax.devices("cpu")
        if len(devices) != n:
            raise UserError(
                f"--topology={topology}: the CPU backend already has {len(devices)} devices"
            )
        return devices
    if topology == "local":
        return jax.devices()
    name, kwargs = tpu_topology(topology)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise UserError(
            f"--topology={topology}: compiling for a TPU needs the libtpu wheel (pip install "
            "libtpu; no TPU needed); --topology=cpu:N works without it"
        ) from None
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(name, "tpu", **kwargs).devices)


def hbm_bytes(device_kind: str, platform: str) -> float | None:
    """Memory per device of `device_kind` (None: no limit, or unknown)."""
    if FLAGS.hbm_gib is not None:
        return FLAGS.hbm_gib * GIB
    if platform == "cpu":
        return None
    for key, gib in HBM_GIB:
        if key in device_kind:
            return gib * GIB
    return None


def main(argv):
    del argv
    common.setup_jax()
    config = FLAGS.config
    devices = topology_devices(FLAGS.topology)
    num_processes = len({d.process_index for d in devices})
    check_config(config, len(devices), num_processes)  # batch, mesh: as train.py does
    if config.train.steps_per_epoch is None:  # no dataset to count an epoch's batches
        config.train.steps_per_epoch = FLAGS.steps_per_epoch
    schedule.resolve_steps(config, 0)
    batch, stats = abstract_inputs(config)
    task = make_task(config, stats, dry_run=True)  # stand-ins for runs not named (MCAV)
    built = loop.build_train_step(config, task, devices)
    state = abstract_with_shardings(built.abstract_state, built.state_shardings)
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=built.batch_sharding)
        for k, v in batch.items()
    }
    kind, platform = devices[0].device_kind, devices[0].platform
    mesh = " x ".join(f"{k}={v}" for k, v in built.mesh.shape.items())
    print(f"compiling the {config.task} train step for {len(devices)} {kind} devices ({mesh})")
    compiled = built.step.lower(state, batch).compile()
    report(compiled, kind, platform, len(devices), num_processes)


def report(compiled, kind: str, platform: str, num_devices: int, num_processes: int):
    """Prints the per-device memory and FLOPs; exits 1 when the step does not fit."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float((cost or {}).get("flops", 0.0))  # per device: the SPMD-partitioned program
    total = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.generated_code_size_in_bytes
    )
    limit = hbm_bytes(kind, platform)
    rows = [
        ("arguments (state + batch)", mem.argument_size_in_bytes),
        ("outputs", mem.output_size_in_bytes),
        ("aliased (donated state)", -mem.alias_size_in_bytes),
        ("temporaries", mem.temp_size_in_bytes),
        ("code", mem.generated_code_size_in_bytes),
        ("total", total),
    ]
    print(f"per device ({num_devices} devices, {num_processes} processes):")
    for name, value in rows:
        print(f"  {name:<26} {value / GIB:9.3f} GiB  ({value:,} bytes)")
    print(f"  {'FLOPs per step':<26} {flops:9.3e} (x {num_devices} = {flops * num_devices:.3e})")
    if limit is None:
        print(f"fits: {kind} has no memory limit here (pass --hbm_gib to check one)")
        return
    if total > limit:
        raise UserError(
            f"the step needs {total / GIB:.2f} GiB per device, more than the "
            f"{limit / GIB:.0f} GiB of a {kind}: lower config.data.global_batch_size, use "
            "config.dtype=bfloat16, or shard the parameters (config.mesh fsdp > 1)"
        )
    print(f"fits: {total / GIB:.2f} of {limit / GIB:.0f} GiB per {kind}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    common.run(main)
