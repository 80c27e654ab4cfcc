"""`launch/convert_checkpoint.py`: an official-layout state dict becomes a usable avjax run."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torchfiles
from test_convert_vqgan import random_state_dict, torch_disc_shapes, torch_vqgan_shapes

from avjax.convert.specvqgan import vqgan_from_torch
from avjax.models.specvqgan.vqgan import make_model
from avjax.runs import load_run
from configs import specvqgan_transformer_vggsound, specvqgan_vggsound, vggishish_vggsound

REPO = pathlib.Path(__file__).resolve().parents[1]


def convert_cli(*args: str) -> subprocess.CompletedProcess:
    """`launch/convert_checkpoint.py ARGS` in a subprocess (exit status and output kept)."""
    cmd = [sys.executable, "launch/convert_checkpoint.py", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())


def run_convert_cli(kind: str, npz: pathlib.Path, out: pathlib.Path, config: str, *more) -> str:
    """`launch/convert_checkpoint.py --kind K --torch NPZ --out OUT --config configs/C`."""
    r = convert_cli(
        "--kind", kind, "--torch", npz, "--out", out, "--config", f"configs/{config}", *more
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def tiny_codebook_state_dict(disc: bool = True, seed: int = 0) -> dict:
    """The tiny codebook config's `VQModel` (+ discriminator) in the official key layout."""
    m = specvqgan_vggsound.get_config("tiny").model
    arch = dict(
        ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions), resolution=m.resolution, in_channels=1,
        out_ch=1, z_channels=m.z_channels, embed_dim=m.embed_dim, n_embed=m.n_embed,
        num_groups=m.num_groups,
    )  # fmt: skip
    shapes = torch_vqgan_shapes(arch)
    if disc:
        d = specvqgan_vggsound.get_config("tiny").disc
        shapes.update(torch_disc_shapes(d.ndf, d.n_layers))
    return random_state_dict(shapes, seed)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) and len(la) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a refused conversion (exit status 1, no traceback)."""
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
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

    expect = vqgan_from_torch(sd, make_model(m))
    got = load_run(out).params
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
    report = json.loads((tmp_path / "codec" / "clip_report.json").read_text())
    codes = np.load(tmp_path / "codec" / "clip_codes.npy")
    assert codes.shape == tuple(report["codes_shape"]) == (20, 212)  # tiny: 80x848 / 4
    assert codes.min() >= 0 and codes.max() < m.n_embed
    assert 0.0 < report["mel_l1"] < 1.0 and report["bitrate_bps"] > 0
    assert (tmp_path / "codec" / "clip_reconstruction.wav").stat().st_size > 1000
    assert (tmp_path / "codec" / "clip_mel.png").stat().st_size > 1000


# --- official file shapes: Lightning .ckpt, {"model", "metrics"} .pt, transformers ------------


def _lightning(sd, cls) -> dict:
    """pytorch-lightning 1.x: `callbacks` keyed by the callback class, optimizer states."""
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.2.10",
        "state_dict": {k: torchfiles.tensor(v) for k, v in sd.items()},
        "callbacks": {cls["ModelCheckpoint"]: {"best_model_score": torchfiles.tensor(np.ones(()))}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]}],
        "lr_schedulers": [],
    }


CALLBACK = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


def test_lightning_codebook_ckpt_converts(tmp_path):
    sd = tiny_codebook_state_dict()
    with torchfiles.fake_globals(CALLBACK) as cls:
        torchfiles.save_zip(_lightning(sd, cls), tmp_path / "codebook.ckpt")
    out = tmp_path / "codebook"
    stdout = run_convert_cli(
        "codebook", tmp_path / "codebook.ckpt", out, "specvqgan_vggsound.py:tiny"
    )
    assert stdout.startswith(f"wrote {out} (codebook, ")
    expect = vqgan_from_torch(sd, make_model(specvqgan_vggsound.get_config("tiny").model))
    got = load_run(out).params
    assert_trees_equal(expect["ae"], got["ae"])
    assert_trees_equal(expect["disc"]["params"], got["disc"])


def test_vggishish_pt_with_numpy_metrics_converts(tmp_path):
    from test_classifiers import random_torch_sd

    from avjax.convert.vggishish import vggishish_from_torch
    from avjax.models.specvqgan.classifiers import conv_layers

    m = vggishish_vggsound.get_config("tiny").model
    arch = dict(conv_layers=conv_layers(m.conv_layers), num_classes=m.num_classes, hidden=m.hidden)
    sd = random_torch_sd(np.random.default_rng(0), pool_size=(5, 10), **arch)
    with torchfiles.fake_globals():
        obj = {
            "model": {k: torchfiles.tensor(v) for k, v in sd.items()},
            "metrics": {"valid": {"accuracy": np.float64(0.44), "mAP": np.float64(0.47)}},
        }
        torchfiles.save_zip(obj, tmp_path / "vggishish16.pt")
    out = tmp_path / "vggishish"
    run_convert_cli("vggishish", tmp_path / "vggishish16.pt", out, "vggishish_vggsound.py:tiny")
    assert_trees_equal(vggishish_from_torch(sd, **arch), load_run(out).params)


@pytest.fixture(scope="module")
def transformer_ckpt(tmp_path_factory):
    """A Lightning `Net2NetTransformer` .ckpt of the tiny configs (legacy format)."""
    from test_gpt import _official_state_dict

    c = specvqgan_transformer_vggsound.get_config("tiny").model
    sd = _official_state_dict(
        np.random.default_rng(1), c.n_layer, c.n_embd, c.vocab_size, c.block_size, c.feat_dim
    )
    del sd["first_stage_model.quantize.embedding.weight"]
    codebook = tiny_codebook_state_dict(disc=False, seed=2)  # DummyLoss: no loss.* keys
    sd.update({f"first_stage_model.{k}": v for k, v in codebook.items()})
    path = tmp_path_factory.mktemp("transformer") / "transformer.ckpt"
    with torchfiles.fake_globals(CALLBACK) as cls:
        torchfiles.save_legacy(_lightning(sd, cls), path)
    return path, sd, codebook


def test_transformer_ckpt_gives_transformer_and_codebook_runs(transformer_ckpt, tmp_path):
    from avjax.convert.gpt import transformer_from_torch

    path, sd, codebook = transformer_ckpt
    out = tmp_path / "transformer"
    stdout = run_convert_cli(
        "transformer", path, out, "specvqgan_transformer_vggsound.py:tiny",
        "--codebook_config", "configs/specvqgan_vggsound.py:tiny",
    )  # fmt: skip
    cb_out = tmp_path / "transformer_codebook"
    assert stdout.splitlines()[0].startswith(f"wrote {cb_out} (codebook from first_stage_model.*")
    assert stdout.splitlines()[1].startswith(f"wrote {out} (transformer, ")
    assert f"config.codebook.workdir = {cb_out}" in stdout.splitlines()[1]
    config = json.loads((out / "config.json").read_text())
    assert config["codebook"]["workdir"] == str(cb_out)
    t_config = specvqgan_transformer_vggsound.get_config("tiny")
    assert_trees_equal(transformer_from_torch(sd, t_config)["params"], load_run(out).params)
    m = specvqgan_vggsound.get_config("tiny").model
    assert_trees_equal(
        vqgan_from_torch(codebook, make_model(m))["ae"], load_run(cb_out).params["ae"]
    )


def test_codebook_out_of_a_transformer_ckpt(transformer_ckpt, tmp_path):
    path, _, codebook = transformer_ckpt
    out = tmp_path / "codebook"
    stdout = run_convert_cli("codebook", path, out, "specvqgan_vggsound.py:tiny")
    assert stdout.startswith(f"wrote {out} (codebook from first_stage_model.*, ")
    m = specvqgan_vggsound.get_config("tiny").model
    got = load_run(out).params
    assert_trees_equal(vqgan_from_torch(codebook, make_model(m))["ae"], got["ae"])
    assert "disc" not in got


def test_user_mistakes_end_as_one_error_line(tmp_path):
    """A hostile pickle, an object-array numpy file, a missing file, the wrong --kind."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with torchfiles.fake_globals():
        torchfiles.save_zip(
            {"state_dict": {"w": torchfiles.tensor(np.ones(2))}, "x": Evil()}, tmp_path / "evil.pth"
        )
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "codebook.npz", **tiny_codebook_state_dict())
    cases = {
        "sound2sight evil.pth": (
            ("--kind", "sound2sight", "--torch", tmp_path / "evil.pth"),
            f"error: {tmp_path / 'evil.pth'}: refused global 'posix.system'",
        ),
        "codebook evil.pth": (
            ("--kind", "codebook", "--torch", tmp_path / "evil.pth"),
            f"error: {tmp_path / 'evil.pth'}: refused global 'posix.system'",
        ),
        "objects.npy": (
            ("--kind", "codebook", "--torch", tmp_path / "objects.npy"),
            f"error: {tmp_path / 'objects.npy'}: holds Python objects",
        ),
        "missing": (
            ("--kind", "melgan", "--torch", tmp_path / "gone.pt"),
            f"error: checkpoint {tmp_path / 'gone.pt'} does not exist",
        ),
        "wrong kind": (
            ("--kind", "transformer", "--torch", tmp_path / "codebook.npz"),
            f"error: {tmp_path / 'codebook.npz'} holds a codebook checkpoint, not a transformer",
        ),
    }
    for name, (args, start) in cases.items():
        line = one_error_line(convert_cli(*args, "--out", tmp_path / "out"))
        assert line.startswith(start), (name, line)
        assert "allow_pickle=True" not in line
    assert not marker.exists() and not (tmp_path / "out").exists()
