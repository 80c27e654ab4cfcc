"""A TFDS array_record dataset built from a VGGSound/VAS log-mel folder; no TensorFlow needed.

`build_tfds(data_dir, out_dir)` converts every split list found next to `data_dir` (see
`spec_folders`) into `out_dir/avjax_spec_folder/1.0.0/*.array_record-*`, with features
  mel   Tensor [80, 860] float32 in [0, 1]
  label Tensor [] int64 (-1 when unknown; class names in `info.metadata["class_names"]`)
  id    Text (the split-list entry, e.g. `dog/video_02677` or `--0PQM4-hqg_30000_40000`).
`open_tfds_source(out_dir, split)` reads a split back as a Grain random-access source yielding
the same `{"mel", "label"}` dicts as `spec_folders.SpecSource`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import spec_folders
from data_pipelines.errors import MissingFileError, UserError

__all__ = ["SpecFolderBuilder", "TfdsSpecSource", "build_tfds", "open_tfds_source"]

log = logging.getLogger(__name__)

NUM_FRAMES = 860
_SPLITS = ("train", "valid", "test")


def _available_splits(data_dir: Path, layout: str) -> dict[str, spec_folders.SpecSource]:
    sources = {}
    for split in _SPLITS:
        try:
            sources[split] = spec_folders.open_spec_source(data_dir, split, layout)
        except FileNotFoundError as e:  # no split list for this split (e.g. VAS has no test)
            log.info("skipping split %s: %s", split, e)
    if not sources:
        raise UserError(f"{data_dir}: no split lists ({layout} layout) resolve to any files")
    return sources


class SpecFolderBuilder(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over a folder in the official VGGSound or VAS layout (array_record)."""

    name = "avjax_spec_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "log-mel [80, 860] float32, label int64, id text"
    }
    # No checksums/README next to the code. Also stops TFDS probing `importlib_resources`
    # (not installed) when it resolves the code path of a builder inside a package.
    code_path = None

    def __init__(self, *, source_dir: str | os.PathLike | None = None, layout="auto", **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._source_dir = Path(source_dir) if source_dir is not None else None
        self._layout = layout
        self._sources: dict[str, spec_folders.SpecSource] | None = None
        super().__init__(**kwargs)

    def _get_sources(self) -> dict[str, spec_folders.SpecSource]:
        if self._sources is None:
            if self._source_dir is None:
                raise ValueError("SpecFolderBuilder needs source_dir=<log-mel folder> to build")
            layout = self._layout
            if layout == "auto":
                layout = spec_folders.detect_layout(self._source_dir)
            self._sources = _available_splits(self._source_dir, layout)
        return self._sources

    def _info(self) -> tfds.core.DatasetInfo:
        # dataset_info_from_configs() needs a package dir (STACK.md 6): build the info directly.
        metadata = tfds.core.MetadataDict()
        if self._source_dir is not None:
            src = next(iter(self._get_sources().values()))
            metadata["class_names"] = list(src.class_names)
            metadata["layout"] = src.layout
            metadata["sources"] = {k: repr(v) for k, v in self._get_sources().items()}
        return tfds.core.DatasetInfo(
            builder=self,
            description="SpecVQGAN log-mel spectrograms (80 x 860, [0, 1]) from a local folder.",
            features=tfds.features.FeaturesDict(
                {
                    "mel": tfds.features.Tensor(shape=(80, NUM_FRAMES), dtype=np.float32),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "id": tfds.features.Text(),
                }
            ),
            metadata=metadata,
            supervised_keys=None,
            disable_shuffling=True,  # keep split-list order, as SpecSource does
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(src) for split, src in self._get_sources().items()}

    def _generate_examples(self, source: spec_folders.SpecSource):
        for i in range(len(source)):
            ex = source[i]
            mel = ex["mel"]
            if mel.shape != (80, NUM_FRAMES):
                raise UserError(
                    f"{source.paths[i]}: log-mel shape {mel.shape}, the TFDS builder expects "
                    f"[80, {NUM_FRAMES}]"
                )
            yield source.ids[i], {"mel": mel, "label": int(ex["label"]), "id": source.ids[i]}


def build_tfds(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, layout: str = "auto"
) -> SpecFolderBuilder:
    """Builds (or reuses) the array_record dataset for every split list of `data_dir`.

    Args:
      data_dir: a log-mel folder in the VGGSound or VAS layout.
      out_dir: TFDS data_dir; files go to `out_dir/avjax_spec_folder/1.0.0/`.
      layout: "auto", "vas" or "vggsound".

    Returns:
      The prepared builder (`builder.info.splits[...]`, `builder.as_data_source(split)`).
      An `out_dir` already prepared from the same splits (same ids) is reused; one prepared
      from other data raises ValueError.
    """
    builder = SpecFolderBuilder(source_dir=data_dir, layout=layout, data_dir=os.fspath(out_dir))
    if builder.is_prepared():
        meta_file = Path(builder.data_dir) / "metadata.json"
        stored = json.loads(meta_file.read_text()).get("sources") if meta_file.is_file() else None
        current = {k: repr(v) for k, v in builder._get_sources().items()}
        if stored != current:
            raise UserError(
                f"{builder.data_dir}: already holds a dataset built from other data "
                f"({stored}, now {current}); use a fresh out_dir"
            )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder


def _dataset_dir(out_dir: Path) -> Path:
    if (out_dir / "dataset_info.json").is_file():
        return out_dir
    infos = sorted(out_dir.glob(f"{SpecFolderBuilder.name}/*/dataset_info.json"))
    if not infos:
        raise MissingFileError(
            f"{out_dir}: no prepared {SpecFolderBuilder.name} dataset (expected "
            f"{SpecFolderBuilder.name}/<version>/dataset_info.json); run build_tfds first"
        )
    return infos[-1].parent


class TfdsSpecSource:
    """Grain source over a prepared split: `source[i] -> {"mel": [80, 860] f32, "label": i32}`.

    Attributes: `ids` (lazily read), `class_names`, `split`; repr is path-independent.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str):
        ds_dir = _dataset_dir(Path(out_dir))
        builder = tfds.builder_from_directory(os.fspath(ds_dir))
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in builder.info.splits:
            raise UserError(
                f"{ds_dir}: no split {split!r}; available: {sorted(builder.info.splits)}"
            )
        self.split = split
        self.class_names = tuple(builder.info.metadata.get("class_names", ()))
        self._source = builder.as_data_source(split=split)
        self._repr = (
            f"TfdsSpecSource(name={builder.info.name!r}, version={str(builder.info.version)!r}, "
            f"split={split!r}, num_examples={len(self._source)})"
        )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        ex = self._source[int(index)]
        return {"mel": np.asarray(ex["mel"], np.float32), "label": np.int32(ex["label"])}

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(
            x.decode() if isinstance(x, bytes) else str(x)
            for x in (self._source[i]["id"] for i in range(len(self)))
        )

    def __repr__(self) -> str:
        return self._repr


def open_tfds_source(out_dir: str | os.PathLike, split: str) -> TfdsSpecSource:
    """Opens split `split` of a dataset made by `build_tfds(..., out_dir)` for Grain."""
    return TfdsSpecSource(out_dir, split)
