"""ImageNet ResNet-50 features of a video, as SpecVQGAN's `feature_resnet50_dim2048_21.5fps`.

Spec A6 (the `video_features` recipe, `demo_utils.ExtractResNet50`): frames at 21.5 fps, each
resized so its shorter side is 256 (bilinear), centre-cropped to 224x224, scaled to [0, 1] and
normalised with the ImageNet mean/std, then torchvision's `resnet50(pretrained=True)` with
`fc = Identity`: one 2048-d globally pooled vector per frame. A 10 s clip gives ~215 rows.

The weights are a torchvision ResNet-50 state dict the user supplies (ImageNet weights are not
shipped): `.pth`/`.pt` (needs the torch extra) or an `.npz` of the same keys (works without).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from avjax.convert.resnet import resnet50_from_torch
from avjax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet
from avjax.video.io import read_frames

FEATURE_DIR = "feature_resnet50_dim2048_21.5fps"
RESIZE = 256
CROP = 224


def load_state_dict(weights_path: str | pathlib.Path | None) -> dict[str, np.ndarray]:
    """Reads a torchvision ResNet-50 state dict from `.pth`/`.pt` or `.npz`."""
    if weights_path is None:
        raise ValueError(
            "ResNet-50 features need ImageNet weights: pass a torchvision resnet50 state dict "
            "(e.g. resnet50-19c8e357.pth from torchvision, or an .npz with the same keys)"
        )
    path = pathlib.Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-50 weights {path} do not exist (expected a torchvision resnet50 state "
            "dict, .pth/.pt or .npz)"
        )
    if path.suffix in (".pth", ".pt", ".ckpt", ".npz"):
        from avjax.convert import torch_io

        return torch_io.load_state_dict(path)
    raise ValueError(f"ResNet-50 weights {path}: expected a .pth/.pt or .npz file")


def preprocess_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> ImageNet-normalised float32 [T, 224, 224, 3].

    torchvision `Resize(256)` on PIL images (shorter side 256, the other `int(256 * long /
    short)`, bilinear with PIL's antialiasing), `CenterCrop(224)`, `ToTensor`, `Normalize`.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames [T, H, W, 3], got shape {frames.shape}")
    h, w = frames.shape[1:3]
    if h <= w:
        size = (int(RESIZE * w / h), RESIZE)  # PIL (width, height)
    else:
        size = (RESIZE, int(RESIZE * h / w))
    top = round((size[1] - CROP) / 2.0)
    left = round((size[0] - CROP) / 2.0)
    out = np.empty((len(frames), CROP, CROP, 3), np.float32)
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame).resize(size, Image.BILINEAR)
        img = np.asarray(img, np.float32)[top : top + CROP, left : left + CROP] / 255.0
        out[i] = (img - mean) / std
    return out


@functools.lru_cache(maxsize=2)
def _extractor(weights_key: str, model: ResNet):
    variables = resnet50_from_torch(load_state_dict(weights_key), model, keep_fc=False)
    variables = jax.device_put(variables)
    apply = jax.jit(lambda v, x: model.apply(v, x))
    return lambda x: apply(variables, x)


def resnet50_features(
    video_path: str | pathlib.Path,
    weights_path: str | pathlib.Path | None,
    fps: float = 21.5,
    batch_size: int = 32,
    model: ResNet | None = None,
) -> np.ndarray:
    """Per-frame ResNet-50 pool features of a video.

    Args:
      video_path: any video FFmpeg reads.
      weights_path: torchvision ResNet-50 state dict (.pth needs torch; .npz works without).
      fps: frame rate the video is sampled at (21.5 as SpecVQGAN).
      batch_size: frames per jitted call (the last batch is padded, one compiled shape).
      model: the network (default ResNet-50; a smaller ResNet only for tests).
    Returns:
      float32 [T, 2048] (T ~ 215 for a 10 s clip).
    """
    model = model or ResNet()
    weights_key = str(pathlib.Path(weights_path)) if weights_path is not None else None
    if weights_key is None:
        load_state_dict(None)  # raises the explanatory error
    extract = _extractor(weights_key, model)
    frames = preprocess_frames(read_frames(video_path, fps))
    outs = []
    for lo in range(0, len(frames), batch_size):
        chunk = frames[lo : lo + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
        outs.append(np.asarray(extract(jnp.asarray(chunk)))[: batch_size - pad])
    return np.concatenate(outs).astype(np.float32)


def feature_path(video_path: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """`OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl`, the official layout."""
    return pathlib.Path(out_dir) / FEATURE_DIR / f"{pathlib.Path(video_path).stem}.pkl"


def write_features(path: str | pathlib.Path, feats: np.ndarray) -> None:
    """Pickles a float32 array (what the official `.pkl` files hold), atomically."""
    import os
    import pickle

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


def resnet50_features_folder(
    videos_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    weights_path: str | pathlib.Path | None,
    fps: float = 21.5,
    clip_seconds: float | None = 10.0,
    model: ResNet | None = None,
):
    """ResNet-50 features of every video under `videos_dir` into `out_dir` (official layout).

    With `clip_seconds` (10 s as the official clips) every file gets `round(clip_seconds *
    fps)` rows (215): shorter videos are looped, longer ones cut, as the official pipeline
    loops and cuts the clip before extracting; None keeps one row per decoded frame.
    Existing `.pkl` files are skipped; failures are collected per file, not raised.
    Returns a `data_pipelines.preprocess.Summary`.
    """
    import tqdm

    from data_pipelines.preprocess import Summary, find_media

    load_state_dict(weights_path)  # fail fast: missing or unreadable weights
    summary = Summary()
    files = find_media(videos_dir)
    todo = [f for f in files if not feature_path(f, out_dir).exists()]
    summary.skipped = len(files) - len(todo)
    for f in tqdm.tqdm(todo, desc="resnet50 features", unit="file"):
        try:
            feats = resnet50_features(f, weights_path, fps, model=model)
            if clip_seconds:
                feats = loop_or_crop(feats, round(clip_seconds * fps))
            write_features(feature_path(f, out_dir), feats)
            summary.done += 1
        except Exception as e:  # one bad video must not stop the folder
            summary.failed.append((str(f), f"{type(e).__name__}: {e}"))
    return summary
