"""Imports official SpecVQGAN / Sound2Sight PyTorch weights as an avjax run directory.

  python launch/convert_checkpoint.py --kind codebook --torch vggsound_codebook.ckpt --out W
  python launch/convert_checkpoint.py --kind vggishish --torch vggishish16.pt --out W
  python launch/convert_checkpoint.py --kind transformer --torch vggsound_transformer.ckpt --out W
  python launch/convert_checkpoint.py --kind melgan --torch melgan_vggsound.pt --out W
  python launch/convert_checkpoint.py --kind melception --torch melception.pt --out W
  python launch/convert_checkpoint.py --kind sound2sight --torch model.pth \
      --official_repo Sound2Sight/ --out W [--config configs/sound2sight_m3so_nb.py]

--torch reads `.pt`/`.ckpt` (needs `pip install -e '.[torch]'`) or a numpy `.npz` of the
same state dict. The codebook architecture defaults to the paper's (VGGSound or VAS, from
the codebook size); pass --config for another. W then works with `launch/codec.py`
(codebook) or as `--config.loss.lpaps_backbone=W` (vggishish).

Sound2Sight's `model.pth` pickles whole modules: reading it unpickles classes from the
official repository's `models/` package, so --official_repo names that checkout (an `.npz`
of the flat `<module>.<key>` dict needs neither torch nor the repository). The config
defaults to M3SO-NB; pass the drums / painting one for 64 px checkpoints. W holds a whole
train state at step 0 (fresh Adam moments: the file has no optimizer state):
`launch/evaluate.py --workdir W --data_dir D` evaluates it, and `launch/train.py --config C
--workdir W` resumes training from it (the data order starts afresh).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import importlib

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from avjax.convert import torch_io
from avjax.convert.specvqgan import vqgan_from_torch
from avjax.convert.vggishish import lpaps_from_torch, vggishish_from_torch
from avjax.train.checkpoint import save_imported
from avjax.train.tasks import common as task_common
from avjax.train.tasks.vqgan import model_from_config
from configs import specvqgan_vas, specvqgan_vggsound, vggishish_vggsound
from launch import common

# kind -> (default architecture config, converter `fn(state_dict, config) -> state`).
CONVERTERS = {
    "transformer": (
        "configs.specvqgan_transformer_vggsound",
        "avjax.convert.gpt:transformer_from_torch",
    ),
    "melgan": ("configs.melgan_vggsound", "avjax.convert.melgan:melgan_from_torch"),
    "melception": ("configs.melception_vggsound", "avjax.convert.melception:melception_from_torch"),
    "sound2sight": (
        "configs.sound2sight_m3so_nb",
        "avjax.convert.sound2sight:sound2sight_run_state",
    ),
}

flags.DEFINE_enum("kind", None, ["codebook", "vggishish", *CONVERTERS], "what the checkpoint holds")
flags.DEFINE_string("torch", None, "official checkpoint (.pt/.ckpt) or .npz state dict")
flags.DEFINE_string("out", None, "output run directory")
flags.DEFINE_string(
    "official_repo", None, "sound2sight: checkout of the official repository (holds models/)"
)
config_flags.DEFINE_config_file("config", None, "architecture config (default: the paper's)")
flags.mark_flags_as_required(["kind", "torch", "out"])
FLAGS = flags.FLAGS


def load(path: str) -> dict:
    if FLAGS.kind == "sound2sight":
        return torch_io.load_module_checkpoint(path, FLAGS.official_repo)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return torch_io.load_state_dict(path)


def convert_codebook(sd: dict, config) -> dict:
    if config is None:
        key = next((k for k in sd if k.endswith("quantize.embedding.weight")), None)
        if key is None:
            raise ValueError(
                f"{FLAGS.torch}: no quantize.embedding.weight; not a codebook checkpoint"
            )
        n_embed = sd[key].shape[0]
        config = (specvqgan_vas if n_embed == 128 else specvqgan_vggsound).get_config()
        config.model.n_embed = int(n_embed)
    out = vqgan_from_torch(sd, model_from_config(config.model))
    state = {"params": {"ae": out["ae"]}}
    if out["disc"] is not None:
        state["params"]["disc"] = out["disc"]["params"]
        state["batch_stats"] = {"disc": out["disc"]["batch_stats"]}
    if any(k.startswith("loss.perceptual_loss.") for k in sd):
        layers = task_common.conv_layers(config.loss.lpaps_layers)
        state["lpaps"] = lpaps_from_torch(sd, conv_layers=layers)
    return config, state


def main(argv):
    del argv
    sd = load(FLAGS.torch)
    if FLAGS.kind == "codebook":
        config, state = convert_codebook(sd, FLAGS.config)
    elif FLAGS.kind in CONVERTERS:
        config_module, fn = CONVERTERS[FLAGS.kind]
        config = FLAGS.config or importlib.import_module(config_module).get_config()
        module, name = fn.split(":")
        state = getattr(importlib.import_module(module), name)(sd, config)
    else:
        config = FLAGS.config or vggishish_vggsound.get_config()
        m = config.model
        params = vggishish_from_torch(
            sd, task_common.conv_layers(m.conv_layers), num_classes=m.num_classes, hidden=m.hidden
        )
        state = {"params": params}
    out = save_imported(FLAGS.out, config.to_json(indent=2), state)
    print(f"wrote {out} ({FLAGS.kind}, {sum(np.size(x) for x in jax.tree.leaves(state)):,} values)")


if __name__ == "__main__":
    common.run(main)
