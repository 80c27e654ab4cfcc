"""`launch/train.py` as two processes over localhost (4 fake CPU devices each, jax.distributed).

Each tiny run writes a checkpoint and samples at every step; its state after one step is
compared with a one-process run on 8 devices: the global batch is the same examples in the
same order on any process count, so the step's randomness (LPAPS dropout, Sound2Sight's
prior noise and dropout) and its result are the same up to float rounding. One step only:
over many steps Adam's early sign-like updates and the codebook's discrete choices let
rounding grow on any layout. `tests/multihost_harness.py` starts the processes (a
compilation cache only multi-process runs write, raised collective time-outs, a time limit).
"""

from __future__ import annotations

import json
import pathlib

import jax
import multihost_harness
import numpy as np
import pytest

from avjax.runs import load_run

pytestmark = pytest.mark.slow

EVERY_STEP = [
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1",
    "--config.train.sample_every=1",
    "--config.train.eval_every=0",
]
NO_SAMPLES = ["--config.train.sample_every=0"]  # one-process references: only state compared


def _train(num_processes, workdir, config, *flags, config_update=None) -> list[str]:
    """Runs launch/train.py on `num_processes` x (8 / num_processes) devices; their outputs."""
    args = ["--config", config, "--workdir", str(workdir), *EVERY_STEP, *flags]
    results = multihost_harness.run_processes(
        num_processes, 8 // num_processes, args, config_update
    )
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i} of {num_processes}:\n{r.stdout[-6000:]}"
    return [r.stdout for r in results]


def _max_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def _jsonl(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _metrics(workdir, step: int) -> dict:
    """Every scalar logged at `step` (train metrics and evaluators are separate rows)."""
    return {k: v for row in _jsonl(workdir) if row["step"] == step for k, v in row.items()}


def _assert_two_process_run(out: list[str], workdir: pathlib.Path, step: int):
    """Both processes took part (one iterator state each); only process 0 logged progress."""
    data = workdir / "checkpoints" / str(step) / "data"
    assert sorted(p.name for p in data.glob("process_*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert f"step {step}/" in out[0] and "(2 processes)" in out[0]
    assert "step 1/" not in out[1] and "mesh " not in out[1]  # absl INFO off on process 1


def test_codebook_two_processes_match_one_process(tmp_path):
    """Tiny codebook with LPAPS dropout on: 2 processes x 4 devices == 1 x 8 after a step.

    The discriminator starts at step 10 (`:tiny`) but runs forward in step 1 (its BatchNorm
    statistics and logits are compared). Had it trained, Adam's first update, lr * g / (|g| +
    1e-8), would flip sign at a few elements whose gradient is ~0 (measured: 1-6 of
    thousands per kernel, by 2 lr = 1.6e-3), on any two layouts.
    """
    config = "configs/specvqgan_vggsound.py:tiny"
    two, one = tmp_path / "two", tmp_path / "one"
    out = _train(2, two, config, "--config.train.num_steps=1")
    _assert_two_process_run(out, two, 1)
    assert sorted(p.name for p in (two / "samples" / "1").iterdir()) == [
        "0_input_vs_reconstruction.png",
        "0_reconstruction_griffin_lim.wav",
        "1_input_vs_reconstruction.png",
        "2_input_vs_reconstruction.png",
        "3_input_vs_reconstruction.png",
    ]
    _train(1, one, config, "--config.train.num_steps=1", *NO_SAMPLES)
    run = load_run(one, step=1)
    assert run.config.loss.lpaps_dropout == 0.5
    a, b = load_run(two, step=1).state, run.state
    assert _max_diff(a["params"], b["params"]) <= 1e-4
    assert _max_diff(a["batch_stats"], b["batch_stats"]) <= 1e-4
    m2, m1 = _metrics(two, 1), _metrics(one, 1)
    assert m2["train/disc_factor"] == 0.0
    for k in ("train/p_loss", "train/rec_loss", "train/logits_real", "train/logits_fake"):
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)


def _imported_codebook(path: pathlib.Path) -> pathlib.Path:
    """A randomly initialised `:tiny` codebook run (what the tiny transformer's codes need)."""
    from avjax.checkpoints import save_imported
    from avjax.models.specvqgan.vqgan import make_model
    from configs import specvqgan_vggsound

    cb = specvqgan_vggsound.get_config("tiny")
    x = np.zeros((1, cb.data.num_mel_bins, cb.data.crop_frames, 1), np.float32)
    ae = jax.jit(make_model(cb.model).init)(jax.random.PRNGKey(0), x)["params"]
    return save_imported(path, cb.to_json(), {"params": {"ae": ae}})


def test_transformer_two_processes_match_one_process_and_resume(tmp_path):
    """Tiny GPT on the codes of a tiny codebook; samples decoded with it and the eval step
    on every step.

    The two processes then resume to step 2, each from its own data-iterator state.
    """
    codebook = _imported_codebook(tmp_path / "codebook")
    config = "configs/specvqgan_transformer_vggsound.py:tiny"
    flags = [
        f"--config.codebook.workdir={codebook}",
        f"--config.data.codes_dir={tmp_path / 'codes'}",
        "--config.train.num_steps=1",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    evals = ["--config.train.eval_every=1", "--config.train.eval_batches=2"]
    _train(1, one, config, *flags, *evals, *NO_SAMPLES)  # one process first: it extracts codes
    out = _train(2, two, config, *flags, *evals)
    _assert_two_process_run(out, two, 1)
    assert sorted(p.name for p in (two / "samples" / "1").iterdir()) == [
        "0_codebook_real_vs_sample.png",
        "0_sample_griffin_lim.wav",
        "codes.json",
    ]
    a, b = load_run(two, step=1).state, load_run(one, step=1).state
    assert _max_diff(a["params"], b["params"]) <= 1e-4
    np.testing.assert_allclose(_metrics(two, 1)["train/loss"], _metrics(one, 1)["train/loss"], 1e-5)
    evaluated = [k for k in _metrics(one, 1) if k.startswith("eval/")]
    assert evaluated, _metrics(one, 1)
    for k in evaluated:  # the eval step, compiled on both processes before it first runs
        np.testing.assert_allclose(_metrics(two, 1)[k], _metrics(one, 1)[k], 1e-5, err_msg=k)

    # Resumes (its samples left out: step 1 wrote them on two processes already).
    out = _train(2, two, config, *flags[:2], "--config.train.num_steps=2", *NO_SAMPLES)
    assert "resumed from step 1" in out[0]
    _assert_two_process_run(out, two, 2)
    assert sorted({r["step"] for r in _jsonl(two)}) == [1, 2]


def test_sound2sight_two_processes_match_one_process(tmp_path):
    """Tiny Sound2Sight (prior noise, dropout, rolled audio per row) and a `config.evals` eval.

    Adam's eps is raised to 1e-3: the conv biases before a BatchNorm have a zero gradient
    (the norm removes any shift), and the first update, lr * g / (|g| + eps), would turn its
    rounding noise (~1e-9) into +-lr with the default 1e-8, on any two layouts (measured:
    the gradients agreed to 8e-8, such biases differed by 2 lr). With 1e-3 that noise moves
    nothing, and a real difference in the gradients still moves the params by ~lr.
    """
    config = "configs/sound2sight_m3so_nb.py:tiny"
    flags = ["--config.train.num_steps=1", "--config.optim.eps=1e-3"]
    evals = {"evals": {"vp": {"every": 1, "num_samples": 2, "sample_chunk": 2, "max_clips": 4}}}
    two, one = tmp_path / "two", tmp_path / "one"
    out = _train(2, two, config, *flags, config_update=evals)
    _assert_two_process_run(out, two, 1)
    assert (two / "samples" / "1" / "gt_best_samples.gif").is_file()
    _train(1, one, config, *flags, *NO_SAMPLES, config_update=evals)
    a, b = load_run(two, step=1).state, load_run(one, step=1).state
    for part in ("params", "opt_state", "batch_stats"):
        assert _max_diff(a[part], b[part]) <= 1e-4, part
    m2, m1 = _metrics(two, 1), _metrics(one, 1)
    scored = [k for k in m1 if k.startswith("evals/vp/")]
    assert len(scored) == 9 and m1["step"] == m2["step"] == 1
    for k in [*scored, "train/mse", "train/kld", "train/d_loss"]:
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
