"""Videos -> SpecVQGAN log-mels: `python launch/preprocess.py --videos DIR --out DIR`.

Writes `OUT/melspec_10s_22050hz/<stem>_mel.npy` [80, 860] and `<stem>_audio.npy` [220500]
for every media file under `--videos` (recursive), plus `OUT/vggsound_{train,valid}.txt`
split lists (unless present), so `--config.data.dir=OUT` trains on it directly.
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python launch/preprocess.py` from a source checkout
    sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

from data_pipelines import preprocess  # noqa: E402

_VIDEOS = flags.DEFINE_string("videos", None, "Folder of videos, searched recursively.")
_OUT = flags.DEFINE_string("out", None, "Output root; files go to OUT/melspec_10s_22050hz/.")
_MODE = flags.DEFINE_enum(
    "mode",
    "official",
    preprocess.MODES,
    "official: re-run SpecVQGAN's AAC re-encode/loop chain; fast: s16 decode + loop.",
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "Worker processes (1: in-process).")
_VALID = flags.DEFINE_float(
    "valid_fraction", 0.1, "Share of clips listed in vggsound_valid.txt (the rest: train)."
)
flags.mark_flags_as_required(["videos", "out"])


def main(argv):
    del argv
    if not pathlib.Path(_VIDEOS.value).is_dir():
        raise app.UsageError(f"--videos: {_VIDEOS.value} is not a directory")
    summary = preprocess.preprocess_folder(
        _VIDEOS.value, _OUT.value, mode=_MODE.value, num_workers=_NUM_WORKERS.value
    )
    print(summary)
    counts = preprocess.write_split_lists(_OUT.value, _VALID.value)
    print(f"split lists in {_OUT.value}: {counts}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    app.run(main)
