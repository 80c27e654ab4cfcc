"""From an experiment config to input iterators: which data, where, and its statistics.

`make_inputs(config)` is what `launch/train.py` calls; it opens the configured dataset
(or the embedded synthetic one for `:tiny` configs), computes the per-mel-bin statistics
the models normalise with, and builds the checkpointable Grain iterators.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator

import numpy as np
from absl import logging

from data_pipelines import pipeline, spec_folders, synthetic_audio
from data_pipelines.errors import MissingFileError, UserError

SYNTHETIC_NUM_TRAIN = 64
SYNTHETIC_NUM_VALID = 16


def cache_dir() -> pathlib.Path:
    """Where generated default data lives: $AVJAX_CACHE or ~/.cache/avjax."""
    return pathlib.Path(os.environ.get("AVJAX_CACHE", pathlib.Path.home() / ".cache" / "avjax"))


def resolve_data_dir(config) -> pathlib.Path:
    """`config.data.dir`, or the embedded synthetic dataset when `config.data.synthetic`."""
    if config.data.dir:
        path = pathlib.Path(config.data.dir).expanduser()
        if not path.is_dir():
            raise MissingFileError(f"config.data.dir: {path} is not a directory")
        return path
    if config.data.synthetic:
        return synthetic_audio.make_synthetic_dataset(
            cache_dir() / "synthetic_specs",
            num_train=SYNTHETIC_NUM_TRAIN,
            num_valid=SYNTHETIC_NUM_VALID,
            seed=0,
        )
    raise UserError(
        "config.data.dir is not set: pass --config.data.dir=/path/to/dataset (the official "
        "layout: VGGSound melspec folder + split lists, or VAS class folders; "
        "`launch/preprocess.py` builds one from videos), or use the ':tiny' config variant, "
        "which trains on the embedded synthetic clips"
    )


def mel_stats(source, num_examples: int, crop_frames: int) -> dict[str, np.ndarray]:
    """Per-mel-bin mean and std of [0, 1] mels over the first `num_examples` clips.

    Deterministic (no shuffling), centre-cropped like eval. Returns {"mean", "std"}: [F].
    """
    n = min(num_examples, len(source))
    mels = np.stack([pipeline.center_crop(source[i]["mel"], crop_frames) for i in range(n)])
    mean, std = mels.mean(axis=(0, 2)), mels.std(axis=(0, 2))
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-3).astype(np.float32)}


@dataclasses.dataclass
class Inputs:
    """Train iterator (process-local, checkpointable), eval iterator factory, statistics."""

    train_iter: Iterator[dict]
    eval_iter_fn: Callable[[], Iterator[dict]] | None
    stats: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    data_dir: pathlib.Path


def make_inputs(config) -> Inputs:
    """Opens the dataset named by `config.data` and builds the iterators for `config.task`."""
    if config.task in ("vqgan", "classifier"):
        return spectrogram_inputs(config)
    if config.task == "transformer":
        from data_pipelines import codes_inputs

        return codes_inputs.make_inputs(config)
    if config.task == "melgan":
        from data_pipelines import wave_inputs

        return wave_inputs.make_inputs(config)
    if config.task == "sound2sight":
        from data_pipelines import video_inputs

        return video_inputs.make_inputs(config)
    raise UserError(f"config.task: no input pipeline for {config.task!r}")


def spectrogram_inputs(config) -> Inputs:
    """Log-mel clips (official VGGSound/VAS layouts) for the codebook and classifiers."""
    d = config.data
    data_dir = resolve_data_dir(config)
    opener = lambda split: spec_folders.open_spec_source(
        data_dir, split, layout=d.layout, labels_csv=d.get("labels_csv")
    )
    train_src = opener(d.train_split)
    logging.info("train data: %s (%d clips) from %s", d.train_split, len(train_src), data_dir)
    if config.task == "classifier":
        num = len(train_src.class_names)
        if num == 0 or int(np.min(train_src.labels)) < 0:
            raise UserError(
                f"config.task='classifier' needs labels, but {data_dir} split {d.train_split!r} "
                "has none: VAS class folders give them; for VGGSound pass --config.data.labels_csv"
            )
        if num != config.model.num_classes:
            raise UserError(
                f"config.model.num_classes={config.model.num_classes} but the dataset in "
                f"{data_dir} has {num} classes; pass --config.model.num_classes={num}"
            )
    common = dict(
        global_batch_size=d.global_batch_size,
        crop_frames=d.crop_frames,
        read_threads=d.read_threads,
    )
    train_iter = pipeline.make_spec_iterator(
        train_src, seed=config.seed, train=True, random_crop=d.random_crop, **common
    )
    eval_iter_fn = None
    if d.eval_split:
        eval_src = opener(d.eval_split)
        eval_iter_fn = lambda: pipeline.make_spec_iterator(
            eval_src, seed=config.seed, train=False, **common
        )
    stats = mel_stats(train_src, d.stats_examples, d.crop_frames)
    return Inputs(train_iter, eval_iter_fn, stats, train_src.class_names, data_dir)


def demo_clip() -> pathlib.Path:
    """A wav file of one synthetic validation clip (for `make demo`'s codec step)."""
    from avjax.audio import io

    root = synthetic_audio.make_synthetic_dataset(
        cache_dir() / "synthetic_specs", SYNTHETIC_NUM_TRAIN, SYNTHETIC_NUM_VALID, seed=0
    )
    line = (root / "vas_valid.txt").read_text().split()[0]
    cls, vid = line.split("/")
    wav = cache_dir() / "demo_clip.wav"
    if not wav.exists():
        wave = np.load(root / cls / "melspec_10s_22050hz" / f"{vid}_audio.npy")
        io.write_wav(wav, wave, 22050)
    return wav
