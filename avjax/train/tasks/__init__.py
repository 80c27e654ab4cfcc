"""One task per model family; `make_task` maps `config.task` to it (explicitly, no registry)."""

from __future__ import annotations

import pathlib

import numpy as np


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


def make_task(config, stats: dict[str, np.ndarray]):
    """Builds the task named by `config.task`.

    Args:
      config: the experiment config.
      stats: dataset statistics from `data_pipelines.inputs.make_inputs` (task-specific;
        for spectrogram tasks the per-mel-bin {"mean", "std"} of [0, 1] mels, [F] each).
    """
    task = config.task
    if task == "vqgan":
        from avjax.train.tasks.vqgan import VQGANTask

        lpaps_stats = {"shift": 2 * stats["mean"] - 1, "scale": 2 * stats["std"]}
        backbone = config.loss.lpaps_backbone
        backbone = None if backbone == "random" else load_vggishish_backbone(backbone)
        return VQGANTask.from_config(config, lpaps_stats, backbone)
    if task == "classifier":
        from avjax.train.tasks.classifier import ClassifierTask

        return ClassifierTask.from_config(config, stats)
    if task == "transformer":
        from avjax.train.tasks.transformer import TransformerTask

        return TransformerTask.from_config(config, stats)
    if task == "melgan":
        from avjax.train.tasks.melgan import MelGANTask

        return MelGANTask.from_config(config, stats)
    if task == "sound2sight":
        from avjax.train.tasks.sound2sight import Sound2SightTask

        return Sound2SightTask.from_config(config, stats)
    raise ValueError(f"config.task: unknown task {task!r}; expected one of {TASKS}")


TASKS = ("vqgan", "classifier", "transformer", "melgan", "sound2sight")
