"""Encodes a dataset's spectrograms with a trained codebook, once, for transformer training.

  python launch/extract_codes.py --codebook_workdir workdirs/codebook_vggsound \
      --data_dir /data/vggsound [--out DIR] [--splits train,valid,test]

Writes DIR/codes.json (codebook workdir and step, grid 5x53, n_embed), DIR/<split>.npy
(int16 [N, 265] column-major code sequences) and DIR/<split>_ids.txt. The default DIR is
DATA_DIR/codes/<codebook name>-<hash>, where the transformer configs look when
`config.data.codes_dir` is unset (single-process training also extracts them by itself).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import flags

from avjax.errors import UserError
from avjax.models.specvqgan.code_encoder import CodeEncoder
from avjax.runs import read_config
from data_pipelines import codes, spec_folders
from launch import common

flags.DEFINE_string("codebook_workdir", None, "trained codebook run (config.json + checkpoints/)")
flags.DEFINE_string("data_dir", None, "dataset folder in the official VGGSound/VAS layout")
flags.DEFINE_string("out", None, "output folder (default DATA_DIR/codes/<codebook>-<hash>)")
flags.DEFINE_list("splits", None, "splits to encode (default: those with a split list)")
flags.DEFINE_enum("layout", "auto", ["auto", "vas", "vggsound"], "dataset layout")
flags.DEFINE_string("labels_csv", None, "VGGSound vggsound.csv (labels are not stored here)")
flags.DEFINE_integer("batch_size", 16, "clips per jitted encoder call")
flags.DEFINE_integer(
    "crop_frames", None, "centre crop of the spectrograms (default: the codebook's, 848)"
)
flags.mark_flags_as_required(["codebook_workdir", "data_dir"])
FLAGS = flags.FLAGS


def available_splits(data_dir: str, layout: str) -> list[str]:
    out = []
    for split in ("train", "valid", "test"):
        try:
            spec_folders.open_spec_source(data_dir, split, layout)
        except (FileNotFoundError, ValueError):
            continue
        out.append(split)
    if not out:
        raise UserError(f"--data_dir: {data_dir} has no readable split (train/valid/test)")
    return out


def check_codebook(workdir: pathlib.Path) -> None:
    """--codebook_workdir is a codebook run with a checkpoint."""
    try:
        read_config(workdir, "vqgan")
    except UserError as e:
        raise UserError(f"--codebook_workdir: {e} (give a codebook training run)") from None
    try:
        codes.codebook_step(workdir)
    except FileNotFoundError as e:
        raise UserError(f"--codebook_workdir: {e}") from None


def main(argv):
    del argv
    common.setup_jax()
    if not pathlib.Path(FLAGS.data_dir).is_dir():
        raise UserError(f"--data_dir: {FLAGS.data_dir} is not a directory")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be >= 1")
    if FLAGS.crop_frames is not None and FLAGS.crop_frames < 16:
        raise UserError(f"--crop_frames={FLAGS.crop_frames} must be >= 16 (one code column)")
    check_codebook(pathlib.Path(FLAGS.codebook_workdir))
    splits = FLAGS.splits or available_splits(FLAGS.data_dir, FLAGS.layout)
    for split in splits:  # a missing split list or bad folder stops here, before encoding
        try:
            spec_folders.open_spec_source(
                FLAGS.data_dir, split, FLAGS.layout, labels_csv=FLAGS.labels_csv
            )
        except (OSError, ValueError) as e:
            raise UserError(f"--splits: {split}: {e}") from None
    out = codes.extract_codes(
        FLAGS.codebook_workdir,
        FLAGS.data_dir,
        splits,
        FLAGS.out,
        layout=FLAGS.layout,
        labels_csv=FLAGS.labels_csv,
        batch_size=FLAGS.batch_size,
        crop_frames=FLAGS.crop_frames,
        make_encoder=CodeEncoder,
    )
    print(f"codes of {', '.join(splits)} written to {out}")


if __name__ == "__main__":
    common.run(main)
