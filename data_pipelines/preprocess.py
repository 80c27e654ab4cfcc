"""Videos -> SpecVQGAN's `melspec_10s_22050hz/<stem>_mel.npy` and `<stem>_audio.npy`.

Two modes:

- `official` (default) re-runs SpecVQGAN's `extract_audio_and_video.py` audio chain in-process
  with PyAV's bundled FFmpeg, then `extract_mel_spectrogram.py`:
  1. decode the audio track; its duration is what ffmpeg prints for the extracted WAV
     (rounded to centiseconds);
  2. re-encode the first `duration` seconds with the native AAC encoder at 98 kb/s;
  3. loop it `-stream_loop n` times, n = 10 // duration + 1, by stream copy: the AAC packets
     are repeated and decoded continuously, so every repeat starts with the encoder's
     1024-sample priming frame (the loop period is a whole number of AAC frames);
  4. cut to 10 s and re-encode with AAC 98 kb/s again;
  5. decode to s16 WAV, then `-ac 1 -ar 22050` (libswresample), read as `int16 / 32768`;
  6. zero-pad or trim to 220500 samples, log-mel (librosa, reflect padding), 860 frames.
  The AAC encoder runs with `aac_coder=fast`: that was the native encoder's default up to
  FFmpeg 4.4, the generation the features were most likely made with (the VAS clips were muxed by
  Lavf 57/58, FFmpeg 3.3/4.1); FFmpeg 5.0+ defaults to `twoloop` (FFmpeg commit 660d1d8e3b).
  On the ten shared VAS clips, `fast` gives mean |log-mel diff| 0.0062 on average and 0.0132
  at worst; the `twoloop` default gives 0.0107 and 0.0225 (re-running the official commands
  with a static FFmpeg 9 binary gives ~0.013 on the 6 s clip, where this reaches 0.0088).
- `fast`: PyAV decode to s16, `-ac 1 -ar 22050`, loop to 10 s; no re-encode (about 4x
  faster; a little further from the official features on clips shorter than 10 s).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import multiprocessing
import os
import pathlib
from fractions import Fraction

import av
import numpy as np
import tqdm

from avjax.audio import io as audio_io
from avjax.audio.mel import DEFAULT, MelSpec, fit_length, log_mel_spectrogram

MODES = ("official", "fast")
MEDIA_EXTENSIONS = frozenset(
    {
        *(".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".flv", ".mpg", ".mpeg", ".ts"),
        *(".3gp", ".ogv", ".wmv", ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus"),
    }
)
OUT_SUBDIR = "melspec_10s_22050hz"
AAC_BIT_RATE = 98_000
AAC_PRIMING = 1024  # FFmpeg's native AAC encoder delay (initial_padding), in samples
AAC_OPTIONS = {"aac_coder": "fast"}


def _aac_encode(wave: np.ndarray, rate: int, layout: str) -> tuple[list[av.Packet], bytes]:
    """`-c:a aac -b:a 98k` on a planar float wave [C, N]; returns the packets and extradata."""
    enc = av.CodecContext.create("aac", "w")
    enc.sample_rate, enc.layout, enc.format = rate, layout, "fltp"
    enc.bit_rate, enc.time_base = AAC_BIT_RATE, Fraction(1, rate)
    enc.options = dict(AAC_OPTIONS)
    enc.open()
    size, packets = enc.frame_size, []
    for start in range(0, wave.shape[1], size):
        chunk = np.ascontiguousarray(wave[:, start : start + size])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, enc.time_base
        packets.extend(enc.encode(frame))
    packets.extend(enc.encode(None))
    return packets, bytes(enc.extradata or b"")


def _aac_decode(packets: list[av.Packet], extradata: bytes, rate: int, layout: str) -> np.ndarray:
    """Decodes AAC packets with one continuous decoder, dropping the priming once -> [C, N]."""
    dec = av.CodecContext.create("aac", "r")
    dec.extradata, dec.sample_rate, dec.layout = extradata, rate, layout
    out = [f.to_ndarray() for p in packets for f in dec.decode(p)]
    out += [f.to_ndarray() for f in dec.decode(None)]
    return np.concatenate(out, axis=1)[:, AAC_PRIMING:]


def ffmpeg_duration(num_samples: int, rate: int) -> float:
    """The `Duration: HH:MM:SS.cc` ffmpeg prints for a WAV, in seconds (rounded to 10 ms)."""
    micros = num_samples * 1_000_000 // rate + 5000
    return (micros // 10_000) / 100.0


def official_chain_audio(path: str | os.PathLike, spec: MelSpec = DEFAULT) -> np.ndarray:
    """SpecVQGAN's ffmpeg audio chain (AAC re-encode, loop, cut, re-encode, mono) -> [N] float32.

    The result is the 10 s, `spec.sample_rate` s16-quantised wave `librosa.load` returns on
    the official `audio_10s_22050hz/*.wav` (a few hundred samples over 10 s: no trimming yet).
    """
    wave, rate, layout = audio_io.load_audio_native(path)
    if wave.shape[0] > 2:  # the native AAC encoder's layouts vary; fold surround to stereo
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout=layout)
        frame.sample_rate = rate
        wave, layout = audio_io.resample_frames([frame], rate, "stereo", "fltp").T, "stereo"
    target = spec.clip_seconds
    duration = ffmpeg_duration(wave.shape[1], rate)
    if duration <= 0:
        raise audio_io.AudioDecodeError(f"{os.fspath(path)}: audio shorter than 10 ms")
    wave = wave[:, : round(duration * rate)]  # -ss 0 -t duration
    packets, extradata = _aac_encode(wave, rate, layout)
    repeats = int(target // duration) + 1  # -stream_loop n plays the file n + 1 times
    looped = _aac_decode(packets * (repeats + 1), extradata, rate, layout)
    looped = looped[:, : round(target * rate)]  # -ss 0 -t 10
    packets, extradata = _aac_encode(np.ascontiguousarray(looped), rate, layout)
    cut = _aac_decode(packets, extradata, rate, layout)
    s16 = audio_io.resample_frames(
        [_planar_frame(cut, rate, layout)], rate, layout, "s16"
    )  # -f wav (pcm_s16le)
    mono = audio_io.s16_to_mono(s16, rate, layout, spec.sample_rate)  # -ac 1 -ar 22050
    return mono.astype(np.float32) / 32768.0


def _planar_frame(wave: np.ndarray, rate: int, layout: str) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave, np.float32), "fltp", layout)
    frame.sample_rate = rate
    return frame


def clip_audio(path: str | os.PathLike, mode: str = "official", spec: MelSpec = DEFAULT):
    """The 10 s wave the mel is computed from, as the official extractor saves it.

    Returns:
      [spec.num_samples] float32: `official` zero-pads/trims the chain's output as
      `get_spectrogram()` does; `fast` loops the decoded audio.
    """
    if mode == "official":
        return fit_length(official_chain_audio(path, spec), spec.num_samples, "pad")
    if mode == "fast":
        wave = audio_io.load_audio(path, spec.sample_rate)
        return fit_length(wave, spec.num_samples, "loop")
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")


def output_paths(path: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[str, str]:
    stem = pathlib.Path(path).stem
    folder = pathlib.Path(out_dir) / OUT_SUBDIR
    return str(folder / f"{stem}_mel.npy"), str(folder / f"{stem}_audio.npy")


def preprocess_file(
    path: str | os.PathLike, out_dir: str | os.PathLike, mode: str = "official"
) -> tuple[str, str]:
    """Writes `out_dir/melspec_10s_22050hz/<stem>_mel.npy` [80, 860] and `<stem>_audio.npy`.

    Args:
      path: a video or audio file PyAV can open.
      out_dir: output root.
      mode: "official" (AAC re-encode chain) or "fast" (s16 decode + loop).

    Returns:
      (mel_path, audio_path).

    Raises:
      FileNotFoundError, audio_io.AudioDecodeError: unreadable input (the message names it).
    """
    wave = clip_audio(path, mode)
    mel = log_mel_spectrogram(wave)
    mel_path, audio_path = output_paths(path, out_dir)
    os.makedirs(os.path.dirname(mel_path), exist_ok=True)
    _save_atomic(audio_path, wave.astype(np.float32))
    _save_atomic(mel_path, mel.astype(np.float32))  # last: its presence marks the file done
    return mel_path, audio_path


def _save_atomic(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def find_media(videos_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Media files under `videos_dir` (recursive), by extension, sorted."""
    root = pathlib.Path(videos_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"--videos: {root} is not a directory")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS)


@dataclasses.dataclass
class Summary:
    """What `preprocess_folder` did: counts and one `(path, error)` per failed file."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.done} done, {self.skipped} already done, {len(self.failed)} failed"]
        lines += [f"  FAILED {shown(path)}: {shown(error)}" for path, error in self.failed]
        return "\n".join(lines)


def _run_one(path: str, out_dir: str, mode: str) -> str | None:
    try:
        preprocess_file(path, out_dir, mode)
    except Exception as e:  # reported per file; one bad video must not stop the folder
        return f"{type(e).__name__}: {e}"
    return None


def preprocess_folder(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    mode: str = "official",
    num_workers: int = 1,
) -> Summary:
    """Preprocesses every media file under `videos_dir`; skips those already done.

    Stems must be unique across subfolders (the official layout is flat per class). Failures
    are collected, not raised; check `Summary.failed`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
    files = find_media(videos_dir)
    summary = Summary()
    todo = []
    for f in files:
        if all(os.path.exists(p) for p in output_paths(f, out_dir)):
            summary.skipped += 1
        else:
            todo.append(str(f))
    bar = tqdm.tqdm(total=len(todo), desc=f"preprocess ({mode})", unit="file")
    if num_workers <= 1:
        results = ((f, _run_one(f, str(out_dir), mode)) for f in todo)
        _collect(results, summary, bar)
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            futures = {pool.submit(_run_one, f, str(out_dir), mode): f for f in todo}
            _collect(((futures[x], x.result()) for x in cf.as_completed(futures)), summary, bar)
    bar.close()
    return summary


def _collect(results, summary: Summary, bar) -> None:
    for path, error in results:
        if error is None:
            summary.done += 1
        else:
            summary.failed.append((path, error))
            bar.write(f"FAILED {shown(path)}: {shown(error)}")
        bar.update(1)


SPLITS = ("train", "valid")


def shown(path: str | os.PathLike) -> str:
    """`path` printable on any terminal: bytes that are not UTF-8 appear as `\\xff`."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _id_bytes(clip_id: str) -> bytes:
    # File names that are not UTF-8 arrive as surrogate escapes (PEP 383); their bytes are the
    # name on disk, so the hash and the list line are those bytes.
    return clip_id.encode("utf-8", "surrogateescape")


def read_split_list(path: str | os.PathLike) -> list[str]:
    """The ids of one split list; lines that are not UTF-8 read back as the same file names."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _write_lines_atomic(path: pathlib.Path, lines: list[str]) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(f"{i}\n" for i in lines))
    os.replace(tmp, path)


def update_split_lists(
    out_dir: str | os.PathLike, valid_fraction: float = 0.1
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Writes or extends `vggsound_{train,valid}.txt` over OUT/melspec_10s_22050hz/*_mel.npy.

    A clip goes to valid when a hash of its id (sha1 of the file name's bytes, as a fraction
    of 2^32) is below `valid_fraction`, so the assignment never depends on the other clips.
    First run: with two or more clips at least one lands in each split. Later runs (the
    folder gained clips) keep every listed id where it is (ids in `vggsound_test.txt` too)
    and append only the new ones, by the same hash rule. Ids whose file names are not UTF-8
    are written as their raw bytes and read back as the same names (`read_split_list`).
    Each list is replaced atomically.

    Returns:
      (ids per split now, the ids added per split by this call).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    out = pathlib.Path(out_dir)
    ids = sorted(p.name.removesuffix("_mel.npy") for p in (out / OUT_SUBDIR).glob("*_mel.npy"))
    files = {s: out / f"vggsound_{s}.txt" for s in SPLITS}
    listed = {s: read_split_list(f) if f.exists() else [] for s, f in files.items()}
    first_run = not any(f.exists() for f in files.values())
    taken = {i for v in listed.values() for i in v}
    test_list = out / "vggsound_test.txt"
    if test_list.exists():
        taken.update(read_split_list(test_list))
    new = [i for i in ids if i not in taken]
    score = {i: int(hashlib.sha1(_id_bytes(i)).hexdigest()[:8], 16) / 2**32 for i in new}
    valid = [i for i in new if score[i] < valid_fraction]
    if first_run:
        if len(new) >= 2 and valid_fraction > 0 and not valid:
            valid = [min(new, key=score.get)]
        if valid and len(valid) == len(new):
            valid = valid[:-1]
    valid_set = set(valid)
    added = {"train": [i for i in new if i not in valid_set], "valid": valid}
    for split in SPLITS:
        if added[split] or (not files[split].exists() and new):
            _write_lines_atomic(files[split], listed[split] + added[split])
    counts = {s: len(listed[s]) + len(added[s]) for s in SPLITS}
    return counts, added


def write_split_lists(out_dir: str | os.PathLike, valid_fraction: float = 0.1) -> dict[str, int]:
    """`update_split_lists`, returning only the number of ids per split."""
    return update_split_lists(out_dir, valid_fraction)[0]
