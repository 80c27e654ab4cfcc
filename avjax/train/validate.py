"""Up-front checks of a training config: a bad value stops before any data is read or compiled.

`check_config(config, num_devices, num_processes)` raises a `UserError` naming the dotted
field (`data.global_batch_size`, `train.log_every`, ...) and what was expected. It reads only
the config, so `launch/train.py` (and a compile check) run it before building inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from avjax.errors import UserError
from avjax.train.sharding import BATCH_AXES

__all__ = ["check_config", "mesh_sizes"]


def mesh_sizes(axes: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
    """The axis sizes `sharding.make_mesh(axes)` builds on `num_devices` devices.

    Raises:
      UserError naming `config.mesh`: malformed axes, more than one -1, or sizes that do not
      multiply to the device count.
    """
    try:
        names = [str(name) for name, _ in axes]
        sizes = [int(size) for _, size in axes]
    except (TypeError, ValueError) as e:
        raise UserError(f"config.mesh: expected ((name, size), ...), got {axes!r}") from e
    if len(set(names)) != len(names):
        raise UserError(f"config.mesh: axis names repeat in {list(axes)}")
    if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
        raise UserError(f"config.mesh: sizes must be >= 1 with at most one -1, got {list(axes)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise UserError(
                f"config.mesh: {num_devices} devices do not fit the fixed axes {list(axes)}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(
            f"config.mesh: axes {dict(zip(names, sizes))} need {math.prod(sizes)} devices, "
            f"{num_devices} are available"
        )
    return dict(zip(names, sizes))


def _get(config: Mapping, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return None
        if part not in node:
            return None
        node = node[part]
    return node


def _int_at_least(config, field: str, low: int, why: str = "", required: bool = False) -> None:
    value = _get(config, field)
    if value is None:
        if required:
            raise UserError(f"config.{field} is missing")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"config.{field}={value!r}: expected an integer >= {low}")
    if value < low:
        raise UserError(f"config.{field}={value}: must be >= {low}{why}")


def check_config(config: Mapping, num_devices: int, num_processes: int = 1) -> None:
    """Checks the fields the training loop and input pipeline rely on.

    Args:
      config: the experiment's ConfigDict (or a dict of the same shape).
      num_devices: devices the mesh is built over (`jax.device_count()`).
      num_processes: `jax.process_count()`.

    Raises:
      UserError naming the first bad field (`config.<dotted.name>`) and the expected value.
    """
    if _get(config, "train.num_steps") is None and _get(config, "train.num_epochs") is None:
        raise UserError("set config.train.num_steps or config.train.num_epochs (run length)")
    _int_at_least(config, "train.num_steps", 1)
    _int_at_least(config, "train.num_epochs", 1)
    _int_at_least(config, "train.steps_per_epoch", 1)
    _int_at_least(config, "train.log_every", 1, " (0 would log never; use a large value)")
    _int_at_least(config, "train.checkpoint_every", 1, " (steps between checkpoints)")
    _int_at_least(config, "train.keep_checkpoints", 1)
    _int_at_least(config, "train.eval_every", 0, " (0 turns evaluation off)")
    _int_at_least(config, "train.sample_every", 0, " (0 turns sampling off)")
    _int_at_least(config, "train.eval_batches", 1)
    _int_at_least(config, "train.fsdp_min_size", 0, " (parameters of fewer values stay replicated)")
    _int_at_least(config, "data.global_batch_size", 1, required=True)
    for field in ("optim.base_lr", "optim.lr", "optim.disc_lr"):
        lr = _get(config, field)
        if lr is None:
            continue
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
            raise UserError(f"config.{field}={lr!r}: expected a positive number")
        if lr <= 0:
            raise UserError(f"config.{field}={lr}: the learning rate must be > 0")
    mesh = _get(config, "mesh")
    sizes = mesh_sizes(mesh, num_devices) if mesh is not None else {"data": num_devices}
    batch = config["data"]["global_batch_size"]
    shards = math.prod(sizes[a] for a in BATCH_AXES if a in sizes)
    if batch % shards:
        axes = " x ".join(f"{a}={sizes[a]}" for a in BATCH_AXES if a in sizes)
        raise UserError(
            f"config.data.global_batch_size={batch} is not divisible by the {shards} devices "
            f"the batch is split over (config.mesh {axes}); use a multiple of {shards}"
        )
    if batch % num_processes:
        raise UserError(
            f"config.data.global_batch_size={batch} is not divisible by the {num_processes} "
            "processes; use a multiple of it"
        )
