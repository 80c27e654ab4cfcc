"""Videos -> SpecVQGAN log-mels: `python launch/preprocess.py --videos DIR --out DIR`.

Writes `OUT/melspec_10s_22050hz/<stem>_mel.npy` [80, 860] and `<stem>_audio.npy` [220500]
for every media file under `--videos` (recursive), plus `OUT/vggsound_{train,valid}.txt`
split lists (unless present), so `--config.data.dir=OUT` trains on it directly.
With `--resnet50_weights PATH` (a torchvision ResNet-50 state dict, .pth or .npz) it also
writes `OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl` [~215, 2048] visual features.

`--target sound2sight`: 64x64 RGB frames at 30 fps with 45x17 audio patches per frame, in
windows of `--num_frames`, as TFDS in OUT/avjax_av_frames/ (`data_pipelines.video_frames`).
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python launch/preprocess.py` from a source checkout
    sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

from data_pipelines import preprocess  # noqa: E402
from launch import common  # noqa: E402

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
_RESNET50 = flags.DEFINE_string(
    "resnet50_weights",
    None,
    "torchvision ResNet-50 state dict (.pth needs torch, .npz without): also write "
    "OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl features at 21.5 fps.",
)
_TARGET = flags.DEFINE_enum(
    "target", "specvqgan", ["specvqgan", "sound2sight"], "Which model's inputs to write."
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 45, "sound2sight: frames per window (30 fps).")
_TEST = flags.DEFINE_float("test_fraction", 0.1, "sound2sight: share of clips in the test split.")
flags.mark_flags_as_required(["videos", "out"])


def _sound2sight() -> int:
    from data_pipelines import video_frames

    builder, summary = video_frames.build_frames_dataset(
        _VIDEOS.value,
        _OUT.value,
        num_frames=_NUM_FRAMES.value,
        valid_fraction=_VALID.value,
        test_fraction=_TEST.value,
        progress=True,
    )
    print(f"wrote {builder.data_dir}: {summary['windows']} windows from {summary['clips']} clips")
    for path, why in summary["skipped"]:
        print(f"skipped {path}: {why}")
    return 0 if sum(summary["windows"].values()) else 1


def main(argv):
    del argv
    if not pathlib.Path(_VIDEOS.value).is_dir():
        raise app.UsageError(f"--videos: {_VIDEOS.value} is not a directory")
    if _RESNET50.value and not pathlib.Path(_RESNET50.value).is_file():
        raise app.UsageError(f"--resnet50_weights: {_RESNET50.value} does not exist")
    if _TARGET.value == "sound2sight":
        return _sound2sight()
    summary = preprocess.preprocess_folder(
        _VIDEOS.value, _OUT.value, mode=_MODE.value, num_workers=_NUM_WORKERS.value
    )
    print(summary)
    counts = preprocess.write_split_lists(_OUT.value, _VALID.value)
    print(f"split lists in {_OUT.value}: {counts}")
    failed = bool(summary.failed)
    if _RESNET50.value:
        from data_pipelines import visual_features

        feats = visual_features.resnet50_features_folder(_VIDEOS.value, _OUT.value, _RESNET50.value)
        print(f"resnet50 features: {feats}")
        failed = failed or bool(feats.failed)
    return 1 if failed else 0


if __name__ == "__main__":
    common.run(main)
