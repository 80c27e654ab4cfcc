"""Sound2Sight on M3SO (with the surprise block), 48x48x1: 30 seen, 30 predicted / 40 at test.

Everything else as `sound2sight_m3so_nb.py` (read its docstring for the official-quirk
switches). The paper reports SSIM 0.8780 / 0.6256 / 0.6170 and PSNR 19.50 / 9.39 / 9.41
at frames 31 / 42 / 70, and block-localisation IoU 0.5801 in the last frame.

  python launch/make_m3so.py --out data/m3so --block --mnist_dir ../shared/data/mnist
  python launch/train.py --config configs/sound2sight_m3so.py --workdir workdirs/s2s_m3so \
      --config.data.dir=data/m3so
  python launch/evaluate.py --workdir workdirs/s2s_m3so --num_samples 100
CPU smoke run (embedded tiny M3SO with a block from frame 15):
  python launch/train.py --config configs/sound2sight_m3so.py:tiny --workdir workdirs/s2s_m3so_tiny
"""

from __future__ import annotations

from configs import common, sound2sight_m3so_nb


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = sound2sight_m3so_nb.get_config()
    c.data.block = True
    c.data.n_past = 30
    c.data.n_future = 30
    c.data.n_eval = 40
    c.eval.report_frames = (31, 42, 70)
    c.eval.block_iou = True
    if args["tiny"]:
        sound2sight_m3so_nb.apply_tiny(c, n_past=10, n_future=6, n_eval=14)
    return c
