"""Generates M3SO-NB (default) or M3SO (`--block`) as a TFDS array_record dataset.

  python launch/make_m3so.py --out data/m3so_nb --mnist_dir ../shared/data/mnist
  python launch/make_m3so.py --out data/m3so --block --mnist_dir ../shared/data/mnist

Writes OUT/avjax_m3so/1.0.0/ (train / val / test; 8000 / 1000 / 1000 clips by default), which
`--config.data.dir=OUT` trains on and `tfds.data_source("avjax_m3so", data_dir=OUT)` reads;
`--previews N` also writes the first N test clips as OUT/previews/<i>.gif and <i>.wav.
Without --mnist_dir the digits are scikit-learn's bundled 8x8 digits upscaled to 28x28.
"""

import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python launch/make_m3so.py` from a source checkout
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from avjax.errors import UserError  # noqa: E402
from data_pipelines import m3so, m3so_tfds  # noqa: E402
from launch import common  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "Output TFDS data_dir.")
_MNIST = flags.DEFINE_string(
    "mnist_dir", None, "Folder with MNIST IDX files (train/t10k images/labels, .gz or raw)."
)
_BLOCK = flags.DEFINE_bool("block", False, "M3SO (with the block) instead of M3SO-NB.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 8000, "Training clips.")
_NUM_VAL = flags.DEFINE_integer("num_val", 1000, "Validation clips.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test clips.")
_SEED = flags.DEFINE_integer("seed", 0, "Clip i of a split depends only on (seed, split, i).")
_NUM_FRAMES = flags.DEFINE_integer(
    "num_frames", None, "Frames per clip (default 30 for M3SO-NB, 70 for M3SO)."
)
_BLOCK_START = flags.DEFINE_integer(
    "block_start_frame",
    None,
    "The block is drawn from frame index block_start_frame + 1 (default 40; 10 with --official).",
)
_OFFICIAL = flags.DEFINE_bool(
    "official",
    False,
    "Reproduce the official generator's bugs (int16 wrap-around, aliased tones, test digits "
    "with train labels).",
)
_PREVIEWS = flags.DEFINE_integer("previews", 4, "Test clips written as GIF + WAV previews.")
flags.mark_flags_as_required(["out"])


def main(argv):
    del argv
    from avjax.audio.io import write_wav
    from avjax.video.io import write_gif

    config = m3so.M3soConfig(
        block=_BLOCK.value,
        num_frames=_NUM_FRAMES.value,
        block_start_frame=_BLOCK_START.value,
        official=_OFFICIAL.value,
    )
    try:
        config.validate()
    except ValueError as e:
        raise UserError(f"--{e}") from None  # "num_frames=1 must be ..." names the flag
    for flag in (_NUM_TRAIN, _NUM_VAL, _NUM_TEST, _PREVIEWS):
        if flag.value < 0:
            raise UserError(f"--{flag.name}={flag.value} must be >= 0")
    if _NUM_TRAIN.value + _NUM_VAL.value + _NUM_TEST.value == 0:
        raise UserError("--num_train, --num_val and --num_test are all 0: nothing to generate")
    out = pathlib.Path(_OUT.value)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    try:
        pools = m3so.load_digits(_MNIST.value, official=_OFFICIAL.value)
    except (OSError, ValueError) as e:
        msg = str(e)
        raise UserError(msg if msg.startswith("--") else f"--mnist_dir: {msg}") from None
    print(f"digits: {pools.source}; {config}")
    t0 = time.time()
    builder = m3so_tfds.write_m3so(
        _OUT.value,
        pools=pools,
        config=config,
        seed=_SEED.value,
        num_train=_NUM_TRAIN.value,
        num_val=_NUM_VAL.value,
        num_test=_NUM_TEST.value,
        progress=True,
    )
    print(f"wrote {builder.data_dir} in {time.time() - t0:.1f}s: {dict(builder.info.splits)}")
    n = min(_PREVIEWS.value, _NUM_TEST.value)
    if n > 0:
        out = pathlib.Path(_OUT.value) / "previews"
        out.mkdir(parents=True, exist_ok=True)
        clips = m3so.generate(pools, "test", range(n), seed=_SEED.value, config=config)
        for i in range(n):
            write_gif(out / f"{i}.gif", clips["frames"][i, ..., 0], fps=m3so.FPS)
            wave = clips["waveform"][i]  # A = |p| / |(20, 20)| can exceed 1: scale, not clip
            write_wav(out / f"{i}.wav", wave / max(1.0, float(abs(wave).max())), m3so.SAMPLE_RATE)
        print(f"previews: {out} ({n} gif + wav)")
    return 0


if __name__ == "__main__":
    common.run(main)
