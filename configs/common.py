"""Helpers shared by the experiment configs."""

from __future__ import annotations

import ml_collections

VGGISHISH16_LAYERS = "64,64,MP,128,128,MP,256,256,256,MP,512,512,512,MP,512,512,512"


def parse_arg(arg: str | None, **defaults):
    """Parses a config argument "tiny" or "tiny,k=v" into a dict with typed defaults.

    Bare words set boolean flags; `k=v` pairs are cast to the type of the default.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = (
            True
            if not value
            else (value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
        )
    return out


MESH = (("data", -1), ("fsdp", 1))  # batch over every device; FSDP axis of size 1
FSDP_MIN_SIZE = 2**18  # params with fewer values stay replicated when `fsdp` > 1


def experiment(task: str, seed: int, dtype: str = "float32") -> ml_collections.ConfigDict:
    """The top-level fields every experiment has: task, seed, compute dtype, mesh.

    `dtype` is the compute dtype ("bfloat16" on GPU/TPU); parameters stay float32.
    """
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = seed
    c.dtype = dtype
    c.mesh = MESH
    return c


def train(
    num_steps: int | None,
    *,
    log_every: int,
    checkpoint_every: int,
    eval_every: int,
    eval_batches: int,
    sample_every: int,
    keep_checkpoints: int = 3,
) -> ml_collections.ConfigDict:
    """The `train` section the generic loop reads (every field, so all can be overridden).

    Run length: `num_steps`, or (with `num_steps=None`) `num_epochs` passes over the
    training data; `steps_per_epoch` is derived from the dataset size and the global batch
    unless set (`avjax.train.schedule.resolve_steps`).
    """
    t = ml_collections.ConfigDict()
    t.num_steps = ml_collections.config_dict.placeholder(int)
    t.num_steps = num_steps
    t.num_epochs = ml_collections.config_dict.placeholder(int)
    t.steps_per_epoch = ml_collections.config_dict.placeholder(int)
    t.log_every = log_every
    t.checkpoint_every = checkpoint_every
    t.keep_checkpoints = keep_checkpoints
    t.eval_every = eval_every  # 0: no training-time eval
    t.eval_batches = eval_batches  # eval batches per evaluation
    t.sample_every = sample_every  # 0: no samples
    t.fsdp_min_size = FSDP_MIN_SIZE
    return t


def make_tiny(c: ml_collections.ConfigDict, num_steps: int = 20) -> None:
    """The CPU smoke-run schedule: 8 clips a batch (any of 1 or 8 devices), short cadences."""
    c.data.global_batch_size = 8
    c.data.read_threads = 2
    c.train.num_steps = num_steps
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.sample_every = 10


def code_grid(codebook: ml_collections.ConfigDict) -> tuple[int, int]:
    """(rows, columns) of the code grid a codebook config makes of one mel crop.

    The encoder halves both axes once per `ch_mult` level after the first.
    """
    down = 2 ** (len(codebook.model.ch_mult) - 1)
    return codebook.data.num_mel_bins // down, codebook.data.crop_frames // down
