"""The Grain dataset builder every input pipeline uses, and the spectrogram clips' transforms.

`make_dataset(source, transforms, ...)` fixes the order below for any random-access source
and list of per-example transforms (spectrogram crops here, code/feature examples in
`codes_inputs`, clip windows in `video_inputs`); `make_spec_dataset` is its spectrogram form:
crop, scale to [-1, 1], shard, batch.

Train (`train=True`), with G = global_batch_size, P = process_count, B = G // P:
  source -> seeded global shuffle (a new permutation each epoch) -> repeat(num_epochs)
  -> crop 860 -> crop_frames (centre: columns 6..853; or seeded random) -> image = 2 mel - 1
  -> global batch k = positions [k*G, (k+1)*G) of that stream, process p taking its rows
  [p*B, (p+1)*B): positions k*G + p*B + j (j < B), in order, batched by B.
  Every process uses the same seed, so the P processes partition the global shuffled stream,
  and the global batch (the processes' rows side by side, as the trainer assembles them) is
  the same examples in the same order for any process count: a step's randomness drawn
  over the global batch (dropout, noise) is the same on 1 process or many.
Eval (`train=False`): no shuffle, one pass, centre crop. The dataset is padded to a multiple of
  G with filler examples (image -1, label -1) so every process yields the same number of full
  batches; batches carry `"mask": [B] bool` (False for fillers): weight metrics by it.

Batches: {"image": [B, 80, crop_frames] float32 in [-1, 1], "label": [B] int32} (+ "mask" in
eval). The iterator is a `grain.DatasetIterator`: checkpoint it with `get_state()/set_state()`
or in Orbax as `ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))` /
`grain.checkpoint.CheckpointRestore(it)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np

__all__ = [
    "CenterCrop",
    "RandomCrop",
    "center_crop",
    "make_dataset",
    "make_spec_dataset",
    "make_spec_iterator",
    "process_layout",
]

CENTRE = "centre"


class _MelSource(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def _to_example(mel: np.ndarray, label: Any, offset: int, crop: int) -> dict[str, np.ndarray]:
    image = mel[:, offset : offset + crop]
    return {"image": image * np.float32(2.0) - np.float32(1.0), "label": np.int32(label)}


def _check_frames(mel: np.ndarray, crop: int) -> int:
    frames = mel.shape[-1]
    if mel.ndim != 2 or frames < crop:
        raise ValueError(f"log-mel of shape {mel.shape} is shorter than crop_frames={crop}")
    return frames


def center_crop(mel: np.ndarray, crop_frames: int = 848) -> np.ndarray:
    """SpecVQGAN's centre crop in time: [F, T] -> [F, crop_frames] (columns 6..853 of 860)."""
    mel = np.asarray(mel)
    offset = (_check_frames(mel, crop_frames) - crop_frames) // 2
    return mel[:, offset : offset + crop_frames]


class CenterCrop(grain.transforms.Map):
    """{"mel": [F, T], "label"} -> {"image": [F, crop] in [-1, 1], "label": int32}.

    Keeps columns (T - crop) // 2 ... (T - crop) // 2 + crop - 1 (6..853 for 860 -> 848),
    as SpecVQGAN's CenterCrop does.
    """

    def __init__(self, crop_frames: int):
        self.crop_frames = crop_frames

    def map(self, element):
        mel = np.asarray(element["mel"], np.float32)
        frames = _check_frames(mel, self.crop_frames)
        return _to_example(
            mel, element["label"], (frames - self.crop_frames) // 2, self.crop_frames
        )


class RandomCrop(grain.transforms.RandomMap):
    """As `CenterCrop` but with a uniform random offset in [0, T - crop] (seeded by Grain)."""

    def __init__(self, crop_frames: int):
        self.crop_frames = crop_frames

    def random_map(self, element, rng: np.random.Generator):
        mel = np.asarray(element["mel"], np.float32)
        frames = _check_frames(mel, self.crop_frames)
        offset = int(rng.integers(0, frames - self.crop_frames + 1))
        return _to_example(mel, element["label"], offset, self.crop_frames)


class _ProcessRows(grain.MapDataset):
    """Process `index`'s rows of every global batch: item m = parent[k*G + index*B + j].

    (k, j = divmod(m, B), B = G // count.) Parent items past the last whole global batch
    are never read.
    """

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._g, self._b, self._index = global_batch, global_batch // count, index
        self._length = len(parent) // global_batch * self._b

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, m: int) -> int:
        k, j = divmod(m, self._b)
        return k * self._g + self._index * self._b + j

    def __getitem__(self, m):
        if isinstance(m, slice):
            return self.slice(m)
        return self._parent[self._parent_index(m)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(m) for m in indices])

    def __str__(self) -> str:
        return f"_ProcessRows(global_batch={self._g}, rows {self._index * self._b}+{self._b})"


class _PaddedEvalSource:
    """`source` padded to `length` items with `filler`; items carry "mask" (False: filler)."""

    def __init__(self, source: _MelSource, length: int, filler: Mapping[str, Any]):
        self.source = source
        self.length = length
        self.filler = dict(filler)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.source):
            return {**self.source[index], "mask": True}
        return {**self.filler, "mask": False}

    def __repr__(self) -> str:
        return f"_PaddedEvalSource({self.source!r}, length={self.length})"


class _KeepMask(grain.transforms.Map):
    """Eval: the deterministic transforms in order, then the source item's "mask" as `dtype`."""

    def __init__(self, transforms: Sequence[grain.transforms.Map], dtype=np.bool_):
        self.transforms = tuple(transforms)
        self.dtype = dtype

    def map(self, element):
        out = element
        for t in self.transforms:
            out = t.map(out)
        out["mask"] = self.dtype(element["mask"])
        return out


def process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process index, process count): the given values, default `jax.process_*()`, checked."""
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if pc < 1 or not 0 <= pi < pc:
        raise ValueError(f"process_index={pi} must lie in [0, process_count={pc})")
    return pi, pc


def make_spec_dataset(
    source: _MelSource,
    *,
    global_batch_size: int,
    seed: int,
    train: bool = True,
    crop_frames: int = 848,
    random_crop: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    read_threads: int = 16,
    prefetch_buffer_size: int | None = None,
) -> grain.IterDataset:
    """Builds the process-local batched dataset (see the module doc for the exact order).

    Args:
      source: random access, `source[i] -> {"mel": [80, T>=crop_frames] in [0, 1], "label"}`
        (`SpecSource`, `TfdsSpecSource`).
      global_batch_size: examples per step over all processes; divisible by process_count.
      seed: shuffle and random-crop seed (same on every process).
      train: shuffle + repeat (`num_epochs`, None = forever); else one ordered padded pass.
      crop_frames: time frames kept (848 in SpecVQGAN).
      random_crop: train only; uniform random time offset instead of the centre crop.
      process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
      num_epochs: train only; None repeats forever. With a finite value the global stream is
        truncated to whole global batches so all processes yield the same number of batches.
      read_threads: Grain reader threads (threads beat processes for .npy reads).
      prefetch_buffer_size: examples read ahead; default max(2 * B, read_threads).

    Returns:
      `grain.IterDataset` of {"image": [B, 80, crop_frames] float32 in [-1, 1], "label": [B]
      int32} (+ "mask": [B] bool when not `train`), B = global_batch_size // process_count.
    """
    if len(source) == 0:
        raise ValueError(f"{source!r} is empty")
    if train:
        transform = RandomCrop(crop_frames) if random_crop else CenterCrop(crop_frames)
        filler = None
    else:
        transform = CenterCrop(crop_frames)
        num_mels = int(np.shape(source[0]["mel"])[0])
        filler = {"mel": np.zeros((num_mels, crop_frames), np.float32), "label": -1}
    return make_dataset(
        source,
        transform,
        filler=filler,
        global_batch_size=global_batch_size,
        seed=seed,
        train=train,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
        read_threads=read_threads,
        prefetch_buffer_size=prefetch_buffer_size,
    )


Transform = grain.transforms.Map | grain.transforms.RandomMap


def make_dataset(
    source: _MelSource,
    transform: Transform | Sequence[Transform],
    *,
    filler: Mapping[str, Any] | None,
    global_batch_size: int,
    seed: int,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    read_threads: int = 16,
    prefetch_buffer_size: int | None = None,
    mask_dtype=np.bool_,
) -> grain.IterDataset:
    """The order of `make_spec_dataset` for any source and per-example transforms.

    Every input pipeline builds its batches here (spectrograms, codes, video clips); a
    pipeline that needs more per-example work (e.g. optical flow of a clip window) appends
    a transform to the list.

    Args:
      source: random access, `source[i] -> dict` of numpy values.
      transform: one transform or a sequence, applied in order, mapping a source item to a
        model example (`RandomMap`s only when `train`; Grain seeds each per element).
      filler: eval only: the source-item form of a padding example (its "mask" is False).
      mask_dtype: eval only: the dtype of "mask" (bool, or float32 1/0 for weighting).
      Other arguments: as `make_spec_dataset`.

    Returns:
      `grain.IterDataset` of batched transformed examples (+ "mask": [B] `mask_dtype` when
      not `train`), B = global_batch_size // process_count.
    """
    transforms = list(transform) if isinstance(transform, Sequence) else [transform]
    pi, pc = process_layout(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % pc:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={pc}"
        )
    local_batch = global_batch_size // pc
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty")
    if train:
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(num_epochs)
        for t in transforms:
            ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
        if num_epochs is not None:
            ds = ds[: len(ds) // global_batch_size * global_batch_size]
            if len(ds) == 0:
                raise ValueError(
                    f"{num_epochs} epoch(s) of {n} examples are fewer than one global batch "
                    f"(global_batch_size={global_batch_size})"
                )
    else:
        if filler is None or any(isinstance(t, grain.transforms.RandomMap) for t in transforms):
            raise ValueError("eval datasets need deterministic transforms and a filler example")
        padded = -(-n // global_batch_size) * global_batch_size
        ds = grain.MapDataset.source(_PaddedEvalSource(source, padded, filler))
        ds = ds.map(_KeepMask(transforms, mask_dtype))
    ds = _ProcessRows(ds, global_batch_size, pi, pc)
    buffer = prefetch_buffer_size or max(2 * local_batch, read_threads)
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=buffer)
    return ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)


def make_spec_iterator(source: _MelSource, **kwargs) -> grain.DatasetIterator:
    """`iter(make_spec_dataset(source, **kwargs))`: a checkpointable iterator of local batches.

    Save/restore its position with `it.get_state()` / `it.set_state(state)` (a small dict), or in
    an Orbax checkpoint as `data=grain.checkpoint.CheckpointSave(it)` /
    `data=grain.checkpoint.CheckpointRestore(it)` inside `ocp.args.Composite`.
    """
    return iter(make_spec_dataset(source, **kwargs))
