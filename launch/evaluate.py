"""Evaluates a trained run with the evaluator of its task (`avjax.evals.EVALUATORS`).

  python launch/evaluate.py --workdir W --split test --melception M  # SpecVQGAN: FID, MKL, ISC
  python launch/evaluate.py --workdir W --num_samples 100            # Sound2Sight: SSIM, PSNR
  python launch/evaluate.py --workdir W --compare W2   # video prediction: W beside W2 (MCAV,
                                                       # Sound2Sight) on the same clips

Reads W/config.json, builds the split's data with `data_pipelines` and the model from the
run, runs the evaluator, prints its markdown tables and writes W/eval/<split>.json and .md
(with --compare also W/eval/<split>_compare.json and .md). The split defaults to `test`
when the data has one, else the run's `config.data.eval_split` (`launch/preprocess.py`
writes train and valid lists only). A Melception that scores more mel frames than the
run's codebook decodes is refused before anything is sampled.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from absl import flags

from avjax import paths, runs
from avjax.errors import UserError
from avjax.evals import EVALUATORS, tables
from avjax.evals import audio_generation as ag
from avjax.evals.video_prediction import VideoPredictionEvaluator, compare_markdown
from launch import common

flags.DEFINE_string("workdir", None, "trained run directory (its config.json names the task)")
flags.DEFINE_string(
    "split", None, "data split (default: test when the data has one, else config.data.eval_split)"
)
flags.DEFINE_integer("num_samples", None, "samples per clip (default: the task's)")
flags.DEFINE_integer("batch_size", None, "clips per jitted batch (default: the task's)")
flags.DEFINE_integer("max_clips", None, "evaluate only the first N clips of the split")
flags.DEFINE_string("data_dir", None, "override config.data.dir of the run")
flags.DEFINE_string("melception", None, "Melception classifier workdir or .pt (FID/MKL)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.DEFINE_multi_string(
    "compare",
    [],
    "video prediction: other runs (e.g. Sound2Sight beside MCAV) scored on the same clips and "
    "tabulated beside --workdir (repeatable)",
)
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def check_flags() -> None:
    """Flag values, before anything is read."""
    for name in ("num_samples", "batch_size", "max_clips"):
        value = getattr(FLAGS, name)
        if value is not None and value < 1:
            raise UserError(f"--{name}={value} must be >= 1")
    if FLAGS.data_dir and not pathlib.Path(FLAGS.data_dir).is_dir():
        raise UserError(f"--data_dir: {FLAGS.data_dir} is not a directory")
    if FLAGS.melception and not pathlib.Path(FLAGS.melception).exists():
        raise UserError(f"--melception: {FLAGS.melception} does not exist")


def _load_run(workdir: pathlib.Path, task: str) -> runs.Run:
    try:
        return runs.load_run(workdir, task)
    except UserError as e:
        raise UserError(f"--workdir: {e}") from None


def _score_video_prediction(config, workdir: pathlib.Path) -> tuple[dict, object]:
    """One video-prediction run (Sound2Sight, MCAV) on the split: its result and evaluator."""
    from avjax.train.tasks import make_task
    from data_pipelines.inputs import make_inputs

    with config.unlocked():
        config.data.eval_split = FLAGS.split
        config.data.global_batch_size = FLAGS.batch_size or config.eval.batch_size
    try:  # data problems stop here, before the checkpoint is read or anything compiles
        inputs = make_inputs(config)
    except (OSError, ValueError) as err:
        raise UserError(f"--split={FLAGS.split}: {err}") from None
    if inputs.eval_iter_fn is None:
        raise UserError(f"--split={FLAGS.split!r}: no such split to evaluate")
    task = make_task(config, inputs.stats)
    evaluator = VideoPredictionEvaluator.from_config(
        config, task.sample_futures, num_samples=FLAGS.num_samples
    )
    run = _load_run(workdir, config.task)
    state = {k: v for k, v in run.state.items() if k != "opt_state"}  # what sampling reads
    result = evaluator.evaluate(
        state,
        inputs.eval_iter_fn(),
        rng=jax.random.PRNGKey(FLAGS.seed),
        split=FLAGS.split,
        step=run.step,
        max_clips=FLAGS.max_clips,
    )
    return result, evaluator


def video_prediction(config, workdir: pathlib.Path) -> tuple[dict, str]:
    """Sound2Sight / MCAV: the split's clips (data_pipelines), the run's sampler."""
    result, evaluator = _score_video_prediction(config, workdir)
    return result, evaluator.markdown(result)


def compare_configs(config, workdir) -> list[tuple[object, object]]:
    """--compare runs and their configs, checked before anything is scored."""
    out = []
    for other in map(paths.as_path, FLAGS.compare):
        try:
            other_config = runs.read_config(other)
        except UserError as e:
            raise UserError(f"--compare: {e}") from None
        if EVALUATORS.get(other_config.get("task")) is not VideoPredictionEvaluator:
            raise UserError(
                f"--compare: {other} is a {other_config.get('task')!r} run, not a video-"
                "prediction run (Sound2Sight, MCAV)"
            )
        # n_eval may differ: the table covers the frames both predict (compare_markdown).
        for field in ("n_past", "image_size", "frame_scale"):
            mine, theirs = config.data.get(field), other_config.data.get(field)
            if mine != theirs:
                raise UserError(
                    f"--compare: {other} has data.{field}={theirs!r}, {workdir} has {mine!r}: "
                    "the runs must see and score the same frames"
                )
        if FLAGS.data_dir:
            other_config.data.dir = FLAGS.data_dir
        out.append((other, other_config))
    return out


def compare_runs(workdir, result: dict, others) -> None:
    """--compare: the other runs on the same split, one side-by-side table (W/eval)."""
    results = {workdir.name: result}
    for other, other_config in others:
        name = other.name if other.name not in results else str(other)
        results[name] = _score_video_prediction(other_config, other)[0]
    markdown = compare_markdown(results)
    json_path, md_path = tables.write(
        workdir / "eval", f"{FLAGS.split}_compare", {"runs": results}, markdown
    )
    print(markdown)
    print(f"wrote {md_path} and {json_path}")


def audio_clips(config, split: str, max_clips: int | None, seed: int) -> ag.AudioClips:
    """The split's real log-mels and visual features, every spectrogram checked first."""
    from tqdm import tqdm

    from data_pipelines import codes_inputs, pipeline, spec_folders
    from data_pipelines import features as F

    d = config.data
    try:
        data_dir = codes_inputs.resolve_data_dir(config)
        src = spec_folders.open_spec_source(
            data_dir, split, d.layout, labels_csv=d.get("labels_csv")
        )
        n = len(src) if max_clips is None else min(max_clips, len(src))
        spec = F.FeatureSpec.from_config(config)
        if spec.kind == "none":  # "No Feats": random features, fixed per seed and clip
            features = lambda i: F.random_features(spec, np.random.default_rng([seed, 1, i]))
        else:
            paths = [F.clip_feature_paths(p, spec.kind) for p in src.paths[:n]]
            codes_inputs._check_feature_files(paths, split)
            features = lambda i: F.load_clip_features(paths[i], spec)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    for i in tqdm(range(n), desc="checking spectrograms", unit="clip", leave=False):
        src[i]  # a bad *_mel.npy stops here, naming the file, before any sampling
    return ag.AudioClips(
        ids=list(src.ids[:n]),
        labels=np.asarray(src.labels[:n]),
        class_names=src.class_names,
        mel=lambda i: pipeline.center_crop(src[i]["mel"], ag.WINDOW_FRAMES),
        features=features,
        data_dir=str(data_dir),
    )


def audio_generation(config, workdir: pathlib.Path) -> tuple[dict, str]:
    """SpecVQGAN transformer: the split's clips, a Melception scorer, the run's Video2Sound."""
    from avjax.models.specvqgan.video2sound import Video2Sound

    num_samples = FLAGS.num_samples or ag.DEFAULT_NUM_SAMPLES
    batch = FLAGS.batch_size or ag.DEFAULT_BATCH_SIZE
    if not FLAGS.melception:
        ag.load_scorer(None)  # the missing-flag error, before reading anything
    clips = audio_clips(config, FLAGS.split, FLAGS.max_clips, FLAGS.seed)
    # One Melception call per batch: its reals and fakes together, one compiled shape.
    scorer = ag.load_scorer(FLAGS.melception, batch_size=batch * (num_samples + 1))
    try:
        generator = Video2Sound.from_workdir(workdir)
    except (OSError, ValueError) as e:
        raise UserError(f"--workdir: {e}") from None
    check_lengths(generator.codec.crop_frames, scorer)  # before any sampling
    evaluator = ag.AudioGenerationEvaluator.from_config(
        config,
        generator,
        scorer,
        num_samples=num_samples,
        batch_size=batch,
        seed=FLAGS.seed,
        melception=FLAGS.melception,
    )
    result = evaluator.evaluate(clips, split=FLAGS.split, workdir=workdir)
    return result, evaluator.markdown(result)


def check_lengths(decoded_frames: int, scorer) -> None:
    """Refuses a Melception that scores more mel frames than the codebook decodes."""
    need = scorer.crop_frames  # an avjax Melception run: its training crop; official: 848
    if decoded_frames < need:
        raise UserError(
            f"--melception: it scores {need} mel frames, but this run's codebook decodes "
            f"{decoded_frames}: use a Melception trained at {decoded_frames} frames (for the "
            "`:tiny` chain: python launch/train.py --config configs/melception_vggsound.py:tiny)"
        )


def default_split(config) -> str:
    """`test` when the run's data has a test split, else `config.data.eval_split`."""
    if config.task != "transformer":
        return "test"  # Sound2Sight's datasets (M3SO, preprocess.py --target sound2sight)
    from data_pipelines import codes_inputs, spec_folders

    try:
        lists = spec_folders.split_lists(codes_inputs.resolve_data_dir(config), config.data.layout)
    except (OSError, ValueError):
        return "test"  # the data's own error follows, naming what is missing
    if "test" in lists:
        return "test"
    print(f"note: the data has no test split list; evaluating {config.data.eval_split!r}")
    return config.data.eval_split


# Evaluator class -> what this launcher reads for it (data, model) and runs.
RUNNERS = {
    VideoPredictionEvaluator: video_prediction,
    ag.AudioGenerationEvaluator: audio_generation,
}


def main(argv):
    del argv
    common.setup_jax()
    check_flags()
    workdir = paths.as_path(FLAGS.workdir)  # local or gs://
    try:
        config = runs.read_config(workdir)
    except UserError as e:
        raise UserError(f"--workdir: {e}") from None
    if FLAGS.data_dir:
        config.data.dir = FLAGS.data_dir
    evaluator = EVALUATORS.get(config.get("task"))
    if evaluator is None:
        raise UserError(
            f"--workdir: {workdir} is a {config.get('task')!r} run; evaluate.py takes runs of "
            f"the tasks {sorted(EVALUATORS)} (SpecVQGAN transformer, Sound2Sight)"
        )
    if FLAGS.split is None:
        FLAGS.split = default_split(config)
    if FLAGS.compare and evaluator is not VideoPredictionEvaluator:
        raise UserError("--compare takes video-prediction runs (Sound2Sight, MCAV)")
    others = compare_configs(config, workdir)
    result, markdown = RUNNERS[evaluator](config, workdir)
    json_path, md_path = tables.write(workdir / "eval", FLAGS.split, result, markdown)
    print(markdown)
    print(f"wrote {md_path} and {json_path}")
    if FLAGS.compare:
        compare_runs(workdir, result, others)


if __name__ == "__main__":
    common.run(main)
