"""Sound2Sight on M3SO-NB (moving MNIST digit with DTMF-style tones, no block), 48x48x1.

Paper / official values (Chatterjee & Cherian, ECCV 2020; repository README command and
`train_svg_lp_audio_48_stochtrans_combl2_disc_sample_prior.py` defaults,
docs/sound2sight.md 1.1): 5 seen
frames, 15 predicted in training and 25 at test, batch 110, g_dim 128, z_dim 10, LSTMs and
transformers 256 wide (1-layer transformers, 4 heads, FFN 128), frame predictor 2 layers,
beta 1e-4, adversarial weight 1e-4 x (0, 1, 5, 10, 100) from epochs (1, 301, 601, 901),
Adam 2e-3 (generator) / 2.5e-3 (discriminator), betas (0.9, 0.999), 1001 epochs of
8000 // 110 = 72 iterations, seed 1.

Quirks of the official code, paper behaviour by default (docs/sound2sight.md 1.8):
* `disc.train_encoders=True`: the discriminator's frame / audio encoders are trained by the
  discriminator loss. Official: `False`, they stay at their random init (only their
  BatchNorm statistics move), because the official step zeroes their gradients.
* `loss.gen_mismatch_target=0`: the generator's mismatched-audio term asks that its clip,
  paired with another clip's audio, look mismatched (label 0), i.e. aligned with its own
  audio only. Official: `1` (the generator is pushed to make the mismatched pair look real).
For an exact reproduction of the released code pass
`--config.disc.train_encoders=False --config.loss.gen_mismatch_target=1`.
BatchNorm: per-frame batch statistics as the official per-frame calls (see
`avjax.models.sound2sight.layers`); frames are divided by their own maximum (official loader).

Generate the data, train, resume (same command), evaluate (paper table, 100 samples):
  python launch/make_m3so.py --out data/m3so_nb --mnist_dir ../shared/data/mnist
  python launch/train.py --config configs/sound2sight_m3so_nb.py --workdir workdirs/s2s_m3so_nb \
      --config.data.dir=data/m3so_nb
  python launch/evaluate.py --workdir workdirs/s2s_m3so_nb --num_samples 100
Paper (best of 100, SSIM as the papers computed it): SSIM 0.9575 / 0.8943 / 0.8697 and
PSNR 21.69 / 17.62 / 16.84 at frames 6 / 15 / 25.

Short CPU run (`:small`, a quarter-width model; see README for the measured table):
  python launch/make_m3so.py --out data/m3so_nb_small --mnist_dir ../shared/data/mnist \
      --num_train 2000 --num_val 64 --num_test 200
  python launch/train.py --config configs/sound2sight_m3so_nb.py:small \
      --workdir workdirs/s2s_small --config.data.dir=data/m3so_nb_small
  python launch/evaluate.py --workdir workdirs/s2s_small --num_samples 20

CPU smoke run on a small embedded M3SO-NB (made from scikit-learn's digits), then its eval:
  python launch/train.py --config configs/sound2sight_m3so_nb.py:tiny --workdir workdirs/s2s_tiny
  python launch/evaluate.py --workdir workdirs/s2s_tiny --num_samples 10
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, tiny=False, small=False)
    c = common.experiment("sound2sight", seed=1)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.config_dict.placeholder(str)  # made by launch/make_m3so.py
    c.data.kind = "m3so"  # 'm3so' | 'frames' (real videos, launch/preprocess.py)
    c.data.block = False  # M3SO with the block (only for the embedded :tiny data)
    c.data.synthetic = False  # embedded tiny M3SO-NB when data.dir is unset
    c.data.flow = False  # batches gain "flow" [B, T, H, W, 2] (MCAV; launch/add_flow.py)
    c.data.train_split = "train"
    c.data.eval_split = "val"  # training-time eval; launch/evaluate.py takes --split
    c.data.n_past = 5
    c.data.n_future = 15
    c.data.n_eval = 25
    c.data.image_size = 48
    c.data.channels = 1
    c.data.audio_shape = (23, 21)
    c.data.frame_scale = "per_frame_max"  # official loader: each frame / its own max
    c.data.fps = 10.0
    c.data.global_batch_size = 110
    c.data.read_threads = 4

    c.model = ml_collections.ConfigDict()
    c.model.g_dim = 128
    c.model.z_dim = 10
    c.model.rnn_size = 256  # every LSTM hidden size and transformer d_model
    c.model.predictor_layers = 2
    c.model.prior_layers = 1
    c.model.posterior_layers = 1
    c.model.nf = 64  # frame encoder / decoder base width
    c.model.audio_nf = 64
    c.model.dim_ff = 128
    c.model.num_heads = 4
    c.model.last_frame_skip = False

    c.disc = ml_collections.ConfigDict()
    c.disc.rnn_size = 256
    c.disc.buffer = 3
    c.disc.train_encoders = True  # official: False (frozen random encoders)

    c.loss = ml_collections.ConfigDict()
    c.loss.beta = 1e-4
    c.loss.beta_gen = 1e-4
    c.loss.adv_epochs = (1, 301, 601, 901)
    c.loss.adv_multipliers = (0.0, 1.0, 5.0, 10.0, 100.0)
    c.loss.gen_mismatch_target = 0  # official: 1

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-3
    c.optim.disc_lr = 2.5e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    # niter 1001 epochs (of 8000 // 110 = 72 steps on M3SO-NB, derived from the data)
    c.train = common.train(
        None,
        log_every=50,
        checkpoint_every=720,
        eval_every=720,
        eval_batches=4,
        sample_every=720,
    )
    c.train.num_epochs = 1001
    c.train.sample_clips = 4
    c.train.sample_count = 5

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 100
    c.eval.batch_size = 100  # clips per jitted evaluation batch (official GEN batch)
    c.eval.sample_chunk = 10  # samples vmapped at once (memory)
    c.eval.report_frames = (6, 15, 25)  # 1-based frame numbers of the paper's table
    c.eval.block_iou = False

    if args["tiny"]:
        apply_tiny(c)
    if args["small"]:
        apply_small(c)
    return c


def apply_small(c: ml_collections.ConfigDict):
    """A CPU-sized model for short runs on real M3SO-NB (2,000 training clips).

    Quarter widths, 10 predicted frames in training, batch 16, 3,000 steps (~24 epochs
    of 2,000 clips; the adversarial terms start after the first epoch).
    """
    c.data.n_future = 10
    c.data.global_batch_size = 16
    c.model.g_dim = 64
    c.model.rnn_size = 64
    c.model.nf = 16
    c.model.audio_nf = 16
    c.model.dim_ff = 64
    c.model.num_heads = 2
    c.disc.rnn_size = 64
    c.train.num_steps, c.train.num_epochs = 3000, None
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.eval_every = 500
    c.train.sample_every = 500
    c.eval.num_samples = 20


def apply_tiny(c: ml_collections.ConfigDict, n_past: int = 5, n_future: int = 5, n_eval: int = 10):
    """Tiny widths, embedded data, global batch 8, 30 steps, checkpoints every 10."""
    c.data.synthetic = True
    c.data.eval_split = "test"
    c.data.n_past, c.data.n_future, c.data.n_eval = n_past, n_future, n_eval
    c.data.global_batch_size = 8
    c.data.read_threads = 2
    c.model.g_dim = 16
    c.model.z_dim = 4
    c.model.rnn_size = 32
    c.model.nf = 8
    c.model.audio_nf = 8
    c.model.dim_ff = 32
    c.model.num_heads = 2
    c.disc.rnn_size = 32
    c.train.steps_per_epoch = 5  # short epochs: the adversarial terms start at step 5
    c.train.num_steps, c.train.num_epochs = 30, None
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.sample_every = 10
    c.train.sample_clips = 2
    c.train.sample_count = 3
    c.eval.num_samples = 10
    c.eval.batch_size = 8
    c.eval.sample_chunk = 5
    c.eval.report_frames = (n_past + 1, n_past + n_eval // 2, n_past + n_eval)
