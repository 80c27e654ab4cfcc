"""Melception (Inception-v3 on log-mels) on VGGSound, 309 classes: SpecVQGAN's FID/MKL network.

Official recipe (docs/specvqgan.md A3): torchvision Inception3 with a 1-channel first
conv, no max-pools, BatchNorm eps 1e-3, the aux head kept (not trained on); per-bin
standardised [0, 1] mels centre-cropped to 80x848;
Adam 3e-4 (0.9, 0.999), weight decay 0, batch 8.
Expected results: the official README's reference is top-1 44.49, mAP 47.58 on the
VGGSound test split; ours not measured at full scale (CPU-only development).

  python launch/train.py --config configs/melception_vggsound.py --workdir workdirs/melception \
      --config.data.dir=/data/vggsound --config.data.labels_csv=/data/vggsound.csv
Import the released weights instead (`melception-21-05-10T09-28-40.pt`, read without PyTorch):
  python launch/convert_checkpoint.py --kind melception --torch melception.pt --out W \
      --config configs/melception_vggsound.py \
      --config.data.mel_stats_file=train_means_stds_melspec_10s_22050hz.txt
The stats file is the official per-bin [0, 1]-mel mean/std table (80 rows `mean std`) from
`specvqgan/modules/losses/vggishish/data/`; W then scores with
`avjax.metrics.melception_scorer.MelceptionScorer.from_path(W)`.

CPU smoke run (narrow network, embedded synthetic clips, 80x64 crops: it scores the
`:tiny` SpecVQGAN chain with `launch/evaluate.py --melception workdirs/mel_tiny`):
  python launch/train.py --config configs/melception_vggsound.py:tiny --workdir workdirs/mel_tiny
"""

from __future__ import annotations

import ml_collections

from configs import common, vggishish_vggsound


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = vggishish_vggsound.get_config(arg)
    c.model = ml_collections.ConfigDict()
    c.model.arch = "melception"
    c.model.num_classes = 309
    c.model.aux_logits = True  # present in the official checkpoint; not in the loss
    c.model.dropout = 0.5  # torchvision Inception3 default, before fc
    c.model.width = 1.0  # channel multiplier (1.0: the official network)
    c.optim.lr = 3e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.data.global_batch_size = 8
    # Official [0, 1]-mel per-bin statistics (80 rows "mean std"); only used when importing
    # the released weights (training computes its own from the data).
    c.data.mel_stats_file = ml_collections.config_dict.placeholder(str)
    if args["tiny"]:
        c.model.num_classes = 5
        c.model.width = 0.0625  # 2048 -> 128 pool features
        # 80x64: the `:tiny` codebook's window, so `launch/evaluate.py` scores the tiny chain
        # (the aux head, never trained on, needs >= 80x80 and is left out)
        c.data.crop_frames = 64
        c.model.aux_logits = False
        c.data.global_batch_size = 8
        c.optim.lr = 1e-3
        c.train.num_steps = 20
        c.train.checkpoint_every = 10
    return c
