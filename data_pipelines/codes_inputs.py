"""Input pipeline of SpecVQGAN's transformer: stored codebook codes + visual features + labels.

`make_inputs(config)` (dispatched by `data_pipelines.inputs.make_inputs` for
`config.task == 'transformer'`):
  1. opens `config.data.dir` (or, for `:tiny`, the embedded synthetic clips, to which it adds
     synthetic per-frame features) with `spec_folders.open_spec_source`: the split's clip ids,
     mel paths and labels (VAS class folders, VGGSound `vggsound.csv`);
  2. finds the codes of `config.codebook.workdir` in `config.data.codes_dir` (default
     `codes.default_codes_dir(data_dir, codebook)`); missing or stale codes are extracted on
     the spot in a single-process run given `ModelFns.code_encoder` (otherwise it stops and
     prints the exact `launch/extract_codes.py` command to run once beforehand);
  3. builds the Grain iterators with `pipeline.make_dataset` (seeded global shuffle,
     per-process slicing, global batches, checkpointable), reading each clip's feature files
     (`features.FeatureSpec`: pad/trim 215, crop 212, resample to `feat_sample_size`).

Batches: {"codes": int32 [B, h*w] (265 for 5x53) column-major, "feats": float32 [B, Tc, D],
"label": int32 [B] (-1 when unknown)}; eval batches also "mask": float32 [B] (0: padding).
With `config.data.features == 'none'` ("No Feats") the features are uniform noise: fresh per
example and epoch in training (Grain's per-element seeded rng), fixed per clip in eval.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np
from absl import logging

from data_pipelines import base, pipeline, spec_folders, synthetic_audio
from data_pipelines import codes as codes_lib
from data_pipelines import features as feats_lib
from data_pipelines.errors import MissingFileError, UserError

__all__ = ["CodesSource", "ensure_codes", "make_inputs", "open_codes_source"]


class CodesSource:
    """Grain random-access source: `source[i] -> {"codes", "feats"?, "label", "index"}`.

    `codes` [L] int32, `feats` [Tc, D] float32 (absent for No Feats), `label` int32, `index`
    int32 (the clip's position, seeds its No-Feats noise in eval). The repr names only the
    split, sizes and ids (not paths), so checkpointed iterators restore after the data moves.
    """

    def __init__(
        self,
        codes: np.ndarray,
        feature_paths: Sequence[Sequence[str]] | None,
        labels: np.ndarray,
        spec: feats_lib.FeatureSpec,
        ids: Sequence[str],
        class_names: Sequence[str] = (),
        split: str = "",
    ):
        self.codes = np.asarray(codes, np.int32)
        self.feature_paths = feature_paths
        self.labels = np.asarray(labels, np.int32)
        self.spec = spec
        self.ids = tuple(ids)
        self.class_names = tuple(class_names)
        self.split = split
        self._repr = (
            f"CodesSource(split={split!r}, num_examples={len(self.ids)}, "
            f"tokens={self.codes.shape[1]}, features={spec.kind!r}, "
            f"ids_sha1={codes_lib._ids_sha(self.ids)[:12]!r})"
        )

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        item = {
            "codes": self.codes[index],
            "label": np.int32(self.labels[index]),
            "index": np.int32(index),
        }
        if self.feature_paths is not None:
            item["feats"] = feats_lib.load_clip_features(self.feature_paths[index], self.spec)
        return item

    def filler(self) -> dict[str, np.ndarray]:
        """A padding item for eval batches (label -1)."""
        item = {
            "codes": np.zeros(self.codes.shape[1], np.int32),
            "label": np.int32(-1),
            "index": np.int32(len(self)),
        }
        if self.feature_paths is not None:
            item["feats"] = np.zeros((self.spec.sample_size, self.spec.dim), np.float32)
        return item

    def __repr__(self) -> str:
        return self._repr


def _check_feature_files(paths: Sequence[Sequence[pathlib.Path]], split: str):
    listings: dict[pathlib.Path, set[str]] = {}
    missing = []
    for clip in paths:
        for p in clip:
            if p.parent not in listings:
                listings[p.parent] = set(os.listdir(p.parent)) if p.parent.is_dir() else set()
            if p.name not in listings[p.parent]:
                missing.append(p)
    if missing:
        raise MissingFileError(
            f"{missing[0]}: feature file not found ({len(missing)} feature files of split "
            f"{split!r} are missing; config.data.features selects which features are read). "
            + how_to_make_features(feats_lib.folder_kind(missing[0]))
        )


RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def how_to_make_features(kind: str | None) -> str:
    """One sentence: which command writes the features of `kind`, or what to do instead."""
    if kind == "resnet50":
        return (
            "Make them with `python launch/preprocess.py --videos V --out DIR "
            "--resnet50_weights resnet50-0676ba61.pth` (torchvision's ImageNet ResNet-50, "
            f"{RESNET50_URL}; read without PyTorch), or train without features: "
            "--config.data.features=none"
        )
    if kind == "bninception":
        return (
            "avjax does not compute BN-Inception rgb+flow features (they need the official "
            "RegNet optical-flow recipe): use the released ones, or ResNet-50 features "
            "(--config.data.features=resnet50, made by launch/preprocess.py "
            "--resnet50_weights)"
        )
    return "See the README (Data) for the feature layouts."


def open_codes_source(
    data_dir: str | os.PathLike,
    codes_dir: str | os.PathLike,
    split: str,
    spec: feats_lib.FeatureSpec,
    layout: str = "auto",
    labels_csv: str | os.PathLike | None = None,
) -> CodesSource:
    """One split: the clips of `spec_folders.open_spec_source`, their codes and features."""
    clips = spec_folders.open_spec_source(data_dir, split, layout, labels_csv=labels_csv)
    all_codes, code_ids, _ = codes_lib.load_codes(codes_dir, clips.split)
    row = {cid: r for r, cid in enumerate(code_ids)}
    missing = [i for i in clips.ids if i not in row]
    if missing:
        raise UserError(
            f"{codes_dir}: {len(missing)} clips of split {split!r} have no codes (e.g. "
            f"{missing[0]}); re-run launch/extract_codes.py"
        )
    codes = all_codes[[row[i] for i in clips.ids]]
    paths = None
    if spec.kind != "none":
        paths = [feats_lib.clip_feature_paths(p, spec.kind) for p in clips.paths]
        _check_feature_files(paths, split)
        paths = [[str(p) for p in clip] for clip in paths]
    return CodesSource(
        codes, paths, clips.labels, spec, clips.ids, clips.class_names, split=clips.split
    )


class _ToExample(grain.transforms.Map):
    """Source item -> example; No-Feats noise seeded by (seed, clip index) (eval)."""

    def __init__(self, spec: feats_lib.FeatureSpec, seed: int):
        self.spec, self.seed = spec, seed

    def map(self, element):
        out = {"codes": element["codes"], "label": element["label"]}
        if "feats" in element:
            out["feats"] = element["feats"]
        else:
            rng = np.random.default_rng([self.seed, 1, int(element["index"])])
            out["feats"] = feats_lib.random_features(self.spec, rng)
        return out


class _ToExampleRandom(grain.transforms.RandomMap):
    """Source item -> example with fresh No-Feats noise (train; Grain seeds the rng)."""

    def __init__(self, spec: feats_lib.FeatureSpec):
        self.spec = spec

    def random_map(self, element, rng: np.random.Generator):
        feats = feats_lib.random_features(self.spec, rng)
        return {"codes": element["codes"], "label": element["label"], "feats": feats}


def make_dataset(
    source: CodesSource, *, global_batch_size: int, seed: int, train: bool, **kwargs
) -> grain.IterDataset:
    """Batched process-local dataset of `source` (`pipeline.make_dataset` order)."""
    spec = source.spec
    if train and spec.kind == "none":
        transform = _ToExampleRandom(spec)
    else:
        transform = _ToExample(spec, seed)
    return pipeline.make_dataset(
        source,
        transform,
        filler=None if train else source.filler(),
        global_batch_size=global_batch_size,
        seed=seed,
        train=train,
        mask_dtype=np.float32,
        **kwargs,
    )


def ensure_codes(
    config,
    data_dir: pathlib.Path,
    splits: Sequence[str],
    make_encoder: Callable[[pathlib.Path, int], codes_lib.Encoder] | None = None,
) -> pathlib.Path:
    """The codes folder for `config`, extracting missing/stale splits.

    Extraction needs `make_encoder` (`codes.extract_codes`) and a single process; otherwise
    missing codes stop with the `launch/extract_codes.py` command to run once beforehand.
    """
    d = config.data
    workdir = config.codebook.workdir
    if not workdir:
        raise UserError(
            "config.codebook.workdir is not set: pass --config.codebook.workdir=W, a trained "
            "codebook run (launch/train.py --config configs/specvqgan_vggsound.py)"
        )
    workdir = pathlib.Path(workdir).expanduser()
    if not (workdir / "config.json").is_file():
        raise MissingFileError(
            f"config.codebook.workdir: {workdir} is not a codebook run (no config.json)"
        )
    codes_dir = pathlib.Path(
        d.codes_dir or codes_lib.default_codes_dir(data_dir, workdir)
    ).expanduser()
    todo = []
    for split in splits:
        ids = spec_folders.open_spec_source(data_dir, split, d.layout, labels_csv=d.labels_csv).ids
        why = codes_lib.codes_status(codes_dir, workdir, split, ids)
        if why is not None:
            logging.info("codes of split %s need extracting: %s", split, why)
            todo.append(split)
    if todo:
        cmd = codes_lib.extract_command(workdir, data_dir, codes_dir, todo, d.layout)
        if jax.process_count() > 1 or make_encoder is None:
            raise MissingFileError(
                f"no current codes for splits {todo} in {codes_dir}; extract them once before "
                f"training:\n  {cmd}"
            )
        logging.info("extracting codes (equivalent to: %s)", cmd)
        codes_lib.extract_codes(
            workdir,
            data_dir,
            todo,
            codes_dir,
            layout=d.layout,
            labels_csv=d.labels_csv,
            read_threads=d.read_threads,
            make_encoder=make_encoder,
        )
    return codes_dir


def resolve_data_dir(config) -> pathlib.Path:
    """`inputs.resolve_data_dir`, plus synthetic per-frame features for the embedded data."""
    data_dir = base.resolve_data_dir(config)
    if not config.data.dir and config.data.synthetic and config.data.features != "none":
        synthetic_audio.add_synthetic_features(data_dir, config.data.features)
    return data_dir


def make_inputs(config, model_fns: base.ModelFns | None = None) -> base.Inputs:
    """Train iterator, eval iterator factory and class names for `task='transformer'`.

    `model_fns.code_encoder` extracts missing codes on first use (single process).
    """
    d = config.data
    data_dir = resolve_data_dir(config)
    spec = feats_lib.FeatureSpec.from_config(config)
    splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
    make_encoder = model_fns.code_encoder if model_fns is not None else None
    codes_dir = ensure_codes(config, data_dir, splits, make_encoder)
    opener = lambda split: open_codes_source(
        data_dir, codes_dir, split, spec, d.layout, d.labels_csv
    )
    train_src = opener(d.train_split)
    logging.info(
        "transformer data: %s (%d clips, %d tokens each) from %s, codes %s",
        d.train_split,
        len(train_src),
        train_src.codes.shape[1],
        data_dir,
        codes_dir,
    )
    num_classes = config.model.num_classes
    unlabelled = int(train_src.labels.min()) < 0
    if num_classes and (len(train_src.class_names) != num_classes or unlabelled):
        raise UserError(
            f"config.model.num_classes={num_classes} but split {d.train_split!r} of "
            f"{data_dir} has {len(train_src.class_names)} classes"
            + (" and unlabelled clips" if unlabelled else "")
            + " (VAS class folders give labels; for VGGSound pass --config.data.labels_csv)"
        )
    common = dict(global_batch_size=d.global_batch_size, read_threads=d.read_threads)
    train_iter = iter(make_dataset(train_src, seed=config.seed, train=True, **common))
    eval_iter_fn = None
    if d.eval_split:
        eval_src = opener(d.eval_split)
        eval_iter_fn = lambda: iter(make_dataset(eval_src, seed=config.seed, train=False, **common))
    stats = {"codes_grid": np.asarray(codes_lib.load_codes(codes_dir, d.train_split)[2]["grid"])}
    return base.Inputs(
        train_iter, eval_iter_fn, stats, train_src.class_names, data_dir, len(train_src)
    )
