"""Real clips -> Sound2Sight's 64x64 RGB frames at 30 fps with per-frame 45x17 audio patches.

The AudioSet-Drums / YouTube-Painting form (paper: 64x64, 30 fps, 3 s clips; docs/sound2sight.md 3:
the audio encoder takes a 45 x 17 patch per frame). The official repository has no loader or
feature code for these datasets, so the audio settings are inferred from the shape:
  24,000 Hz mono, 800 samples per 1/30 s frame, centred STFT with n_fft 88 (-> 45 bins) and
  hop 50 (-> 1 + 800 / 50 = 17 columns), periodic Hann, zero padding, each frame on its own;
  scaled `log1p(|X|) / log1p(22)` (a full-scale on-bin sine -> 1), as `m3so.audio_features`.
24 kHz is the smallest common rate (CD-like bandwidth, 12 kHz) with a whole number of samples
per frame that the 17-column hop divides (16 hops of 50 = 800).

Frames come from `avjax.video.io.read_frames(path, 30, 64)` (FFmpeg `fps` then area scaling;
the frame is squashed to 64x64, not cropped); audio from `avjax.audio.io.load_audio(path,
24000)`, zero-padded or cut to T * 800 samples. Each clip is chopped into non-overlapping
windows of `num_frames` frames (a shorter tail is dropped; clips shorter than one window are
skipped), and written with `m3so_tfds.AvFramesBuilder` (kind "frames"). Whole clips, never
windows, are assigned to train / val / test, by a stable hash of their relative path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from avjax.audio import io as audio_io
from avjax.errors import UserError
from avjax.video import io as video_io
from data_pipelines import m3so, m3so_tfds

__all__ = [
    "AUDIO_SHAPE",
    "FPS",
    "IMAGE_SIZE",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "build_frames_dataset",
    "clip_features",
    "find_videos",
    "probe_clip",
    "split_videos",
    "window_starts",
]

log = logging.getLogger(__name__)

FPS = 30
IMAGE_SIZE = 64
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 800
N_FFT, HOP = 88, 50
AUDIO_SHAPE = (N_FFT // 2 + 1, 1 + SAMPLES_PER_FRAME // HOP)  # (45, 17)
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".flv", ".mpg"})


def clip_features(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One clip -> {"frames": uint8 [T, 64, 64, 3], "waveform": f32 [T * 800], "audio": f32
    [T, 45, 17]}, T = frames at 30 fps.

    Raises FileNotFoundError / ValueError (naming the file) for unreadable video or audio.
    """
    frames = video_io.read_frames(path, FPS, IMAGE_SIZE)
    wave = audio_io.load_audio(path, SAMPLE_RATE)
    n = len(frames) * SAMPLES_PER_FRAME
    wave = np.pad(wave[:n], (0, max(0, n - len(wave)))).astype(np.float32)
    audio = m3so.audio_features(wave, SAMPLES_PER_FRAME, N_FFT, HOP)
    return {"frames": frames, "waveform": wave, "audio": audio}


def probe_clip(path: str | os.PathLike, num_frames: int) -> str | None:
    """Why `path` cannot give a window (None if it may): read from the container header only.

    Catches what makes most clips unusable (not a media file, no video or audio stream, a
    known duration shorter than one window; a name that is not UTF-8, which the TFDS ids
    cannot hold) without decoding; a clip that passes can still fail while decoding.
    """
    import av

    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename it"
    try:
        with av.open(name) as c:
            if not c.streams.video:
                return "no video stream"
            if not c.streams.audio:
                return "no audio stream"
            v = c.streams.video[0]
            seconds = float(v.duration * v.time_base) if v.duration else (c.duration or 0) / 1e6
    except (OSError, ValueError, av.error.FFmpegError) as e:
        return f"not a readable video ({type(e).__name__}: {e})"
    if seconds and seconds * FPS < num_frames - 1:
        return f"{seconds:.2f} s is about {seconds * FPS:.0f} frames < num_frames={num_frames}"
    return None


def window_starts(total: int, num_frames: int) -> range:
    """Starts of the non-overlapping `num_frames` windows of a `total`-frame clip."""
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames} must be >= 1")
    return range(0, total - num_frames + 1, num_frames)


def find_videos(videos_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Video files under `videos_dir` (recursive), sorted by relative path."""
    root = pathlib.Path(videos_dir)
    if not root.is_dir():
        raise UserError(f"--videos: {root} is not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)


def split_videos(
    rel_paths: list[str], valid_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Whole clips to splits: ordered by md5 of the relative path, the first round(f * N) to
    val, the next to test (at least one each when the fraction is > 0 and N >= 3)."""
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise UserError(
            f"--valid_fraction={valid_fraction} and --test_fraction={test_fraction} must be >= 0 "
            "and sum to less than 1"
        )
    order = sorted(rel_paths, key=lambda p: hashlib.md5(p.encode()).hexdigest())
    n = len(order)

    def count(f):
        return 0 if f == 0 else max(round(f * n), 1 if n >= 3 else 0)

    nv, nt = count(valid_fraction), count(test_fraction)
    val, test, train = order[:nv], order[nv : nv + nt], order[nv + nt :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def build_frames_dataset(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_frames: int = 45,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    progress: bool = False,
    report: Callable[[str, str], None] | None = None,
) -> tuple[m3so_tfds.AvFramesBuilder, dict[str, Any]]:
    """Writes `out_dir/avjax_av_frames/1.0.0` from the videos under `videos_dir`.

    Args:
      videos_dir: folder searched recursively; the first path component below it is the class
        (e.g. VAS `videos/<class>/<id>.mp4`), or none for a flat folder.
      out_dir: TFDS data_dir (`--config.data.dir`).
      num_frames: frames per window; Sound2Sight's 64x64 configs need n_past + n_eval = 45.
      valid_fraction, test_fraction: shares of clips in val / test.
      progress: tqdm bar over clips.
      report: called with (relative path, reason) for each skipped clip, as it is skipped.

    Returns:
      (the prepared builder, summary {"clips", "windows" per split, "skipped": [(path, why)]}).

    Raises:
      UserError: no video files, bad fractions, or no usable clip (then nothing is written;
        each clip's reason went to `report` and the log first).
    """
    root = pathlib.Path(videos_dir)
    if num_frames < 1:
        raise UserError(f"--num_frames={num_frames} must be >= 1")
    paths = find_videos(root)
    if not paths:
        raise UserError(
            f"--videos: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {root}"
        )
    rel = [p.relative_to(root).as_posix() for p in paths]
    splits = split_videos(rel, valid_fraction, test_fraction)
    summary: dict[str, Any] = {"clips": len(rel), "windows": {}, "skipped": []}

    def skip(r: str, why: str) -> None:
        summary["skipped"].append((r, why))
        if report is not None:
            report(r, why)
        else:
            log.warning("skipping %s: %s", r, why)

    # Whole clips are split over every file found (stable as files come and go); the ones
    # that cannot give a window are dropped before anything is written.
    for r in rel:
        why = probe_clip(root / r, num_frames)
        if why is not None:
            skip(r, why)
    bad = {r for r, _ in summary["skipped"]}
    splits = {k: [r for r in v if r not in bad] for k, v in splits.items()}
    rel = [r for r in rel if r not in bad]
    if not rel:
        raise UserError(
            f"--videos: none of the {summary['clips']} video files under {root} is usable "
            "(reasons above); nothing written"
        )
    classes = sorted({r.split("/")[0] for r in rel if "/" in r})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rel), desc="clips", unit="clip")

    def gen_split(split: str):
        def gen() -> Iterator[tuple[str, dict[str, Any]]]:
            summary["windows"][split] = 0
            for r in splits[split]:
                try:
                    feats = clip_features(root / r)
                except (OSError, ValueError) as e:
                    skip(r, str(e))
                    continue
                finally:
                    if bar is not None:
                        bar.update(1)
                T = len(feats["frames"])
                starts = window_starts(T, num_frames)
                if not starts:
                    skip(r, f"{T} frames < num_frames={num_frames}")
                label = classes.index(r.split("/")[0]) if "/" in r else -1
                for s in starts:
                    e = s + num_frames
                    key = f"{r.rsplit('.', 1)[0]}@{s:05d}"
                    summary["windows"][split] += 1
                    yield (
                        key,
                        {
                            "frames": feats["frames"][s:e],
                            "audio": feats["audio"][s:e],
                            "waveform": feats["waveform"][
                                s * SAMPLES_PER_FRAME : e * SAMPLES_PER_FRAME
                            ],
                            "block": np.zeros(4, np.int32),
                            "label": label,
                            "id": key,
                        },
                    )

        return gen

    metadata = {
        "kind": "frames",
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "samples_per_frame": SAMPLES_PER_FRAME,
        "stft": {"n_fft": N_FFT, "hop": HOP, "scale": "log1p(|X|)/log1p(22)"},
        "num_frames": num_frames,
        "class_names": classes,
        "videos": os.fspath(root.resolve()),
        "files_md5": hashlib.md5("\n".join(rel).encode()).hexdigest(),
        "split_clips": {k: len(v) for k, v in splits.items()},
    }
    builder = m3so_tfds.AvFramesBuilder(
        splits={k: gen_split(k) for k, v in splits.items() if v},
        num_frames=num_frames,
        frame_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        audio_shape=AUDIO_SHAPE,
        samples_per_frame=SAMPLES_PER_FRAME,
        metadata=metadata,
        data_dir=os.fspath(out_dir),
    )
    made = _missing_dirs(pathlib.Path(out_dir), pathlib.Path(builder.data_dir))
    try:
        m3so_tfds.prepare(builder)
    except Exception as e:
        empty = [k for k, n in summary["windows"].items() if n == 0]
        if not empty:
            raise
        for d in made:  # only folders this call created: no half-written dataset stays
            shutil.rmtree(d, ignore_errors=True)
        raise UserError(
            f"--videos: the {'/'.join(empty)} split got no window from its clips "
            "(reasons above); nothing written"
        ) from e
    finally:
        if bar is not None:
            bar.close()
    return builder, summary


def _missing_dirs(out_dir: pathlib.Path, data_dir: pathlib.Path) -> list[pathlib.Path]:
    """The outermost folders on the way to `data_dir` (and TFDS's `out_dir/downloads`) that
    do not exist yet."""
    made = []
    for target in (data_dir, out_dir / "downloads"):
        top = None
        for d in [target, *target.parents]:
            if d.exists():
                break
            top = d
        if top is not None and top not in made:
            made.append(top)
    return made
