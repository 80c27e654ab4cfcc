"""Imports official SpecVQGAN / Sound2Sight PyTorch weights as an avjax run directory.

  python launch/convert_checkpoint.py --kind codebook --torch vggsound_codebook.ckpt --out W
  python launch/convert_checkpoint.py --kind codebook --torch vggsound_transformer.ckpt --out W
  python launch/convert_checkpoint.py --kind vggishish --torch vggishish16.pt --out W
  python launch/convert_checkpoint.py --kind transformer --torch vggsound_transformer.ckpt \
      --out W [--codebook_out W_codebook]
  python launch/convert_checkpoint.py --kind melgan --torch melgan_vggsound.pt --out W
  python launch/convert_checkpoint.py --kind melception --torch melception.pt --out W
  python launch/convert_checkpoint.py --kind sound2sight --torch model.pth --out W \
      [--config configs/sound2sight_m3so_nb.py]

--torch reads `.pt`/`.pth`/`.ckpt` files (the zip format of torch >= 1.6 and the older
legacy one) or a numpy `.npz` of the same state dict, with neither PyTorch nor the
official code installed: the reader (`avjax/convert/torch_pickle.py`) resolves only
tensor, container, numpy-scalar and model-class names and never runs code from the file;
anything else is refused with the file and the name it asked for. Lightning `.ckpt` files
(callbacks, optimizer states and hyper-parameters are ignored) and `{"model": ...,
"metrics": ...}` files (`vggishish16.pt`, `melception-*.pt`) are unwrapped.

The codebook architecture defaults to the paper's (VGGSound or VAS, from the codebook
size); pass --config for another. `--kind codebook` also takes the codebook out of a
transformer checkpoint (its `first_stage_model.*` keys). `--kind transformer` writes two
runs: the transformer to W and the codebook it contains to --codebook_out (default
`W_codebook`, architecture from --codebook_config or the paper's), and W's
`config.codebook.workdir` names that codebook run. W then works with `launch/codec.py`
(codebook), `launch/sample.py` / `launch/evaluate.py` (transformer) or as
`--config.loss.lpaps_backbone=W` (vggishish).

Sound2Sight's `model.pth` pickles whole modules plus `opt`; their classes are read as inert
placeholders, so the official repository is not needed (`--official_repo` is accepted
and ignored). The config defaults to M3SO-NB; pass the drums / painting one for 64 px
checkpoints. W holds a whole train state at step 0 (fresh Adam moments: the file has no
optimizer state): `launch/evaluate.py --workdir W --data_dir D` evaluates it, and
`launch/train.py --config C --workdir W` resumes training from it (the data order starts
afresh).

A missing or unreadable file, a refused global, or a file of another kind ends as one
`error: ...` line with exit status 1.
"""

import dataclasses
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import importlib
from collections.abc import Callable

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from avjax.checkpoints import save_imported
from avjax.convert import torch_io
from avjax.convert.gpt import transformer_from_torch
from avjax.convert.melception import melception_from_torch
from avjax.convert.melgan import melgan_from_torch
from avjax.convert.specvqgan import vqgan_from_torch
from avjax.convert.vggishish import lpaps_from_torch, vggishish_from_torch
from avjax.errors import UserError
from avjax.models.specvqgan import vqgan
from avjax.models.specvqgan.classifiers import conv_layers
from avjax.train.tasks import sound2sight as sound2sight_task
from configs import (
    melception_vggsound,
    melgan_vggsound,
    sound2sight_m3so_nb,
    specvqgan_vas,
    specvqgan_vggsound,
    vggishish_vggsound,
)
from launch import common

FIRST_STAGE = "first_stage_model."
# Transformer checkpoint keys that carry nothing to convert: the permuters' index buffers
# and each attention layer's causal-mask buffer (both rebuilt from the config).
NOT_WEIGHTS = ("first_stage_permuter.", "cond_stage_permuter.")


@dataclasses.dataclass(frozen=True)
class Output:
    """One run to write: `wrote OUT (WHAT, N values[; NOTE])`."""

    out: pathlib.Path
    config: object  # ConfigDict
    state: dict
    what: str
    note: str = ""


def kind_of(sd: dict) -> str | None:
    """Which kind of official checkpoint the keys look like (None: unknown)."""
    keys = list(sd)
    if any(k.startswith("transformer.") or k == "tok_emb.weight" for k in keys):
        return "transformer"
    if any(k.endswith("quantize.embedding.weight") for k in keys):
        return "codebook"
    if any(k.startswith("Conv2d_1a_3x3.") for k in keys):
        return "melception"
    if any(k.startswith("frame_predictor.") for k in keys):
        return "sound2sight"
    if any(k.endswith(".weight_g") for k in keys):
        return "melgan"
    if any(k.startswith("features.0.") for k in keys) and any("classifier." in k for k in keys):
        return "vggishish"
    return None


def from_transformer(sd: dict) -> bool:
    """A transformer checkpoint, whose codebook is under `first_stage_model.`."""
    has_codebook = any(k.startswith("quantize.") for k in sd)
    return not has_codebook and any(k.startswith(FIRST_STAGE) for k in sd)


def codebook_state(sd: dict, config, source: str) -> tuple:
    """Codebook (+ discriminator, + LPAPS when present) of a VQModel state dict."""
    if from_transformer(sd):
        sd = {k[len(FIRST_STAGE) :]: v for k, v in sd.items() if k.startswith(FIRST_STAGE)}
        source = f"{source} (its {FIRST_STAGE}*)"
    if config is None:
        emb = sd.get("quantize.embedding.weight")
        if emb is None:
            raise UserError(f"{source}: no quantize.embedding.weight; not a codebook checkpoint")
        config = (specvqgan_vas if emb.shape[0] == 128 else specvqgan_vggsound).get_config()
        config.model.n_embed = int(emb.shape[0])
    out = vqgan_from_torch(sd, vqgan.make_model(config.model))
    state = {"params": {"ae": out["ae"]}}
    if out["disc"] is not None:
        state["params"]["disc"] = out["disc"]["params"]
        state["batch_stats"] = {"disc": out["disc"]["batch_stats"]}
    if any(k.startswith("loss.perceptual_loss.") for k in sd):
        state["lpaps"] = lpaps_from_torch(sd, conv_layers=conv_layers(config.loss.lpaps_layers))
    return config, state


def convert_codebook(sd: dict) -> list[Output]:
    config, state = codebook_state(sd, FLAGS.config, FLAGS.torch)
    what = f"codebook from {FIRST_STAGE}*" if from_transformer(sd) else "codebook"
    return [Output(pathlib.Path(FLAGS.out), config, state, what)]


def transformer_config(sd: dict):
    """The paper's transformer config for this vocabulary (VAS: 128 codes), or --config."""
    if FLAGS.config is not None:
        return FLAGS.config
    emb = sd.get("transformer.tok_emb.weight", sd.get("tok_emb.weight"))
    vas = emb is not None and emb.shape[0] == 128
    name = "specvqgan_transformer_vas" if vas else "specvqgan_transformer_vggsound"
    return importlib.import_module(f"configs.{name}").get_config()


def convert_transformer(sd: dict) -> list[Output]:
    """The codebook run (to --codebook_out) when the file has one, then the transformer run."""
    prefixed = any(k.startswith("transformer.") for k in sd)
    leftover = sorted(
        k
        for k in sd
        if not k.startswith((FIRST_STAGE, *NOT_WEIGHTS))
        and not k.endswith("attn.mask")
        and prefixed
        and not k.startswith("transformer.")
    )
    if leftover:
        more = "..." if len(leftover) > 6 else ""
        raise UserError(
            f"{FLAGS.torch}: keys outside transformer.* / {FIRST_STAGE}* that no converter "
            f"takes ({len(leftover)}): {', '.join(leftover[:6])}{more}"
        )
    config = transformer_config(sd)
    state = transformer_from_torch(sd, config)
    if not any(k.startswith(FIRST_STAGE) for k in sd):
        note = f"no {FIRST_STAGE}* keys, so no codebook run: set config.codebook.workdir"
        return [Output(pathlib.Path(FLAGS.out), config, state, "transformer", note)]
    codebook_dir = pathlib.Path(FLAGS.codebook_out or f"{FLAGS.out.rstrip('/')}_codebook")
    codebook_dir = codebook_dir.absolute()  # as save_imported writes it
    cb_config, cb_state = codebook_state(sd, FLAGS.codebook_config, FLAGS.torch)
    config.codebook.workdir = str(codebook_dir)
    note = f"config.codebook.workdir = {codebook_dir}"
    return [
        Output(codebook_dir, cb_config, cb_state, f"codebook from {FIRST_STAGE}*"),
        Output(pathlib.Path(FLAGS.out), config, state, "transformer", note),
    ]


def convert_vggishish(sd: dict) -> list[Output]:
    config = FLAGS.config or vggishish_vggsound.get_config()
    m = config.model
    params = vggishish_from_torch(
        sd, conv_layers(m.conv_layers), num_classes=m.num_classes, hidden=m.hidden
    )
    return [Output(pathlib.Path(FLAGS.out), config, {"params": params}, "vggishish")]


def simple(kind: str, default_config, fn: Callable) -> Callable[[dict], list[Output]]:
    """A converter `fn(state_dict, config) -> state` with `default_config` unless --config."""

    def convert(sd: dict) -> list[Output]:
        config = FLAGS.config or default_config.get_config()
        return [Output(pathlib.Path(FLAGS.out), config, fn(sd, config), kind)]

    return convert


# --kind -> (reader of the --torch file, converter `state dict -> runs to write, in order`).
CONVERTERS: dict[str, tuple[Callable[[str], dict], Callable[[dict], list[Output]]]] = {
    "codebook": (torch_io.load_state_dict, convert_codebook),
    "vggishish": (torch_io.load_state_dict, convert_vggishish),
    "transformer": (torch_io.load_state_dict, convert_transformer),
    "melgan": (torch_io.load_state_dict, simple("melgan", melgan_vggsound, melgan_from_torch)),
    "melception": (
        torch_io.load_state_dict,
        simple("melception", melception_vggsound, melception_from_torch),
    ),
    "sound2sight": (
        torch_io.load_module_checkpoint,  # whole pickled modules, read as placeholders
        simple("sound2sight", sound2sight_m3so_nb, sound2sight_task.state_from_torch),
    ),
}

flags.DEFINE_enum("kind", None, list(CONVERTERS), "what the checkpoint holds")
flags.DEFINE_string("torch", None, "official checkpoint (.pt/.pth/.ckpt) or .npz state dict")
flags.DEFINE_string("out", None, "output run directory")
flags.DEFINE_string(
    "codebook_out", None, "transformer: where its codebook run goes (default: <out>_codebook)"
)
flags.DEFINE_string(
    "official_repo", None, "no longer needed (model.pth is read without the official code); ignored"
)
config_flags.DEFINE_config_file("config", None, "architecture config (default: the paper's)")
config_flags.DEFINE_config_file(
    "codebook_config", None, "transformer: the codebook's architecture config (default: paper's)"
)
flags.mark_flags_as_required(["kind", "torch", "out"])
FLAGS = flags.FLAGS


def count(state) -> int:
    return sum(np.size(x) for x in jax.tree.leaves(state))


def main(argv):
    del argv
    common.setup_jax()  # also quiets Orbax's per-checkpoint INFO lines
    read, convert = CONVERTERS[FLAGS.kind]
    sd = read(FLAGS.torch)
    found = kind_of(sd)
    if found not in (None, FLAGS.kind) and not (
        FLAGS.kind == "codebook" and found == "transformer"
    ):
        raise UserError(
            f"{FLAGS.torch} holds a {found} checkpoint, not a {FLAGS.kind} one: pass --kind {found}"
        )
    try:
        outputs = convert(sd)
    except UserError:
        raise
    except ValueError as e:  # the converters' key / shape mismatch reports
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        text = "; ".join(lines)
        raise UserError(
            f"{FLAGS.torch} does not fit --kind {FLAGS.kind} with this config: "
            f"{text[:600]}{'...' if len(text) > 600 else ''}"
        ) from e
    for o in outputs:
        out = save_imported(o.out, o.config.to_json(indent=2), o.state)
        note = f"; {o.note}" if o.note else ""
        print(f"wrote {out} ({o.what}, {count(o.state):,} values{note})")


if __name__ == "__main__":
    common.run(main)
