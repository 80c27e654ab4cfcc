"""Videos -> SpecVQGAN log-mels: `python launch/preprocess.py --videos DIR --out DIR`.

Writes `OUT/melspec_10s_22050hz/<stem>_mel.npy` [80, 860] and `<stem>_audio.npy` [220500]
for every media file under `--videos` (recursive), plus `OUT/vggsound_{train,valid}.txt`
split lists, so `--config.data.dir=OUT` trains on it directly. Re-running on a folder that
gained clips writes the new mels and appends their ids to the lists (listed ids stay where
they are; the new ones go by the same hash rule) and prints them. File names that are not
UTF-8 are kept: the lists hold their raw bytes, which the readers map back to the files.
With `--resnet50_weights PATH` (a torchvision ResNet-50 state dict, .pth or .npz) it also
writes `OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl` [~215, 2048] visual features.

`--target sound2sight`: 64x64 RGB frames at 30 fps with 45x17 audio patches per frame, in
windows of `--num_frames`, as TFDS in OUT/avjax_av_frames/ (`data_pipelines.video_frames`).
Clips that cannot give a window are skipped with their reason; if none can, nothing is
written and the exit status is 1.
"""

import os
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python launch/preprocess.py` from a source checkout
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from avjax.errors import UserError  # noqa: E402
from data_pipelines import preprocess  # noqa: E402
from data_pipelines.preprocess import shown  # noqa: E402
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
    "torchvision ImageNet ResNet-50 state dict (resnet50-0676ba61.pth from "
    "https://download.pytorch.org/models/, read without PyTorch; or an .npz): also write "
    "OUT/feature_resnet50_dim2048_21.5fps/<stem>.pkl features at 21.5 fps.",
)
_TARGET = flags.DEFINE_enum(
    "target", "specvqgan", ["specvqgan", "sound2sight"], "Which model's inputs to write."
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 45, "sound2sight: frames per window (30 fps).")
_TEST = flags.DEFINE_float("test_fraction", 0.1, "sound2sight: share of clips in the test split.")
flags.mark_flags_as_required(["videos", "out"])


def _check_out(out: str) -> None:
    """--out is a folder, or can be made: checked before any decoding."""
    path = pathlib.Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out: {shown(out)} exists and is not a directory")
    parent = path.absolute()
    while not parent.exists():
        parent = parent.parent
    try:  # a real write (os.access says yes to root on read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".avjax_write_test", dir=parent))
    except OSError as e:
        raise UserError(
            f"--out: {shown(out)} cannot be created or written in {shown(parent)} "
            f"({e.strerror or e})"
        ) from None


def _sound2sight() -> int:
    from data_pipelines import video_frames

    if _NUM_FRAMES.value < 1:
        raise UserError(f"--num_frames={_NUM_FRAMES.value} must be >= 1")
    v, t = _VALID.value, _TEST.value
    if v < 0 or t < 0 or v + t >= 1:
        raise UserError(
            f"--valid_fraction={v} and --test_fraction={t} must be >= 0 and sum to less than 1"
        )
    try:
        _OUT.value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"--out: {shown(_OUT.value)} is not valid UTF-8 (TFDS needs it)") from None
    _check_out(_OUT.value)

    def report(path, why):
        print(f"skipped {shown(path)}: {shown(why)}", file=sys.stderr, flush=True)

    builder, summary = video_frames.build_frames_dataset(
        _VIDEOS.value,
        _OUT.value,
        num_frames=_NUM_FRAMES.value,
        valid_fraction=v,
        test_fraction=t,
        progress=True,
        report=report,
    )
    print(f"wrote {builder.data_dir}: {summary['windows']} windows from {summary['clips']} clips")
    return 0


def _added_lines(added: dict[str, list[str]], limit: int = 20) -> list[str]:
    lines = []
    for split, ids in added.items():
        if ids:
            more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
            lines.append(
                f"added to vggsound_{split}.txt: {', '.join(map(shown, ids[:limit]))}{more}"
            )
    return lines


def main(argv):
    del argv
    if not pathlib.Path(_VIDEOS.value).is_dir():
        raise UserError(f"--videos: {shown(_VIDEOS.value)} is not a directory")
    if _TARGET.value == "sound2sight":
        return _sound2sight()
    if not 0.0 <= _VALID.value < 1.0:
        raise UserError(f"--valid_fraction={_VALID.value} must be in [0, 1)")
    if _RESNET50.value and not pathlib.Path(_RESNET50.value).is_file():
        raise UserError(f"--resnet50_weights: {shown(_RESNET50.value)} does not exist")
    files = preprocess.find_media(_VIDEOS.value)
    if not files:
        raise UserError(
            f"--videos: no video found in {shown(_VIDEOS.value)} (searched recursively for "
            f"{', '.join(sorted(preprocess.MEDIA_EXTENSIONS))})"
        )
    _check_out(_OUT.value)
    summary = preprocess.preprocess_folder(
        _VIDEOS.value, _OUT.value, mode=_MODE.value, num_workers=_NUM_WORKERS.value
    )
    print(summary)
    counts, added = preprocess.update_split_lists(_OUT.value, _VALID.value)
    new = sum(len(v) for v in added.values())
    print(f"split lists in {shown(_OUT.value)}: {counts}" + (f" ({new} new)" if new else ""))
    for line in _added_lines(added):
        print(line)
    failed = len(summary.failed)
    if _RESNET50.value:
        from avjax.models.resnet_features import resnet50_extractor
        from data_pipelines import visual_features

        extract = resnet50_extractor(_RESNET50.value)  # missing or unreadable weights fail here
        feats = visual_features.features_folder(_VIDEOS.value, _OUT.value, extract)
        print(shown(f"resnet50 features: {feats}"))
        failed += len(feats.failed)
    if failed:
        written = summary.done + summary.skipped
        raise UserError(
            f"{failed} of {len(files)} file(s) could not be read (FAILED lines above)"
            + ("; the others were written and listed" if written else "; nothing written")
        )
    return 0


if __name__ == "__main__":
    common.run(main)
