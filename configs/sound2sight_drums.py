"""Sound2Sight on AudioSet-Drums, 64x64x3 at 30 fps: 15 seen, 15 predicted / 30 at test.

Model as the official `models/drums_dcgan_64.py` (four stride-2 levels, skips at every
level; STFT audio encoder for 45x17 patches per frame), everything else as
`sound2sight_m3so_nb.py` (quirk switches in its docstring). The paper does not state the
batch size of these runs; the README's 110 is kept. Frames are scaled by 1/255 (no
official loader exists for these datasets). Paper: SSIM 0.9843 / 0.9544 / 0.9466, PSNR
33.24 / 27.94 / 26.99 at frames 16 / 30 / 45.

  python launch/preprocess.py --target sound2sight --videos /data/drums_clips --out data/drums
  python launch/train.py --config configs/sound2sight_drums.py --workdir workdirs/s2s_drums \
      --config.data.dir=data/drums
  python launch/evaluate.py --workdir workdirs/s2s_drums --num_samples 100
CPU smoke run (M3SO-NB re-rendered as 64x64 RGB at 30 fps):
  python launch/train.py --config configs/sound2sight_drums.py:tiny \
      --workdir workdirs/s2s_drums_tiny
"""

from __future__ import annotations

from configs import common, sound2sight_m3so_nb


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = sound2sight_m3so_nb.get_config()
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
        sound2sight_m3so_nb.apply_tiny(c, n_past=5, n_future=5, n_eval=10)
    return c
