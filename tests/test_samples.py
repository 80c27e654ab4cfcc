"""avjax.samples: the files sample.py, the app and the notebook write for a sample."""

import av
import numpy as np
import soundfile as sf
from PIL import Image

from avjax import images, samples
from avjax.video import io as video_io


def test_for_aac_resamples_only_rates_aac_lacks():
    wave = np.sin(2 * np.pi * 440 * np.arange(4400) / 4400).astype(np.float32)
    same, rate = samples.for_aac(wave[:2205], 22050)
    assert rate == 22050 and np.array_equal(same, wave[:2205])
    up, rate = samples.for_aac(wave, 4400)  # M3SO's tones: 4400 Hz
    assert rate == 22050 and up.shape == (22050,)
    # Still a 440 Hz tone: the strongest FFT bin of one second is bin 440.
    assert int(np.argmax(np.abs(np.fft.rfft(up)))) == 440


def test_write_audio_and_frames_samples(tmp_path):
    sr = 22050
    wave = 0.5 * np.sin(2 * np.pi * 330 * np.arange(sr) / sr).astype(np.float32)
    mel = np.linspace(0, 1, 80 * 16, dtype=np.float32).reshape(80, 16)
    clip = tmp_path / "clip.mp4"
    video_io.write_video(clip, np.zeros((43, 32, 32, 3), np.uint8), 21.5, wave * 0, sr)
    files = samples.write_audio_sample(tmp_path / "out" / "s0", mel, wave, sr, clip)
    assert sorted(files) == ["mp4", "png", "wav"]
    got, got_sr = sf.read(files["wav"])
    # 16-bit PCM, peak-normalised: the 0.5-peak tone comes back at 0.95.
    assert got_sr == sr and np.abs(got - wave * 1.9).max() < 1e-4
    png = np.asarray(Image.open(files["png"]))
    assert png.shape == (160, 32)  # 80 bins x 16 frames at 2x
    assert png[0, 0] > png[-1, 0]  # high mel bins (large values here) drawn at the top
    titled = samples.write_audio_sample(tmp_path / "out" / "s1", mel, wave, sr, title="s1")
    assert Image.open(titled["png"]).size == images.mel_figure_size(16, 80, 1)[::-1]
    with av.open(str(files["mp4"])) as c:
        # the shorter of the two: 1 s of sound keeps 21-22 of the 43 frames
        assert c.streams.video[0].frames in (21, 22) and c.streams.audio[0].rate == sr
        assert abs(float(c.duration / av.time_base) - 1.0) < 0.1

    frames = np.zeros((15, 10, 12, 3), np.uint8)
    for t in range(15):  # a block moving right (identical GIF frames would be merged)
        frames[t, 2:5, 3 + t % 6 : 6 + t % 6] = 255
    tone = np.sin(np.arange(6600) / 3).astype(np.float32)  # 1.5 s at 4400 Hz
    out = samples.write_frames_sample(tmp_path / "grid", frames, 10.0, tone, 4400, scale=3)
    gif = Image.open(out["gif"])
    assert gif.n_frames == 15 and gif.size == (36, 30)
    assert np.asarray(gif.convert("L"))[6:15, 9:18].min() == 255  # the block, 3x
    with av.open(str(out["mp4"])) as c:
        assert c.streams.audio[0].rate == 22050 and c.streams.video[0].width == 36


def test_seconds_to_code_columns():
    """`Video2Sound.num_columns`: whole columns of 16 (paper) or 4 (:tiny) mel frames."""
    import types

    import pytest

    from avjax.audio.mel import DEFAULT
    from avjax.models.specvqgan.video2sound import Video2Sound

    def v2s(crop, columns):
        codec = types.SimpleNamespace(crop_frames=crop, spec=DEFAULT, model=None)
        return Video2Sound(None, None, codec, feat_len=0, rows=5, window_columns=columns)

    paper, tiny = v2s(848, 53), v2s(64, 16)
    assert paper.num_columns() == 53 and paper.window_seconds == pytest.approx(848 * 256 / 22050)
    assert paper.num_columns(10.0) == 53  # 861 frames: 53 whole columns of 16
    assert paper.num_columns(20.0) == 107  # 1722.7 frames / 16
    assert tiny.num_columns(tiny.window_seconds) == 16  # exactly one window, no rounding loss
    assert tiny.num_columns(0.75) == 16 and tiny.num_columns(0.01) == 1
    with pytest.raises(ValueError, match="positive"):
        tiny.num_columns(0.0)
