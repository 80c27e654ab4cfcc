"""From an experiment config to input iterators: `config.task` -> its input pipeline.

`make_inputs(config)` is what `launch/train.py` calls. `INPUTS` is the one table of which
pipeline serves which task; each pipeline opens the configured dataset (or the embedded
synthetic one for `:tiny` configs), computes the statistics its models need and builds the
checkpointable Grain iterators. The shared pieces (`Inputs`, `cache_dir`,
`resolve_data_dir`) live in `data_pipelines.base`, which the pipelines import (never this
module).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from data_pipelines import (
    base,
    codes_inputs,
    mcav_inputs,
    spec_inputs,
    video_inputs,
    wave_inputs,
)
from data_pipelines.base import Inputs, ModelFns, cache_dir, resolve_data_dir
from data_pipelines.errors import UserError

__all__ = [
    "INPUTS",
    "Inputs",
    "ModelFns",
    "cache_dir",
    "demo_clip",
    "make_inputs",
    "resolve_data_dir",
]

# config.task -> its input pipeline (a new model family adds one line here).
INPUTS: dict[str, Callable[[Any, ModelFns | None], Inputs]] = {
    "vqgan": spec_inputs.make_inputs,
    "classifier": spec_inputs.make_classifier_inputs,
    "transformer": codes_inputs.make_inputs,
    "melgan": wave_inputs.make_inputs,
    "sound2sight": video_inputs.make_inputs,
    "mcav": mcav_inputs.make_inputs,
}


def make_inputs(config, model_fns: ModelFns | None = None) -> Inputs:
    """Opens the dataset named by `config.data` and builds the iterators for `config.task`.

    Args:
      config: the experiment config (`task`, `data`, `seed`, ...).
      model_fns: model-backed functions the pipelines may run (`base.ModelFns`), e.g. the
        codebook encoder that extracts the transformer's missing codes on first use.
    """
    fn = INPUTS.get(config.task)
    if fn is None:
        raise UserError(
            f"config.task: no input pipeline for {config.task!r}; expected one of {sorted(INPUTS)}"
        )
    return fn(config, model_fns)


def demo_clip() -> pathlib.Path:
    """A wav file of one synthetic validation clip (for `make demo`'s codec step)."""
    from avjax.audio import io

    root = base.synthetic_specs_dir()
    line = (root / "vas_valid.txt").read_text().split()[0]
    cls, vid = line.split("/")
    wav = cache_dir() / "demo_clip.wav"
    if not wav.exists():
        wave = np.load(root / cls / "melspec_10s_22050hz" / f"{vid}_audio.npy")
        io.write_wav(wav, wave, 22050)
    return wav
