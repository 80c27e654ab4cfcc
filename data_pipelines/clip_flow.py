"""TV-L1 optical flow of a clip dataset, computed once and stored as a companion TFDS dataset.

MCAV's motion stage learns to predict backward TV-L1 flow (Zach, Pock and Bischof, DAGM 2007;
docs/mcav.md). For clip i of a split with frames V_0..V_{T-1} (uint8, made grey first):
  flow[0] = 0                        (no earlier frame)
  flow[t] = TV-L1(I0=V_t, I1=V_{t-1})  so that V_t(p) ~ V_{t-1}(p + flow[t](p))
i.e. `avjax.video.flow.warp(V_{t-1}, flow[t])` approximates V_t. Identical consecutive frames
(the 3x repeats of 30 fps video made from 10 fps, duplicated frames of a frame-rate change)
get exactly 0, what TV-L1 returns for them, without running it. Solver: OpenCV-contrib's
`optflow.DualTVL1OpticalFlow` with its defaults (`TVL1_DEFAULTS`; the paper gives none).

Storage (a companion dataset, not a new feature): beside the clips in the same data_dir,
  D/avjax_m3so/1.0.0/            the clips (or avjax_av_frames/), untouched
  D/flow/avjax_clip_flow/1.0.0/  example i of split s = the flow of clip i of split s
with features `flow` Tensor [T, H, W, 2] float16 (zlib) and `id` Text (the clip's id), and
`info.metadata` holding the solver, its parameters and a fingerprint of the clips it was
computed from (a regenerated clip dataset makes the flow stale, which readers refuse).
float16: half the bytes of float32; its relative step 2^-11 is 0.002 px at 4 px of motion,
far below TV-L1's own error. `tfds.data_source("avjax_clip_flow", data_dir=D/flow)` reads it.

`add_flow(D)` writes it (`python launch/add_flow.py --data_dir D`); `with_flow(clips)` gives
a clip source whose items carry "flow" too (`video_inputs`, `config.data.flow`).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import m3so_tfds
from data_pipelines.errors import MissingFileError, UserError

__all__ = [
    "FLOW_DIR",
    "TVL1_DEFAULTS",
    "TVL1_TINY",
    "ClipFlowBuilder",
    "FlowSource",
    "add_flow",
    "clip_flow",
    "ensure_tiny_flow",
    "flow_root",
    "grey",
    "with_flow",
]

log = logging.getLogger(__name__)

FLOW_DIR = "flow"
# OpenCV's DualTVL1OpticalFlow defaults (opencv_contrib optflow), named as its create().
TVL1_DEFAULTS: dict[str, Any] = {
    "tau": 0.25,
    "lambda_": 0.15,
    "theta": 0.3,
    "nscales": 5,
    "warps": 5,
    "epsilon": 0.01,
    "innnerIterations": 30,  # sic: OpenCV's keyword
    "outerIterations": 10,
    "scaleStep": 0.8,
    "gamma": 0.0,
    "medianFiltering": 5,
}
# The embedded `:tiny` data (smoke runs): a looser stopping threshold and fewer warps, ~10x
# faster; on M3SO-NB (MNIST) a frame warped by it is off by 3.5/255 on average (defaults:
# 0.3/255; the unwarped previous frame: 12.8/255).
TVL1_TINY: dict[str, Any] = {**TVL1_DEFAULTS, "epsilon": 0.05, "warps": 2}
ADD_FLOW = "python launch/add_flow.py --data_dir {root} --num_workers N"


def grey(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, C] (C = 1 or 3, RGB) -> uint8 [T, H, W], ITU-R 601 luma (OpenCV's)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 frames [T, H, W, 1 or 3], got {frames.dtype} {frames.shape}"
        )
    if frames.shape[-1] == 1:
        return frames[..., 0]
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


_LOCAL = threading.local()  # a solver holds its work buffers: one per thread


def _solver(params: dict[str, Any]):
    import cv2

    solvers = _LOCAL.__dict__.setdefault("solvers", {})
    key = json.dumps(params, sort_keys=True)
    if key not in solvers:
        solvers[key] = cv2.optflow.DualTVL1OpticalFlow_create(**params)
    return solvers[key]


def clip_flow(frames: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Backward TV-L1 flow of one clip (see the module doc): [T, H, W, C] -> f32 [T, H, W, 2].

    Args:
      frames: uint8 [T, H, W, 1 or 3].
      params: `cv2.optflow.DualTVL1OpticalFlow_create` keywords; default `TVL1_DEFAULTS`.
    """
    g = grey(frames)
    solver = _solver(dict(params or TVL1_DEFAULTS))
    out = np.zeros((*g.shape, 2), np.float32)
    for t in range(1, len(g)):
        if not np.array_equal(g[t], g[t - 1]):
            out[t] = solver.calc(g[t], g[t - 1], None)
    return out


# ----------------------------------------------------------------------------- the dataset


class ClipFlowBuilder(tfds.core.GeneratorBasedBuilder):
    """The companion flow dataset (array_record): `flow` [T, H, W, 2] float16, `id` text."""

    name = "avjax_clip_flow"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "backward TV-L1 flow, float16"}
    code_path = None  # no package dir next to the code (see tfds_specs.SpecFolderBuilder)

    def __init__(self, *, splits=None, shape=(0, 0, 0), metadata=None, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._splits = splits or {}
        self._shape = tuple(int(x) for x in shape)
        self._metadata = dict(metadata or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        description = "Backward TV-L1 optical flow of the clips of a companion dataset."
        if not self._shape[0]:  # opened by name: the stored features
            return tfds.core.DatasetInfo(
                builder=self,
                description=description,
                features=tfds.features.FeatureConnector.from_config(self.data_dir),
                disable_shuffling=True,
            )
        metadata = tfds.core.MetadataDict()
        metadata.update(self._metadata)
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(
                {
                    "flow": tfds.features.Tensor(
                        shape=(*self._shape, 2), dtype=np.float16, encoding="zlib"
                    ),
                    "id": tfds.features.Text(),
                }
            ),
            metadata=metadata,
            disable_shuffling=True,  # example i is the flow of clip i
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(gen) for split, gen in self._splits.items()}

    def _generate_examples(self, gen):
        yield from gen()


def flow_root(ds_dir: str | os.PathLike) -> pathlib.Path:
    """The flow data_dir of the clip dataset at `ds_dir` (`D/<name>/<version>` -> `D/flow`)."""
    return pathlib.Path(ds_dir).parent.parent / FLOW_DIR


def _fingerprint(builder) -> str:
    """What identifies a prepared clip dataset: name, version, metadata, split sizes."""
    info = builder.info
    splits = {k: [int(v.num_examples), int(v.num_bytes)] for k, v in sorted(info.splits.items())}
    blob = json.dumps(
        [info.name, str(info.version), dict(info.metadata), splits], sort_keys=True, default=str
    )
    return hashlib.md5(blob.encode()).hexdigest()


def _flow_dataset_dir(root: pathlib.Path) -> pathlib.Path | None:
    infos = sorted(root.glob(f"{ClipFlowBuilder.name}/*/dataset_info.json"))
    return infos[-1].parent if infos else None


# Worker state: each process opens the clip splits once (threads share them).
_WORKER: dict[str, Any] = {}


def _init_worker(ds_dir: str, params: dict[str, Any]) -> None:
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the processes
    _WORKER.clear()
    _WORKER.update(ds_dir=ds_dir, params=params, sources={})


def _flow_job(job: tuple[str, int]) -> tuple[str, np.ndarray, float, int]:
    split, index = job
    sources = _WORKER["sources"]
    if split not in sources:  # two threads may both open it: harmless
        sources[split] = m3so_tfds.open_clips(_WORKER["ds_dir"], split)
    ex = sources[split].example(index)
    ex_id = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
    frames = np.asarray(ex["frames"], np.uint8)
    t0 = time.thread_time()  # CPU time: what a core costs, whatever else shares it
    flow = clip_flow(frames, _WORKER["params"])
    seconds = time.thread_time() - t0
    pairs = int(sum(not np.array_equal(a, b) for a, b in zip(frames[1:], frames[:-1])))
    return ex_id, flow.astype(np.float16), seconds, pairs


def add_flow(
    data_dir: str | os.PathLike,
    *,
    num_workers: int = 1,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    threads: bool = False,
) -> dict[str, Any]:
    """Computes the flow of every clip of every split and writes `D/flow/` (module doc).

    Args:
      data_dir: the clip dataset's data_dir (`config.data.dir`) or its `<name>/<version>/`.
      num_workers: processes (spawned; 1 = in this process), or threads with `threads`.
      params: TV-L1 keywords overriding `TVL1_DEFAULTS`.
      overwrite: replace flow that is already there (else it is reused when it was computed
        for these clips, and refused when not).
      progress: a tqdm bar per split.
      threads: workers are threads (OpenCV releases the GIL while it solves), for callers
        that cannot spawn processes (a library call inside a program with no `__main__`
        guard; `ensure_tiny_flow`).

    Returns:
      {"path", "reused", "clips", "pairs" (distinct consecutive frames), "seconds" (wall),
      "compute_seconds" (CPU time of the solver, summed over workers), "ms_per_pair",
      "ms_per_clip" (CPU)}; the last four are 0 when reused.

    Raises:
      UserError: no clip dataset there, bad parameters, or stale flow without `overwrite`.
    """
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"--data_dir: {root} is not a directory")
    if num_workers < 1:
        raise UserError(f"--num_workers={num_workers} must be >= 1")
    ds_dir = m3so_tfds.dataset_dir(root)
    clips = tfds.builder_from_directory(os.fspath(ds_dir))
    full = {**TVL1_DEFAULTS, **(params or {})}
    unknown = sorted(set(full) - set(TVL1_DEFAULTS))
    if unknown:
        raise UserError(f"unknown TV-L1 parameter(s) {unknown}; known: {sorted(TVL1_DEFAULTS)}")
    _solver(full)  # bad values fail here, before anything is read
    out = flow_root(ds_dir)
    fingerprint = _fingerprint(clips)
    summary: dict[str, Any] = {"path": out, "reused": False, "clips": 0, "pairs": 0}
    existing = _flow_dataset_dir(out) if out.is_dir() else None
    if existing is not None and not overwrite:
        stored = tfds.builder_from_directory(os.fspath(existing)).info.metadata
        if stored.get("clips_fingerprint") == fingerprint and stored.get("tvl1") == full:
            summary.update(reused=True, seconds=0.0, compute_seconds=0.0)
            summary.update(ms_per_pair=0.0, ms_per_clip=0.0)
            return summary
        why = (
            "other TV-L1 parameters"
            if stored.get("clips_fingerprint") == fingerprint
            else "other clips (the clip dataset was remade)"
        )
        raise UserError(f"{out} holds flow computed for {why}; pass --overwrite to recompute it")
    if out.exists() and existing is None and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not a flow dataset; move it away or --overwrite")
    T, H, W, _ = (int(x) for x in clips.info.features["frames"].shape)
    split_sizes = {k: int(v.num_examples) for k, v in clips.info.splits.items()}
    metadata = {
        "method": "tvl1",
        "solver": "opencv-contrib optflow.DualTVL1OpticalFlow",
        "opencv": _cv2_version(),
        "tvl1": full,
        "direction": "backward: frames[t](p) ~ frames[t-1](p + flow[t](p)); flow[0] = 0",
        "grey": "C=1 as is; RGB -> cv2.COLOR_RGB2GRAY",
        "dtype": "float16",
        "clips": {"name": clips.info.name, "version": str(clips.info.version)},
        "clips_fingerprint": fingerprint,
        "split_sizes": split_sizes,
    }
    stats = {"compute": 0.0, "pairs": 0, "clips": 0}
    pool = None
    if num_workers > 1 and not threads:
        pool = cf.ProcessPoolExecutor(  # a worker that dies fails the run (never respawned)
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.fspath(ds_dir), full),
        )
    else:
        _init_worker(os.fspath(ds_dir), full)
        if num_workers > 1:
            pool = cf.ThreadPoolExecutor(num_workers)

    def split_gen(split: str, n: int):
        def gen() -> Iterator[tuple[int, dict[str, Any]]]:
            jobs = [(split, i) for i in range(n)]
            results = map(_flow_job, jobs) if pool is None else pool.map(_flow_job, jobs)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=n, desc=f"flow {split}", unit="clip")
            for i, (ex_id, flow, seconds, pairs) in enumerate(results):
                stats["compute"] += seconds
                stats["pairs"] += pairs
                stats["clips"] += 1
                if bar is not None:
                    bar.update(1)
                yield i, {"flow": flow, "id": ex_id}
            if bar is not None:
                bar.close()

        return gen

    root_parent = out.parent
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".flow-", dir=root_parent))
    t0 = time.perf_counter()
    try:
        builder = ClipFlowBuilder(
            splits={k: split_gen(k, n) for k, n in split_sizes.items()},
            shape=(T, H, W),
            metadata=metadata,
            data_dir=os.fspath(tmp),
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
        if overwrite and out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process wrote the same flow first: keep its copy
            if _flow_dataset_dir(out) is None:
                raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    summary.update(
        clips=stats["clips"],
        pairs=stats["pairs"],
        seconds=wall,
        compute_seconds=stats["compute"],
        ms_per_pair=1e3 * stats["compute"] / max(stats["pairs"], 1),
        ms_per_clip=1e3 * stats["compute"] / max(stats["clips"], 1),
    )
    return summary


def _cv2_version() -> str:
    import cv2

    return cv2.__version__


# ----------------------------------------------------------------------------- reading


class FlowSource:
    """Random access to the stored flow of one split: `source[i]` -> float16 [T, H, W, 2]."""

    def __init__(self, clips: m3so_tfds.ClipSource):
        ds_dir = pathlib.Path(clips.path)
        out = flow_root(ds_dir)
        hint = ADD_FLOW.format(root=ds_dir.parent.parent)
        flow_dir = _flow_dataset_dir(out) if out.is_dir() else None
        if flow_dir is None:
            raise MissingFileError(
                f"{ds_dir} has no optical flow (config.data.flow=True needs it in {out}); "
                f"add it with `{hint}`"
            )
        builder = tfds.builder_from_directory(os.fspath(flow_dir))
        meta = dict(builder.info.metadata)
        clips_builder = tfds.builder_from_directory(os.fspath(ds_dir))
        if meta.get("clips_fingerprint") != _fingerprint(clips_builder):
            raise UserError(
                f"{flow_dir}: the flow was computed for other clips than {ds_dir} (the clip "
                f"dataset was remade); recompute it with `{hint} --overwrite`"
            )
        if clips.split not in builder.info.splits:
            raise UserError(f"{flow_dir}: no split {clips.split!r}; recompute with `{hint}`")
        self._source = builder.as_data_source(split=clips.split)
        shape = tuple(int(x) for x in builder.info.features["flow"].shape)
        if len(self._source) != len(clips) or shape[:3] != (
            clips.num_frames,
            *clips.frame_shape[:2],
        ):
            raise UserError(
                f"{flow_dir}: split {clips.split!r} holds {len(self._source)} flows of {shape}, "
                f"the clips {len(clips)} of {clips.num_frames} frames; recompute with "
                f"`{hint} --overwrite`"
            )
        self.path = flow_dir
        self.metadata = meta

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self._source[int(index)]["flow"], np.float16)


class FlowClipSource:
    """A `ClipSource` whose items also carry "flow": float16 [T, H, W, 2] (see `with_flow`)."""

    def __init__(self, clips: m3so_tfds.ClipSource):
        self.clips = clips
        self.flows = FlowSource(clips)
        for name in ("path", "split", "kind", "num_frames", "frame_shape", "audio_shape"):
            setattr(self, name, getattr(clips, name))
        self.metadata = clips.metadata

    def __len__(self) -> int:
        return len(self.clips)

    def example(self, index: int) -> dict[str, Any]:
        return {**self.clips.example(index), "flow": self.flows[index]}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {**self.clips[index], "flow": self.flows[index]}

    def __repr__(self) -> str:
        return f"{self.clips!r} + flow"


def ensure_tiny_flow(data_dir: str | os.PathLike) -> None:
    """Flow for the embedded `:tiny` clips (`TVL1_TINY`), computed once beside them."""
    ds_dir = m3so_tfds.dataset_dir(pathlib.Path(data_dir))
    if _flow_dataset_dir(flow_root(ds_dir)) is None:
        log.info("computing the TV-L1 flow of the tiny clips in %s (once)", ds_dir)
        add_flow(ds_dir, num_workers=min(4, os.cpu_count() or 1), params=TVL1_TINY, threads=True)


def with_flow(clips: m3so_tfds.ClipSource) -> FlowClipSource:
    """`clips` with its stored flow (UserError naming `launch/add_flow.py` when it has none)."""
    return FlowClipSource(clips)
