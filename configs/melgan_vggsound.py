"""MelGAN vocoder for SpecVQGAN's log-mels, trained on VGGSound waveforms.

Paper values (official `vocoder/logs/vggsound/args.yml`, docs/specvqgan.md A5): 80 mel
channels, ngf 32,
3 residual layers per stage, upsampling (8, 8, 2, 2) = hop 256; 3 critic scales with ndf 16,
4 strided layers, downsampling 4; feature matching weight 10; 8192-sample windows at
22050 Hz, batch 64; Adam lr 1e-4, betas (0.5, 0.9) for both networks. Generator 4,266,050
and discriminator 16,924,086 parameters. The input is the same [0, 1] log-mel the codebook
uses, so vocoded codebook/transformer outputs need no conversion beyond (x + 1) / 2.

Expected results: the official run is judged by listening and `mel_l1`; avjax has not
trained it at scale (CPU-only development). Vocoding 10 s takes 0.34 s on the 2-core
reference CPU (README, Benchmarks). The released generator converts exactly (tests).

Train (the official layout with `<id>_audio.npy` beside `<id>_mel.npy`, as written by
`launch/preprocess.py`):
  python launch/train.py --config configs/melgan_vggsound.py \
      --workdir workdirs/melgan_vggsound --config.data.dir=/data/vggsound
Decode the audio from the videos instead of `_audio.npy`:
  ... --config.data.audio_source=media --config.data.media_dir=/data/vggsound/video
Watch `train/mel_l1` (the official best-checkpoint criterion) and `eval/mel_l1` (centre
windows of the valid split), and listen to samples/<step>/*_vocoded.wav.
Then vocode with `avjax.audio.vocoder.load_vocoder(workdir)` or `launch/sample.py
--vocoder_workdir workdirs/melgan_vggsound`. Import the released generator instead:
  python launch/convert_checkpoint.py --kind melgan --torch best_netG.pt --out W

CPU smoke run on the embedded synthetic clips:
  python launch/train.py --config configs/melgan_vggsound.py:tiny --workdir workdirs/melgan_tiny
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, tiny=False)
    c = common.experiment("melgan", seed=23)

    c.data = ml_collections.ConfigDict()
    c.data.dir = ml_collections.config_dict.placeholder(str)  # dataset root (official layout)
    c.data.layout = "auto"  # 'vggsound' | 'vas' | 'auto' (split lists as for the codebook)
    c.data.labels_csv = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "valid"
    c.data.audio_source = "npy"  # 'npy': <id>_audio.npy beside <id>_mel.npy | 'media'
    c.data.media_dir = ml_collections.config_dict.placeholder(str)  # media: <entry>.mp4/.wav
    c.data.media_resample = True  # media: resample to 22050 Hz (False: refuse other rates)
    c.data.sample_rate = 22050
    c.data.hop_length = 256
    c.data.seq_len = 8192  # training window (32 mel frames)
    c.data.peak_norm = 0.95  # official: 0.95 * librosa.util.normalize(clip)
    c.data.amplitude_range = (0.3, 1.0)  # train-time random gain; () disables
    c.data.global_batch_size = 64
    c.data.read_threads = 8
    c.data.num_sample_clips = 4  # whole eval clips vocoded at every sample_every
    c.data.synthetic = False  # use the embedded synthetic clips when data.dir is unset

    c.model = ml_collections.ConfigDict()  # the generator
    c.model.n_mel_channels = 80
    c.model.ngf = 32
    c.model.n_residual_layers = 3
    c.model.ratios = (8, 8, 2, 2)

    c.disc = ml_collections.ConfigDict()
    c.disc.num_D = 3
    c.disc.ndf = 16
    c.disc.n_layers = 4
    c.disc.downsampling_factor = 4

    c.loss = ml_collections.ConfigDict()
    c.loss.lambda_feat = 10.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.b1 = 0.5
    c.optim.b2 = 0.9
    c.optim.eps = 1e-8  # torch Adam default

    # The official run trains for days; set num_steps to your budget.
    c.train = common.train(
        1_000_000,
        log_every=100,
        checkpoint_every=5000,
        eval_every=5000,
        eval_batches=20,
        sample_every=5000,
    )

    if args["tiny"]:
        common.make_tiny(c)
        c.data.synthetic = True
        c.data.seq_len = 4096
        c.data.num_sample_clips = 2
        c.model.ngf = 4
        c.disc.ndf = 4
        c.disc.n_layers = 2
    return c
