"""MCAV on M3SO-NB (Multimodal MovingMNIST), 48x48x1: 5 seen, 15 predicted / 20 at test.

Paper values (Xu, Hu, Lee, BMVC 2023, arXiv 2212.04679; docs/mcav.md): the Sound2Sight
M3SO-NB clips and 23x21 STFT patches; MME = motion encoder 4x(4x4 s2 conv) {64, 64, 128,
128} BatchNorm + LeakyReLU (last tanh), audio encoder {64, 128, 256, 512, 128}, motion
memory with Condense and Recall, 4-layer ConvLSTM, motion decoder 4x(4x4 s2 deconv)
{128, 64, 64, 2}; CAR = warp + U-Net with a context encoder (4 blocks of 2 conv + BN + ReLU)
at L = 4 levels modulated by gamma / beta MLPs of M = E_m || E_a. Stage 1 ("motion"): flow
MSE + 0.01 edge-aware smoothness, Adam 1e-4; stage 2 ("refine"): MME frozen, image MSE,
Adam 1e-3. Paper result (mean of samples; MCAV is deterministic): SSIM 0.9608 / 0.9158 /
0.8990, mean 0.9195, PSNR 23.61 / 19.88 / 18.99, mean 20.23 at frames 6 / 15 / 25; flow
AEPE 4.82e-2 (full MME).

Where the paper is silent, avjax's choices (each a config field; switches marked *):
* `model.attention_scale`* "none": eq. 1 as written, softmax(Q K^T) V; "rsqrt_dim" divides
  the logits by sqrt(c).
* `model.recall_keys`* "condensed": Recall's K and V come from x~_a alone, as the text says.
  With one key the softmax is identically 1, so Recall adds V(x~_a) to every position of
  x_v (its query projection has no effect). "memory": K, V from the memory slots 0..t+1
  (slot t+1 replaced by x~_a), a real attention over the audio history.
* `model.context_merge`* "concat" (with the U-Net's encoder skip) or "add" (to it).
* `model.teacher_forcing`* False: training predicts as at test (after the seen frames MME
  reads its own flow and warped frame, CAR its own output; gradients stopped at these
  fed-back inputs); True feeds ground truth every step. Stage 2's frozen MME always runs as
  at test.
* Stride-2 convs / deconvs pad 1 (48 px -> 3x3x128 motion features), LeakyReLU 0.2; audio
  encoder = Sound2Sight's STFT encoder for the patch size (its strides and paddings);
  ConvLSTM 3x3 kernels, 128 hidden channels; the decoder's last deconv is linear.
* CAR: U-Net and context encoder widths `model.car_widths` (32, 64, 128, 256), 2x2
  max-pool, 4x4 s2 deconv up, output clip(warped + delta) with delta from a zero-init 1x1
  conv; MLPs Dense(`model.mlp_hidden`=256) -> ReLU -> Dense (zero-init), gamma = 1 + MLP;
  M's E_m part is MME's frozen motion encoder averaged over positions, E_a MME's frozen
  audio encoder on A_t (as the paper writes M_{t+1}); CAR is supervised on the predicted
  frames only, MME on every step's flow.
* Batch 32 and 200 epochs per stage (~50k steps on the 8,000 clips), constant learning
  rates, Adam betas (0.9, 0.999).
Ablations (docs/mcav.md tables): `model.condense=False` ("visual + Recall"), with
`model.recall=False` too ("visual only"); `model.context=False` ("MME + U-Net"),
`model.modulation=False` ("+ context encoder").

Flow: each batch carries "flow" [B, T, 48, 48, 2] (backward flow, F[0] = 0) beside the
frames (see data_pipelines; the README says which command adds the TV-L1 flow).

Train stage 1, then stage 2 on it (each resumes with the same command):
  python launch/make_m3so.py --out data/m3so_nb --mnist_dir ../shared/data/mnist
  python launch/add_flow.py --data_dir data/m3so_nb --num_workers 8
  python launch/train.py --config configs/mcav_m3so_nb.py --workdir workdirs/mcav_motion \
      --config.data.dir=data/m3so_nb --config.stage=motion
  python launch/train.py --config configs/mcav_m3so_nb.py --workdir workdirs/mcav_refine \
      --config.data.dir=data/m3so_nb --config.stage=refine \
      --config.motion.workdir=workdirs/mcav_motion

Short CPU run (`:small`, quarter widths (CAR an eighth), 10 predicted frames in training,
4,000 steps per stage, ~30 min each on a 2-core CPU) and the CPU smoke run on
embedded digits (`:tiny`):
  python launch/train.py --config configs/mcav_m3so_nb.py:small --workdir workdirs/mcav_small_m \
      --config.data.dir=data/m3so_nb_small --config.stage=motion
  python launch/train.py --config configs/mcav_m3so_nb.py:tiny --workdir workdirs/mcav_tiny_m
  python launch/train.py --config configs/mcav_m3so_nb.py:tiny --workdir workdirs/mcav_tiny_r \
      --config.stage=refine --config.motion.workdir=workdirs/mcav_tiny_m
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, tiny=False, small=False)
    c = common.experiment("mcav", seed=1)
    c.stage = "motion"  # 'motion' (stage 1: MME) | 'refine' (stage 2: CAR on a frozen MME)
    c.motion = ml_collections.ConfigDict()
    c.motion.workdir = ml_collections.config_dict.placeholder(str)  # stage-1 run (refine)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.config_dict.placeholder(str)  # made by launch/make_m3so.py
    c.data.kind = "m3so"  # 'm3so' | 'frames' (real videos, launch/preprocess.py)
    c.data.block = False
    c.data.synthetic = False  # embedded tiny M3SO-NB when data.dir is unset
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.n_past = 5
    c.data.n_future = 15
    c.data.n_eval = 20
    c.data.image_size = 48
    c.data.channels = 1
    c.data.audio_shape = (23, 21)
    c.data.frame_scale = "per_frame_max"  # as the Sound2Sight runs on the same clips
    c.data.fps = 10.0
    c.data.global_batch_size = 32  # paper silent
    c.data.read_threads = 4
    c.data.flow = True  # batches carry "flow" [B, T, H, W, 2] (launch/add_flow.py adds it)

    c.model = ml_collections.ConfigDict()
    c.model.encoder_channels = (64, 64, 128, 128)  # E_m; the last is c
    c.model.audio_nf = 64  # E_a: {64, 128, 256, 512} then c
    c.model.lstm_features = 128
    c.model.lstm_layers = 4
    c.model.lstm_kernel = 3
    c.model.decoder_channels = (128, 64, 64)  # D_m, then 2 (flow)
    c.model.attention_scale = "none"  # 'none' (eq. 1) | 'rsqrt_dim'
    c.model.condense = True
    c.model.recall = True
    c.model.recall_keys = "condensed"  # 'condensed' (paper text) | 'memory'
    c.model.teacher_forcing = False
    c.model.car_widths = (32, 64, 128, 256)  # context encoder and U-Net, L = 4 levels
    c.model.mlp_hidden = 256
    c.model.context = True
    c.model.modulation = True
    c.model.context_merge = "concat"  # 'concat' | 'add'
    # Time steps per iteration of the scans over time; 0 unrolls them (no loop, longer
    # compiles), -1 unrolls them on CPU only (XLA:CPU runs convolution gradients inside
    # loops ~10-50x slower: the paper stage-2 step took 12.9 s scanned against ~1 s unrolled
    # at batch 2). The results do not depend on it.
    c.model.scan_unroll = -1

    c.loss = ml_collections.ConfigDict()
    c.loss.smooth_weight = 0.01

    c.optim = ml_collections.ConfigDict()
    c.optim.motion_lr = 1e-4
    c.optim.refine_lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.train = common.train(
        None,
        log_every=50,
        checkpoint_every=1000,
        eval_every=1000,
        eval_batches=4,
        sample_every=1000,
    )
    c.train.num_epochs = 200  # per stage; paper silent
    c.train.sample_clips = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 1  # deterministic: every "sample" is the same prediction
    c.eval.batch_size = 100
    c.eval.sample_chunk = 1
    c.eval.report_frames = (6, 15, 25)
    c.eval.block_iou = False

    if args["tiny"]:
        apply_tiny(c)
    if args["small"]:
        apply_small(c)
    return c


def apply_small(c: ml_collections.ConfigDict):
    """A CPU-sized model for short runs on real M3SO-NB (2,000 training clips): quarter
    widths (CAR an eighth), 10 predicted frames in training, batch 16, 4,000 steps per
    stage (32 epochs), about 30 min per stage on the 2-core reference CPU (a motion step
    0.31 s, a refine step 0.47 s, timed beside other jobs)."""
    c.data.n_future = 10
    # Scored on 25 predicted frames like Sound2Sight's :small: `evaluate.py --compare` then
    # covers all 25, the paper's frames 6 / 15 / 25 among them (it would cover only the
    # frames both predict).
    c.data.n_eval = 25
    c.data.global_batch_size = 16
    c.model.encoder_channels = (16, 16, 32, 32)
    c.model.audio_nf = 16
    c.model.lstm_features = 32
    c.model.decoder_channels = (32, 16, 16)
    c.model.car_widths = (4, 8, 16, 32)  # an eighth: CAR's steps cost about MME's
    c.model.mlp_hidden = 32
    c.train.num_steps, c.train.num_epochs = 4000, None
    c.train.checkpoint_every = 500
    c.train.eval_every = 1000
    c.train.sample_every = 1000


def apply_tiny(c: ml_collections.ConfigDict, n_past: int = 3, n_future: int = 3, n_eval: int = 5):
    """Tiny widths, embedded data, global batch 8, 20 steps, checkpoints every 10."""
    c.data.synthetic = True
    c.data.eval_split = "test"
    c.data.n_past, c.data.n_future, c.data.n_eval = n_past, n_future, n_eval
    c.model.encoder_channels = (8, 8, 16, 16)
    c.model.audio_nf = 8
    c.model.lstm_features = 16
    c.model.lstm_layers = 2
    c.model.decoder_channels = (16, 8, 8)
    c.model.car_widths = (8, 8, 16, 16)
    c.model.mlp_hidden = 16
    c.model.scan_unroll = 1  # one loop body: the quickest compile (tests)
    common.make_tiny(c, num_steps=20)
    c.train.num_epochs = None
    c.eval.batch_size = 8
    c.eval.report_frames = (n_past + 1, n_past + n_eval)
