"""VGGish-ish spectrogram classifier on VGGSound (309 classes), docs/specvqgan.md A3.

A trained one can serve as the LPAPS backbone of a codebook
(`--config.loss.lpaps_backbone=WORKDIR`); note the released codebooks used a random one.
Official recipe: per-bin standardised [0,1] mels, centre crop 80x848, Adam 3e-4
(0.9, 0.999) with weight decay 1e-4, batch 32.
Expected results: the official README's reference is top-1 34.70, mAP 36.63 on the
VGGSound test split; ours not measured at full scale (CPU-only development).

  python launch/train.py --config configs/vggishish_vggsound.py --workdir workdirs/vggishish \
      --config.data.dir=/data/vggsound --config.data.labels_csv=/data/vggsound.csv
For VAS (class folders give the labels): `--config.data.dir=/data/vas/features
  --config.model.num_classes=8`.
"""

from __future__ import annotations

from configs import common, specvqgan_vggsound


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = specvqgan_vggsound.get_config(arg)
    c.task = "classifier"
    for key in ("disc", "loss"):
        del c[key]
    c.model = type(c.model)()
    c.model.arch = "vggishish"
    c.model.conv_layers = common.VGGISHISH16_LAYERS
    c.model.num_classes = 309
    c.model.hidden = 4096
    c.optim = type(c.optim)()
    c.optim.lr = 3e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 1e-4
    c.data.global_batch_size = 32
    c.train.num_steps = 100_000
    c.train.sample_every = 0
    if args["tiny"]:
        c.data.global_batch_size = 8
        c.model.conv_layers = "8,MP,16,MP,32"
        c.model.num_classes = 5
        c.model.hidden = 64
        c.optim.lr = 1e-3
        c.train.num_steps = 20
        c.train.sample_every = 0
    return c
