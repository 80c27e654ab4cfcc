"""SpecVQGAN's visual-feature files: `feature_resnet50_dim2048_21.5fps/<stem>.pkl` per clip.

The layout the official feature folders use, and a folder tool that fills it from videos with
any per-video extractor: the library's `resnet50_extractor(weights)` (in
models/resnet_features.py) for the official ImageNet ResNet-50 features (the model lives in
the library; this module only reads, loops and writes).
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Callable

import numpy as np

FEATURE_DIR = "feature_resnet50_dim2048_21.5fps"


def feature_path(video_path: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """`OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl`, the official layout."""
    return pathlib.Path(out_dir) / FEATURE_DIR / f"{pathlib.Path(video_path).stem}.pkl"


def write_features(path: str | pathlib.Path, feats: np.ndarray) -> None:
    """Pickles a float32 array (what the official `.pkl` files hold), atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(np.ascontiguousarray(feats, np.float32), f, protocol=4)
    os.replace(tmp, path)


def loop_or_crop(feats: np.ndarray, num_rows: int) -> np.ndarray:
    """Tiles `feats` [T, D] from the start until it has `num_rows` rows, or keeps the first ones.

    The official clips are looped (`-stream_loop`) and cut to 10 s before extraction, so a
    shorter clip's frames repeat from its start; `LeftmostCropOrTile` does the same to features.
    """
    if len(feats) == 0:
        raise ValueError("no feature rows to loop")
    reps = -(-num_rows // len(feats))
    return np.tile(feats, (reps, 1))[:num_rows]


def features_folder(
    videos_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    extract: Callable[[pathlib.Path], np.ndarray],
    fps: float = 21.5,
    clip_seconds: float | None = 10.0,
):
    """Features of every video under `videos_dir` into `out_dir` (official layout).

    Args:
      videos_dir: a folder of videos (searched as `preprocess.find_media`).
      out_dir: the dataset folder; files go to `out_dir/feature_resnet50_dim2048_21.5fps/`.
      extract: `video_path -> float32 [T, D]` sampled at `fps`, e.g.
        the library's `resnet50_extractor(weights)`.
      fps: the rate `extract` samples at.
      clip_seconds: with a value (10 s as the official clips) every file gets
        `round(clip_seconds * fps)` rows (215): shorter videos are looped, longer ones cut,
        as the official pipeline loops and cuts the clip before extracting; None keeps one
        row per decoded frame.

    Returns:
      A `data_pipelines.preprocess.Summary`. Existing `.pkl` files are skipped; failures are
      collected per file, not raised.
    """
    import tqdm

    from data_pipelines.preprocess import Summary, find_media

    summary = Summary()
    files = find_media(videos_dir)
    todo = [f for f in files if not feature_path(f, out_dir).exists()]
    summary.skipped = len(files) - len(todo)
    for f in tqdm.tqdm(todo, desc="visual features", unit="file"):
        try:
            feats = extract(f)
            if clip_seconds:
                feats = loop_or_crop(feats, round(clip_seconds * fps))
            write_features(feature_path(f, out_dir), feats)
            summary.done += 1
        except Exception as e:  # one bad video must not stop the folder
            summary.failed.append((str(f), f"{type(e).__name__}: {e}"))
    return summary
