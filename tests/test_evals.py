"""avjax.evals: its layering, block IoU, the video-prediction evaluator and its loop hook.

The audio-generation evaluator is exercised with stub models in `tests/test_sample_cli.py`
and end to end through `launch/evaluate.py` there; the Sound2Sight CLI run is in
`tests/test_train_sound2sight.py`.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avjax import evals
from avjax.errors import UserError
from avjax.evals import tables
from avjax.evals.video_prediction import Metric, VideoPredictionEvaluator
from avjax.metrics import image_quality as iq
from avjax.metrics.block_iou import block_iou


def test_block_iou_by_hand():
    h = w = 8
    block = np.array([2, 1, 3, 1], np.int32)  # x 2, y 1, size 3: rows 1..3, cols 2..4
    gt = np.zeros((h, w, 1), np.float32)
    gt[5:7, 5:7] = 1.0  # the digit, outside the box: ignored
    pred = np.zeros((h, w, 1), np.float32)
    pred[1:4, 2:5] = 1.0  # the block exactly
    pred[5:7, 5:7] = 1.0  # the digit drawn right: neither rewarded nor penalised
    assert float(block_iou(pred, gt, block)) == pytest.approx(1.0)
    pred[1:4, 4] = 0.0  # one box column missed (3 of 9 pixels)
    pred[0, 0] = 1.0  # one bright pixel elsewhere: a wrongly placed block
    assert float(block_iou(pred, gt, block)) == pytest.approx(6 / 10)
    batched = block_iou(np.stack([pred, pred]), np.stack([gt, gt]), np.stack([block, block]))
    assert batched.shape == (2,)


N_PAST, N_EVAL, SIZE = 2, 3, 16


def _batches(num=2, b=4, seed=0):
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(num):
        out.append(
            {
                "frames": rs.randint(0, 256, (b, N_PAST + N_EVAL, SIZE, SIZE, 1)).astype(np.uint8),
                "audio": rs.uniform(0, 1, (b, N_PAST + N_EVAL, 3, 2)).astype(np.float32),
                "block": np.zeros((b, 4), np.int32),
                "mask": np.ones(b, np.float32),
            }
        )
    out[-1]["mask"][-1] = 0.0  # a padding clip
    return out


def _noisy_sampler(state, x, audio, rng, num_samples):
    """Futures = truth + noise of a per-sample scale (`state["scale"]`): scores differ."""
    gt = x[:, N_PAST:]
    scale = state["scale"] * jax.random.uniform(rng, (num_samples, 1, 1, 1, 1, 1))
    noise = jax.random.normal(jax.random.fold_in(rng, 1), (num_samples, *gt.shape))
    return jnp.clip(gt + scale * noise, 0.0, 1.0)


def _l1(p, g, batch):
    return jnp.mean(jnp.abs(p - g), axis=(-3, -2, -1))


def _audio_level(p, g, batch):  # reads the batch: the hook sees its arrays
    return jnp.broadcast_to(jnp.mean(batch["audio"][:, N_PAST:], axis=(-2, -1)), p.shape[:-3])


def _evaluator(sampler, **kw):
    return VideoPredictionEvaluator(
        sampler,
        n_past=N_PAST,
        n_eval=N_EVAL,
        frame_scale="255",
        num_samples=5,
        sample_chunk=2,  # 3 chunks, the last one cut
        report_frames=(3, 5, 9),  # 9 is not predicted: dropped
        extra_metrics={"l1": Metric(_l1, higher_is_better=False), "audio": _audio_level},
        **kw,
    )


def test_video_prediction_reducers_baseline_and_extra_metrics(tmp_path):
    ev = _evaluator(_noisy_sampler)
    batches = _batches()
    result = ev.evaluate(
        {"scale": jnp.float32(0.3)}, batches, rng=jax.random.PRNGKey(0), split="test", step=7
    )
    assert result["num_clips"] == 7 and result["checkpoint_step"] == 7
    assert result["frames"] == [3, 4, 5] and result["report_frames"] == [3, 5]
    best, mean, copy = (
        {k: np.asarray(v) for k, v in result[m].items()}
        for m in ("best_of_n", "mean_of_n", "copy_last")
    )
    for k in ("ssim_paper", "ssim", "psnr"):
        assert best[k].shape == (N_EVAL,) and np.all(best[k] >= mean[k] - 1e-9), k
    assert np.all(best["l1"] <= mean["l1"] + 1e-9) and np.all(best["l1"] > 0)  # min for l1

    # The baseline and the batch-reading metric, by hand over the 7 real clips.
    frames = np.concatenate([b["frames"] for b in batches])[:7].astype(np.float32) / 255.0
    audio = np.concatenate([b["audio"] for b in batches])[:7]
    gt = frames[:, N_PAST:]
    last = np.broadcast_to(frames[:, N_PAST - 1 : N_PAST], gt.shape)
    np.testing.assert_allclose(copy["psnr"], np.asarray(iq.psnr(last, gt)).mean(0), rtol=1e-5)
    np.testing.assert_allclose(copy["l1"], np.abs(last - gt).mean(axis=(0, 2, 3, 4)), rtol=1e-5)
    want = audio[:, N_PAST:].mean(axis=(0, 2, 3))
    for m in ("best_of_n", "mean_of_n", "copy_last"):
        np.testing.assert_allclose(result[m]["audio"], want, rtol=1e-5)

    md = ev.markdown(result)
    assert "| method | Fr 3 | Fr 5 |" in md and "## l1" in md and "best_of_n l1" in md
    assert "Sound2Sight, best of 5" in md and "copy last seen frame" in md
    scalars = ev.scalars(result)
    assert scalars["mean_of_n/psnr"] == pytest.approx(np.mean(mean["psnr"]))
    assert set(scalars) == {
        f"{m}/{k}"
        for m in ("best_of_n", "mean_of_n", "copy_last")
        for k in ("ssim_paper", "ssim", "psnr", "l1", "audio")
    }
    json_path, md_path = tables.write(tmp_path / "eval", "test", result, md)
    assert json.loads(json_path.read_text()) == result and md_path.read_text() == md


def test_compare_runs_side_by_side_with_a_flow_metric():
    """A deterministic run returning flow (AEPE through `pred_flow`) beside a stochastic one."""
    from avjax.evals.video_prediction import compare_markdown

    def with_flow(state, x, audio, rng, num_samples):
        f = jnp.broadcast_to(x[:, N_PAST:], (num_samples, *x[:, N_PAST:].shape))
        flow = jnp.ones((*f.shape[:-1], 2)) * state["flow"]
        return {"frames": f, "flow": flow}

    def epe(p, g, batch):  # against a true flow of zero: |pred| = sqrt(2) * value
        return jnp.mean(jnp.linalg.norm(batch["pred_flow"], axis=-1), axis=(-2, -1))

    det = VideoPredictionEvaluator(
        with_flow,
        n_past=N_PAST,
        n_eval=N_EVAL,
        frame_scale="255",
        num_samples=1,
        report_frames=(3, 5),
        extra_metrics={"aepe": Metric(epe, higher_is_better=False, label="AEPE")},
        method="MCAV",
    )
    a = det.evaluate({"flow": 0.5}, _batches(), rng=jax.random.PRNGKey(0), split="test", step=1)
    np.testing.assert_allclose(a["mean_of_n"]["aepe"], [np.sqrt(0.5)] * N_EVAL, rtol=1e-6)
    np.testing.assert_allclose(a["copy_last"]["aepe"], 0.0)  # the baseline predicts no motion
    np.testing.assert_allclose(a["mean_of_n"]["psnr"], a["best_of_n"]["psnr"])
    b = _evaluator(_noisy_sampler).evaluate(
        {"scale": jnp.float32(0.3)}, _batches(), rng=jax.random.PRNGKey(0), split="test", step=2
    )
    md = compare_markdown({"mcav": a, "s2s": b})
    assert "| MCAV `mcav` | " in md and "MCAV `mcav`, mean" not in md  # one row: deterministic
    assert "| Sound2Sight `s2s`, best of 5 |" in md and "| Sound2Sight `s2s`, mean of 5 |" in md
    aepe = md[md.index("## AEPE") :]
    assert "| Sound2Sight `s2s`, best of 5 | - | - | - |" in aepe  # S2S predicts no flow
    assert f"| MCAV `mcav` | {np.sqrt(0.5):.4f} |" in aepe
    psnr = md[md.index("## PSNR") :].splitlines()
    mean_col = float(next(r for r in psnr if r.startswith("| MCAV")).split("|")[-2])
    assert mean_col == pytest.approx(np.mean(a["mean_of_n"]["psnr"]), abs=1e-4)
    other = det.evaluate(
        {"flow": 0.5}, _batches(seed=1), rng=jax.random.PRNGKey(0), split="test", step=1
    )
    with pytest.raises(UserError, match="not scored on the same clips"):
        compare_markdown({"mcav": a, "other clips": other})

    # A run predicting fewer frames (MCAV's paper 20 vs Sound2Sight's 25): the tables cover
    # the frames both predict, and their means too.
    short = det.evaluate({"flow": 0.5}, _batches(), rng=jax.random.PRNGKey(0), split="t", step=1)
    short = {
        **short,
        "frames": short["frames"][:2],
        "n_eval": 2,
        **{m: {k: v[:2] for k, v in short[m].items()} for m in ("mean_of_n", "copy_last")},
    }
    md = compare_markdown({"mcav": short, "s2s": b})
    assert "2 predicted" in md and "Runs that predict more (3 frames)" in md
    psnr = md[md.index("## PSNR") :].splitlines()
    assert psnr[2].split("|")[2:-1] == [" Fr 3 ", " mean "]  # frame 5 is not in both
    mean_col = float(next(r for r in psnr if "`s2s`, mean" in r).split("|")[-2])
    assert mean_col == pytest.approx(np.mean(b["mean_of_n"]["psnr"][:2]), abs=1e-4)


def test_video_prediction_max_clips_and_errors():
    def exact(state, x, audio, rng, num_samples):
        return jnp.broadcast_to(x[:, N_PAST:], (num_samples, *x[:, N_PAST:].shape))

    ev = _evaluator(exact)
    result = ev.evaluate({}, _batches(), rng=jax.random.PRNGKey(0), split="s", step=0, max_clips=5)
    assert result["num_clips"] == 5
    assert np.allclose(result["best_of_n"]["ssim"], 1.0) and np.allclose(
        result["mean_of_n"]["l1"], 0
    )
    with pytest.raises(UserError, match="split 'empty' gave no clips"):
        ev.evaluate({}, [], rng=jax.random.PRNGKey(0), split="empty", step=0)
    with pytest.raises(ValueError, match="psnr"):
        VideoPredictionEvaluator(exact, n_past=2, n_eval=3, extra_metrics={"psnr": _l1})


def _s2s_config():
    from configs import sound2sight_m3so_nb

    c = sound2sight_m3so_nb.get_config("tiny")
    c.data.n_past, c.data.n_future, c.data.n_eval = 2, 4, 3
    return c


class _StubTask:
    def sample_futures(self, state, x, audio, rng, num_samples=1):
        raise AssertionError("not sampled here")

    def codec(self):  # a transformer task without config.codebook.workdir
        return None


def test_loop_evaluators_from_the_config():
    c = _s2s_config()
    assert evals.loop_evaluators(c, _StubTask()) == {}  # no config.evals: nothing runs
    from configs import specvqgan_transformer_vggsound

    tr = specvqgan_transformer_vggsound.get_config("tiny")
    assert tr.evals.audio.every is None  # declared, off until --config.evals.audio.every=N
    assert evals.loop_evaluators(tr, _StubTask()) == {}
    c.evals = ml_collections.ConfigDict({"vp": {"every": 5, "num_samples": 2, "max_clips": 4}})
    got = evals.loop_evaluators(c, _StubTask())
    assert list(got) == ["vp"] and got["vp"][0] == 5 and callable(got["vp"][1])
    bad = {
        "every": ({"every": 0}, "config.evals.vp.every=0"),
        "type": ({"every": 1, "type": "vqgan"}, "config.evals.vp.type='vqgan'"),
        "field": ({"every": 1, "num_sample": 3}, "num_sample"),
        "no codebook": ({"every": 1, "type": "transformer"}, "config.codebook.workdir"),
    }
    for what, (section, message) in bad.items():
        c.evals = ml_collections.ConfigDict({"vp": section})
        with pytest.raises(UserError, match=message):
            evals.loop_evaluators(c, _StubTask())
        assert what


def test_loop_refuses_evals_without_an_eval_split_before_writing(tmp_path):
    from avjax.train import loop

    c = _s2s_config()
    c.evals = ml_collections.ConfigDict({"vp": {"every": 5}})
    with pytest.raises(UserError, match="needs an eval split"):
        loop.train(c, tmp_path / "w", _StubTask(), iter([]), None)
    c.evals.vp.every = -1
    with pytest.raises(UserError, match="every=-1"):
        loop.train(c, tmp_path / "w", _StubTask(), iter([]), lambda: iter([]))
    assert not (tmp_path / "w").exists()


def test_evals_fields_change_on_resume(tmp_path):
    from avjax.train import loop

    c = _s2s_config()
    (tmp_path / "config.json").write_text(c.to_json())
    c.evals = ml_collections.ConfigDict({"vp": {"every": 5}})
    assert loop.check_workdir(c, tmp_path)  # allowed; config.json is rewritten
    c.seed = 3
    with pytest.raises(UserError, match="seed"):
        loop.check_workdir(c, tmp_path)


@pytest.mark.slow
def test_loop_runs_a_configured_video_prediction_eval(tmp_path):
    """`config.evals.vp` in a `:tiny` Sound2Sight run: its scalars land in metrics.jsonl."""
    from avjax.train import loop
    from avjax.train.tasks import make_task
    from data_pipelines.inputs import make_inputs

    c = _s2s_config()
    c.train.num_steps = 2
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.train.eval_every = 0
    c.train.sample_every = 0
    c.evals = ml_collections.ConfigDict(
        {"vp": {"every": 2, "num_samples": 2, "sample_chunk": 2, "max_clips": 4}}
    )
    inputs = make_inputs(c)
    task = make_task(c, inputs.stats)
    last = loop.train(c, tmp_path, task, inputs.train_iter, inputs.eval_iter_fn)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals_rows = [r for r in rows if "evals/vp/best_of_n/psnr" in r]
    assert [r["step"] for r in evals_rows] == [2]
    row = evals_rows[0]
    for m in ("best_of_n", "mean_of_n", "copy_last"):
        for k in ("ssim_paper", "ssim", "psnr"):
            assert np.isfinite(row[f"evals/vp/{m}/{k}"]), (m, k)
    assert row["evals/vp/best_of_n/psnr"] >= row["evals/vp/mean_of_n/psnr"] - 1e-9
    assert last["evals/vp/mean_of_n/ssim"] == row["evals/vp/mean_of_n/ssim"]
