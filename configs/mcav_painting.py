"""MCAV on YouTube-Painting, 64x64x3 at 30 fps: 15 seen, 15 predicted / 30 at test.

As `mcav_drums.py` on the Painting clips. Paper (docs/mcav.md): SSIM 0.9848 / 0.9284 /
0.9104, mean 0.9313, PSNR 35.12 / 27.19 / 25.53, mean 27.70 at frames 16 / 30 / 45; flow
AEPE 9.85e-2 (full MME); CAR ablation mean SSIM 0.9143 (MME + U-Net, `model.context=False`),
0.9291 (+ context encoder, `model.modulation=False`), 0.9313 (full CAR).

  python launch/preprocess.py --target sound2sight --videos /data/painting_clips \
      --out data/painting
  python launch/train.py --config configs/mcav_painting.py --workdir workdirs/mcav_paint_m \
      --config.data.dir=data/painting --config.stage=motion
  python launch/train.py --config configs/mcav_painting.py --workdir workdirs/mcav_paint_r \
      --config.data.dir=data/painting --config.stage=refine \
      --config.motion.workdir=workdirs/mcav_paint_m
CPU smoke run:
  python launch/train.py --config configs/mcav_painting.py:tiny --workdir workdirs/mcav_paint_tiny
"""

from __future__ import annotations

from configs import common, mcav_drums


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, small=False)
    variant = ",".join(k for k in ("tiny", "small") if args[k]) or None
    return mcav_drums.get_config(variant)
