"""Video (or its visual features) to sound with a trained SpecVQGAN transformer.

  python launch/sample.py --workdir W --out DIR --video clip.mp4 --resnet50_weights r50.npz
  python launch/sample.py --workdir W --out DIR --features clip.pkl [--video clip.mp4]
      [--num_samples N] [--vocoder_workdir V] [--temperature 1] [--top_k 512] [--seconds 20]
      [--weights_dtype float32|bfloat16|int8]

W is a transformer run (`configs/specvqgan_transformer_*.py`; its codebook is the one its
config names). The condition is, in order of preference:
  --features: an official-layout feature file: `feature_resnet50_dim2048_21.5fps/<id>.pkl`,
    or a BN-Inception rgb pkl (its flow twin is found in the sibling folder, or given by
    --flow_features), as the run was trained on;
  --video alone: the feature files beside it (`data_pipelines.features.video_feature_paths`:
    the official VAS `videos/<class>/` + `features/<class>/` layout, or feature folders next
    to the video), else ResNet-50 features of its frames at 21.5 fps (needs
    --resnet50_weights, an ImageNet torchvision ResNet-50 state dict; a ResNet-50 run);
  neither, for "No Feats" runs (`data.features='none'`): seeded uniform noise.
Writes DIR/<name>_sample_<i>.wav (22050 Hz), DIR/<name>_sample_<i>.png (the log-mel with
seconds and mel-bin axes and a dB colour bar) and, with --video, DIR/<name>_sample_<i>.mp4:
the input video with the generated audio. --vocoder_workdir is a MelGAN run or the official
generator; without it Griffin-Lim inverts the spectrograms (slower, lower quality); a vocoder
output that is no sound at all (an undertrained MelGAN gives a constant wave) is redone by
Griffin-Lim with a warning. The audio is peak-normalised (-0.45 dBFS), never clipped.
The default length is one window of the run's codebook (10 s at the paper's 80x848, 0.74 s
for the `:tiny` configs' 64 frames); a longer --seconds continues the audio with a sliding
window (per-frame features are windowed with it). A feature file of another kind than the
run was trained on (BN-Inception for a ResNet-50 run, or the reverse) is refused.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
from absl import flags

from avjax import paths
from avjax.errors import UserError
from avjax.runs import read_config
from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "trained transformer run (config.json + checkpoints/)")
flags.DEFINE_string("out", None, "output folder")
flags.DEFINE_string("features", None, "official-layout visual feature file (.pkl)")
flags.DEFINE_string("flow_features", None, "BN-Inception flow .pkl (default: the sibling)")
flags.DEFINE_string(
    "video",
    None,
    "input video: the picture of the output .mp4, and the frames "
    "to extract ResNet-50 features from when --features is not given",
)
flags.DEFINE_integer("num_samples", 1, "samples to generate")
flags.DEFINE_string(
    "vocoder_workdir", None, "MelGAN run or official generator (default: Griffin-Lim)"
)
flags.DEFINE_string("resnet50_weights", None, "torchvision ResNet-50 state dict (.pth/.npz)")
flags.DEFINE_string("codebook_workdir", None, "override the codebook the run's config names")
flags.DEFINE_float("temperature", None, "softmax temperature (default: config.sampling)")
flags.DEFINE_integer("top_k", None, "keep the k most likely tokens; 0 = all (default: config)")
flags.DEFINE_float("top_p", None, "nucleus sampling mass; 1 = off (default: config)")
flags.DEFINE_integer("label", None, "class index, for class-conditioned runs")
flags.DEFINE_float(
    "seconds",
    None,
    "audio length (default: one window of the codebook: 10 s at the paper's 80x848, "
    "0.74 s for the :tiny configs' 64 frames); longer slides the window",
)
flags.DEFINE_integer("seed", 0, "sampling seed (same seed, same samples)")
flags.DEFINE_enum(
    "weights_dtype",
    None,
    ["float32", "bfloat16", "int8"],
    "transformer Dense kernels while sampling (the checkpoint stays float32): fewer bytes "
    "read per token; default bfloat16 on GPU / TPU, float32 on CPU",
)
flags.mark_flags_as_required(["workdir", "out"])

FPS = 21.5


def run_config(workdir: pathlib.Path):
    """The transformer run's config (`avjax.runs.read_config`); errors name --workdir."""
    try:
        return read_config(workdir, "transformer")
    except UserError as e:
        raise UserError(f"--workdir: {e}") from None


def read_streams(spec) -> list[np.ndarray] | None:
    """The per-frame feature streams of the input ([T, D_i] at 21.5 fps); None: No Feats."""
    from data_pipelines import features as F

    if spec.kind == "none":
        if FLAGS.features:
            print("note: this run was trained without features ('No Feats'); ignoring them")
        return None
    # A --features file of another kind than the run's is refused (F.check_feature_kind).
    if (
        not FLAGS.features
        and FLAGS.video
        and (found := F.video_feature_paths(FLAGS.video, spec.kind))
    ):
        print(f"using the features beside the video: {', '.join(map(str, found))}")
    extractor = None
    if FLAGS.resnet50_weights:
        from avjax.models.resnet_features import resnet50_features

        extractor = lambda video: resnet50_features(video, FLAGS.resnet50_weights, FPS)
    return F.visual_streams(
        spec, FLAGS.features, FLAGS.flow_features, FLAGS.video, extractor=extractor
    )


def main(argv):
    del argv

    common.setup_jax()
    import jax
    from tqdm import tqdm

    from avjax.audio.vocoder import load_vocoder, vocode_checked
    from avjax.models.specvqgan.video2sound import Video2Sound
    from avjax.samples import write_audio_sample
    from avjax.video import io as video_io
    from data_pipelines import features as F

    workdir, out = paths.as_path(FLAGS.workdir), pathlib.Path(FLAGS.out)
    if FLAGS.num_samples < 1:
        raise UserError(f"--num_samples={FLAGS.num_samples} must be >= 1")
    if FLAGS.seconds is not None and not FLAGS.seconds > 0:
        raise UserError(f"--seconds={FLAGS.seconds} must be positive")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    bar = tqdm(total=5 + FLAGS.num_samples, unit="step", desc="loading", dynamic_ncols=True)
    try:  # missing / unreadable / malformed inputs stop here, before the slow part
        config = run_config(workdir)
        spec = F.FeatureSpec.from_config(config)
        num_classes = config["model"].get("num_classes", 0)
        if num_classes and (FLAGS.label is None or not 0 <= FLAGS.label < num_classes):
            raise ValueError(f"this run is class-conditioned: give --label in [0, {num_classes})")
        if FLAGS.video:
            video_io.read_frames(FLAGS.video, 1.0, 8)
        streams = read_streams(spec)
        name = pathlib.Path(FLAGS.features or FLAGS.video or "no_feats").stem
        bar.update(1)
        v2s = Video2Sound.from_workdir(workdir, FLAGS.codebook_workdir, FLAGS.weights_dtype)
        vocoder = load_vocoder(FLAGS.vocoder_workdir)
        columns = v2s.num_columns(FLAGS.seconds)
        feats = F.condition(
            streams, spec, columns, v2s.window_columns, FLAGS.seed, v2s.feature_frames_per_column
        )
    except (OSError, ValueError) as e:
        bar.close()
        raise UserError(str(e)) from None
    bar.update(1)
    labels = np.asarray([FLAGS.label], np.int32) if num_classes else None
    # None: the run's config.sampling value (Video2Sound.sampling_defaults)
    kw = dict(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    bar.set_description(f"sampling {FLAGS.num_samples} x {v2s.rows * columns} tokens")
    t0 = time.perf_counter()
    codes = v2s.sample_codes(
        feats[None] if spec.dim else None,
        jax.random.PRNGKey(FLAGS.seed),
        num_samples=FLAGS.num_samples,
        labels=labels,
        num_columns=columns,
        **kw,
    )
    codes = np.asarray(jax.device_get(codes))
    t_sample = time.perf_counter() - t0
    bar.update(1)
    bar.set_description("decoding")
    mels = np.asarray(v2s.decode(codes))
    bar.update(1)
    bar.set_description(f"vocoding ({getattr(vocoder, 'name', 'vocoder')})")
    t0 = time.perf_counter()
    waves, notes = vocode_checked(vocoder, mels)  # no sound at all: redone by Griffin-Lim
    t_vocode = time.perf_counter() - t0
    bar.update(1)
    out.mkdir(parents=True, exist_ok=True)
    sr = vocoder.sample_rate
    written = []
    for i, (mel, wave) in enumerate(zip(mels, waves)):
        bar.set_description(f"writing sample {i}")
        title = f"{name}, sample {i} (seed {FLAGS.seed})"  # a labelled picture
        stem = out / f"{name}_sample_{i}"
        files = write_audio_sample(stem, mel, wave, sr, FLAGS.video, title=title)
        written += list(files.values())
        bar.update(1)
    bar.close()
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    seconds = waves.shape[1] / sr
    print(
        f"{FLAGS.num_samples} sample(s) of {seconds:.2f} s: sampling {t_sample:.2f} s, "
        f"vocoding {t_vocode:.2f} s"
    )
    for p in written:
        print(f"wrote {p}")


if __name__ == "__main__":
    common.run(main)
