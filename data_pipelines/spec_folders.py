"""Random-access readers for SpecVQGAN's on-disk log-mel layouts (VGGSound and VAS).

Layouts (official, see docs/specvqgan.md A8):
  VGGSound: `DIR/melspec_10s_22050hz/<id>_mel.npy` (or `DIR/<id>_mel.npy`), split lists
    `vggsound_{train,valid,test}.txt` (one `<ytid>_<start_ms>_<end_ms>` per line) in DIR or
    DIR/..; optional labels from the headerless `vggsound.csv` (ytid, start s, label, split).
  VAS: `DIR/<class>/melspec_10s_22050hz/<id>_mel.npy` (DIR may also be the folder holding
    `features/`), split lists `vas_{train,valid}.txt` (lines `<class>/<id>`) in DIR or DIR/...

`SpecSource` is a Grain random-access source: `source[i] -> {"mel": [80, T] float32 in
[0, 1], "label": int32}` with T >= 848 (860 for the official files).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avjax.audio import validate as mel_check
from data_pipelines.errors import MissingFileError, UserError

__all__ = [
    "MEL_SUBDIR",
    "MIN_FRAMES",
    "NUM_MELS",
    "SpecSource",
    "detect_layout",
    "load_mel_npy",
    "open_spec_source",
    "split_lists",
]

log = logging.getLogger(__name__)

MEL_SUBDIR = "melspec_10s_22050hz"
NUM_MELS = 80
MIN_FRAMES = 848  # the SpecVQGAN crop; official files have 860 frames
RANGE_TOL = mel_check.RANGE_TOL  # allowed excursion outside [0, 1] before a file is corrupt

_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "eval": "valid"}


def load_mel_npy(path: str | os.PathLike, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Reads and validates one `*_mel.npy` with `avjax.audio.validate.load_mel`; thread-safe.

    Args:
      path: the file.
      min_frames: the fewest time frames accepted.

    Returns:
      [80, T] float32 in [0, 1] with T >= min_frames (float64 files are cast).

    Raises:
      UserError (a ValueError) naming the file: unreadable/corrupt, wrong dtype or shape,
      non-finite values or values outside [0, 1] by more than 1e-4.
    """
    return mel_check.load_mel(path, min_frames=min_frames)


def _find_file(name: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def _read_lines(path: Path) -> list[str]:
    # surrogateescape: a line naming a file whose name is not UTF-8 maps back to that file
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _vas_root(data_dir: Path) -> Path | None:
    """The folder holding `<class>/melspec_10s_22050hz`, or None if `data_dir` is not VAS."""
    for root in (data_dir, data_dir / "features"):
        if root.is_dir() and any((d / MEL_SUBDIR).is_dir() for d in root.iterdir() if d.is_dir()):
            return root
    return None


def detect_layout(data_dir: str | os.PathLike) -> str:
    """Returns "vas" or "vggsound" for a folder in an official layout (see module doc)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise MissingFileError(f"{d}: spectrogram folder does not exist")
    if _vas_root(d) is not None:
        return "vas"
    if (d / MEL_SUBDIR).is_dir() or any(d.glob("*_mel.npy")):
        return "vggsound"
    raise UserError(
        f"{d}: unknown layout; expected VAS (<class>/{MEL_SUBDIR}/<id>_mel.npy) or VGGSound "
        f"({MEL_SUBDIR}/<id>_mel.npy or <id>_mel.npy)"
    )


def _vggsound_labels(csv_path: Path) -> tuple[dict[tuple[str, int], int], tuple[str, ...]]:
    """(ytid, start_ms) -> class index (index into the sorted unique labels), class names."""
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f, quotechar='"', skipinitialspace=True)):
            if not row:
                continue
            if len(row) < 3:
                raise UserError(f"{csv_path}:{n + 1}: expected 'ytid,start_seconds,label,...'")
            try:
                start_ms = round(float(row[1]) * 1000)
            except ValueError:
                if n == 0:  # tolerate a header line
                    continue
                raise UserError(f"{csv_path}:{n + 1}: bad start seconds {row[1]!r}") from None
            rows.append((row[0].strip(), start_ms, row[2].strip()))
    names = tuple(sorted({r[2] for r in rows}))
    index = {name: i for i, name in enumerate(names)}
    return {(yt, ms): index[lab] for yt, ms, lab in rows}, names


def _vggsound_key(video_id: str) -> tuple[str, int] | None:
    parts = video_id.rsplit("_", 2)  # ytids may contain '_'
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


class SpecSource:
    """Grain random-access source over `*_mel.npy` files.

    `source[i] -> {"mel": [80, T] float32 in [0, 1], "label": int32 (-1 if unknown)}`.
    Attributes: `ids` (split-list entries that exist on disk), `paths`, `labels` [N] int32,
    `class_names`, `layout`, `split`. The repr depends only on layout, split and the ids (not
    on the folder path), so a checkpointed iterator restores after the data moves.
    """

    def __init__(
        self,
        paths: Sequence[str],
        ids: Sequence[str],
        labels: Sequence[int],
        class_names: Sequence[str] = (),
        *,
        layout: str = "custom",
        split: str = "",
        min_frames: int = MIN_FRAMES,
    ):
        if not len(paths) == len(ids) == len(labels):
            raise ValueError("paths, ids and labels must have the same length")
        self.paths = tuple(os.fspath(p) for p in paths)
        self.ids = tuple(ids)
        self.labels = np.asarray(labels, np.int32)
        self.class_names = tuple(class_names)
        self.layout = layout
        self.split = split
        self.min_frames = min_frames
        digest = hashlib.sha1("\n".join(self.ids).encode("utf-8", "surrogateescape"))
        digest = digest.hexdigest()[:12]
        self._repr = (
            f"SpecSource(layout={layout!r}, split={split!r}, num_examples={len(self.ids)}, "
            f"num_classes={len(self.class_names)}, ids_sha1={digest!r})"
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self!r}")
        return {
            "mel": load_mel_npy(self.paths[index], self.min_frames),
            "label": np.int32(self.labels[index]),
        }

    def __repr__(self) -> str:
        return self._repr


def _resolve_split_file(split: str, prefix: str, dirs: Sequence[Path], data_dir: Path) -> Path:
    name = f"{prefix}_{split}.txt"
    found = _find_file(name, dirs)
    if found is None:
        raise MissingFileError(
            f"split list {name} not found in {', '.join(map(str, dirs))} (data_dir={data_dir})"
        )
    return found


def split_lists(data_dir: str | os.PathLike, layout: str = "auto") -> dict[str, Path]:
    """The split lists a dataset folder has: {"train" | "valid" | "test": path}.

    Searched where `open_spec_source` looks (DIR, and for VAS its `features/` parent).
    """
    data_dir = Path(data_dir)
    if layout == "auto":
        layout = detect_layout(data_dir)
    if layout == "vas":
        root = _vas_root(data_dir) or data_dir
        search = list(dict.fromkeys([data_dir, root, root.parent]))
    else:
        search = list(dict.fromkeys([data_dir, data_dir.parent]))
    found = {s: _find_file(f"{layout}_{s}.txt", search) for s in ("train", "valid", "test")}
    return {s: f for s, f in found.items() if f is not None}


def _other_split_hint(data_dir: Path, split: str, layout: str) -> str:
    """`; its clips are listed in vas_valid.txt: ...` when another split has files here."""
    for other, path in split_lists(data_dir, layout).items():
        if other == split:
            continue
        quiet, log.disabled = log.disabled, True  # its skipped-ids warning is not news here
        try:
            src = open_spec_source(data_dir, other, layout, split_file=path)
        except (OSError, ValueError):
            continue
        finally:
            log.disabled = quiet
        role = "train_split" if split == "train" else "eval_split"
        return (
            f"; the {len(src)} clips here are listed in {path.name} (e.g. the official VAS "
            f"sample folder): use them with --config.data.{role}={other}"
        )
    return ""


def _open_vas(data_dir: Path, split: str, split_file: Path | None):
    root = _vas_root(data_dir)
    if root is None:
        raise UserError(f"{data_dir}: no <class>/{MEL_SUBDIR} folders (VAS layout expected)")
    search = list(dict.fromkeys([data_dir, root, root.parent]))
    split_file = split_file or _resolve_split_file(split, "vas", search, data_dir)
    entries = _read_lines(split_file)
    # Classes: the class folders on disk plus those named in the split lists, so a partial copy
    # (e.g. 7 of VAS's 8 classes) keeps the full dataset's label indices.
    classes = {d.name for d in root.iterdir() if (d / MEL_SUBDIR).is_dir()}
    for other in ("train", "valid", "test"):
        f = _find_file(f"vas_{other}.txt", search)
        if f is not None:
            classes.update(e.split("/", 1)[0] for e in _read_lines(f) if "/" in e)
    class_names = tuple(sorted(classes))
    cls_index = {c: i for i, c in enumerate(class_names)}
    paths, ids, labels = [], [], []
    listing: dict[str, set[str]] = {}
    for n, entry in enumerate(entries):
        if "/" not in entry:
            raise UserError(f"{split_file}:{n + 1}: expected '<class>/<id>', got {entry!r}")
        cls, vid = entry.split("/", 1)
        if cls not in listing:
            mel_dir = root / cls / MEL_SUBDIR
            listing[cls] = set(os.listdir(mel_dir)) if mel_dir.is_dir() else set()
        paths.append(str(root / cls / MEL_SUBDIR / f"{vid}_mel.npy"))
        ids.append(entry)
        labels.append(cls_index[cls])
    present = [f"{Path(e).name}_mel.npy" in listing[e.split("/", 1)[0]] for e in ids]
    return paths, ids, labels, class_names, split_file, present


def _open_vggsound(data_dir: Path, split: str, split_file: Path | None, labels_csv: Path | None):
    mel_dir = data_dir / MEL_SUBDIR if (data_dir / MEL_SUBDIR).is_dir() else data_dir
    search = list(dict.fromkeys([data_dir, data_dir.parent]))
    split_file = split_file or _resolve_split_file(split, "vggsound", search, data_dir)
    entries = _read_lines(split_file)
    csv_path = labels_csv or _find_file("vggsound.csv", search)
    label_map, class_names = _vggsound_labels(csv_path) if csv_path else ({}, ())
    on_disk = set(os.listdir(mel_dir))
    paths, labels, present = [], [], []
    for entry in entries:
        key = _vggsound_key(entry)
        labels.append(label_map.get(key, -1) if key is not None else -1)
        paths.append(str(mel_dir / f"{entry}_mel.npy"))
        present.append(f"{entry}_mel.npy" in on_disk)
    return paths, list(entries), labels, class_names, split_file, present


def open_spec_source(
    data_dir: str | os.PathLike,
    split: str,
    layout: str = "auto",
    *,
    strict: bool = False,
    split_file: str | os.PathLike | None = None,
    labels_csv: str | os.PathLike | None = None,
    min_frames: int = MIN_FRAMES,
) -> SpecSource:
    """Opens one split of a VGGSound- or VAS-layout log-mel folder as a `SpecSource`.

    Args:
      data_dir: the folder (see module doc for both layouts).
      split: "train", "valid" (aliases "val", "validation") or "test" (VGGSound only).
      layout: "auto", "vas" or "vggsound".
      strict: raise on the first listed id whose file is missing; otherwise skip missing ids
        with one warning giving the count.
      split_file: explicit split list, instead of searching DIR and DIR/...
      labels_csv: explicit `vggsound.csv` (VGGSound); default: searched in DIR and DIR/...
      min_frames: the fewest time frames a file may have.

    Returns:
      The source; items are {"mel": [80, T] float32 in [0, 1], "label": int32}.
    """
    data_dir = Path(data_dir)
    split = _SPLIT_ALIASES.get(split, split)
    if layout == "auto":
        layout = detect_layout(data_dir)
    sf = Path(split_file) if split_file is not None else None
    if layout == "vas":
        paths, ids, labels, class_names, sf, present = _open_vas(data_dir, split, sf)
    elif layout == "vggsound":
        csv_path = Path(labels_csv) if labels_csv is not None else None
        paths, ids, labels, class_names, sf, present = _open_vggsound(data_dir, split, sf, csv_path)
    else:
        raise UserError(f"layout={layout!r}; expected 'auto', 'vas' or 'vggsound'")
    missing = [p for p, ok in zip(paths, present) if not ok]
    if missing and strict:
        raise MissingFileError(
            f"{missing[0]}: listed in {sf} but missing ({len(missing)} of {len(paths)} "
            "listed files are missing; pass strict=False to skip them)"
        )
    if len(missing) == len(paths):
        hint = _other_split_hint(data_dir, split, layout) if split_file is None else ""
        raise UserError(
            f"{data_dir}: split {split!r} resolves to zero files (split list {sf} has "
            f"{len(paths)} entries, none found on disk){hint}"
        )
    if missing:
        log.warning(
            "%s: %d of %d ids listed in %s have no *_mel.npy file; skipping them",
            data_dir,
            len(missing),
            len(paths),
            sf,
        )
        keep = [i for i, ok in enumerate(present) if ok]
        paths = [paths[i] for i in keep]
        ids = [ids[i] for i in keep]
        labels = [labels[i] for i in keep]
    return SpecSource(
        paths, ids, labels, class_names, layout=layout, split=split, min_frames=min_frames
    )
