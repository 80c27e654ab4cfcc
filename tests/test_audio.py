"""Audio: decoding, the official preprocessing chain (parity with the shipped VAS mels),
fit_length, the JAX log-mel and the Griffin-Lim inverse."""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from avjax.audio import io as audio_io
from avjax.audio.griffin_lim import mel_to_wave
from avjax.audio.mel import fit_length, log_mel_spectrogram, log_mel_spectrogram_jax
from data_pipelines import preprocess

PARITY_TOLERANCE = 0.02  # mean |diff| per clip in the [0, 1] log-mel scale


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_video(path, seconds: float = 3.0, audio: bool = True, rate: int = 44100) -> None:
    """A tiny mp4 (mpeg4 video 32x32 at 10 fps, optional AAC stereo tone) written with PyAV."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        if audio:
            sound = out.add_stream("aac", rate=rate)
            sound.layout = "stereo"
            wave = np.stack([_tone(seconds, rate), _tone(seconds, rate, 660.0)])
            for start in range(0, wave.shape[1], 1024):
                chunk = np.ascontiguousarray(wave[:, start : start + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        for i in range(int(seconds * 10)):
            img = np.full((32, 32, 3), (i * 8) % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode(None))


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("media")
    write_video(root / "tone.mp4", 3.0)
    write_video(root / "silent_video.mp4", 1.0, audio=False)
    (root / "notes.mp4").write_text("this is a text file, not a video\n")
    audio_io.write_wav(root / "tone.wav", _tone(1.5, 22050), 22050)
    return root


# --- decoding ----------------------------------------------------------------------------


def test_load_audio_mp4_and_wav(media_dir):
    wave = audio_io.load_audio(media_dir / "tone.mp4")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 3 * 22050) < 2048  # AAC pads the last frame
    # s16-quantised: every sample is a multiple of 1 / 32768.
    np.testing.assert_array_equal(wave * 32768, np.round(wave * 32768))
    # Mono downmix of 440 / 660 Hz tones at 0.3 each: (L + R) / 2 peaks at <= 0.3.
    assert 0.2 < np.abs(wave[5000:-5000]).max() < 0.65
    wav = audio_io.load_audio(media_dir / "tone.wav", sample_rate=None)
    np.testing.assert_allclose(wav, _tone(1.5, 22050), atol=1.0 / 32768)


def test_load_audio_errors_name_the_file(media_dir):
    missing = media_dir / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        audio_io.load_audio(missing)
    with pytest.raises(audio_io.AudioDecodeError, match=r"notes\.mp4"):
        audio_io.load_audio(media_dir / "notes.mp4")
    with pytest.raises(audio_io.AudioDecodeError, match=r"silent_video\.mp4.*no audio stream"):
        audio_io.load_audio(media_dir / "silent_video.mp4")


def test_write_wav_roundtrip(tmp_path):
    wave = _tone(0.5, 16000)
    audio_io.write_wav(tmp_path / "a.wav", wave, 16000)
    back = audio_io.load_audio(tmp_path / "a.wav", sample_rate=None)
    np.testing.assert_allclose(back, wave, atol=1.0 / 32768)


# --- mel helpers ---------------------------------------------------------------------------


def test_fit_length_loop_pad_trim():
    x = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 7, "loop"), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fit_length(x, 5, "pad"), [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(x, 2, "loop"), [1, 2])
    with pytest.raises(ValueError, match="fit mode"):
        fit_length(x, 5, "mirror")


def test_jax_mel_matches_librosa():
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((2, 8000))).astype(np.float32)
    waves[1] *= np.linspace(0, 1, 8000, dtype=np.float32) ** 4  # reach the -100 dB floor
    ours = np.asarray(log_mel_spectrogram_jax(waves))
    ref = np.stack([log_mel_spectrogram(w, fit=False) for w in waves])
    assert ours.shape == ref.shape == (2, 80, 1 + 8000 // 256)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_griffin_lim_roundtrip():
    rate = 22050
    t = np.arange(2 * rate) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t)).astype(
        np.float32
    )
    mel = log_mel_spectrogram(wave, fit=False)
    recon = mel_to_wave(mel, n_iter=16)
    assert recon.shape == (mel.shape[1] * 256,) and recon.dtype == np.float32
    diff = np.abs(log_mel_spectrogram(recon, fit=False)[:, : mel.shape[1]] - mel).mean()
    assert diff < 0.1, diff


def test_numpy_mel_basis_and_griffin_lim_match_librosa():
    """avjax's numpy mel basis (bitwise) and Griffin-Lim (to float32 rounding) against
    librosa's, which they replace to keep librosa's imports out of training processes."""
    import librosa

    from avjax.audio import griffin_lim
    from avjax.audio.mel import DEFAULT, MelSpec, mel_basis

    for spec in (DEFAULT, MelSpec(sample_rate=16000, n_fft=512, n_mels=64, fmin=0.0, fmax=8e3)):
        ref = librosa.filters.mel(
            sr=spec.sample_rate,
            n_fft=spec.n_fft,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
        )
        np.testing.assert_array_equal(mel_basis(spec), ref)
    rng = np.random.default_rng(0)
    wave = _tone(1.0, 22050) + 0.01 * rng.standard_normal(22050).astype(np.float32)
    mag = np.abs(librosa.stft(wave, n_fft=1024, hop_length=256, pad_mode="reflect"))
    np.testing.assert_allclose(
        np.abs(griffin_lim.stft(wave, 1024, 256)), mag, rtol=1e-4, atol=1e-4 * mag.max()
    )
    for n_iter in (0, 3):
        ref = librosa.griffinlim(
            mag,
            n_iter=n_iter,
            n_fft=1024,
            hop_length=256,
            length=22050,
            random_state=3,
            pad_mode="reflect",
        )
        got = griffin_lim.griffinlim(mag, n_iter, 1024, 256, length=22050, seed=3)
        np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocess_folder_reports_bad_files(media_dir, tmp_path):
    videos = tmp_path / "videos"
    (videos / "cls").mkdir(parents=True)
    (videos / "cls" / "good.mp4").write_bytes((media_dir / "tone.mp4").read_bytes())
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated garbage")
    out = tmp_path / "out"
    summary = preprocess.preprocess_folder(videos, out, mode="official")
    assert summary.done == 1 and summary.skipped == 0
    assert [pathlib.Path(p).name for p, _ in summary.failed] == ["broken.mp4"]
    assert "broken.mp4" in str(summary)
    mel = np.load(out / "melspec_10s_22050hz" / "good_mel.npy")
    wave = np.load(out / "melspec_10s_22050hz" / "good_audio.npy")
    assert mel.shape == (80, 860) and mel.dtype == np.float32
    assert wave.shape == (220500,) and wave.dtype == np.float32
    assert mel.min() >= 0.0 and mel.max() <= 1.0
    # 3 s looped to 10 s: the tone is present in the last second too.
    assert np.abs(wave[-22050:]).max() > 0.1
    again = preprocess.preprocess_folder(videos, out, mode="official")
    assert again.done == 0 and again.skipped == 1 and len(again.failed) == 1


def test_preprocess_fast_mode_loops(media_dir, tmp_path):
    mel_path, audio_path = preprocess.preprocess_file(media_dir / "tone.mp4", tmp_path, "fast")
    wave = np.load(audio_path)
    assert wave.shape == (220500,) and np.load(mel_path).shape == (80, 860)
    n = len(audio_io.load_audio(media_dir / "tone.mp4"))
    np.testing.assert_array_equal(wave[n : 2 * n], wave[:n])


def test_preprocess_grown_folder_appends_to_split_lists(media_dir, tmp_path):
    """Re-running on a folder that gained clips lists the new ones; old ids stay put."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    tone = (media_dir / "tone.mp4").read_bytes()
    for i in range(6):
        (videos / f"clip{i}.mp4").write_bytes(tone)
    preprocess.preprocess_folder(videos, out, mode="fast")
    counts, added = preprocess.update_split_lists(out, 0.3)
    first = {s: (out / f"vggsound_{s}.txt").read_text().split() for s in ("train", "valid")}
    assert sorted(first["train"] + first["valid"]) == [f"clip{i}" for i in range(6)]
    assert first["valid"] and added == first and counts == {s: len(v) for s, v in first.items()}
    # the folder grows, including a name that is not UTF-8 (byte 0xff)
    odd = os.fsdecode(b"caf\xff")
    for name in ["clip6", "clip7", "clip8", "clip9", odd]:
        (videos / f"{name}.mp4").write_bytes(tone)
    summary = preprocess.preprocess_folder(videos, out, mode="fast")
    assert summary.done == 5 and summary.skipped == 6 and not summary.failed
    counts, added = preprocess.update_split_lists(out, 0.3)
    now = {s: preprocess.read_split_list(out / f"vggsound_{s}.txt") for s in ("train", "valid")}
    for s in ("train", "valid"):  # old entries first and unchanged, new ones appended
        assert now[s][: len(first[s])] == first[s]
        assert now[s][len(first[s]) :] == added[s]
    assert sorted(added["train"] + added["valid"]) == sorted(
        ["clip6", "clip7", "clip8", "clip9", odd]
    )
    # the same rule as the first run: valid iff sha1(name bytes) / 2^32 < valid_fraction
    for i in added["train"] + added["valid"]:
        h = int(hashlib.sha1(os.fsencode(i)).hexdigest()[:8], 16) / 2**32
        assert (i in added["valid"]) == (h < 0.3), i
    # nothing new: nothing changes
    before = {s: (out / f"vggsound_{s}.txt").read_bytes() for s in ("train", "valid")}
    assert preprocess.update_split_lists(out, 0.3) == (counts, {"train": [], "valid": []})
    assert before == {s: (out / f"vggsound_{s}.txt").read_bytes() for s in ("train", "valid")}
    # the non-UTF-8 id is written as its bytes and reads back to the same file
    raw = b"".join((out / f"vggsound_{s}.txt").read_bytes() for s in ("train", "valid"))
    assert b"caf\xff\n" in raw
    from data_pipelines import spec_folders

    split = "train" if odd in now["train"] else "valid"
    src = spec_folders.open_spec_source(out, split, "vggsound")
    i = src.ids.index(odd)
    assert src[i]["mel"].shape == (80, 860)
    assert "ids_sha1=" in repr(src)  # the digest hashes the raw bytes


def test_preprocess_cli_reports_added_clips(media_dir, tmp_path):
    """`launch/preprocess.py` on a grown folder (and a non-UTF-8 --out) prints what it added."""
    import subprocess
    import sys

    videos = tmp_path / "videos"
    videos.mkdir()
    tone = (media_dir / "tone.mp4").read_bytes()
    (videos / "a.mp4").write_bytes(tone)
    (videos / "b.mp4").write_bytes(tone)
    out = os.fsencode(tmp_path) + b"/out\xff"
    repo = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "launch" / "preprocess.py"), "--mode=fast"]
    cmd += [b"--videos=" + os.fsencode(videos), b"--out=" + out, "--valid_fraction=0.5"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = lambda: subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "out\\xff" in first.stdout and "(2 new)" in first.stdout
    (videos / "c.mp4").write_bytes(tone)
    again = run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 done, 2 already done" in again.stdout and "(1 new)" in again.stdout
    assert "added to vggsound_" in again.stdout and ": c\n" in again.stdout


@pytest.mark.parametrize("mode", ["official", "fast"])
def test_mel_parity_with_official_features(vas_samples, mode):
    """The shipped VAS mels are reproduced from their videos (mean |diff| <= 0.02 per clip)."""
    videos = sorted((vas_samples / "videos").glob("*/*.mp4"))
    assert len(videos) == 10, videos
    lines, errors = [], {}
    for video in videos:
        cls, stem = video.parent.name, video.stem
        ref = np.load(vas_samples / "features" / cls / "melspec_10s_22050hz" / f"{stem}_mel.npy")
        start = time.perf_counter()
        mel = log_mel_spectrogram(preprocess.clip_audio(video, mode))
        seconds = time.perf_counter() - start
        diff = np.abs(mel - ref)
        errors[f"{cls}/{stem}"] = float(diff.mean())
        lines.append(
            f"{cls}/{stem}: mean|diff| {diff.mean():.4f}  max {diff.max():.3f}  ({seconds:.2f} s)"
        )
    print(f"\nmel parity, mode={mode}\n" + "\n".join(lines))
    if mode == "official":  # the default mode carries the guarantee
        bad = {k: v for k, v in errors.items() if v > PARITY_TOLERANCE}
        assert not bad, f"clips above {PARITY_TOLERANCE}: {bad}"
    else:  # fast: no re-encode, so the looped 6 s clip is a little further off
        assert max(errors.values()) < 0.03, errors
