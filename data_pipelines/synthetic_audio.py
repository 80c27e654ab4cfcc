"""The project's embedded default data: deterministic synthetic 10 s clips in the VAS layout.

`make_synthetic_dataset(out)` writes, with no downloads,
  `out/<class>/melspec_10s_22050hz/<id>_mel.npy`   [80, 860] float32 in [0, 1]
  `out/<class>/melspec_10s_22050hz/<id>_audio.npy` [220500] float32 waveform at 22050 Hz
  `out/vas_train.txt`, `out/vas_valid.txt`          lines `<class>/<id>`
so that `spec_folders.open_spec_source(out, split)` reads it unchanged. Five classes with
clearly different spectro-temporal patterns: vibrato tones, chirps, noise bursts, click
trains and harmonic stacks.

`add_synthetic_features(out, kind)` adds per-frame "visual" features in the official layout
(`<class>/feature_resnet50_dim2048_21.5fps/<id>.pkl` [215, 2048], or the BN-Inception rgb
[215, 1024] + flow [216, 1024] pair), so the transformer's `:tiny` configs train on embedded
data: a sparse non-negative class prototype scaled frame by frame by the clip's loudness at
that video frame (21.5 fps = 4 mel hops), plus faint noise; deterministic.

`add_synthetic_videos(out)` gives the validation clips a picture to go with their sound,
`<class>/videos/<id>.mp4` (`synth_video`: a disc in the class's colour whose size follows
the loudness and whose height follows the pitch, 21.5 fps, with the clip's audio), so
video-to-sound runs end to end on embedded data; the features beside the videos condition
the transformer (`data_pipelines.features.video_feature_paths` finds them).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avjax.audio.mel import DEFAULT as MEL_DEFAULT
from avjax.audio.mel import log_mel_spectrogram

__all__ = [
    "CLASSES",
    "MARKER",
    "add_synthetic_features",
    "add_synthetic_videos",
    "make_synthetic_dataset",
    "synth_clip",
    "synth_features",
    "synth_video",
]

SR = MEL_DEFAULT.sample_rate
NUM_SAMPLES = MEL_DEFAULT.num_samples  # 220500
MARKER = "_SYNTHETIC_COMPLETE.json"
_FORMAT_VERSION = 1


def _t() -> np.ndarray:
    return np.arange(NUM_SAMPLES, dtype=np.float64) / SR


def _vibrato_tone(rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(220.0, 880.0)
    rate, depth = rng.uniform(4.0, 7.0), rng.uniform(0.01, 0.03)
    t = _t()
    inst_f = f0 * (1.0 + depth * np.sin(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(inst_f) / SR
    env = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    return env * (np.sin(phase) + 0.3 * np.sin(2 * phase))


def _chirp(rng: np.random.Generator) -> np.ndarray:
    period = rng.uniform(0.8, 2.5)
    f_lo, f_hi = rng.uniform(150.0, 400.0), rng.uniform(2500.0, 6000.0)
    t = _t()
    u = (t % period) / period  # position inside each sweep
    if rng.random() < 0.5:
        u = 1.0 - u  # downward sweeps
    inst_f = f_lo * (f_hi / f_lo) ** u
    phase = 2 * np.pi * np.cumsum(inst_f) / SR
    return np.sin(phase) * np.minimum(1.0, 20 * np.minimum(u, 1.0 - u))


def _noise_bursts(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(NUM_SAMPLES)
    n_bursts = int(rng.integers(4, 12))
    noise = rng.standard_normal(NUM_SAMPLES)
    # A crude colour: one-pole low-pass with a per-clip coefficient.
    a = rng.uniform(0.0, 0.9)
    coloured = noise.copy()
    coloured[1:] = noise[1:] + a * noise[:-1]
    t_rel = np.arange(NUM_SAMPLES) / SR
    for onset in np.sort(rng.uniform(0.0, 9.5, n_bursts)):
        start = int(onset * SR)
        decay = rng.uniform(0.05, 0.4)
        env = np.exp(-t_rel[: NUM_SAMPLES - start] / decay)
        out[start:] += env * coloured[start:]
    return 0.3 * out


def _click_train(rng: np.random.Generator) -> np.ndarray:
    rate = rng.uniform(2.0, 20.0)
    f_res, q = rng.uniform(800.0, 4000.0), rng.uniform(0.002, 0.01)
    clicks = np.arange(0.0, 10.0, 1.0 / rate) + rng.normal(0.0, 0.002, int(np.ceil(10.0 * rate)))
    pulse_t = np.arange(int(0.05 * SR)) / SR
    pulse = np.exp(-pulse_t / q) * np.sin(2 * np.pi * f_res * pulse_t)
    out = np.zeros(NUM_SAMPLES + len(pulse))
    for c in clicks[(clicks >= 0) & (clicks < 10.0)]:
        i = int(c * SR)
        out[i : i + len(pulse)] += pulse
    return out[:NUM_SAMPLES]


def _harmonic_stack(rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(90.0, 300.0)
    n_harm = int(rng.integers(6, 14))
    t = _t()
    z1 = np.exp(2j * np.pi * f0 * t)  # harmonic k is Im(z1**k * e^{i phi_k}) / k
    zk = np.ones_like(z1)
    tone = np.zeros(NUM_SAMPLES)
    for k in range(1, n_harm + 1):
        zk *= z1
        tone += (zk * np.exp(1j * rng.uniform(0, 2 * np.pi))).imag / k
    tremolo = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * t)
    return tremolo * tone / np.log(n_harm + 1)


CLASSES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "chirp": _chirp,
    "click_train": _click_train,
    "harmonic_stack": _harmonic_stack,
    "noise_burst": _noise_bursts,
    "vibrato_tone": _vibrato_tone,
}
_CLASS_NAMES = tuple(sorted(CLASSES))


def synth_clip(class_name: str, seed: int, index: int) -> np.ndarray:
    """One deterministic synthetic clip.

    Args:
      class_name: a key of `CLASSES`.
      seed: dataset seed.
      index: clip index (distinct clips get independent random streams).

    Returns:
      [220500] float32 waveform (10 s at 22050 Hz), peak 0.5-0.9, plus faint background noise.
    """
    if class_name not in CLASSES:
        raise ValueError(f"unknown synthetic class {class_name!r}; expected one of {_CLASS_NAMES}")
    rng = np.random.default_rng([seed, _CLASS_NAMES.index(class_name), index])
    wave = CLASSES[class_name](rng)
    wave = wave / max(np.abs(wave).max(), 1e-8) * rng.uniform(0.5, 0.9)
    wave = wave + 1e-3 * rng.standard_normal(NUM_SAMPLES)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _params(num_train: int, num_valid: int, seed: int) -> dict:
    return {
        "format_version": _FORMAT_VERSION,
        "num_train": num_train,
        "num_valid": num_valid,
        "seed": seed,
        "classes": list(_CLASS_NAMES),
    }


def _read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write(tmp: Path, num_train: int, num_valid: int, seed: int) -> None:
    splits: dict[str, list[str]] = {"train": [], "valid": []}
    for k in range(num_train + num_valid):
        cls = _CLASS_NAMES[k % len(_CLASS_NAMES)]
        vid = f"video_{k:05d}"
        wave = synth_clip(cls, seed, k)
        mel = log_mel_spectrogram(wave)
        d = tmp / cls / "melspec_10s_22050hz"
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{vid}_mel.npy", mel.astype(np.float32))
        np.save(d / f"{vid}_audio.npy", wave)
        splits["train" if k < num_train else "valid"].append(f"{cls}/{vid}")
    for name, lines in splits.items():
        (tmp / f"vas_{name}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    (tmp / MARKER).write_text(json.dumps(_params(num_train, num_valid, seed), indent=1))


def make_synthetic_dataset(
    out_dir: str | os.PathLike, num_train: int = 64, num_valid: int = 16, seed: int = 0
) -> Path:
    """Writes the synthetic dataset (VAS layout) to `out_dir`; idempotent and crash-safe.

    Clip k (ids `video_00000`...) has class `sorted(CLASSES)[k % 5]`; the first `num_train`
    clips form `vas_train.txt`, the rest `vas_valid.txt`. Files are written to a temporary
    sibling folder and renamed into place, and a marker with the parameters is written last;
    an existing `out_dir` with a matching marker is returned untouched, one with a different
    marker is replaced, and a non-empty folder without the marker is refused.

    Args:
      out_dir: destination folder.
      num_train, num_valid: clip counts per split (num_train >= 1).
      seed: dataset seed; equal seeds give byte-identical files.

    Returns:
      `out_dir` as a Path.
    """
    out = Path(out_dir)
    if num_train < 1 or num_valid < 0:
        raise ValueError(f"num_train={num_train}, num_valid={num_valid}: need >= 1 and >= 0")
    want = _params(num_train, num_valid, seed)
    if _read_marker(out) == want:
        return out
    if out.exists() and _read_marker(out) is None and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: exists, is not empty and has no {MARKER}; refusing to overwrite it with "
            "synthetic data (choose another out_dir)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write(tmp, num_train, num_valid, seed)
        if out.exists():  # ours with other parameters, or empty: move aside, then replace
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "d")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:  # a concurrent writer won the race
            if _read_marker(out) != want:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


FEATURE_FOLDERS = {
    "resnet50": (("feature_resnet50_dim2048_21.5fps", 2048, 215),),
    "bninception": (
        ("feature_rgb_bninception_dim1024_21.5fps", 1024, 215),
        ("feature_flow_bninception_dim1024_21.5fps", 1024, 216),  # one row more, as official
    ),
}
_FEATURES_VERSION = 1


def synth_features(
    mel: np.ndarray, class_name: str, seed: int, index: int, dim: int = 2048, frames: int = 215
) -> np.ndarray:
    """Class-correlated per-frame features of one synthetic clip.

    Args:
      mel: the clip's log-mel [80, T] in [0, 1] (video frame t sits at mel column 4 t).
      class_name, seed, index: as `synth_clip`.
      dim, frames: feature width and rows.

    Returns:
      [frames, dim] float32 >= 0: `proto_class * (0.5 + loudness_t) + 0.05 * noise`.
    """
    c = _CLASS_NAMES.index(class_name)
    proto_rng = np.random.default_rng([seed, 2048, c])
    proto = proto_rng.gamma(1.0, 1.0, dim) * (proto_rng.random(dim) < 0.25)
    cols = np.minimum(np.arange(frames) * 4, mel.shape[1] - 1)
    loudness = mel[:, cols].mean(axis=0)
    noise = np.random.default_rng([seed, 2048, c, index]).random((frames, dim))
    return (proto[None] * (0.5 + loudness[:, None]) + 0.05 * noise).astype(np.float32)


def _features_marker(kind: str) -> str:
    return f"_SYNTHETIC_FEATURES_{kind}.json"


def add_synthetic_features(root: str | os.PathLike, kind: str = "resnet50") -> Path:
    """Writes the per-frame features of every clip of a `make_synthetic_dataset` folder.

    Idempotent (a marker is written last; files are written under temporary names and
    renamed). The mel files are untouched. Returns `root`.

    Args:
      root: a folder made by `make_synthetic_dataset`.
      kind: "resnet50" ([215, 2048]) or "bninception" (rgb [215, 1024] + flow [216, 1024]).
    """
    root = Path(root)
    if kind not in FEATURE_FOLDERS:
        raise ValueError(
            f"unknown feature kind {kind!r}; expected one of {sorted(FEATURE_FOLDERS)}"
        )
    params = _read_marker(root)
    if params is None:
        raise FileNotFoundError(f"{root}: not a synthetic dataset (no {MARKER})")
    want = {"version": _FEATURES_VERSION, "kind": kind, "dataset": params}
    marker = root / _features_marker(kind)
    try:
        if json.loads(marker.read_text()) == want:
            return root
    except (OSError, ValueError):
        pass
    seed = params["seed"]
    for k in range(params["num_train"] + params["num_valid"]):
        cls, vid = _CLASS_NAMES[k % len(_CLASS_NAMES)], f"video_{k:05d}"
        mel = np.load(root / cls / "melspec_10s_22050hz" / f"{vid}_mel.npy")
        full = synth_features(mel, cls, seed, k, dim=2048, frames=216)
        start = 0
        for folder, dim, frames in FEATURE_FOLDERS[kind]:
            d = root / cls / folder
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{vid}.pkl.tmp-{os.getpid()}"
            tmp.write_bytes(pickle.dumps(full[:frames, start : start + dim], protocol=4))
            os.replace(tmp, d / f"{vid}.pkl")
            start += dim
    marker.write_text(json.dumps(want, indent=1))
    return root


VIDEO_FPS = 21.5  # the feature rate: video frame t sits at mel column 4 t
VIDEO_SIZE = 96
VIDEO_DIR = "videos"
_VIDEOS_VERSION = 1
# Class -> RGB colour of its disc.
_COLOURS = {
    "chirp": (255, 150, 40),
    "click_train": (80, 220, 90),
    "harmonic_stack": (70, 140, 255),
    "noise_burst": (225, 225, 225),
    "vibrato_tone": (240, 70, 90),
}


def synth_video(mel: np.ndarray, class_name: str, size: int = VIDEO_SIZE) -> np.ndarray:
    """A picture for a synthetic clip: one frame per 4 mel columns (21.5 fps).

    A disc in the class's colour on a dark background; its radius follows the loudness of
    the frame (mean log-mel) and its height the spectral centroid (high pitch higher).

    Args:
      mel: the clip's log-mel [80, T] in [0, 1].
      class_name: a key of `CLASSES` (the colour).
      size: frame side in pixels (even, as H.264 wants).

    Returns:
      uint8 RGB frames [ceil(T / 4), size, size, 3].
    """
    if class_name not in _COLOURS:
        raise ValueError(f"unknown synthetic class {class_name!r}; expected one of {_CLASS_NAMES}")
    cols = np.asarray(mel, np.float32)[:, ::4]  # [80, frames]
    loud = cols.mean(axis=0)
    bins = np.arange(cols.shape[0], dtype=np.float32)[:, None]
    centroid = (bins * cols).sum(axis=0) / np.maximum(cols.sum(axis=0), 1e-6) / cols.shape[0]
    radius = size * (0.08 + 0.35 * np.clip(loud / 0.6, 0.0, 1.0))  # [frames]
    cy = size * (0.85 - 0.7 * np.clip(centroid, 0.0, 1.0))
    yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
    dist = np.sqrt((xx[None] - size / 2) ** 2 + (yy[None] - cy[:, None, None]) ** 2)
    alpha = np.clip(radius[:, None, None] - dist, 0.0, 1.0)[..., None]  # anti-aliased edge
    colour = np.asarray(_COLOURS[class_name], np.float32)
    frames = 20.0 * (1.0 - alpha) + colour * alpha
    return (frames + 0.5).astype(np.uint8)


def add_synthetic_videos(root: str | os.PathLike, split: str = "valid") -> list[Path]:
    """Writes `<class>/videos/<id>.mp4` (`synth_video` + the clip's audio) for one split.

    Idempotent (a marker is written last; each file is written under a temporary name and
    renamed). Returns the videos of the split, in the split list's order.
    """
    from avjax.video import io as video_io

    root = Path(root)
    params = _read_marker(root)
    if params is None:
        raise FileNotFoundError(f"{root}: not a synthetic dataset (no {MARKER})")
    lines = (root / f"vas_{split}.txt").read_text().split()
    paths = [root / line.split("/")[0] / VIDEO_DIR / f"{line.split('/')[1]}.mp4" for line in lines]
    want = {"version": _VIDEOS_VERSION, "split": split, "size": VIDEO_SIZE, "dataset": params}
    marker = root / f"_SYNTHETIC_VIDEOS_{split}.json"
    try:
        if json.loads(marker.read_text()) == want and all(p.is_file() for p in paths):
            return paths
    except (OSError, ValueError):
        pass
    for line, path in zip(lines, paths):
        cls, vid = line.split("/")
        mel_dir = root / cls / "melspec_10s_22050hz"
        frames = synth_video(np.load(mel_dir / f"{vid}_mel.npy"), cls)
        wave = np.load(mel_dir / f"{vid}_audio.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{vid}.tmp-{os.getpid()}.mp4"  # the suffix picks the muxer
        video_io.write_video(tmp, frames, VIDEO_FPS, wave, SR)
        os.replace(tmp, path)
    marker.write_text(json.dumps(want, indent=1))
    return paths
