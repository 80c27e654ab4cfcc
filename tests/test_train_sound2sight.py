"""Sound2Sight trainer: sharded == single-device step, schedule, quirk switch, CLIs end to end."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avjax.images import frames01
from avjax.train import sharding as shd
from avjax.train.tasks.sound2sight import LossConfig, Sound2SightTask
from configs import sound2sight_m3so_nb

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config():
    c = sound2sight_m3so_nb.get_config("tiny")
    c.data.n_past, c.data.n_future = 2, 4  # T = 6: 3 discriminator windows
    c.train.steps_per_epoch = 1  # adversarial terms on from the second step
    # Adam's first update is ~lr * sign(g): a larger eps keeps it proportional to g, so
    # near-zero gradients that differ in the last bits do not flip whole updates.
    c.optim.eps = 1e-3
    return c


def _batch(c, seed=0, n=8):
    rs = np.random.RandomState(seed)
    t = c.data.n_past + c.data.n_future
    return {
        "frames": rs.randint(0, 256, (n, t, 48, 48, 1)).astype(np.uint8),
        "audio": rs.uniform(0, 1, (n, t, 23, 21)).astype(np.float32),
        "block": np.zeros((n, 4), np.int32),
    }


@pytest.fixture(scope="module")
def task():
    return Sound2SightTask.from_config(tiny_config())


def _run_steps(task, mesh, batches, min_size):
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    state_sh = shd.state_shardings(abstract, mesh, min_size=min_size)
    state = jax.jit(task.init, out_shardings=state_sh)(jax.random.PRNGKey(0))
    step = jax.jit(
        task.train_step,
        in_shardings=(state_sh, shd.batch_sharding(mesh)),
        out_shardings=(state_sh, shd.replicated(mesh)),
    )
    metrics = []
    for b in batches:
        state, m = step(state, shd.global_batch(b, mesh))
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, state_sh


@pytest.mark.slow
def test_sharded_step_equals_single_device(task):
    """Two full steps (G + D; adversarial terms on in the second), data 4 x fsdp 2 == 1 device."""
    assert jax.device_count() == 8
    c = tiny_config()
    batches = [_batch(c, 0), _batch(c, 1)]
    one = shd.make_mesh([("data", -1)], devices=jax.devices()[:1])
    eight = shd.make_mesh([("data", 4), ("fsdp", 2)])
    s1, m1, _ = _run_steps(task, one, batches, min_size=2**18)
    s8, m8, sh8 = _run_steps(task, eight, batches, min_size=2**10)
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(sh8))  # FSDP really shards
    assert m1[0]["adv_weight"] == 0.0 and m1[1]["adv_weight"] == pytest.approx(1e-4)
    for a, b in zip(m1, m8):
        assert all(np.isfinite(v) for v in a.values())
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)
    for part in ("params", "batch_stats", "opt_state"):
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), s1[part], s8[part])
        assert max(jax.tree.leaves(diffs)) < 1e-4, (part, diffs)
    # Both optimizers moved their parameters; the loss is the documented sum.
    s0 = jax.device_get(jax.jit(task.init)(jax.random.PRNGKey(0)))
    moved = lambda a, b: any(np.any(x != y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert moved(s0["params"]["gen"], s1["params"]["gen"])
    assert moved(s0["params"]["disc"]["frame_encoder"], s1["params"]["disc"]["frame_encoder"])
    m = m1[1]
    adv = (m["gen_loss"] + m["gen_syn_loss"] + m["gen_mismatch_loss"]) / 3
    t = 5  # predicted steps
    np.testing.assert_allclose(
        m["g_loss"], t * m["mse"] + 1e-4 * t * m["kld"] + 1e-4 * adv, rtol=1e-4
    )
    np.testing.assert_allclose(m["d_loss"], m["d_real"] / 2 + (m["d_syn"] + m["d_mismatch"]) / 8)


def test_official_switch_freezes_discriminator_encoders():
    """`disc.train_encoders=False`: the official frozen random disc encoders.

    Reference: docs/sound2sight.md 1.8.
    """
    c = tiny_config()
    c.disc.train_encoders = False
    c.loss.gen_mismatch_target = 1
    t = Sound2SightTask.from_config(c)
    s0 = jax.jit(t.init)(jax.random.PRNGKey(0))
    s1, _ = jax.jit(t.train_step)(s0, _batch(c))
    s0, s1 = jax.device_get(s0), jax.device_get(s1)
    for name in ("frame_encoder", "audio_encoder"):
        for a, b in zip(
            jax.tree.leaves(s0["params"]["disc"][name]), jax.tree.leaves(s1["params"]["disc"][name])
        ):
            np.testing.assert_array_equal(a, b)
    for name in ("seq", "frame_cls"):
        assert any(
            np.any(a != b)
            for a, b in zip(
                jax.tree.leaves(s0["params"]["disc"][name]),
                jax.tree.leaves(s1["params"]["disc"][name]),
            )
        )
    # Their BatchNorm statistics still move, as in PyTorch train mode.
    bs0 = jax.tree.leaves(s0["batch_stats"]["disc"]["frame_encoder"])
    bs1 = jax.tree.leaves(s1["batch_stats"]["disc"]["frame_encoder"])
    assert any(np.any(a != b) for a, b in zip(bs0, bs1))


def _naive_grads(task, state, batch):
    """Both gradients by plain autodiff, every discriminator embedding re-run in each loss."""
    from avjax.losses.kl import kl_criterion
    from avjax.models.sound2sight import discriminator as dl
    from avjax.models.sound2sight.discriminator import Discriminator as D
    from avjax.train.tasks.sound2sight import _ce

    lw, n = task.loss, task.disc.buffer
    k_eps, k_drop = jax.random.split(jax.random.fold_in(state["rng"], state["step"]))
    x = frames01(batch["frames"], task.frame_scale)
    a = jnp.asarray(batch["audio"])
    b, t = x.shape[:2]
    eps = jax.random.normal(k_eps, (b, t - 1, task.gen.z_dim), jnp.float32)
    w_adv = lw.adv_weight(state["step"])
    gp, dp = state["params"]["gen"], state["params"]["disc"]
    win = dl.window_index(t - 1, n)
    bs = state["batch_stats"]["disc"]
    emb = lambda dp, m, v: task._d_embed(dp, bs, m, v)[0]
    call = lambda dp, m, *v: task._d_call(dp, m, *v)

    def pred_of(gp):
        out, _ = task.gen.apply(
            {"params": gp, "batch_stats": state["batch_stats"]["gen"]},
            x,
            a,
            eps,
            train=True,
            rngs={"dropout": k_drop},
            mutable=["batch_stats"],
        )
        return out

    def g_loss(gp):
        out = pred_of(gp)
        r_e = jax.lax.stop_gradient(emb(dp, D.embed_frames, x[:, 1:]))
        a_e = jax.lax.stop_gradient(emb(dp, D.embed_audio, a[:, 1:]))
        f_e = emb(dp, D.embed_frames, out["pred"])
        fw = dl.make_windows(r_e, f_e, n)
        adv = (
            _ce(call(dp, D.score, fw, a_e[:, win]), 1)
            + _ce(call(dp, D.classify_frames, f_e[:, n - 1 :]), 1)
            + _ce(call(dp, D.score, fw, dl.roll_batch(a_e)[:, win]), lw.gen_mismatch_target)
        ) / 3
        mse = jnp.sum(jnp.mean(jnp.square(out["pred"] - x[:, 1:]), axis=(0, 2, 3, 4)))
        kld = kl_criterion(out["mu"], out["logvar"], out["mu_p"], out["logvar_p"])
        return mse + lw.beta * kld + w_adv * adv

    pred = jax.lax.stop_gradient(pred_of(gp)["pred"])

    def d_loss(dp):
        r_e, a_e = emb(dp, D.embed_frames, x[:, 1:]), emb(dp, D.embed_audio, a[:, 1:])
        f_e = emb(dp, D.embed_frames, pred)
        score = lambda fw, aw: call(dp, D.score, fw, aw)
        cls = lambda e: call(dp, D.classify_frames, e[:, n - 1 :])
        rw, fw = dl.make_windows(r_e, r_e, n), dl.make_windows(r_e, f_e, n)
        aw, rolled = a_e[:, win], dl.roll_batch(a_e)[:, win]
        syn = _ce(score(fw, aw), 0) + _ce(cls(f_e), 0)
        real = _ce(score(rw, aw), 1) + _ce(cls(r_e), 1)
        mis = _ce(score(rw, rolled), 0) + _ce(score(fw, rolled), 0)
        return real / 2 + (syn + mis) / 8

    return jax.grad(g_loss)(gp), jax.grad(d_loss)(dp)


@pytest.mark.slow
def test_step_gradients_equal_plain_autodiff():
    """The step's shared embedding forwards + pulled-back cotangents == naive jax.grad."""
    import optax

    c = tiny_config()
    t = Sound2SightTask.from_config(c)
    t = Sound2SightTask(t.gen, t.disc, t.loss, optax.sgd(1.0), optax.sgd(1.0), 6)
    s0 = jax.jit(t.init)(jax.random.PRNGKey(0))
    s0 = {**s0, "step": jnp.asarray(3, s0["step"].dtype)}  # adversarial weight on
    batch = jax.tree.map(jnp.asarray, _batch(c))
    s1, _ = jax.jit(t.train_step)(s0, batch)
    g_ref, d_ref = jax.jit(lambda s, b: _naive_grads(t, s, b))(s0, batch)
    for part, ref in (("gen", g_ref), ("disc", d_ref)):
        p0, p1 = s0["params"][part], s1["params"][part]
        leaves = jax.tree_util.tree_leaves_with_path(p0)
        big = max(float(np.max(np.abs(r))) for r in jax.tree.leaves(ref))
        for (path, a), b, r in zip(leaves, jax.tree.leaves(p1), jax.tree.leaves(ref)):
            # p0 - p1 (SGD, lr 1) is the gradient up to float32 rounding of p0 itself; conv
            # biases before BatchNorm have gradients that are rounding noise around 0.
            tol = max(1e-4 * float(np.max(np.abs(r))), 2e-7 * float(np.max(np.abs(a))), 1e-5 * big)
            np.testing.assert_allclose(a - b, r, atol=tol, rtol=1e-3, err_msg=str(path))
    assert float(np.max(np.abs(d_ref["frame_encoder"]["c1"]["conv"]["kernel"]))) > 0


def test_adversarial_schedule_and_frame_scaling():
    lc = LossConfig(steps_per_epoch=72)
    w = jax.jit(lc.adv_weight)
    # epoch 0: 0; epochs 1..300: 1e-4; ..600: 5e-4; ..900: 1e-3; then 1e-2 (official L448-457).
    for epoch, want in [
        (0, 0.0),
        (1, 1e-4),
        (300, 1e-4),
        (301, 5e-4),
        (600, 5e-4),
        (601, 1e-3),
        (900, 1e-3),
        (901, 1e-2),
        (1000, 1e-2),
    ]:
        np.testing.assert_allclose(w(jnp.asarray(epoch * 72)), want, rtol=1e-6, err_msg=epoch)
        np.testing.assert_allclose(w(jnp.asarray(epoch * 72 + 71)), want, rtol=1e-6)
    f = np.zeros((1, 2, 2, 2, 1), np.uint8)
    f[0, 0] = [[[10], [20]], [[0], [40]]]
    x = np.asarray(frames01(jnp.asarray(f), "per_frame_max"))
    np.testing.assert_allclose(x[0, 0, :, :, 0], [[0.25, 0.5], [0, 1]])
    assert np.all(x[0, 1] == 0)  # an all-black frame stays black (no division by zero)
    np.testing.assert_allclose(frames01(jnp.asarray(f), "255")[0, 0, 1, 1, 0], 40 / 255)


def _cli(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_tiny_train_resume_and_evaluate(tmp_path):
    """`:tiny` train to step 6, resume to 8, then `launch/evaluate.py`: json + md tables.

    The adversarial terms start at step 5 (`:tiny`), before the checkpoint resumed from.
    """
    work = tmp_path / "run"
    base = [
        "launch/train.py",
        "--config",
        "configs/sound2sight_m3so_nb.py:tiny",
        "--workdir",
        str(work),
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=6",
    ]
    r = _cli(*base, "--config.train.num_steps=6")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(*base, "--config.train.num_steps=8")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 6" in r.stderr
    assert "step 8" in r.stdout
    assert list((work / "samples").glob("*/gt_best_samples.gif"))

    r = _cli(
        "launch/evaluate.py",
        "--workdir",
        str(work),
        "--num_samples",
        "3",
        "--max_clips",
        "8",
        f"--compare={work}",  # the run beside itself: the plumbing of --compare
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "eval" / "test.json").read_text())
    assert res["checkpoint_step"] == 8 and res["num_clips"] == 8 and res["num_samples"] == 3
    assert res["frames"] == list(range(6, 16)) and res["report_frames"] == [6, 10, 15]
    for mode in ("best_of_n", "mean_of_n", "copy_last"):
        for k in ("ssim_paper", "ssim", "psnr"):
            v = np.asarray(res[mode][k])
            assert v.shape == (10,) and np.all(np.isfinite(v)), (mode, k)
        # data_range 2.0 inflates SSIM (C1, C2 four times larger).
        assert np.all(np.asarray(res[mode]["ssim_paper"]) >= np.asarray(res[mode]["ssim"]) - 1e-6)
    assert np.all(np.asarray(res["best_of_n"]["psnr"]) >= np.asarray(res["mean_of_n"]["psnr"]))
    md = (work / "eval" / "test.md").read_text()
    assert "as the papers computed it: data_range 2.0" in md and "| Fr 6 | Fr 10 | Fr 15 |" in md
    assert "copy last seen frame" in md and "best of 3" in md and "mean of 3" in md
    both = json.loads((work / "eval" / "test_compare.json").read_text())["runs"]
    assert list(both) == ["run", str(work)]
    assert both[str(work)]["mean_of_n"] == res["mean_of_n"]  # same seed and clips: same numbers
    md = (work / "eval" / "test_compare.md").read_text()
    assert md.count("Sound2Sight `run`, best of 3") == 3 and md.count("copy last seen frame") == 3
