"""`launch/convert_checkpoint.py`: an official-layout state dict becomes a usable avjax run."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from test_convert_vqgan import random_state_dict, torch_disc_shapes, torch_vqgan_shapes

from avjax.convert.specvqgan import vqgan_from_torch
from avjax.train.checkpoint import restore_params
from avjax.train.tasks.vqgan import model_from_config
from configs import specvqgan_vggsound

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_convert_cli(kind: str, npz: pathlib.Path, out: pathlib.Path, config: str) -> None:
    """`launch/convert_checkpoint.py --kind K --torch NPZ --out OUT --config configs/C`."""
    cmd = [
        sys.executable, "launch/convert_checkpoint.py", "--kind", kind, "--torch", str(npz),
        "--out", str(out), "--config", f"configs/{config}",
    ]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-3000:]


def test_codebook_import_then_codec(tmp_path):
    config = specvqgan_vggsound.get_config("tiny")
    m = config.model
    arch = dict(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), resolution=m.resolution, in_channels=1,
        out_ch=1, z_channels=m.z_channels, embed_dim=m.embed_dim, n_embed=m.n_embed,
        num_groups=m.num_groups,
    )  # fmt: skip
    shapes = torch_vqgan_shapes(arch)
    shapes.update(torch_disc_shapes(config.disc.ndf, config.disc.n_layers))
    sd = random_state_dict(shapes)
    np.savez(tmp_path / "official.npz", **sd)

    out = tmp_path / "imported"
    run_convert_cli("codebook", tmp_path / "official.npz", out, "specvqgan_vggsound.py:tiny")

    expect = vqgan_from_torch(sd, model_from_config(m))
    got = restore_params(out)
    for a, b in zip(jax.tree.leaves(expect["ae"]), jax.tree.leaves(got["ae"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(expect["disc"]["params"]), jax.tree.leaves(got["disc"])):
        np.testing.assert_array_equal(a, b)

    mel = np.random.RandomState(0).uniform(0, 1, (80, 860)).astype(np.float32)
    np.save(tmp_path / "clip_mel.npy", mel)
    cmd = [
        sys.executable,
        "launch/codec.py",
        "--workdir",
        str(out),
        "--input",
        str(tmp_path / "clip_mel.npy"),
        "--out",
        str(tmp_path / "codec"),
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0, r.stderr[-3000:]
    codes = np.load(tmp_path / "codec" / "clip_codes.npy")
    assert codes.shape == (20, 212) and codes.max() < m.n_embed
