"""Adds backward TV-L1 optical flow to a clip dataset (what MCAV trains on).

  python launch/add_flow.py --data_dir data/m3so_nb --num_workers 8
  python launch/add_flow.py --data_dir data/drums --num_workers 8

For every clip of every split of the dataset in `--data_dir` (made by `launch/make_m3so.py`
or `launch/preprocess.py --target sound2sight`), flow[t] with
frames[t](p) ~ frames[t-1](p + flow[t](p)) and flow[0] = 0 (OpenCV-contrib's DualTVL1 with
its defaults; `--tvl1 epsilon=0.03,warps=3` overrides them). Written as a companion TFDS
dataset, float16, in DATA_DIR/flow/avjax_clip_flow/1.0.0/ (`data_pipelines.clip_flow`);
`--config.data.flow=True` (the MCAV configs) reads it. A second run reuses flow computed for
the same clips and parameters; `--overwrite` recomputes it. `--previews N` writes the first
N clips of the first split as DATA_DIR/flow/previews/<i>.gif: frame | flow colour wheel |
the previous frame warped by the flow (it should look like the frame).
"""

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python launch/add_flow.py` from a source checkout
    sys.path.insert(0, str(REPO))

from absl import flags  # noqa: E402

from avjax.errors import UserError  # noqa: E402
from launch import common  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "The clip dataset (config.data.dir).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "Worker processes (1: in-process).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Recompute flow that is already there.")
_TVL1 = flags.DEFINE_list(
    "tvl1", [], "TV-L1 parameters overriding OpenCV's defaults, e.g. epsilon=0.03,warps=3."
)
_PREVIEWS = flags.DEFINE_integer("previews", 2, "Clips written as preview GIFs.")
flags.mark_flags_as_required(["data_dir"])


def _params(items: list[str]) -> dict:
    from data_pipelines.clip_flow import TVL1_DEFAULTS

    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or name not in TVL1_DEFAULTS:
            raise UserError(
                f"--tvl1: {item!r} is not name=value with a name in {sorted(TVL1_DEFAULTS)}"
            )
        kind = type(TVL1_DEFAULTS[name])
        try:
            out[name] = kind(value)
        except ValueError:
            raise UserError(f"--tvl1: {name}={value!r} is not a {kind.__name__}") from None
    return out


def _previews(data_dir: pathlib.Path, out: pathlib.Path, count: int) -> None:
    import numpy as np

    from avjax.video.flow import flow_to_rgb, warp
    from avjax.video.io import write_gif
    from data_pipelines import clip_flow, m3so_tfds

    ds_dir = m3so_tfds.dataset_dir(data_dir)
    import tensorflow_datasets as tfds

    split = next(iter(tfds.builder_from_directory(str(ds_dir)).info.splits))
    source = clip_flow.with_flow(m3so_tfds.open_clips(ds_dir, split))
    out.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(source))):
        item = source[i]
        frames = item["frames"].astype(np.float32) / 255.0  # [T, H, W, C]
        flow = item["flow"].astype(np.float32)
        warped = np.asarray(warp(frames[:-1], flow[1:]))
        warped = np.concatenate([frames[:1], warped])
        rgb = lambda x: np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
        tiles = [rgb(frames), flow_to_rgb(flow) / 255.0, rgb(warped)]
        write_gif(out / f"{i}.gif", np.concatenate(tiles, axis=2), fps=5)
    print(f"previews: {out} ({min(count, len(source))} gif of split {split!r})")


def main(argv):
    del argv
    from data_pipelines import clip_flow

    if _PREVIEWS.value < 0:
        raise UserError(f"--previews={_PREVIEWS.value} must be >= 0")
    summary = clip_flow.add_flow(
        _DATA_DIR.value,
        num_workers=_NUM_WORKERS.value,
        params=_params(_TVL1.value),
        overwrite=_OVERWRITE.value,
        progress=True,
    )
    if summary["reused"]:
        print(f"flow already in {summary['path']} (same clips and parameters); --overwrite redoes")
    else:
        print(
            f"wrote {summary['path']}: {summary['clips']} clips, {summary['pairs']} frame pairs "
            f"in {summary['seconds']:.1f} s; CPU time {summary['ms_per_pair']:.1f} ms per pair, "
            f"{summary['ms_per_clip']:.0f} ms per clip"
        )
    if _PREVIEWS.value:
        _previews(pathlib.Path(_DATA_DIR.value), summary["path"] / "previews", _PREVIEWS.value)
    return 0


if __name__ == "__main__":
    common.run(main)
