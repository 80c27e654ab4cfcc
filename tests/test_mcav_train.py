"""MCAV trainer: both stages' steps, stage-2 freezing, loading the stage-1 run, sharded ==
single-device, and `:tiny` end to end through launch/train.py with an exact resume."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from avjax import runs
from avjax.checkpoints import save_imported
from avjax.errors import UserError
from avjax.train import sharding as shd
from avjax.train.tasks.mcav import MCAVTask, load_motion
from configs import mcav_m3so_nb

REPO = pathlib.Path(__file__).resolve().parents[1]
N_PAST, N_FUTURE = 2, 2
T = N_PAST + N_FUTURE


def tiny_config(stage="motion", workdir=None):
    c = mcav_m3so_nb.get_config("tiny")
    c.data.image_size = 32  # synthetic batches below; the embedded data is 48 px
    c.data.n_past, c.data.n_future = N_PAST, N_FUTURE
    c.stage = stage
    c.motion.workdir = workdir
    # Adam's first update is ~lr * sign(g): a larger eps keeps it proportional to g, so
    # near-zero gradients that differ in the last bits do not flip whole updates.
    c.optim.eps = 1e-3
    return c


def _batch(seed=0, n=8):
    rs = np.random.RandomState(seed)
    flow = rs.normal(0, 1.5, (n, T, 32, 32, 2)).astype(np.float32)
    flow[:, 0] = 0
    return {
        "frames": rs.randint(0, 256, (n, T, 32, 32, 1)).astype(np.uint8),
        "audio": rs.uniform(0, 1, (n, T, 23, 21)).astype(np.float32),
        "flow": flow,
    }


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _moved(a, b) -> bool:
    return any(np.any(x != y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def motion():
    """The stage-1 task, its initial state and one step (one compile for the module)."""
    task = MCAVTask.from_config(tiny_config())
    s0 = jax.jit(task.init)(jax.random.PRNGKey(0))
    s1, m = jax.jit(task.train_step)(s0, _batch())
    return task, jax.device_get(s0), jax.device_get(s1), jax.device_get(m)


@pytest.fixture(scope="module")
def motion_run(tmp_path_factory, motion):
    """A stage-1 run on disk (the trained state of one step), as refine loads it."""
    _, _, s1, _ = motion
    workdir = tmp_path_factory.mktemp("mcav") / "motion"
    save_imported(workdir, tiny_config().to_json(), s1, step=1)
    return workdir


def test_motion_step(motion):
    """L_MME = (T-1) * (flow MSE + 0.01 smoothness); MME's params and BatchNorm statistics
    move; the metrics are finite."""
    _, s0, s1, m = motion
    assert all(np.isfinite(v) for v in m.values())
    np.testing.assert_allclose(
        m["loss"], (T - 1) * (m["flow_mse"] + 0.01 * m["smoothness"]), rtol=1e-6
    )
    assert m["flow_mse"] > 1.0 and m["aepe"] > 0.5  # random flows of std 1.5 px
    assert int(s1["step"]) == 1 and set(s1["params"]) == {"mme"} and "frozen" not in s1
    assert _moved(s0["params"], s1["params"])
    assert _moved(s0["batch_stats"], s1["batch_stats"])


def test_refine_loads_and_freezes_mme(motion, motion_run):
    """Stage 2 starts from the stage-1 run's MME and leaves it bit-identical (params and
    BatchNorm statistics) over two steps while CAR's parameters move; MME has no optimizer
    state; L_V = (T - n_past) * MSE of the predicted frames."""
    _, _, s_motion, _ = motion
    task = MCAVTask.from_config(tiny_config("refine", str(motion_run)))
    s0 = jax.jit(task.init)(jax.random.PRNGKey(1))
    trained = {"params": s_motion["params"]["mme"], "batch_stats": s_motion["batch_stats"]["mme"]}
    assert _leaves_equal(jax.device_get(s0["frozen"]["mme"]), trained)
    assert set(s0["params"]) == set(s0["opt_state"][0].mu) == {"car"}
    step = jax.jit(task.train_step)
    s1, m1 = step(s0, _batch(1))
    s2, _ = step(s1, _batch(2))
    s0, s2, m1 = jax.device_get((s0, s2, m1))
    assert _leaves_equal(s2["frozen"]["mme"], trained)
    assert _moved(s0["params"]["car"], s2["params"]["car"])
    assert _moved(s0["batch_stats"]["car"], s2["batch_stats"]["car"])
    np.testing.assert_allclose(m1["loss"], N_FUTURE * m1["mse"], rtol=1e-6)
    # An untrained CAR returns the warped frames: the first step's MSE is theirs.
    np.testing.assert_allclose(m1["mse"], m1["warped_mse"], rtol=1e-6)
    np.testing.assert_allclose(m1["warped_mse"], m1["mme_mse"], rtol=1e-6)

    # Evaluation needs no stage-1 run: the state carries its MME. Padding clips (mask 0)
    # are left out of the means.
    evaluator = MCAVTask.from_config(tiny_config("refine"), load_mme=False)
    batch = {**_batch(5), "mask": np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}
    e = jax.device_get(jax.jit(evaluator.eval_step)(s2, batch))
    assert all(np.isfinite(v) for v in e.values()) and e["aepe"] > 0.5
    x = batch["frames"][:6] / np.maximum(batch["frames"][:6].max((2, 3, 4), keepdims=True), 1)
    copy = np.mean((x[:, N_PAST:] - x[:, N_PAST - 1 : N_PAST]) ** 2)
    np.testing.assert_allclose(e["copy_last_mse"], copy, rtol=1e-5)
    with pytest.raises(ValueError, match="starts from a trained MME"):
        evaluator.init(jax.random.PRNGKey(0))


def test_load_motion_refuses_wrong_runs(tmp_path, motion_run):
    with pytest.raises(UserError, match=r"config.motion.workdir is not set"):
        load_motion(tiny_config("refine"))
    with pytest.raises(UserError, match=r"config.motion.workdir: .*not found"):
        load_motion(tiny_config("refine", str(tmp_path / "nothing")))
    c = tiny_config("refine", str(motion_run))
    c.model.lstm_features = 32
    with pytest.raises(UserError, match=r"model.lstm_features: 16 there, 32 here"):
        load_motion(c)
    other = tmp_path / "refine_run"
    shutil.copytree(motion_run, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "stage": "refine"}))
    with pytest.raises(UserError, match=r"stage 'refine' run; give the stage-1"):
        load_motion(tiny_config("refine", str(other)))
    with pytest.raises(UserError, match=r"config\.stage must be one of"):
        MCAVTask.from_config(tiny_config("both"))


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
@pytest.mark.parametrize("stage", ["motion", "refine"])
def test_sharded_step_equals_single_device(stage, motion_run):
    """Two steps, data 4 x fsdp 2 (FSDP really sharding) == one device, for both stages."""
    assert jax.device_count() == 8
    task = MCAVTask.from_config(tiny_config(stage, str(motion_run)))
    batches = [_batch(3), _batch(4)]
    one = shd.make_mesh([("data", -1)], devices=jax.devices()[:1])
    eight = shd.make_mesh([("data", 4), ("fsdp", 2)])
    s1, m1, _ = _run_steps(task, one, batches, min_size=2**18)
    s8, m8, sh8 = _run_steps(task, eight, batches, min_size=2**8)
    assert any("fsdp" in str(s.spec) for s in jax.tree.leaves(sh8))
    for a, b in zip(m1, m8):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)
    for part in ("params", "batch_stats", "opt_state"):
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), s1[part], s8[part])
        assert max(jax.tree.leaves(diffs)) < 1e-4, (part, diffs)


def _cli(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_tiny_both_stages_and_exact_resume(tmp_path):
    """`:tiny` through launch/train.py: stage 1 for 4 steps straight, and 2 + a resume to 4
    (the same state, bit for bit); then stage 2 on it writes PNG and GIF samples and keeps
    the stage-1 MME."""
    base = [
        "launch/train.py",
        "--config",
        "configs/mcav_m3so_nb.py:tiny",
        f"--config.data.n_past={N_PAST}",
        f"--config.data.n_future={N_FUTURE}",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=2",
        "--config.train.log_every=1",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    motion = [*base, "--config.train.sample_every=0"]
    r = _cli(*motion, "--workdir", str(straight), "--config.train.num_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(*motion, "--workdir", str(resumed), "--config.train.num_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(*motion, "--workdir", str(resumed), "--config.train.num_steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 2" in r.stderr
    a, b = runs.load_run(straight, "mcav"), runs.load_run(resumed, "mcav")
    assert a.step == b.step == 4
    for part in ("params", "batch_stats", "opt_state", "rng"):
        assert _leaves_equal(a.state[part], b.state[part]), part

    refine = tmp_path / "refine"
    r = _cli(
        *base,
        "--workdir",
        str(refine),
        "--config.stage=refine",
        f"--config.motion.workdir={straight}",
        "--config.train.num_steps=2",
        "--config.train.sample_every=2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 2" in r.stdout
    run = runs.load_run(refine, "mcav")
    assert _leaves_equal(run.state["frozen"]["mme"]["params"], a.state["params"]["mme"])
    assert set(run.params) == {"car"}
    samples = refine / "samples" / "2"
    for name in ("clip0.png", "clip0.gif", "clip1.png", "clip1.gif"):
        assert (samples / name).stat().st_size > 100, name

    # The evaluator: per-frame SSIM/PSNR/AEPE tables, the stage-1 run beside (--compare).
    r = _cli(
        "launch/evaluate.py", "--workdir", str(refine), "--max_clips=4", f"--compare={straight}"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = (refine / "eval").glob("*_compare.json")
    both = json.loads(res.read_text())["runs"]
    assert list(both) == ["refine", "straight"]
    for got in both.values():
        assert got["num_samples"] == 1 and got["num_clips"] == 4 and got["method"] == "MCAV"
        for k in ("ssim", "psnr", "aepe"):
            assert np.all(np.isfinite(got["mean_of_n"][k])), k
    # Stage 1 and 2 share the MME: the same flows. The baseline predicts no motion.
    np.testing.assert_allclose(
        both["refine"]["mean_of_n"]["aepe"], both["straight"]["mean_of_n"]["aepe"], rtol=1e-5
    )
    assert both["refine"]["copy_last"]["aepe"][0] > 0
    assert "AEPE of the predicted flow" in res.with_suffix(".md").read_text()
