"""Visual conditioning of SpecVQGAN's transformer: the official per-frame feature files.

Layouts (docs/specvqgan.md A6/A8): next to each clip's `melspec_10s_22050hz/` folder,
  `feature_rgb_bninception_dim1024_21.5fps/<id>.pkl`   [~215, 1024] (BN-Inception RGB)
  `feature_flow_bninception_dim1024_21.5fps/<id>.pkl`  [~216, 1024] (BN-Inception flow)
  `feature_resnet50_dim2048_21.5fps/<id>.pkl`          [215, 2048]  (ImageNet ResNet-50)
pickled float32 arrays at 21.5 fps (10 s -> 215 frames), loaded with the numpy-only unpickler.

The official `VGGSoundFeats.__getitem__` pipeline, reproduced by `prepare_features`:
  1. each stream zero-padded / trimmed to `feat_len` = 215 rows, rgb and flow concatenated
     along features (BN-Inception: 1024 + 1024 = 2048; ResNet-50: 2048 alone);
  2. centre crop to `feat_crop` = 212 rows (rows 1..212, albumentations' CenterCrop);
  3. `ResampleFrames` to `feat_sample_size` rows: indices
     `int32(linspace(0, 212, n, endpoint=False)) + 212 // (n + 1)` (n=5 -> [35, 77, 119, 162,
     204], n=1 -> [106], n=212 -> identity).
"No Feats" (the paper's unconditional baseline) replaces the features by uniform [0, 1) noise
of the same shape; here it is drawn from a per-example seeded generator (reproducible runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipelines import safe_pickle
from data_pipelines.errors import MissingFileError, UserError
from data_pipelines.spec_folders import MEL_SUBDIR

__all__ = [
    "FEATURE_DIRS",
    "FeatureSpec",
    "check_feature_kind",
    "clip_feature_paths",
    "condition",
    "crop_rows",
    "features_from_file",
    "folder_kind",
    "load_clip_features",
    "load_feature_pkl",
    "pad_or_trim",
    "per_frame_features",
    "prepare_features",
    "random_features",
    "read_feature_streams",
    "resample_indices",
    "tile_or_crop",
    "video_feature_paths",
    "visual_streams",
]

RGB_BNINCEPTION = "feature_rgb_bninception_dim1024_21.5fps"
FLOW_BNINCEPTION = "feature_flow_bninception_dim1024_21.5fps"
RESNET50 = "feature_resnet50_dim2048_21.5fps"

# config.data.features -> the feature folders read (concatenated in this order) and their dims.
FEATURE_DIRS: dict[str, tuple[tuple[str, int], ...]] = {
    "bninception": ((RGB_BNINCEPTION, 1024), (FLOW_BNINCEPTION, 1024)),
    "resnet50": ((RESNET50, 2048),),
    "none": (),
}


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Which features, and the official length / crop / resampling (config `data.feat_*`)."""

    kind: str = "bninception"  # 'bninception' | 'resnet50' | 'none'
    feat_len: int = 215
    feat_crop: int = 212
    sample_size: int = 212
    dim: int = 2048  # feature width; for 'none' the width of the random features

    def __post_init__(self):
        if self.kind not in FEATURE_DIRS:
            raise UserError(
                f"config.data.features={self.kind!r}; expected one of {sorted(FEATURE_DIRS)}"
            )
        if not 0 < self.feat_crop <= self.feat_len:
            raise UserError(
                f"config.data.feat_crop={self.feat_crop} must lie in [1, feat_len={self.feat_len}]"
            )
        if not 0 < self.sample_size <= self.feat_crop:
            raise UserError(
                f"config.data.feat_sample_size={self.sample_size} must lie in "
                f"[1, feat_crop={self.feat_crop}]"
            )
        if self.kind != "none" and self.dim != self.file_dim:
            raise UserError(
                f"config.data.features={self.kind!r} gives {self.file_dim}-d features but the "
                f"model expects {self.dim} (config.model.feat_dim)"
            )

    @property
    def file_dim(self) -> int:
        return sum(d for _, d in FEATURE_DIRS[self.kind]) or self.dim

    @classmethod
    def from_config(cls, config) -> FeatureSpec:
        """From `config.data.feat_*`; a class-only model (`model.feat_dim == 0`) reads none."""
        d = config.data
        no_feats = config.model.feat_dim == 0
        return cls(
            kind="none" if no_feats else d.features,
            feat_len=d.feat_len,
            feat_crop=d.feat_crop,
            sample_size=d.feat_sample_size,
            dim=config.model.feat_dim,
        )


def load_feature_pkl(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """One official feature file -> [T, D] float32, validated.

    Raises:
      FileNotFoundError / ValueError naming the file: missing, not a numpy-array pickle
      (`safe_pickle.UnsafePickleError` for pickles asking for other globals), not 2-D, empty,
      width != `dim`, or non-finite values.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: feature file not found")
    x = safe_pickle.load_array_pickle(path)
    if x.ndim != 2 or x.shape[0] == 0 or (dim is not None and x.shape[1] != dim):
        want = f"[~215, {dim}]" if dim is not None else "[T, D]"
        raise UserError(f"{path}: features have shape {x.shape}, expected {want}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"{path}: features have dtype {x.dtype}, expected float")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise UserError(f"{path}: features have {int((~np.isfinite(x)).sum())} non-finite values")
    return x


def pad_or_trim(x: np.ndarray, length: int) -> np.ndarray:
    """[T, D] -> [length, D]: the first `length` rows, zero-padded at the end when T < length."""
    out = np.zeros((length, x.shape[1]), np.float32)
    n = min(length, x.shape[0])
    out[:n] = x[:n]
    return out


def crop_rows(x: np.ndarray, crop: int) -> np.ndarray:
    """Centre crop of the time axis as albumentations does: rows (T - crop)//2 ... (1..212)."""
    start = (x.shape[0] - crop) // 2
    return x[start : start + crop]


def resample_indices(length: int, n: int) -> np.ndarray:
    """Official `ResampleFrames`: [n] int32 row indices into `length` (212) rows."""
    if not 0 < n <= length:
        raise ValueError(f"cannot resample {length} frames to {n}")
    return np.linspace(0, length, n, endpoint=False).astype(np.int32) + length // (n + 1)


def prepare_features(streams: Sequence[np.ndarray], spec: FeatureSpec) -> np.ndarray:
    """Raw streams (rgb[, flow]) [T_i, D_i] -> [sample_size, sum D_i] float32 (steps 1-3)."""
    x = np.concatenate([pad_or_trim(s, spec.feat_len) for s in streams], axis=1)
    x = crop_rows(x, spec.feat_crop)
    return x[resample_indices(spec.feat_crop, spec.sample_size)]


def random_features(spec: FeatureSpec, rng: np.random.Generator) -> np.ndarray:
    """ "No Feats": uniform [0, 1) features [feat_len, dim] cropped and resampled like real ones."""
    x = rng.random((spec.feat_len, spec.dim), dtype=np.float32)
    x = crop_rows(x, spec.feat_crop)
    return x[resample_indices(spec.feat_crop, spec.sample_size)]


def tile_or_crop(x: np.ndarray, length: int) -> np.ndarray:
    """Official demo `LeftmostCropOrTile`: [T, D] -> [length, D], tiling short clips."""
    reps = -(-length // x.shape[0])
    return np.tile(x, (reps, 1))[:length] if reps > 1 else x[:length]


def folder_kind(path: str | os.PathLike) -> str | None:
    """The feature kind of an official feature folder a file sits in, or None.

    `.../feature_resnet50_dim2048_21.5fps/x.pkl` -> "resnet50"; the BN-Inception rgb and
    flow folders -> "bninception"; any other folder -> None.
    """
    name = Path(path).parent.name
    return next((k for k, dirs in FEATURE_DIRS.items() for d, _ in dirs if d == name), None)


def check_feature_kind(path: str | os.PathLike, width: int, kind: str) -> None:
    """Refuses a feature file of another kind than the run was trained on.

    The kind is read from the official folder name (`folder_kind`); a file elsewhere is
    judged by its width: 1024 columns are BN-Inception (rgb or flow), never ResNet-50.
    A BN-Inception flow file is refused too (give the rgb one: its flow twin is found).

    Raises:
      UserError naming the file, what it is and what the run needs.
    """
    found = folder_kind(path) or ("bninception" if width == 1024 else None)
    expected = {
        "resnet50": f"{RESNET50}/<id>.pkl, [215, 2048]",
        "bninception": f"{RGB_BNINCEPTION}/<id>.pkl (its flow twin beside it)",
    }
    if found is not None and found != kind:
        raise UserError(
            f"{path}: {found} features ({width}-d), but this run was trained on {kind} "
            f"features: give {expected.get(kind, kind)}, or a run trained on {found} "
            f"(config.data.features={found!r})"
        )
    if kind == "bninception" and Path(path).parent.name == FLOW_BNINCEPTION:
        raise UserError(f"{path}: a BN-Inception flow file; give the rgb one ({expected[kind]})")


def read_feature_streams(
    path: str | os.PathLike,
    dim: int,
    flow: str | os.PathLike | None = None,
    kind: str | None = None,
) -> list[np.ndarray]:
    """A user-given feature file (and its flow twin when needed) -> streams summing to `dim`.

    For `launch/sample.py --features`: a ResNet-50 pkl [T, 2048], a BN-Inception rgb pkl whose
    flow pkl is `flow` or found in the sibling `feature_flow_...` folder, or an already
    concatenated [T, dim] array. With `kind` (the run's `config.data.features`), a file of
    another kind is refused (`check_feature_kind`).
    """
    path = Path(path)
    x = load_feature_pkl(path)
    if kind is not None:
        check_feature_kind(path, x.shape[1], kind)
    if x.shape[1] == dim:
        return [x]
    if flow is None and path.parent.name == RGB_BNINCEPTION:
        flow = path.parent.parent / FLOW_BNINCEPTION / path.name
    if flow is None or x.shape[1] > dim:
        raise UserError(
            f"{path}: features are {x.shape[1]}-d but the transformer expects {dim}-d; for "
            f"BN-Inception give the rgb pkl inside {RGB_BNINCEPTION}/ next to "
            f"{FLOW_BNINCEPTION}/ (or --flow_features)"
        )
    return [x, load_feature_pkl(flow, dim - x.shape[1])]


def per_frame_features(streams: Sequence[np.ndarray], num_frames: int) -> np.ndarray:
    """Streams -> [num_frames, sum D] per-frame features (21.5 fps), tiled when too short.

    The condition of long (> 10 s) samples, which slide a window over these frames.
    """
    n = min(len(s) for s in streams)
    x = np.concatenate([s[:n] for s in streams], axis=1).astype(np.float32)
    return tile_or_crop(x, max(num_frames, n))


def clip_feature_paths(mel_path: str | os.PathLike, kind: str) -> list[Path]:
    """Feature files of the clip whose log-mel is `mel_path` (official layouts, module doc).

    `.../<class>/melspec_10s_22050hz/<id>_mel.npy` -> `.../<class>/<feature dir>/<id>.pkl`;
    a mel file outside a `melspec_10s_22050hz` folder looks for the feature folders beside it.
    """
    mel_path = Path(mel_path)
    vid = mel_path.name.removesuffix("_mel.npy")
    base = mel_path.parent.parent if mel_path.parent.name == MEL_SUBDIR else mel_path.parent
    return [base / folder / f"{vid}.pkl" for folder, _ in FEATURE_DIRS[kind]]


def load_clip_features(paths: Sequence[str | os.PathLike], spec: FeatureSpec) -> np.ndarray:
    """Reads a clip's feature files (rgb[, flow]) -> [sample_size, dim] float32."""
    dims = [d for _, d in FEATURE_DIRS[spec.kind]]
    if len(paths) != len(dims):
        raise UserError(f"features={spec.kind!r} needs {len(dims)} files, got {list(paths)}")
    return prepare_features([load_feature_pkl(p, d) for p, d in zip(paths, dims)], spec)


def features_from_file(
    path: str | os.PathLike, spec: FeatureSpec, flow: str | os.PathLike | None = None
) -> np.ndarray:
    """A user-given feature file (`read_feature_streams`) -> [sample_size, D] float32."""
    return prepare_features(read_feature_streams(path, spec.dim, flow), spec)


def video_feature_paths(video: str | os.PathLike, kind: str) -> list[Path] | None:
    """The feature files of a video, found beside it, or None (`[]` for kind "none").

    For `D/<id>.mp4` the feature folders (`FEATURE_DIRS[kind]`, each holding `<id>.pkl`) are
    looked for in `D/`, in `D/..` (a `videos/` folder beside them: the embedded clips'
    `<class>/videos/`) and in `D/../../features/<class>/` (the VAS download's
    `videos/<class>/<id>.mp4` next to `features/<class>/`), in that order.
    """
    if kind == "none":
        return []
    video = Path(video)
    here = video.parent
    for base in (here, here.parent, here.parent.parent / "features" / here.name):
        paths = [base / folder / f"{video.stem}.pkl" for folder, _ in FEATURE_DIRS[kind]]
        if all(p.is_file() for p in paths):
            return paths
    return None


def visual_streams(
    spec: FeatureSpec,
    features: str | os.PathLike | None = None,
    flow: str | os.PathLike | None = None,
    video: str | os.PathLike | None = None,
    extractor=None,
) -> list[np.ndarray] | None:
    """The per-frame feature streams that condition one clip ([T, D_i] at 21.5 fps).

    In order of preference: the feature file `features` (`read_feature_streams`), the files
    found beside `video` (`video_feature_paths`), or `extractor(video)` ([T, 2048] ResNet-50
    features of its frames; a ResNet-50-conditioned run only). A "No Feats" run
    (`spec.kind == "none"`) takes none: returns None.

    Raises:
      UserError saying what to give when none of these applies.
    """
    if spec.kind == "none":
        return None
    if features:  # refused when of another kind than the run's
        return read_feature_streams(features, spec.dim, flow, spec.kind)
    if not video:
        raise UserError(
            f"this run is conditioned on {spec.kind} features: give the clip's feature file "
            "(.pkl) or its video"
        )
    found = video_feature_paths(video, spec.kind)
    if found:
        dims = [d for _, d in FEATURE_DIRS[spec.kind]]
        return [load_feature_pkl(p, d) for p, d in zip(found, dims)]
    if spec.kind != "resnet50":
        raise UserError(
            f"{Path(video).name}: this run is conditioned on {spec.kind} features, which need "
            "optical flow and cannot be computed from a video here; give the clip's feature "
            "file (the official feature_rgb_bninception pkl) or use a ResNet-50-conditioned run"
        )
    if extractor is None:
        raise UserError(
            f"{Path(video).name}: no feature file beside it, and computing them needs real "
            "ResNet-50 weights: give the clip's feature file (.pkl) or --resnet50_weights "
            "(torchvision's ImageNet resnet50-0676ba61.pth, read without PyTorch, or an .npz "
            "of the same keys)"
        )
    # As the official demo (`LeftmostCropOrTile`): a short clip's frames repeat from its start.
    x = extractor(video)
    return [tile_or_crop(x, max(spec.feat_len, len(x)))]


def condition(
    streams: Sequence[np.ndarray] | None,
    spec: FeatureSpec,
    columns: int,
    window_columns: int,
    seed: int = 0,
    frames_per_column: float = 4.0,
) -> np.ndarray:
    """The transformer's condition for `columns` code columns of audio.

    Returns the model's condition [sample_size, D] (`prepare_features`; seeded uniform noise
    for "No Feats", `streams` None), or per-frame features [>= F * columns + 1, D] when
    `columns` exceed one training window (`window_columns`): the sampler then slides its
    window over them, F = `frames_per_column` video frames per code column (4 for the
    paper's codebook; `Video2Sound.feature_frames_per_column`).
    """
    if streams is None:
        return random_features(spec, np.random.default_rng(seed))
    if columns > window_columns:
        return per_frame_features(streams, math.ceil(frames_per_column * columns) + 1)
    return prepare_features(streams, spec)
