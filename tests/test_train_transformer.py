"""The SpecVQGAN transformer trainer: loss on code positions only, a `:tiny` run through the
generic loop (checkpointed, resumable input), samples, and sharded == single-device steps."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avjax.runs import load_run
from avjax.train import loop
from avjax.train import sharding as shd
from avjax.train.tasks import make_task
from avjax.train.tasks.transformer import TransformerTask
from configs import specvqgan_transformer_vggsound

GRID = (5, 8)  # 40 codes per clip keeps the test small
NUM_FEATS, FEAT_DIM = 5, 16


def tiny_config(**train):
    c = specvqgan_transformer_vggsound.get_config("tiny")
    c.model.feat_dim = FEAT_DIM
    c.model.block_size = NUM_FEATS + GRID[0] * GRID[1]
    c.data.feat_sample_size = NUM_FEATS
    c.optim.base_lr = 5e-4  # x batch 8
    for k, v in train.items():
        c.train[k] = v
    return c


class _Clips:
    """Synthetic clips whose codes are a function of the features (so they are learnable)."""

    def __init__(self, n, vocab, seed):
        rng = np.random.default_rng(seed)
        self.feats = rng.standard_normal((n, NUM_FEATS, FEAT_DIM)).astype(np.float32)
        base = (np.abs(self.feats[:, 0, :4]).sum(-1) * 7).astype(np.int32) % vocab
        self.codes = ((base[:, None] + np.arange(GRID[0] * GRID[1])) % vocab).astype(np.int32)
        self.labels = rng.integers(0, 3, n).astype(np.int32)

    def __len__(self):
        return len(self.codes)

    def __getitem__(self, i):
        return {"codes": self.codes[i], "feats": self.feats[i], "label": self.labels[i]}


def _iterators(config):
    vocab = config.model.vocab_size
    gb = config.data.global_batch_size
    train = grain.MapDataset.source(_Clips(32, vocab, 0)).seed(0).shuffle().repeat()
    train_iter = iter(train.to_iter_dataset().batch(gb, drop_remainder=True))

    def eval_iter():
        ds = grain.MapDataset.source(_Clips(16, vocab, 1)).map(
            lambda x: {**x, "mask": np.float32(1.0)}
        )
        return iter(ds.to_iter_dataset().batch(gb, drop_remainder=True))

    return train_iter, eval_iter


def _task(config):
    return make_task(config, {"codes_grid": np.array(GRID)})


def test_tiny_run_learns_resumes_and_writes_samples(tmp_path):
    c = tiny_config(num_steps=12, log_every=1, eval_every=12, sample_every=12)
    train_iter, eval_iter = _iterators(c)
    task = _task(c)
    assert isinstance(task, TransformerTask) and task.num_tokens == 40
    last = loop.train(c, tmp_path / "run", task, train_iter, eval_iter)
    assert last["step"] == 12
    losses = [float(x) for x in _jsonl(tmp_path / "run", "train/loss")]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses
    np.testing.assert_allclose(last["train/perplexity"], np.exp(last["train/loss"]), rtol=1e-4)
    assert 0 <= last["eval/accuracy"] <= 1 and np.isfinite(last["eval/loss"])
    # No codebook configured: the samples are written as code maps.
    assert (tmp_path / "run" / "samples" / "12" / "0_codes_real_vs_sample.png").is_file()
    # Resume: a longer run continues from the checkpoint at step 12.
    c2 = tiny_config(num_steps=14, log_every=1, eval_every=0, sample_every=0)
    train_iter, _ = _iterators(c2)
    assert loop.train(c2, tmp_path / "run", _task(c2), train_iter)["step"] == 14
    params = load_run(tmp_path / "run").params
    assert params["pos_emb"].shape == (c.model.block_size, c.model.n_embd)


def _jsonl(workdir, key):
    import json

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_loss_is_on_code_positions_only():
    c = tiny_config()
    task = _task(c)
    state = jax.jit(task.init)(jax.random.PRNGKey(0))
    clips = _Clips(8, c.model.vocab_size, 2)
    batch = {"codes": clips.codes, "feats": clips.feats, "label": clips.labels}
    metrics = jax.jit(task.eval_step)(state, batch)
    logits = task.model.apply({"params": state["params"]}, clips.codes[:, :-1], clips.feats)
    logits = logits[:, NUM_FEATS - 1 :]  # output Tc - 1 + i predicts code i
    want = optax.softmax_cross_entropy_with_integer_labels(logits, clips.codes).mean()
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    # Padding (mask 0) does not count.
    masked = {**batch, "mask": np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)}
    half = {k: v[:4] for k, v in batch.items()}
    np.testing.assert_allclose(
        jax.jit(task.eval_step)(state, masked)["loss"],
        jax.jit(task.eval_step)(state, half)["loss"],
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="block_size"):
        TransformerTask.from_config(tiny_config(), {"codes_grid": np.array([5, 53])})


def _run_step(task, mesh, batch, min_size):
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    state_sh = shd.state_shardings(abstract, mesh, min_size=min_size)
    state = jax.jit(task.init, out_shardings=state_sh)(jax.random.PRNGKey(0))
    step = jax.jit(
        task.train_step,
        in_shardings=(state_sh, shd.batch_sharding(mesh)),
        out_shardings=(state_sh, shd.replicated(mesh)),
    )
    state, metrics = step(state, shd.global_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics), state_sh


def test_sharded_step_equals_single_device():
    """A (data 4, fsdp 2) step equals the 1-device step (params FSDP-sharded)."""
    assert jax.device_count() == 8
    c = tiny_config()
    c.model.n_embd = 64  # kernels of >= 1024 elements get sharded at min_size 2**10
    c.model.n_head = 4
    # Adam's first update is ~lr * sign(g): gradients that are ~0 flip sign on reduction-order
    # noise. A larger eps keeps the update proportional to g there (as test_train_vqgan does).
    c.optim.eps = 1e-3
    task = _task(c)
    clips = _Clips(8, c.model.vocab_size, 3)
    batch = {"codes": clips.codes, "feats": clips.feats, "label": clips.labels}
    one = shd.make_mesh([("data", -1)], devices=jax.devices()[:1])
    eight = shd.make_mesh([("data", 4), ("fsdp", 2)])
    s1, m1, _ = _run_step(task, one, batch, 2**18)
    s8, m8, sh8 = _run_step(task, eight, batch, 2**10)
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(sh8))
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-6, err_msg=k)
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), s1["params"], s8["params"])
    assert max(jax.tree.leaves(diffs)) < 1e-6, diffs
    # AdamW decays only the Linear kernels: with zero gradients nothing else would move.
    assert int(s8["step"]) == 1 and jnp.isfinite(m8["grad_norm"])
