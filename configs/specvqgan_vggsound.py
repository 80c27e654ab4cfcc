"""SpecVQGAN spectrogram codebook (VQGAN + LPAPS + patch discriminator) on VGGSound.

Paper values (Iashin & Rahtu 2021; official `configs/vggsound_codebook.yaml`): 80x848
log-mels, ch 128, ch_mult (1,1,2,2,4), 2 res blocks per level, attention at the 5x53
level, 1024 codes of 256-d, beta 0.25, hinge discriminator from step 30001 with weight
0.8, LPAPS weight 1.0 on a frozen randomly initialised VGGish-ish (what the released
codebooks used), Adam (0.5, 0.9), lr = 4.5e-6 x global batch (batch 3 -> 1.35e-5).

Train (official layout, e.g. built by `launch/preprocess.py`):
  python launch/train.py --config configs/specvqgan_vggsound.py \
      --workdir workdirs/codebook_vggsound --config.data.dir=/data/vggsound
On N GPUs scale the batch: `--config.data.global_batch_size=24` (lr follows).

Expected results: the paper (Iashin & Rahtu 2021) judges the codebook by its
reconstructions and by the transformer sampling on it (FID / MKL with Melception, its
Tables 1-2); avjax has not trained this config to convergence (CPU-only development), so
no number of ours is claimed. Speed: 16.5 s per step at batch 2 on the 2-core reference
CPU (README, Benchmarks).

CPU smoke run on the embedded synthetic data (seconds per step):
  python launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir workdirs/tiny
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, tiny=False)
    c = common.experiment("vqgan", seed=23)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.config_dict.placeholder(str)  # dataset root (official layout)
    c.data.layout = "auto"  # 'vggsound' | 'vas' | 'auto'
    c.data.labels_csv = ml_collections.config_dict.placeholder(str)  # VGGSound vggsound.csv
    c.data.train_split = "train"
    c.data.eval_split = "valid"
    c.data.num_mel_bins = 80
    c.data.crop_frames = 848
    c.data.random_crop = False  # official configs: centre crop 860 -> 848
    c.data.global_batch_size = 3  # official per-GPU batch; lr = base_lr * this
    c.data.stats_examples = 256  # clips used for the per-mel-bin mean/std (LPAPS scaling)
    c.data.read_threads = 8
    c.data.synthetic = False  # use the embedded synthetic clips when data.dir is unset

    c.model = ml_collections.ConfigDict()
    c.model.ch = 128
    c.model.ch_mult = (1, 1, 2, 2, 4)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (53,)  # widths, tracked from `resolution` as in the official code
    c.model.resolution = 848
    c.model.z_channels = 256
    c.model.embed_dim = 256
    c.model.n_embed = 1024
    c.model.beta = 0.25
    c.model.dropout = 0.0
    c.model.num_groups = 32

    c.disc = ml_collections.ConfigDict()
    c.disc.ndf = 64
    c.disc.n_layers = 3

    c.loss = ml_collections.ConfigDict()
    c.loss.disc_start = 30001
    c.loss.disc_weight = 0.8
    c.loss.disc_factor = 1.0
    c.loss.disc_loss = "hinge"
    # Official (Lightning): the discriminator step re-runs the autoencoder with the just
    # updated weights. False feeds it this step's reconstruction instead: one 80x848
    # forward less per step (~10% faster), the discriminator seeing a one-step-older x̂.
    c.loss.disc_recompute = True
    c.loss.codebook_weight = 1.0
    c.loss.perceptual_weight = 1.0
    # Adaptive weight clamp; official min = max = 1.0 makes d_weight the constant 0.8.
    c.loss.min_adapt_weight = 1.0
    c.loss.max_adapt_weight = 1.0
    # 'random' (frozen random VGGish-ish, as the released codebooks) or the path of a
    # trained VGGish-ish: an avjax classifier workdir or an official vggishish16.pt.
    c.loss.lpaps_backbone = "random"
    c.loss.lpaps_layers = common.VGGISHISH16_LAYERS
    c.loss.lpaps_dropout = 0.5  # official quirk: LPAPS lin dropout is active in training

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 4.5e-6
    c.optim.b1 = 0.5
    c.optim.b2 = 0.9
    c.optim.eps = 1e-8  # torch Adam default

    # The paper trains to convergence: set num_steps to your budget. Samples every 750
    # steps as the official ImageLogger's batch frequency.
    c.train = common.train(
        400_000,
        log_every=50,
        checkpoint_every=2000,
        eval_every=5000,
        eval_batches=200,
        sample_every=750,
    )

    if args["tiny"]:
        c.data.synthetic = True
        c.data.crop_frames = 64
        c.data.random_crop = True
        common.make_tiny(c)
        c.data.stats_examples = 32
        c.model.ch = 16
        c.model.num_groups = 8
        c.model.ch_mult = (1, 2, 2)
        c.model.num_res_blocks = 1
        c.model.attn_resolutions = (16,)
        c.model.resolution = 64
        c.model.z_channels = 16
        c.model.embed_dim = 16
        c.model.n_embed = 64
        c.disc.ndf = 16
        c.disc.n_layers = 2
        c.loss.disc_start = 10
        c.loss.lpaps_layers = "8,MP,16,MP,16"
        c.optim.base_lr = 1e-4
    return c
