"""SpecVQGAN transformer (video features -> codebook codes) on VGGSound, docs/specvqgan.md A4.

Paper values (official `configs/vggsound_transformer.yaml`): GPT with 24 layers, 16 heads,
1024 wide, block 477 = 53 * 5 + 212, no dropout; 212 BN-Inception rgb+flow features
(2048-d, 21.5 fps, 215 rows cropped to 212) embedded by a Dense and prepended; loss on the
265 code positions; AdamW (0.9, 0.95), weight decay 0.01 on Linear kernels; lr = 5e-6 x
global batch (official batch 2 per GPU). Sampling as the README's evaluation: top-k 512.

Expected results: the paper reports FID and MKL of the sampled spectrograms against the
VGGSound test set (Melception features, `launch/evaluate.py`), per feature variant (212 /
5 / 1 features, No Feats); avjax has not trained this config at scale (CPU-only
development), so no number of ours is claimed. Sampling one 10-s clip at batch 1 takes
~12-16 s on the 2-core reference CPU (README, Benchmarks).

Train (needs a trained codebook; its codes are extracted into data.codes_dir on first use):
  python launch/train.py --config configs/specvqgan_transformer_vggsound.py \
      --workdir workdirs/transformer_vggsound --config.data.dir=/data/vggsound \
      --config.codebook.workdir=workdirs/codebook_vggsound
Variants: `--config.data.features=resnet50`; 5 or 1 features:
  `--config.data.feat_sample_size=5 --config.model.block_size=270`;
"No Feats": `--config.data.features=none --config.data.feat_sample_size=1
  --config.model.block_size=266`. On N GPUs raise `--config.data.global_batch_size`.
Then `python launch/sample.py --workdir workdirs/transformer_vggsound ...` and
`python launch/evaluate.py --workdir workdirs/transformer_vggsound --split test`.

CPU smoke run (a tiny GPT on the embedded synthetic clips; needs the tiny codebook):
  python launch/train.py --config configs/specvqgan_vggsound.py:tiny --workdir workdirs/tiny
  python launch/train.py --config configs/specvqgan_transformer_vggsound.py:tiny \
      --workdir workdirs/tiny_transformer --config.codebook.workdir=workdirs/tiny
"""

from __future__ import annotations

import ml_collections

from configs import common, specvqgan_vggsound


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, tiny=False)
    c = common.experiment("transformer", seed=23)

    c.codebook = ml_collections.ConfigDict()
    # The trained codebook run whose codes the transformer models (launch/train.py with
    # configs/specvqgan_vggsound.py, or launch/convert_checkpoint.py --kind codebook).
    c.codebook.workdir = ml_collections.config_dict.placeholder(str)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.config_dict.placeholder(str)  # official layout with features
    c.data.layout = "auto"  # 'vggsound' | 'vas' | 'auto'
    c.data.labels_csv = ml_collections.config_dict.placeholder(str)  # VGGSound vggsound.csv
    # 'bninception' (rgb + flow, 2048-d, the paper's default) | 'resnet50' (2048-d) |
    # 'none' (the paper's "No Feats": uniform random features).
    c.data.features = "bninception"
    c.data.feat_len = 215  # rows after zero-pad / trim
    c.data.feat_crop = 212  # centre crop (rows 1..212)
    c.data.feat_sample_size = 212  # resampled rows: 212 | 5 | 1 (official ResampleFrames)
    c.data.codes_dir = ml_collections.config_dict.placeholder(str)  # default: under data.dir
    c.data.train_split = "train"
    c.data.eval_split = "valid"
    c.data.global_batch_size = 2  # official per-GPU batch; lr = base_lr * this
    c.data.read_threads = 8
    c.data.synthetic = False  # use the embedded synthetic clips when data.dir is unset

    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 1024  # = the codebook's n_embed
    c.model.block_size = 477  # 53 * 5 + feat_sample_size (+ 1 with a class token)
    c.model.n_layer = 24
    c.model.n_head = 16
    c.model.n_embd = 1024
    c.model.feat_dim = 2048  # 0: no feature condition (class only)
    c.model.embd_pdrop = 0.0  # GPT.__init__ defaults override GPTConfig's 0.1
    c.model.resid_pdrop = 0.0
    c.model.attn_pdrop = 0.0
    c.model.num_classes = 0  # > 0: a class token after the features (GPTFeatsClass)

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 5e-6
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8  # torch AdamW default
    c.optim.weight_decay = 0.01  # Linear kernels only

    c.sampling = ml_collections.ConfigDict()
    c.sampling.temperature = 1.0
    c.sampling.top_k = 512  # README: 512 for VGGSound (64 for VAS with its own codebook)
    c.sampling.top_p = 1.0  # 1.0: off (the paper does not use nucleus sampling)
    c.sampling.num_clips = 2  # clips sampled by write_samples
    c.sampling.griffin_lim_iters = 32

    # FID/MKL/ISC while training (avjax.evals.audio_generation, `in_loop`): off until
    # --config.evals.audio.every=N --config.evals.audio.melception=<Melception run> are given.
    c.evals = ml_collections.ConfigDict()
    c.evals.audio = ml_collections.ConfigDict()
    c.evals.audio.every = ml_collections.config_dict.placeholder(int)
    c.evals.audio.melception = ml_collections.config_dict.placeholder(str)
    c.evals.audio.num_samples = 2
    c.evals.audio.max_clips = 64

    # Official: early stopping on val/loss (patience 2 epochs); set num_steps to your budget.
    c.train = common.train(
        1_000_000,
        log_every=50,
        checkpoint_every=2000,
        eval_every=5000,
        eval_batches=200,
        sample_every=5000,
    )

    if args["tiny"]:
        # Sized for the tiny codebook's codes (configs/specvqgan_vggsound.py:tiny).
        codebook = specvqgan_vggsound.get_config("tiny")
        rows, columns = common.code_grid(codebook)
        common.make_tiny(c)
        c.data.synthetic = True
        c.data.features = "resnet50"
        c.data.feat_sample_size = 5
        c.model.vocab_size = codebook.model.n_embed
        c.model.block_size = rows * columns + 212  # room for up to 212 feature rows
        c.model.n_layer = 2
        c.model.n_head = 2
        c.model.n_embd = 32
        c.optim.base_lr = 1e-4
        c.sampling.top_k = 0
        c.sampling.num_clips = 1
        c.sampling.griffin_lim_iters = 4
    return c
