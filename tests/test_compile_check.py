"""`launch/compile_check.py` and the config checks it shares with `launch/train.py`.

The dry run compiles the tiny codebook's real train step for 8 fake CPU devices; its
per-device argument bytes are checked against the state and batch counted by hand. The
refusals (batch not divisible, bad `fsdp_min_size`, unknown topology, no libtpu) stop
before anything compiles. `abstract_inputs` (the batch shapes the dry run compiles for)
is compared with the real pipelines' first batch.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from avjax.errors import UserError
from avjax.train import loop
from avjax.train.tasks import make_task
from avjax.train.validate import check_config
from configs import specvqgan_vggsound
from data_pipelines.inputs import abstract_inputs, make_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/specvqgan_vggsound.py:tiny"
CONFIGS = sorted(
    f[:-3]
    for f in os.listdir(os.path.join(REPO, "configs"))
    if f.endswith(".py") and f != "common.py"
)


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        **(env or {}),
    }
    cmd = [sys.executable, os.path.join(REPO, "launch", "compile_check.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def _bytes(stdout: str, row: str) -> int:
    return int(re.search(rf"{re.escape(row)} .*\((-?[\d,]+) bytes\)", stdout)[1].replace(",", ""))


@pytest.mark.parametrize("name", CONFIGS)
def test_fsdp_min_size_is_settable_in_every_config(name, monkeypatch):
    argv = ["prog", f"--config=configs/{name}.py", "--config.train.fsdp_min_size=1024"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv(argv)
    assert fv.config.train.fsdp_min_size == 1024
    with pytest.raises(UserError, match=r"config\.train\.fsdp_min_size=-1: must be >= 0"):
        cfg = ml_collections.ConfigDict(fv.config.to_dict())
        cfg.train.fsdp_min_size = -1
        check_config(cfg, num_devices=8)


class _Vector:
    """A state of one 4096-vector and one 64-vector: w <- w + mean(x)."""

    def init(self, rng):
        return {"big": jnp.zeros((4096,)), "small": jnp.zeros((64,))}

    def train_step(self, state, batch):
        return jax.tree.map(lambda w: w + jnp.mean(batch["x"]), state), {}


def test_build_train_step_shards_what_fsdp_min_size_says():
    config = ml_collections.ConfigDict(
        {"seed": 0, "mesh": (("data", 2), ("fsdp", 4)), "train": {"fsdp_min_size": 1024}}
    )
    built = loop.build_train_step(config, _Vector())
    specs = {k: tuple(s.spec) for k, s in built.state_shardings.items()}
    assert specs == {"big": ("fsdp",), "small": ()}  # 4096 >= 1024 > 64
    config.train.fsdp_min_size = 2**18
    built = loop.build_train_step(config, _Vector())
    assert tuple(built.state_shardings["big"].spec) == ()
    assert dict(built.mesh.shape) == {"data": 2, "fsdp": 4}


@pytest.mark.parametrize(
    "name",
    [
        "specvqgan_vggsound",
        "melgan_vggsound",
        "sound2sight_m3so_nb",
        "sound2sight_drums",
        "mcav_m3so_nb",
    ],
)
def test_abstract_inputs_match_the_pipelines(name):
    config = importlib.import_module(f"configs.{name}").get_config("tiny")
    batch, stats = abstract_inputs(config)
    inputs = make_inputs(config)
    real = next(inputs.train_iter)  # one process: the local batch is the global one
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        k: (np.shape(v), np.asarray(v).dtype) for k, v in real.items()
    }
    for k, v in stats.items():
        if k in inputs.stats:
            assert np.shape(v) == np.shape(inputs.stats[k]), k


@pytest.fixture(scope="module")
def dry_run():
    """The tiny codebook on cpu:8 with a 0.01 GiB limit: numbers printed, then refused."""
    return _cli("--config", TINY, "--topology", "cpu:8", "--hbm_gib=0.01")


@pytest.mark.slow  # 50 s with a cold compilation cache on the 2-core machine
def test_compile_check_cpu8_prints_memory_and_refuses_what_does_not_fit(dry_run):
    out, err = dry_run.stdout, dry_run.stderr
    assert dry_run.returncode == 1, err[-3000:]
    assert "8 cpu devices (data=8 x fsdp=1)" in out
    # By hand: fsdp=1 replicates the whole state on each device; the batch is split 8 ways.
    config = specvqgan_vggsound.get_config("tiny")
    batch, stats = abstract_inputs(config)
    state = jax.eval_shape(make_task(config, stats).init, jax.random.PRNGKey(0))
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    # The codebook step never reads the labels, and jit drops unused arguments.
    batch_bytes = batch["image"].size * 4 // 8
    assert _bytes(out, "arguments (state + batch)") == state_bytes + batch_bytes
    assert _bytes(out, "aliased (donated state)") == -state_bytes  # donated, reused in place
    total = _bytes(out, "total")
    assert total > state_bytes
    flops = float(re.search(r"FLOPs per step +([\d.e+]+)", out)[1])
    assert 1e8 < flops < 1e11
    last = err.strip().splitlines()[-1]
    assert last == (
        f"error: the step needs {total / 2**30:.2f} GiB per device, more than the 0 GiB of a "
        "cpu: lower config.data.global_batch_size, use config.dtype=bfloat16, or shard the "
        "parameters (config.mesh fsdp > 1)"
    )


REFUSALS = {  # argv after the config -> the error line's text
    "batch": (
        ["--config.data.global_batch_size=6"],
        "error: config.data.global_batch_size=6 is not divisible by the 8 devices",
    ),
    "fsdp_min_size": (["--config.train.fsdp_min_size=-1"], "config.train.fsdp_min_size=-1"),
    "topology": (["--topology=v7-8"], "expected cpu:N, local, or a TPU slice"),
    "libtpu": (["--topology=v5e-8x8"], "pip install libtpu"),
}


def test_compile_check_refusals_name_the_field():
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    cases = {k: v for k, v in REFUSALS.items() if not (k == "libtpu" and has_libtpu)}

    def run(name):
        return name, _cli("--config", TINY, "--topology=cpu:8", *cases[name][0])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, cases))
    for name, proc in results.items():
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and last.startswith("error: "), (name, proc.stderr[-2000:])
        assert cases[name][1] in last, (name, last)
        assert "compiling" not in proc.stdout, name  # refused before any compile
