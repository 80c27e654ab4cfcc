"""MCAV inputs: the Sound2Sight clip datasets plus a backward optical flow per frame.

Batches as `video_inputs` ({"frames", "audio", "block"} (+ "mask" in eval)) plus "flow":
float32 [B, T, H, W, 2], F[t] the backward flow from frame t to frame t-1 in pixels
(dx, dy), F[0] = 0.

Stand-in written with the MCAV models: the flow here is an integer block-matching estimate
computed per clip window on the fly (cheap at 48x48 / 64x64), so the MCAV task trains end
to end; the TV-L1 ground truth precomputed beside the frames (the flow work) replaces it.
"""

from __future__ import annotations

import grain
import numpy as np
from absl import logging
from scipy import ndimage

from data_pipelines import base, m3so_tfds, video_inputs

__all__ = ["block_match_flow", "make_inputs"]


def block_match_flow(cur: np.ndarray, prev: np.ndarray, radius: int = 3, window: int = 5):
    """Backward flow [H, W, 2] (dx, dy) of frame `cur` to `prev` (grey [H, W] floats).

    Per pixel, the integer shift d (|dx|, |dy| <= radius) minimising the `window`-averaged
    |cur(p) - prev(p + d)| (border pixels repeated); ties go to the shortest shift, so
    static areas get 0.
    """
    h, w = cur.shape
    r = radius
    padded = np.pad(prev, r, mode="edge")
    shifts = sorted(
        ((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)),
        key=lambda d: d[0] ** 2 + d[1] ** 2,
    )
    costs = np.stack(
        [
            ndimage.uniform_filter(
                np.abs(cur - padded[r + dy : r + dy + h, r + dx : r + dx + w]),
                window,
                mode="nearest",
            )
            for dy, dx in shifts
        ]
    )
    best = np.asarray(shifts)[np.argmin(costs, axis=0)]  # [H, W, (dy, dx)]
    return np.stack([best[..., 1], best[..., 0]], axis=-1).astype(np.float32)


class AddFlow(grain.transforms.Map):
    """Adds "flow" [T, H, W, 2] (block matching of consecutive frames, F[0] = 0)."""

    def map(self, element):
        grey = element["frames"].astype(np.float32).mean(-1) / 255.0
        flow = np.zeros((*grey.shape, 2), np.float32)
        for t in range(1, len(grey)):
            flow[t] = block_match_flow(grey[t], grey[t - 1])
        return {**element, "flow": flow}


def make_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """Train iterator, eval iterator factory and (empty) stats for `config.task='mcav'`."""
    del model_fns  # runs no model
    d = config.data
    data_dir = base.resolve_data_dir(
        config, lambda: video_inputs._synthetic(config), video_inputs._HINT
    )
    train_len, eval_len = d.n_past + d.n_future, d.n_past + d.n_eval
    train_src = m3so_tfds.open_clips(data_dir, d.train_split)
    video_inputs._check(train_src, config, train_len, "config.data.n_past + config.data.n_future")
    logging.info("train data: %r from %s (+ block-matching flow)", train_src, data_dir)
    common = dict(
        global_batch_size=d.global_batch_size,
        read_threads=d.read_threads,
        transforms=[AddFlow()],
    )
    train_ds = video_inputs.make_clip_dataset(
        train_src, num_frames=train_len, seed=config.seed, train=True, **common
    )
    eval_iter_fn = None
    if d.eval_split:
        eval_src = m3so_tfds.open_clips(data_dir, d.eval_split)
        video_inputs._check(eval_src, config, eval_len, "config.data.n_past + config.data.n_eval")
        eval_iter_fn = lambda: iter(
            video_inputs.make_clip_dataset(
                eval_src, num_frames=eval_len, seed=config.seed, train=False, **common
            )
        )
    class_names = tuple(train_src.metadata.get("class_names", ()))
    return base.Inputs(iter(train_ds), eval_iter_fn, {}, class_names, data_dir, len(train_src))
