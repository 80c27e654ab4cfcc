"""Sound2Sight on YouTube-Painting, 64x64x3 at 30 fps: 15 seen, 15 predicted / 30 at test.

As `sound2sight_drums.py` (the official `painting_dcgan_64.py` equals `drums_dcgan_64.py`)
on the Painting clips (4,800 for training; steps per epoch follow from them).
Paper: SSIM 0.9716 / 0.9291 / 0.9110, PSNR 32.73 / 27.27 / 25.57 at frames 16 / 30 / 45.

  python launch/preprocess.py --target sound2sight --videos /data/painting_clips --out data/painting
  python launch/train.py --config configs/sound2sight_painting.py --workdir workdirs/s2s_painting \
      --config.data.dir=data/painting
  python launch/evaluate.py --workdir workdirs/s2s_painting --num_samples 100
CPU smoke run:
  python launch/train.py --config configs/sound2sight_painting.py:tiny \
      --workdir workdirs/s2s_paint_tiny
"""

from __future__ import annotations

from configs import common, sound2sight_drums


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    return sound2sight_drums.get_config("tiny" if args["tiny"] else None)
