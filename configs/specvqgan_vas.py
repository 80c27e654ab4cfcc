"""SpecVQGAN spectrogram codebook on VAS: the VGGSound config with VAS's three changes.

Official `configs/vas_codebook.yaml` differs only in 128 codes, base lr 1e-6 and the
discriminator starting at step 2001. Expected results: as `specvqgan_vggsound.py` (the
paper's VAS tables; none of ours at full scale).

  python launch/train.py --config configs/specvqgan_vas.py \
      --workdir workdirs/codebook_vas --config.data.dir=/data/vas/features
"""

from __future__ import annotations

from configs import common, specvqgan_vggsound


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, tiny=False)
    c = specvqgan_vggsound.get_config(arg)
    c.data.layout = "vas"
    if not args["tiny"]:
        c.model.n_embed = 128
        c.optim.base_lr = 1e-6
        c.loss.disc_start = 2001
    return c
