"""Codebook indices of a dataset, extracted once so the transformer never re-runs the encoder.

`extract_codes` centre-crops every log-mel of a split to the codebook's `data.crop_frames` (848
for the paper's codebooks: columns 6..853 of 860), encodes it with a trained codebook (an
`Encoder` the caller passes: the library's `CodeEncoder` in models/specvqgan/code_encoder.py,
jitted, batched, batch sharded over the local devices) and stores the [5, 53] index maps as
column-major sequences (position s = w * 5 + h), the transformer's token order:

  CODES_DIR/codes.json        codebook workdir + step, grid [h, w], n_embed, crop, splits
  CODES_DIR/<split>.npy       int16 [N, h * w] column-major sequences (int32 past 32768 codes)
  CODES_DIR/<split>_ids.txt   the N clip ids (split-list entries), in row order

`codes_status` tells whether a folder holds up-to-date codes of a split for a codebook (the
codebook's latest checkpoint step is recorded; a newer step makes the codes stale).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import pathlib
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import tqdm
from absl import logging

from data_pipelines import pipeline, spec_folders
from data_pipelines.errors import MissingFileError, UserError

__all__ = [
    "META",
    "Encoder",
    "codebook_step",
    "codes_status",
    "default_codes_dir",
    "extract_codes",
    "extract_command",
    "load_codes",
]

META = "codes.json"
_VERSION = 1


def codebook_step(workdir: str | os.PathLike) -> int:
    """The latest finished checkpoint step of a codebook run (what `Codec` loads)."""
    ckpt = pathlib.Path(workdir) / "checkpoints"
    steps = (
        [int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()]
        if (ckpt.is_dir())
        else []
    )
    if not steps:
        raise MissingFileError(
            f"{ckpt}: no checkpoint steps; the codebook workdir (--codebook_workdir, or "
            "config.codebook.workdir when training) must be a trained codebook run"
        )
    return max(steps)


def default_codes_dir(data_dir: str | os.PathLike, codebook_workdir: str | os.PathLike):
    """`DATA_DIR/codes/<codebook run name>-<hash of its absolute path>`."""
    w = pathlib.Path(codebook_workdir).resolve()
    digest = hashlib.sha1(str(w).encode()).hexdigest()[:8]
    return pathlib.Path(data_dir) / "codes" / f"{w.name}-{digest}"


def _ids_sha(ids: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _write_atomic(path: pathlib.Path, data: bytes):
    """Writes under a temporary name, then renames (concurrent readers see whole files)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_meta(codes_dir: pathlib.Path) -> dict | None:
    try:
        meta = json.loads((codes_dir / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == _VERSION else None


def codes_status(
    codes_dir: str | os.PathLike,
    codebook_workdir: str | os.PathLike,
    split: str,
    ids: Sequence[str] | None = None,
) -> str | None:
    """None when `codes_dir` holds current codes of `split` (covering `ids`), else why not."""
    codes_dir = pathlib.Path(codes_dir)
    meta = _read_meta(codes_dir)
    if meta is None:
        return f"no {META} in {codes_dir}"
    w = str(pathlib.Path(codebook_workdir).resolve())
    if meta["codebook_workdir"] != w or meta["codebook_step"] != codebook_step(w):
        return (
            f"{codes_dir} holds codes of {meta['codebook_workdir']} step {meta['codebook_step']}, "
            f"not of {w} step {codebook_step(w)}"
        )
    if split not in meta["splits"] or not (codes_dir / f"{split}.npy").is_file():
        return f"{codes_dir} has no codes for split {split!r}"
    if ids is not None:
        have = set(_read_ids(codes_dir, split))
        missing = [i for i in ids if i not in have]
        if missing:
            return (
                f"{codes_dir}: {len(missing)} clips of split {split!r} have no codes ({missing[0]})"
            )
    return None


def _read_ids(codes_dir: pathlib.Path, split: str) -> list[str]:
    return (codes_dir / f"{split}_ids.txt").read_text().split("\n")[:-1]


def load_codes(codes_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, list[str], dict]:
    """Stored codes of one split.

    Returns:
      (codes [N, h * w] int32 column-major sequences, the N ids, the codes.json dict).
    """
    codes_dir = pathlib.Path(codes_dir)
    meta = _read_meta(codes_dir)
    path = codes_dir / f"{split}.npy"
    if meta is None or not path.is_file():
        raise MissingFileError(f"{path}: no extracted codes (run launch/extract_codes.py)")
    codes = np.load(path, allow_pickle=False).astype(np.int32)
    ids = _read_ids(codes_dir, split)
    h, w = meta["grid"]
    if codes.ndim != 2 or codes.shape != (len(ids), h * w):
        raise UserError(
            f"{path}: codes of shape {codes.shape} do not match {len(ids)} ids x {h}*{w} tokens"
        )
    return codes, ids, meta


def extract_command(codebook_workdir, data_dir, out_dir=None, splits=None, layout="auto") -> str:
    """The `launch/extract_codes.py` command line that writes these codes."""
    cmd = [
        "python",
        "launch/extract_codes.py",
        f"--codebook_workdir={codebook_workdir}",
        f"--data_dir={data_dir}",
    ]
    if out_dir is not None:
        cmd.append(f"--out={out_dir}")
    if splits:
        cmd.append(f"--splits={','.join(splits)}")
    if layout != "auto":
        cmd.append(f"--layout={layout}")
    return shlex.join(cmd)


class Encoder(Protocol):
    """What `extract_codes` needs of a codebook (the library's `CodeEncoder`).

    `make_encoder(codebook_workdir, batch_size)` builds one; calling it maps [B, 80, T] mels in
    [0, 1] (B = its `batch_size` at most) to [B, h * w] column-major code sequences.
    """

    n_embed: int
    crop_frames: int
    batch_size: int

    def grid(self, num_mels: int, frames: int) -> tuple[int, int]: ...
    def __call__(self, mels: np.ndarray) -> np.ndarray: ...


def extract_codes(
    codebook_workdir: str | os.PathLike,
    data_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "valid"),
    out_dir: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    labels_csv: str | os.PathLike | None = None,
    batch_size: int = 16,
    crop_frames: int | None = None,
    read_threads: int = 8,
    make_encoder: Callable[[pathlib.Path, int], Encoder],
) -> pathlib.Path:
    """Encodes every clip of `splits` with the codebook; writes the layout of the module doc.

    Args:
      codebook_workdir: a trained codebook run (`config.json` + `checkpoints/`).
      make_encoder: `(codebook_workdir, batch_size) -> Encoder`, the jitted codebook encoder
        (the library's `CodeEncoder`, models/specvqgan/code_encoder.py).
      data_dir: a VGGSound/VAS-layout folder (`spec_folders.open_spec_source`).
      splits: split names; each needs its split list.
      out_dir: where to write (default `default_codes_dir(data_dir, codebook_workdir)`).
      layout, labels_csv: as `spec_folders.open_spec_source`.
      batch_size: clips per jitted call (rounded up to a multiple of the local devices).
      crop_frames: centre crop of the 860-frame mels; default the codebook's training crop
        (`data.crop_frames`, 848 for the paper's codebooks), which is also the window
        `Video2Sound` samples and decodes.
      read_threads: threads reading the `.npy` files.

    Returns:
      The codes folder. Splits already present for the same codebook step are rewritten;
      codes of another codebook or step in the folder are replaced.
    """
    w = pathlib.Path(codebook_workdir).resolve()
    out = pathlib.Path(out_dir) if out_dir is not None else default_codes_dir(data_dir, w)
    step = codebook_step(w)
    encoder = make_encoder(w, batch_size)
    crop_frames = crop_frames or encoder.crop_frames
    grid = encoder.grid(spec_folders.NUM_MELS, crop_frames)
    meta = _read_meta(out)
    if meta is None or meta["codebook_workdir"] != str(w) or meta["codebook_step"] != step:
        meta = {
            "version": _VERSION,
            "codebook_workdir": str(w),
            "codebook_step": step,
            "n_embed": encoder.n_embed,
            "grid": list(grid),
            "crop_frames": crop_frames,
            "order": "column_major",
            "splits": {},
        }
    out.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(read_threads) as pool:
        for split in splits:
            src = spec_folders.open_spec_source(data_dir, split, layout, labels_csv=labels_csv)
            t0 = time.time()
            dtype = np.int16 if encoder.n_embed <= np.iinfo(np.int16).max + 1 else np.int32
            codes = np.zeros((len(src), grid[0] * grid[1]), dtype)
            read = lambda i, src=src: pipeline.center_crop(src[i]["mel"], crop_frames)
            bs = encoder.batch_size
            bar = tqdm.tqdm(total=len(src), desc=f"encoding {split}", unit="clip", leave=False)
            for start in range(0, len(src), bs):
                idx = range(start, min(start + bs, len(src)))
                codes[start : idx.stop] = encoder(np.stack(list(pool.map(read, idx))))
                bar.update(len(idx))
            bar.close()
            buf = io.BytesIO()
            np.save(buf, codes)
            _write_atomic(out / f"{split}.npy", buf.getvalue())
            _write_atomic(out / f"{split}_ids.txt", "".join(f"{i}\n" for i in src.ids).encode())
            meta["splits"][split] = {"num": len(src), "ids_sha1": _ids_sha(src.ids)}
            _write_atomic(out / META, json.dumps(meta, indent=1).encode())
            logging.info(
                "encoded %d clips of %s/%s in %.1f s -> %s",
                len(src),
                data_dir,
                split,
                time.time() - t0,
                out,
            )
    return out
