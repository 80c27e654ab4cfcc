"""SpecVQGAN transformer on VAS: the VGGSound config with the official VAS changes.

Official `configs/vas_transformer.yaml` differs only in 128 codes (the VAS codebook) and
base lr 1e-6 (batch 2 as VGGSound); sampling uses top-k 64 (README, VAS codebook).
Expected results: the paper's VAS FID / MKL; none of ours at full scale.

  python launch/train.py --config configs/specvqgan_transformer_vas.py \
      --workdir workdirs/transformer_vas --config.data.dir=/data/vas/features \
      --config.codebook.workdir=workdirs/codebook_vas
A VAS transformer on the VGGSound codebook: `--config.model.vocab_size=1024
  --config.sampling.top_k=512`. CPU smoke run: `configs/specvqgan_transformer_vas.py:tiny`
  with `--config.codebook.workdir=` a `configs/specvqgan_vas.py:tiny` codebook run.
"""

from __future__ import annotations

from configs import common, specvqgan_transformer_vggsound


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = specvqgan_transformer_vggsound.get_config(arg)
    c.data.layout = "vas"
    if not args["tiny"]:
        c.model.vocab_size = 128
        c.optim.base_lr = 1e-6
        c.sampling.top_k = 64
    return c
