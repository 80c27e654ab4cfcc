"""Encodes a clip with a trained codebook into code indices and decodes it back.

  python launch/codec.py --workdir workdirs/codebook --input clip.mp4 --out workdirs/codec
      [--vocoder_workdir workdirs/melgan]

Input: a video or audio file (its audio is looped to 10 s at 22050 Hz, as the official
preprocessing does) or a `*_mel.npy` spectrogram [80, T] in [0, 1]. Writes to --out:
`<stem>_codes.npy` (int16 [f, t]), `<stem>_mel.png` (input above, reconstruction below,
seconds and mel-bin axes, a dB colour bar), `<stem>_reconstruction.wav` (Griffin-Lim, or
the MelGAN run / official generator of --vocoder_workdir; peak-normalised), and prints the
reconstruction error and bitrate.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
from absl import flags

from avjax import images, paths
from avjax.audio import io
from avjax.audio import mel as mel_lib
from avjax.audio import validate as mel_check
from avjax.audio.vocoder import load_vocoder, vocode_checked
from avjax.errors import UserError
from avjax.models.specvqgan.codec import Codec
from avjax.runs import read_config
from launch import common

flags.DEFINE_string("workdir", None, "codebook training run (config.json + checkpoints/)")
flags.DEFINE_string("input", None, "video/audio file or *_mel.npy spectrogram")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_string(
    "vocoder_workdir", None, "MelGAN run or official generator (default: Griffin-Lim)"
)
flags.mark_flags_as_required(["workdir", "input", "out"])
FLAGS = flags.FLAGS
MIN_FRAMES = 16  # one code column: the codebook downsamples time by 16


def load_mel(path: pathlib.Path) -> np.ndarray:
    """[80, 860] (or [80, T] for a .npy) log-mel in [0, 1] from any supported input.

    Raises:
      UserError naming the file: missing, undecodable, or a .npy that training would
      refuse too (`avjax.audio.validate`).
    """
    if not path.is_file():
        raise UserError(f"--input: {path} does not exist")
    if path.suffix == ".npy":
        return mel_check.load_mel(path, min_frames=MIN_FRAMES)
    try:
        wave = io.load_audio(path, mel_lib.DEFAULT.sample_rate)
    except (OSError, ValueError) as e:
        raise UserError(f"--input: {e}") from e
    wave = mel_lib.fit_length(wave, mel_lib.DEFAULT.num_samples, "loop")
    return mel_lib.log_mel_spectrogram(wave)


def check_workdir(workdir: paths.Path) -> None:
    """--workdir must be a codebook run with a checkpoint (checked before any loading)."""
    try:
        read_config(workdir, "vqgan")
    except UserError as e:
        raise UserError(f"--workdir: {e} (give a codebook training run)") from None
    if not (workdir / "checkpoints").is_dir():
        raise UserError(f"--workdir: {workdir} has no checkpoints/ folder")


def main(argv):
    del argv
    common.setup_jax()
    src, out = pathlib.Path(FLAGS.input), pathlib.Path(FLAGS.out)
    workdir = paths.as_path(FLAGS.workdir)  # local or gs://
    check_workdir(workdir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    mel = load_mel(src)  # bad input stops here, before the checkpoint is read
    try:
        vocoder = load_vocoder(FLAGS.vocoder_workdir)
    except (OSError, ValueError) as e:
        raise UserError(f"--vocoder_workdir: {e}") from None
    try:
        codec = Codec.from_workdir(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--workdir: {e}") from e
    mel = codec.crop(mel)
    codes = codec.encode(mel)
    rec = codec.decode(codes)
    stem = src.stem.removesuffix("_mel")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{stem}_codes.npy", codes.astype(np.int16))
    figure = images.mel_figure([mel, rec], [f"input: {src.name}", "reconstruction"])
    images.save_png(out / f"{stem}_mel.png", figure)
    waves, notes = vocode_checked(vocoder, rec[None])
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    io.write_wav(out / f"{stem}_reconstruction.wav", waves[0], vocoder.sample_rate, normalize=True)
    report = {
        "input": str(src),
        "codes_shape": list(codes.shape),
        "codebook_size": codec.n_embed,
        "bitrate_bps": round(codec.bitrate(codes, mel.shape[1]), 1),
        "mel_l1": float(np.mean(np.abs(mel - rec))),
        "mel_db_l1": float(np.mean(np.abs(mel - rec)) * 100.0),
    }
    (out / f"{stem}_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {out.resolve()}/{stem}_{{codes.npy,mel.png,reconstruction.wav,report.json}}")


if __name__ == "__main__":
    common.run(main)
