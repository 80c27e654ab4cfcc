"""Evaluates a trained run; the metrics depend on the run's task (from W/config.json).

  python launch/evaluate.py --workdir W --split test               # SpecVQGAN transformer: FID, MKL
  python launch/evaluate.py --workdir W --num_samples 100          # Sound2Sight: SSIM, PSNR

Writes W/eval/<name>.json and <name>.md.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections
from absl import flags

from avjax.errors import UserError
from launch import common

flags.DEFINE_string("workdir", None, "trained run directory (its config.json names the task)")
flags.DEFINE_string("split", "test", "data split to evaluate")
flags.DEFINE_integer("num_samples", None, "samples per clip (default: the task's)")
flags.DEFINE_integer("batch_size", None, "clips per jitted batch (default: the task's)")
flags.DEFINE_integer("max_clips", None, "evaluate only the first N clips of the split")
flags.DEFINE_string("data_dir", None, "override config.data.dir of the run")
flags.DEFINE_string("melception", None, "Melception classifier workdir or .pt (FID/MKL)")
flags.DEFINE_integer("seed", 0, "sampling seed")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    path = workdir / "config.json"
    if not path.is_file():
        raise UserError(f"--workdir: {path} not found; is {workdir} an avjax run?")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"--workdir: {path} is not a readable run config ({e})") from None


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


def main(argv):
    del argv
    common.setup_jax()
    check_flags()
    workdir = pathlib.Path(FLAGS.workdir)
    config = load_run_config(workdir)
    if FLAGS.data_dir:
        config.data.dir = FLAGS.data_dir
    if config.get("task") == "transformer":
        from launch.evaluators import specvqgan as evaluator
    elif config.get("task") == "sound2sight":
        from launch.evaluators import sound2sight as evaluator
    else:
        raise UserError(
            f"--workdir: {workdir} is a {config.get('task')!r} run; evaluate.py "
            "takes SpecVQGAN transformer and Sound2Sight runs"
        )
    out = evaluator.run(config, workdir, FLAGS)
    print(f"wrote {out}")


if __name__ == "__main__":
    common.run(main)
