"""The programs a GPU or TPU runs lower for it here, on a CPU-only machine.

Accelerator time is scarce, so a program that fails only on a GPU wastes it. Each task
family's train step (the sharded step `launch/train.py` runs, tiny config, the batch
shapes of `abstract_inputs`, the task as `launch/compile_check.py` builds it: MCAV's stage
2 with a stand-in MME) and the accelerator-mode sampler (bfloat16 / int8 weights,
bfloat16 compute and KV cache) are traced once and lowered for CUDA and TPU; the
lowerings must not call avjax's native kernels, which exist for CPU only.
"""

from __future__ import annotations

import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from avjax.checkpoints import abstract_with_shardings
from avjax.models.specvqgan import sampling
from avjax.models.specvqgan.gpt import GPT
from avjax.nn import native
from avjax.train import loop
from avjax.train.tasks import TASKS, make_task
from data_pipelines.inputs import abstract_inputs

PLATFORMS = ("cuda", "tpu")
# One config per task family (the classifier family has two networks).
CONFIGS = {
    "specvqgan_vggsound": "vqgan",
    "specvqgan_transformer_vggsound": "transformer",
    "melgan_vggsound": "melgan",
    "vggishish_vggsound": "classifier",
    "melception_vggsound": "classifier",
    "sound2sight_m3so_nb": "sound2sight",
    "mcav_m3so_nb": "mcav",
}


def _custom_calls(stablehlo: str) -> set[str]:
    return set(re.findall(r"custom_call @(\w+)", stablehlo))


def _assert_accelerator_program(stablehlo: str, platform: str):
    calls = _custom_calls(stablehlo)
    assert not calls & {native.TARGET, native.DECODE_TARGET}, (platform, calls)


def test_every_task_family_is_covered():
    assert set(CONFIGS.values()) == set(TASKS)


@pytest.mark.parametrize("name", [*CONFIGS, "mcav_m3so_nb:refine"])
def test_train_step_lowers_for_gpu_and_tpu(name):
    name, _, stage = name.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config("tiny")
    assert config.task == CONFIGS[name]
    if stage:  # MCAV's stage 2, with the dry run's stand-in MME (no stage-1 run here)
        config.stage = stage
    if config.train.get("steps_per_epoch", 1) is None:  # no dataset to count an epoch's batches
        config.train.steps_per_epoch = 10
    batch, stats = abstract_inputs(config)
    built = loop.build_train_step(config, make_task(config, stats, dry_run=True))
    state = abstract_with_shardings(built.abstract_state, built.state_shardings)
    traced = built.step.trace(state, batch)
    for platform in PLATFORMS:
        lowered = traced.lower(lowering_platforms=(platform,)).as_text()
        assert "func.func public @main" in lowered
        _assert_accelerator_program(lowered, platform)


@pytest.mark.parametrize("weights_dtype", ["float32", "bfloat16", "int8"])
def test_accelerator_sampler_lowers_for_gpu_and_tpu(weights_dtype):
    model = GPT(vocab_size=32, block_size=24, n_layer=2, n_head=2, n_embd=32, feat_dim=8)
    feats = jnp.zeros((1, 4, 8))
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), feats)["params"]
    m, p = sampling.for_inference(model, params, weights_dtype, platform="gpu")
    reduced = weights_dtype != "float32"  # bfloat16 compute and cache on accelerators
    assert (m.dtype == jnp.bfloat16) == reduced and (m.cache_dtype == jnp.bfloat16) == reduced
    traced = sampling.sample.trace(m, p, jax.random.PRNGKey(0), feats, num_tokens=12, top_k=8)
    for platform in PLATFORMS:
        lowered = traced.lower(lowering_platforms=(platform,)).as_text()
        assert "stablehlo.while" in lowered  # the token loop
        _assert_accelerator_program(lowered, platform)
    if weights_dtype == "float32" and native.available():
        # The same trace lowered for CPU attends through the native kernel: the checks
        # above see a program that would carry it on CPU.
        cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
        assert native.DECODE_TARGET in _custom_calls(cpu)
