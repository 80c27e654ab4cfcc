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
  --video alone: ResNet-50 features of its frames at 21.5 fps (needs --resnet50_weights, an
    ImageNet torchvision ResNet-50 state dict; a ResNet-50-conditioned run);
  neither, for "No Feats" runs (`data.features='none'`): seeded uniform noise.
Writes DIR/<name>_sample_<i>.wav (22050 Hz), DIR/<name>_sample_<i>.png (log-mel, low
frequencies at the bottom) and, with --video, DIR/<name>_sample_<i>.mp4: the input video
with the generated audio. --vocoder_workdir is a MelGAN run or the official generator;
without it Griffin-Lim inverts the spectrograms (slower, lower quality). --seconds > 10
continues the audio with a sliding window (per-frame features are windowed with it).
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np
from absl import flags

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
flags.DEFINE_float("seconds", None, "audio length; > 10 s slides the window (default 10 s)")
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


def feature_spec(config):
    from data_pipelines import features as F

    d, m = config["data"], config["model"]
    return F.FeatureSpec(
        kind=d["features"] if m["feat_dim"] else "none",  # feat_dim 0: a class-only model
        feat_len=d["feat_len"],
        feat_crop=d["feat_crop"],
        sample_size=d["feat_sample_size"],
        dim=m["feat_dim"],
    )


def read_streams(spec) -> list[np.ndarray] | None:
    """The per-frame feature streams of the input ([T, D_i] at 21.5 fps); None: No Feats."""
    from data_pipelines import features as F

    if spec.kind == "none":
        if FLAGS.features:
            print("note: this run was trained without features ('No Feats'); ignoring them")
        return None
    if FLAGS.features:
        folder = pathlib.Path(FLAGS.features).parent.name
        trained = {d for d, _ in F.FEATURE_DIRS[spec.kind]}
        if folder.startswith("feature_") and folder not in trained:
            print(
                f"warning: {FLAGS.features} is from {folder}/, but this run was trained on "
                f"{spec.kind} features ({', '.join(sorted(trained))})",
                file=sys.stderr,
            )
        return F.read_feature_streams(FLAGS.features, spec.dim, FLAGS.flow_features)
    if not FLAGS.video:
        raise ValueError(
            f"this run is conditioned on {spec.kind} features: give --features FILE.pkl or "
            "--video clip.mp4 (with --resnet50_weights)"
        )
    if spec.kind != "resnet50":
        raise ValueError(
            f"this run is conditioned on {spec.kind} features, which need optical flow and "
            "cannot be computed from --video here; give --features (the official "
            "feature_rgb_bninception pkl) or use a ResNet-50-conditioned run"
        )
    if not FLAGS.resnet50_weights:
        raise ValueError(
            "--video without --features needs real ResNet-50 weights: pass --resnet50_weights, "
            "a torchvision ImageNet resnet50 state dict (.pth needs the torch extra; an .npz of "
            "the same keys works without), or give --features"
        )
    from avjax.models.resnet_features import resnet50_features

    # As the official demo (`LeftmostCropOrTile`): a short clip's frames repeat from its start.
    x = resnet50_features(FLAGS.video, FLAGS.resnet50_weights, FPS)
    return [F.tile_or_crop(x, max(spec.feat_len, len(x)))]


def num_columns(v2s, seconds: float | None) -> int:
    """Code columns for `seconds` of audio (default: one window, 53 columns = 848 frames)."""
    if seconds is None:
        return v2s.window_columns
    if seconds <= 0:
        raise ValueError(f"--seconds={seconds} must be positive")
    frames_per_column = v2s.codec.crop_frames // v2s.window_columns  # 16 mel hops
    spec = v2s.codec.spec
    return max(1, int(seconds * spec.sample_rate / spec.hop_length // frames_per_column))


def condition(streams, spec, columns: int, window_columns: int, seed: int) -> np.ndarray:
    """The model's condition [Tc, D], or per-frame features [T, D] when sliding a window."""
    from data_pipelines import features as F

    if streams is None:
        return F.random_features(spec, np.random.default_rng(seed))
    if columns > window_columns:  # 4 video frames per code column (21.5 fps vs 16 hops)
        return F.per_frame_features(streams, 4 * columns + 1)
    return F.prepare_features(streams, spec)


def main(argv):
    del argv

    common.setup_jax()
    import jax
    from tqdm import tqdm

    from avjax import images
    from avjax.audio import io as audio_io
    from avjax.audio.vocoder import load_vocoder
    from avjax.models.specvqgan.video2sound import Video2Sound
    from avjax.video import io as video_io

    workdir, out = pathlib.Path(FLAGS.workdir), pathlib.Path(FLAGS.out)
    if FLAGS.num_samples < 1:
        raise UserError(f"--num_samples={FLAGS.num_samples} must be >= 1")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    bar = tqdm(total=5 + FLAGS.num_samples, unit="step", desc="loading", dynamic_ncols=True)
    try:  # missing / unreadable / malformed inputs stop here, before the slow part
        config = run_config(workdir)
        spec = feature_spec(config)
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
        columns = num_columns(v2s, FLAGS.seconds)
        feats = condition(streams, spec, columns, v2s.window_columns, FLAGS.seed)
    except (OSError, ValueError) as e:
        bar.close()
        raise UserError(str(e)) from None
    bar.update(1)
    labels = np.asarray([FLAGS.label], np.int32) if num_classes else None
    s = config.get("sampling", {})
    pick = lambda flag, key, default: flag if flag is not None else s.get(key, default)
    kw = dict(
        temperature=pick(FLAGS.temperature, "temperature", 1.0),
        top_k=pick(FLAGS.top_k, "top_k", 0),
        top_p=pick(FLAGS.top_p, "top_p", 1.0),
    )
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
    waves = np.asarray(vocoder(mels))
    t_vocode = time.perf_counter() - t0
    bar.update(1)
    out.mkdir(parents=True, exist_ok=True)
    sr = vocoder.sample_rate
    written = []
    for i, (mel, wave) in enumerate(zip(mels, waves)):
        bar.set_description(f"writing sample {i}")
        stem = out / f"{name}_sample_{i}"
        audio_io.write_wav(stem.with_suffix(".wav"), wave, sr)
        images.save_png(stem.with_suffix(".png"), mel[::-1], scale=2)
        written += [stem.with_suffix(".wav"), stem.with_suffix(".png")]
        if FLAGS.video:
            video_io.replace_audio(FLAGS.video, wave, sr, stem.with_suffix(".mp4"))
            written.append(stem.with_suffix(".mp4"))
        bar.update(1)
    bar.close()
    seconds = waves.shape[1] / sr
    print(
        f"{FLAGS.num_samples} sample(s) of {seconds:.2f} s: sampling {t_sample:.2f} s, "
        f"vocoding {t_vocode:.2f} s"
    )
    for p in written:
        print(f"wrote {p}")


if __name__ == "__main__":
    common.run(main)
