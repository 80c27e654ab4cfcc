"""What every input pipeline shares: the `Inputs` it returns, the cache and data folders.

The per-task pipelines (`spec_inputs`, `codes_inputs`, `wave_inputs`, `video_inputs`)
import this module; `data_pipelines.inputs` dispatches `config.task` to them. Nothing here
imports a pipeline, so there is no import circle.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from avjax.paths import user_cache_dir as cache_dir  # generated default data lives there
from data_pipelines import synthetic_audio
from data_pipelines.errors import MissingFileError, UserError

__all__ = ["Inputs", "ModelFns", "cache_dir", "resolve_data_dir", "synthetic_specs_dir"]

SYNTHETIC_NUM_TRAIN = 64
SYNTHETIC_NUM_VALID = 16

_SPEC_HINT = (
    "config.data.dir is not set: pass --config.data.dir=/path/to/dataset (the official "
    "layout: VGGSound melspec folder + split lists, or VAS class folders; "
    "`launch/preprocess.py` builds one from videos), or use the ':tiny' config variant, "
    "which trains on the embedded synthetic clips"
)


@dataclasses.dataclass
class Inputs:
    """Train iterator (process-local, checkpointable), eval iterator factory, statistics."""

    train_iter: Iterator[dict]
    eval_iter_fn: Callable[[], Iterator[dict]] | None
    stats: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    data_dir: pathlib.Path
    num_train_examples: int  # this process's view of the whole train split (all hosts)


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """Model-backed functions a pipeline may need, handed in by its caller (a launcher).

    `data_pipelines` never imports the library's models: work that runs a trained model
    (codes of a codebook, visual features) is a library function the pipeline receives here.

    Attributes:
      code_encoder: `(codebook_workdir, batch_size) -> codes.Encoder`, the library's
        `CodeEncoder` (models/specvqgan/code_encoder.py); lets the transformer's pipeline
        extract missing codes on first use. Without it, missing codes stop with the
        `launch/extract_codes.py` command to run.
    """

    code_encoder: Callable | None = None


def synthetic_specs_dir() -> pathlib.Path:
    """The embedded synthetic spectrogram clips (VAS layout), generated once into the cache."""
    return synthetic_audio.make_synthetic_dataset(
        cache_dir() / "synthetic_specs",
        num_train=SYNTHETIC_NUM_TRAIN,
        num_valid=SYNTHETIC_NUM_VALID,
        seed=0,
    )


def resolve_data_dir(
    config,
    synthetic: Callable[[], pathlib.Path] = synthetic_specs_dir,
    hint: str = _SPEC_HINT,
) -> pathlib.Path:
    """`config.data.dir`, or the task's synthetic dataset when `config.data.synthetic`.

    Args:
      config: the experiment config (`data.dir`, `data.synthetic`).
      synthetic: makes (once) and returns the synthetic dataset of the task; default the
        embedded spectrogram clips.
      hint: the error message when neither is set (says what to pass).

    Returns:
      The dataset folder.
    """
    d = config.data
    if d.dir:
        path = pathlib.Path(d.dir).expanduser()
        if not path.is_dir():
            raise MissingFileError(f"config.data.dir: {path} is not a directory")
        return path
    if d.synthetic:
        return synthetic()
    raise UserError(hint)
