"""Inputs of the spectrogram tasks (codebook `vqgan`, `classifier`): log-mel clips + statistics.

`make_inputs(config)` (and `make_classifier_inputs`, which also checks the labels) opens the
official VGGSound/VAS layout in `config.data.dir` (or the embedded synthetic clips for `:tiny`
configs), computes the per-mel-bin statistics the models normalise with (once, on process 0,
with several processes) and builds the checkpointable Grain iterators
(`pipeline.make_spec_iterator`).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from avjax import multihost
from data_pipelines import base, pipeline, spec_folders
from data_pipelines.errors import UserError

__all__ = ["make_classifier_inputs", "make_inputs", "mel_stats", "shared_mel_stats"]


def mel_stats(source, num_examples: int, crop_frames: int) -> dict[str, np.ndarray]:
    """Per-mel-bin mean and std of [0, 1] mels over the first `num_examples` clips.

    Deterministic (no shuffling), centre-cropped like eval. Returns {"mean", "std"}: [F].
    """
    n = min(num_examples, len(source))
    mels = np.stack([pipeline.center_crop(source[i]["mel"], crop_frames) for i in range(n)])
    mean, std = mels.mean(axis=(0, 2)), mels.std(axis=(0, 2))
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-3).astype(np.float32)}


def shared_mel_stats(source, num_examples: int, crop_frames: int) -> dict[str, np.ndarray]:
    """`mel_stats` computed once: by process 0, sent to the others (one clip read there).

    With one process it is `mel_stats`. Every process must call it (a collective).
    """
    if jax.process_count() == 1:
        return mel_stats(source, num_examples, crop_frames)
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        stats = mel_stats(source, num_examples, crop_frames)
    else:  # a placeholder of the right shape, replaced by process 0's values
        bins = np.shape(source[0]["mel"])[0]
        stats = {k: np.zeros(bins, np.float32) for k in ("mean", "std")}
    # Process 0 may take minutes over the clips: the others wait at a barrier, not in the
    # broadcast (a first collective reached > 30 s apart fails; avjax.multihost).
    multihost.wait_for_processes("avjax_mel_stats")
    stats = multihost_utils.broadcast_one_to_all(stats)
    return {k: np.asarray(v, np.float32) for k, v in stats.items()}


def make_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """Log-mel clips (official VGGSound/VAS layouts) for the codebook (`task='vqgan'`)."""
    del model_fns  # runs no model
    return _make(config, check_labels=False)


def make_classifier_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """As `make_inputs`, for `task='classifier'`: the clips carry `num_classes` labels."""
    del model_fns  # runs no model
    return _make(config, check_labels=True)


def _make(config, check_labels: bool) -> base.Inputs:
    d = config.data
    data_dir = base.resolve_data_dir(config)
    opener = lambda split: spec_folders.open_spec_source(
        data_dir, split, layout=d.layout, labels_csv=d.labels_csv
    )
    train_src = opener(d.train_split)
    logging.info("train data: %s (%d clips) from %s", d.train_split, len(train_src), data_dir)
    if check_labels:
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
    stats = shared_mel_stats(train_src, d.stats_examples, d.crop_frames)
    return base.Inputs(
        train_iter, eval_iter_fn, stats, train_src.class_names, data_dir, len(train_src)
    )
