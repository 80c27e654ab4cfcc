"""Waveform windows for MelGAN vocoder training, from the SpecVQGAN data layouts.

Each split entry of the log-mel layouts (`spec_folders`: VGGSound or VAS) has its waveform
beside its log-mel: `<id>_audio.npy` next to `<id>_mel.npy` (what `launch/preprocess.py`
and the synthetic dataset write, and the official `extract_mel_spectrogram.py`). With
`config.data.audio_source='media'` the waveform is decoded instead from
`<media_dir>/<entry>.<ext>` (or `<media_dir>/<basename>.<ext>`; ext wav, mp4, ...) with
`avjax.audio.io.load_audio` at 22050 Hz.

Per clip, as the official `AudioDataset`: peak-normalise to 0.95 (whole clip), train only:
scale by a random amplitude U(0.3, 1.0), then cut a window of `seq_len` samples at a random
offset (train; Grain-seeded, checkpointable) or at the centre (eval).

Batches: {"wave": [B, seq_len] float32} (+ "mask": [B] bool in eval; 0 for padding).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import grain
import numpy as np
from absl import logging

from avjax import io_safety
from avjax.audio import mel as mel_lib
from data_pipelines import base, pipeline, spec_folders
from data_pipelines.errors import MissingFileError, UserError

MEDIA_EXTS = (".wav", ".flac", ".mp4", ".mkv", ".webm", ".avi", ".mov", ".mp3", ".m4a", ".ogg")
MAX_EXTRA_FRAMES = 8  # audio may give a few more STFT frames than its (trimmed) log-mel


@dataclasses.dataclass(frozen=True)
class WaveSpec:
    """How waveforms are read and checked (from `config.data`)."""

    sample_rate: int = 22050
    hop_length: int = 256
    min_samples: int = 8192  # the window length
    audio_source: str = "npy"  # 'npy' | 'media'
    media_resample: bool = True  # media only: resample to sample_rate (else: refuse)


def _audio_npy(mel_path: str) -> str:
    if not mel_path.endswith("_mel.npy"):
        raise UserError(f"{mel_path}: expected a '<id>_mel.npy' path")
    return mel_path[: -len("_mel.npy")] + "_audio.npy"


def check_wave(wave: np.ndarray, path: str, spec: WaveSpec) -> np.ndarray:
    """Validates a decoded waveform: 1-D, finite, at least `spec.min_samples` long."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise UserError(f"{path}: audio has shape {wave.shape}, expected a mono waveform [N]")
    if not np.issubdtype(wave.dtype, np.floating):
        raise UserError(f"{path}: audio has dtype {wave.dtype}, expected float32/float64")
    wave = wave.astype(np.float32, copy=False)
    if not np.isfinite(wave).all():
        raise UserError(f"{path}: audio has {int((~np.isfinite(wave)).sum())} NaN/inf samples")
    if len(wave) < spec.min_samples:
        raise UserError(
            f"{path}: audio has {len(wave)} samples, fewer than the {spec.min_samples}-sample "
            "window (config.data.seq_len)"
        )
    return wave


class WaveSource:
    """Grain random-access source: `source[i] -> {"wave": [N] float32}` (raw, unnormalised).

    Attributes: `ids`, `paths` (audio files), `mel_paths`. The repr depends only on the
    split and ids, so a checkpointed iterator restores after the data moves.
    """

    def __init__(
        self,
        paths: Sequence[str],
        ids: Sequence[str],
        mel_paths: Sequence[str | None],
        spec: WaveSpec,
        split: str = "",
    ):
        self.paths, self.ids, self.mel_paths = tuple(paths), tuple(ids), tuple(mel_paths)
        self.spec, self.split = spec, split
        self._repr = f"WaveSource(split={split!r}, source={spec.audio_source!r}, {len(ids)} clips)"

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return self._repr

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        path = self.paths[int(index)]
        if self.spec.audio_source == "media":
            return {"wave": self._load_media(path)}
        return {"wave": self._load_npy(path, self.mel_paths[int(index)])}

    def _load_npy(self, path: str, mel_path: str | None) -> np.ndarray:
        if not os.path.isfile(path):
            raise MissingFileError(
                f"{path}: waveform missing (MelGAN training reads '<id>_audio.npy' beside each "
                "'<id>_mel.npy'; re-run launch/preprocess.py, or set "
                "config.data.audio_source='media' to decode the videos)"
            )
        wave = check_wave(io_safety.load_npy(path), path, self.spec)
        if mel_path is not None and os.path.isfile(mel_path):
            # The log-mel was computed from this audio: its frame count pins the sample rate.
            frames = io_safety.npy_shape(mel_path)[-1]
            audio_frames = 1 + len(wave) // self.spec.hop_length
            if not frames <= audio_frames <= frames + MAX_EXTRA_FRAMES:
                sr = self.spec.sample_rate
                raise UserError(
                    f"{path}: {len(wave)} samples give {audio_frames} STFT frames, but its "
                    f"log-mel {mel_path} has {frames} ({len(wave) / sr:.2f} s vs about "
                    f"{(frames - 1) * self.spec.hop_length / sr:.2f} s at {sr} Hz): the audio "
                    f"is not at {sr} Hz or does not belong to this log-mel"
                )
        return wave

    def _load_media(self, path: str) -> np.ndarray:
        from avjax.audio import io

        sr = self.spec.sample_rate
        if not self.spec.media_resample:
            frames = io.iter_audio_frames(path)
            first = next(frames, None)
            frames.close()
            rate = None if first is None else first.sample_rate
            if rate != sr:
                raise UserError(
                    f"{path}: audio is at {rate} Hz, expected {sr} Hz (set "
                    "config.data.media_resample=True to resample it)"
                )
        return check_wave(io.load_audio(path, sr), path, self.spec)


def _find_media(media_dir: pathlib.Path, entry: str) -> str | None:
    for stem in dict.fromkeys([entry, pathlib.PurePath(entry).name]):
        for ext in MEDIA_EXTS:
            p = media_dir / f"{stem}{ext}"
            if p.is_file():
                return str(p)
    return None


def open_wave_source(data_dir, split: str, config_data, spec: WaveSpec) -> WaveSource:
    """The split's clips (ids from the log-mel layout's split lists), as a `WaveSource`."""
    mels = spec_folders.open_spec_source(
        data_dir, split, layout=config_data.layout, labels_csv=config_data.labels_csv
    )
    if spec.audio_source == "npy":
        paths = [_audio_npy(p) for p in mels.paths]
        listing: dict[str, set[str]] = {}  # one listdir per folder, not a stat per clip
        for folder in {os.path.dirname(p) for p in paths}:
            listing[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        missing = [p for p in paths if os.path.basename(p) not in listing[os.path.dirname(p)]]
        if missing:
            raise MissingFileError(
                f"{missing[0]}: waveform missing ({len(missing)} of {len(paths)} clips of split "
                f"{split!r} have a '_mel.npy' but no '_audio.npy'; re-run launch/preprocess.py "
                "or set config.data.audio_source='media' with config.data.media_dir)"
            )
        return WaveSource(paths, mels.ids, mels.paths, spec, split)
    if spec.audio_source != "media":
        raise UserError(
            f"config.data.audio_source={spec.audio_source!r}; expected 'npy' or 'media'"
        )
    media_dir = config_data.media_dir
    if not media_dir:
        raise UserError(
            "config.data.audio_source='media' needs config.data.media_dir (the folder holding "
            "<entry>.mp4/.wav files, e.g. DIR/videos)"
        )
    media_dir = pathlib.Path(media_dir).expanduser()
    if not media_dir.is_dir():
        raise MissingFileError(f"config.data.media_dir: {media_dir} is not a directory")
    paths, ids = [], []
    for entry in mels.ids:
        found = _find_media(media_dir, entry)
        if found is None:
            raise MissingFileError(
                f"{media_dir / entry}.*: no media file for split entry {entry!r} "
                f"(looked for {', '.join(MEDIA_EXTS)})"
            )
        paths.append(found)
        ids.append(entry)
    return WaveSource(paths, ids, [None] * len(ids), spec, split)


def _normalise(wave: np.ndarray, peak: float) -> np.ndarray:
    """`peak * librosa.util.normalize(wave)`: max |wave| -> peak (silence left as is)."""
    m = float(np.max(np.abs(wave)))
    return wave * np.float32(peak / m) if m > 1e-12 else wave


class RandomWindow(grain.transforms.RandomMap):
    """Train: normalise to `peak`, random amplitude U(lo, hi), random `seq_len` window."""

    def __init__(self, seq_len: int, peak: float, amplitude: tuple[float, float] | None):
        self.seq_len, self.peak, self.amplitude = seq_len, peak, amplitude

    def random_map(self, element, rng: np.random.Generator):
        wave = _normalise(element["wave"], self.peak)
        if self.amplitude is not None:
            wave = wave * np.float32(rng.uniform(*self.amplitude))
        start = int(rng.integers(0, len(wave) - self.seq_len + 1))
        return {"wave": wave[start : start + self.seq_len].astype(np.float32)}


class CentreWindow(grain.transforms.Map):
    """Eval: normalise to `peak`, the centred `seq_len` window."""

    def __init__(self, seq_len: int, peak: float):
        self.seq_len, self.peak = seq_len, peak

    def map(self, element):
        wave = _normalise(element["wave"], self.peak)
        start = (len(wave) - self.seq_len) // 2
        return {"wave": wave[start : start + self.seq_len].astype(np.float32)}


def make_wave_dataset(
    source: WaveSource,
    *,
    global_batch_size: int,
    seed: int,
    seq_len: int,
    train: bool = True,
    peak: float = 0.95,
    amplitude: tuple[float, float] | None = (0.3, 1.0),
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 8,
) -> grain.IterDataset:
    """Process-local batches of windows, in `pipeline.make_dataset`'s order and sharding.

    Train: seeded global shuffle, repeat forever, `RandomWindow`, this process's rows of each
    global batch, batch.
    Eval: one ordered pass padded with silent clips to whole global batches, `CentreWindow`,
    with "mask" (False for the padding).
    """
    if train:
        transform = RandomWindow(seq_len, peak, amplitude)
    else:
        transform = CentreWindow(seq_len, peak)
    return pipeline.make_dataset(
        source,
        transform,
        filler={"wave": np.zeros(seq_len, np.float32)},
        global_batch_size=global_batch_size,
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
        read_threads=read_threads,
    )


def sample_clips(source: WaveSource, num: int, spec: mel_lib.MelSpec = mel_lib.DEFAULT):
    """The first `num` clips, fitted to 10 s: {"sample_mel": [n, 80, 860], "sample_wave"}."""
    waves = [mel_lib.fit_length(source[i]["wave"], spec.num_samples) for i in range(num)]
    mels = [mel_lib.log_mel_spectrogram(w, spec) for w in waves]
    hop_len = mels[0].shape[-1] * spec.hop_length
    return {
        "sample_mel": np.stack(mels).astype(np.float32),
        "sample_wave": np.stack([w[:hop_len] for w in waves]).astype(np.float32),
    }


def make_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """Train iterator, eval iterator factory and sample clips for `config.task='melgan'`."""
    del model_fns  # runs no model
    d = config.data
    data_dir = base.resolve_data_dir(config)
    spec = WaveSpec(
        sample_rate=d.sample_rate,
        hop_length=d.hop_length,
        min_samples=d.seq_len,
        audio_source=d.audio_source,
        media_resample=d.media_resample,
    )
    if d.seq_len % d.hop_length:
        raise UserError(
            f"config.data.seq_len={d.seq_len} must be a multiple of hop_length={d.hop_length}"
        )
    train_src = open_wave_source(data_dir, d.train_split, d, spec)
    logging.info("train audio: %s (%d clips) from %s", d.train_split, len(train_src), data_dir)
    amplitude = tuple(d.amplitude_range) if d.amplitude_range else None
    common = dict(
        global_batch_size=d.global_batch_size,
        seed=config.seed,
        seq_len=d.seq_len,
        peak=d.peak_norm,
        read_threads=d.read_threads,
    )
    train_iter = iter(make_wave_dataset(train_src, train=True, amplitude=amplitude, **common))
    eval_iter_fn, stats = None, {}
    if d.eval_split:
        eval_src = open_wave_source(data_dir, d.eval_split, d, spec)
        eval_iter_fn = lambda: iter(make_wave_dataset(eval_src, train=False, **common))
        if d.num_sample_clips:
            stats = sample_clips(eval_src, min(d.num_sample_clips, len(eval_src)))
    return base.Inputs(train_iter, eval_iter_fn, stats, (), data_dir, len(train_src))
