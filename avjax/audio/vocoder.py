"""Mel -> waveform: a trained MelGAN generator, or Griffin-Lim when none is given.

`load_vocoder(None)` inverts spectrograms with Griffin-Lim (slow, phasey, needs no weights);
`load_vocoder(path)` loads a MelGAN run (trained with `configs/melgan_vggsound.py` or
imported with `launch/convert_checkpoint.py --kind melgan`). `vocode_checked` vocodes and
re-does with Griffin-Lim any output that is not sound at all (`output_problem`: an
undertrained MelGAN gives a constant, DC, wave), saying so.
"""

from __future__ import annotations

import abc
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from avjax.audio import griffin_lim
from avjax.audio import mel as mel_lib
from avjax.errors import UserError


class Vocoder(abc.ABC):
    """Base class: `vocoder(mel01 [B, 80, T]) -> float32 [B, 256 * T]` at 22050 Hz."""

    spec: mel_lib.MelSpec = mel_lib.DEFAULT
    name: str = "vocoder"

    def _check(self, mel01) -> np.ndarray:
        mel01 = np.asarray(mel01, np.float32)
        if mel01.ndim == 2:
            raise ValueError(
                f"expected a batch of mels [B, {self.spec.n_mels}, T], got shape {mel01.shape}; "
                "add a leading batch axis (mel[None])"
            )
        if mel01.ndim != 3 or mel01.shape[1] != self.spec.n_mels:
            raise ValueError(f"expected mels [B, {self.spec.n_mels}, T], got shape {mel01.shape}")
        if not np.all(np.isfinite(mel01)):
            raise ValueError("mel spectrogram contains NaN or inf")
        return mel01

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    @property
    def hop_length(self) -> int:
        return self.spec.hop_length

    @abc.abstractmethod
    def __call__(self, mel01) -> np.ndarray:
        """[B, n_mels, T] mels in [0, 1] -> float32 waveforms [B, hop_length * T]."""


class GriffinLimVocoder(Vocoder):
    """Griffin-Lim inversion of each mel in the batch (`avjax.audio.griffin_lim`)."""

    name = "griffin_lim"

    def __init__(self, n_iter: int = 32, seed: int = 0, spec: mel_lib.MelSpec = mel_lib.DEFAULT):
        self.n_iter, self.seed, self.spec = n_iter, seed, spec

    def __call__(self, mel01) -> np.ndarray:
        """[B, 80, T] in [0, 1] -> float32 [B, 256 * T]."""
        mel01 = self._check(mel01)
        waves = [
            griffin_lim.mel_to_wave(m, self.spec, n_iter=self.n_iter, seed=self.seed) for m in mel01
        ]
        return np.stack(waves).astype(np.float32).reshape(len(mel01), -1)


class MelGANVocoder(Vocoder):
    """A MelGAN generator, jitted (one compile per mel length and batch size)."""

    name = "melgan"

    def __init__(
        self, generator, params, dtype=jnp.float32, spec: mel_lib.MelSpec = mel_lib.DEFAULT
    ):
        if generator.hop_length != spec.hop_length:
            raise ValueError(
                f"MelGAN upsampling ratios {tuple(generator.ratios)} give hop "
                f"{generator.hop_length}, but the mel transform's hop is {spec.hop_length}"
            )
        self.generator = generator.clone(dtype=dtype)
        self.params = jax.tree.map(jnp.asarray, params)
        self.dtype, self.spec = jnp.dtype(dtype), spec
        self._apply = jax.jit(self.vocode)

    def vocode(self, params, mel01: jax.Array) -> jax.Array:
        """Pure function: params, [B, 80, T] -> float32 [B, 256 * T] (jit/vmap freely)."""
        wave = self.generator.apply({"params": params}, jnp.swapaxes(mel01, 1, 2))
        return wave[..., 0].astype(jnp.float32)

    def __call__(self, mel01) -> np.ndarray:
        """[B, 80, T] in [0, 1] -> float32 [B, 256 * T] (host numpy)."""
        mel01 = self._check(mel01)
        return np.asarray(self._apply(self.params, jnp.asarray(mel01)))

    @classmethod
    def from_path(cls, path: str | pathlib.Path, dtype=jnp.float32) -> MelGANVocoder:
        """From an avjax MelGAN workdir, or an official generator file (.pt or .npz)."""
        from avjax.models.specvqgan import melgan

        path = pathlib.Path(path)
        if path.is_dir():
            from avjax.runs import load_run

            # A MelGAN run: launch/train.py with configs/melgan_vggsound.py, or
            # launch/convert_checkpoint.py --kind melgan.
            run = load_run(path, "melgan")
            if "generator" not in run.params:
                raise UserError(f"{path}: checkpoint has no generator params")
            gen, _ = melgan.make_model(run.config)
            return cls(gen, run.params["generator"], dtype)
        if path.suffix in (".pt", ".pth", ".ckpt", ".npz"):
            from avjax.convert import torch_io
            from avjax.convert.melgan import PAPER, melgan_from_torch

            sd = torch_io.load_state_dict(path)  # .pt or .npz, never unpickles code
            params = melgan_from_torch(sd, PAPER)["params"]["generator"]
            return cls(melgan.make_model(PAPER)[0], params, dtype)
        if not path.exists():
            raise FileNotFoundError(f"vocoder path {path} does not exist")
        raise ValueError(
            f"{path}: expected a MelGAN run directory or an official generator .pt/.npz"
        )


def load_vocoder(path: str | pathlib.Path | None, **kwargs) -> Vocoder:
    """A MelGAN vocoder, or Griffin-Lim when `path` is None.

    Args:
      path: an avjax MelGAN run directory (its `config.json` + `checkpoints/`), an official
        generator state dict (`best_netG.pt`, read without PyTorch; or the same as `.npz`),
        or None.
      **kwargs: `GriffinLimVocoder` options when `path` is None (n_iter, seed), else
        `MelGANVocoder.from_path` options (dtype, e.g. jnp.bfloat16 compute).

    Returns:
      `vocoder(mel01 [B, 80, T]) -> float32 [B, 256 * T]` at 22050 Hz.
    """
    if path is None:
        return GriffinLimVocoder(**kwargs)
    return MelGANVocoder.from_path(path, **kwargs)


SILENT_RMS = 1e-4  # -80 dBFS: quieter than the s16 floor of most clips
MIN_AC_TO_DC = 1.0  # sound has (almost) no DC; a wave whose DC offset exceeds its AC rms is
# a constant with ripple (a 40-step tiny MelGAN: DC 0.146, AC rms 0.0015)
SILENT_MEL = 0.25  # a [0, 1] log-mel whose maximum is below this (-75 dB) is silence


def output_problem(mel01: np.ndarray, wave: np.ndarray) -> str | None:
    """Why a vocoded `wave` cannot be the sound of `mel01`, or None when it can.

    Flags non-finite samples, and a near-constant wave (its AC rms below `SILENT_RMS`, or
    below `MIN_AC_TO_DC` times its DC offset) for a mel that is not silence itself: what an
    undertrained MelGAN gives (a tiny one after tens of steps outputs DC with a faint ripple).

    Args:
      mel01: [n_mels, T] log-mel in [0, 1], the vocoder's input.
      wave: [N] its output.
    """
    x = np.asarray(wave, np.float64).reshape(-1)
    if not np.isfinite(x).all():
        return f"{int((~np.isfinite(x)).sum())} non-finite samples"
    if np.max(mel01) < SILENT_MEL:
        return None  # silence in, (near) silence out is right
    dc = float(x.mean()) if x.size else 0.0
    ac = float(np.sqrt(np.mean((x - dc) ** 2))) if x.size else 0.0
    if ac < SILENT_RMS or ac < MIN_AC_TO_DC * abs(dc):
        return f"near-constant output (DC {dc:+.3g}, AC rms {ac:.2g}) for a non-silent mel"
    return None


def vocode_checked(
    vocoder: Vocoder, mel01: np.ndarray, fallback: Vocoder | None = None
) -> tuple[np.ndarray, list[str]]:
    """`vocoder(mel01)`, with outputs that are no sound redone by Griffin-Lim.

    Args:
      vocoder: any `Vocoder`.
      mel01: [B, n_mels, T] in [0, 1].
      fallback: the vocoder for flagged outputs (default `GriffinLimVocoder()`).

    Returns:
      (waves float32 [B, hop * T], one message per redone output naming its index and
      `output_problem`).
    """
    mel01 = np.asarray(mel01, np.float32)
    waves = np.array(vocoder(mel01), np.float32)
    notes = []
    for i, (mel, wave) in enumerate(zip(mel01, waves)):
        problem = output_problem(mel, wave)
        if problem is None:
            continue
        fallback = fallback or GriffinLimVocoder(spec=vocoder.spec)
        waves[i] = np.nan_to_num(fallback(mel[None]))[0, : waves.shape[1]]
        notes.append(
            f"sample {i}: the {vocoder.name} vocoder gave {problem}; "
            f"used {fallback.name} instead (train the vocoder longer)"
        )
    return waves, notes
