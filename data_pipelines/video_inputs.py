"""Sound2Sight inputs: clip datasets (M3SO or real-video frames) -> checkpointable Grain batches.

`make_inputs(config)` opens `config.data.dir` (a dataset written by `launch/make_m3so.py` or
`launch/preprocess.py --target sound2sight`; see `m3so_tfds`) or, for `:tiny` configs
(`config.data.synthetic` and no dir), a small M3SO-NB made once from scikit-learn's digits in
`cache_dir()/m3so_nb_tiny_T<frames>`.

Batches come from `pipeline.make_dataset`, the order of `pipeline.make_spec_dataset` (G =
global batch, P processes, B = G // P):
  train: seeded global shuffle (new permutation per epoch), repeat forever, a seeded random
    window of T = n_past + n_future frames per clip (the whole clip when it has exactly T),
    process p's rows [p*B, (p+1)*B) of each global batch, batches of B;
  eval: clips in order, first n_past + n_eval frames, padded to a multiple of G with zero
    clips, process p's rows [p*B, (p+1)*B) of each global batch, batches of B with "mask"
    (1 real, 0 padding).
Batches: {"frames": uint8 [B, T, H, W, C], "audio": float32 [B, T, Fa, Ta], "block": int32
[B, 4]} (+ "mask": float32 [B] in eval). Frames stay uint8; the task scales them. The audio
patches are `log1p(|STFT|) / log1p(sum(window) / 2)` (see `m3so.audio_features`).

With `config.data.flow` (MCAV) batches also hold "flow": float32 [B, T, H, W, 2], the stored
backward TV-L1 flow of the same frames (`clip_flow`): flow[:, t] warps frames[:, t - 1] into
frames[:, t] (`avjax.video.flow.warp`), and flow[:, 0] is 0 in every window (its first frame
has no earlier frame inside the window, as at the start of an eval clip). A dataset without
flow stops with the `launch/add_flow.py` command that adds it; the `:tiny` data get theirs
computed once, on first use.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence

import grain
import numpy as np
from absl import logging

from data_pipelines import base, clip_flow, m3so, m3so_tfds, pipeline
from data_pipelines.errors import UserError

__all__ = ["make_clip_dataset", "make_inputs", "open_eval_clips", "synthetic_dir"]

TINY_TRAIN, TINY_TEST = 64, 16


class _Window(grain.transforms.RandomMap):
    """Train: a random window of `length` consecutive frames (and their audio patches)."""

    def __init__(self, length: int):
        self.length = length

    def random_map(self, element, rng: np.random.Generator):
        total = element["frames"].shape[0]
        return _slice(element, int(rng.integers(0, total - self.length + 1)), self.length)


class _First(grain.transforms.Map):
    """Eval: the first `length` frames."""

    def __init__(self, length: int):
        self.length = length

    def map(self, element):
        return _slice(element, 0, self.length)


def _slice(element, start: int, length: int) -> dict:
    end = start + length
    out = {
        "frames": element["frames"][start:end],
        "audio": element["audio"][start:end],
        "block": element["block"],
    }
    if "flow" in element:  # a FlowClipSource: the first frame of a window has no flow
        flow = element["flow"][start:end].astype(np.float32)
        flow[0] = 0.0
        out["flow"] = flow
    return out


def _filler(source: m3so_tfds.ClipSource | clip_flow.FlowClipSource) -> dict:
    """The all-zero clip that pads the last eval batch."""
    T = source.num_frames
    out = {
        "frames": np.zeros((T, *source.frame_shape), np.uint8),
        "audio": np.zeros((T, *source.audio_shape), np.float32),
        "block": np.zeros((4,), np.int32),
    }
    if isinstance(source, clip_flow.FlowClipSource):
        out["flow"] = np.zeros((T, *source.frame_shape[:2], 2), np.float16)
    return out


def make_clip_dataset(
    source: m3so_tfds.ClipSource | clip_flow.FlowClipSource,
    *,
    num_frames: int,
    global_batch_size: int,
    seed: int,
    train: bool,
    read_threads: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
    transforms: Sequence[grain.transforms.Map | grain.transforms.RandomMap] = (),
) -> grain.IterDataset:
    """Batched process-local dataset of `num_frames`-frame windows (order in the module doc).

    Built by `pipeline.make_dataset`; `transforms` run on each window after it is cut
    (`RandomMap`s only when `train`), e.g. a model family's per-clip extras such as flow.
    """
    _, pc = pipeline.process_layout(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % pc:
        raise UserError(
            f"config.data.global_batch_size={global_batch_size} must be a positive multiple "
            f"of process_count={pc}"
        )
    if len(source) == 0:
        raise UserError(f"{source!r} is empty")
    if source.num_frames < num_frames:
        raise UserError(f"{source!r}: clips have {source.num_frames} frames < {num_frames}")
    window = _Window(num_frames) if train else _First(num_frames)
    return pipeline.make_dataset(
        source,
        [window, *transforms],
        filler=None if train else _filler(source),
        global_batch_size=global_batch_size,
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
        read_threads=read_threads,
        prefetch_buffer_size=max(2 * (global_batch_size // pc), 4),
        mask_dtype=np.float32,
    )


def synthetic_dir(num_frames: int = 30, block: bool = False, kind: str = "m3so") -> pathlib.Path:
    """A tiny dataset from scikit-learn digits in the cache, generated once (64 / 16 clips).

    kind "m3so": M3SO-NB (M3SO with `block`, the block from frame num_frames // 2 on);
    kind "frames": M3SO-NB re-rendered as 64x64 RGB at 30 fps with 45x17 patches (each 10 fps
    frame shown 3 times, the tone resampled to 24 kHz), for the real-video configs' `:tiny`.
    """
    if kind == "frames":
        name = f"frames_tiny_T{num_frames}"
    else:
        name = f"m3so{'' if block else '_nb'}_tiny_T{num_frames}"
    out = base.cache_dir() / name
    if any(out.glob("avjax_*/*/dataset_info.json")):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        if kind == "frames":
            _write_tiny_frames(tmp, num_frames)
        else:
            config = m3so.M3soConfig(
                block=block,
                num_frames=num_frames,
                block_start_frame=max(0, num_frames // 2 - 1) if block else None,
            )
            m3so_tfds.write_m3so(
                tmp,
                pools=m3so.load_digits(None),
                config=config,
                seed=0,
                num_train=TINY_TRAIN,
                num_val=0,
                num_test=TINY_TEST,
            )
        try:
            os.replace(tmp, out)
        except OSError:  # another process won the race: use its copy
            if not (out / "avjax_m3so").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_tiny_frames(out: pathlib.Path, num_frames: int):
    """M3SO-NB re-rendered in the real-video form: 64x64 RGB at 30 fps, 45x17 patches."""
    from data_pipelines import video_frames as vf

    pools = m3so.load_digits(None)
    src_frames = -(-num_frames // 3)  # 10 fps clips, each frame shown 3 times
    cfg = m3so.M3soConfig(num_frames=src_frames)
    rows = np.arange(vf.IMAGE_SIZE) * m3so.CANVAS // vf.IMAGE_SIZE  # nearest 48 -> 64
    t_in = np.arange(src_frames * m3so.SAMPLES_PER_FRAME) / m3so.SAMPLE_RATE
    t_out = np.arange(num_frames * vf.SAMPLES_PER_FRAME) / vf.SAMPLE_RATE
    tint = np.array([[1.0, 0.6, 0.2], [0.3, 1.0, 0.5], [0.4, 0.6, 1.0]], np.float32)

    def gen(split: str, num: int):
        def examples():
            clips = m3so.generate(pools, split, range(num), seed=0, config=cfg)
            for i in range(num):
                grey = clips["frames"][i, :, :, :, 0][:, rows][:, :, rows].repeat(3, axis=0)
                rgb = (grey[:num_frames, ..., None] * tint[i % 3]).astype(np.uint8)
                wave = np.interp(t_out, t_in, clips["waveform"][i]).astype(np.float32)
                feats = m3so.audio_features(wave, vf.SAMPLES_PER_FRAME, vf.N_FFT, vf.HOP)
                yield (
                    i,
                    {
                        "frames": rgb,
                        "audio": feats,
                        "waveform": wave,
                        "block": np.zeros(4, np.int32),
                        "label": int(clips["label"][i]),
                        "id": f"{split}/{i:06d}",
                    },
                )

        return examples

    builder = m3so_tfds.AvFramesBuilder(
        splits={"train": gen("train", TINY_TRAIN), "test": gen("test", TINY_TEST)},
        num_frames=num_frames,
        frame_shape=(vf.IMAGE_SIZE, vf.IMAGE_SIZE, 3),
        audio_shape=vf.AUDIO_SHAPE,
        samples_per_frame=vf.SAMPLES_PER_FRAME,
        metadata={"kind": "frames", "fps": vf.FPS, "synthetic": "m3so_nb_64rgb"},
        data_dir=os.fspath(out),
    )
    m3so_tfds.prepare(builder)


_HINT = (
    "config.data.dir is not set: pass --config.data.dir=DIR made by "
    "`python launch/make_m3so.py --out DIR` (M3SO) or `python launch/preprocess.py "
    "--target sound2sight --videos V --out DIR` (real clips), or use the ':tiny' variant"
)


def _synthetic(config) -> pathlib.Path:
    d = config.data
    kind = d.kind
    if kind not in ("m3so", "frames"):
        raise UserError(f"config.data.kind={kind!r}: expected 'm3so' or 'frames'")
    need = d.n_past + max(d.n_future, d.n_eval)
    out = synthetic_dir(max(30, need), block=d.block, kind=kind)
    if d.flow:
        clip_flow.ensure_tiny_flow(out)
    return out


def _check(source: m3so_tfds.ClipSource, config, length: int, what: str):
    d = config.data
    h, w, c = source.frame_shape
    if "kind" in d and d.kind != source.kind:
        raise UserError(f"config.data.kind={d.kind!r} but {source.path} holds {source.kind!r}")
    if "image_size" in d and (h, w) != (d.image_size, d.image_size):
        raise UserError(
            f"config.data.image_size={d.image_size} but {source.path} has {h}x{w} frames"
        )
    if "channels" in d and c != d.channels:
        raise UserError(f"config.data.channels={d.channels} but {source.path} has {c} channels")
    if "audio_shape" in d and tuple(d.audio_shape) != tuple(source.audio_shape):
        raise UserError(
            f"config.data.audio_shape={tuple(d.audio_shape)} but {source.path} has audio "
            f"patches {source.audio_shape}"
        )
    if source.num_frames < length:
        raise UserError(
            f"{source.path} split {source.split!r}: clips have {source.num_frames} frames, "
            f"fewer than {what} = {length}; regenerate with more frames "
            "(make_m3so.py --num_frames / preprocess.py --num_frames) or lower those fields"
        )


def _open(data_dir: pathlib.Path, split: str, config, length: int, what: str):
    """A split's clips, checked against `config.data`; with their flow if `config.data.flow`."""
    clips = m3so_tfds.open_clips(data_dir, split)
    _check(clips, config, length, what)
    return clip_flow.with_flow(clips) if config.data.flow else clips


def make_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """Train iterator, eval iterator factory and (empty) stats for the clip tasks
    (`config.task` 'sound2sight', 'mcav'); "flow" in the batches with `config.data.flow`."""
    del model_fns  # runs no model
    d = config.data
    data_dir = base.resolve_data_dir(config, lambda: _synthetic(config), _HINT)
    train_len = d.n_past + d.n_future
    eval_len = d.n_past + d.n_eval
    train_split = d.train_split
    train_src = _open(
        data_dir, train_split, config, train_len, "config.data.n_past + config.data.n_future"
    )
    logging.info("train data: %r from %s", train_src, data_dir)
    common = dict(global_batch_size=d.global_batch_size, read_threads=d.read_threads)
    train_ds = make_clip_dataset(
        train_src, num_frames=train_len, seed=config.seed, train=True, **common
    )
    eval_iter_fn = None
    if d.eval_split:
        eval_src = _open(
            data_dir, d.eval_split, config, eval_len, "config.data.n_past + config.data.n_eval"
        )
        eval_iter_fn = lambda: iter(
            make_clip_dataset(
                eval_src, num_frames=eval_len, seed=config.seed, train=False, **common
            )
        )
    class_names = tuple(train_src.metadata.get("class_names", ()))
    return base.Inputs(iter(train_ds), eval_iter_fn, {}, class_names, data_dir, len(train_src))


def open_eval_clips(config, split: str | None = None) -> m3so_tfds.ClipSource:
    """Random access to the clips of a run's evaluation split (default `data.eval_split`).

    The dataset of `config.data.dir` (or the embedded one of a `:tiny` run), checked to hold
    clips of at least n_past + n_eval frames of the run's shape. For people picking a clip
    (`launch/app.py`, the quickstart notebook); `make_inputs` batches them for evaluation.
    """
    d = config.data
    data_dir = base.resolve_data_dir(config, lambda: _synthetic(config), _HINT)
    source = m3so_tfds.open_clips(data_dir, split or d.eval_split or "test")
    _check(source, config, d.n_past + d.n_eval, "config.data.n_past + config.data.n_eval")
    return source
