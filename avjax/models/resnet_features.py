"""ImageNet ResNet-50 features of a video, as SpecVQGAN's `feature_resnet50_dim2048_21.5fps`.

The `video_features` recipe (`demo_utils.ExtractResNet50` in the official repo): frames at
21.5 fps, each resized so its shorter side is 256 (bilinear), centre-cropped to 224x224, scaled
to [0, 1] and normalised with the ImageNet mean/std, then torchvision's
`resnet50(pretrained=True)` with `fc = Identity`: one 2048-d globally pooled vector per frame.
A 10 s clip gives ~215 rows.

The weights are a torchvision ResNet-50 state dict the user supplies (ImageNet weights are not
shipped): `.pth`/`.pt` (read without PyTorch) or an `.npz` of the same keys.
The on-disk layout of the features (`.pkl` per clip, folder names) is
`data_pipelines.visual_features`; `resnet50_extractor` is the function it receives.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from avjax.convert.resnet import resnet50_from_torch
from avjax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet
from avjax.video.io import read_frames

__all__ = ["load_state_dict", "preprocess_frames", "resnet50_extractor", "resnet50_features"]

RESIZE = 256
CROP = 224


def load_state_dict(weights_path: str | pathlib.Path | None) -> dict[str, np.ndarray]:
    """Reads a torchvision ResNet-50 state dict from `.pth`/`.pt` or `.npz`."""
    if weights_path is None:
        raise ValueError(
            "ResNet-50 features need ImageNet weights: pass a torchvision resnet50 state dict "
            "(torchvision's IMAGENET1K_V1 resnet50-0676ba61.pth from "
            "https://download.pytorch.org/models/, or an .npz with the same keys)"
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
      weights_path: torchvision ResNet-50 state dict (.pth, read without PyTorch, or .npz).
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


def resnet50_extractor(
    weights_path: str | pathlib.Path | None,
    fps: float = 21.5,
    model: ResNet | None = None,
) -> Callable[[str | pathlib.Path], np.ndarray]:
    """`video_path -> float32 [T, 2048]` with the weights loaded now (missing ones fail here).

    What `data_pipelines.visual_features.features_folder` receives; arguments as
    `resnet50_features`.
    """
    load_state_dict(weights_path)  # fail fast: missing or unreadable weights
    return lambda video_path: resnet50_features(video_path, weights_path, fps, model=model)
