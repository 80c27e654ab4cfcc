"""One task per model family; `make_task` maps `config.task` to it through one explicit dict."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from avjax.train.task import Task
from avjax.train.tasks.classifier import ClassifierTask
from avjax.train.tasks.mcav import MCAVTask
from avjax.train.tasks.melgan import MelGANTask
from avjax.train.tasks.sound2sight import Sound2SightTask
from avjax.train.tasks.transformer import TransformerTask
from avjax.train.tasks.vqgan import VQGANTask


def load_vggishish_backbone(path: str | pathlib.Path) -> dict:
    """VGGish-ish conv parameters ({"features_i": ...}) for a trained LPAPS backbone.

    `path` is an avjax classifier workdir (its latest checkpoint is read) or an official
    PyTorch checkpoint (`vggishish16.pt`, read without torch and without running its code).
    """
    path = pathlib.Path(path)
    if path.is_dir():
        from avjax.runs import load_run

        params = load_run(path).params
    elif path.suffix in (".pt", ".pth", ".ckpt"):
        from avjax.convert import torch_io
        from avjax.convert.vggishish import vggishish_from_torch

        params = vggishish_from_torch(torch_io.load_state_dict(path))
    else:
        raise ValueError(
            f"config.loss.lpaps_backbone: {path} is neither an avjax classifier workdir nor a "
            "PyTorch checkpoint (.pt); use 'random' for the released models' frozen random backbone"
        )
    feats = {k: v for k, v in params.items() if k.startswith("features_")}
    if not feats:
        raise ValueError(f"config.loss.lpaps_backbone: no VGGish-ish conv parameters in {path}")
    return feats


def _vqgan_task(config, stats: dict[str, np.ndarray]) -> VQGANTask:
    """The codebook task: LPAPS normalised by the data's mel statistics, optional backbone."""
    lpaps_stats = {"shift": 2 * stats["mean"] - 1, "scale": 2 * stats["std"]}
    backbone = config.loss.lpaps_backbone
    backbone = None if backbone == "random" else load_vggishish_backbone(backbone)
    return VQGANTask.from_config(config, lpaps_stats, backbone)


# config.task -> (config, stats) -> task (a new model family adds one line here).
TASKS: dict[str, Callable[[Any, dict[str, np.ndarray]], Task]] = {
    "vqgan": _vqgan_task,
    "classifier": ClassifierTask.from_config,
    "transformer": TransformerTask.from_config,
    "melgan": MelGANTask.from_config,
    "sound2sight": Sound2SightTask.from_config,
    "mcav": MCAVTask.from_config,
}

# Families whose task reads another run: for compiling only, a stand-in of its shapes
# where that run is not named (MCAV's stage 2 without `config.motion.workdir`).
DRY_RUN_TASKS: dict[str, Callable[[Any, dict[str, np.ndarray]], Task]] = {
    "mcav": functools.partial(MCAVTask.from_config, dry_run=True),
}


def make_task(config, stats: dict[str, np.ndarray], *, dry_run: bool = False) -> Task:
    """Builds the task named by `config.task` (one entry of `TASKS`).

    Args:
      config: the experiment config.
      stats: dataset statistics from `data_pipelines.inputs.make_inputs` (task-specific;
        for spectrogram tasks the per-mel-bin {"mean", "std"} of [0, 1] mels, [F] each).
      dry_run: for compiling only (`launch/compile_check.py`): the `DRY_RUN_TASKS`
        factory where there is one.
    """
    factory = TASKS.get(config.task)
    if factory is None:
        raise ValueError(
            f"config.task: unknown task {config.task!r}; expected one of {tuple(TASKS)}"
        )
    if dry_run:
        factory = DRY_RUN_TASKS.get(config.task, factory)
    return factory(config, stats)
