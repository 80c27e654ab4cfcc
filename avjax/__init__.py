"""avjax: JAX/Flax audio-visual generative models (SpecVQGAN, Sound2Sight, MCAV).

The entry points a user needs, importable from the package (each module is imported on
first use, so `import avjax` stays cheap):

  from avjax import Video2Sound, load_vocoder, write_wav
  v2s = Video2Sound.from_workdir("workdirs/demo/transformer")   # transformer + its codebook
  mels = v2s.sample_mels(feats[None], jax.random.PRNGKey(0))    # [1, 80, T] in [0, 1]
  waves = load_vocoder(None)(mels)                               # [1, 256 * T], 22050 Hz

| name | what |
|---|---|
| `load_run`, `read_config` | a trained or converted run's config and state (`avjax.runs`) |
| `Codec` | a codebook run: mel -> codes -> mel (`avjax.models.specvqgan.codec`) |
| `Video2Sound` | a transformer run: features -> codes -> mel |
| `load_vocoder`, `vocode_checked` | mel -> waveform (MelGAN, or Griffin-Lim) |
| `load_audio`, `write_wav`, `peak_normalize` | audio files (PyAV decode, 16-bit WAV) |
| `log_mel_spectrogram` | SpecVQGAN's [80, T] log-mel in [0, 1] of a 22050 Hz wave |
| `read_frames`, `write_video`, `replace_audio` | video files |
| `mel_figure`, `save_png` | labelled spectrogram pictures |
| `MelceptionScorer` | Melception features for FID / MKL / ISC |
| `load_npy`, `load_npz` | numpy files read with `allow_pickle=False` |
| `UserError` | what a mistake in the user's input raises (one line, names the file) |
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_run": "avjax.runs",
    "read_config": "avjax.runs",
    "Codec": "avjax.models.specvqgan.codec",
    "Video2Sound": "avjax.models.specvqgan.video2sound",
    "load_vocoder": "avjax.audio.vocoder",
    "vocode_checked": "avjax.audio.vocoder",
    "load_audio": "avjax.audio.io",
    "write_wav": "avjax.audio.io",
    "peak_normalize": "avjax.audio.io",
    "log_mel_spectrogram": "avjax.audio.mel",
    "read_frames": "avjax.video.io",
    "write_video": "avjax.video.io",
    "replace_audio": "avjax.video.io",
    "mel_figure": "avjax.images",
    "save_png": "avjax.images",
    "MelceptionScorer": "avjax.metrics.melception_scorer",
    "load_npy": "avjax.io_safety",
    "load_npz": "avjax.io_safety",
    "UserError": "avjax.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'avjax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
