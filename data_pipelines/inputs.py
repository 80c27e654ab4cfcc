"""From an experiment config to input iterators: `config.task` -> its input pipeline.

`make_inputs(config)` is what `launch/train.py` calls. `INPUTS` is the one table of which
pipeline serves which task; each pipeline opens the configured dataset (or the embedded
synthetic one for `:tiny` configs), computes the statistics its models need and builds the
checkpointable Grain iterators. The shared pieces (`Inputs`, `cache_dir`,
`resolve_data_dir`) live in `data_pipelines.base`, which the pipelines import (never this
module). `abstract_inputs(config)` gives the shapes of a global batch and placeholder
statistics without opening any data, for compile-only runs (`launch/compile_check.py`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from data_pipelines import (
    base,
    codes_inputs,
    spec_inputs,
    synthetic_audio,
    video_inputs,
    wave_inputs,
)
from data_pipelines.base import Inputs, ModelFns, cache_dir, resolve_data_dir
from data_pipelines.errors import UserError

__all__ = [
    "INPUTS",
    "Inputs",
    "ModelFns",
    "abstract_inputs",
    "cache_dir",
    "demo_clip",
    "demo_videos",
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
    "mcav": video_inputs.make_inputs,  # with config.data.flow: batches gain "flow"
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


def demo_videos() -> list[pathlib.Path]:
    """The embedded validation clips as videos with sound, made once (16 x 10 s, 96x96).

    `<cache>/synthetic_specs/<class>/videos/<id>.mp4` (`synthetic_audio.synth_video`), with
    their ResNet-50-layout features beside them, so a `:tiny` video-to-sound run samples
    from them as from real clips (`features.video_feature_paths` finds the features).
    """
    root = base.synthetic_specs_dir()
    synthetic_audio.add_synthetic_features(root, "resnet50")
    return synthetic_audio.add_synthetic_videos(root, "valid")


PAPER_CODES_GRID = (5, 53)  # the paper codebook's codes of one 80 x 848 mel


def _codes_grid(config) -> tuple[int, int]:
    """The code grid of `config.codebook.workdir`'s codebook, else the paper's 5 x 53."""
    workdir = config.codebook.workdir
    if not workdir:
        return PAPER_CODES_GRID
    from avjax.runs import read_config

    codebook = read_config(workdir, "vqgan")
    down = 2 ** (len(codebook.model.ch_mult) - 1)  # the encoder halves both axes per level
    return codebook.data.num_mel_bins // down, codebook.data.crop_frames // down


def abstract_inputs(config) -> tuple[dict[str, jax.ShapeDtypeStruct], dict[str, np.ndarray]]:
    """The global train batch `make_inputs(config)` yields, as shapes, and stand-in statistics.

    Nothing is read: the shapes come from `config.data` (and the codebook run's config for
    the transformer's code grid), the statistics are placeholders of the right shapes
    (their values do not change what compiles). For `launch/compile_check.py`.

    Returns:
      ({name: ShapeDtypeStruct with the global batch size G = data.global_batch_size
      leading}, {stat name: array}); names and dtypes as in each pipeline's module doc.
    """
    d, g = config.data, config.data.global_batch_size
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    if config.task not in INPUTS:
        raise UserError(
            f"config.task: no input pipeline for {config.task!r}; expected one of {sorted(INPUTS)}"
        )
    if config.task in ("vqgan", "classifier"):
        batch = {"image": ((g, d.num_mel_bins, d.crop_frames), f32), "label": ((g,), i32)}
        half = np.full((d.num_mel_bins,), 0.5, np.float32)
        stats = {"mean": half, "std": half}
    elif config.task == "melgan":
        batch, stats = {"wave": ((g, d.seq_len), f32)}, {}
    elif config.task == "transformer":
        from data_pipelines import features

        grid = _codes_grid(config)
        feats = features.FeatureSpec.from_config(config)
        batch = {
            "codes": ((g, grid[0] * grid[1]), i32),
            "feats": ((g, feats.sample_size, feats.file_dim), f32),
            "label": ((g,), i32),
        }
        stats = {"codes_grid": np.asarray(grid)}
    else:  # sound2sight, mcav
        t = d.n_past + d.n_future
        batch = {
            "frames": ((g, t, d.image_size, d.image_size, d.channels), np.dtype(np.uint8)),
            "audio": ((g, t, *d.audio_shape), f32),
            "block": ((g, 4), i32),
        }
        if d.get("flow"):  # MCAV: the stored backward flow of the same frames
            batch["flow"] = ((g, t, d.image_size, d.image_size, 2), f32)
        stats = {}
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in batch.items()}, stats
