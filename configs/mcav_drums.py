"""MCAV on AudioSet-Drums, 64x64x3 at 30 fps: 15 seen, 15 predicted / 30 at test.

Everything as `mcav_m3so_nb.py` (the paper's values and avjax's choices where it is silent
are listed there) on the Sound2Sight Drums clips: 45x17 STFT patches per frame (the
Sound2Sight audio encoder for that size), 64 px frames (4x4x128 motion features), frames
scaled by 1/255. Paper (docs/mcav.md): SSIM 0.9896 / 0.9533 / 0.9437, mean 0.9558, PSNR
35.00 / 27.76 / 26.68, mean 28.22 at frames 16 / 30 / 45; flow AEPE 3.97e-2 (full MME).
Batch 32 and 200 epochs per stage are our choice (the paper is silent).

  python launch/preprocess.py --target sound2sight --videos /data/drums_clips --out data/drums
  python launch/train.py --config configs/mcav_drums.py --workdir workdirs/mcav_drums_m \
      --config.data.dir=data/drums --config.stage=motion
  python launch/train.py --config configs/mcav_drums.py --workdir workdirs/mcav_drums_r \
      --config.data.dir=data/drums --config.stage=refine \
      --config.motion.workdir=workdirs/mcav_drums_m
CPU smoke run (M3SO-NB re-rendered as 64x64 RGB at 30 fps):
  python launch/train.py --config configs/mcav_drums.py:tiny --workdir workdirs/mcav_drums_tiny
"""

from __future__ import annotations

from configs import common, mcav_m3so_nb


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False, small=False)
    c = mcav_m3so_nb.get_config()
    c.data.kind = "frames"
    c.data.n_past = 15
    c.data.n_future = 15
    c.data.n_eval = 30
    c.data.image_size = 64
    c.data.channels = 3
    c.data.audio_shape = (45, 17)
    c.data.frame_scale = "255"
    c.data.fps = 30.0
    c.eval.report_frames = (16, 30, 45)
    if args["tiny"]:
        mcav_m3so_nb.apply_tiny(c)
    if args["small"]:
        mcav_m3so_nb.apply_small(c)
    return c
